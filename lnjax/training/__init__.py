"""Training: the fit loop as parts -- a history, an epoch runner and observers.

The top of the training layers: imports run ``steps -> parallel -> training``
(and ``steps -> checkpoint -> training``), never back up. This module
imports :mod:`lnjax.steps` (the state, the steps, the epoch scan, the batch
order), :mod:`lnjax.parallel` (the data-parallel epoch) and
:mod:`lnjax.checkpoint`, and re-exports the step-level public names, so
``lnjax.training`` is the one import research code needs:

* :class:`TrainState`, :func:`create_train_state`, :func:`train_step`,
  :func:`eval_step`, :func:`scan_epoch`, :func:`train_epoch`, :func:`evaluate`
  and the rest of :mod:`lnjax.steps`: the state, the pure steps, whole-epoch
  ``lax.scan`` loops and evaluation, for Linen and NNX models and any
  per-example loss.
* :class:`Checkpointer` -- verified orbax save/restore of the state and the
  run's history (:mod:`lnjax.checkpoint`).
* :func:`fit` -- the loop the experiments share, a short composition of parts
  that each do one job and can be used alone:

  - :class:`History` -- the run's record: it declares its keys from the
    evaluation names and the loss's metrics, records epochs and curve points,
    and reloads a saved record.
  - :class:`EpochRunner` -- one epoch: its batches from ``(seed, epoch)``, run
    as one scan or as chunks with the curves evaluated after each
    (:class:`CurvePoint`), on one device or data-parallel over a mesh, then the
    evaluations (:class:`EpochRecord`).
  - observers (:class:`Observer`) that see the run: :class:`NonFiniteStop`,
    :class:`ProgressBar` (tqdm), :class:`TensorBoardLog`,
    :class:`CheckpointSaver` (which also resumes) and :class:`EpochCallback`.

A batch is a dict ``{"x": inputs, "y": targets}`` with an optional
``"weight"`` (1 for a real example, 0 for padding). Everything is determined by
the seed: the initial parameters by ``jax.random.key(seed)``, the order of the
batches by :func:`lnjax.steps.batches` with ``(seed, epoch)``, the dropout masks
by the seed and the step.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from lnjax.checkpoint import Checkpointer, CheckpointError, DamagedCheckpointWarning
from lnjax.steps import (
    Batch,
    LossFn,
    NNXModel,
    TrainState,
    classification_loss,
    create_train_state,
    eval_step,
    evaluate,
    metric_names,
    nnx_module,
    scan_epoch,
    step_rngs,
    train_epoch,
    train_step,
)
from lnjax.training._observers import (
    CheckpointSaver,
    EpochCallback,
    NonFiniteStop,
    ProgressBar,
    TensorBoardLog,
)
from lnjax.training._records import CurvePoint, EpochRecord, History, Observer, RunInfo
from lnjax.training._runner import EpochRunner, Splits

__all__ = ["Batch", "CheckpointError", "CheckpointSaver", "Checkpointer", "CurvePoint",
           "DamagedCheckpointWarning", "EpochCallback", "EpochRecord", "EpochRunner", "History",
           "LossFn", "NNXModel", "NonFiniteStop", "Observer", "ProgressBar", "RunInfo",
           "TensorBoardLog", "TrainState", "classification_loss", "create_train_state",
           "eval_step", "evaluate", "fit", "metric_names", "nnx_module", "scan_epoch",
           "step_rngs", "train_epoch", "train_step"]


def fit(state: TrainState, train: tuple[Any, Any], *, epochs: int, batch_size: int, seed: int,
        evals: Splits | None = None, checkpoint_dir: str | os.PathLike | None = None,
        progress: bool = True, desc: str = "train", loss_points: int = 50,
        on_epoch: Callable[[int, dict], None] | None = None, mesh: Any = None,
        curves: Splits | None = None, evals_per_epoch: int = 1,
        tensorboard_dir: str | os.PathLike | None = None,
        eval_batch_size: int = 1000) -> tuple[TrainState, dict]:
    """Trains ``epochs`` epochs: an :class:`EpochRunner` seen by a :class:`History` and observers.

    :class:`NonFiniteStop` sees each epoch first, then the :class:`History` and, as asked,
    :class:`TensorBoardLog`, :class:`ProgressBar`, :class:`CheckpointSaver` (which resumes a run
    from its newest intact checkpoint, equal to an uninterrupted run) and :class:`EpochCallback`.

    Args:
      state: the initial :class:`TrainState` (:func:`create_train_state`).
      train: ``(x, y)`` training inputs and targets.
      epochs: total number of epochs (including any already done).
      batch_size: examples per step (the remainder of each epoch is dropped).
      seed: the seed of the batch order.
      evals: ``{name: (x, y)}`` evaluated after each epoch (keys: :class:`History`).
      checkpoint_dir: a folder for verified orbax checkpoints, or ``None``.
      progress: show a tqdm progress bar over the steps, labelled ``desc``.
      desc: the bar's label.
      loss_points: how many ``[step, loss]`` pairs ``step_loss`` records per epoch.
      on_epoch: optional ``f(epoch, history)`` called after each epoch.
      mesh: a :func:`lnjax.parallel.make_mesh` mesh for data-parallel epochs (every host alike).
      curves: ``{name: (x, y)}`` evaluated ``evals_per_epoch`` times per epoch; for a
        name of ``evals``, the integer indices of the examples of that split the
        curve takes (the epoch's last curve point then comes from the split's own
        evaluation, one pass for both: see :class:`EpochRunner`).
      evals_per_epoch: how many times per epoch ``curves`` are evaluated.
      tensorboard_dir: a folder for TensorBoard event files (needs tensorboardX).
      eval_batch_size: examples per evaluation batch (:func:`lnjax.steps.evaluate`).

    Returns:
      ``(state, history)``: the trained state and :meth:`History.as_dict`.

    Raises:
      ValueError, TypeError: bad ``evals``/``curves`` names or ``evals_per_epoch``.
      lnjax.MissingExtraError: ``tensorboard_dir`` without tensorboardX.
      FloatingPointError: an epoch's loss or state is not finite (it is not saved).
      lnjax.checkpoint.CheckpointError: ``checkpoint_dir`` holds no intact checkpoint.
    """
    history = History(evals or {}, curves or {}, metrics=metric_names(state, *train))
    runner = EpochRunner(train, batch_size=batch_size, seed=seed, evals=evals, curves=curves,
                         evals_per_epoch=evals_per_epoch, loss_points=loss_points, mesh=mesh,
                         eval_batch_size=eval_batch_size)
    board = TensorBoardLog(tensorboard_dir) if tensorboard_dir is not None else None
    saver = CheckpointSaver(checkpoint_dir, history) if checkpoint_dir is not None else None
    state, start = saver.resume(state) if saver is not None else (state, 0)
    observers = [o for o in (NonFiniteStop(saver.directory if saver else None), history, board,
                             ProgressBar(desc) if progress else None, saver,
                             EpochCallback(on_epoch, history) if on_epoch else None)
                 if o is not None]
    try:
        for o in observers:
            o.start(RunInfo(epochs, start, runner.steps_per_epoch))
        for epoch in range(start, epochs):
            state, record = runner.run(state, epoch, observers)
            for o in observers:
                o.epoch(record, state)
    finally:
        for o in observers:
            o.close()
    return state, history.as_dict()
