"""What the CPU suite (:mod:`benchmarks.run`) and the device suite (:mod:`benchmarks.device`)
share: the inputs, the copy reference, a case and how it is timed, the optional PyTorch, and
the cases both run (the image norms and the LSTM layers).

A :class:`Case` holds no-argument functions that each run one library's
computation and wait for it, the :class:`~benchmarks.harness.TimeRatio` s to
report, and untimed numbers (``values``: compiled temporary memory);
:func:`run_case` times it with the benchmarks' one harness and returns its JSON
record, which :func:`benchmarks.report.markdown` prints. The reference of most
cases is :func:`copy_of`: a jitted copy of an array of the case's size, checked
to write a new buffer (XLA cannot elide it).

Cases built here (each a function ``f(config) -> list[Case]``):

* :func:`norms_fb`: forward + backward (the gradient of ``sum(y * dy)`` for x
  and the parameters) of the Linen normalizations, lnjax's against flax's (and
  PyTorch's where it has the op, in its own NCHW layout): BatchNorm in training
  (batch statistics) at each of ``config.image_shapes`` and at
  ``config.norm_shapes[0]``; GroupNorm(8), InstanceNorm and LayerNorm over
  (H, W, C) with a per-channel scale at the image shapes; LayerNorm with a mask
  at ``config.norm_shapes[0]``. Each with the compiled temporary memory of both.
* :func:`norms_fwd`: BatchNorm's forward alone, in training and in evaluation
  (running averages), at the image shapes.
* :func:`resnet`: a ResNet-style block (:class:`ResBlock`) forward + backward,
  lnjax's BatchNorm against flax's in the same block.
* :func:`lstm` (:func:`lstm_case`): LSTM layers forward + backward:
  ``lnjax.linen.LNLSTM`` with and without layer norm, ``flax.linen.RNN`` of an
  LSTM cell, a flax LN-LSTM (:class:`FlaxLNLSTMCell`) and ``torch.nn.LSTM``.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import lnjax.linen as lnn
from benchmarks.harness import TimeRatio, block, jax_call, measure

try:  # PyTorch is compared when it is installed (the ``torch`` extra).
    import torch
except ImportError:  # pragma: no cover - depends on the environment
    torch = None

DEFAULT_OUT = pathlib.Path(__file__).resolve().parent / "results"
"""Where the suites write their results by default (the device suite in ``device/``)."""
EPSILON = 1e-6
"""The epsilon of every normalization timed."""


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


@dataclasses.dataclass
class Case:
    """One benchmark: timed functions (no arguments, blocking) and the ratios to report."""

    name: str
    title: str
    functions: dict[str, Callable[[], Any]] = dataclasses.field(default_factory=dict)
    ratios: list[TimeRatio] = dataclasses.field(default_factory=list)
    values: dict[str, float] = dataclasses.field(default_factory=dict)  # untimed numbers
    note: str = ""


def run_case(case: Case, config: Config) -> dict[str, Any]:
    """Times one case (``config.rounds`` rounds, ``config.min_time`` per timing); returns its
    JSON record: name, title, note, values, and with functions ``median_ms`` and ``ratios``
    (:func:`benchmarks.harness.measure`)."""
    record: dict[str, Any] = {"name": case.name, "title": case.title, "note": case.note,
                              "values": case.values}
    if case.functions:
        record.update(measure(case.functions, case.ratios, rounds=config.rounds,
                              min_time=config.min_time))
    return record


def without_targets(case: Case) -> Case:
    """``case`` with its ratios kept and their targets dropped (targets set for one machine
    do not hold on another)."""
    case.ratios = [dataclasses.replace(r, target=None) for r in case.ratios]
    return case


# --------------------------------------------------------------------------
# Inputs and the copy reference.
# --------------------------------------------------------------------------


def norm_inputs(shape: tuple[int, int], seed: int):
    """``(x, scale, bias, dy)``, float32 NumPy: x and dy standard normal of ``shape``
    (rows, width), scale ``1 + 0.1 N`` and bias ``0.1 N`` of the width.

    Example:
      >>> x, scale, bias, dy = norm_inputs((2, 3), seed=0)
      >>> x.shape, scale.shape, bias.shape, dy.dtype
      ((2, 3), (3,), (3,), dtype('float32'))
    """
    rng = np.random.default_rng(seed)
    rows, width = shape
    x = rng.standard_normal(shape).astype(np.float32)
    scale = (1 + 0.1 * rng.standard_normal(width)).astype(np.float32)
    bias = (0.1 * rng.standard_normal(width)).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    return x, scale, bias, dy


def image_inputs(shape: tuple[int, ...], seed: int):
    """``(x, dy)``, float32 NumPy of ``shape``: x of mean 3 and standard deviation 2 (away
    from zero, as activations are), dy standard normal."""
    rng = np.random.default_rng(seed)
    x = (3 + 2 * rng.standard_normal(shape)).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    return x, dy


def copy_of(x: jax.Array) -> Callable[[], Any]:
    """A jitted copy of ``x``, checked to write a new buffer.

    Raises:
      RuntimeError: XLA returned ``x``'s own buffer (the copy was elided).
    """
    copy = jax.jit(jnp.copy)
    y = block(copy(x))
    if y.unsafe_buffer_pointer() == x.unsafe_buffer_pointer():
        raise RuntimeError("the copy baseline was elided by XLA")
    return jax_call(copy, x)


def torch_forward_backward(layer, x: np.ndarray, dy: np.ndarray,
                           device: str = "cpu") -> Callable[[], None]:
    """A no-argument function: ``layer``'s forward on ``x`` and backward of ``dy`` in
    PyTorch on ``device`` (waited for on CUDA), the gradients reset each call."""
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


# --------------------------------------------------------------------------
# Batch, group and instance norm, layer norm over several axes or with a mask.
# --------------------------------------------------------------------------


def image_modules(shape: tuple[int, ...]) -> dict[str, tuple[Any, Any, Any]]:
    """``title -> (lnjax module, flax module, torch layer or None)`` for input ``shape``
    (NHWC images: BatchNorm, GroupNorm(8), InstanceNorm, LayerNorm(H,W,C); (rows, width):
    BatchNorm and masked LayerNorm)."""
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


def module_forward_backward(module: nn.Module, x: jax.Array, dy: jax.Array,
                            variables: dict[str, Any], mask: jax.Array | None = None) -> Any:
    """``(x, dy, params) -> (y, dx, dparams)`` of a Linen module, compiled; batch statistics
    (any collection besides ``params``) are updated and the update dropped."""
    rest = {k: v for k, v in variables.items() if k != "params"}

    def apply(x, p):
        kwargs: dict[str, Any] = {} if mask is None else {"mask": mask}
        if rest:
            return module.apply({"params": p, **rest}, x, mutable=list(rest), **kwargs)[0]
        return module.apply({"params": p}, x, **kwargs)

    def run(x, dy, p):
        y, vjp = jax.vjp(apply, x, p)
        return (y,) + vjp(dy)
    return jax.jit(run).lower(x, dy, variables["params"]).compile()


def torch_image_forward_backward(layer, x: np.ndarray, dy: np.ndarray,
                                 device: str) -> Callable[[], None]:
    """:func:`torch_forward_backward` in PyTorch's own layout (channels second)."""
    to_torch = (0, 3, 1, 2) if x.ndim == 4 else (0, 1)
    return torch_forward_backward(layer, np.ascontiguousarray(x.transpose(to_torch)),
                                  np.ascontiguousarray(dy.transpose(to_torch)), device)


def norms_fb(config: Config) -> list[Case]:
    """Forward + backward of each of :func:`image_modules`, lnjax against flax (and PyTorch
    on ``config.torch_device``), with the compiled temporary memory of both."""
    cases = []
    shapes = [*config.image_shapes, config.norm_shapes[0]]
    for shape in shapes:
        x, dy = image_inputs(shape, config.seed)
        xj, dyj = jnp.asarray(x), jnp.asarray(dy)
        dims = "x".join(map(str, shape))
        for title, (ours, theirs, layer) in image_modules(shape).items():
            layer = None if config.torch_device is None else layer
            mask = (jnp.asarray(np.random.default_rng(1).random(shape) < 0.9)
                    if "masked" in title else None)
            variables = theirs.init(jax.random.key(0), xj)
            case = Case(f"norms_fb {title} {dims}", f"{title} fwd+bwd {dims}")
            case.functions["copy"] = copy_of(xj)
            for library, module in (("lnjax", ours), ("flax", theirs)):
                compiled = module_forward_backward(module, xj, dyj, variables, mask)
                case.functions[library] = jax_call(compiled, xj, dyj, variables["params"])
                case.values[f"{library} temp MiB"] = (
                    compiled.memory_analysis().temp_size_in_bytes / 2**20)
            case.values["x MiB"] = x.nbytes / 2**20
            if layer is not None:
                case.functions["torch"] = torch_image_forward_backward(
                    layer, x, dy, config.torch_device or "cpu")
            fast = title in ("BatchNorm", "GroupNorm(8)")
            case.ratios = [TimeRatio("flax", "lnjax", 1.5 if fast else 1.0)]
            if layer is not None:
                case.ratios.append(TimeRatio("torch", "lnjax"))
            case.ratios.append(TimeRatio("lnjax", "copy"))
            case.note = ("y and the gradients for x and the parameters; BatchNorm with batch "
                         "statistics; torch in NCHW")
            cases.append(case)
    return cases


def norms_fwd(config: Config) -> list[Case]:
    """BatchNorm's forward alone, in training and in evaluation, lnjax against flax."""
    cases = []
    for shape in config.image_shapes:
        x, _ = image_inputs(shape, config.seed)
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


def resnet(config: Config) -> list[Case]:
    """:class:`ResBlock` forward + backward at ``config.resnet``, lnjax's BatchNorm against
    flax's in the same block."""
    batch, size, channels = config.resnet
    shape = (batch, size, size, channels)
    x, dy = image_inputs(shape, config.seed)
    xj, dyj = jnp.asarray(x), jnp.asarray(dy)
    case = Case(f"resnet {batch}x{size}x{size}x{channels}",
                f"ResNet block fwd+bwd {batch}x{size}x{size}x{channels}")
    for library, norm in (("lnjax", lnn.BatchNorm), ("flax", nn.BatchNorm)):
        block_ = ResBlock(norm)
        variables = block_.init(jax.random.key(0), xj)
        compiled = module_forward_backward(block_, xj, dyj, variables)
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


def lstm_grad(model: nn.Module, xs: jax.Array) -> Callable[[], Any]:
    """A no-argument function: the value and gradient of ``sum(model(xs) ** 2)`` for the
    parameters, jitted, waited for."""
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
    case.functions["lnjax LN-LSTM"] = lstm_grad(lnn.LNLSTM(hidden), xj)
    case.functions["lnjax LSTM"] = lstm_grad(lnn.LNLSTM(hidden, layer_norm=False), xj)
    case.functions["flax LSTM"] = lstm_grad(nn.RNN(flax_cell(hidden)), xj)
    case.functions["flax LN-LSTM"] = lstm_grad(nn.RNN(FlaxLNLSTMCell(hidden)), xj)
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
    cell = getattr(flax_cell, "__name__", str(flax_cell))
    notes = ["copy: one pass over the (T*B, 4H) gate pre-activations", f"flax LSTM: RNN({cell})"]
    if "torch LSTM" in case.functions:
        notes.append(f"torch LSTM: torch.nn.LSTM on {torch_device}"
                     + (" (cuDNN)" if str(torch_device).startswith("cuda") else ""))
    case.note = "; ".join(notes)
    return case


def lstm(config: Config) -> list[Case]:
    """:func:`lstm_case` with flax's ``LSTMCell`` and PyTorch on the CPU."""
    return [lstm_case(config)]
