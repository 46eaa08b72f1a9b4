"""The one way the benchmarks time: interleaved rounds, every call waited for, medians.

Every timed function takes no arguments and returns only when its work is
done (:func:`jax_call` wraps a jitted function so that it blocks on its
outputs). :func:`time_interleaved` calls each function once to compile and
warm up, then times them round-robin, one timing of each per round, so that a
slow spell on a shared machine hits all of them alike. :func:`measure` adds
the medians and the :class:`TimeRatio` of each pair named, taken as the
median over rounds of the per-round ratio.

On an accelerator, waiting for each call adds the host's round trip (tens of
microseconds) to kernels that last a tenth of a millisecond. There,
``pipelined=True`` times functions that only *start* their work and return
its outputs: each timing starts the calls back to back and waits once, for
the last call's outputs (:func:`block`; anything with a
``block_until_ready`` method counts, such as :class:`TorchSync`).

A suite with a time limit starts each piece of work only while its
:class:`Budget` allows.

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
import itertools
import pathlib
import statistics
import tempfile
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


def rotating(fn: Callable, arg_sets: Sequence[tuple]) -> Callable[[], Any]:
    """A no-argument callable that starts ``fn`` on each of ``arg_sets`` in turn (no wait).

    Arguments held in several copies that together outgrow the device's cache
    make each call read memory, not the cache a previous call filled.

    Example:
      >>> f = rotating(lambda a: a, [(1,), (2,)])
      >>> [f(), f(), f()]
      [1, 2, 1]
    """
    sets = itertools.cycle(arg_sets)
    return lambda: fn(*next(sets))


class TorchSync:
    """A stand-in output whose ``block_until_ready`` waits for PyTorch's CUDA device (on a
    CPU, where PyTorch's calls return done, there is nothing to wait for)."""

    def block_until_ready(self) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()


def time_interleaved(functions: Mapping[str, Callable[[], Any]], *, rounds: int,
                     min_time: float = 0.0, pipelined: bool = False) -> dict[str, list[float]]:
    """Seconds per call of each function, ``rounds`` times, round-robin.

    Each function is first called once (compilation, warm-up), untimed. With
    ``min_time > 0`` one more untimed call measures it, and each timing then
    repeats the call often enough to last about ``min_time`` seconds and
    reports the time per call; with ``min_time=0`` each timing is one call.
    With ``pipelined`` the functions return their outputs without waiting, and
    each timing waits (:func:`block`) once, after its last call.
    """
    finish = block if pipelined else (lambda out: out)
    repeats = {}
    for name, f in functions.items():
        finish(f())  # compile and warm up
        if min_time > 0:
            start = time.perf_counter()
            finish(f())
            repeats[name] = max(1, int(min_time / max(time.perf_counter() - start, 1e-7)))
        else:
            repeats[name] = 1
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(rounds):
        for name, f in functions.items():
            start = time.perf_counter()
            for _ in range(repeats[name]):
                out = f()
            finish(out)
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
            rounds: int, min_time: float = 0.0, pipelined: bool = False) -> dict[str, Any]:
    """Times ``functions`` (see :func:`time_interleaved`) and reports medians and ratios.

    Returns:
      ``{"median_ms": {name: median milliseconds per call}, "ratios": [record of
      each ratio whose two sides were timed, see TimeRatio.measure]}``.
    """
    times = time_interleaved(functions, rounds=rounds, min_time=min_time, pipelined=pipelined)
    records = [r.measure(times) for r in ratios]
    return {"median_ms": {n: 1e3 * statistics.median(t) for n, t in times.items()},
            "ratios": [r for r in records if r is not None]}


def device_times(functions: Mapping[str, Callable[[], Any]], modules: Mapping[str, str], *,
                 calls: int) -> dict[str, float]:
    """Milliseconds per call that each function's XLA program spends on the device.

    Traces ``calls`` pipelined calls of each function named in ``modules`` (one
    ``jax.profiler`` trace for all; each function starts its work and returns
    its outputs, as with ``pipelined``) and adds up, per call, the durations
    of the device events whose ``hlo_module`` is ``modules[name]`` (``"jit_"``
    and the jitted function's name): on a GPU its kernels on the streams, on a
    TPU its ops, on a CPU its thunks. The host's dispatch is not counted; where
    the trace holds no device events (a profiler without access to the
    device's counters) the result is empty. The median over calls where the events say which call
    (``run_id``), else the total over ``calls``. A program with no events is
    left out of the result.
    """
    with tempfile.TemporaryDirectory() as folder:
        with jax.profiler.trace(folder):
            for name in modules:
                for _ in range(calls):
                    out = functions[name]()
                block(out)
        paths = sorted(pathlib.Path(folder).rglob("*.xplane.pb"))
        if not paths:
            raise RuntimeError("jax.profiler.trace wrote no .xplane.pb file")
        data = jax.profiler.ProfileData.from_file(str(paths[0]))
    planes = [p for p in data.planes if p.name.startswith("/device:")]
    if jax.default_backend() == "cpu":  # elsewhere the host's events are not device time
        planes = [p for p in data.planes if p.name == "/host:CPU"]
    lines = [line for p in planes for line in p.lines]
    streams = [line for line in lines if line.name.startswith("Stream")]
    ops = [line for line in lines if line.name == "XLA Ops"]
    ns: dict[str, dict[Any, float]] = {}
    for line in streams or ops or lines:
        for event in line.events:
            stats = dict(event.stats)
            module = stats.get("hlo_module")
            if module is not None:
                runs = ns.setdefault(str(module).split("(")[0], {})
                run = stats.get("run_id")
                runs[run] = runs.get(run, 0.0) + event.duration_ns
    result = {}
    for name, module in modules.items():
        runs = ns.get(module)
        if runs:
            per_call = (statistics.median(runs.values()) if None not in runs
                        and len(runs) == calls else sum(runs.values()) / calls)
            result[name] = per_call / 1e6
    return result


class Budget:
    """Starts a piece of work only if it is likely to end within ``max_seconds``.

    The next piece is predicted to last as long as the longest so far (0 before
    the first).

    Example:
      >>> now = [0.0]
      >>> budget = Budget(10.0, clock=lambda: now[0])
      >>> now[0] = 6.0
      >>> budget.took(6.0)
      >>> budget.allows()  # 6 s elapsed + 6 s predicted > 10 s
      False
    """

    def __init__(self, max_seconds: float, clock: Callable[[], float] = time.perf_counter):
        self.max_seconds = max_seconds
        self.clock = clock
        self.start = clock()
        self.longest = 0.0

    def elapsed(self) -> float:
        """Seconds since the budget was made."""
        return self.clock() - self.start

    def allows(self) -> bool:
        """Whether the next piece, as long as the longest so far, ends within the budget."""
        return self.elapsed() + self.longest <= self.max_seconds

    def took(self, seconds: float) -> None:
        """Records a piece of work that lasted ``seconds``."""
        self.longest = max(self.longest, seconds)

    def skip_note(self, skipped: list[str]) -> str:
        """The note on what was skipped (written once the rest is skipped in no time)."""
        return (f"skipped, as the time budget (--max-seconds {self.max_seconds:g}) would be "
                f"exceeded (elapsed {self.elapsed():.0f} s, longest group "
                f"{self.longest:.0f} s): {', '.join(skipped)}")


def per_second(count: int, median_ms: float) -> float:
    """``count`` events (steps) in ``median_ms`` milliseconds, per second."""
    return count / (median_ms / 1e3)
