"""The one way the benchmarks time: interleaved rounds, every call waited for, medians.

Every timed function takes no arguments and returns only when its work is
done (:func:`jax_call` wraps a jitted function so that it blocks on its
outputs). :func:`time_interleaved` calls each function once to compile and
warm up, then times them round-robin, one timing of each per round, so that a
slow spell on a shared machine hits all of them alike. :func:`measure` adds
the medians and the :class:`TimeRatio` of each pair named, taken as the
median over rounds of the per-round ratio.

Example:
  >>> import jax.numpy as jnp
  >>> x = jnp.ones(1000)
  >>> times = time_interleaved({"a": jax_call(jnp.sin, x), "b": jax_call(jnp.cos, x)},
  ...                          rounds=3)
  >>> [len(t) for t in times.values()]
  [3, 3]
  >>> TimeRatio("b", "a").label
  'b / a'
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax


def block(out: Any) -> Any:
    """``out`` once every array in it is computed (``block_until_ready`` on each leaf)."""
    for leaf in jax.tree_util.tree_leaves(out):
        if hasattr(leaf, "block_until_ready"):
            leaf.block_until_ready()
    return out


def jax_call(fn: Callable, *args) -> Callable[[], Any]:
    """A no-argument callable that runs ``fn(*args)`` and waits for the result."""
    return lambda: block(fn(*args))


def time_interleaved(functions: Mapping[str, Callable[[], Any]], *, rounds: int,
                     min_time: float = 0.0) -> dict[str, list[float]]:
    """Seconds per call of each function, ``rounds`` times, round-robin.

    Each function is first called once (compilation, warm-up), untimed. With
    ``min_time > 0`` one more untimed call measures it, and each timing then
    repeats the call often enough to last about ``min_time`` seconds and
    reports the time per call; with ``min_time=0`` each timing is one call.
    """
    repeats = {}
    for name, f in functions.items():
        f()  # compile and warm up
        if min_time > 0:
            start = time.perf_counter()
            f()
            repeats[name] = max(1, int(min_time / max(time.perf_counter() - start, 1e-7)))
        else:
            repeats[name] = 1
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(rounds):
        for name, f in functions.items():
            start = time.perf_counter()
            for _ in range(repeats[name]):
                f()
            times[name].append((time.perf_counter() - start) / repeats[name])
    return times


@dataclasses.dataclass(frozen=True)
class TimeRatio:
    """``time[numerator] / time[denominator]``, as its label ``"numerator / denominator"`` reads.

    Above 1, ``denominator`` is the faster: ``TimeRatio("flax", "lnjax")`` is
    lnjax's speed-up over flax, ``TimeRatio("lnjax", "copy")`` lnjax's time in
    units of one copy. ``target`` is the least acceptable value (``at_least``)
    or the largest (``not at_least``); None when the ratio has no target.
    """

    numerator: str
    denominator: str
    target: float | None = None
    at_least: bool = True

    @property
    def label(self) -> str:
        return f"{self.numerator} / {self.denominator}"

    def measure(self, times: Mapping[str, Sequence[float]]) -> dict[str, Any] | None:
        """The JSON record of this ratio in ``times`` (None when either side was not timed)."""
        if self.numerator not in times or self.denominator not in times:
            return None
        value = statistics.median(
            n / d for n, d in zip(times[self.numerator], times[self.denominator]))
        met = None if self.target is None else (
            value >= self.target if self.at_least else value <= self.target)
        return {"numerator": self.numerator, "denominator": self.denominator,
                "label": self.label, "value": value, "target": self.target,
                "at_least": self.at_least, "met": met}


def measure(functions: Mapping[str, Callable[[], Any]], ratios: Sequence[TimeRatio] = (), *,
            rounds: int, min_time: float = 0.0) -> dict[str, Any]:
    """Times ``functions`` (see :func:`time_interleaved`) and reports medians and ratios.

    Returns:
      ``{"median_ms": {name: median milliseconds per call}, "ratios": [record of
      each ratio whose two sides were timed, see TimeRatio.measure]}``.
    """
    times = time_interleaved(functions, rounds=rounds, min_time=min_time)
    records = [r.measure(times) for r in ratios]
    return {"median_ms": {n: 1e3 * statistics.median(t) for n, t in times.items()},
            "ratios": [r for r in records if r is not None]}


def per_second(count: int, median_ms: float) -> float:
    """``count`` events (steps) in ``median_ms`` milliseconds, per second."""
    return count / (median_ms / 1e3)
