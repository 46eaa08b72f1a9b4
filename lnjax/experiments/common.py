"""What the command-line experiments share: flags, data, results files, tables, plots."""

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

DATASETS = ("auto", "mnist", "fashion_mnist", "kmnist")


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


def parser(description: str, *, methods: Sequence[str], default_methods: Sequence[str],
           batch_sizes: Sequence[int], epochs: int, lr: float, out: str) -> argparse.ArgumentParser:
    """The flags every experiment takes."""
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", default="auto", choices=DATASETS,
                   help="data set; 'auto' takes the first of mnist, fashion_mnist found")
    p.add_argument("--data-dir", default=None,
                   help="a folder of MNIST-format IDX files or a TFDS data_dir")
    p.add_argument("--methods", type=comma_list(str), default=list(default_methods),
                   help=f"comma-separated, from {','.join(methods)}")
    p.add_argument("--batch-sizes", type=comma_list(int), default=list(batch_sizes),
                   help="comma-separated batch sizes")
    p.add_argument("--epochs", type=int, default=epochs, help="epochs per run")
    p.add_argument("--lr", type=float, default=lr, help="Adam learning rate")
    p.add_argument("--seed", type=int, default=0, help="seed of the parameters and batch order")
    p.add_argument("--train-examples", type=int, default=None,
                   help="train on the first N of the 55,000 training examples (default: all)")
    p.add_argument("--out", default=out, help="folder for results.json, the figure, checkpoints")
    p.add_argument("--no-resume", action="store_true",
                   help="start every run afresh instead of resuming from its checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--devices", type=int, default=None,
                   help="train data-parallel over the first N devices (default: all)")
    p.methods_allowed = tuple(methods)  # type: ignore[attr-defined]
    return p


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Rejects values argparse cannot check by itself."""
    bad = [m for m in args.methods if m not in p.methods_allowed]  # type: ignore[attr-defined]
    if bad:
        p.error(f"--methods: unknown {bad}; choose from {list(p.methods_allowed)}")  # type: ignore[attr-defined]
    if any(b < 1 for b in args.batch_sizes):
        p.error(f"--batch-sizes must be positive, got {args.batch_sizes}")
    if args.epochs < 1:
        p.error(f"--epochs must be at least 1, got {args.epochs}")
    if not args.lr > 0:
        p.error(f"--lr must be positive, got {args.lr}")
    if args.train_examples is not None and args.train_examples < 1:
        p.error(f"--train-examples must be positive, got {args.train_examples}")
    if args.devices is not None and not 1 <= args.devices <= jax.device_count():
        p.error(f"--devices must be between 1 and {jax.device_count()} (the devices "
                f"available), got {args.devices}")


def mesh(devices: int | None):
    """The data-parallel mesh of ``--devices`` (``None``: all devices); printed."""
    from lnjax import parallel

    m = parallel.make_mesh(devices)
    n = m.devices.size
    print(f"Devices: {n} x {jax.devices()[0].device_kind}"
          + (" (data-parallel)" if n > 1 else ""))
    return m


def load_splits(dataset: str, data_dir: str | None, train_examples: int | None
                ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train (55,000), validation (5,000) and test splits, and a record of their source.

    ``dataset="auto"`` takes the first of mnist and fashion_mnist that is found.
    Prints which data set and source were used.
    """
    from lnjax import data

    names = ("mnist", "fashion_mnist") if dataset == "auto" else (dataset,)
    errors = []
    for name in names:
        try:
            splits = {s: data.load(name, s, data_dir=data_dir)
                      for s in ("train", "validation", "test")}
            break
        except FileNotFoundError as e:
            errors.append(e)
    else:
        if len(errors) == 1:
            raise errors[0]
        raise FileNotFoundError("No data set found. " + "\n\n".join(str(e) for e in errors))
    if train_examples is not None:
        tr = splits["train"]
        splits["train"] = tr._replace(images=tr.images[:train_examples],
                                      labels=tr.labels[:train_examples])
    for ds in splits.values():
        print("Data:", data.describe(ds))
    first = splits["train"]
    info = {"name": first.name, "source": first.source,
            "sizes": {k: len(v.labels) for k, v in splits.items()}}
    return splits, info


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


def fit_run(state: Any, splits: Mapping[str, Any], config: Mapping[str, Any], *, epochs: int,
            out: str, resume: bool, progress: bool, desc: str, mesh: Any = None) -> dict:
    """Trains ``state`` on ``splits["train"]``, evaluating validation and test after each epoch.

    Checkpoints go to ``OUT/checkpoints/<method>-bs<batch size>-<hash of config>``,
    so a rerun with the same settings resumes (unless ``resume=False``) and
    other settings never reuse them. Returns the history of :func:`training.fit`.
    """
    from lnjax import training

    train, val, test = splits["train"], splits["validation"], splits["test"]
    name = f"{config['method']}-bs{config['batch_size']}-{config_key(config)}"
    ckpt = os.path.join(out, "checkpoints", name)
    if not resume and os.path.isdir(ckpt):
        shutil.rmtree(ckpt)
    _, history = training.fit(
        state, (train.images, train.labels), epochs=epochs, batch_size=config["batch_size"],
        seed=config["seed"],
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


class Timer:
    """Wall time since construction, in seconds."""

    def __init__(self):
        self.t0 = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.t0


def pyplot():
    """matplotlib's pyplot on a non-interactive backend."""
    import matplotlib

    if not os.environ.get("MPLBACKEND"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
