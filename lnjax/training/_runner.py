"""One epoch of training: :class:`EpochRunner`, its chunks, curve points and evaluations.

Part of :mod:`lnjax.training`, which re-exports every public name here.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lnjax import parallel, steps
from lnjax.steps import TrainState, batches, mean_metrics, train_epoch
from lnjax.training._records import CurvePoint, EpochRecord, Observer

__all__ = ["EpochRunner", "Splits"]

Splits = Mapping[str, Any]
"""Named evaluation splits: ``{name: (x, y)}``; a curve may instead be the integer
indices of the examples it takes from the ``evals`` split of its name."""


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


def _positive_int(name: str, value: Any) -> int:
    """``value`` as an int, or a ValueError naming ``fit``'s argument ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"fit: {name} must be a positive int, got {value!r}.")
    return int(value)


def _subset_and_rest(name: str, index: Any, split: tuple[Any, Any]
                     ) -> tuple[tuple[Any, Any], tuple[Any, Any] | None]:
    """The examples ``index`` of ``split`` and the others (``None`` if there are none).

    Example:
      >>> import numpy as np
      >>> (xs, _), (xr, _) = _subset_and_rest("t", np.array([3, 0]), (np.arange(5), np.arange(5)))
      >>> xs.tolist(), xr.tolist()
      ([0, 3], [1, 2, 4])
    """
    index = np.asarray(index)
    n = len(split[1])
    if index.ndim != 1 or index.size == 0 or not np.issubdtype(index.dtype, np.integer):
        raise TypeError(f"fit: curves[{name!r}] must be (x, y) or a non-empty 1-D integer "
                        f"array of indices into evals[{name!r}], got shape {index.shape} of "
                        f"{index.dtype}.")
    index = np.unique(index)
    if index[0] < 0 or index[-1] >= n:
        raise ValueError(f"fit: curves[{name!r}] indexes evals[{name!r}]'s {n} examples; got "
                         f"indices from {index[0]} to {index[-1]}.")
    rest = np.setdiff1d(np.arange(n), index)
    x, y = (np.asarray(a) for a in split)
    return (x[index], y[index]), ((x[rest], y[rest]) if rest.size else None)


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
      curves: ``{name: (x, y)}`` evaluated after each chunk; or, for a name of
        ``evals``, the integer indices of the examples of that split the curve
        takes: the epoch's last curve point and the split's evaluation then
        share one pass over it (the subset's sums and the rest's add up to the
        split's), instead of evaluating the subset twice.
      evals_per_epoch: the chunks of an epoch; more than 1 needs ``curves``.
      loss_points: how many ``[step, loss]`` pairs an :class:`EpochRecord` samples.
      mesh: a mesh from :func:`lnjax.parallel.make_mesh`: the epochs run
        data-parallel over it (:func:`lnjax.parallel.train_epoch`; every host
        passes the same data); ``None`` or one device: :func:`train_epoch` on
        the default device.
      eval_batch_size: examples per evaluation batch (:func:`lnjax.steps.evaluate`).

    Raises:
      ValueError: ``evals_per_epoch`` or ``eval_batch_size`` is not a positive int,
        ``evals_per_epoch`` is above 1 without ``curves``, or a curve's indices name no
        ``evals`` split or fall outside it.
      TypeError: a curve's indices are not a 1-D integer array.

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
                 evals_per_epoch: int = 1, loss_points: int = 50, mesh: Any = None,
                 eval_batch_size: int = 1000):
        evals_per_epoch = _positive_int("evals_per_epoch", evals_per_epoch)
        if evals_per_epoch > 1 and not curves:
            raise ValueError(f"fit: evals_per_epoch={evals_per_epoch} evaluates the `curves` "
                             "splits within each epoch, but no curves were given.")
        self.x, self.y = train
        self.batch_size, self.seed, self.mesh = batch_size, seed, mesh
        self.loss_points = loss_points
        self.parallel = mesh is not None and mesh.devices.size > 1
        self.steps_per_epoch = len(self.y) // batch_size
        self.chunk_ends = _chunk_ends(self.steps_per_epoch, evals_per_epoch if curves else 1)
        self.report_every = max(1, self.steps_per_epoch // 20)
        self.eval_batch_size = _positive_int("eval_batch_size", eval_batch_size)
        evals, curves = dict(evals or {}), dict(curves or {})
        # A curve given as indices into its eval split: the subset and the rest of that split
        # go to the device, not the split itself.
        linked = {k: v for k, v in curves.items() if not isinstance(v, tuple | list)}
        unknown = sorted(set(linked) - set(evals))
        if unknown:
            raise ValueError(f"fit: curves {unknown} are given as indices, which select "
                             f"examples of the evals split of the same name; evals has "
                             f"{sorted(evals)}.")
        parts = {k: _subset_and_rest(k, v, evals[k]) for k, v in linked.items()}

        def put(split: tuple[Any, Any]) -> tuple[Any, Any]:
            return jax.device_put((np.asarray(split[0]), np.asarray(split[1])))

        self.evals = {k: None if k in linked else put(v) for k, v in evals.items()}
        self.curves = {k: put(parts[k][0] if k in linked else v) for k, v in curves.items()}
        self.rest = {k: None if parts[k][1] is None else jax.device_put(parts[k][1])
                     for k in linked}
        self._listeners: list[Observer] = []
        self._offset = 0

    def _report(self, n: Any) -> None:
        for o in self._listeners:
            o.progress(self._offset + int(n))

    def _sums(self, state: TrainState, splits: Splits) -> dict[str, dict[str, Any]]:
        """:func:`lnjax.steps.evaluation_sums` of each split, with this process's copy of the
        state."""
        local = parallel.host_local(state) if self.parallel and splits else state
        return {name: steps.evaluation_sums(local, ex, ey, batch_size=self.eval_batch_size)
                for name, (ex, ey) in splits.items()}

    def evaluate(self, state: TrainState, splits: Splits) -> dict[str, dict[str, float]]:
        """:func:`lnjax.steps.evaluate` of each split, ``{name: {"loss", "error"}}``, with
        this process's copy of the state."""
        return {k: mean_metrics(v) for k, v in self._sums(state, splits).items()}

    def _end_of_epoch(self, state: TrainState) -> tuple[dict, dict]:
        """The last curve point's evaluations and the ``evals``: a curve given as indices
        adds the rest of its split to its own sums."""
        curves = self._sums(state, self.curves)
        rest = self._sums(state, {k: v for k, v in self.rest.items() if v is not None})
        evals = self._sums(state, {k: v for k, v in self.evals.items() if v is not None})
        for k in self.rest:
            evals[k] = curves[k] if k not in rest else jax.tree.map(jnp.add, curves[k], rest[k])
        return ({k: mean_metrics(v) for k, v in curves.items()},
                {k: mean_metrics(evals[k]) for k in self.evals})

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
            if end == self.steps_per_epoch:
                curve, evals = self._end_of_epoch(state)
            else:
                curve = self.evaluate(state, self.curves)
            point = CurvePoint(first + end, seconds, _means(chunks[-1]), curve)
            for o in observers:
                o.point(point)
            begin = end
        per_step = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
        loss = per_step["loss"]
        idx = np.unique(np.linspace(0, len(loss) - 1, min(self.loss_points, len(loss))).astype(int))
        step_loss = [[first + int(i) + 1, float(loss[i])] for i in idx]
        return state, EpochRecord(epoch + 1, first + self.steps_per_epoch, seconds,
                                  _means(per_step), step_loss, evals, per_step)
