"""The observers :func:`lnjax.training.fit` composes: :class:`NonFiniteStop`,
:class:`ProgressBar`, :class:`TensorBoardLog`, :class:`CheckpointSaver` and
:class:`EpochCallback`.

Part of :mod:`lnjax.training`, which re-exports every public name here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from lnjax._optional import require
from lnjax.checkpoint import Checkpointer
from lnjax.steps import TrainState, all_finite
from lnjax.training._records import CurvePoint, EpochRecord, History, Observer, RunInfo

__all__ = ["CheckpointSaver", "EpochCallback", "NonFiniteStop", "ProgressBar", "TensorBoardLog"]


class NonFiniteStop(Observer):
    """Stops the run at an epoch whose training loss or resulting state is not finite.

    :meth:`epoch` raises ``FloatingPointError`` naming the epoch (and the
    first non-finite step, or the state); placed before the observers that
    record and save, nothing of that epoch is recorded or saved, so the last
    checkpoint stays good.

    Args:
      checkpoint_dir: the run's checkpoint folder, named in the message (the
        last checkpoint there is kept), or ``None``.
    """

    def __init__(self, checkpoint_dir: str | os.PathLike | None = None):
        self.checkpoint_dir = checkpoint_dir

    def epoch(self, record: EpochRecord, state: TrainState) -> None:
        loss = record.per_step["loss"]
        bad = np.flatnonzero(~np.isfinite(loss))
        if bad.size:
            what = (f"the training loss of epoch {record.epoch} is not finite (first at its step "
                    f"{int(bad[0]) + 1} of {len(loss)}: {float(loss[bad[0]])})")
        elif not all_finite((state.params, state.batch_stats, state.opt_state)):
            what = f"the state after epoch {record.epoch} holds a NaN or an infinity"
        else:
            return
        kept, folder = "", self.checkpoint_dir
        if folder is not None:
            kept = (f"; the last checkpoint (epoch {record.epoch - 1}) in {folder} is kept"
                    if record.epoch > 1 else f"; no checkpoint was saved in {folder}")
        raise FloatingPointError(f"fit: {what}. Training stopped before saving this epoch{kept}. "
                                 "Lower the learning rate or check the data.")


def _postfix(train: Mapping[str, float], splits: Mapping[str, Mapping[str, float]]
             ) -> dict[str, str]:
    shown = {"loss": f"{train['loss']:.3f}"}
    for name, m in splits.items():
        kind = "err" if "error" in m else "loss"
        shown[f"{name[:4]}_{kind}"] = f"{m['error' if kind == 'err' else 'loss']:.3f}"
    return shown


class ProgressBar(Observer):
    """A tqdm bar over the run's steps, moved from inside the scans.

    It counts every step of the run (starting at the steps already done) and
    shows the latest training loss and each evaluated split's error (or loss,
    for a loss without errors): the curves' at each curve point, the
    evaluations' after each epoch.

    Args:
      desc: the bar's label.
      **tqdm_kwargs: passed on to ``tqdm.auto.tqdm`` (e.g. ``file``, ``disable``).
    """

    tracks_steps = True

    def __init__(self, desc: str = "train", **tqdm_kwargs: Any):
        self.desc, self.tqdm_kwargs = desc, tqdm_kwargs
        self.bar: Any = None

    def start(self, run: RunInfo) -> None:
        from tqdm.auto import tqdm

        kwargs: dict[str, Any] = {"desc": self.desc, "unit": "step", "dynamic_ncols": True,
                                  **self.tqdm_kwargs}
        self.bar = tqdm(total=run.epochs * run.steps_per_epoch,
                        initial=run.start * run.steps_per_epoch, **kwargs)

    def progress(self, step: int) -> None:
        if self.bar is not None and step > self.bar.n:
            self.bar.update(step - self.bar.n)

    def point(self, point: CurvePoint) -> None:
        self.progress(point.step)
        if self.bar is not None and point.curves:
            self.bar.set_postfix(_postfix(point.train, point.curves))

    def epoch(self, record: EpochRecord, state: TrainState) -> None:
        if self.bar is not None:
            self.bar.set_postfix(_postfix(record.train, record.evals))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class TensorBoardLog(Observer):
    """TensorBoard event files (tensorboardX), flushed after each write so a run can be watched.

    Scalars, at the total steps done: ``train/<m>`` for each metric (``loss``,
    ``error``: the means since the previous point) and ``<name>_curve/<m>``
    for the curves at each curve point (each epoch's end without curves);
    ``train/step_loss`` (an :class:`EpochRecord`'s ``step_loss``) and
    ``<name>/<m>`` for the evaluations after each epoch. A resumed run
    (:attr:`RunInfo.start` > 0) purges the events after its checkpoint.

    Args:
      directory: the folder of the event files (made at :meth:`start`).
      write: whether this process writes (default: process 0 only, when several
        processes train together).

    Raises:
      lnjax.MissingExtraError: tensorboardX is not installed (the
        ``tensorboard`` extra), when the log is made.
    """

    def __init__(self, directory: str | os.PathLike, *, write: bool | None = None):
        self._tensorboardx = require("tensorboardX", "fit's TensorBoard event files")
        self.directory = os.fspath(directory)
        self.write = jax.process_index() == 0 if write is None else write
        self.writer: Any = None

    def start(self, run: RunInfo) -> None:
        if self.write:
            purge = run.start * run.steps_per_epoch + 1 if run.start else None
            self.writer = self._tensorboardx.SummaryWriter(logdir=self.directory,
                                                           purge_step=purge)

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        """Writes ``{tag: value}`` at ``step`` and flushes."""
        if self.writer is not None:
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, global_step=step)
            self.writer.flush()

    def point(self, point: CurvePoint) -> None:
        values = {f"train/{m}": v for m, v in point.train.items()}
        for name, metrics in point.curves.items():
            values.update({f"{name}_curve/{m}": v for m, v in metrics.items()})
        self.scalars(values, point.step)

    def epoch(self, record: EpochRecord, state: TrainState) -> None:
        if self.writer is not None:
            for step, loss in record.step_loss:
                self.writer.add_scalar("train/step_loss", loss, global_step=step)
        self.scalars({f"{name}/{m}": v for name, metrics in record.evals.items()
                      for m, v in metrics.items()}, record.steps)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class CheckpointSaver(Observer):
    """Saves the state and the history after each epoch; resumes a run from its folder.

    Each epoch is saved as that epoch's verified checkpoint
    (:class:`Checkpointer`). :meth:`resume` restores the newest intact one (a
    damaged newer one is skipped with a :class:`DamagedCheckpointWarning`)
    into the state and the ``history``, so the resumed run equals an
    uninterrupted one. With several processes, every process makes one on a
    folder every process sees.

    Args:
      directory: the checkpoint folder (created if missing).
      history: the run's :class:`History` (saved with the state, reloaded on resume).
      max_to_keep: how many intact epochs' checkpoints to keep.
    """

    def __init__(self, directory: str | os.PathLike, history: History, *, max_to_keep: int = 2):
        self.checkpointer = Checkpointer(directory, max_to_keep=max_to_keep)
        self.directory = self.checkpointer.directory
        self.history = history

    def resume(self, state: TrainState) -> tuple[TrainState, int]:
        """``(state, epochs done)`` from the newest intact checkpoint, or ``(state, 0)``.

        Raises:
          CheckpointError: the folder holds checkpoints but none is intact, or
            one that does not fit ``state``.
        """
        if not self.checkpointer.steps():
            return state, 0
        # restore() finds the newest intact checkpoint and reads its files once; the step
        # saved is the number of epochs its history holds.
        state, saved = self.checkpointer.restore(state)
        self.history.load(saved)
        return state, int(saved["epoch"][-1])

    def epoch(self, record: EpochRecord, state: TrainState) -> None:
        self.checkpointer.save(record.epoch, state, self.history.as_dict())

    def close(self) -> None:
        self.checkpointer.close()


class EpochCallback(Observer):
    """Calls ``fn(epoch, history)`` after each epoch: the epochs done and the history so far.

    Args:
      fn: the callback; it gets ``history.as_dict()``.
      history: the run's :class:`History`.
    """

    def __init__(self, fn: Callable[[int, dict], None], history: History):
        self.fn, self.history = fn, history

    def epoch(self, record: EpochRecord, state: TrainState) -> None:
        self.fn(record.epoch, self.history.as_dict())
