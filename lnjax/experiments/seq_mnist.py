"""Sequential (Fashion-)MNIST, row by row: LN-LSTM against LSTM, LN-GRU against GRU.

Each image is read as a sequence of 28 steps of 28 pixels (one row per step);
a recurrent layer of ``--hidden`` units reads it and a softmax layer
classifies its last hidden state. The layer-normalized and plain networks share
one code path (``lnjax.linen.LNLSTM(layer_norm=False)`` computes what
``flax.linen.LSTMCell`` in ``flax.linen.RNN`` computes), so the comparison
isolates layer norm::

    python -m lnjax.experiments.seq_mnist --epochs 2 --out runs/seq_mnist

Choices not fixed by the paper: pixels standardized by the training set's
mean and std (see :func:`standardize`), Adam (``--lr``, default 1e-3), gradient
clipping at global norm 1, LeCun-normal input and orthogonal recurrent
weights, zero biases, the LN gains at 1 (Eqs. 20-22 for the LSTM, 26-28 for
the GRU). Writes ``results.json``, ``curves.png`` and ``curves.pdf`` (training loss and
test error against steps, the error on a fixed subset of ``--eval-examples``
test images ``--evals-per-epoch`` times per epoch) and prints a summary table.

Reference: Ba, Kiros & Hinton (2016), sections 3.1 and 6 (Eqs. 20-22).
"""

from __future__ import annotations

import argparse
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import optax

from lnjax import linen as lnn
from lnjax.experiments import common, driver

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


def run(method: str, batch_size: int, splits: dict, *, epochs: int, lr: float, seed: int,
        out: str, hidden: int = 128, resume: bool = True, progress: bool = True,
        mesh: Any = None, eval_examples: int | None = common.EVAL_EXAMPLES,
        evals_per_epoch: int = common.EVALS_PER_EPOCH, tensorboard: bool = False) -> dict:
    """Trains one (method, batch size) and returns its history (see :func:`training.fit`)."""
    model = RowClassifier(method=method, hidden=hidden)
    splits = {k: standardize(splits[k], splits["train"])
              for k in ("train", "validation", "test")}
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(lr))
    return common.fit_run(model, tx, splits, method=method, batch_size=batch_size, lr=lr,
                          seed=seed, hidden=hidden, epochs=epochs, out=out, resume=resume,
                          progress=progress, mesh=mesh,
                          desc=f"{LABELS[method]:>7} bs={batch_size:<3}",
                          eval_examples=eval_examples, evals_per_epoch=evals_per_epoch,
                          tensorboard=tensorboard)


def plot(results: dict, path: str) -> None:
    """Training loss and test error against training steps, one pair of panels per batch
    size; each curve the mean over the seeds, with a min-max band when there are several.

    The test error is ``fit``'s ``test_curve_error`` (several points per epoch on the
    fixed test subset), or ``test_error`` (each epoch) for a history without it.
    Written as ``path`` (PNG) and a PDF of the same stem.
    """
    runs, sizes = results["runs"], common.batch_sizes(results)
    fig, axes = common.figure(1, 2 * len(sizes), width=4.6, height=3.4)
    subset = False
    for col, bs in enumerate(sizes):
        left, right = axes[0, 2 * col], axes[0, 2 * col + 1]
        drawn: dict[str, list[float]] = {"left": [], "right": []}
        for method, by in runs.items():
            if not by.get(str(bs)):
                continue
            hs = list(common.seed_histories(by[str(bs)]).values())
            color, style = STYLES.get(method, (None, "-"))
            kw = {"color": color, "linestyle": style, "label": LABELS.get(method, method)}
            x, err, from_subset = common.error_curve(hs)
            subset = subset or from_subset
            steps, loss = common.smoothed_step_loss(hs)
            drawn["left"] += common.band(left, steps, loss, **kw)
            drawn["right"] += common.band(right, x, err, marker="o", markersize=2.5, **kw)
        common.set_scale(left, drawn["left"])
        common.set_scale(right, drawn["right"])
        left.set(title=f"training loss, batch size {bs}", xlabel="training steps",
                 ylabel="train NLL (nats, running mean of 5)")
        right.set(title=f"test error, batch size {bs}", xlabel="training steps",
                  ylabel="test error (%)")
        for ax in (left, right):
            ax.grid(alpha=0.3, which="both")
    common.legend_below(fig, axes)
    measured = common.eval_caption(results) if subset else "the test set after each epoch"
    common.save_figure(fig, path, f"Row-by-row sequential {results['dataset']['name']} "
                       f"(lnjax)\n{common.seeds_caption(runs)}; test error on {measured}")


COLUMNS = common.columns(("steps", "steps", "d"))


def _add_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hidden", type=int, default=128, help="recurrent units")


def _check(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.hidden < 1:
        p.error(f"--hidden must be positive, got {args.hidden}")


EXPERIMENT = driver.Experiment(
    name="seq_mnist", description=__doc__.split("\n\n")[0], title="Row-by-row sequential",
    methods=METHODS, run=run, plot=plot, figure="curves.png", columns=COLUMNS,
    batch_sizes=(128,), epochs=2, lr=1e-3, out="runs/seq_mnist",
    add_flags=_add_flags, run_flags=("hidden",), check=_check)


def main(argv: list[str] | None = None) -> dict:
    """``python -m lnjax.experiments.seq_mnist [flags]``; returns what ``results.json`` holds."""
    return driver.main(EXPERIMENT, argv)


if __name__ == "__main__":
    main()
