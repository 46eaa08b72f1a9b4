"""Training: the fit loop -- epochs, evaluation, orbax checkpoints, progress.

The top of the training layers: imports run ``steps -> parallel -> training``
(and ``steps -> checkpoint -> training``), never back up. This module
imports :mod:`lnjax.steps` (the state, the steps, the epoch scan),
:mod:`lnjax.parallel` (the data-parallel epoch), :mod:`lnjax.checkpoint` and
:mod:`lnjax.data` (the batch order), and re-exports the step-level public
names, so ``lnjax.training`` is the one import research code needs:

* :class:`TrainState` -- flax's train state plus the ``batch_stats`` collection
  and the static ``takes_mask`` flag (:mod:`lnjax.steps`).
* :func:`create_train_state`, :func:`train_step`, :func:`eval_step`,
  :func:`scan_epoch`, :func:`train_epoch`, :func:`evaluate` -- the pure steps,
  whole-epoch ``lax.scan`` loops and evaluation (:mod:`lnjax.steps`).
* :class:`Checkpointer` -- verified orbax save/restore of the state and the
  run's history, so an interrupted run resumes exactly where it stopped, and
  damaged bytes are never trained on (:class:`CheckpointError`,
  :class:`DamagedCheckpointWarning`; :mod:`lnjax.checkpoint`).
* :func:`fit` -- the loop the experiments share: epochs, evaluation,
  checkpoints, a progress bar, on one device or data-parallel over a mesh.

A batch is a dict ``{"x": inputs, "y": int labels}`` with an optional
``"weight"`` (1 for a real example, 0 for padding). Everything is determined by
the seed: the initial parameters by ``jax.random.key(seed)``, the order of the
batches by :func:`lnjax.steps.batches` with ``(seed, epoch)``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from lnjax import parallel
from lnjax._optional import require
from lnjax.checkpoint import Checkpointer, CheckpointError, DamagedCheckpointWarning
from lnjax.steps import (
    Batch,
    TrainState,
    all_finite,
    batches,
    create_train_state,
    eval_step,
    evaluate,
    scan_epoch,
    train_epoch,
    train_step,
)

__all__ = ["Batch", "CheckpointError", "Checkpointer", "DamagedCheckpointWarning", "TrainState",
           "create_train_state", "eval_step", "evaluate", "fit", "scan_epoch", "train_epoch",
           "train_step"]


_OWN_KEYS = ("epoch", "steps", "train_loss", "train_error", "seconds", "step_loss",
             "eval_steps", "eval_seconds", "train_curve_loss", "train_curve_error")
"""The history keys ``fit`` records itself (an evaluation may not write to them)."""


def _new_history() -> dict[str, list]:
    keys = ("epoch", "steps", "train_loss", "train_error", "validation_loss",
            "validation_error", "test_loss", "test_error", "seconds", "step_loss")
    return {k: [] for k in keys}


def _check_eval_names(evals: Mapping[str, Any], curves: Mapping[str, Any]) -> None:
    seen: dict[str, str] = {}
    for kind, splits, suffix in (("evals", evals, ""), ("curves", curves, "_curve")):
        for name in splits:
            if not isinstance(name, str):
                raise TypeError(f"fit: {kind} names must be strings, got {name!r}.")
            keys = (f"{name}{suffix}_loss", f"{name}{suffix}_error")
            clash = [k for k in keys if k in _OWN_KEYS]
            if clash:
                raise ValueError(
                    f"fit: {kind} name {name!r} would be recorded as {' and '.join(clash)}, "
                    f"which fit records itself (its own history keys: {', '.join(_OWN_KEYS)}); "
                    f"rename it, e.g. {name + '_eval'!r}.")
            for k in keys:
                if k in seen:
                    raise ValueError(f"fit: {kind} name {name!r} would be recorded as {k}, "
                                     f"which {seen[k]} records too; rename one of them.")
                seen[k] = f"{kind} name {name!r}"


def _chunk_ends(steps_per_epoch: int, evals_per_epoch: int) -> list[int]:
    """Where an epoch's scan stops for an evaluation: ``evals_per_epoch`` near-equal chunks.

    Example:
      >>> _chunk_ends(10, 4), _chunk_ends(3, 5), _chunk_ends(7, 1)
      ([2, 5, 8, 10], [1, 2, 3], [7])
    """
    k = min(evals_per_epoch, steps_per_epoch)
    return [int(v) for v in np.unique(np.linspace(0, steps_per_epoch, k + 1).round())[1:]]


class _EventLog:
    """fit's TensorBoard event files (tensorboardX): scalars, flushed after each write."""

    def __init__(self, directory: str | os.PathLike, purge_step: int | None):
        tensorboardx = require("tensorboardX", "fit's TensorBoard event files")
        self.writer = tensorboardx.SummaryWriter(logdir=os.fspath(directory),
                                                 purge_step=purge_step)

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _check_finite(epoch: int, loss: np.ndarray, state: TrainState, ckpt: Any) -> None:
    """Raises ``FloatingPointError`` if epoch ``epoch`` (0-based)'s losses or the resulting
    state are not finite; epochs ``1..epoch`` are the ones saved (or restored) before it."""
    bad = np.flatnonzero(~np.isfinite(loss))
    if bad.size:
        what = (f"the training loss of epoch {epoch + 1} is not finite (first at its step "
                f"{int(bad[0]) + 1} of {len(loss)}: {float(loss[bad[0]])})")
    elif not all_finite((state.params, state.batch_stats, state.opt_state)):
        what = f"the state after epoch {epoch + 1} holds a NaN or an infinity"
    else:
        return
    kept = ""
    if ckpt is not None:
        kept = (f"; the last checkpoint (epoch {epoch}) in {ckpt.directory} is kept"
                if epoch else f"; no checkpoint was saved in {ckpt.directory}")
    raise FloatingPointError(f"fit: {what}. Training stopped before saving this epoch{kept}. "
                             "Lower the learning rate or check the data.")


def fit(state: TrainState, train: tuple[Any, Any], *, epochs: int, batch_size: int, seed: int,
        evals: Mapping[str, tuple[Any, Any]] | None = None,
        checkpoint_dir: str | os.PathLike | None = None, progress: bool = True,
        desc: str = "train", loss_points: int = 50,
        on_epoch: Callable[[int, dict], None] | None = None,
        mesh: Any = None, curves: Mapping[str, tuple[Any, Any]] | None = None,
        evals_per_epoch: int = 1,
        tensorboard_dir: str | os.PathLike | None = None) -> tuple[TrainState, dict]:
    """Trains for ``epochs`` epochs, evaluating and checkpointing after each.

    Each epoch's batches come from :func:`lnjax.steps.batches` with
    ``(seed, epoch)`` and run as one :func:`train_epoch` scan, or, with
    ``curves``, as ``evals_per_epoch`` scans of near-equal length with the
    ``curves`` splits evaluated after each (the steps are the same: the result
    equals one scan's up to the compiler's choices). With a
    ``checkpoint_dir`` that already holds a checkpoint of this run, training
    resumes after its newest intact epoch and the result equals an
    uninterrupted run; a damaged newer checkpoint is skipped with a
    :class:`~lnjax.checkpoint.DamagedCheckpointWarning` (see
    :mod:`lnjax.checkpoint`). An epoch whose loss or resulting state is not
    finite stops training before it is saved, so the last checkpoint stays good.

    Args:
      state: the initial :class:`TrainState`.
      train: ``(x, y)`` training arrays.
      epochs: total number of epochs (including any already done).
      batch_size: examples per step (the remainder of each epoch is dropped).
      seed: the seed of the batch order.
      evals: ``{"validation": (x, y), "test": (x, y)}``: splits evaluated after
        each epoch (recorded as ``<name>_loss`` and ``<name>_error``; a name
        whose keys are fit's own, such as ``"train"`` or ``"step"``, is refused).
      checkpoint_dir: folder for orbax checkpoints (``None``: no checkpoints).
      progress: show a tqdm progress bar over the steps.
      desc: the bar's label.
      loss_points: how many points of the step-by-step training loss to record
        per epoch (``step_loss``, for plots against steps).
      on_epoch: optional ``f(epoch, history)`` called after each epoch.
      mesh: a mesh from :func:`lnjax.parallel.make_mesh`: each epoch's global
        batches run data-parallel over it (:func:`lnjax.parallel.train_epoch`,
        which places each host's share; every host calls ``fit`` with the same
        data, seed and ``checkpoint_dir``, a folder every host sees);
        ``None`` or a one-device mesh: :func:`train_epoch` on the default device.
      curves: ``{"test": (x, y)}``: splits (typically small fixed subsets)
        evaluated ``evals_per_epoch`` times per epoch, for learning curves:
        recorded as ``<name>_curve_loss`` and ``<name>_curve_error``, with
        ``eval_steps`` (the total steps done at each point), ``eval_seconds``
        (the training wall time then) and ``train_curve_loss`` /
        ``train_curve_error`` (the means over the steps since the previous point).
      evals_per_epoch: how many times per epoch ``curves`` are evaluated (the
        last at the epoch's end; at most once per step); more than 1 needs ``curves``.
      tensorboard_dir: a folder for TensorBoard event files (needs tensorboardX,
        the ``tensorboard`` extra; checked before anything runs), flushed after
        each write so a run can be watched live. Scalars, at the total steps done:
        ``train/loss`` and ``train/error`` (the means over the steps since the
        previous point: each epoch, or each curve point), ``train/step_loss``
        (the ``step_loss`` points), ``<name>/loss`` and ``<name>/error`` for
        ``evals`` (each epoch), ``<name>_curve/loss`` and ``<name>_curve/error``
        for ``curves``. A resumed run purges the events after its checkpoint.
        On a mesh over several hosts, process 0 writes them.

    Returns:
      ``(state, history)``: per epoch ``epoch``, ``steps`` (total steps done),
      ``train_loss``/``train_error`` (means over the epoch's steps), the
      evaluations, ``seconds`` (cumulative training wall time) and ``step_loss``
      (``[step, loss]`` pairs); with ``curves``, per curve point ``eval_steps``,
      ``eval_seconds``, ``train_curve_loss``, ``train_curve_error`` and the
      curves' ``<name>_curve_loss`` and ``<name>_curve_error``.

    Raises:
      ValueError: an ``evals`` or ``curves`` name collides with fit's own
        history keys or with another's; ``evals_per_epoch`` is not a positive
        int, or above 1 without ``curves``.
      lnjax._optional.MissingExtraError: ``tensorboard_dir`` without
        tensorboardX installed (before anything is trained).
      FloatingPointError: an epoch's loss or state is not finite (nothing of
        that epoch is saved).
      lnjax.checkpoint.CheckpointError: ``checkpoint_dir`` holds checkpoints
        but none is intact.
    """
    x, y = train
    evals, curves = dict(evals or {}), dict(curves or {})
    _check_eval_names(evals, curves)
    if isinstance(evals_per_epoch, bool) or not isinstance(evals_per_epoch, int | np.integer) \
            or evals_per_epoch < 1:
        raise ValueError(f"fit: evals_per_epoch must be a positive int, got {evals_per_epoch!r}.")
    if evals_per_epoch > 1 and not curves:
        raise ValueError(f"fit: evals_per_epoch={evals_per_epoch} evaluates the `curves` "
                         "splits within each epoch, but no curves were given.")
    if tensorboard_dir is not None:
        require("tensorboardX", "fit's TensorBoard event files")  # before any training
    history = _new_history()
    ckpt = Checkpointer(checkpoint_dir) if checkpoint_dir is not None else None
    start = 0
    if ckpt is not None:
        latest = ckpt.latest_intact()  # a damaged newer checkpoint is skipped, with a warning
        if latest is not None:
            state, history = ckpt.restore(state, latest)
            start = int(latest)
    parallel_epochs = mesh is not None and mesh.devices.size > 1
    steps_per_epoch = len(y) // batch_size
    ends = _chunk_ends(steps_per_epoch, int(evals_per_epoch) if curves else 1)
    # Evaluation data go to the device once, not at every evaluation.
    evals = {k: jax.device_put((np.asarray(ex), np.asarray(ey))) for k, (ex, ey) in evals.items()}
    curves = {k: jax.device_put((np.asarray(ex), np.asarray(ey)))
              for k, (ex, ey) in curves.items()}
    log = None
    bar: Any = None  # a tqdm bar or None; report is passed on only with a bar
    try:
        if tensorboard_dir is not None and jax.process_index() == 0:
            log = _EventLog(tensorboard_dir, start * steps_per_epoch + 1 if start else None)
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=epochs * steps_per_epoch, initial=start * steps_per_epoch,
                       desc=desc, unit="step", dynamic_ncols=True)
        done = [0]

        def report(n):
            n = int(n)
            bar.update(n - done[0])
            done[0] = n

        report_every = max(1, steps_per_epoch // 20)
        elapsed = history["seconds"][-1] if history["seconds"] else 0.0
        for epoch in range(start, epochs):
            xb, yb = batches(x, y, batch_size, seed=seed, epoch=epoch)
            losses, errors, begin = [], [], 0
            for end in ends:
                done[0] = 0
                t0 = time.perf_counter()
                if parallel_epochs:
                    state, metrics = parallel.train_epoch(state, xb[begin:end], yb[begin:end],
                                                          mesh, report=report if bar else None,
                                                          report_every=report_every)
                else:
                    state, metrics = train_epoch(state, jax.device_put(xb[begin:end]),
                                                 jax.device_put(yb[begin:end]),
                                                 report=report if bar else None,
                                                 report_every=report_every)
                losses.append(np.asarray(metrics["loss"]))
                errors.append(np.asarray(metrics["error"]))
                elapsed += time.perf_counter() - t0
                if bar is not None:
                    bar.update(end - begin - done[0])
                step = epoch * steps_per_epoch + end
                point = {"train/loss": float(losses[-1].mean()),
                         "train/error": float(errors[-1].mean())}
                if curves:
                    history.setdefault("eval_steps", []).append(step)
                    history.setdefault("eval_seconds", []).append(elapsed)
                    history.setdefault("train_curve_loss", []).append(point["train/loss"])
                    history.setdefault("train_curve_error", []).append(point["train/error"])
                    local = parallel.host_local(state) if parallel_epochs else state
                    for name, (ex, ey) in curves.items():
                        m = evaluate(local, ex, ey)
                        history.setdefault(f"{name}_curve_loss", []).append(m["loss"])
                        history.setdefault(f"{name}_curve_error", []).append(m["error"])
                        point.update({f"{name}_curve/loss": m["loss"],
                                      f"{name}_curve/error": m["error"]})
                    if bar is not None:
                        bar.set_postfix(loss=f"{point['train/loss']:.3f}", **{
                            f"{k[:4]}_err": f"{point[f'{k}_curve/error']:.3f}" for k in curves})
                if log is not None:
                    log.scalars(point, step)
                begin = end
            loss, error = np.concatenate(losses), np.concatenate(errors)
            t0 = time.perf_counter()
            _check_finite(epoch, loss, state, ckpt)
            elapsed += time.perf_counter() - t0
            total_steps = (epoch + 1) * steps_per_epoch
            history["epoch"].append(epoch + 1)
            history["steps"].append(total_steps)
            history["train_loss"].append(float(loss.mean()))
            history["train_error"].append(float(error.mean()))
            history["seconds"].append(elapsed)
            idx = np.unique(np.linspace(0, len(loss) - 1, min(loss_points, len(loss))).astype(int))
            step_loss = [[epoch * steps_per_epoch + int(i) + 1, float(loss[i])] for i in idx]
            history["step_loss"].extend(step_loss)
            # On a mesh the state is replicated: evaluate this process's own copy.
            local = parallel.host_local(state) if parallel_epochs else state
            point = {}
            for name, (ex, ey) in evals.items():
                m = evaluate(local, ex, ey)
                history.setdefault(f"{name}_loss", []).append(m["loss"])
                history.setdefault(f"{name}_error", []).append(m["error"])
                point.update({f"{name}/loss": m["loss"], f"{name}/error": m["error"]})
            if log is not None:
                for i, v in step_loss:
                    log.writer.add_scalar("train/step_loss", v, global_step=i)
                log.scalars(point, total_steps)
            if bar is not None:
                bar.set_postfix(loss=f"{history['train_loss'][-1]:.3f}", **{
                    f"{k[:4]}_err": f"{history[f'{k}_error'][-1]:.3f}" for k in evals})
            if ckpt is not None:
                ckpt.save(epoch + 1, state, history)
            if on_epoch is not None:
                on_epoch(epoch + 1, history)
    finally:
        if bar is not None:
            bar.close()
        if ckpt is not None:
            ckpt.close()
        if log is not None:
            log.close()
    return state, {k: v for k, v in history.items() if v or k in _new_history()}
