"""ConvNets: batch norm against batch renorm, layer norm and group norm, at large and small batches.

Ba, Kiros & Hinton (2016) found layer norm better than no normalization in a
ConvNet but not as good as batch norm, and left it to "further research";
later work showed that batch norm falls behind when its statistics come from
a few examples, whether the batch is small or split over devices that each
normalize their own share, while layer norm, group norm (Wu & He 2018) and
batch renormalization (Ioffe 2017) do not. This experiment trains one small
CNN on (Fashion-)MNIST with each normalization in three batch settings and
says, from the numbers, which of those claims held:

* batch size 128 on one device,
* batch size 4 on one device,
* a global batch of 32 split over 8 devices, 4 examples each (the
  ``--data-parallel`` batch sizes): there ``batchnorm`` and ``batchrenorm``
  normalize over each device's 4 examples ("ghost" batch norm, what
  data-parallel training gives unless asked otherwise) and
  ``batchnorm_sync`` over all 32 (statistics synchronized across the
  devices, ``axis_name`` = the mesh's axis).

::

    python -m lnjax.experiments.convnet --out runs/convnet

Run this way, the command asks XLA for 8 CPU devices when the machine has no
accelerator (``XLA_FLAGS=--xla_force_host_platform_device_count=8``, unless
``XLA_FLAGS`` already names a device count) and prints the devices each
setting used. The defaults (:class:`ConvNetSettings`: a few thousand training
examples, a few epochs) are sized for a 2-core CPU; the full-size run trains on
all 55,000 examples::

    python -m lnjax.experiments.convnet --train-examples 55000 --epochs 15 \\
        --out runs/convnet_full

The network: three blocks of a 3x3 convolution (``--channels`` wide;
stride 1, "same" padding), the normalization, ReLU, and a 2x2 max
pool after the first two blocks (28 -> 14 -> 7 pixels); global average pooling
and a dense softmax layer (not normalized). Methods: ``none``, ``batchnorm``
(:class:`lnjax.linen.BatchNorm`), ``batchrenorm``
(:class:`lnjax.linen.BatchReNorm`), ``layernorm`` (:class:`lnjax.linen.LayerNorm`
over each example's (height, width, channels), a gain and bias per channel),
``groupnorm`` (:class:`lnjax.linen.GroupNorm`, 8 groups at every width) and
``batchnorm_sync`` (only where the batch is split: on one device it would be
``batchnorm`` itself, so that run is skipped and marked so; with no batch split
at all it is left out, and the command says so in one line: :func:`plan`).

Choices the papers do not fix here: He-normal convolutions, a convolution
bias only without normalization, LeCun-normal softmax layer; pixels in
[0, 1] as stored; Adam (``--lr``), no weight decay, no augmentation; batch
norm and renorm keep running averages with ``--momentum`` (below the usual
0.99: runs of a few hundred steps at batch 128 would leave 0.99's averages far
from the statistics) and use the biased batch variance (each channel's
statistics count at least 4 x 7 x 7 positions); batch renorm ramps its limits
as Ioffe does, 100 times faster (``r_max`` from 1 to 3 over steps 50-400,
``d_max`` from 0 to 5 over steps 50-250, via :func:`lnjax.renorm_limits`,
the step counted in ``batch_stats``). The verdicts compare last-epoch test
errors (the mean over the seeds with ``--seeds``); a difference under two
standard errors of the test set's sampling noise is called "not clear".

The convolutions compute ``jax.lax.conv_general_dilated`` forward, but their
gradient as one matmul over the nine shifted copies of the input (im2col): on
XLA:CPU the kernel gradient of a convolution inside a ``lax.scan`` (the
library's training epoch) runs many times slower than outside one
(jax-ml/jax#12868); the parameters are ``flax.linen.Conv``'s.

Writes ``results.json`` (per method and batch size, per epoch: train NLL and
error, validation and test NLL and error, wall time, the devices used; the
data set; library versions), ``convnet.png`` and ``convnet.pdf`` (train NLL
and test error against epochs, several points per epoch, one column per batch
setting) and ``summary.md`` (the table, the batch settings, the full-size command
and the verdicts: :func:`summary`), and prints them. Runs resume from
their checkpoints in ``OUT/checkpoints`` unless ``--no-resume``.

References: Ba, Kiros & Hinton (2016), section 6 and the discussion of
ConvNets; Wu & He (2018), "Group Normalization"; Ioffe (2017), "Batch
Renormalization"; Hoffer, Hubara & Soudry (2017) for ghost batch norm.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Annotated, Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax import lax

import lnjax
from lnjax import linen as lnn
from lnjax import parallel
from lnjax.experiments import driver, plots, tables
from lnjax.experiments.results import first_seed, mean_history, seed_histories, seeds_of
from lnjax.experiments.runs import Run, fit_run, shared
from lnjax.experiments.settings import Flag, Settings, SettingsError, comma_list, document

METHODS = ("none", "batchnorm", "batchrenorm", "layernorm", "groupnorm", "batchnorm_sync")
LABELS = {"none": "no norm", "batchnorm": "BatchNorm", "batchrenorm": "BatchReNorm",
          "layernorm": "LayerNorm", "groupnorm": "GroupNorm", "batchnorm_sync": "BatchNorm sync"}
COLORS = {"none": "tab:gray", "batchnorm": "tab:green", "batchrenorm": "tab:olive",
          "layernorm": "tab:red", "groupnorm": "tab:purple", "batchnorm_sync": "tab:cyan"}
CHANNELS = (32, 64, 128)
GROUPS = 8  # group norm's groups, at every width
MOMENTUM = 0.9  # batch norm's and renorm's running averages
RENORM_RAMP = {"warmup_steps": 50, "r_steps": 350, "d_steps": 200}  # the paper's / 100
DEVICES = 8  # the CPU devices `python -m lnjax.experiments.convnet` asks XLA for
FULL_SIZE = ("python -m lnjax.experiments.convnet --train-examples 55000 --epochs 15 "
             "--out runs/convnet_full")


# ------------------------------------------------------------------ the model


def _conv_xla(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


def conv_im2col(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """:func:`conv_same` as one matmul over the nine (``kh * kw``) shifted copies of ``x``:
    the product of the patches ``(batch, height, width, kh * kw * in)`` and the kernel
    reshaped to ``(kh * kw * in, out)``; its gradient is the backward pass of
    :func:`conv_same`.

    Args:
      x: channels-last images ``(batch, height, width, in)``.
      kernel: ``(kh, kw, in, out)`` (HWIO), odd ``kh`` and ``kw``.

    Returns:
      ``(batch, height, width, out)``, the stride-1 "same" convolution.
    """
    kh, kw = kernel.shape[:2]
    h, w = x.shape[1:3]
    xp = jnp.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    patches = jnp.concatenate([xp[:, i:i + h, j:j + w] for i in range(kh) for j in range(kw)],
                              axis=-1)
    return patches @ kernel.reshape(-1, kernel.shape[-1])


@jax.custom_vjp
def conv_same(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """A stride-1 "same" convolution of channels-last ``x`` (``kernel``: HWIO, odd sizes).

    Forward as XLA's convolution; backward through the im2col matmul, which
    XLA:CPU runs quickly inside ``lax.scan`` (jax-ml/jax#12868). Reverse mode only.
    """
    return _conv_xla(x, kernel)


def _conv_same_fwd(x, kernel):
    return _conv_xla(x, kernel), (x, kernel)


def _conv_same_bwd(residuals, g):
    return jax.vjp(conv_im2col, *residuals)[1](g)


conv_same.defvjp(_conv_same_fwd, _conv_same_bwd)


class Conv(nn.Module):
    """A stride-1 "same" 3x3 convolution with ``flax.linen.Conv``'s parameters (see
    :func:`conv_same`)."""

    features: int
    use_bias: bool = True
    kernel_size: tuple[int, int] = (3, 3)
    kernel_init: Any = nn.initializers.he_normal()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", self.kernel_init,
                            (*self.kernel_size, x.shape[-1], self.features))
        y = conv_same(x, kernel.astype(x.dtype))
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,))
        return y


class ConvNet(nn.Module):
    """Conv blocks (conv, normalization, ReLU, 2x2 max pool after the first two), global
    average pooling and a softmax layer.

    Attributes:
      method: one of :data:`METHODS`.
      channels: the convolutions' widths (multiples of :data:`GROUPS`).
      num_classes: the output width.
      axis_name: batch norm's cross-device axis (``batchnorm_sync``); ``None``
        normalizes over each device's examples.
      momentum: batch norm's and renorm's running averages.
    """

    method: str = "batchnorm"
    channels: Sequence[int] = CHANNELS
    num_classes: int = 10
    axis_name: str | None = None
    momentum: float = MOMENTUM

    def _norm(self, x: jax.Array, train: bool, mask: Any, limits: Any) -> jax.Array:
        if self.method in ("batchnorm", "batchnorm_sync"):
            return lnn.BatchNorm(use_running_average=not train, momentum=self.momentum,
                                 axis_name=self.axis_name)(x, mask=mask)
        if self.method == "batchrenorm":
            r_max, d_max = limits
            return lnn.BatchReNorm(use_running_average=not train, momentum=self.momentum,
                                   axis_name=self.axis_name)(x, mask=mask, r_max=r_max,
                                                             d_max=d_max)
        if self.method == "layernorm":
            return lnn.LayerNorm(reduction_axes=(1, 2, 3), feature_axes=-1)(x)
        if self.method == "groupnorm":
            return lnn.GroupNorm(num_groups=GROUPS)(x)
        return x

    def _renorm_limits(self, train: bool) -> Any:
        """Batch renorm's ``(r_max, d_max)`` at this training step (counted in batch_stats)."""
        if self.method != "batchrenorm":
            return None
        step = self.variable("batch_stats", "renorm_step", lambda: jnp.zeros((), jnp.float32))
        limits = lnjax.renorm_limits(step.value, **RENORM_RAMP)
        if train and not self.is_initializing():
            step.value = step.value + 1
        return limits

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool, mask: Any = None) -> jax.Array:
        """Logits of images ``x`` (``(batch, 28, 28)`` or ``(batch, 28, 28, 1)``); ``mask``:
        the real examples of a padded batch (one value per example), for batch norm."""
        if self.method not in METHODS:
            raise ValueError(f"ConvNet: method must be one of {METHODS}, got {self.method!r}")
        if x.ndim == 3:
            x = x[..., None]
        if x.ndim != 4:
            raise ValueError(f"ConvNet: x must be (batch, height, width[, channels]), got "
                             f"shape {x.shape}.")
        if mask is not None:
            mask = jnp.asarray(mask)
            if mask.size != x.shape[0]:
                raise ValueError(f"ConvNet: mask must hold one value per example ({x.shape[0]} "
                                 f"for x of shape {x.shape}), got shape {mask.shape}.")
            mask = mask.reshape((x.shape[0], 1, 1, 1))
        limits = self._renorm_limits(train)
        for i, width in enumerate(self.channels):
            x = Conv(width, use_bias=self.method == "none")(x)
            x = nn.relu(self._norm(x, train, mask, limits))
            if i < 2 and i < len(self.channels) - 1:
                b, h, w, c = x.shape
                x = x[:, :h // 2 * 2, :w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2, c).max((2, 4))
        x = x.mean(axis=(1, 2))
        return nn.Dense(self.num_classes, kernel_init=nn.initializers.lecun_normal())(x)


# ------------------------------------------------------------------ the settings


def _batch_list(text: str) -> list[int]:
    return [] if text.strip().lower() == "none" else comma_list(int)(text)


def _multiples_of_groups(channels: tuple[int, ...]) -> str | None:
    if all(c >= 1 and c % GROUPS == 0 for c in channels):
        return None
    return f"must be positive multiples of {GROUPS} (group norm's groups)"


def _momentum(value: float) -> str | None:
    return None if 0 <= value < 1 else "must be in [0, 1)"


@document("The settings of ``python -m lnjax.experiments.convnet`` (its flags).")
@dataclasses.dataclass(frozen=True)
class ConvNetSettings(Settings):
    methods: Annotated[tuple[str, ...], Flag(choices=METHODS)] = METHODS
    batch_sizes: tuple[int, ...] = (128, 4, 32)
    epochs: int = 3
    out: str = "runs/convnet"
    train_examples: int | None = 8000
    channels: Annotated[tuple[int, ...], Flag(
        f"the conv blocks' widths (multiples of {GROUPS}, group norm's groups)",
        parse=comma_list(int), check=_multiples_of_groups)] = CHANNELS
    data_parallel: Annotated[tuple[int, ...], Flag(
        "the batch sizes (of --batch-sizes) split over the --devices devices, 'none' for none; "
        "the others train on one device", parse=_batch_list)] = (32,)
    momentum: Annotated[float, Flag(
        "batch norm's and renorm's running averages: new = momentum * old + (1 - momentum) * "
        "batch", parse=float, check=_momentum)] = MOMENTUM


# ------------------------------------------------------------------ one run


def skipped(history: Mapping[str, Any]) -> bool:
    """Whether a run of ``results.json`` was skipped (``batchnorm_sync`` on one device)."""
    return "skipped" in history


def run(method: str, batch_size: int, splits: dict, settings: ConvNetSettings | None = None,
        *, seed: int | None = None, mesh: Any = None, **changes: Any) -> dict:
    """Trains one (method, batch size) and returns its history (see :func:`training.fit`),
    with ``devices`` (how many devices split each batch).

    A batch size in ``settings.data_parallel`` is split over ``mesh``'s devices
    (with per-device statistics, except for ``batchnorm_sync``); any other
    trains on one device. ``batchnorm_sync`` on one device is ``batchnorm``:
    not run, ``{"skipped": why, "devices": 1}`` returned.

    Args:
      method: one of :data:`METHODS`.
      batch_size: the global batch size.
      splits: ``{"train", "validation", "test"}``, each a :class:`lnjax.data.Dataset`.
      settings: the run's settings (default: :class:`ConvNetSettings`'s defaults).
      seed: the run's seed (default: ``settings.seed``).
      mesh: the device mesh a data-parallel batch is split over.
      **changes: settings to change, by field name (``epochs=2``, ``channels=(8, 8)``).
    """
    s = dataclasses.replace(settings or ConvNetSettings(), **changes)
    n = mesh.devices.size if mesh is not None and batch_size in s.data_parallel else 1
    if method == "batchnorm_sync" and n == 1:
        return {"skipped": "synchronized batch norm on one device is batchnorm", "devices": 1}
    axis = mesh.axis_names[0] if method == "batchnorm_sync" else None
    model = ConvNet(method=method, channels=s.channels, axis_name=axis, momentum=s.momentum)
    setting = {"channels": list(s.channels), "devices": n, "groups": GROUPS,
               "momentum": s.momentum, "renorm_ramp": RENORM_RAMP}
    where = f"/{n} devices" if n > 1 else ""
    one = Run(method, batch_size, s.seed if seed is None else seed, model_config=setting,
              label=f"{LABELS[method]:>14} bs={batch_size}{where}")
    history = fit_run(model, shared(optax.adam, s.lr), splits, one, s, mesh=mesh if n > 1 else None,
                      takes_mask=True)
    return {**history, "devices": n}


# ------------------------------------------------------------------ the figure


def _setting(batch_size: int | str, devices: int) -> str:
    bs = int(batch_size)
    if devices > 1:
        return f"batch {bs} over {devices} devices ({bs // devices} each)"
    return f"batch {bs}, one device"


def settings(results: Mapping[str, Any]) -> list[tuple[str, int]]:
    """The batch settings of a ``results.json``: ``(batch size, devices)``, one device first,
    largest batch first."""
    found = {(bs, h.get("devices", 1)) for by in first_seed(results["runs"]).values()
             for bs, h in by.items() if not skipped(h)}
    return sorted(found, key=lambda s: (s[1], -int(s[0])))


def plot(results: dict, path: str) -> None:
    """Train NLL above test error against epochs, one column per batch setting; each curve
    the mean over the seeds (``fit``'s several points per epoch), with a min-max band when
    there are several. Written as ``path`` (PNG) and a PDF of the same stem."""
    from matplotlib.ticker import MaxNLocator

    columns = settings(results)
    rows = (("train_curve_loss", "train_loss", "train NLL (nats)", 1),
            ("test_curve_error", "test_error", "test error (%)", 100))
    fig, axes = plots.figure(len(rows), max(len(columns), 1), width=4.0, height=2.9)
    subset = False
    for (key, fallback, ylabel, factor), row in zip(rows, axes):
        for (bs, _), ax in zip(columns, row):
            drawn: list[float] = []
            for method, by in results["runs"].items():
                hs = list(seed_histories(by[bs]).values()) if by.get(bs) else []
                if not hs or skipped(hs[0]):
                    continue
                per_epoch = hs[0]["steps"][0] / hs[0]["epoch"][0]
                xs, ys, used = plots.first_curve(hs, key, fallback, factor=factor)
                subset = subset or (used == key and factor == 100)
                drawn += plots.band(ax, xs / per_epoch, ys,
                                     color=COLORS.get(method), label=LABELS.get(method, method))
            plots.set_scale(ax, drawn)
            ax.set(xlabel="epochs", ylabel=ylabel)
            ax.grid(alpha=0.3, which="both")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for (bs, devices), ax in zip(columns, axes[0]):
        ax.set_title(_setting(bs, devices), fontsize=10)
    plots.legend_below(fig, axes, ncols=6)
    channels = results.get("config", {}).get("channels", list(CHANNELS))
    measured = plots.eval_caption(results) if subset else "the test set after each epoch"
    plots.save_figure(fig, path, f"ConvNet ({'-'.join(map(str, channels))} channels) on "
                       f"{results['dataset']['name']} (lnjax), Adam\n"
                       f"{plots.seeds_caption(results['runs'])}; test error on {measured}")


# ------------------------------------------------------------------ the verdicts


def _test_error(results: Mapping[str, Any], method: str, bs: str) -> float | None:
    """The last-epoch test error of ``method`` at ``bs``, the mean over its seeds."""
    entry = results["runs"].get(method, {}).get(bs)
    h = mean_history(list(seed_histories(entry).values())) if entry else None
    if not h or skipped(h) or not h.get("test_error"):
        return None
    return h["test_error"][-1]


def _compare(results: Mapping[str, Any], bs: str, better: str, worse: str, *,
             or_equal: bool = False) -> tuple[bool | None, bool, str]:
    """Whether ``better``'s last test error is below (or equal to) ``worse``'s; whether the
    difference is clear (over two standard errors of the test set's sampling noise); a line
    with the numbers."""
    a, b = _test_error(results, better, bs), _test_error(results, worse, bs)
    relation = "at least as good as" if or_equal else "ahead of"
    claim = f"{LABELS.get(better, better)} {relation} {LABELS.get(worse, worse)}"
    if a is None or b is None:
        missing = [m for m, v in ((better, a), (worse, b)) if v is None]
        return None, False, f"{claim}: not run ({', '.join(missing)} missing)"
    held = a <= b if or_equal else a < b
    n = results["dataset"]["sizes"]["test"]
    noise = 2 * math.sqrt(a * (1 - a) / n + b * (1 - b) / n)
    clear = abs(a - b) > noise
    return held, clear, (f"{claim}: {'held' if held else 'did not hold'} (test error "
                         f"{100 * a:.2f}% vs {100 * b:.2f}%, {100 * (a - b):+.2f} pp"
                         f"{'' if clear else f'; not clear: within ±{100 * noise:.2f} pp'})")


def verdicts(results: Mapping[str, Any]) -> list[str]:
    """The seed's claims, each judged from the last-epoch test errors in ``results``.

    1. At the largest one-device batch size (128), batch norm is at least as
       good as layer norm in a ConvNet (Ba et al.).
    2. There, layer norm beats no normalization (Ba et al.).
    3. At the smallest one-device batch size (4), layer norm, group norm and
       batch renorm each beat batch norm.
    4. With 4 examples per device (a split batch), layer norm, group norm and
       per-device batch renorm each beat per-device batch norm; and, not a claim
       but the control, synchronized batch norm beats per-device.

    A claim holds when each of its comparisons does, by the numbers; a
    comparison whose difference is within two standard errors of the test set's
    sampling noise is marked "not clear", and the claim's line counts them.

    Returns:
      Markdown lines: per claim a line (held / did not hold / not run) and one
      line per comparison.
    """
    groups = []
    one = [bs for bs, d in settings(results) if d == 1]
    if one:
        big = one[0]
        groups += [(f"At batch {big} (one device), batch norm at least as good as layer norm "
                    "in a ConvNet (Ba et al. 2016)",
                    [_compare(results, big, "batchnorm", "layernorm", or_equal=True)]),
                   (f"At batch {big} (one device), layer norm ahead of no normalization "
                    "(Ba et al. 2016)", [_compare(results, big, "layernorm", "none")])]
    if len(one) > 1:
        small = one[-1]
        groups.append((f"At batch {small} (one device), layer norm, group norm and batch "
                       "renorm ahead of batch norm",
                       [_compare(results, small, m, "batchnorm")
                        for m in ("layernorm", "groupnorm", "batchrenorm")]))
    for bs, d in settings(results):
        if d > 1:
            groups += [(f"At batch {bs} over {d} devices ({int(bs) // d} each), layer norm, "
                        "group norm and per-device batch renorm ahead of per-device (ghost) "
                        "batch norm", [_compare(results, bs, m, "batchnorm")
                                       for m in ("layernorm", "groupnorm", "batchrenorm")]),
                       (f"Control at batch {bs} over {d} devices: synchronized batch norm "
                        "ahead of per-device", [_compare(results, bs, "batchnorm_sync",
                                                         "batchnorm")])]
    lines = []
    for title, comparisons in groups:
        outcomes = [held for held, _, _ in comparisons]
        if None in outcomes:
            state = "not run"
        else:
            state = "held" if all(outcomes) else "did not hold"
            unclear = sum(not clear for _, clear, _ in comparisons)
            if unclear:
                state += (" (within the noise)" if len(comparisons) == 1 else
                          f" ({unclear} of {len(comparisons)} comparisons within the noise)")
        lines.append(f"- **{title}: {state}.**")
        lines.extend(f"  - {line}" for _, _, line in comparisons)
    return lines


def summary(results: Mapping[str, Any]) -> str:
    """``summary.md``: the table of the runs made, what the batch settings were, the
    full-size command and the verdicts."""
    first = first_seed(results["runs"])
    ran = {m: {bs: e for bs, e in by.items() if not skipped(first[m][bs])}
           for m, by in results["runs"].items()}
    n = len(seeds_of(results["runs"]))
    seeds = "one seed" if n == 1 else f"the mean of {n} seeds; the table: mean ± standard " \
        "deviation"
    table = tables.summary_table({m: by for m, by in ran.items() if by}, columns=COLUMNS)
    names = ", ".join(_setting(bs, d) for bs, d in settings(results))
    lines = [table, "", f"Batch settings: {names}. Batch norm and renorm normalize over each "
             "device's examples, batchnorm_sync over the whole batch.",
             f"Full-size run: `{FULL_SIZE}`.", "", f"Verdicts (last-epoch test errors, {seeds}; "
             "'not clear': within two standard errors of the test set's sampling "
             "noise):", "", *verdicts(results)]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ the command line


COLUMNS = (("devices", "devices", "d"), *tables.columns(("epochs", "epoch", "d")))
DESCRIPTION = ("ConvNets: batch norm against batch renorm, layer norm and group norm, at large "
               "and small batches.")


def plan(settings: ConvNetSettings) -> tuple[ConvNetSettings, list[str]]:
    """What of ``settings`` can run on this machine, and a note on each part left out.

    A batch size of ``data_parallel`` needs several devices (``settings.devices``,
    else all of them) that divide it evenly; ``batchnorm_sync`` needs such a
    split batch. What cannot run is left out with a note (the default methods
    with ``--batch-sizes 128`` run all but ``batchnorm_sync``); when nothing
    would be left, or a split batch does not divide evenly, that is an error.

    Raises:
      SettingsError: nothing of a setting would run, or a split batch does not
        divide evenly over the devices.

    Example:
      >>> s, skipped = plan(ConvNetSettings(batch_sizes=(128,)))
      >>> s.methods
      ('none', 'batchnorm', 'batchrenorm', 'layernorm', 'groupnorm')
      >>> len(skipped), skipped[0].split(":")[0]
      (1, 'batchnorm_sync (it needs a batch split over devices')
    """
    s, skipped = settings, []
    n = s.devices or jax.device_count()
    split = [bs for bs in s.batch_sizes if bs in s.data_parallel]
    if split and n < 2:
        kept = tuple(bs for bs in s.batch_sizes if bs not in split)
        why = (f"--data-parallel {_shown(split)} needs several devices, found {n}: on a CPU set "
               "XLA_FLAGS=--xla_force_host_platform_device_count=8 before jax starts (python "
               "-m lnjax.experiments.convnet does)")
        if not kept:
            raise SettingsError(f"{why}, or pass --data-parallel none")
        skipped.append(f"batch size {_shown(split)} ({why})")
        s, split = dataclasses.replace(s, batch_sizes=kept), []
    bad = [bs for bs in split if bs % n]
    if bad:
        raise SettingsError(f"--data-parallel batch sizes must divide evenly over the {n} "
                            f"devices, got {bad}")
    if "batchnorm_sync" in s.methods and not split:
        why = (f"it needs a batch split over devices: none of --batch-sizes "
               f"{_shown(s.batch_sizes)} is in --data-parallel {_shown(s.data_parallel)}")
        rest = tuple(m for m in s.methods if m != "batchnorm_sync")
        if not rest:
            raise SettingsError(f"--methods batchnorm_sync: {why}")
        skipped.append(f"batchnorm_sync ({why})")
        s = dataclasses.replace(s, methods=rest)
    return s, skipped


def _shown(values: Sequence[int]) -> str:
    return ",".join(map(str, values)) or "none"


EXPERIMENT = driver.Experiment(
    name="convnet", description=DESCRIPTION, title="ConvNet on", settings=ConvNetSettings,
    run=run, plot=plot, figure="convnet.png", columns=COLUMNS, plan=plan, summary=summary)


def main(argv: list[str] | None = None) -> dict:
    """``python -m lnjax.experiments.convnet [flags]``; returns what ``results.json`` holds
    (``summary.md``, also printed, holds the verdicts: :func:`summary`)."""
    return driver.main(EXPERIMENT, argv)


def ask_for_host_devices(n: int, environ: MutableMapping[str, str] | None = None) -> None:
    """Asks XLA for ``n`` CPU devices, unless ``XLA_FLAGS`` already names a count: adds
    ``--xla_force_host_platform_device_count=n`` to ``environ["XLA_FLAGS"]``.

    The command line calls it before jax starts its backends (importing jax does not
    start them); later it has no effect.

    Args:
      n: the number of CPU devices.
      environ: the environment to change (default: ``os.environ``).

    Example:
      >>> env = {"XLA_FLAGS": "--xla_dump_to=/tmp/x"}
      >>> ask_for_host_devices(8, env)
      >>> env["XLA_FLAGS"]
      '--xla_dump_to=/tmp/x --xla_force_host_platform_device_count=8'
    """
    env = os.environ if environ is None else environ
    flags = env.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        env["XLA_FLAGS"] = parallel.host_device_flags(n, flags)


if __name__ == "__main__":
    ask_for_host_devices(DEVICES)
    main()
