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

each in four passes (forward, forward saving stats, backward,
forward+backward: :mod:`benchmarks.device_passes`), each library's outputs
first checked against lnjax ``"xla"`` in f32 (:mod:`benchmarks.device_checks`;
a library that fails is reported and not timed).

Timing (:mod:`benchmarks.harness`), two clocks:

* wall clock: the passes of a group and a jitted copy of an array of x's
  bytes are timed round-robin, medians over rounds. Each timing starts the
  calls back to back and waits once for the last (``block_until_ready``;
  ``torch.cuda.synchronize`` for PyTorch), so the host's round trip is not
  counted in each call. A kernel shorter than the host's dispatch of a call
  still measures the dispatch;
* device time (JAX programs and the copy): one ``jax.profiler`` trace of a
  few calls of each, the durations of the program's kernels added up per call
  (:func:`benchmarks.harness.device_times`): what the accelerator spends,
  without dispatch and without the gaps between a program's kernels.

On an accelerator GB/s and ``× copy`` come from the device times where the
trace gave them (the copy's too), else from the wall clock; on a CPU from the
wall clock. GB/s counts the bytes of :mod:`benchmarks.byte_model`; ``× copy``
is that bandwidth as a fraction of the copy's: ``time(copy) / time(pass)``
times the ratio of their bytes (on the wall clock the median over rounds of
the per-round ratio). Successive calls take turns over several copies of x and
dy (:func:`benchmarks.byte_model.copies`), the copy's too, so that no call
reads what an earlier one left in the cache.

The targets (:mod:`benchmarks.targets`: fractions of a copy's bandwidth, a
speed-up over flax, tokamax's times on its shape) are reported met or not per
lnjax implementation, in results.json and in the report's targets table.

Also the LSTM layers' forward+backward (``lstm``: lnjax's LN-LSTM and LSTM,
``flax.linen.RNN(OptimizedLSTMCell)``, a flax LN-LSTM and PyTorch's cuDNN
``torch.nn.LSTM`` on CUDA) and ``image_norms``: the CPU suite's ``norms_fb``,
``norms_fwd`` and ``resnet`` cases (:mod:`benchmarks.cases`) on this device,
PyTorch's layer in NCHW on CUDA where it has one (never PyTorch on the host
against JAX on a device); both on the wall clock, without the CPU suite's
targets.

A time budget (``--max-seconds``, :attr:`Config.max_seconds` by default)
skips the groups that would run past it, with a note; results.json and
results.md are rewritten after each group, so a run cut short keeps what it
measured. Writes ``results.json``, ``results.md`` and ``results.png`` (the
fractions of copy bandwidth) to ``--out`` (default
``benchmarks/results/device``) and prints the report. ``--quick``: small
shapes, few rounds (seconds on a CPU; for tests).
"""

from __future__ import annotations

import dataclasses
import gc
import importlib
import os
import pathlib
import time
import warnings
from typing import Any

# JAX would otherwise take 75% of the accelerator's memory at start, leaving
# PyTorch too little; read when the backend starts, after these imports.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402

import benchmarks.cases as shared  # noqa: E402
from benchmarks import report  # noqa: E402
from benchmarks import targets as device_targets  # noqa: E402
from benchmarks.byte_model import PASSES, copy_bytes, pass_bytes  # noqa: E402
from benchmarks.cases import torch  # noqa: E402
from benchmarks.device_checks import checked_passes, describe  # noqa: E402
from benchmarks.device_passes import (  # noqa: E402
    LIBRARIES,
    accepts_implementation,
    jax_norm,
    program_name,
)
from benchmarks.harness import Budget, TimeRatio, device_times, measure  # noqa: E402
from benchmarks.targets import FLAX_SPEEDUP, LNJAX, group_label  # noqa: E402

DEFAULT_OUT = shared.DEFAULT_OUT / "device"
CASES = ("layer_norm", "rms_norm", "lstm", "image_norms")
SHORT = {"layer_norm": "LN", "rms_norm": "RMS"}


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


# --------------------------------------------------------------------------
# One group: a normalization, a shape, a dtype.
# --------------------------------------------------------------------------


def run_group(case: str, shape: tuple[int, int], dtype: str, inputs, config: Config,
              torch_device: str | None, *, norm=jax_norm) -> dict[str, Any]:
    """Checks and times one group; returns its record (rows, errors, ratios, copy).

    ``norm(case, library)`` gives each JAX library's ``f(x, *params)``
    (:func:`benchmarks.device_passes.jax_norm`), ``inputs`` are
    :func:`benchmarks.cases.norm_inputs`.
    """
    record: dict[str, Any] = {"case": case, "shape": list(shape), "dtype": dtype,
                              "errors": {}, "checks": {}, "rows": []}
    functions = checked_passes(case, dtype, inputs, torch_device, record, norm=norm)
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
        record["device_time_note"] = f"device times not measured: {describe(e)}"
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


# --------------------------------------------------------------------------
# The CPU suite's cases on the device.
# --------------------------------------------------------------------------


def lstm(config: Config, torch_device: str | None) -> dict[str, Any]:
    """The LSTM layers (:func:`benchmarks.cases.lstm_case` with flax's
    ``OptimizedLSTMCell``) on this device, PyTorch on ``torch_device``; no targets."""
    cpu_config = shared.Config(lstm=config.lstm, rounds=config.rounds,
                               min_time=config.min_time, seed=config.seed)
    case = shared.lstm_case(cpu_config, flax_cell=nn.OptimizedLSTMCell,
                            torch_device=torch_device)
    return shared.run_case(shared.without_targets(case), cpu_config)


def image_norms(config: Config, torch_device: str | None) -> list[dict[str, Any]]:
    """The CPU suite's norms_fb, norms_fwd and resnet cases on this device (PyTorch on
    CUDA where it has the op, else not at all), without the CPU's targets."""
    cpu_config = shared.Config(norm_shapes=config.shapes[:1],
                               image_shapes=config.image_shapes, resnet=config.resnet,
                               torch_device=torch_device, rounds=config.rounds,
                               min_time=config.min_time, seed=config.seed)
    return [shared.run_case(shared.without_targets(case), cpu_config)
            for build in (shared.norms_fb, shared.norms_fwd, shared.resnet)
            for case in build(cpu_config)]


# --------------------------------------------------------------------------
# The report.
# --------------------------------------------------------------------------


def _gb(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def passes_table(groups: list[dict[str, Any]]) -> str:
    """The groups' markdown table: a row per group and pass, a column per library (ms wall /
    device · GB/s · × copy)."""
    rows = []
    for group in groups:
        cells = {(r["library"], r["pass"]): r for r in group["rows"]}
        for pass_, label in PASSES.items():
            row = [group_label(group), label, _gb(group["copy_gb_per_s"])]
            for library in LIBRARIES:
                r = cells.get((library, pass_))
                dev = "—" if r is None or r["device_ms"] is None else f"{r['device_ms']:.3g}"
                row.append("—" if r is None else f"{r['ms']:.3g} / {dev} · "
                           f"{_gb(r['gb_per_s'])} · {r['copy_fraction']:.2f}")
            rows.append(row)
    if not rows:
        return "No group was timed."
    return report.table(["group", "pass", "copy GB/s",
                         *(f"{lib} (ms wall / device · GB/s · × copy)" for lib in LIBRARIES)],
                        rows, align="llrrrrr")


def markdown(results: dict[str, Any]) -> str:
    """The report (:func:`benchmarks.report.markdown`): how to read the passes, their table,
    the targets, the LSTM and image norm cases, the notes."""
    intro = ("Each cell: ms per call, wall clock (median of interleaved rounds, each a "
             "pipeline of calls waited for once) / on the device (the program's kernels, "
             "from a `jax.profiler` trace; JAX only) · GB/s (bytes read + written, "
             "`benchmarks/byte_model.py`) · the fraction of a copy of x's bandwidth "
             "(`× copy`). "
             + ("GB/s and `× copy` use the device time where there is one (else the wall "
                "clock), as does the copy column." if device_basis() else
                "On a CPU, GB/s and `× copy` use the wall clock."))
    tables = [passes_table(results["groups"]), device_targets.table(results["targets"])]
    if any(t["target"].startswith("tokamax") for t in results["targets"]):
        tables.append(f"tokamax's figures are an H100's; this run: "
                      f"{results['device']['device_kind']}.")
    notes = [f"{group_label(g)}: {lib}: {err}" for g in results["groups"]
             for lib, err in g["errors"].items()]
    notes += [f"{group_label(g)}: {g['device_time_note']}" for g in results["groups"]
              if g.get("device_time_note")]
    timed = ([results["lstm"]] if results.get("lstm") else []) + results["image_norms"]
    return report.markdown(results, cases=timed, intro=[intro], tables=tables, notes=notes)


def copy_fraction_panels(results: dict[str, Any]) -> dict[str, list[report.Bar]]:
    """The chart's panels: one per pass and dtype, a bar per group and library (its
    fraction of a copy's bandwidth, against the target where there is one)."""
    panels = {}
    for pass_, label in PASSES.items():
        for dtype in results["config"]["dtypes"]:
            bars = []
            for g in results["groups"]:
                for r in g["rows"]:
                    if g["dtype"] != dtype or r["pass"] != pass_:
                        continue
                    goal = device_targets.copy_target(r["library"], pass_)
                    bars.append(report.Bar(
                        f"{SHORT[g['case']]} {g['shape'][0]}x{g['shape'][1]} {r['library']}",
                        r["copy_fraction"], goal,
                        None if goal is None else r["copy_fraction"] >= goal))
            panels[f"{label}, {dtype}"] = bars
    return panels


def plot(results: dict[str, Any], path: str | os.PathLike) -> None:
    """The chart (:func:`benchmarks.report.plot`) of :func:`copy_fraction_panels`."""
    report.plot(results, path, panels=copy_fraction_panels(results),
                columns=len(results["config"]["dtypes"]), xlabel="× copy bandwidth")


def _save(results: dict[str, Any], out: pathlib.Path) -> None:
    results["targets"] = device_targets.targets(results["groups"])
    report.write(out, "results", results, markdown(results))


# --------------------------------------------------------------------------
# Running.
# --------------------------------------------------------------------------


def plan(names: list[str], config: Config) -> list[tuple[str, Any, Any]]:
    """``(case, shape, dtype)`` in the order run: the norm groups, the LSTM after layer
    norm (ahead of RMS norm), the image norms last (shape and dtype None)."""
    steps: list[tuple[str, Any, Any]] = [
        (case, shape, dtype) for case in ("layer_norm", "rms_norm") if case in names
        for shape in config.shapes for dtype in config.dtypes]
    if "lstm" in names:
        steps.insert(sum(1 for p in steps if p[0] == "layer_norm"), ("lstm", None, None))
    if "image_norms" in names:
        steps.append(("image_norms", None, None))
    return steps


def run(*, quick: bool = False, out: str | os.PathLike = DEFAULT_OUT,
        cases: list[str] | None = None, max_seconds: float | None = None,
        progress: bool = True) -> dict[str, Any]:
    """Runs the chosen cases within the time budget, writes the three files, returns the results."""
    overrides = dict(QUICK) if quick else {}
    if max_seconds is not None:
        overrides["max_seconds"] = max_seconds
    config = Config(**overrides)
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
                               "notes": [device["torch_note"]], "skipped": []}
    if not results["lnjax_implementation_keyword"]:
        results["notes"].append("lnjax.layer_norm takes no `implementation=` yet: the "
                                "reference is lnjax's default path")
    budget = Budget(config.max_seconds)
    inputs: dict[tuple[int, int], tuple] = {}  # one shape's inputs at a time
    for case, shape, dtype in plan(names, config):
        what = case if shape is None else group_label(
            {"case": case, "shape": shape, "dtype": dtype})
        if not budget.allows():
            results["skipped"].append(what)
            continue
        if progress:
            print(f"[{budget.elapsed():6.1f} s] {what}", flush=True)
        start = time.perf_counter()
        _run_step(results, config, (case, shape, dtype), what, inputs)
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
        results["notes"].append(f"results.png not written: {describe(e)}")
        _save(results, out)
    return results


def _run_step(results: dict[str, Any], config: Config, step: tuple[str, Any, Any],
              what: str, inputs: dict[tuple[int, int], tuple]) -> None:
    """Runs one step of the plan into ``results``; a failing group becomes a note.
    ``inputs`` keeps the last shape's inputs for the next dtype."""
    case, shape, dtype = step
    torch_device = results["device"]["torch_device"]
    if case == "lstm":
        results["lstm"] = lstm(config, torch_device)
    elif case == "image_norms":
        results["image_norms"] = image_norms(config, torch_device)
    else:
        if shape not in inputs:
            inputs.clear()
            inputs[shape] = shared.norm_inputs(shape, config.seed)
        start = time.perf_counter()
        try:
            group = run_group(case, shape, dtype, inputs[shape], config, torch_device)
        except Exception as e:  # noqa: BLE001 - one failing group does not end the run
            results["notes"].append(f"{what}: failed: {describe(e)}")
        else:
            group["seconds"] = time.perf_counter() - start
            results["groups"].append(group)


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


# Names that moved, by the module that has them now.
_MOVED = {
    **dict.fromkeys(("copies", "ROTATE_BYTES"), "benchmarks.byte_model"),
    **dict.fromkeys(("COPY_TARGETS", "TOKAMAX"), "benchmarks.targets"),
    **dict.fromkeys(("DTYPES", "lower_passes", "pass_arguments", "compile_all", "jax_outputs",
                     "torch_passes"), "benchmarks.device_passes"),
    **dict.fromkeys(("TOLERANCE", "reference", "check_error"), "benchmarks.device_checks"),
    "EPSILON": "benchmarks.cases",
}


def __getattr__(name: str) -> Any:
    """The names that moved to the modules of the suite's jobs (the byte model, the
    targets, the passes, the checks), with a ``DeprecationWarning``."""
    if name in _MOVED:
        warnings.warn(f"benchmarks.device.{name} is deprecated: use {_MOVED[name]}.{name}",
                      DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    main()
