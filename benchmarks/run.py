"""Speed and memory of lnjax against flax, PyTorch and a memory copy.

::

    python -m benchmarks.run [--quick] [--out DIR] [--shapes {full,tiny}] [--cases NAME,...]
    python -m benchmarks.run --device [--quick] [--out DIR] [--max-seconds S]

``--device`` runs :mod:`benchmarks.device` instead: layer/RMS norm passes
on the accelerator JAX sees (its own flags and ``benchmarks/results/device``).

Every case times its functions in one process with the benchmarks' one
harness (:mod:`benchmarks.harness`: round-robin, one timing of each function
per round, so a slow spell on a shared machine hits all of them alike) and
reports the median over rounds of each time and of each ratio. A ratio
``a / b`` (:class:`~benchmarks.harness.TimeRatio`) is time(a) / time(b):
``flax / lnjax`` is lnjax's speed-up over flax, ``lnjax / copy`` lnjax's time
in units of one copy. The reference in each case is a jitted copy of an array of the case's
size (``copy``): a pass that reads and writes those bytes once, checked to
produce a new buffer (XLA cannot elide it).

Cases (f32, CPU):

* ``ln_fb``, ``rms_fb``: layer norm / RMS norm forward + backward (the
  gradient of ``sum(y * dy)`` for x, scale and bias) at (4096, 1024),
  (16384, 256), (1024, 8192): lnjax, ``flax.linen.LayerNorm``/``RMSNorm``,
  ``torch.nn.LayerNorm``/``RMSNorm``, copy.
* ``ln_fwd``: layer norm forward alone.
* ``ln_memory``: temporary memory of the compiled forward + backward
  (``compiled.memory_analysis().temp_size_in_bytes``), lnjax against flax.
* ``norms_fb``: forward + backward of the other normalizations (the gradient of
  ``sum(y * dy)`` for x and the parameters), Linen modules against flax's
  (and PyTorch's where it has the op, in its own NCHW layout): BatchNorm in
  training (batch statistics) at (64, 32, 32, 64), (128, 16, 16, 32) and
  (4096, 1024); GroupNorm(8), InstanceNorm and LayerNorm over (H, W, C) with
  a per-channel scale at the two image shapes; LayerNorm with a mask at
  (4096, 1024). Each with the compiled temporary memory of both.
* ``norms_fwd``: BatchNorm's forward alone, in training and in evaluation
  (running averages), at the two image shapes.
* ``resnet``: a ResNet-style block (conv, BatchNorm, ReLU, conv, BatchNorm,
  residual) at (32, 16, 16, 32), forward + backward, lnjax's BatchNorm
  against flax's in the same block.
* ``lstm``: LN-LSTM sequence layer forward + backward, T=100, batch 32,
  input 64, hidden 256: ``lnjax.linen.LNLSTM`` with and without layer norm,
  ``flax.linen.RNN(LSTMCell)``, a flax LN-LSTM (``nn.LayerNorm`` in an RNN
  cell, Eqs. 20-22) and ``torch.nn.LSTM``.

Writes ``results.json``, ``results.md`` (a table with the machine) and
``results.png`` (a bar chart of the ratios) to ``--out`` (default
``benchmarks/results``). ``--quick`` takes fewer rounds (under a minute);
``--shapes tiny`` uses toy sizes (for tests).

More cases register with :func:`register` (see ``CASES``).
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

import lnjax.linen as lnn
from benchmarks import report
from benchmarks.harness import TimeRatio, block, jax_call, measure
from lnjax.experiments import common

try:  # PyTorch is compared when it is installed (the ``torch`` extra).
    import torch
except ImportError:  # pragma: no cover - depends on the environment
    torch = None

DEFAULT_OUT = pathlib.Path(__file__).resolve().parent / "results"
EPSILON = 1e-6


# --------------------------------------------------------------------------
# Configuration and results.
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Config:
    """What to run: sizes and how long to time."""

    norm_shapes: tuple[tuple[int, int], ...] = ((4096, 1024), (16384, 256), (1024, 8192))
    lstm: tuple[int, int, int, int] = (100, 32, 64, 256)  # T, batch, input, hidden
    image_shapes: tuple[tuple[int, ...], ...] = ((64, 32, 32, 64), (128, 16, 16, 32))
    resnet: tuple[int, int, int] = (32, 16, 32)  # batch, height = width, channels
    torch_device: str | None = "cpu"  # where PyTorch's image norms run (None: not at all)
    rounds: int = 15  # timings of each function (the median is reported)
    min_time: float = 0.02  # seconds per timing (calls are repeated to reach it)
    seed: int = 0


QUICK = dict(rounds=3, min_time=0.005)
TINY = dict(norm_shapes=((64, 128), (256, 32), (16, 512)), lstm=(5, 4, 8, 16),
            image_shapes=((4, 4, 4, 16),), resnet=(4, 4, 8))


@dataclasses.dataclass
class Case:
    """One benchmark: timed functions (no arguments, blocking) and the ratios to report."""

    name: str
    title: str
    functions: dict[str, Callable[[], Any]] = dataclasses.field(default_factory=dict)
    ratios: list[TimeRatio] = dataclasses.field(default_factory=list)
    values: dict[str, float] = dataclasses.field(default_factory=dict)  # untimed numbers
    note: str = ""


# name -> builder(config) -> list of Case. Each builder runs inside the progress
# bar and may return several cases (one per shape).
CASES: dict[str, Callable[[Config], list[Case]]] = {}


def register(name: str):
    """Decorator: add a case builder ``f(config) -> list[Case]`` under ``name``."""
    def deco(builder):
        CASES[name] = builder
        return builder
    return deco


# --------------------------------------------------------------------------
# The copy reference.
# --------------------------------------------------------------------------


def copy_of(x: jax.Array) -> Callable[[], Any]:
    """A jitted copy of ``x``, checked to write a new buffer."""
    copy = jax.jit(jnp.copy)
    y = block(copy(x))
    if y.unsafe_buffer_pointer() == x.unsafe_buffer_pointer():
        raise RuntimeError("the copy baseline was elided by XLA")
    return jax_call(copy, x)


# --------------------------------------------------------------------------
# Layer norm and RMS norm.
# --------------------------------------------------------------------------


def norm_inputs(shape, seed):
    """``(x, scale, bias, dy)``, float32 NumPy: x and dy standard normal of ``shape``
    (rows, width), scale ``1 + 0.1 N`` and bias ``0.1 N`` of the width."""
    rng = np.random.default_rng(seed)
    rows, width = shape
    x = rng.standard_normal(shape).astype(np.float32)
    scale = (1 + 0.1 * rng.standard_normal(width)).astype(np.float32)
    bias = (0.1 * rng.standard_normal(width)).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    return x, scale, bias, dy


_COMPILED: dict[tuple, Any] = {}  # (kind, shape, library) -> compiled fwd+bwd, shared by cases


def _compiled_forward_backward(kind: str, library: str, x, dy, params):
    """``(x, dy, params) -> (y, dx, dparams)`` compiled once per kind, shape and library."""
    key = (kind, x.shape, library)
    if key not in _COMPILED:
        ours, theirs, _ = _norm_modules(kind)
        module = ours if library == "lnjax" else theirs

        def run(x, dy, params):
            y, vjp = jax.vjp(lambda x, p: module.apply({"params": p}, x), x, params)
            return (y,) + vjp(dy)
        _COMPILED[key] = jax.jit(run).lower(x, dy, params).compile()
    return _COMPILED[key]


def _torch_forward_backward(layer, x, dy, device: str = "cpu"):
    layer = layer.to(device)
    xt = torch.from_numpy(x).to(device).requires_grad_(True)
    dyt = torch.from_numpy(dy).to(device)
    wait = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def run():
        for p in (xt, *layer.parameters()):
            p.grad = None
        layer(xt).backward(dyt)
        wait()
    return run


def _norm_modules(kind: str):
    if kind == "ln":
        return (lnn.LayerNorm(epsilon=EPSILON), nn.LayerNorm(epsilon=EPSILON),
                ("scale", "bias"))
    return lnn.RMSNorm(epsilon=EPSILON), nn.RMSNorm(epsilon=EPSILON), ("scale",)


def _torch_norm(kind: str, width: int, scale, bias):
    if torch is None or (kind == "rms" and not hasattr(torch.nn, "RMSNorm")):
        return None
    layer = (torch.nn.LayerNorm(width, eps=EPSILON) if kind == "ln"
             else torch.nn.RMSNorm(width, eps=EPSILON))
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(scale))
        if kind == "ln":
            layer.bias.copy_(torch.from_numpy(bias))
    return layer


def _norm_fb_cases(config: Config, kind: str) -> list[Case]:
    title = {"ln": "LayerNorm", "rms": "RMSNorm"}[kind]
    cases = []
    for shape in config.norm_shapes:
        x, scale, bias, dy = norm_inputs(shape, config.seed)
        names = _norm_modules(kind)[2]
        params = dict(zip(names, (jnp.asarray(scale), jnp.asarray(bias))))
        xj, dyj = jnp.asarray(x), jnp.asarray(dy)
        case = Case(f"{kind}_fb {shape[0]}x{shape[1]}",
                    f"{title} fwd+bwd {shape[0]}x{shape[1]}")
        case.functions["copy"] = copy_of(xj)
        for library in ("lnjax", "flax"):
            compiled = _compiled_forward_backward(kind, library, xj, dyj, params)
            case.functions[library] = jax_call(compiled, xj, dyj, params)
        layer = _torch_norm(kind, shape[1], scale, bias)
        if layer is not None:
            case.functions["torch"] = _torch_forward_backward(layer, x, dy)
        case.note = "copy: one jitted copy of x; fwd+bwd: y and the gradients for x, scale, bias"
        case.ratios = [TimeRatio("flax", "lnjax", 3.0)]
        if layer is not None:
            case.ratios.append(TimeRatio("torch", "lnjax", 1.0))
        case.ratios.append(TimeRatio("lnjax", "copy", 4.0, at_least=False))
        cases.append(case)
    return cases


@register("ln_fb")
def ln_fb(config: Config) -> list[Case]:
    return _norm_fb_cases(config, "ln")


@register("rms_fb")
def rms_fb(config: Config) -> list[Case]:
    return _norm_fb_cases(config, "rms")


@register("ln_fwd")
def ln_fwd(config: Config) -> list[Case]:
    cases = []
    for shape in config.norm_shapes:
        x, scale, bias, _ = norm_inputs(shape, config.seed)
        ours, theirs, _ = _norm_modules("ln")
        params = {"scale": jnp.asarray(scale), "bias": jnp.asarray(bias)}
        xj = jnp.asarray(x)
        case = Case(f"ln_fwd {shape[0]}x{shape[1]}", f"LayerNorm fwd {shape[0]}x{shape[1]}")
        case.functions["copy"] = copy_of(xj)
        for name, module in (("lnjax", ours), ("flax", theirs)):
            fwd = jax.jit(lambda x, p, module=module: module.apply({"params": p}, x))
            case.functions[name] = jax_call(fwd, xj, params)
        layer = _torch_norm("ln", shape[1], scale, bias)
        if layer is not None:
            xt = torch.from_numpy(x)

            def torch_fwd(layer=layer, xt=xt):
                with torch.no_grad():
                    layer(xt)
            case.functions["torch"] = torch_fwd
        case.ratios = [TimeRatio("flax", "lnjax"), TimeRatio("lnjax", "copy", 1.3, at_least=False)]
        if layer is not None:
            case.ratios.insert(1, TimeRatio("torch", "lnjax"))
        cases.append(case)
    return cases


@register("ln_memory")
def ln_memory(config: Config) -> list[Case]:
    """Temporary memory of the compiled forward+backward (no timing)."""
    cases = []
    for kind in ("ln", "rms"):
        for shape in config.norm_shapes:
            x, scale, bias, dy = norm_inputs(shape, config.seed)
            names = _norm_modules(kind)[2]
            params = dict(zip(names, (jnp.asarray(scale), jnp.asarray(bias))))
            args = (jnp.asarray(x), jnp.asarray(dy), params)
            case = Case(f"{kind}_memory {shape[0]}x{shape[1]}",
                        f"{'LayerNorm' if kind == 'ln' else 'RMSNorm'} {shape[0]}x{shape[1]}")
            for library in ("lnjax", "flax"):
                compiled = _compiled_forward_backward(kind, library, *args)
                temp = compiled.memory_analysis().temp_size_in_bytes
                case.values[f"{library} temp MiB"] = temp / 2**20
            case.values["x MiB"] = x.nbytes / 2**20
            cases.append(case)
    return cases


# --------------------------------------------------------------------------
# Batch, group and instance norm, layer norm over several axes or with a mask.
# --------------------------------------------------------------------------


def _image_modules(shape: tuple[int, ...]) -> dict[str, tuple[Any, Any, Any]]:
    """``title -> (lnjax module, flax module, torch layer or None)`` for input ``shape``."""
    channels, image = shape[-1], len(shape) == 4
    mods: dict[str, tuple[Any, Any, Any]] = {"BatchNorm": (
        lnn.BatchNorm(use_running_average=False, epsilon=EPSILON),
        nn.BatchNorm(use_running_average=False, epsilon=EPSILON),
        None if torch is None else (torch.nn.BatchNorm2d(channels, eps=EPSILON) if image
                                    else torch.nn.BatchNorm1d(channels, eps=EPSILON)))}
    if image:
        mods["GroupNorm(8)"] = (
            lnn.GroupNorm(num_groups=8, epsilon=EPSILON),
            nn.GroupNorm(num_groups=8, epsilon=EPSILON),
            None if torch is None else torch.nn.GroupNorm(8, channels, eps=EPSILON))
        mods["InstanceNorm"] = (
            lnn.InstanceNorm(epsilon=EPSILON), nn.InstanceNorm(epsilon=EPSILON),
            None if torch is None else torch.nn.InstanceNorm2d(channels, eps=EPSILON,
                                                               affine=True))
        mods["LayerNorm(H,W,C)"] = (
            lnn.LayerNorm(reduction_axes=(1, 2, 3), feature_axes=-1, epsilon=EPSILON),
            nn.LayerNorm(reduction_axes=(1, 2, 3), feature_axes=-1, epsilon=EPSILON), None)
    else:
        mods["LayerNorm masked"] = (lnn.LayerNorm(epsilon=EPSILON),
                                    nn.LayerNorm(epsilon=EPSILON), None)
    return mods


def _module_fb(module, x, dy, variables, mask):
    """``(x, dy, params) -> (y, dx, dparams)`` of a Linen module, compiled."""
    rest = {k: v for k, v in variables.items() if k != "params"}

    def apply(x, p):
        kwargs: dict[str, Any] = {} if mask is None else {"mask": mask}
        if rest:  # batch statistics: updated, the update dropped
            return module.apply({"params": p, **rest}, x, mutable=list(rest), **kwargs)[0]
        return module.apply({"params": p}, x, **kwargs)

    def run(x, dy, p):
        y, vjp = jax.vjp(apply, x, p)
        return (y,) + vjp(dy)
    return jax.jit(run).lower(x, dy, variables["params"]).compile()


def _torch_image_fb(layer, x, dy, device: str):
    """PyTorch's layer forward + backward in its own layout (channels second)."""
    to_torch = (0, 3, 1, 2) if x.ndim == 4 else (0, 1)
    return _torch_forward_backward(layer, np.ascontiguousarray(x.transpose(to_torch)),
                                   np.ascontiguousarray(dy.transpose(to_torch)), device)


def _image_inputs(shape, seed):
    rng = np.random.default_rng(seed)
    x = (3 + 2 * rng.standard_normal(shape)).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    return x, dy


@register("norms_fb")
def norms_fb(config: Config) -> list[Case]:
    cases = []
    shapes = [*config.image_shapes, config.norm_shapes[0]]
    for shape in shapes:
        x, dy = _image_inputs(shape, config.seed)
        xj, dyj = jnp.asarray(x), jnp.asarray(dy)
        dims = "x".join(map(str, shape))
        for title, (ours, theirs, layer) in _image_modules(shape).items():
            layer = None if config.torch_device is None else layer
            mask = (jnp.asarray(np.random.default_rng(1).random(shape) < 0.9)
                    if "masked" in title else None)
            variables = theirs.init(jax.random.key(0), xj)
            case = Case(f"norms_fb {title} {dims}", f"{title} fwd+bwd {dims}")
            case.functions["copy"] = copy_of(xj)
            for library, module in (("lnjax", ours), ("flax", theirs)):
                compiled = _module_fb(module, xj, dyj, variables, mask)
                case.functions[library] = jax_call(compiled, xj, dyj, variables["params"])
                case.values[f"{library} temp MiB"] = (
                    compiled.memory_analysis().temp_size_in_bytes / 2**20)
            case.values["x MiB"] = x.nbytes / 2**20
            if layer is not None:
                case.functions["torch"] = _torch_image_fb(layer, x, dy,
                                                          config.torch_device or "cpu")
            fast = title in ("BatchNorm", "GroupNorm(8)")
            case.ratios = [TimeRatio("flax", "lnjax", 1.5 if fast else 1.0)]
            if layer is not None:
                case.ratios.append(TimeRatio("torch", "lnjax"))
            case.ratios.append(TimeRatio("lnjax", "copy"))
            case.note = ("y and the gradients for x and the parameters; BatchNorm with batch "
                         "statistics; torch in NCHW")
            cases.append(case)
    return cases


@register("norms_fwd")
def norms_fwd(config: Config) -> list[Case]:
    cases = []
    for shape in config.image_shapes:
        x, _ = _image_inputs(shape, config.seed)
        xj = jnp.asarray(x)
        dims = "x".join(map(str, shape))
        for train in (True, False):
            kwargs = {"use_running_average": not train, "epsilon": EPSILON}
            mode = "train" if train else "eval"
            case = Case(f"norms_fwd BatchNorm {mode} {dims}",
                        f"BatchNorm fwd ({mode}) {dims}")
            case.functions["copy"] = copy_of(xj)
            for library, module in (("lnjax", lnn.BatchNorm(**kwargs)),
                                    ("flax", nn.BatchNorm(**kwargs))):
                variables = module.init(jax.random.key(0), xj)
                fwd = jax.jit(lambda x, v, module=module: module.apply(
                    v, x, mutable=["batch_stats"])[0])
                case.functions[library] = jax_call(fwd, xj, variables)
            case.ratios = [TimeRatio("flax", "lnjax", 1.0), TimeRatio("lnjax", "copy")]
            cases.append(case)
    return cases


class ResBlock(nn.Module):
    """conv 3x3, BatchNorm, ReLU, conv 3x3, BatchNorm, residual, ReLU (He et al. 2016)."""

    norm: Callable[..., nn.Module]

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        y = nn.Conv(c, (3, 3), use_bias=False)(x)
        y = nn.relu(self.norm(use_running_average=False, epsilon=EPSILON)(y))
        y = nn.Conv(c, (3, 3), use_bias=False)(y)
        y = self.norm(use_running_average=False, epsilon=EPSILON)(y)
        return nn.relu(x + y)


@register("resnet")
def resnet(config: Config) -> list[Case]:
    batch, size, channels = config.resnet
    shape = (batch, size, size, channels)
    x, dy = _image_inputs(shape, config.seed)
    xj, dyj = jnp.asarray(x), jnp.asarray(dy)
    case = Case(f"resnet {batch}x{size}x{size}x{channels}",
                f"ResNet block fwd+bwd {batch}x{size}x{size}x{channels}")
    for library, norm in (("lnjax", lnn.BatchNorm), ("flax", nn.BatchNorm)):
        block_ = ResBlock(norm)
        variables = block_.init(jax.random.key(0), xj)
        compiled = _module_fb(block_, xj, dyj, variables, None)
        case.functions[library] = jax_call(compiled, xj, dyj, variables["params"])
    case.ratios = [TimeRatio("flax", "lnjax", 1.0)]
    case.note = "two 3x3 convolutions and two BatchNorms with batch statistics, one residual"
    return [case]


# --------------------------------------------------------------------------
# LN-LSTM sequence layer.
# --------------------------------------------------------------------------


class FlaxLNLSTMCell(nn.RNNCellBase):
    """The paper's LN-LSTM (Eqs. 20-22) from ``flax.linen.LayerNorm``, for comparison."""

    features: int

    @nn.compact
    def __call__(self, carry, x):
        c, h = carry
        gates = (nn.LayerNorm(use_bias=False, name="ln_x")(
                     nn.Dense(4 * self.features, use_bias=False, name="wx")(x))
                 + nn.LayerNorm(use_bias=False, name="ln_h")(
                     nn.Dense(4 * self.features, use_bias=False, name="wh")(h))
                 + self.param("bias", nn.initializers.zeros, (4 * self.features,)))
        i, f, g, o = jnp.split(gates, 4, axis=-1)
        c = nn.sigmoid(f) * c + nn.sigmoid(i) * jnp.tanh(g)
        h = nn.sigmoid(o) * jnp.tanh(nn.LayerNorm(name="ln_c")(c))
        return (c, h), h

    def initialize_carry(self, rng, input_shape):
        shape = tuple(input_shape[:-1]) + (self.features,)
        return jnp.zeros(shape), jnp.zeros(shape)

    @property
    def num_feature_axes(self) -> int:
        return 1


def _flax_lstm_grad(model: nn.Module, xs: jax.Array) -> Callable[[], Any]:
    params = jax.jit(model.init)(jax.random.key(0), xs)  # one compile, not op by op

    def loss(params, xs):
        return jnp.sum(model.apply(params, xs) ** 2)
    return jax_call(jax.jit(jax.value_and_grad(loss)), params, xs)


def lstm_case(config: Config, *, flax_cell: Callable[[int], nn.RNNCellBase] = nn.LSTMCell,
              torch_device: str | None = "cpu") -> Case:
    """The LSTM layers' forward + backward at ``config.lstm``: lnjax's LN-LSTM and plain
    LSTM, flax's ``RNN(flax_cell(H))`` and LN-LSTM, and ``torch.nn.LSTM`` on
    ``torch_device`` (None: no PyTorch; ``"cuda"``: cuDNN, waited for)."""
    steps, batch, features, hidden = config.lstm
    xs = np.random.default_rng(config.seed).standard_normal(
        (batch, steps, features)).astype(np.float32)
    xj = jnp.asarray(xs)
    case = Case("lstm", f"LSTM layer fwd+bwd T={steps} B={batch} in={features} H={hidden}")
    case.functions["copy"] = copy_of(jnp.zeros((steps * batch, 4 * hidden), jnp.float32))
    case.functions["lnjax LN-LSTM"] = _flax_lstm_grad(lnn.LNLSTM(hidden), xj)
    case.functions["lnjax LSTM"] = _flax_lstm_grad(lnn.LNLSTM(hidden, layer_norm=False), xj)
    case.functions["flax LSTM"] = _flax_lstm_grad(nn.RNN(flax_cell(hidden)), xj)
    case.functions["flax LN-LSTM"] = _flax_lstm_grad(nn.RNN(FlaxLNLSTMCell(hidden)), xj)
    if torch is not None and torch_device is not None:
        layer = torch.nn.LSTM(features, hidden, batch_first=True).to(torch_device)
        xt = torch.from_numpy(xs).to(torch_device)
        wait = torch.cuda.synchronize if torch_device.startswith("cuda") else (lambda: None)

        def torch_lstm():
            for p in layer.parameters():
                p.grad = None
            (layer(xt)[0] ** 2).sum().backward()
            wait()
        case.functions["torch LSTM"] = torch_lstm
    case.ratios = [TimeRatio("flax LSTM", "lnjax LN-LSTM", 1.0),
                   TimeRatio("flax LN-LSTM", "lnjax LN-LSTM", 1.7),
                   TimeRatio("flax LSTM", "lnjax LSTM")]
    if "torch LSTM" in case.functions:
        case.ratios.append(TimeRatio("torch LSTM", "lnjax LN-LSTM"))
    case.note = "copy: one pass over the (T*B, 4H) gate pre-activations"
    return case


@register("lstm")
def lstm(config: Config) -> list[Case]:
    return [lstm_case(config)]


# --------------------------------------------------------------------------
# More cases register here. The "epoch scan vs python loop" case (a whole
# training epoch as one lax.scan in lnjax/training.py against a Python loop of
# jitted steps) belongs in this place:
#
#     @register("epoch_scan")
#     def epoch_scan(config: Config) -> list[Case]:
#         case = Case("epoch_scan", "...")
#         case.functions["lnjax scan"] = ...
#         case.functions["python loop"] = ...
#         case.ratios = [TimeRatio("python loop", "lnjax scan")]
#         return [case]
# --------------------------------------------------------------------------


# --------------------------------------------------------------------------
# Running and reporting.
# --------------------------------------------------------------------------


def run_case(case: Case, config: Config) -> dict[str, Any]:
    """Times one case; returns its JSON record."""
    record: dict[str, Any] = {"name": case.name, "title": case.title, "note": case.note,
                              "values": case.values}
    if case.functions:
        record.update(measure(case.functions, case.ratios, rounds=config.rounds,
                              min_time=config.min_time))
    return record


def markdown(results: dict[str, Any]) -> str:
    """The report: the machine, the table of times and ratios, the notes, the memory table."""
    m = results["machine"]
    rows = []
    for rec in results["cases"]:
        if "median_ms" not in rec:
            continue
        times = ", ".join(f"{n} {t:.2f}" for n, t in rec["median_ms"].items())
        for i, r in enumerate(rec["ratios"]):
            rows.append(((rec["title"], times) if i == 0 else ("", "")) + report.ratio_cells(r))
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores, {m['platform']}; jax {m['jax']}, "
             f"flax {m['flax']}, torch {m['torch'] or 'not installed'}; load average at start "
             f"{m.get('load average')}. {results['config']['rounds']} interleaved rounds, "
             "medians.", "", report.RATIOS_READ, "",
             report.table(["case", "median ms", "ratio", "value", "target", "met"], rows)]
    notes = sorted({f"{rec['name'].split()[0]}: {rec['note']}"
                    for rec in results["cases"] if rec.get("note")})
    lines += [""] + [f"- {n}" for n in notes]
    mem = [rec for rec in results["cases"] if rec["values"]]
    if mem:
        lines += ["", report.table(
            ["compiled fwd+bwd temp memory", "x", "lnjax", "flax"],
            [(rec["title"], f"{v['x MiB']:.1f} MiB", f"{v['lnjax temp MiB']:.1f} MiB",
              f"{v['flax temp MiB']:.1f} MiB") for rec in mem for v in [rec["values"]]])]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: pathlib.Path) -> None:
    """A horizontal bar chart of every ratio, with its target marked."""
    plt = common.pyplot(feature="the benchmarks' results.png")

    rows = [(f"{rec['title']}: {r['label']}", r["value"], r["target"], r["met"])
            for rec in results["cases"] for r in rec.get("ratios", [])]
    fig, ax = plt.subplots(figsize=(10, 0.32 * len(rows) + 1.2))
    ys = np.arange(len(rows))[::-1]
    colors = ["tab:gray" if met is None else ("tab:green" if met else "tab:red")
              for *_, met in rows]
    ax.barh(ys, [r[1] for r in rows], color=colors)
    for y, (_, _, target, _) in zip(ys, rows):
        if target is not None:
            ax.plot([target, target], [y - 0.4, y + 0.4], color="black", lw=2)
    ax.axvline(1.0, color="gray", lw=0.8, ls=":")
    ax.set_yticks(ys, [r[0] for r in rows], fontsize=7)
    ax.set_xlabel("time ratio a / b (above 1: b is faster; x / copy: x in copies); "
                  "black ticks: targets")
    ax.set_title(f"lnjax benchmarks ({results['machine']['cpu']}, "
                 f"{results['machine']['cores']} cores)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(*, quick: bool = False, shapes: str = "full", out: pathlib.Path = DEFAULT_OUT,
        cases: list[str] | None = None, progress: bool = True) -> dict[str, Any]:
    """Runs the chosen cases, writes the three result files, returns the results."""
    config = Config(**{**(QUICK if quick else {}), **(TINY if shapes == "tiny" else {})})
    names = list(CASES) if cases is None else cases
    unknown = [n for n in names if n not in CASES]
    if unknown:
        raise ValueError(f"unknown case(s) {unknown}; known: {sorted(CASES)}")
    # results.png is drawn last: a missing matplotlib stops the run before any timing.
    common.pyplot(feature="the benchmarks' results.png")
    results: dict[str, Any] = {"machine": report.machine(), "config": dataclasses.asdict(config),
                               "quick": quick, "shapes": shapes, "cases": []}
    bar = tqdm(names, desc="benchmarks", disable=not progress)
    for name in bar:
        bar.set_postfix_str(name)
        for case in CASES[name](config):
            results["cases"].append(run_case(case, config))
    results["machine"]["load average at end"] = report.load_average()
    report.write(out, "results", results, markdown(results))
    plot(results, pathlib.Path(out) / "results.png")
    return results


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--device" in argv:
        from benchmarks import device

        device.main([a for a in argv if a != "--device"])
        return
    parser = report.parser(__doc__, "results", out=DEFAULT_OUT,
                           quick="fewer, shorter rounds", cases=CASES)
    parser.add_argument("--device", action="store_true",
                        help="time on the accelerator instead (python -m benchmarks.device "
                             "--help for its flags)")
    parser.add_argument("--shapes", choices=("full", "tiny"), default="full")
    args = parser.parse_args(argv)
    results = run(quick=args.quick, shapes=args.shapes, out=args.out, cases=args.cases)
    print(markdown(results))
    print(f"wrote {args.out}/results.json, results.md, results.png")


if __name__ == "__main__":
    main()
