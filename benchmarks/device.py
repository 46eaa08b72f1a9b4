"""The normalizations on the accelerator JAX sees: lnjax "xla" and "pallas", flax, PyTorch.

::

    python -m benchmarks.run --device [--quick] [--out DIR] [--max-seconds S] [--cases NAME,...]
    python -m benchmarks.device ...   # the same

Runs on whatever ``jax.devices()[0]`` is (a GPU or TPU; on a CPU it runs too,
which is how the test suite checks it) and records its ``device_kind`` and
platform. Each *group* is one normalization (``layer_norm``, ``rms_norm``),
shape and dtype (f32, bf16; scale and bias in the same dtype); in it these
libraries are timed:

* ``lnjax xla``, ``lnjax pallas``: ``lnjax.layer_norm(x, scale, bias,
  implementation=...)`` / ``lnjax.rms_norm(x, scale, implementation=...)``;
* ``flax``: ``flax.linen.LayerNorm`` / ``RMSNorm`` applied functionally;
* ``torch``: ``torch.nn.functional.layer_norm`` / ``rms_norm`` on CUDA, when
  PyTorch is installed and sees a CUDA device (otherwise skipped, with a note);

each in four passes:

* ``forward``: ``y = f(x, params)``;
* ``forward saving stats``: the forward of ``jax.vjp`` (what training's
  forward costs): y and the residuals the backward needs. Residuals equal to
  an input (x or scale kept for the backward) are the input kept alive, not
  new data, and are left out of the timed program. PyTorch: the forward with
  ``requires_grad``;
* ``backward``: the VJP of one saved forward applied to a fixed ``dy``
  (PyTorch: ``torch.autograd.grad`` of one saved graph);
* ``forward+backward``: both in one program (``y``, dx, dscale, dbias).

Every JAX pass is compiled once (``jit(...).lower(...).compile()``). Before
timing, each library's outputs (y from every pass, the gradients of the
backward passes) are checked against the reference: lnjax ``"xla"`` in f32
on the same inputs (no float64, which accelerators lack). The error is
``max |out - ref| / max |ref|``, at most 1e-3 for f32 and 5e-2 for bf16 (a
few bf16 steps); a library that fails, or raises, is reported and not timed.

Timing (:mod:`benchmarks.harness`), two clocks:

* wall clock: the passes of a group and a jitted copy of an array of x's
  bytes are timed round-robin, medians over rounds. Each timing starts the
  calls back to back and waits once for the last (``block_until_ready``;
  ``torch.cuda.synchronize`` for PyTorch), so the host's round trip is not
  counted in each call. A kernel shorter than the host's dispatch of a call
  still measures the dispatch (the 4M-element shapes move 16 to 32 MB: a few
  microseconds at HBM speed);
* device time (JAX programs and the copy): one ``jax.profiler`` trace of a
  few calls of each, the durations of the program's kernels added up per call
  (:func:`benchmarks.harness.device_times`): what the accelerator spends,
  without dispatch and without the gaps between a program's kernels.

On an accelerator GB/s and ``× copy`` come from the device times where the
trace gave them (the copy's too), else from the wall clock; on a CPU from the
wall clock. Successive calls take turns over several copies of x and dy
(:func:`copies`: 256 MiB of x, at most 16 copies), the copy's too, so that
no call reads what an earlier one left in the L2 cache (50 MB on an H100).

Byte model (:func:`pass_bytes`; the least traffic each pass must make; for
an ``(R, H)`` input of ``e`` bytes per element, parameters in the same dtype,
``P`` parameters (2 for layer norm: scale and bias; 1 for RMS norm) and ``S``
float32 statistics per row (2: mean and 1/sigma; 1: 1/rms)):

==================== ================================ ==========================
pass                 read                             written
==================== ================================ ==========================
forward              x ``R·H·e`` + params ``P·H·e``   y ``R·H·e``
forward saving stats as forward                       y ``R·H·e`` + stats ``4·S·R``
backward             x, dy ``2·R·H·e`` + scale        dx ``R·H·e`` + dparams
                     ``H·e`` + stats ``4·S·R``        ``P·H·e``
forward+backward     forward saving stats + backward  forward saving stats + backward
==================== ================================ ==========================

GB/s is (read + written) / time; ``× copy`` is that bandwidth as a fraction
of the copy's (``2·R·H·e`` bytes per copy): ``time(copy) / time(pass)`` times
the ratio of their bytes (on the wall clock the median over rounds of the
per-round ratio).

Targets (the issue's, for an H100), reported met or not per lnjax
implementation: forward ≥ 0.85 × copy, backward ≥ 0.75 × copy, forward+backward
≥ 1.5× faster than flax, and on tokamax's shape (589824, 128) bf16 layer norm
at most tokamax's Pallas-Triton times on an H100: forward 0.100 ms, forward
saving stats 0.103 ms, backward 0.179 ms (kernel times: compared with the
device time where there is one). The forward+backward ratio to flax is on
the wall clock.

Also the LSTM layers' forward+backward (T=100, B=32, 64 -> 256):
``lnjax.linen.LNLSTM`` against ``flax.linen.RNN(OptimizedLSTMCell(256))``
and PyTorch's cuDNN ``torch.nn.LSTM`` on CUDA, with lnjax's LSTM without layer
norm and a flax LN-LSTM beside them (:func:`benchmarks.run.lstm_case`; the
wall clock, each call waited for; no targets).

And ``image_norms``: the CPU suite's ``norms_fb``, ``norms_fwd`` and
``resnet`` cases on this device (:func:`benchmarks.run.norms_fb`): the Linen
BatchNorm, GroupNorm(8), InstanceNorm and LayerNorm over (H, W, C) on
(64, 32, 32, 64) and (128, 16, 16, 32), BatchNorm and masked LayerNorm on the
first of the shapes above, BatchNorm's forward in training and evaluation,
and a ResNet-style block, each forward + backward against flax's, with
PyTorch's layer in NCHW on CUDA where it has one (never PyTorch on the host
against JAX on a device); the wall clock, no targets.

A time budget (``--max-seconds``, default 420) skips the groups that would
run past it, with a note; results.json and results.md are rewritten after
each group, so a run cut short keeps what it measured. Writes
``results.json``, ``results.md`` and ``results.png`` (the fractions of copy
bandwidth) to ``--out`` (default ``benchmarks/results/device``) and prints the
table. ``--quick``: small shapes, few rounds (seconds on a CPU; for tests).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import gc
import inspect
import os
import pathlib
import time
from collections.abc import Callable
from typing import Any

# JAX would otherwise take 75% of the accelerator's memory at start, leaving
# PyTorch too little; read when the backend starts, after these imports.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import lnjax  # noqa: E402
from benchmarks import report  # noqa: E402
from benchmarks import run as cpu_suite  # noqa: E402
from benchmarks.harness import (  # noqa: E402
    TimeRatio,
    TorchSync,
    device_times,
    measure,
    rotating,
)

torch = cpu_suite.torch  # None when PyTorch is not installed

DEFAULT_OUT = cpu_suite.DEFAULT_OUT / "device"
EPSILON = cpu_suite.EPSILON

CASES = ("layer_norm", "rms_norm", "lstm", "image_norms")
LIBRARIES = ("lnjax xla", "lnjax pallas", "flax", "torch")
LNJAX = ("lnjax xla", "lnjax pallas")
SHORT = {"layer_norm": "LN", "rms_norm": "RMS"}
PASSES = {"forward": "forward", "forward_stats": "forward saving stats",
          "backward": "backward", "forward_backward": "forward+backward"}
DTYPES = {"f32": jnp.float32, "bf16": jnp.bfloat16}
TOLERANCE = {"f32": 1e-3, "bf16": 5e-2}  # max |out - ref| / max |ref|
ROTATE_BYTES = 256 * 2**20  # the bytes of x the timings rotate among (see copies)

COPY_TARGETS = {"forward": 0.85, "backward": 0.75}  # least fraction of copy bandwidth
FLAX_SPEEDUP = 1.5  # least time(flax) / time(lnjax), forward+backward
TOKAMAX = {"case": "layer_norm", "shape": (589824, 128), "dtype": "bf16",
           "ms": {"forward": 0.100, "forward_stats": 0.103, "backward": 0.179}}
"""tokamax's Pallas-Triton layer norm on an H100, bf16 768·768 x 128 (its autotuning data)."""


@dataclasses.dataclass(frozen=True)
class Config:
    """What to run and how long to time."""

    shapes: tuple[tuple[int, int], ...] = ((4096, 1024), (16384, 256), (1024, 8192),
                                           (589824, 128), (4096, 16384))
    dtypes: tuple[str, ...] = ("f32", "bf16")
    lstm: tuple[int, int, int, int] = (100, 32, 64, 256)  # T, batch, input, hidden
    # image_norms: BatchNorm, GroupNorm, InstanceNorm, LayerNorm over (H, W, C) on these,
    # masked LayerNorm and BatchNorm on the first of `shapes`, a ResNet-style block
    image_shapes: tuple[tuple[int, ...], ...] = ((64, 32, 32, 64), (128, 16, 16, 32))
    resnet: tuple[int, int, int] = (32, 16, 32)  # batch, height = width, channels
    rounds: int = 10
    min_time: float = 0.01  # seconds per timing (a pipeline of calls)
    profile_calls: int = 10  # calls of each program traced for its device time
    max_seconds: float = 420.0
    seed: int = 0


QUICK = dict(shapes=((16, 1000),), lstm=(4, 2, 8, 16), image_shapes=((4, 4, 4, 16),),
             resnet=(4, 4, 8), rounds=3, min_time=0.0, profile_calls=2)


# --------------------------------------------------------------------------
# The byte model.
# --------------------------------------------------------------------------


def pass_bytes(case: str, pass_: str, shape: tuple[int, int], dtype: str) -> dict[str, int]:
    """The bytes a pass must read and write (the table in the module docstring).

    Example:
      >>> pass_bytes("layer_norm", "forward", (4, 8), "f32")
      {'read': 192, 'written': 128}
    """
    rows, width = shape
    e = jnp.dtype(DTYPES[dtype]).itemsize
    n_params, n_stats = (2, 2) if case == "layer_norm" else (1, 1)
    array, params, stats = rows * width * e, n_params * width * e, 4 * n_stats * rows
    forward = {"read": array + params, "written": array}
    saving = {"read": array + params, "written": array + stats}
    backward = {"read": 2 * array + width * e + stats, "written": array + params}
    if pass_ == "forward":
        return forward
    if pass_ == "forward_stats":
        return saving
    if pass_ == "backward":
        return backward
    if pass_ == "forward_backward":
        return {k: saving[k] + backward[k] for k in saving}
    raise ValueError(f"pass_bytes: unknown pass {pass_!r}; known: {list(PASSES)}")


def copies(shape: tuple[int, int], dtype: str) -> int:
    """How many copies of x (and dy) the timings rotate among: enough for
    :data:`ROTATE_BYTES` of x (at most 16), so that no call finds its input in
    a cache that an earlier call filled (an H100's L2 holds 50 MB, an H200's 60)."""
    nbytes = shape[0] * shape[1] * jnp.dtype(DTYPES[dtype]).itemsize
    return min(16, max(1, -(-ROTATE_BYTES // nbytes)))


def copy_bytes(shape: tuple[int, int], dtype: str) -> int:
    """Bytes a copy of x reads and writes."""
    return 2 * shape[0] * shape[1] * jnp.dtype(DTYPES[dtype]).itemsize


# --------------------------------------------------------------------------
# The time budget.
# --------------------------------------------------------------------------


class Budget:
    """Starts a piece of work only if it is likely to end within ``max_seconds``.

    The next piece is predicted to last as long as the longest so far (0 before
    the first).
    """

    def __init__(self, max_seconds: float, clock: Callable[[], float] = time.perf_counter):
        self.max_seconds = max_seconds
        self.clock = clock
        self.start = clock()
        self.longest = 0.0

    def elapsed(self) -> float:
        return self.clock() - self.start

    def allows(self) -> bool:
        return self.elapsed() + self.longest <= self.max_seconds

    def took(self, seconds: float) -> None:
        self.longest = max(self.longest, seconds)

    def skip_note(self, skipped: list[str]) -> str:
        """The note on what was skipped (written once the rest is skipped in no time)."""
        return (f"skipped, as the time budget (--max-seconds {self.max_seconds:g}) would be "
                f"exceeded (elapsed {self.elapsed():.0f} s, longest group "
                f"{self.longest:.0f} s): {', '.join(skipped)}")


# --------------------------------------------------------------------------
# The device and PyTorch.
# --------------------------------------------------------------------------


def device_info() -> dict[str, Any]:
    """The device JAX runs on, and whether (and where) PyTorch is compared."""
    device = jax.devices()[0]
    info = {"platform": device.platform, "device_kind": device.device_kind,
            "device_count": jax.device_count(), "torch_device": None}
    if torch is None:
        info["torch_note"] = "PyTorch is not installed: its cases are skipped"
    elif not torch.cuda.is_available():
        info["torch_note"] = (f"PyTorch {torch.__version__} sees no CUDA device: "
                              "its cases are skipped")
    else:
        info["torch_device"] = "cuda"
        info["torch_note"] = f"PyTorch {torch.__version__} on {torch.cuda.get_device_name(0)}"
    return info


def device_basis() -> bool:
    """Whether GB/s and ``× copy`` come from device times: on accelerators, where the
    host's dispatch can outlast a small kernel. On a CPU the profiler's thunk
    times are no such measure, and the wall clock is used."""
    return jax.default_backend() != "cpu"


def accepts_implementation() -> bool:
    """Whether lnjax's functions take ``implementation=`` (else lnjax is reported as failing)."""
    return "implementation" in inspect.signature(lnjax.layer_norm).parameters


# --------------------------------------------------------------------------
# One group: a normalization, a shape, a dtype.
# --------------------------------------------------------------------------


def jax_norm(case: str, library: str) -> Callable[..., jax.Array]:
    """``f(x, *params)`` of one JAX library (params: scale, bias for layer norm; scale)."""
    names = ("scale", "bias") if case == "layer_norm" else ("scale",)
    if library == "flax":
        module = (nn.LayerNorm if case == "layer_norm" else nn.RMSNorm)(epsilon=EPSILON)
        return lambda x, *params: module.apply({"params": dict(zip(names, params))}, x)
    fn = lnjax.layer_norm if case == "layer_norm" else lnjax.rms_norm
    implementation = library.split()[1] if library in LNJAX else None
    keyword = {} if implementation is None else {"implementation": implementation}
    return lambda x, *params: fn(x, *params, epsilon=EPSILON, **keyword)


def lower_passes(f: Callable, args: tuple, dy: jax.Array, pullback: Any, *,
                 name: str) -> dict[str, Any]:
    """The four passes of ``f``, lowered: ``{pass: lowered}``.

    ``pullback`` is the VJP of one run of ``jax.jit(lambda *a: jax.vjp(f, *a))``:
    the backward's residuals; those equal to an input are left out of the
    timed "forward saving stats". Each program is named ``jit_{name}_{pass}``
    (:func:`program_name`), which the profiler's events carry.
    """
    kept = [not any(r.shape == a.shape and r.dtype == a.dtype and bool(jnp.array_equal(r, a))
                    for a in args) for r in jax.tree_util.tree_leaves(pullback)]

    def forward(*a):
        return f(*a)

    def forward_stats(*a):
        y, pullback = jax.vjp(f, *a)
        return y, [r for r, k in zip(jax.tree_util.tree_leaves(pullback), kept) if k]

    def backward(pullback, dy):
        return pullback(dy)

    def forward_backward(*a):
        y, pullback = jax.vjp(f, *a[:-1])
        return (y, *pullback(a[-1]))

    programs = {"forward": forward, "forward_stats": forward_stats, "backward": backward,
                "forward_backward": forward_backward}
    lowered = {}
    for pass_, call_args in pass_arguments(args, dy, pullback).items():
        fn = programs[pass_]
        fn.__name__ = fn.__qualname__ = program_name(name, pass_)[len("jit_"):]
        lowered[pass_] = jax.jit(fn).lower(*call_args)
    return lowered


def pass_arguments(args: tuple, dy: Any, pullback: Any) -> dict[str, tuple]:
    """What each pass is called with: ``args`` = (x, *params), the VJP and dy."""
    return {"forward": args, "forward_stats": args, "backward": (pullback, dy),
            "forward_backward": (*args, dy)}


def program_name(library: str, pass_: str) -> str:
    """The XLA module name of a library's pass: ``jit_lnjax_xla_forward``."""
    return f"jit_{library.replace(' ', '_')}_{pass_}"


class _Failed:
    """A lowering that raised: compiling it raises the same error."""

    def __init__(self, error: Exception):
        self.error = error

    def compile(self):
        raise self.error


def _lower(f: Callable, args: tuple) -> Any:
    try:
        return jax.jit(f).lower(*args)
    except Exception as e:  # noqa: BLE001 - reported by the caller
        return _Failed(e)


def compile_all(lowered: dict[Any, Any]) -> dict[Any, Any]:
    """``{key: lowered.compile()}``, compiled in parallel threads (XLA lets go of the GIL);
    a compilation that fails gives its exception."""
    def compile_one(item):
        try:
            return item.compile()
        except Exception as e:  # noqa: BLE001 - reported by the caller
            return e
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        return dict(zip(lowered, pool.map(compile_one, lowered.values())))


def jax_outputs(functions: dict[str, Callable[[], Any]]) -> dict[str, tuple]:
    """One call of each pass, its outputs as ``(y, dx, dparams...)`` (None where absent)."""
    out = {k: fn() for k, fn in functions.items()}
    return {"forward": (out["forward"],), "forward_stats": (out["forward_stats"][0],),
            "backward": (None, *out["backward"]), "forward_backward": out["forward_backward"]}


def torch_passes(case: str, x: np.ndarray, params: tuple[np.ndarray, ...], dy: np.ndarray,
                 dtype: str, device: str, *, sets: int = 1):
    """The four passes in PyTorch on ``device``: ``(functions, outputs)``.

    ``functions[pass]()`` starts the pass on the next of ``sets`` copies of x
    and dy and returns its outputs and a :class:`TorchSync`; ``outputs`` (of
    the first copy) as :func:`jax_outputs` gives them.
    """
    tdtype = {"f32": torch.float32, "bf16": torch.bfloat16}[dtype]
    F = torch.nn.functional
    width = x.shape[1]

    def f(x, *params):
        if case == "layer_norm":
            return F.layer_norm(x, (width,), *params, eps=EPSILON)
        return F.rms_norm(x, (width,), *params, eps=EPSILON)

    def tensor(a, grad=False):
        return torch.from_numpy(a).to(device=device, dtype=tdtype).requires_grad_(grad)

    pt, pg = tuple(map(tensor, params)), tuple(tensor(p, True) for p in params)
    copies = []
    for _ in range(sets):
        xg = tensor(x, True)
        copies.append((tensor(x), xg, tensor(dy), f(xg, *pg)))  # x, x with grad, dy, saved y

    def forward(xt, xg, dyt, saved):
        with torch.no_grad():
            return f(xt, *pt), TorchSync()

    def forward_stats(xt, xg, dyt, saved):
        return f(xg, *pg), TorchSync()

    def backward(xt, xg, dyt, saved):
        return torch.autograd.grad(saved, (xg, *pg), dyt, retain_graph=True), TorchSync()

    def forward_backward(xt, xg, dyt, saved):
        y = f(xg, *pg)
        return (y, *torch.autograd.grad(y, (xg, *pg), dyt)), TorchSync()

    passes = {"forward": forward, "forward_stats": forward_stats, "backward": backward,
              "forward_backward": forward_backward}
    functions = {k: rotating(fn, copies) for k, fn in passes.items()}
    first = {k: fn(*copies[0])[0] for k, fn in passes.items()}
    outputs = {"forward": (first["forward"],), "forward_stats": (first["forward_stats"],),
               "backward": (None, *first["backward"]),
               "forward_backward": first["forward_backward"]}
    as_jax = (lambda t: None if t is None
              else jnp.asarray(t.detach().float().cpu().numpy()))
    return functions, {k: tuple(map(as_jax, v)) for k, v in outputs.items()}


def reference(case: str) -> Callable[..., tuple[jax.Array, ...]]:
    """``(dy, x, *params) -> (y, dx, dparams...)`` from lnjax "xla", to run in f32 (lnjax's
    default path where lnjax takes no ``implementation=``)."""
    keyword = {"implementation": "xla"} if accepts_implementation() else {}
    fn = lnjax.layer_norm if case == "layer_norm" else lnjax.rms_norm

    def forward_backward(dy, *a):
        y, pullback = jax.vjp(lambda x, *p: fn(x, *p, epsilon=EPSILON, **keyword), *a)
        return (y, *pullback(dy))
    return forward_backward


def check_error(outputs: dict[str, tuple], ref: tuple) -> float:
    """The largest ``max |out - ref| / max |ref|`` over every output of every pass."""
    worst = 0.0
    for outs in outputs.values():
        for out, r in zip(outs, ref):
            if out is None:
                continue
            err, scale = map(float, _error_terms(jnp.asarray(out).reshape(r.shape), r))
            worst = max(worst, err / max(scale, 1e-30) if np.isfinite(err) else float("inf"))
    return worst


@jax.jit
def _error_terms(out: jax.Array, ref: jax.Array) -> tuple[jax.Array, jax.Array]:
    return jnp.max(jnp.abs(out.astype(jnp.float32) - ref)), jnp.max(jnp.abs(ref))


def _describe(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".splitlines()[0]
    return text if len(text) <= 300 else text[:297] + "..."


def run_group(case: str, shape: tuple[int, int], dtype: str, inputs, config: Config,
              torch_device: str | None) -> dict[str, Any]:
    """Checks and times one group; returns its record (rows, errors, ratios, copy)."""
    record: dict[str, Any] = {"case": case, "shape": list(shape), "dtype": dtype,
                              "errors": {}, "checks": {}, "rows": []}
    functions = checked_passes(case, dtype, inputs, torch_device, record)
    timed = [name for name in functions if name != "copy"]
    ratios = [TimeRatio("copy", name) for name in timed]
    for library in ("flax", "torch"):
        for ours in LNJAX:
            ratios.append(TimeRatio(f"{library}: forward_backward", f"{ours}: forward_backward",
                                    FLAX_SPEEDUP if library == "flax" else None))
    result = measure(functions, ratios, rounds=config.rounds, min_time=config.min_time,
                     pipelined=True)
    by_label = {r["label"]: r for r in result["ratios"]}
    modules = {name: program_name(*name.split(": ")) for name in timed
               if not name.startswith("torch")}
    try:
        device_ms = device_times(functions, {"copy": "jit_copy", **modules},
                                 calls=config.profile_calls)
    except Exception as e:  # noqa: BLE001 - the wall-clock times stand alone
        device_ms = {}
        record["device_time_note"] = f"device times not measured: {_describe(e)}"
    if device_basis() and "copy" not in device_ms and "device_time_note" not in record:
        record["device_time_note"] = ("device times not measured: the trace held no events of "
                                      "the copy's program, so GB/s use the wall clock")
    copy = copy_bytes(shape, dtype)
    record["copy_ms"] = result["median_ms"]["copy"]
    record["copy_device_ms"] = device_ms.get("copy")
    copy_ms = record["copy_device_ms"] if device_basis() else None
    record["copy_gb_per_s"] = copy / (copy_ms or record["copy_ms"]) / 1e6
    for name in timed:
        library, pass_ = name.split(": ")
        nbytes = pass_bytes(case, pass_, shape, dtype)
        total = nbytes["read"] + nbytes["written"]
        ms, dev = result["median_ms"][name], device_ms.get(name)
        row = {"case": case, "shape": list(shape), "dtype": dtype, "library": library,
               "pass": pass_, "ms": ms, "device_ms": dev, "bytes_read": nbytes["read"],
               "bytes_written": nbytes["written"]}
        if copy_ms is not None and dev is not None:
            row.update(basis="device", gb_per_s=total / dev / 1e6,
                       copy_fraction=copy_ms / dev * total / copy)
        else:
            row.update(basis="wall", gb_per_s=total / ms / 1e6,
                       copy_fraction=by_label[f"copy / {name}"]["value"] * total / copy)
        record["rows"].append(row)
    record["ratios"] = [r for r in result["ratios"] if not r["label"].startswith("copy / ")]
    return record


def checked_passes(case: str, dtype: str, inputs, torch_device: str | None,
                   record: dict[str, Any]) -> dict[str, Callable[[], Any]]:
    """The copy and every library's passes that compiled and match the reference, named
    ``"library: pass"``; the others' errors and every check's error go into ``record``."""
    x, scale, bias, dy = inputs
    params_np = (scale, bias) if case == "layer_norm" else (scale,)
    jdtype = DTYPES[dtype]
    args = tuple(jnp.asarray(a, jdtype) for a in (x, *params_np))
    dyj = jnp.asarray(dy, jdtype)
    sets = copies(x.shape, dtype)
    record["copies"] = sets
    arg_sets = [args] + [(jnp.copy(args[0]), *args[1:]) for _ in range(sets - 1)]
    dys = [dyj] + [jnp.copy(dyj) for _ in range(sets - 1)]
    cpu_suite.copy_of(args[0])  # checks that XLA does not elide the copy
    functions: dict[str, Callable[[], Any]] = {
        "copy": rotating(jax.jit(jnp.copy), [a[:1] for a in arg_sets])}
    # Compile in two parallel batches: each library's forward of jax.vjp (to
    # learn its residuals) with the reference, then every pass of every library.
    norms = {lib: jax_norm(case, lib) for lib in LIBRARIES if lib != "torch"}
    ref_args = tuple(a.astype(jnp.float32) for a in (dyj, *args))
    saved = compile_all({"reference": _lower(reference(case), ref_args),
                         **{lib: _lower(lambda *a, f=f: jax.vjp(f, *a), args)
                            for lib, f in norms.items()}})
    if isinstance(saved["reference"], Exception):
        raise saved["reference"]
    ref = saved["reference"](*ref_args)
    lowered, call_sets = {}, {}
    for library, f in norms.items():
        try:
            if isinstance(saved[library], Exception):
                raise saved[library]
            pullbacks = [saved[library](*a)[1] for a in arg_sets]
            for pass_, low in lower_passes(f, args, dyj, pullbacks[0], name=library).items():
                lowered[library, pass_] = low
            for a, d, pullback in zip(arg_sets, dys, pullbacks):
                for pass_, call_args in pass_arguments(a, d, pullback).items():
                    call_sets.setdefault((library, pass_), []).append(call_args)
        except Exception as e:  # noqa: BLE001 - a failing library is reported, not fatal
            record["errors"][library] = _describe(e)
    compiled = compile_all(lowered)
    libraries = [lib for lib in LIBRARIES if lib != "torch" or torch_device is not None]
    for library in libraries:
        if library in record["errors"]:
            continue
        try:
            if library == "torch":
                # Round through the dtype so that PyTorch sees JAX's very inputs.
                as_np = [np.array(jnp.asarray(a, jdtype).astype(jnp.float32))
                         for a in (x, *params_np, dy)]
                lib_functions, outputs = torch_passes(case, as_np[0], tuple(as_np[1:-1]),
                                                      as_np[-1], dtype, torch_device,
                                                      sets=sets)
            else:
                for pass_ in PASSES:
                    if isinstance(compiled[library, pass_], Exception):
                        raise compiled[library, pass_]
                lib_functions = {p: rotating(compiled[library, p], call_sets[library, p])
                                 for p in PASSES}
                outputs = jax_outputs(lib_functions)
            error = check_error(outputs, ref)
        except Exception as e:  # noqa: BLE001 - a failing library is reported, not fatal
            record["errors"][library] = _describe(e)
            continue
        record["checks"][library] = error
        if not error <= TOLERANCE[dtype]:
            record["errors"][library] = (f"check failed: max |out - ref| / max |ref| = "
                                         f"{error:.3g} > {TOLERANCE[dtype]:g}")
            continue
        functions.update({f"{library}: {p}": fn for p, fn in lib_functions.items()})
    return functions


# --------------------------------------------------------------------------
# Targets.
# --------------------------------------------------------------------------


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target the measurements can say something about, met or not."""
    out = []
    for group in results["groups"]:
        where = {k: group[k] for k in ("case", "shape", "dtype")}
        for row in group["rows"]:
            if row["library"] not in LNJAX:
                continue
            if row["pass"] in COPY_TARGETS:
                goal = COPY_TARGETS[row["pass"]]
                out.append({"target": f"{PASSES[row['pass']]} ≥ {goal:g} × copy bandwidth",
                            "library": row["library"], **where, "value": row["copy_fraction"],
                            "goal": goal, "met": row["copy_fraction"] >= goal,
                            "basis": row["basis"]})
            tokamax = TOKAMAX["ms"].get(row["pass"])
            if (tokamax is not None and group["case"] == TOKAMAX["case"]
                    and tuple(group["shape"]) == TOKAMAX["shape"]
                    and group["dtype"] == TOKAMAX["dtype"]):
                ms = row["device_ms"] if row["basis"] == "device" else row["ms"]
                out.append({"target": f"tokamax {PASSES[row['pass']]} ≤ {tokamax:g} ms",
                            "library": row["library"], **where, "value": ms, "goal": tokamax,
                            "met": ms <= tokamax, "basis": row["basis"]})
        for r in group["ratios"]:
            if r["target"] is not None:
                out.append({"target": f"forward+backward ≥ {r['target']:g}× flax "
                                      "(flax / lnjax time)",
                            "library": r["denominator"].split(": ")[0], **where,
                            "value": r["value"], "goal": r["target"], "met": r["met"],
                            "basis": "wall"})
    return out


# --------------------------------------------------------------------------
# The report.
# --------------------------------------------------------------------------


def _where(rec: dict[str, Any]) -> str:
    return f"{rec['case']} {rec['shape'][0]}x{rec['shape'][1]} {rec['dtype']}"


def _gb(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def _target_summary(rows: list[dict[str, Any]], library: str) -> str:
    mine = [t for t in rows if t["library"] == library]
    if not mine:
        return "not measured"
    if len(mine) == 1:
        return f"{mine[0]['value']:.3g}: " + ("met" if mine[0]["met"] else "**not met**")
    worst = min(mine, key=lambda t: t["value"] / t["goal"])
    met = sum(t["met"] for t in mine)
    return (f"{met} of {len(mine)} met" + ("" if met == len(mine) else "; **not met**")
            + f"; worst {worst['value']:.3g} ({_where(worst)})")


def markdown(results: dict[str, Any]) -> str:
    """The report: the device, the table of passes, the targets, the LSTM, the notes."""
    d, m, c = results["device"], results["machine"], results["config"]
    lines = [f"Device: **{d['device_kind']}** (platform {d['platform']}, "
             f"{d['device_count']} device(s)); {d['torch_note']}. jax {m['jax']}, flax "
             f"{m['flax']}; host {m['cpu']}, {m['cores']} cores.", "",
             "Each cell: ms per call, wall clock (median of "
             f"{c['rounds']} interleaved rounds, each a pipeline of calls waited for once) / "
             "on the device (the program's kernels, from a `jax.profiler` trace; JAX only) · "
             "GB/s (bytes read + written, the byte model of `benchmarks/device.py`) · the "
             "fraction of a copy of x's bandwidth (`× copy`). "
             + ("GB/s and `× copy` use the device time where there is one (else the wall "
                "clock), as does the copy column." if device_basis() else
                "On a CPU, GB/s and `× copy` use the wall clock."), ""]
    rows = []
    for group in results["groups"]:
        cells = {(r["library"], r["pass"]): r for r in group["rows"]}
        for pass_, label in PASSES.items():
            row = [_where(group), label, _gb(group["copy_gb_per_s"])]
            for library in LIBRARIES:
                r = cells.get((library, pass_))
                dev = "—" if r is None or r["device_ms"] is None else f"{r['device_ms']:.3g}"
                row.append("—" if r is None else f"{r['ms']:.3g} / {dev} · "
                           f"{_gb(r['gb_per_s'])} · {r['copy_fraction']:.2f}")
            rows.append(row)
    if rows:
        lines.append(report.table(["group", "pass", "copy GB/s",
                                   *(f"{lib} (ms wall / device · GB/s · × copy)"
                                     for lib in LIBRARIES)], rows, align="llrrrrr"))
    else:
        lines.append("No group was timed.")
    tgt = results["targets"]
    if tgt:
        labels = list(dict.fromkeys(t["target"] for t in tgt))
        lines += ["", report.table(
            ["target", *LNJAX],
            [[label, *(_target_summary([t for t in tgt if t["target"] == label], lib)
                       for lib in LNJAX)] for label in labels])]
        if any(t["target"].startswith("tokamax") for t in tgt):
            lines.append(f"\ntokamax's figures were measured on an H100; this run: "
                         f"{d['device_kind']}.")
    lstm = results.get("lstm")
    if lstm and "median_ms" in lstm:
        lines += ["", f"{lstm['title']} (flax LSTM: `RNN(OptimizedLSTMCell)`; torch: "
                  "`torch.nn.LSTM`, cuDNN):", "",
                  report.table(["library", "median ms"],
                               [[k, f"{v:.3f}"] for k, v in lstm["median_ms"].items()],
                               align="lr"), "",
                  report.table(["ratio", "value", "target", "met"],
                               [report.ratio_cells(r) for r in lstm["ratios"]], align="lrrl")]
    images = [r for r in results.get("image_norms") or [] if "median_ms" in r]
    if images:
        lines += ["", "Batch, group and instance norm, layer norm over (H, W, C), masked "
                  "layer norm and a ResNet-style block (forward + backward of the Linen "
                  "module unless named; torch in NCHW):", "",
                  report.table(["case", "median ms", "ratios"],
                               [[r["title"], ", ".join(f"{k} {v:.3f}"
                                                       for k, v in r["median_ms"].items()),
                                 ", ".join(" ".join(report.ratio_cells(t)[:2])
                                           for t in r["ratios"])]
                                for r in images], align="lll")]
    notes = list(results["notes"])
    notes += [f"{_where(g)}: {lib}: {err}" for g in results["groups"]
              for lib, err in g["errors"].items()]
    notes += [f"{_where(g)}: {g['device_time_note']}" for g in results["groups"]
              if g.get("device_time_note")]
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: pathlib.Path) -> None:
    """Fractions of copy bandwidth: one panel per pass and dtype, bars per library."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dtypes = results["config"]["dtypes"]
    fig, axes = plt.subplots(len(PASSES), len(dtypes), squeeze=False,
                             figsize=(7 * len(dtypes), 3 * len(PASSES)))
    for row, (pass_, label) in enumerate(PASSES.items()):
        for col, dtype in enumerate(dtypes):
            ax = axes[row][col]
            groups = [g for g in results["groups"] if g["dtype"] == dtype]
            xs = np.arange(len(groups))
            for i, library in enumerate(LIBRARIES):
                values = [next((r["copy_fraction"] for r in g["rows"]
                                if r["library"] == library and r["pass"] == pass_), 0.0)
                          for g in groups]
                ax.bar(xs + (i - 1.5) * 0.2, values, 0.2, label=library)
            if pass_ in COPY_TARGETS:
                ax.axhline(COPY_TARGETS[pass_], color="black", lw=1, ls="--")
            ax.set_xticks(xs, [f"{SHORT[g['case']]}\n{g['shape'][0]}x{g['shape'][1]}"
                               for g in groups], fontsize=7)
            ax.set_title(f"{label}, {dtype}", fontsize=9)
            ax.set_ylabel("× copy bandwidth", fontsize=8)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"lnjax on {results['device']['device_kind']} "
                 f"({results['device']['platform']}); dashed: targets", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _save(results: dict[str, Any], out: pathlib.Path) -> None:
    results["targets"] = targets(results)
    report.write(out, "results", results, markdown(results))


# --------------------------------------------------------------------------
# Running.
# --------------------------------------------------------------------------


def run(*, quick: bool = False, out: str | os.PathLike = DEFAULT_OUT,
        cases: list[str] | None = None, max_seconds: float | None = None,
        progress: bool = True) -> dict[str, Any]:
    """Runs the chosen cases within the time budget, writes the three files, returns the results."""
    overrides = dict(QUICK) if quick else {}
    if max_seconds is not None:
        overrides["max_seconds"] = max_seconds
    config = Config(**overrides)
    budget = Budget(config.max_seconds)
    names = list(CASES) if cases is None else list(cases)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        raise ValueError(f"unknown case(s) {unknown}; known: {list(CASES)}")
    out = pathlib.Path(out)
    device = device_info()
    results: dict[str, Any] = {"device": device, "machine": report.machine(),
                               "config": dataclasses.asdict(config), "quick": quick,
                               "lnjax_implementation_keyword": accepts_implementation(),
                               "groups": [], "lstm": None, "image_norms": [],
                               "notes": [device["torch_note"]],
                               "skipped": []}
    if not results["lnjax_implementation_keyword"]:
        results["notes"].append("lnjax.layer_norm takes no `implementation=` yet: the "
                                "reference is lnjax's default path")
    # Norm groups in order; the LSTM after layer norm (ahead of RMS norm).
    plan = [(case, shape, dtype) for case in ("layer_norm", "rms_norm") if case in names
            for shape in config.shapes for dtype in config.dtypes]
    if "lstm" in names:
        plan.insert(sum(1 for p in plan if p[0] == "layer_norm"), ("lstm", None, None))
    if "image_norms" in names:
        plan.append(("image_norms", None, None))
    inputs: dict[tuple[int, int], tuple] = {}
    for case, shape, dtype in plan:
        what = case if shape is None else _where({"case": case, "shape": shape,
                                                  "dtype": dtype})
        if not budget.allows():
            results["skipped"].append(what)
            continue
        if progress:
            print(f"[{budget.elapsed():6.1f} s] {what}", flush=True)
        start = time.perf_counter()
        if case == "lstm":
            results["lstm"] = _lstm(config, device["torch_device"])
        elif case == "image_norms":
            results["image_norms"] = _image_norms(config, device["torch_device"])
        else:
            if shape not in inputs:
                inputs.clear()  # one shape's inputs at a time
                inputs[shape] = cpu_suite.norm_inputs(shape, config.seed)
            try:
                group = run_group(case, shape, dtype, inputs[shape], config,
                                  device["torch_device"])
            except Exception as e:  # noqa: BLE001 - one failing group does not end the run
                results["notes"].append(f"{what}: failed: {_describe(e)}")
            else:
                group["seconds"] = time.perf_counter() - start
                results["groups"].append(group)
        budget.took(time.perf_counter() - start)
        _free(device["torch_device"])
        _save(results, out)
    if results["skipped"]:
        results["notes"].append(budget.skip_note(results["skipped"]))
    results["seconds"] = budget.elapsed()
    results["machine"]["load average at end"] = report.load_average()
    _save(results, out)
    try:
        plot(results, out / "results.png")
    except ImportError as e:  # pragma: no cover - matplotlib is a dependency here
        results["notes"].append(f"results.png not written: {_describe(e)}")
        _save(results, out)
    return results


def _lstm(config: Config, torch_device: str | None) -> dict[str, Any]:
    cpu_config = cpu_suite.Config(lstm=config.lstm, rounds=config.rounds,
                                  min_time=config.min_time, seed=config.seed)
    case = cpu_suite.lstm_case(cpu_config, flax_cell=nn.OptimizedLSTMCell,
                               torch_device=torch_device)
    return _run_untargeted(case, cpu_config)


def _run_untargeted(case: cpu_suite.Case, cpu_config: cpu_suite.Config) -> dict[str, Any]:
    """A case of the CPU suite timed here, without its targets (the CPU's, none on devices)."""
    case.ratios = [dataclasses.replace(r, target=None) for r in case.ratios]
    return cpu_suite.run_case(case, cpu_config)


def _image_norms(config: Config, torch_device: str | None) -> list[dict[str, Any]]:
    """The CPU suite's norms_fb, norms_fwd and resnet cases on this device (PyTorch on
    CUDA where it has the op, else not at all), without the CPU's targets."""
    cpu_config = cpu_suite.Config(norm_shapes=config.shapes[:1], image_shapes=config.image_shapes,
                                  resnet=config.resnet, torch_device=torch_device,
                                  rounds=config.rounds, min_time=config.min_time,
                                  seed=config.seed)
    return [_run_untargeted(case, cpu_config)
            for build in (cpu_suite.norms_fb, cpu_suite.norms_fwd, cpu_suite.resnet)
            for case in build(cpu_config)]


def _free(torch_device: str | None) -> None:
    gc.collect()
    if torch_device is not None:
        torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = report.parser(__doc__, "results", out=DEFAULT_OUT,
                           quick="small shapes, few rounds (for tests)", cases=CASES)
    parser.add_argument("--max-seconds", type=float, default=None,
                        help=f"time budget: skip what would run past it "
                             f"(default {Config.max_seconds:g})")
    args = parser.parse_args(argv)
    results = run(quick=args.quick, out=args.out, max_seconds=args.max_seconds,
                  cases=args.cases)
    print(markdown(results))
    print(f"wrote {args.out}/results.json, results.md, results.png "
          f"({results['seconds']:.0f} s)")
    return results


if __name__ == "__main__":
    main()
