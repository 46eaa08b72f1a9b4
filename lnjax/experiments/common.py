"""What the experiments share besides the driver: a training run, results files, tables, plots."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from lnjax._optional import require


def comma_list(kind: Callable[[str], Any]) -> Callable[[str], list]:
    """An argparse type: a comma-separated list of ``kind``."""
    def parse(text: str) -> list:
        try:
            out = [kind(v) for v in text.split(",") if v.strip()]
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{text!r}: {e}") from None
        if not out:
            raise argparse.ArgumentTypeError("an empty list")
        return out
    return parse


def versions() -> dict[str, str]:
    """Versions of Python and the libraries the run used, and the machine."""
    import flax
    import optax

    import lnjax

    return {"python": platform.python_version(), "jax": jax.__version__,
            "flax": flax.__version__, "optax": optax.__version__, "numpy": np.__version__,
            "lnjax": lnjax.__version__, "backend": jax.default_backend(),
            "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip()}


def config_key(config: Mapping[str, Any]) -> str:
    """A short hash of a run's configuration (checkpoints of other settings are not reused)."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def batch_sizes(results: Mapping[str, Any]) -> list[int]:
    """The batch sizes in a ``results.json``'s runs, largest first (one figure column each)."""
    return sorted({int(b) for by in results["runs"].values() for b in by}, reverse=True)


def fit_run(model: Any, tx: Any, splits: Mapping[str, Any], *, method: str, batch_size: int,
            lr: float, seed: int, hidden: Any, epochs: int, out: str, resume: bool,
            progress: bool, desc: str, mesh: Any = None, takes_mask: bool = False) -> dict:
    """Trains ``model`` from seed ``seed`` on ``splits["train"]``, evaluating validation and
    test after each epoch; returns the history of :func:`training.fit`.

    The run is identified by its settings and data (``method``, ``batch_size``,
    ``lr``, ``seed``, ``hidden``, the data set's name and size): checkpoints go to
    ``OUT/checkpoints/<method>-bs<batch size>-<hash of those>``, so a rerun with
    the same settings resumes (unless ``resume=False``) and other settings never
    reuse them. ``takes_mask``: the model's ``__call__`` takes ``mask=``
    (see :func:`training.create_train_state`).
    """
    from lnjax import training

    train, val, test = splits["train"], splits["validation"], splits["test"]
    state = training.create_train_state(model, tx, train.images[:1], seed=seed,
                                        takes_mask=takes_mask)
    config = {"method": method, "batch_size": batch_size, "lr": lr, "seed": seed,
              "hidden": hidden, "dataset": train.name, "n_train": len(train.labels)}
    ckpt = os.path.join(out, "checkpoints", f"{method}-bs{batch_size}-{config_key(config)}")
    if not resume and os.path.isdir(ckpt):
        shutil.rmtree(ckpt)
    _, history = training.fit(
        state, (train.images, train.labels), epochs=epochs, batch_size=batch_size, seed=seed,
        evals={"validation": (val.images, val.labels), "test": (test.images, test.labels)},
        checkpoint_dir=ckpt, progress=progress, desc=desc, mesh=mesh)
    return history


def write_json(path: str, payload: Mapping[str, Any]) -> None:
    """Writes ``payload`` atomically (a crash never leaves half a file)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1)
    os.replace(tmp, path)


def summary_table(runs: Mapping[str, Mapping[str, Mapping[str, Any]]], *,
                  columns: Sequence[tuple[str, str, str]]) -> str:
    """A markdown table with one row per (method, batch size): the last epoch's values.

    Args:
      runs: ``{method: {batch_size: history}}``.
      columns: ``(header, history key, format)`` triples, e.g.
        ``("test error %", "test_error", "pct")``; format ``pct`` prints a
        fraction as a percentage, ``s`` seconds, otherwise a format spec.
    """
    head = "| method | batch size | " + " | ".join(c[0] for c in columns) + " |"
    lines = [head, "|---|---:|" + "---:|" * len(columns)]
    for method, by_bs in runs.items():
        for bs, h in by_bs.items():
            cells = []
            for _, key, fmt in columns:
                v = h.get(key)
                v = v[-1] if isinstance(v, list) and v else v
                if v is None or v == []:
                    cells.append("-")
                elif fmt == "pct":
                    cells.append(f"{100 * v:.2f}")
                elif fmt == "s":
                    cells.append(f"{v:.0f}")
                else:
                    cells.append(format(v, fmt))
            lines.append(f"| {method} | {bs} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def columns(progress: tuple[str, str, str]) -> tuple[tuple[str, str, str], ...]:
    """The summary table's columns: train NLL, validation and test error, ``progress``
    (``("epochs", "epoch", "d")`` or ``("steps", "steps", "d")``), train seconds."""
    return (("train NLL", "train_loss", ".4f"),
            ("validation error %", "validation_error", "pct"),
            ("test error %", "test_error", "pct"), progress, ("train seconds", "seconds", "s"))


class Timer:
    """Wall time since construction, in seconds."""

    def __init__(self):
        self.t0 = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.t0


def pyplot():
    """matplotlib's pyplot on a non-interactive backend.

    Raises:
      lnjax._optional.MissingExtraError: matplotlib is not installed (one line
        naming ``pip install "lnjax[plots]"``).
    """
    matplotlib = require("matplotlib", "the experiments' figures")

    if not os.environ.get("MPLBACKEND"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str, title: str) -> None:
    """Titles ``fig``, lays it out, writes it to ``path`` (120 dpi) and closes it."""
    plt = pyplot()
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
