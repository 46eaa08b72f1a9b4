"""Checkpoints: verified orbax save and restore of a train state and the run's history.

Imports :mod:`lnjax.steps` (for the :class:`~lnjax.steps.TrainState` type) and
:mod:`lnjax.checksums`, and nothing else of lnjax; :mod:`lnjax.training`
imports it and re-exports :class:`Checkpointer`. orbax is imported when a
:class:`Checkpointer` is made (it is an optional dependency, the
``experiments`` extra).

Steps. A checkpoint is saved under a *step* (orbax's word), an integer that
only grows; its files are in the folder ``<directory>/<step>``.
:func:`lnjax.training.fit` saves one checkpoint per epoch, with the epoch's
number (1, 2, ...) as the step, so there the step of a checkpoint is the
number of epochs it has trained.

What is saved, under the checkpoint item ``state``: ``{"step", "params",
"batch_stats", "opt_state"}`` of the state; under ``history``: the JSON history.
The model, the optimizer and static fields such as ``takes_mask`` are not
saved: they come from the template the checkpoint is restored into.

Verification. After orbax has committed a checkpoint, the size and SHA-256 of
every file in it are written to ``<step>/lnjax_checksums.json`` (by the first
process only, when several train together; see :mod:`lnjax.checksums`). Before
anything is read back, every file is checked against that list, so damaged
bytes are never restored. The policy for a damaged checkpoint (a changed,
truncated, missing or added file, or no checksum list: a save interrupted
before the list was written):

* ``restore()`` of the latest checkpoint *skips* a damaged one for the newest
  intact one, with a :class:`DamagedCheckpointWarning` naming both steps and
  the folder; the next ``save()`` of that step moves the damaged folder aside
  to ``<step>.damaged`` (kept for inspection, ignored by orbax).
* ``restore(template, step)`` of a damaged step, or of the latest when no
  checkpoint is intact, raises :class:`CheckpointError`: one short message
  naming the step, the folder, what is wrong and what to do.

Retention keeps the newest ``max_to_keep`` *intact* checkpoints (older ones
are deleted only after a newer one is written), so a damaged or interrupted
save never costs the last good checkpoint. Retention reads no file contents:
it takes a checkpoint for intact when its checksum list is there and every
file has the name, size and modification time recorded in it
(``checksums.check(folder, contents=False)``), so a file rewritten after the
save counts as damaged, while bytes changed in place without a new
modification time are found only by ``verify`` and ``restore``. ``save()``
refuses a state with a NaN or an infinity, before anything is written.

Renamed keywords: ``save(epoch=...)`` and ``restore(template, epoch=...)``
still work, with a :class:`DeprecationWarning`, until the next release; the
keyword is ``step``.
"""

from __future__ import annotations

import functools
import os
import re
import sys
import warnings
from collections.abc import Callable, Mapping
from typing import Any, ParamSpec, TypeVar

import jax
import numpy as np

from lnjax import checksums
from lnjax.checksums import CHECKSUMS
from lnjax.steps import TrainState, all_finite

__all__ = ["CHECKSUMS", "CheckpointError", "Checkpointer", "DamagedCheckpointWarning"]

_P = ParamSpec("_P")
_R = TypeVar("_R")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: damaged, unreadable, or not of the template's shape.

    Attributes:
      step: the step of the checkpoint (``None`` when no checkpoint is intact).
      directory: the checkpoint folder.
    """

    def __init__(self, message: str, *, step: int | None, directory: str):
        super().__init__(message)
        self.step = step
        self.directory = directory


class DamagedCheckpointWarning(UserWarning):
    """A damaged newest checkpoint was skipped for the newest intact one."""


def _renamed(old: str, new: str) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """Accepts the keyword ``old`` for ``new`` for one release, with a DeprecationWarning."""
    def wrap(method: Callable[_P, _R]) -> Callable[_P, _R]:
        @functools.wraps(method)
        def call(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            if old in kwargs:
                if new in kwargs:
                    raise TypeError(f"{method.__qualname__}: {old}= is the old name of {new}=; "
                                    f"pass only {new}=.")
                warnings.warn(f"{method.__qualname__}: the keyword {old}= is now {new}= ({old}= "
                              "is removed in the next release).", DeprecationWarning, stacklevel=2)
                kwargs[new] = kwargs.pop(old)
            return method(*args, **kwargs)
        return call
    return wrap


def _is_closed_loop_noise(unraisable: Any) -> bool:
    exc = unraisable.exc_value
    return isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"


def _contain_orbax_noise() -> None:
    """Drops the "Event loop is closed" reports of an orbax read that failed (installed once).

    When one array of a restore fails, orbax closes its event loop while
    tensorstore still completes the other reads; each completion then reports
    ``RuntimeError('Event loop is closed')`` through :data:`sys.unraisablehook`
    (hundreds of lines of tracebacks after the real error; they come after
    ``restore`` has returned, so the filter stays). Only those reports are
    dropped; everything else goes to the hook that was installed before.
    """
    previous = sys.unraisablehook
    if getattr(previous, "_lnjax_filter", False):
        return

    def hook(unraisable):
        if not _is_closed_loop_noise(unraisable):
            previous(unraisable)

    # setattr: to mypy a function is a Callable, which has no attributes to assign.
    setattr(hook, "_lnjax_filter", True)  # noqa: B010
    sys.unraisablehook = hook


def _summary(exc: BaseException, folder: str, limit: int = 300) -> str:
    """The first line of an exception, shortened: tensorstore's specs and driver chain
    dropped, paths inside the checkpoint ``folder`` made relative to it."""
    text = (str(exc).strip().splitlines() or [""])[0]
    text = text.split(" [tensorstore_spec")[0]
    text = re.sub(r'Error opening "\w+" driver: ', "", text)
    text = text.replace(folder.rstrip("/") + "/", "")
    if len(text) > limit:
        text = text[:limit] + " ..."
    return f"{type(exc).__name__}: {text}"


def _barrier(name: str) -> None:
    """All processes wait here (nothing to wait for with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _from_first_process(value: int) -> int:
    """The first process's ``value``, on every process (a barrier too, with several)."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    return int(multihost_utils.broadcast_one_to_all(np.int32(value)))


def _to_delete(steps: list[int], intact: Callable[[int], bool], max_to_keep: int) -> int:
    """How many of ``steps`` (oldest first) retention deletes: those older than the newest
    ``max_to_keep`` intact ones (none when fewer are intact). ``intact`` is asked newest
    first, and no more than needed."""
    found = 0
    for index in range(len(steps) - 1, -1, -1):
        if intact(steps[index]):
            found += 1
            if found == max_to_keep:
                return index
    return 0


def _place_like(value: np.ndarray, like: Any) -> Any:
    """``value`` placed as the template leaf ``like`` is (numpy stays numpy)."""
    if not isinstance(like, jax.Array):
        return value
    sharding = like.sharding
    if sharding.is_fully_addressable:
        return jax.device_put(value, sharding)
    # Global arrays over several processes: each process places its own devices' slices.
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def _tree(state: TrainState) -> dict[str, Any]:
    """What is saved of a state."""
    return {"step": state.step, "params": state.params, "batch_stats": state.batch_stats,
            "opt_state": state.opt_state}


def _move_aside(directory: str, steps: list[int]) -> None:
    """Renames damaged steps' folders to ``<step>.damaged`` (orbax ignores them).

    Every process has decided on ``steps`` before any folder moves.
    """
    _barrier("lnjax-checkpoint-move-aside")
    if jax.process_index() == 0:
        for step in steps:
            folder = os.path.join(directory, str(step))
            target = base = folder + ".damaged"
            k = 1
            while os.path.exists(target):
                k += 1
                target = f"{base}-{k}"
            os.replace(folder, target)
    _barrier("lnjax-checkpoint-moved-aside")


class Checkpointer:
    """Saves and restores a :class:`~lnjax.steps.TrainState` and a JSON history, verified.

    Every checkpoint's files are checksummed after saving and checked before
    restoring (see the module docstring for the policy on damage). With several
    processes (``jax.distributed``), every process makes the ``Checkpointer``
    and calls ``save`` and ``restore`` with the same arguments, on a folder
    every process sees.

    Args:
      directory: the checkpoint folder (created if missing).
      max_to_keep: how many intact checkpoints to keep (the newest ones).

    Example:
      >>> import tempfile, jax.numpy as jnp, optax, flax.linen as nn
      >>> from lnjax import training
      >>> class Net(nn.Module):
      ...     @nn.compact
      ...     def __call__(self, x, *, train):
      ...         return nn.Dense(2)(x)
      >>> s = training.create_train_state(Net(), optax.sgd(0.1), jnp.zeros((1, 3)), seed=0)
      >>> with tempfile.TemporaryDirectory() as d:
      ...     ckpt = training.Checkpointer(d)
      ...     ckpt.save(1, s, {"epoch": [1]})
      ...     restored, history = ckpt.restore(s)
      ...     ckpt.close()
      >>> kernel = restored.params["Dense_0"]["kernel"]
      >>> history, bool((kernel == s.params["Dense_0"]["kernel"]).all())
      ({'epoch': [1]}, True)
    """

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 2):
        import orbax.checkpoint as ocp

        if isinstance(max_to_keep, bool) or not isinstance(max_to_keep, int) or max_to_keep < 1:
            raise ValueError(f"Checkpointer: max_to_keep must be an int >= 1, got {max_to_keep!r}.")
        self._ocp = ocp
        self.directory = os.path.abspath(os.fspath(directory))
        self.max_to_keep = max_to_keep
        # Retention is done here, over intact checkpoints only: orbax keeps everything.
        self._manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=None, create=True))

    def _step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(int(step)))

    def latest(self) -> int | None:
        """The latest saved step, intact or not, or ``None``."""
        return self._manager.latest_step()

    def steps(self) -> list[int]:
        """Every saved step, intact or not, oldest first."""
        return sorted(self._manager.all_steps())

    def verify(self, step: int) -> str | None:
        """What is wrong with step ``step``'s checkpoint, or ``None`` if it is intact.

        Every file must have the size and SHA-256 recorded when it was saved, and
        no other file may be there (:func:`lnjax.checksums.check`).
        """
        return checksums.check(self._step_dir(step))

    def latest_intact(self) -> int | None:
        """The newest step whose checkpoint is intact, or ``None`` if nothing was saved.

        A damaged newer checkpoint is skipped with a :class:`DamagedCheckpointWarning`
        naming both steps and the folder.

        Raises:
          CheckpointError: checkpoints exist but none is intact.
        """
        damaged: list[tuple[int, str]] = []
        for step in reversed(self.steps()):
            reason = self.verify(step)
            if reason is None:
                for bad, why in damaged:
                    warnings.warn(
                        f"Checkpoint step {bad} in {self.directory} is damaged ({why}); "
                        f"skipped for step {step}, the newest intact one. It will be moved "
                        f"to {bad}.damaged when step {bad} is saved again.",
                        DamagedCheckpointWarning, stacklevel=2)
                return step
            damaged.append((step, reason))
        if damaged:
            what = "; ".join(f"step {s}: {why}" for s, why in damaged)
            raise CheckpointError(
                f"No intact checkpoint in {self.directory} ({what}). Move or delete that "
                "folder to start over.", step=None, directory=self.directory)
        return None

    def _remove_old(self) -> None:
        """Deletes the checkpoints older than the newest ``max_to_keep`` intact ones.

        Reads no file contents: a checkpoint counts as intact when its files have
        the names, sizes and modification times of its checksum list. The first
        process decides, and every process deletes what it decided.
        """
        steps = self.steps()
        count = 0
        if jax.process_index() == 0:
            count = _to_delete(steps, lambda s: checksums.check(
                self._step_dir(s), contents=False) is None, self.max_to_keep)
        for step in steps[:_from_first_process(count)]:
            self._manager.delete(step)

    @_renamed("epoch", "step")
    def save(self, step: int, state: TrainState, history: Mapping[str, Any]) -> None:
        """Saves ``state`` and ``history`` as step ``step``, verified, and waits until written.

        Then deletes the checkpoints older than the newest ``max_to_keep`` intact ones.

        Args:
          step: the checkpoint's step, above every intact saved one
            (:func:`lnjax.training.fit` passes the epoch's number).
          state: the state to save (its arrays must be finite).
          history: a JSON-serializable mapping saved with it.

        Raises:
          FloatingPointError: the state holds a NaN or an infinity (nothing is written).
          ValueError: an intact checkpoint of step ``step`` or later already exists.
        """
        ocp = self._ocp
        step = int(step)
        tree = _tree(state)
        if not all_finite(tree):
            raise FloatingPointError(
                f"Checkpointer.save: the state of step {step} holds a NaN or an infinity; "
                f"nothing was saved in {self.directory}.")
        later = [s for s in self.steps() if s >= step]
        for s in later:
            if self.verify(s) is None:
                raise ValueError(f"Checkpointer.save: step {s} is already saved in "
                                 f"{self.directory}; cannot save step {step}.")
        if later:  # damaged ones (skipped by the restore): kept aside, never overwritten
            _move_aside(self.directory, later)
            self._manager.reload()
        saved = self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(tree), history=ocp.args.JsonSave(dict(history))))
        self._manager.wait_until_finished()
        if not saved:
            raise RuntimeError(f"Checkpointer.save: orbax declined to save step {step} "
                               f"in {self.directory}.")
        if jax.process_index() == 0:
            checksums.write(self._step_dir(step))
        _barrier(f"lnjax-checkpoint-verified-{step}")
        self._remove_old()

    def _checked_step(self, step: int | None) -> int:
        """The step to restore: ``step`` if its checkpoint is intact, else a CheckpointError
        (default: the newest intact one, or a FileNotFoundError when nothing was saved)."""
        if step is None:
            step = self.latest_intact()
            if step is None:
                raise FileNotFoundError(f"Checkpointer.restore: no checkpoint in "
                                        f"{self.directory}.")
            return step
        step = int(step)
        if step not in self.steps():
            raise CheckpointError(
                f"No checkpoint of step {step} in {self.directory} (saved steps: "
                f"{self.steps()}).", step=step, directory=self.directory)
        reason = self.verify(step)
        if reason is not None:
            raise CheckpointError(
                f"Checkpoint step {step} in {self.directory} is damaged: {reason}. "
                f"Restore another step, or move or delete that folder to start over.",
                step=step, directory=self.directory)
        return step

    @_renamed("epoch", "step")
    def restore(self, template: TrainState, step: int | None = None
                ) -> tuple[TrainState, dict[str, Any]]:
        """The state and history saved at ``step`` (default: the newest intact one).

        Every file is checked against its recorded checksum first. Leaves are
        placed as the template's are (with its shardings; global arrays are
        built from each process's own copy).

        Args:
          template: a state of the same structure (e.g. a freshly created one);
            it provides the model, the optimizer, ``takes_mask`` and the shapes.
          step: which checkpoint (default: the newest intact one; a damaged
            newer one is skipped with a :class:`DamagedCheckpointWarning`).

        Returns:
          ``(state, history)``.

        Raises:
          FileNotFoundError: nothing was saved in the folder.
          CheckpointError: the checkpoint is damaged, unreadable or does not fit
            ``template`` (one message naming the step and the folder).
        """
        ocp = self._ocp
        step = self._checked_step(step)
        like = _tree(template)
        # numpy leaves: restored on the host, whatever sharding they were saved with
        target = jax.tree.map(lambda a: np.empty(np.shape(a), getattr(a, "dtype", None)
                                                 or np.result_type(a)), like)
        _contain_orbax_noise()
        try:
            out = self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), history=ocp.args.JsonRestore()))
        except Exception as e:  # orbax/tensorstore raise many types; summarized below
            raise CheckpointError(
                f"Checkpoint step {step} in {self.directory} could not be restored "
                f"({_summary(e, self._step_dir(step))}). Check that the model and optimizer "
                "are the ones it was saved with; if they are, the checkpoint is unreadable: "
                "restore another step, or move or delete that folder to start over.",
                step=step, directory=self.directory) from None
        tree = jax.tree.map(_place_like, out["state"], like)
        state = template.replace(step=tree["step"], params=tree["params"],
                                 batch_stats=tree["batch_stats"], opt_state=tree["opt_state"])
        return state, dict(out["history"])

    def close(self) -> None:
        """Releases the manager's resources."""
        self._manager.close()
