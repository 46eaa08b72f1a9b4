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
layer, Adam with learning rate ``--lr`` (default 1e-3) and optax's other
defaults, no weight decay, no data augmentation; the normalized layers have no
dense bias (the normalization's bias takes its place). The training NLL
plotted is the mean over each epoch's steps (in training mode); validation and
test errors use batch norm's running averages (momentum 0.99).

Writes ``results.json`` (per method and batch size, per epoch: train NLL and
error, validation and test NLL and error, wall time; the data set and its
source; library versions), ``figure6.png`` laid out as the paper's Figure 6,
and prints a summary table. Runs resume from their checkpoints in
``OUT/checkpoints`` unless ``--no-resume``.

Reference: Ba, Kiros & Hinton (2016), section 6.7, Figure 6.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import optax

from lnjax import linen as lnn
from lnjax import training
from lnjax.experiments import common

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
        if self.method not in METHODS:
            raise ValueError(f"MLP: method must be one of {METHODS}, got {self.method!r}")
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


def run(method: str, batch_size: int, splits: dict, *, epochs: int, lr: float, seed: int,
        out: str, resume: bool = True, progress: bool = True,
        hidden: Sequence[int] = (1000, 1000), mesh: Any = None,
        per_device_bn: bool = False) -> dict:
    """Trains one (method, batch size) and returns its history (see :func:`training.fit`).

    With a ``mesh`` of several devices the run is data-parallel and batch norm's
    statistics are synchronized over it, unless ``per_device_bn``.
    """
    from lnjax import parallel

    sync = mesh is not None and mesh.devices.size > 1 and not per_device_bn
    model = MLP(method=method, hidden=tuple(hidden), unbiased=batch_size <= 16,
                axis_name=parallel.AXIS if sync else None)
    train = splits["train"]
    state = training.create_train_state(model, optax.adam(lr), train.images[:1], seed=seed)
    config = {"method": method, "batch_size": batch_size, "lr": lr, "seed": seed,
              "hidden": list(hidden), "dataset": train.name, "n_train": len(train.labels)}
    return common.fit_run(state, splits, config, epochs=epochs, out=out, resume=resume,
                          progress=progress, desc=f"{LABELS[method]:>9} bs={batch_size:<3}",
                          mesh=mesh)


def plot(results: dict, path: str) -> None:
    """Figure 6's layout: train NLL (log) above test error, one column per batch size."""
    plt = common.pyplot()
    from matplotlib.ticker import MaxNLocator

    runs = results["runs"]
    sizes = sorted({int(b) for by in runs.values() for b in by}, reverse=True)
    fig, axes = plt.subplots(2, len(sizes), figsize=(4.2 * len(sizes), 6.4), squeeze=False)
    for col, bs in enumerate(sizes):
        top, bottom = axes[0, col], axes[1, col]
        for method, by in runs.items():
            h = by.get(str(bs))
            if not h:
                continue
            kw = {"color": COLORS.get(method), "label": LABELS.get(method, method), "marker": "o",
                  "markersize": 3}
            top.plot(h["epoch"], h["train_loss"], **kw)
            bottom.plot(h["epoch"], [100 * e for e in h["test_error"]], **kw)
        top.set_yscale("log")
        top.set_title(f"batch size {bs}")
        top.set_ylabel("train NLL")
        bottom.set_ylabel("test error (%)")
        bottom.set_xlabel("epoch")
        for ax in (top, bottom):
            ax.grid(alpha=0.3, which="both")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        top.legend()
    hidden = results.get("config", {}).get("hidden", [1000, 1000])
    widths = "-".join(str(w) for w in [784, *hidden, 10])
    fig.suptitle(f"Permutation-invariant {results['dataset']['name']} (lnjax), "
                 f"{widths}, Adam", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


COLUMNS = (("train NLL", "train_loss", ".4f"), ("validation error %", "validation_error", "pct"),
           ("test error %", "test_error", "pct"), ("epochs", "epoch", "d"),
           ("train seconds", "seconds", "s"))


def main(argv: list[str] | None = None) -> dict:
    p = common.parser(__doc__.split("\n\n")[0], methods=METHODS, default_methods=METHODS,
                      batch_sizes=(128, 4), epochs=5, lr=1e-3, out="runs/pi_mnist")
    p.add_argument("--hidden", type=common.comma_list(int), default=[1000, 1000],
                   help="hidden layer widths (the paper: 1000,1000)")
    p.add_argument("--per-device-bn", action="store_true",
                   help="with several devices, batch norm over each device's examples only "
                        "(default: statistics synchronized over all devices)")
    args = p.parse_args(argv)
    common.check_args(p, args)
    timer = common.Timer()
    mesh = common.mesh(args.devices)
    splits, data_info = common.load_splits(args.dataset, args.data_dir, args.train_examples)
    results = {"experiment": "pi_mnist", "dataset": data_info,
               "config": {k: v for k, v in vars(args).items() if k not in ("no_progress",)},
               "versions": common.versions(), "command": " ".join(sys.argv), "runs": {}}
    os.makedirs(args.out, exist_ok=True)
    json_path = os.path.join(args.out, "results.json")
    for bs in args.batch_sizes:
        for method in args.methods:
            h = run(method, bs, splits, epochs=args.epochs, lr=args.lr, seed=args.seed,
                    out=args.out, resume=not args.no_resume, progress=not args.no_progress,
                    hidden=args.hidden, mesh=mesh, per_device_bn=args.per_device_bn)
            results["runs"].setdefault(method, {})[str(bs)] = h
            results["wall_seconds"] = timer()
            common.write_json(json_path, results)
    fig_path = os.path.join(args.out, "figure6.png")
    plot(results, fig_path)
    table = common.summary_table(results["runs"], columns=COLUMNS)
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(table + "\n")
    print(f"\nPermutation-invariant {data_info['name']} ({data_info['source']}), "
          f"{args.epochs} epochs, {data_info['sizes']['train']} training examples:\n")
    print(table)
    print(f"\nWrote {json_path}, {fig_path}; {timer():.0f} s in all.")
    return results


if __name__ == "__main__":
    main()
