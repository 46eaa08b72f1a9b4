"""Sequential (Fashion-)MNIST, row by row: LN-LSTM against LSTM, LN-GRU against GRU.

Each image is read as a sequence of 28 steps of 28 pixels (one row per step);
a recurrent layer of ``--hidden`` units reads it and a softmax layer
classifies its last hidden state. The layer-normalized and plain networks share
one code path (``lnjax.linen.LNLSTM(layer_norm=False)`` computes what
``flax.linen.LSTMCell`` in ``flax.linen.RNN`` computes), so the comparison
isolates layer norm::

    python -m lnjax.experiments.seq_mnist --epochs 2 --out runs/seq_mnist

Choices not fixed by the paper: pixels standardized by the training set's
mean and std (see :func:`standardize`), Adam (``--lr``), gradient
clipping at global norm 1, LeCun-normal input and orthogonal recurrent
weights, zero biases, the LN gains at 1 (Eqs. 20-22 for the LSTM, 26-28 for
the GRU). Writes ``results.json``, ``curves.png`` and ``curves.pdf`` (training loss and
test error against steps, the error on a fixed subset of ``--eval-examples``
test images ``--evals-per-epoch`` times per epoch) and prints a summary table.

Reference: Ba, Kiros & Hinton (2016), sections 3.1 and 6 (Eqs. 20-22).
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

import flax.linen as nn
import jax.numpy as jnp
import optax

from lnjax import linen as lnn
from lnjax.experiments import driver, plots, tables
from lnjax.experiments.results import batch_sizes, seed_histories
from lnjax.experiments.runs import Run, fit_run, shared
from lnjax.experiments.settings import Flag, Settings, document, positive

METHODS = ("lstm", "ln_lstm", "gru", "ln_gru")
LABELS = {"lstm": "LSTM", "ln_lstm": "LN-LSTM", "gru": "GRU", "ln_gru": "LN-GRU"}
STYLES = {"lstm": ("tab:blue", "--"), "ln_lstm": ("tab:blue", "-"),
          "gru": ("tab:orange", "--"), "ln_gru": ("tab:orange", "-")}


class RowClassifier(nn.Module):
    """A recurrent layer over the rows of an image, then a softmax layer on its last output.

    Attributes:
      method: one of ``lstm``, ``ln_lstm``, ``gru``, ``ln_gru``.
      hidden: the recurrent layer's width.
      num_classes: the output width.
    """

    method: str = "ln_lstm"
    hidden: int = 128
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        if self.method not in METHODS:
            raise ValueError(f"RowClassifier: method must be one of {METHODS}, "
                             f"got {self.method!r}")
        layer_type = lnn.LNLSTM if self.method.endswith("lstm") else lnn.LNGRU
        layer = layer_type(self.hidden, layer_norm=self.method.startswith("ln_"), name="rnn")
        outputs = layer(x.reshape((x.shape[0], 28, -1)))  # (batch, 28 rows, hidden)
        return nn.Dense(self.num_classes, name="head")(outputs[:, -1])


def standardize(ds, train):
    """``ds`` with its pixels standardized by the training split's mean and std.

    Blank rows are then not exact zeros: a layer-normalized recurrence that
    reads exact zeros from a zero state normalizes zero vectors, whose Jacobian
    is ``1/sqrt(epsilon)`` per step, and the gradient overflows within a dozen
    blank rows.
    """
    mean, std = float(train.images.mean()), float(train.images.std())
    return ds._replace(images=(ds.images - mean) / std)


@document("The settings of ``python -m lnjax.experiments.seq_mnist`` (its flags).")
@dataclasses.dataclass(frozen=True)
class SeqMnistSettings(Settings):
    methods: Annotated[tuple[str, ...], Flag(choices=METHODS)] = METHODS
    epochs: int = 2
    out: str = "runs/seq_mnist"
    hidden: Annotated[int, Flag("recurrent units", parse=int, check=positive)] = 128


def clipped_adam(lr: float) -> optax.GradientTransformation:
    """Adam at rate ``lr`` after clipping the gradient's global norm to 1."""
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adam(lr))


def run(method: str, batch_size: int, splits: dict, settings: SeqMnistSettings | None = None, *,
        seed: int | None = None, mesh: Any = None, **changes: Any) -> dict:
    """Trains one (method, batch size) and returns its history (see :func:`training.fit`).

    Args:
      method: one of :data:`METHODS`.
      batch_size: examples per step.
      splits: ``{"train", "validation", "test"}``, each a :class:`lnjax.data.Dataset`,
        as loaded (the pixels are standardized here: :func:`standardize`).
      settings: the run's settings (default: :class:`SeqMnistSettings`'s defaults).
      seed: the run's seed (default: ``settings.seed``).
      mesh: a device mesh (several devices: data-parallel).
      **changes: settings to change, by field name (``epochs=2``, ``hidden=64``).
    """
    s = dataclasses.replace(settings or SeqMnistSettings(), **changes)
    model = RowClassifier(method=method, hidden=s.hidden)
    splits = {k: standardize(splits[k], splits["train"])
              for k in ("train", "validation", "test")}
    tx = shared(clipped_adam, s.lr)
    one = Run(method, batch_size, s.seed if seed is None else seed, model_config=s.hidden,
              label=f"{LABELS[method]:>7} bs={batch_size:<3}")
    return fit_run(model, tx, splits, one, s, mesh=mesh)


def plot(results: dict, path: str) -> None:
    """Training loss and test error against training steps, one pair of panels per batch
    size; each curve the mean over the seeds, with a min-max band when there are several.

    The test error is ``fit``'s ``test_curve_error`` (several points per epoch on the
    fixed test subset), or ``test_error`` (each epoch) for a history without it.
    Written as ``path`` (PNG) and a PDF of the same stem.
    """
    runs, sizes = results["runs"], batch_sizes(results)
    fig, axes = plots.figure(1, 2 * len(sizes), width=4.6, height=3.4)
    subset = False
    for col, bs in enumerate(sizes):
        left, right = axes[0, 2 * col], axes[0, 2 * col + 1]
        drawn: dict[str, list[float]] = {"left": [], "right": []}
        for method, by in runs.items():
            if not by.get(str(bs)):
                continue
            hs = list(seed_histories(by[str(bs)]).values())
            color, style = STYLES.get(method, (None, "-"))
            kw = {"color": color, "linestyle": style, "label": LABELS.get(method, method)}
            x, err, from_subset = plots.error_curve(hs)
            subset = subset or from_subset
            steps, loss = plots.smoothed_step_loss(hs)
            drawn["left"] += plots.band(left, steps, loss, **kw)
            drawn["right"] += plots.band(right, x, err, marker="o", markersize=2.5, **kw)
        plots.set_scale(left, drawn["left"])
        plots.set_scale(right, drawn["right"])
        left.set(title=f"training loss, batch size {bs}", xlabel="training steps",
                 ylabel="train NLL (nats, running mean of 5)")
        right.set(title=f"test error, batch size {bs}", xlabel="training steps",
                  ylabel="test error (%)")
        for ax in (left, right):
            ax.grid(alpha=0.3, which="both")
    plots.legend_below(fig, axes)
    measured = plots.eval_caption(results) if subset else "the test set after each epoch"
    plots.save_figure(fig, path, f"Row-by-row sequential {results['dataset']['name']} "
                       f"(lnjax)\n{plots.seeds_caption(runs)}; test error on {measured}")


COLUMNS = tables.columns(("steps", "steps", "d"))
DESCRIPTION = ("Sequential (Fashion-)MNIST, row by row: LN-LSTM against LSTM, LN-GRU against "
               "GRU.")

EXPERIMENT = driver.Experiment(
    name="seq_mnist", description=DESCRIPTION, title="Row-by-row sequential",
    settings=SeqMnistSettings, run=run, plot=plot, figure="curves.png", columns=COLUMNS)


def main(argv: list[str] | None = None) -> dict:
    """``python -m lnjax.experiments.seq_mnist [flags]``; returns what ``results.json`` holds."""
    return driver.main(EXPERIMENT, argv)


if __name__ == "__main__":
    main()
