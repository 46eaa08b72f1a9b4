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
the GRU). Writes ``results.json``, ``curves.png`` (training loss and test
accuracy against steps) and prints a summary table.

Reference: Ba, Kiros & Hinton (2016), sections 3.1 and 6 (Eqs. 20-22).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import optax

from lnjax import linen as lnn
from lnjax import training
from lnjax.experiments import common

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
        mesh: Any = None) -> dict:
    """Trains one (method, batch size) and returns its history (see :func:`training.fit`)."""
    model = RowClassifier(method=method, hidden=hidden)
    splits = {k: standardize(splits[k], splits["train"])
              for k in ("train", "validation", "test")}
    train = splits["train"]
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(lr))
    state = training.create_train_state(model, tx, train.images[:1], seed=seed)
    config = {"method": method, "batch_size": batch_size, "lr": lr, "seed": seed,
              "hidden": hidden, "dataset": train.name, "n_train": len(train.labels)}
    return common.fit_run(state, splits, config, epochs=epochs, out=out, resume=resume,
                          progress=progress, desc=f"{LABELS[method]:>7} bs={batch_size:<3}",
                          mesh=mesh)


def plot(results: dict, path: str) -> None:
    """Training loss (log) and test accuracy against steps, one column per batch size."""
    plt = common.pyplot()
    runs = results["runs"]
    sizes = sorted({int(b) for by in runs.values() for b in by}, reverse=True)
    fig, axes = plt.subplots(1, 2 * len(sizes), figsize=(4.5 * 2 * len(sizes), 3.6),
                             squeeze=False)
    for col, bs in enumerate(sizes):
        left, right = axes[0, 2 * col], axes[0, 2 * col + 1]
        for method, by in runs.items():
            h = by.get(str(bs))
            if not h:
                continue
            color, style = STYLES.get(method, (None, "-"))
            kw = {"color": color, "linestyle": style, "label": LABELS.get(method, method)}
            steps, losses = zip(*h["step_loss"])
            left.plot(steps, losses, alpha=0.8, **kw)
            right.plot(h["steps"], [100 * (1 - e) for e in h["test_error"]], marker="o",
                       markersize=3, **kw)
        left.set_yscale("log")
        left.set(title=f"training loss, batch size {bs}", xlabel="step", ylabel="NLL")
        right.set(title=f"test accuracy, batch size {bs}", xlabel="step", ylabel="accuracy (%)")
        for ax in (left, right):
            ax.grid(alpha=0.3, which="both")
            ax.legend()
    fig.suptitle(f"Row-by-row sequential {results['dataset']['name']} (lnjax)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


COLUMNS = (("train NLL", "train_loss", ".4f"), ("validation error %", "validation_error", "pct"),
           ("test error %", "test_error", "pct"), ("steps", "steps", "d"),
           ("train seconds", "seconds", "s"))


def main(argv: list[str] | None = None) -> dict:
    p = common.parser(__doc__.split("\n\n")[0], methods=METHODS, default_methods=METHODS,
                      batch_sizes=(128,), epochs=2, lr=1e-3, out="runs/seq_mnist")
    p.add_argument("--hidden", type=int, default=128, help="recurrent units")
    args = p.parse_args(argv)
    common.check_args(p, args)
    if args.hidden < 1:
        p.error(f"--hidden must be positive, got {args.hidden}")
    timer = common.Timer()
    mesh = common.mesh(args.devices)
    splits, data_info = common.load_splits(args.dataset, args.data_dir, args.train_examples)
    results = {"experiment": "seq_mnist", "dataset": data_info,
               "config": {k: v for k, v in vars(args).items() if k not in ("no_progress",)},
               "versions": common.versions(), "command": " ".join(sys.argv), "runs": {}}
    os.makedirs(args.out, exist_ok=True)
    json_path = os.path.join(args.out, "results.json")
    for bs in args.batch_sizes:
        for method in args.methods:
            h = run(method, bs, splits, epochs=args.epochs, lr=args.lr, seed=args.seed,
                    out=args.out, hidden=args.hidden, resume=not args.no_resume,
                    progress=not args.no_progress, mesh=mesh)
            results["runs"].setdefault(method, {})[str(bs)] = h
            results["wall_seconds"] = timer()
            common.write_json(json_path, results)
    fig_path = os.path.join(args.out, "curves.png")
    plot(results, fig_path)
    table = common.summary_table(results["runs"], columns=COLUMNS)
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(table + "\n")
    print(f"\nRow-by-row sequential {data_info['name']} ({data_info['source']}), "
          f"{args.epochs} epochs, {data_info['sizes']['train']} training examples:\n")
    print(table)
    print(f"\nWrote {json_path}, {fig_path}; {timer():.0f} s in all.")
    return results


if __name__ == "__main__":
    main()
