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
batches by :func:`lnjax.data.batches` with ``(seed, epoch)``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from lnjax import data, parallel
from lnjax.checkpoint import Checkpointer, CheckpointError, DamagedCheckpointWarning
from lnjax.steps import (
    Batch,
    TrainState,
    all_finite,
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


_OWN_KEYS = ("epoch", "steps", "train_loss", "train_error", "seconds", "step_loss")
"""The history keys ``fit`` records itself (an evaluation may not write to them)."""


def _new_history() -> dict[str, list]:
    keys = ("epoch", "steps", "train_loss", "train_error", "validation_loss",
            "validation_error", "test_loss", "test_error", "seconds", "step_loss")
    return {k: [] for k in keys}


def _check_eval_names(evals: Mapping[str, Any]) -> None:
    for name in evals:
        if not isinstance(name, str):
            raise TypeError(f"fit: evals names must be strings, got {name!r}.")
        clash = [k for k in (f"{name}_loss", f"{name}_error") if k in _OWN_KEYS]
        if clash:
            raise ValueError(
                f"fit: evals name {name!r} would be recorded as {' and '.join(clash)}, which "
                f"fit records itself (its own history keys: {', '.join(_OWN_KEYS)}); "
                f"rename it, e.g. {name + '_eval'!r}.")


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
        mesh: Any = None) -> tuple[TrainState, dict]:
    """Trains for ``epochs`` epochs, evaluating and checkpointing after each.

    Each epoch's batches come from :func:`lnjax.data.batches` with
    ``(seed, epoch)`` and run as one :func:`train_epoch` scan. With a
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

    Returns:
      ``(state, history)``: per epoch ``epoch``, ``steps`` (total steps done),
      ``train_loss``/``train_error`` (means over the epoch's steps), the
      evaluations, ``seconds`` (cumulative training wall time) and ``step_loss``
      (``[step, loss]`` pairs).

    Raises:
      ValueError: an ``evals`` name collides with fit's own history keys.
      FloatingPointError: an epoch's loss or state is not finite (nothing of
        that epoch is saved).
      lnjax.checkpoint.CheckpointError: ``checkpoint_dir`` holds checkpoints
        but none is intact.
    """
    x, y = train
    _check_eval_names(evals or {})
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
    bar: Any = None  # a tqdm bar (untyped) or None; report is passed on only with a bar
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs * steps_per_epoch, initial=start * steps_per_epoch, desc=desc,
                   unit="step", dynamic_ncols=True)
    done = [0]

    def report(n):
        n = int(n)
        bar.update(n - done[0])
        done[0] = n

    report_every = max(1, steps_per_epoch // 20)
    elapsed = history["seconds"][-1] if history["seconds"] else 0.0
    try:
        for epoch in range(start, epochs):
            xb, yb = data.batches(x, y, batch_size, seed=seed, epoch=epoch)
            done[0] = 0
            t0 = time.perf_counter()
            if parallel_epochs:
                state, metrics = parallel.train_epoch(state, xb, yb, mesh,
                                                      report=report if bar else None,
                                                      report_every=report_every)
            else:
                state, metrics = train_epoch(state, jax.device_put(xb), jax.device_put(yb),
                                             report=report if bar else None,
                                             report_every=report_every)
            loss = np.asarray(metrics["loss"])
            _check_finite(epoch, loss, state, ckpt)
            elapsed += time.perf_counter() - t0
            if bar is not None:
                bar.update(steps_per_epoch - done[0])
            total_steps = (epoch + 1) * steps_per_epoch
            history["epoch"].append(epoch + 1)
            history["steps"].append(total_steps)
            history["train_loss"].append(float(loss.mean()))
            history["train_error"].append(float(np.asarray(metrics["error"]).mean()))
            history["seconds"].append(elapsed)
            idx = np.unique(np.linspace(0, len(loss) - 1, min(loss_points, len(loss))).astype(int))
            history["step_loss"].extend([[epoch * steps_per_epoch + int(i) + 1, float(loss[i])]
                                         for i in idx])
            # On a mesh the state is replicated: evaluate this process's own copy.
            local = parallel.host_local(state) if parallel_epochs else state
            for name, (ex, ey) in (evals or {}).items():
                m = evaluate(local, ex, ey)
                history.setdefault(f"{name}_loss", []).append(m["loss"])
                history.setdefault(f"{name}_error", []).append(m["error"])
            if bar is not None:
                bar.set_postfix(loss=f"{history['train_loss'][-1]:.3f}", **{
                    f"{k[:4]}_err": f"{history[f'{k}_error'][-1]:.3f}" for k in (evals or {})})
            if ckpt is not None:
                ckpt.save(epoch + 1, state, history)
            if on_epoch is not None:
                on_epoch(epoch + 1, history)
    finally:
        if bar is not None:
            bar.close()
        if ckpt is not None:
            ckpt.close()
    return state, {k: v for k, v in history.items() if v or k in _new_history()}
