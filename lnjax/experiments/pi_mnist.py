"""Permutation-invariant MNIST: layer norm against batch norm at batch sizes 128 and 4.

The paper's section 6.7 and Figure 6: a 784-1000-1000-10 network trained with
Adam, without normalization ("baseline"), with batch norm on every layer, and
with layer norm on the hidden layers only (not the softmax layer). At batch
size 4 batch norm uses the unbiased variance estimate. Layer norm, which
normalizes each case on its own, keeps its accuracy at batch size 4; batch
norm, whose statistics come from four cases, does not::

    python -m lnjax.experiments.pi_mnist --epochs 5 --out runs/pi_mnist

Choices the paper does not state (flags where they matter): ReLU units, He
normal initialization of the hidden layers and LeCun normal of the output
layer, Adam with learning rate ``--lr`` and optax's other defaults, no weight
decay, no data augmentation; the normalized layers have no dense bias (the
normalization's bias takes its place). The training NLL plotted is the mean
over each epoch's steps (in training mode); validation and test errors use
batch norm's running averages (momentum 0.99).

Writes ``results.json`` (per method and batch size, per epoch: train NLL and
error, validation and test NLL and error, wall time; the data set and its
source; library versions), ``figure6.png`` and ``figure6.pdf`` laid out as the
paper's Figure 6 (train NLL and test error several times per epoch),
and prints a summary table. Runs resume from their checkpoints in
``OUT/checkpoints`` unless ``--no-resume``.

Reference: Ba, Kiros & Hinton (2016), section 6.7, Figure 6.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import flax.linen as nn
import jax.numpy as jnp
import optax

from lnjax import linen as lnn
from lnjax.experiments import driver, plots, tables
from lnjax.experiments.results import batch_sizes, seed_histories
from lnjax.experiments.runs import Run, fit_run, shared
from lnjax.experiments.settings import Flag, Settings, comma_list, document, positive

METHODS = ("baseline", "batchnorm", "layernorm")
LABELS = {"baseline": "Baseline", "batchnorm": "BatchNorm", "layernorm": "LayerNorm"}
COLORS = {"baseline": "tab:blue", "batchnorm": "tab:green", "layernorm": "tab:red"}


class MLP(nn.Module):
    """784-1000-1000-10 with optional batch or layer normalization of the summed inputs.

    Attributes:
      method: ``"baseline"``, ``"batchnorm"`` (every layer, the output layer
        included) or ``"layernorm"`` (hidden layers only).
      hidden: the hidden layer widths.
      num_classes: the output width.
      unbiased: batch norm's unbiased variance estimate (for small batches).
      activation: the hidden units' nonlinearity.
      axis_name: batch norm's cross-device axis (``lnjax.parallel.AXIS`` for
        statistics synchronized over a data-parallel mesh, ``None`` for each
        device's own).
    """

    method: str = "layernorm"
    hidden: Sequence[int] = (1000, 1000)
    num_classes: int = 10
    unbiased: bool = False
    activation: Callable = nn.relu
    axis_name: str | None = None

    def _norm(self, x: jnp.ndarray, train: bool, mask: Any) -> jnp.ndarray:
        if self.method == "batchnorm":
            return lnn.BatchNorm(use_running_average=not train, momentum=0.99,
                                 unbiased=self.unbiased, axis_name=self.axis_name)(x, mask=mask)
        if self.method == "layernorm":
            return lnn.LayerNorm()(x)
        return x

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool, mask: Any = None) -> jnp.ndarray:
        """Logits of ``x`` (``(batch, ...)``, flattened); ``mask``: the real examples of a
        padded batch (one value per example, any shape of that size), for batch norm."""
        if self.method not in METHODS:
            raise ValueError(f"MLP: method must be one of {METHODS}, got {self.method!r}")
        if mask is not None:  # one value per example, e.g. (batch, 1, 1) for images
            mask = jnp.asarray(mask)
            if mask.size != x.shape[0]:
                raise ValueError(f"MLP: mask must hold one value per example ({x.shape[0]} "
                                 f"for x of shape {x.shape}), got shape {mask.shape}.")
            mask = mask.reshape((x.shape[0], 1))
        x = x.reshape((x.shape[0], -1))
        for width in self.hidden:
            x = nn.Dense(width, use_bias=self.method == "baseline",
                         kernel_init=nn.initializers.he_normal())(x)
            x = self.activation(self._norm(x, train, mask))
        x = nn.Dense(self.num_classes, use_bias=self.method != "batchnorm",
                     kernel_init=nn.initializers.lecun_normal())(x)
        return lnn.BatchNorm(use_running_average=not train, momentum=0.99,
                             unbiased=self.unbiased, axis_name=self.axis_name)(x, mask=mask) \
            if self.method == "batchnorm" else x


@document("The settings of ``python -m lnjax.experiments.pi_mnist`` (its flags).")
@dataclasses.dataclass(frozen=True)
class PiMnistSettings(Settings):
    methods: Annotated[tuple[str, ...], Flag(choices=METHODS)] = METHODS
    batch_sizes: tuple[int, ...] = (128, 4)
    epochs: int = 5
    out: str = "runs/pi_mnist"
    hidden: Annotated[tuple[int, ...], Flag("hidden layer widths (the paper: 1000,1000)",
                                            parse=comma_list(int), check=positive)
                      ] = (1000, 1000)
    per_device_bn: Annotated[bool, Flag("with several devices, batch norm over each device's "
                                        "examples only (default: statistics synchronized over "
                                        "all devices)")] = False


def run(method: str, batch_size: int, splits: dict, settings: PiMnistSettings | None = None, *,
        seed: int | None = None, mesh: Any = None, **changes: Any) -> dict:
    """Trains one (method, batch size) and returns its history (see :func:`training.fit`).

    Args:
      method: one of :data:`METHODS`.
      batch_size: examples per step; at 16 or fewer batch norm uses the unbiased
        variance.
      splits: ``{"train", "validation", "test"}``, each a :class:`lnjax.data.Dataset`.
      settings: the run's settings (default: :class:`PiMnistSettings`'s defaults).
      seed: the run's seed (default: ``settings.seed``).
      mesh: a device mesh; with several devices the run is data-parallel and
        batch norm's statistics are synchronized over it, unless
        ``settings.per_device_bn``.
      **changes: settings to change, by field name (``epochs=2``, ``hidden=(32, 32)``).
    """
    from lnjax import parallel

    s = dataclasses.replace(settings or PiMnistSettings(), **changes)
    sync = mesh is not None and mesh.devices.size > 1 and not s.per_device_bn
    model = MLP(method=method, hidden=s.hidden, unbiased=batch_size <= 16,
                axis_name=parallel.AXIS if sync else None)
    one = Run(method, batch_size, s.seed if seed is None else seed,
              model_config=list(s.hidden), label=f"{LABELS[method]:>9} bs={batch_size:<3}")
    return fit_run(model, shared(optax.adam, s.lr), splits, one, s, mesh=mesh, takes_mask=True)


def plot(results: dict, path: str) -> None:
    """Figure 6's layout: train NLL above test error against epochs, one column per batch
    size; each curve the mean over the seeds, with a min-max band when there are several.

    The curves are ``fit``'s several points per epoch (``train_curve_loss``, the mean
    over the steps since the previous point; ``test_curve_error``, on the fixed test
    subset); a history without them (one point per epoch) is drawn from ``train_loss``
    and ``test_error``. Written as ``path`` (PNG) and a PDF of the same stem.
    """
    from matplotlib.ticker import MaxNLocator

    runs, sizes = results["runs"], batch_sizes(results)
    fig, axes = plots.figure(2, len(sizes), width=4.2, height=2.9)
    subset = False
    for col, bs in enumerate(sizes):
        top, bottom = axes[0, col], axes[1, col]
        drawn: dict[str, list[float]] = {"top": [], "bottom": []}
        for method, by in runs.items():
            if not by.get(str(bs)):
                continue
            hs = list(seed_histories(by[str(bs)]).values())
            per_epoch = hs[0]["steps"][0] / hs[0]["epoch"][0]
            kw = {"color": COLORS.get(method), "label": LABELS.get(method, method)}
            lx, loss, _ = plots.first_curve(hs, "train_curve_loss", "train_loss")
            ex, err, from_subset = plots.error_curve(hs)
            subset = subset or from_subset
            drawn["top"] += plots.band(top, lx / per_epoch, loss, **kw)
            drawn["bottom"] += plots.band(bottom, ex / per_epoch, err, **kw)
        plots.set_scale(top, drawn["top"])
        plots.set_scale(bottom, drawn["bottom"])
        top.set(title=f"batch size {bs}", ylabel="train NLL (nats)")
        bottom.set(xlabel="epochs", ylabel="test error (%)")
        for ax in (top, bottom):
            ax.grid(alpha=0.3, which="both")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    plots.legend_below(fig, axes)
    hidden = results.get("config", {}).get("hidden", [1000, 1000])
    widths = "-".join(str(w) for w in [784, *hidden, 10])
    measured = plots.eval_caption(results) if subset else "the test set after each epoch"
    plots.save_figure(fig, path, f"Permutation-invariant {results['dataset']['name']} "
                       f"(lnjax), {widths}, Adam\n{plots.seeds_caption(runs)}; test error on "
                       f"{measured}")


COLUMNS = tables.columns(("epochs", "epoch", "d"))
DESCRIPTION = "Permutation-invariant MNIST: layer norm against batch norm at batch sizes 128 and 4."

EXPERIMENT = driver.Experiment(
    name="pi_mnist", description=DESCRIPTION, title="Permutation-invariant",
    settings=PiMnistSettings, run=run, plot=plot, figure="figure6.png", columns=COLUMNS)


def main(argv: list[str] | None = None) -> dict:
    """``python -m lnjax.experiments.pi_mnist [flags]``; returns what ``results.json`` holds."""
    return driver.main(EXPERIMENT, argv)


if __name__ == "__main__":
    main()
