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


def is_history(entry: Mapping[str, Any]) -> bool:
    """Whether ``entry`` is one run's history (or a skipped run's note) rather than
    ``{seed: history}`` (whose keys are all integers and values all dicts)."""
    return not entry or not all(str(k).lstrip("-").isdigit() and isinstance(v, Mapping)
                                for k, v in entry.items())


def seed_histories(entry: Mapping[str, Any]) -> dict[str, dict]:
    """``{seed: history}`` of one (method, batch size) of ``results["runs"]``.

    ``results.json`` keeps ``runs[method][batch size][seed]``; a history in the
    place of that dict (a ``results.json`` of one seed from before ``--seeds``, or
    a notebook's ``runs[method][batch size] = history``) is read as one seed, ``"0"``.

    Example:
      >>> sorted(seed_histories({"1": {"epoch": [1]}, "0": {"epoch": [1]}}))
      ['0', '1']
      >>> seed_histories({"epoch": [1, 2]})
      {'0': {'epoch': [1, 2]}}
    """
    if is_history(entry):
        return {"0": dict(entry)}
    return {str(k): dict(v) for k, v in sorted(entry.items(), key=lambda kv: int(kv[0]))}


def first_seed(runs: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, dict]]:
    """``{method: {batch size: history}}`` of the first seed of every run."""
    return {m: {bs: next(iter(seed_histories(e).values())) for bs, e in by.items()}
            for m, by in runs.items()}


def mean_history(histories: Sequence[Mapping[str, Any]]) -> dict:
    """The mean over seeds of histories of one setting: each list of numbers averaged
    element-wise (over the length all share), other values taken from the first.

    Example:
      >>> mean_history([{"test_error": [0.2, 0.1], "devices": 8},
      ...               {"test_error": [0.4, 0.3], "devices": 8}])
      {'test_error': [0.30000000000000004, 0.2], 'devices': 8}
    """
    first = dict(histories[0])
    if len(histories) == 1:
        return first
    out = {}
    for key, v in first.items():
        values = [h.get(key) for h in histories]
        lists = [u for u in values if isinstance(u, list)]
        if isinstance(v, list) and len(lists) == len(values):
            n = min(len(u) for u in lists)
            try:
                out[key] = np.mean(np.asarray([u[:n] for u in lists], dtype=np.float64),
                                   axis=0).tolist()
            except (TypeError, ValueError):
                out[key] = v
        else:
            out[key] = v
    return out


def mean_runs(runs: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, dict]]:
    """``{method: {batch size: mean history}}``: :func:`mean_history` over each run's seeds."""
    return {m: {bs: mean_history(list(seed_histories(e).values())) for bs, e in by.items()}
            for m, by in runs.items()}


def seeds_of(runs: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The seeds found in ``runs``, in order."""
    found = {s for by in runs.values() for e in by.values() for s in seed_histories(e)}
    return sorted(found, key=int)


EVAL_EXAMPLES = 2000  # the default --eval-examples: the curves' subset of each split
EVALS_PER_EPOCH = 4  # the default --evals-per-epoch
SUBSET_SEED = 0  # the curves' subsets are the same for every run, seed and epoch


def eval_subset(ds: Any, examples: int | None) -> Any:
    """A fixed subset of ``examples`` of split ``ds`` (``None`` or at least its size: all of
    it), drawn with a seed of its own: the same for every run, seed and epoch.

    Example:
      >>> import numpy as np
      >>> from lnjax.data import Dataset
      >>> ds = Dataset(np.arange(10.0)[:, None], np.arange(10), "toy", "test", "memory")
      >>> eval_subset(ds, 4).labels.tolist() == eval_subset(ds, 4).labels.tolist()
      True
      >>> len(eval_subset(ds, 4).labels), len(eval_subset(ds, 50).labels)
      (4, 10)
    """
    n = len(ds.labels)
    if examples is None or examples >= n:
        return ds
    idx = np.sort(np.random.default_rng(SUBSET_SEED).choice(n, examples, replace=False))
    return ds._replace(images=ds.images[idx], labels=ds.labels[idx])


def run_name(method: str, batch_size: int, config: Mapping[str, Any]) -> str:
    """A run's folder name under ``OUT/checkpoints`` (and, with its seed, ``OUT/tensorboard``)."""
    return f"{method}-bs{batch_size}-{config_key(config)}"


def fit_run(model: Any, tx: Any, splits: Mapping[str, Any], *, method: str, batch_size: int,
            lr: float, seed: int, hidden: Any, epochs: int, out: str, resume: bool,
            progress: bool, desc: str, mesh: Any = None, takes_mask: bool = False,
            eval_examples: int | None = EVAL_EXAMPLES, evals_per_epoch: int = EVALS_PER_EPOCH,
            tensorboard: bool = False) -> dict:
    """Trains ``model`` from seed ``seed`` on ``splits["train"]``, evaluating validation and
    test after each epoch and, for the curves, fixed subsets of ``eval_examples`` of each
    (:func:`eval_subset`) ``evals_per_epoch`` times per epoch; returns the history of
    :func:`training.fit` (``validation_curve_error``, ``test_curve_error`` at ``eval_steps``).

    The run is identified by its settings and data (``method``, ``batch_size``,
    ``lr``, ``seed``, ``hidden``, the data set's name and size): checkpoints go to
    ``OUT/checkpoints/<method>-bs<batch size>-<hash of those>``, so a rerun with
    the same settings resumes (unless ``resume=False``) and other settings never
    reuse them; the curves' settings are part of the hash only when they differ
    from the defaults. ``takes_mask``: the model's ``__call__`` takes ``mask=``
    (see :func:`training.create_train_state`). ``tensorboard``: TensorBoard event
    files in ``OUT/tensorboard/<method>-bs<batch size>-seed<seed>-<hash>``.
    """
    from lnjax import training

    train, val, test = splits["train"], splits["validation"], splits["test"]
    state = training.create_train_state(model, tx, train.images[:1], seed=seed,
                                        takes_mask=takes_mask)
    config = {"method": method, "batch_size": batch_size, "lr": lr, "seed": seed,
              "hidden": hidden, "dataset": train.name, "n_train": len(train.labels)}
    if (eval_examples, evals_per_epoch) != (EVAL_EXAMPLES, EVALS_PER_EPOCH):
        config["curves"] = [eval_examples, evals_per_epoch]
    name = run_name(method, batch_size, config)
    ckpt = os.path.join(out, "checkpoints", name)
    logdir = None
    if tensorboard:
        logdir = os.path.join(out, "tensorboard", name.replace(f"-bs{batch_size}-",
                                                               f"-bs{batch_size}-seed{seed}-"))
    if not resume:
        for folder in (ckpt, logdir):
            if folder is not None and os.path.isdir(folder):
                shutil.rmtree(folder)
    _, history = training.fit(
        state, (train.images, train.labels), epochs=epochs, batch_size=batch_size, seed=seed,
        evals={"validation": (val.images, val.labels), "test": (test.images, test.labels)},
        curves={k: (d.images, d.labels)
                for k, d in (("validation", eval_subset(val, eval_examples)),
                             ("test", eval_subset(test, eval_examples)))},
        evals_per_epoch=evals_per_epoch, checkpoint_dir=ckpt, progress=progress, desc=desc,
        mesh=mesh, tensorboard_dir=logdir)
    return history


def write_json(path: str, payload: Mapping[str, Any]) -> None:
    """Writes ``payload`` atomically (a crash never leaves half a file)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1)
    os.replace(tmp, path)


def _cell(values: Sequence[Any], fmt: str) -> str:
    def one(v):
        if fmt == "pct":
            return f"{100 * v:.2f}"
        if fmt == "s":
            return f"{v:.0f}"
        return format(v, fmt)

    values = [v for v in values if v is not None and v != []]
    if not values:
        return "-"
    if len(values) == 1 or all(v == values[0] for v in values):
        return one(values[0])
    spread = float(np.std(values, ddof=1))
    return f"{one(float(np.mean(values)))} ± {one(spread)}"


def summary_table(runs: Mapping[str, Mapping[str, Mapping[str, Any]]], *,
                  columns: Sequence[tuple[str, str, str]]) -> str:
    """A markdown table with one row per (method, batch size): the last epoch's values.

    With several seeds a cell reads ``mean ± standard deviation`` over the
    seeds (sample standard deviation; a value all seeds share is printed once)
    and a ``seeds`` column says how many.

    Args:
      runs: ``{method: {batch_size: {seed: history}}}`` (or ``{method:
        {batch_size: history}}``, one seed; see :func:`seed_histories`).
      columns: ``(header, history key, format)`` triples, e.g.
        ``("test error %", "test_error", "pct")``; format ``pct`` prints a
        fraction as a percentage, ``s`` seconds, otherwise a format spec.

    Example:
      >>> runs = {"ln": {"4": {"0": {"test_error": [0.5, 0.2]},
      ...                      "1": {"test_error": [0.5, 0.3]}}}}
      >>> print(summary_table(runs, columns=[("test error %", "test_error", "pct")]))
      | method | batch size | seeds | test error % |
      |---|---:|---:|---:|
      | ln | 4 | 2 | 25.00 ± 7.07 |
    """
    seeded = {m: {bs: seed_histories(e) for bs, e in by.items()} for m, by in runs.items()}
    many = any(len(hs) > 1 for by in seeded.values() for hs in by.values())
    head = "| method | batch size | " + ("seeds | " if many else "") \
        + " | ".join(c[0] for c in columns) + " |"
    lines = [head, "|---|---:|" + "---:|" * (len(columns) + many)]
    for method, by_bs in seeded.items():
        for bs, hs in by_bs.items():
            cells = [str(len(hs))] if many else []
            for _, key, fmt in columns:
                values = []
                for h in hs.values():
                    v = h.get(key)
                    values.append(v[-1] if isinstance(v, list) and v else v)
                cells.append(_cell(values, fmt))
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


def pyplot(*, feature: str = "the experiments' figures") -> Any:
    """matplotlib's pyplot on a non-interactive backend.

    Args:
      feature: what needs the figures, for the error message.

    Raises:
      lnjax._optional.MissingExtraError: matplotlib is not installed (one line
        naming ``feature`` and ``pip install "lnjax[plots]"``).
    """
    matplotlib = require("matplotlib", feature)

    if not os.environ.get("MPLBACKEND"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str, title: str) -> list[str]:
    """Titles ``fig``, lays it out, writes it as PNG (140 dpi) and PDF (fonts embedded as
    TrueType) with ``path``'s stem, and closes it; returns the two paths."""
    plt = pyplot()
    fig.suptitle(title, fontsize=11)
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    stem = os.path.splitext(path)[0]
    paths = [stem + ".png", stem + ".pdf"]
    with plt.rc_context({"pdf.fonttype": 42, "pdf.compression": 9}):
        fig.savefig(paths[0], dpi=140)
        fig.savefig(paths[1])
    plt.close(fig)
    return paths


def figure(rows: int, cols: int, *, width: float, height: float) -> tuple[Any, Any]:
    """A figure of ``rows`` x ``cols`` axes (``width``, ``height``: inches per axes), laid out
    by matplotlib's constrained layout, so that a legend outside the axes keeps its room."""
    plt = pyplot()
    return plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False,
                        layout="constrained")


DECADE = 10.0  # a range wider than this ratio is drawn on a log axis


def set_scale(ax: Any, values: Sequence[float], *, axis: str = "y") -> str:
    """Sets ``axis`` of ``ax`` linear, or logarithmic when the positive ``values`` span more
    than a decade (``max / min > 10``), with plain tick labels (``0.3``, ``1``, ``2``, not
    ``3 × 10⁻¹``); returns the scale chosen.

    Example:
      >>> plt = pyplot()
      >>> fig, ax = plt.subplots()
      >>> set_scale(ax, [2.3, 0.4]), set_scale(ax, [2.3, 0.04])
      ('linear', 'log')
      >>> plt.close(fig)
    """
    from matplotlib.ticker import FuncFormatter, LogLocator

    finite = np.asarray([v for v in values if v is not None and np.isfinite(v)], float)
    positive = finite[finite > 0]
    log = finite.size > 0 and positive.size == finite.size \
        and positive.max() / positive.min() > DECADE
    target = ax.yaxis if axis == "y" else ax.xaxis
    if not log:
        (ax.set_yscale if axis == "y" else ax.set_xscale)("linear")
        return "linear"
    (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    target.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    target.set_major_formatter(plain)
    target.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    return "log"


def curve(histories: Sequence[Mapping[str, Any]], key: str, *, x: str = "steps",
          factor: float = 1.0) -> tuple[np.ndarray, np.ndarray] | None:
    """The points of ``key`` over seeds: ``(x values, values (seeds, points) * factor)``
    over the points all seeds share, or ``None`` when a history lacks ``key``.

    ``key`` may be a ``<split>_curve_error``-style key (its x is ``eval_steps``),
    ``step_loss`` (its own ``[step, loss]`` pairs) or a per-epoch key (x: ``x``).
    """
    if not histories or any(not h.get(key) for h in histories):
        return None
    if key == "step_loss":
        n = min(len(h[key]) for h in histories)
        xs = np.asarray([p[0] for p in histories[0][key][:n]], float)
        ys = np.asarray([[p[1] for p in h[key][:n]] for h in histories], float)
        return xs, factor * ys
    xkey = "eval_steps" if "_curve_" in key else x
    n = min(min(len(h[key]), len(h[xkey])) for h in histories)
    xs = np.asarray(histories[0][xkey][:n], float)
    ys = np.asarray([[np.nan if v is None else v for v in h[key][:n]] for h in histories], float)
    return xs, factor * ys


def first_curve(histories: Sequence[Mapping[str, Any]], *keys: str,
                factor: float = 1.0) -> tuple[np.ndarray, np.ndarray, str]:
    """The first of ``keys`` that every history holds, as :func:`curve` gives it, and the key.

    Raises:
      ValueError: no key is held by every history.
    """
    for key in keys:
        points = curve(histories, key, factor=factor)
        if points is not None:
            return points[0], points[1], key
    raise ValueError(f"first_curve: the histories hold none of {keys}.")


def smoothed_step_loss(histories: Sequence[Mapping[str, Any]], window: int = 5,
                       ) -> tuple[np.ndarray, np.ndarray]:
    """The ``step_loss`` points over seeds, each seed's losses a :func:`running_mean`."""
    steps, losses, _ = first_curve(histories, "step_loss")
    return steps, np.asarray([running_mean(v, window) for v in losses])


def error_curve(histories: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray, bool]:
    """The test error (%) over seeds: the curve subset's points where the histories have
    them, else the whole split's per epoch; and whether it was the subset."""
    xs, errors, key = first_curve(histories, "test_curve_error", "test_error", factor=100)
    return xs, errors, key == "test_curve_error"


def running_mean(values: Sequence[float], window: int) -> list[float]:
    """The mean of each value and the ``window - 1`` before it (fewer at the start).

    Example:
      >>> running_mean([1.0, 3.0, 5.0, 7.0], 2)
      [1.0, 2.0, 4.0, 6.0]
    """
    out, total, kept = [], 0.0, []
    for v in values:
        kept.append(v)
        total += v
        if len(kept) > window:
            total -= kept.pop(0)
        out.append(total / len(kept))
    return out


def band(ax: Any, xs: np.ndarray, ys: np.ndarray, **line: Any) -> list[float]:
    """Draws the mean over seeds of ``ys`` (``(seeds, points)``) against ``xs`` and, with
    several seeds, a shaded band from their minimum to their maximum; the x axis starts at
    0 (steps or epochs); returns the values drawn (for :func:`set_scale`)."""
    mean = ys.mean(axis=0)
    ax.plot(xs, mean, **line)
    ax.set_xlim(left=0)
    if len(ys) > 1:
        ax.fill_between(xs, ys.min(axis=0), ys.max(axis=0), color=line.get("color"),
                        alpha=0.2, linewidth=0)
        return ys.ravel().tolist()
    return mean.tolist()


def seeds_caption(runs: Mapping[str, Mapping[str, Any]]) -> str:
    """The figures' note on seeds: ``"mean of 3 seeds, band: min–max"`` or ``"1 seed"``."""
    counts = {len(seed_histories(e)) for by in runs.values() for e in by.values()}
    n = max(counts, default=1)
    return "1 seed" if n == 1 else f"mean of {n} seeds, band: min–max"


def eval_caption(results: Mapping[str, Any], split: str = "test") -> str:
    """What the error curves were measured on: ``"2,000 of the 10,000 test images"``."""
    size = results.get("dataset", {}).get("sizes", {}).get(split)
    n = results.get("config", {}).get("eval_examples")
    if size is None:
        return f"{split} set"
    if n is None or n >= size:
        return f"all {size:,} {split} images"
    return f"{n:,} of the {size:,} {split} images"


def legend_below(fig: Any, axes: Any, *, ncols: int | None = None) -> None:
    """One legend for the whole figure, below the axes (it hides no curve); the labels of
    all ``axes``, each once."""
    handles, labels = [], []
    for ax in np.ravel(axes):
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        fig.legend(handles, labels, loc="outside lower center",
                   ncols=ncols or min(len(labels), 4), fontsize=9, frameon=False)
