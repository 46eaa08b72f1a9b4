"""The experiments' figures: matplotlib on a non-interactive backend, curves over seeds with
their min-max band, axis scales, captions and the figure files (PNG and PDF)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lnjax._optional import require
from lnjax.experiments.results import seed_histories

__all__ = ["DECADE", "band", "curve", "error_curve", "eval_caption", "figure", "first_curve",
           "legend_below", "pyplot", "running_mean", "save_figure", "seeds_caption",
           "set_scale", "smoothed_step_loss"]


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


DECADE = 10.0
"""A range of values wider than this ratio is drawn on a log axis (:func:`set_scale`)."""


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
