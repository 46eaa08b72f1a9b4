"""One epoch of training: :class:`EpochRunner`, its chunks, curve points and evaluations.

Part of :mod:`lnjax.training`, which re-exports every public name here.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from lnjax import parallel
from lnjax.steps import TrainState, batches, evaluate, train_epoch
from lnjax.training._records import CurvePoint, EpochRecord, Observer

__all__ = ["EpochRunner", "Splits"]

Splits = Mapping[str, tuple[Any, Any]]
"""Named evaluation splits: ``{name: (x, y)}``."""


def _chunk_ends(steps_per_epoch: int, evals_per_epoch: int) -> list[int]:
    """Where an epoch's scan stops for an evaluation: ``evals_per_epoch`` near-equal chunks.

    Example:
      >>> _chunk_ends(10, 4), _chunk_ends(3, 5), _chunk_ends(7, 1)
      ([2, 5, 8, 10], [1, 2, 3], [7])
    """
    k = min(evals_per_epoch, steps_per_epoch)
    return [int(v) for v in np.unique(np.linspace(0, steps_per_epoch, k + 1).round())[1:]]


def _means(metrics: Mapping[str, np.ndarray]) -> dict[str, float]:
    return {k: float(v.mean()) for k, v in metrics.items()}


class EpochRunner:
    """Runs an epoch: its batches, in chunks with curve points, then its evaluations.

    Each epoch's batches come from :func:`lnjax.steps.batches` with ``(seed,
    epoch)`` (the remainder dropped) and run as one :func:`train_epoch` scan,
    or, with ``curves``, as ``evals_per_epoch`` scans of near-equal length (at
    most one per step) with the ``curves`` splits evaluated after each (the
    steps are the same: the result equals one scan's up to the compiler's
    choices). After every chunk (the whole epoch without curves) each observer
    gets a :class:`CurvePoint`; after the epoch the ``evals`` splits are
    evaluated. Evaluation data go to the device once, here. On a mesh the
    state is replicated and each process evaluates its own copy
    (:func:`lnjax.parallel.host_local`).

    Args:
      train: ``(x, y)`` training inputs and targets.
      batch_size: examples per step.
      seed: the seed of the batch order.
      evals: ``{name: (x, y)}`` evaluated after each epoch.
      curves: ``{name: (x, y)}`` evaluated after each chunk.
      evals_per_epoch: the chunks of an epoch; more than 1 needs ``curves``.
      loss_points: how many ``[step, loss]`` pairs an :class:`EpochRecord` samples.
      mesh: a mesh from :func:`lnjax.parallel.make_mesh`: the epochs run
        data-parallel over it (:func:`lnjax.parallel.train_epoch`; every host
        passes the same data); ``None`` or one device: :func:`train_epoch` on
        the default device.

    Raises:
      ValueError: ``evals_per_epoch`` is not a positive int, or above 1 without ``curves``.

    Example:
      >>> import flax.linen as nn, numpy as np, optax
      >>> from lnjax import training
      >>> class Net(nn.Module):
      ...     @nn.compact
      ...     def __call__(self, x, *, train):
      ...         return nn.Dense(2)(x)
      >>> x, y = np.ones((20, 3), np.float32), np.arange(20) % 2
      >>> runner = training.EpochRunner((x, y), batch_size=4, seed=0, curves={"all": (x, y)},
      ...                               evals_per_epoch=2)
      >>> runner.steps_per_epoch, runner.chunk_ends
      (5, [2, 5])
      >>> state = training.create_train_state(Net(), optax.sgd(0.1), x, seed=0)
      >>> state, record = runner.run(state, 0)
      >>> record.epoch, record.steps, sorted(record.train), int(state.step)
      (1, 5, ['error', 'loss'], 5)
    """

    def __init__(self, train: tuple[Any, Any], *, batch_size: int, seed: int,
                 evals: Splits | None = None, curves: Splits | None = None,
                 evals_per_epoch: int = 1, loss_points: int = 50, mesh: Any = None):
        if isinstance(evals_per_epoch, bool) or not isinstance(evals_per_epoch, int | np.integer) \
                or evals_per_epoch < 1:
            raise ValueError(f"fit: evals_per_epoch must be a positive int, got "
                             f"{evals_per_epoch!r}.")
        if evals_per_epoch > 1 and not curves:
            raise ValueError(f"fit: evals_per_epoch={evals_per_epoch} evaluates the `curves` "
                             "splits within each epoch, but no curves were given.")
        self.x, self.y = train
        self.batch_size, self.seed, self.mesh = batch_size, seed, mesh
        self.loss_points = loss_points
        self.parallel = mesh is not None and mesh.devices.size > 1
        self.steps_per_epoch = len(self.y) // batch_size
        self.chunk_ends = _chunk_ends(self.steps_per_epoch, int(evals_per_epoch) if curves else 1)
        self.report_every = max(1, self.steps_per_epoch // 20)
        self.evals, self.curves = ({k: jax.device_put((np.asarray(ex), np.asarray(ey)))
                                    for k, (ex, ey) in dict(splits or {}).items()}
                                   for splits in (evals, curves))
        self._listeners: list[Observer] = []
        self._offset = 0

    def _report(self, n: Any) -> None:
        for o in self._listeners:
            o.progress(self._offset + int(n))

    def evaluate(self, state: TrainState, splits: Splits) -> dict[str, dict[str, float]]:
        """:func:`evaluate` of each split, ``{name: {"loss", "error"}}``, with this process's
        copy of the state."""
        local = parallel.host_local(state) if self.parallel and splits else state
        return {name: evaluate(local, ex, ey) for name, (ex, ey) in splits.items()}

    def _train(self, state: TrainState, xb: np.ndarray, yb: np.ndarray) -> tuple[TrainState, Any]:
        report = self._report if self._listeners else None
        if self.parallel:
            return parallel.train_epoch(state, xb, yb, self.mesh, report=report,
                                        report_every=self.report_every)
        return train_epoch(state, jax.device_put(xb), jax.device_put(yb), report=report,
                           report_every=self.report_every)

    def run(self, state: TrainState, epoch: int, observers: Sequence[Observer] = ()
            ) -> tuple[TrainState, EpochRecord]:
        """Trains epoch ``epoch`` (0-based) from ``state``; ``observers`` see its progress and
        its curve points. The state passed in is donated: use the one returned.

        Returns:
          ``(state, record)``: the state after the epoch and its :class:`EpochRecord`.
        """
        xb, yb = batches(self.x, self.y, self.batch_size, seed=self.seed, epoch=epoch)
        first = epoch * self.steps_per_epoch
        self._listeners = [o for o in observers if o.tracks_steps]
        chunks: list[dict[str, np.ndarray]] = []
        seconds, begin = 0.0, 0
        for end in self.chunk_ends:
            self._offset = first + begin
            t0 = time.perf_counter()
            state, metrics = self._train(state, xb[begin:end], yb[begin:end])
            chunks.append({k: np.asarray(v) for k, v in metrics.items()})
            seconds += time.perf_counter() - t0
            point = CurvePoint(first + end, seconds, _means(chunks[-1]),
                               self.evaluate(state, self.curves))
            for o in observers:
                o.point(point)
            begin = end
        per_step = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
        loss = per_step["loss"]
        idx = np.unique(np.linspace(0, len(loss) - 1, min(self.loss_points, len(loss))).astype(int))
        step_loss = [[first + int(i) + 1, float(loss[i])] for i in idx]
        return state, EpochRecord(epoch + 1, first + self.steps_per_epoch, seconds,
                                  _means(per_step), step_loss, self.evaluate(state, self.evals),
                                  per_step)
