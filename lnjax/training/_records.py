"""The record of a run and what observes it: :class:`History`, :class:`Observer` and the
events they see (:class:`RunInfo`, :class:`CurvePoint`, :class:`EpochRecord`).

Part of :mod:`lnjax.training`, which re-exports every public name here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import ClassVar

import numpy as np

from lnjax.steps import TrainState

__all__ = ["CurvePoint", "EpochRecord", "History", "Observer", "RunInfo"]


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """What a run will do, given to each observer's :meth:`Observer.start`.

    Attributes:
      epochs: the total number of epochs (including those already done).
      start: the epochs already done (restored from a checkpoint), 0 for a fresh run.
      steps_per_epoch: the optimizer steps of one epoch.
    """

    epochs: int
    start: int
    steps_per_epoch: int


@dataclasses.dataclass(frozen=True)
class CurvePoint:
    """Where an epoch's training stopped to evaluate the curves (after each chunk).

    Attributes:
      step: the total steps done.
      seconds: this epoch's training wall time so far (evaluations not counted).
      train: the mean of each training metric (``loss``, ``error``) over the
        steps since the previous point.
      curves: ``{name: {"loss", "error"}}`` of each curve split (empty without curves).
    """

    step: int
    seconds: float
    train: dict[str, float]
    curves: dict[str, dict[str, float]]


@dataclasses.dataclass(frozen=True)
class EpochRecord:
    """One epoch, as :meth:`EpochRunner.run` returns it.

    Attributes:
      epoch: the epochs done after it (its 1-based number).
      steps: the total steps done after it.
      seconds: its training wall time (evaluations not counted).
      train: the mean of each training metric over its steps.
      step_loss: ``[step, loss]`` pairs: the training loss at up to
        ``loss_points`` evenly spread steps.
      evals: ``{name: {"loss", "error"}}`` of each split evaluated after it.
      per_step: each step's training metrics, ``{"loss": (steps,), ...}``.
    """

    epoch: int
    steps: int
    seconds: float
    train: dict[str, float]
    step_loss: list[list[float]]
    evals: dict[str, dict[str, float]]
    per_step: dict[str, np.ndarray]


class Observer:
    """Something that sees a run of :func:`fit`; each method does nothing unless overridden.

    The calls, in order: :meth:`start` once; for each epoch :meth:`progress`
    (only when ``tracks_steps``) from inside its scans, :meth:`point` after each
    chunk and :meth:`epoch` at its end; :meth:`close` once, also when the run
    stops with an error. Several observers see each event in the order they
    are given to :meth:`EpochRunner.run` and :func:`fit`.
    """

    tracks_steps: ClassVar[bool] = False
    """Whether :meth:`progress` is to be called (it costs a host callback per report)."""

    def start(self, run: RunInfo) -> None:
        """The run begins (after any resume)."""

    def progress(self, step: int) -> None:
        """``step`` steps are done in all, reported from inside an epoch's scan."""

    def point(self, point: CurvePoint) -> None:
        """A chunk of an epoch is done (a whole epoch without curves)."""

    def epoch(self, record: EpochRecord, state: TrainState) -> None:
        """An epoch is done: ``state`` is the state after it."""

    def close(self) -> None:
        """The run is over: release what the observer holds."""


_RESERVED = ("seconds", "step_loss", "eval_steps", "eval_seconds")


class History(Observer, Mapping[str, list]):
    """The record of a run: lists under keys declared up front, the history :func:`fit` returns.

    With ``m`` each of ``metrics`` (``loss``, and ``error`` when the loss gives
    errors: :func:`lnjax.steps.metric_names`), per epoch: ``epoch``, ``steps``
    (total steps done), ``train_<m>`` (means over the epoch's steps),
    ``<name>_<m>`` for each of ``evals``, ``seconds`` (cumulative training wall
    time) and ``step_loss`` (``[step, loss]`` pairs); with ``curves``, per curve
    point: ``eval_steps`` (total steps done), ``eval_seconds`` (the training
    wall time then), ``train_curve_<m>`` (means over the steps since the
    previous point) and ``<name>_curve_<m>`` for each of ``curves``. It is an
    :class:`Observer` (recording :meth:`point` and :meth:`epoch`) and a
    read-only mapping of those keys.

    Args:
      evals: the names of the splits evaluated after each epoch.
      curves: the names of the splits evaluated at each curve point.
      metrics: the metrics of the loss.

    Raises:
      TypeError: a name is not a string.
      ValueError: a name's keys would be ones the history records itself
        (e.g. ``"train"``, ``"step"``), or another name's.

    Example:
      >>> from lnjax import training
      >>> h = training.History(["dev"], metrics=("loss",))
      >>> list(h)
      ['epoch', 'steps', 'train_loss', 'dev_loss', 'seconds', 'step_loss']
      >>> h.epoch(training.EpochRecord(1, 10, 2.0, {"loss": 0.5}, [[10, 0.4]],
      ...                              {"dev": {"loss": 0.6}}, {}), None)
      >>> h.as_dict()
      {'epoch': [1], 'steps': [10], 'train_loss': [0.5], 'dev_loss': [0.6], 'seconds': [2.0], 'step_loss': [[10, 0.4]]}
    """  # noqa: E501

    def __init__(self, evals: Iterable[str] = (), curves: Iterable[str] = (), *,
                 metrics: Sequence[str] = ("loss", "error")):
        self.metrics = tuple(metrics)
        self.evals, self.curves = list(evals), list(curves)
        own = ("epoch", "steps", *(f"train_{m}" for m in self.metrics), *_RESERVED,
               *(f"train_curve_{m}" for m in self.metrics))
        self._check_names(own)
        keys = ["epoch", "steps", *(f"{s}_{m}" for s in ["train", *self.evals]
                                    for m in self.metrics), "seconds", "step_loss"]
        if self.curves:
            keys += ["eval_steps", "eval_seconds", *(f"{s}_curve_{m}" for s in
                                                     ["train", *self.curves]
                                                     for m in self.metrics)]
        self._lists: dict[str, list] = {k: [] for k in keys}

    def _check_names(self, own: tuple[str, ...]) -> None:
        seen: dict[str, str] = {}
        for kind, names, suffix in (("evals", self.evals, ""), ("curves", self.curves, "_curve")):
            for name in names:
                if not isinstance(name, str):
                    raise TypeError(f"fit: {kind} names must be strings, got {name!r}.")
                keys = [f"{name}{suffix}_{m}" for m in self.metrics]
                clash = [k for k in keys if k in own]
                if clash:
                    raise ValueError(
                        f"fit: {kind} name {name!r} would be recorded as {' and '.join(clash)}, "
                        f"which fit records itself (its own history keys: {', '.join(own)}); "
                        f"rename it, e.g. {name + '_eval'!r}.")
                for k in keys:
                    if k in seen:
                        raise ValueError(f"fit: {kind} name {name!r} would be recorded as {k}, "
                                         f"which {seen[k]} records too; rename one of them.")
                    seen[k] = f"{kind} name {name!r}"

    def __getitem__(self, key: str) -> list:
        return self._lists[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._lists)

    def __len__(self) -> int:
        return len(self._lists)

    @property
    def seconds(self) -> float:
        """The training wall time recorded so far (0.0 before the first epoch)."""
        return float(self._lists["seconds"][-1]) if self._lists["seconds"] else 0.0

    def point(self, point: CurvePoint) -> None:
        """Records a curve point (nothing without ``curves``)."""
        if not self.curves:
            return
        self._lists["eval_steps"].append(point.step)
        self._lists["eval_seconds"].append(self.seconds + point.seconds)
        for split, values in (("train", point.train), *point.curves.items()):
            for m in self.metrics:
                self._lists[f"{split}_curve_{m}"].append(values[m])

    def epoch(self, record: EpochRecord, state: TrainState) -> None:
        """Records an epoch (``state`` is unused)."""
        seconds = self.seconds + record.seconds
        self._lists["epoch"].append(record.epoch)
        self._lists["steps"].append(record.steps)
        for split, values in (("train", record.train), *record.evals.items()):
            for m in self.metrics:
                self._lists[f"{split}_{m}"].append(values[m])
        self._lists["seconds"].append(seconds)
        self._lists["step_loss"].extend(record.step_loss)

    def load(self, saved: Mapping[str, Sequence]) -> None:
        """Takes the lists of a saved history (e.g. a checkpoint's) in place of its own.

        Saved keys it does not declare are kept as they are.
        """
        for key, values in saved.items():
            self._lists[key] = list(values)

    def as_dict(self) -> dict[str, list]:
        """A plain dict of copies of the lists (what :func:`fit` returns and saves)."""
        return {k: list(v) for k, v in self._lists.items()}
