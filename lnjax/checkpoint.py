"""Checkpoints: verified orbax save and restore of a train state and the run's history.

Imports :mod:`lnjax.steps` (for the :class:`~lnjax.steps.TrainState` type)
and nothing else of lnjax; :mod:`lnjax.training` imports it and re-exports
:class:`Checkpointer`. orbax is imported when a :class:`Checkpointer` is made
(it is an optional dependency, the ``experiments`` extra).

What is saved, under the checkpoint item ``state``: ``{"step", "params",
"batch_stats", "opt_state"}`` of the state; under ``history``: the JSON history.
The model, the optimizer and static fields such as ``takes_mask`` are not
saved: they come from the template the checkpoint is restored into.

Verification. After orbax has committed a checkpoint, the size and SHA-256 of
every file in it are written to ``<epoch>/lnjax_checksums.json`` (by the first
process only, when several train together). Before anything is read back,
every file is checked against that list, so damaged bytes are never restored.
The policy for a damaged checkpoint (a changed, truncated or missing file, or
no checksum list: a save interrupted before the list was written):

* ``restore()`` of the latest checkpoint *skips* a damaged one for the newest
  intact one, with a :class:`DamagedCheckpointWarning` naming both epochs and
  the folder; the next ``save()`` of that epoch moves the damaged folder aside
  to ``<epoch>.damaged`` (kept for inspection, ignored by orbax).
* ``restore(template, epoch)`` of a damaged epoch, or of the latest when no
  checkpoint is intact, raises :class:`CheckpointError`: one short message
  naming the epoch, the folder, what is wrong and what to do.

Retention keeps the newest ``max_to_keep`` *intact* checkpoints (older ones
are deleted only after a newer one is written and verified), so a damaged or
interrupted save never costs the last good checkpoint. ``save()`` refuses a
state with a NaN or an infinity, before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import warnings
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from lnjax.steps import TrainState, all_finite

__all__ = ["CHECKSUMS", "CheckpointError", "Checkpointer", "DamagedCheckpointWarning"]

CHECKSUMS = "lnjax_checksums.json"
"""The name of the checksum list inside each epoch's checkpoint folder."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: damaged, unreadable, or not of the template's shape.

    Attributes:
      step: the epoch of the checkpoint (``None`` when no checkpoint is intact).
      directory: the checkpoint folder.
    """

    def __init__(self, message: str, *, step: int | None, directory: str):
        super().__init__(message)
        self.step = step
        self.directory = directory


class DamagedCheckpointWarning(UserWarning):
    """A damaged newest checkpoint was skipped for the newest intact one."""


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files(folder: str) -> list[str]:
    """Every file under ``folder`` but the checksum list, as sorted relative paths."""
    out = []
    for root, _, names in os.walk(folder):
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), folder)
            if rel != CHECKSUMS:
                out.append(rel)
    return sorted(out)


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


def _place_like(value: np.ndarray, like: Any) -> Any:
    """``value`` placed as the template leaf ``like`` is (numpy stays numpy)."""
    if not isinstance(like, jax.Array):
        return value
    sharding = like.sharding
    if sharding.is_fully_addressable:
        return jax.device_put(value, sharding)
    # Global arrays over several processes: each process places its own devices' slices.
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


class Checkpointer:
    """Saves and restores a :class:`~lnjax.steps.TrainState` and a JSON history, verified.

    Every checkpoint's files are checksummed after saving and checked before
    restoring (see the module docstring for the policy on damage). With several
    processes (``jax.distributed``), every process makes the ``Checkpointer``
    and calls ``save`` and ``restore`` with the same arguments, on a folder
    every process sees.

    Args:
      directory: the checkpoint folder (created if missing).
      max_to_keep: how many intact epochs' checkpoints to keep.

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

    @staticmethod
    def _tree(state: TrainState) -> dict[str, Any]:
        return {"step": state.step, "params": state.params, "batch_stats": state.batch_stats,
                "opt_state": state.opt_state}

    def _step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(int(step)))

    def latest(self) -> int | None:
        """The latest saved epoch, intact or not, or ``None``."""
        return self._manager.latest_step()

    def steps(self) -> list[int]:
        """Every saved epoch, intact or not, oldest first."""
        return sorted(self._manager.all_steps())

    def verify(self, step: int) -> str | None:
        """What is wrong with epoch ``step``'s checkpoint, or ``None`` if it is intact.

        Every file must have the size and SHA-256 recorded when it was saved.
        """
        folder = self._step_dir(step)
        listing = os.path.join(folder, CHECKSUMS)
        if not os.path.isdir(folder):
            return "its folder is missing"
        try:
            with open(listing) as f:
                recorded = json.load(f)["files"]
        except FileNotFoundError:
            return (f"it has no {CHECKSUMS} (its save was interrupted, or it was written by "
                    "an lnjax without checkpoint checksums)")
        except (OSError, ValueError, KeyError, TypeError) as e:
            return f"its {CHECKSUMS} is unreadable ({type(e).__name__})"
        for rel, (size, digest) in sorted(recorded.items()):
            path = os.path.join(folder, rel)
            if not os.path.isfile(path):
                return f"file {rel} is missing"
            actual = os.path.getsize(path)
            if actual != size:
                return f"file {rel} is {actual} bytes, {size} were saved"
            if _sha256(path) != digest:
                return f"file {rel} has changed since it was saved (SHA-256 differs)"
        return None

    def latest_intact(self) -> int | None:
        """The newest epoch whose checkpoint is intact, or ``None`` if nothing was saved.

        A damaged newer checkpoint is skipped with a :class:`DamagedCheckpointWarning`
        naming both epochs and the folder.

        Raises:
          CheckpointError: checkpoints exist but none is intact.
        """
        damaged: list[tuple[int, str]] = []
        for step in reversed(self.steps()):
            reason = self.verify(step)
            if reason is None:
                for bad, why in damaged:
                    warnings.warn(
                        f"Checkpoint epoch {bad} in {self.directory} is damaged ({why}); "
                        f"skipped for epoch {step}, the newest intact one. It will be moved "
                        f"to {bad}.damaged when epoch {bad} is saved again.",
                        DamagedCheckpointWarning, stacklevel=2)
                return step
            damaged.append((step, reason))
        if damaged:
            what = "; ".join(f"epoch {s}: {why}" for s, why in damaged)
            raise CheckpointError(
                f"No intact checkpoint in {self.directory} ({what}). Move or delete that "
                "folder to start over.", step=None, directory=self.directory)
        return None

    def _move_aside(self, steps: list[int]) -> None:
        """Renames damaged epochs' folders to ``<epoch>.damaged`` (orbax ignores them).

        Every process has decided on ``steps`` before any folder moves.
        """
        _barrier("lnjax-checkpoint-move-aside")
        if jax.process_index() == 0:
            for step in steps:
                target = base = self._step_dir(step) + ".damaged"
                k = 1
                while os.path.exists(target):
                    k += 1
                    target = f"{base}-{k}"
                os.replace(self._step_dir(step), target)
        _barrier("lnjax-checkpoint-moved-aside")
        self._manager.reload()

    def _write_checksums(self, step: int) -> None:
        folder = self._step_dir(step)
        if jax.process_index() == 0:
            files = {rel: [os.path.getsize(os.path.join(folder, rel)),
                           _sha256(os.path.join(folder, rel))] for rel in _files(folder)}
            tmp = os.path.join(folder, CHECKSUMS + ".tmp")
            with open(tmp, "w") as f:
                json.dump({"algorithm": "sha256", "files": files}, f, indent=0)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, os.path.join(folder, CHECKSUMS))
        _barrier(f"lnjax-checkpoint-verified-{step}")

    def _remove_old(self) -> None:
        """Deletes the checkpoints older than the newest ``max_to_keep`` intact ones.

        Every process decides from the same files before any is deleted.
        """
        intact = [s for s in reversed(self.steps()) if self.verify(s) is None]
        old = []
        if len(intact) > self.max_to_keep:
            old = [s for s in self.steps() if s < intact[self.max_to_keep - 1]]
        _barrier("lnjax-checkpoint-retention")
        for step in old:
            self._manager.delete(step)

    def save(self, epoch: int, state: TrainState, history: Mapping[str, Any]) -> None:
        """Saves ``state`` and ``history`` as epoch ``epoch``, verified, and waits until written.

        Raises:
          FloatingPointError: the state holds a NaN or an infinity (nothing is written).
          ValueError: an intact checkpoint of epoch ``epoch`` or later already exists.
        """
        ocp = self._ocp
        epoch = int(epoch)
        tree = self._tree(state)
        if not all_finite(tree):
            raise FloatingPointError(
                f"Checkpointer.save: the state of epoch {epoch} holds a NaN or an infinity; "
                f"nothing was saved in {self.directory}.")
        later = [step for step in self.steps() if step >= epoch]
        for step in later:
            if self.verify(step) is None:
                raise ValueError(f"Checkpointer.save: epoch {step} is already saved in "
                                 f"{self.directory}; cannot save epoch {epoch}.")
        if later:  # damaged ones (skipped by the restore): kept aside, never overwritten
            self._move_aside(later)
        saved = self._manager.save(epoch, args=ocp.args.Composite(
            state=ocp.args.StandardSave(tree), history=ocp.args.JsonSave(dict(history))))
        self._manager.wait_until_finished()
        if not saved:
            raise RuntimeError(f"Checkpointer.save: orbax declined to save epoch {epoch} "
                               f"in {self.directory}.")
        self._write_checksums(epoch)
        self._remove_old()

    def restore(self, template: TrainState, epoch: int | None = None
                ) -> tuple[TrainState, dict[str, Any]]:
        """The state and history saved at ``epoch`` (default: the newest intact one).

        Every file is checked against its recorded checksum first. Leaves are
        placed as the template's are (with its shardings; global arrays are
        built from each process's own copy).

        Args:
          template: a state of the same structure (e.g. a freshly created one);
            it provides the model, the optimizer, ``takes_mask`` and the shapes.
          epoch: which checkpoint (default: the newest intact one; a damaged
            newer one is skipped with a :class:`DamagedCheckpointWarning`).

        Returns:
          ``(state, history)``.

        Raises:
          FileNotFoundError: nothing was saved in the folder.
          CheckpointError: the checkpoint is damaged, unreadable or does not fit
            ``template`` (one message naming the epoch and the folder).
        """
        ocp = self._ocp
        if epoch is None:
            epoch = self.latest_intact()
            if epoch is None:
                raise FileNotFoundError(f"Checkpointer.restore: no checkpoint in "
                                        f"{self.directory}.")
        else:
            epoch = int(epoch)
            if epoch not in self.steps():
                raise CheckpointError(
                    f"No checkpoint of epoch {epoch} in {self.directory} (saved epochs: "
                    f"{self.steps()}).", step=epoch, directory=self.directory)
            reason = self.verify(epoch)
            if reason is not None:
                raise CheckpointError(
                    f"Checkpoint epoch {epoch} in {self.directory} is damaged: {reason}. "
                    f"Restore another epoch, or move or delete that folder to start over.",
                    step=epoch, directory=self.directory)
        like = self._tree(template)
        # numpy leaves: restored on the host, whatever sharding they were saved with
        target = jax.tree.map(lambda a: np.empty(np.shape(a), getattr(a, "dtype", None)
                                                 or np.result_type(a)), like)
        _contain_orbax_noise()
        try:
            out = self._manager.restore(epoch, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), history=ocp.args.JsonRestore()))
        except Exception as e:  # orbax/tensorstore raise many types; summarized below
            raise CheckpointError(
                f"Checkpoint epoch {epoch} in {self.directory} could not be restored "
                f"({_summary(e, self._step_dir(epoch))}). Check that the model and optimizer "
                "are the ones it was saved with; if they are, the checkpoint is unreadable: "
                "restore another epoch, or move or delete that folder to start over.",
                step=epoch, directory=self.directory) from None
        tree = jax.tree.map(_place_like, out["state"], like)
        state = template.replace(step=tree["step"], params=tree["params"],
                                 batch_stats=tree["batch_stats"], opt_state=tree["opt_state"])
        return state, dict(out["history"])

    def close(self) -> None:
        """Releases the manager's resources."""
        self._manager.close()
