"""Checkpoints: orbax save and restore of a train state and the run's history.

Imports :mod:`lnjax.steps` (for the :class:`~lnjax.steps.TrainState` type)
and nothing else of lnjax; :mod:`lnjax.training` imports it and re-exports
:class:`Checkpointer`. orbax is imported when a :class:`Checkpointer` is made
(it is an optional dependency, the ``experiments`` extra).

What is saved, under the checkpoint item ``state``: ``{"step", "params",
"batch_stats", "opt_state"}`` of the state; under ``history``: the JSON history.
The model, the optimizer and static fields such as ``takes_mask`` are not
saved: they come from the template the checkpoint is restored into.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from lnjax.steps import TrainState


class Checkpointer:
    """Saves and restores a :class:`~lnjax.steps.TrainState` and a JSON history with orbax.

    Args:
      directory: the checkpoint folder (created if missing).
      max_to_keep: how many epochs' checkpoints to keep.

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

        self._ocp = ocp
        self.directory = os.path.abspath(os.fspath(directory))
        self._manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                                                 create=True))

    @staticmethod
    def _tree(state: TrainState) -> dict[str, Any]:
        return {"step": state.step, "params": state.params, "batch_stats": state.batch_stats,
                "opt_state": state.opt_state}

    def latest(self) -> int | None:
        """The latest saved epoch, or ``None``."""
        return self._manager.latest_step()

    def save(self, epoch: int, state: TrainState, history: Mapping[str, Any]) -> None:
        """Saves ``state`` and ``history`` as epoch ``epoch`` and waits until written."""
        ocp = self._ocp
        self._manager.save(int(epoch), args=ocp.args.Composite(
            state=ocp.args.StandardSave(self._tree(state)),
            history=ocp.args.JsonSave(dict(history))))
        self._manager.wait_until_finished()

    def restore(self, template: TrainState, epoch: int | None = None
                ) -> tuple[TrainState, dict[str, Any]]:
        """The state and history saved at ``epoch`` (default: the latest).

        Args:
          template: a state of the same structure (e.g. a freshly created one);
            it provides the model, the optimizer, ``takes_mask`` and the shapes.
          epoch: which checkpoint (default: the latest).

        Returns:
          ``(state, history)``.
        """
        ocp = self._ocp
        epoch = self.latest() if epoch is None else epoch
        if epoch is None:
            raise FileNotFoundError(f"Checkpointer.restore: no checkpoint in {self.directory}.")
        out = self._manager.restore(epoch, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(self._tree(template)),
            history=ocp.args.JsonRestore()))
        tree = out["state"]
        state = template.replace(step=tree["step"], params=tree["params"],
                                 batch_stats=tree["batch_stats"], opt_state=tree["opt_state"])
        return state, dict(out["history"])

    def close(self) -> None:
        """Releases the manager's resources."""
        self._manager.close()
