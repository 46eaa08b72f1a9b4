"""One training run of an experiment: its identity, its checkpoints, its curves.

A run is a :class:`Run` (what is trained: method, batch size, seed, the model's
configuration) under a :class:`~lnjax.experiments.settings.Settings` (how:
learning rate, epochs, curves, output folder); :func:`fit_run` trains it with
:func:`lnjax.training.fit`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Hashable, Mapping
from typing import Any, TypeVar

import numpy as np

from lnjax.experiments.settings import EVAL_EXAMPLES, EVALS_PER_EPOCH, Settings

__all__ = ["SUBSET_SEED", "Run", "config_key", "eval_subset", "fit_run", "identity", "run_name",
           "shared", "subset_indices", "with_hyperparams"]

T = TypeVar("T")

SUBSET_SEED = 0
"""The seed that draws the curves' subsets: the same for every run, seed and epoch."""


@dataclasses.dataclass(frozen=True)
class Run:
    """What one training run trains.

    Attributes:
      method: the experiment's method (the checkpoint folder's first word).
      batch_size: examples per step.
      seed: the seed of the parameters and of the batch order.
      model_config: what else identifies the model (its widths, its layers, a
        warm-up's length): part of the checkpoints' identity; JSON-serializable.
      label: the progress bar's label.
    """

    method: str
    batch_size: int
    seed: int
    model_config: Any = None
    label: str = "train"


@functools.cache
def shared(factory: Callable[..., T], *args: Hashable) -> T:
    """``factory(*args)``, made once per process and then returned again.

    The optimizer of a run is a static part of its train state: two runs share
    the compiled steps only when they are given the same optimizer object (and
    equal models, see :class:`lnjax.training.TrainState`). The experiments make
    theirs with ``shared(optax.adam, lr)``, so the seeds of a method (and, with
    the settings that differ held in the optimizer's state, see
    :func:`with_hyperparams`, the variants of a network) compile once.

    Example:
      >>> import optax
      >>> shared(optax.adam, 1e-3) is shared(optax.adam, 1e-3) is not shared(optax.adam, 1e-2)
      True
    """
    return factory(*args)


def with_hyperparams(opt_state: Any, values: Mapping[str, Any]) -> Any:
    """``opt_state`` of an ``optax.inject_hyperparams`` optimizer with ``values`` in place
    of the hyperparameters of those names (each converted to the dtype it had).

    Raises:
      ValueError: ``opt_state`` holds no hyperparameters, or not one of ``values``' names.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> tx = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
      >>> state = with_hyperparams(tx.init(jnp.zeros(2)), {"learning_rate": 0.5})
      >>> float(state.hyperparams["learning_rate"])
      0.5
    """
    held = getattr(opt_state, "hyperparams", None)
    if not isinstance(held, Mapping):
        raise ValueError("with_hyperparams: the optimizer's state holds no hyperparameters "
                         "(make it with optax.inject_hyperparams).")
    unknown = sorted(set(values) - set(held))
    if unknown:
        raise ValueError(f"with_hyperparams: the optimizer has no hyperparameter {unknown} "
                         f"(it has {sorted(held)}).")
    import jax.numpy as jnp

    new = {k: jnp.asarray(values[k], dtype=v.dtype) if k in values else v
           for k, v in held.items()}
    return opt_state._replace(hyperparams=new)


def config_key(config: Mapping[str, Any]) -> str:
    """A short hash of a run's configuration (checkpoints of other settings are not reused).

    Example:
      >>> config_key({"lr": 1e-3}) == config_key({"lr": 0.001}) != config_key({"lr": 0.01})
      True
    """
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def subset_indices(n: int, examples: int | None) -> np.ndarray:
    """The sorted indices of a fixed subset of ``examples`` of ``n`` examples (``None`` or at
    least ``n``: all of them), drawn with a seed of its own (:data:`SUBSET_SEED`): the same
    for every run, seed and epoch.

    Example:
      >>> subset_indices(10, 4).tolist() == subset_indices(10, 4).tolist()
      True
      >>> len(subset_indices(10, 4)), subset_indices(3, 50).tolist()
      (4, [0, 1, 2])
    """
    if examples is None or examples >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(SUBSET_SEED).choice(n, examples, replace=False))


def eval_subset(ds: Any, examples: int | None) -> Any:
    """The fixed subset of ``examples`` of split ``ds`` (:func:`subset_indices`; ``None`` or
    at least its size: all of it).

    Example:
      >>> import numpy as np
      >>> from lnjax.data import Dataset
      >>> ds = Dataset(np.arange(10.0)[:, None], np.arange(10), "toy", "test", "memory")
      >>> eval_subset(ds, 4).labels.tolist() == subset_indices(10, 4).tolist()
      True
      >>> len(eval_subset(ds, 4).labels), len(eval_subset(ds, 50).labels)
      (4, 10)
    """
    n = len(ds.labels)
    if examples is None or examples >= n:
        return ds
    idx = subset_indices(n, examples)
    return ds._replace(images=ds.images[idx], labels=ds.labels[idx])


def run_name(method: str, batch_size: int, config: Mapping[str, Any]) -> str:
    """A run's folder name under ``OUT/checkpoints`` (and, with its seed, ``OUT/tensorboard``)."""
    return f"{method}-bs{batch_size}-{config_key(config)}"


def identity(run: Run, settings: Settings, train: Any) -> dict[str, Any]:
    """What names a run's checkpoints: the run, the learning rate, the training data (name
    and size) and, when they differ from the defaults, the curves' settings."""
    # "hidden" is the key under which the model's configuration has always been hashed:
    # kept, so that the checkpoints of earlier runs are found again.
    config = {"method": run.method, "batch_size": run.batch_size, "lr": settings.lr,
              "seed": run.seed, "hidden": run.model_config, "dataset": train.name,
              "n_train": len(train.labels)}
    curves = (settings.eval_examples, settings.evals_per_epoch)
    if curves != (EVAL_EXAMPLES, EVALS_PER_EPOCH):
        config["curves"] = list(curves)
    return config


def fit_run(model: Any, tx: Any, splits: Mapping[str, Any], run: Run, settings: Settings, *,
            mesh: Any = None, takes_mask: bool = False,
            hyperparams: Mapping[str, Any] | None = None) -> dict:
    """Trains ``model`` with ``tx`` from ``run.seed`` on ``splits["train"]``; returns the
    history of :func:`lnjax.training.fit`.

    Validation and test are evaluated whole after each epoch and, for the curves,
    as fixed subsets of ``settings.eval_examples`` (:func:`subset_indices`)
    ``settings.evals_per_epoch`` times per epoch (``validation_curve_error``,
    ``test_curve_error`` at ``eval_steps``); the epoch's last curve point and the
    whole split share one pass (the curves are given to :func:`lnjax.training.fit`
    as indices into the splits), in batches of ``settings.eval_batch_size``.
    Checkpoints go to
    ``OUT/checkpoints/<method>-bs<batch size>-<hash of identity(...)>``, so a
    rerun with the same settings resumes (unless ``settings.resume`` is false)
    and other settings never reuse them; with ``settings.tensorboard``, event
    files go to ``OUT/tensorboard/<method>-bs<batch size>-seed<seed>-<hash>``.

    Args:
      model: a flax module (``__call__(x, *, train)``).
      tx: its optax optimizer.
      splits: ``{"train", "validation", "test"}``, each a :class:`lnjax.data.Dataset`.
      run: what is trained.
      settings: epochs, output folder, curves, progress bars, TensorBoard.
      mesh: a data-parallel mesh (``None``: one device).
      takes_mask: the model's ``__call__`` takes ``mask=`` (see
        :func:`lnjax.training.create_train_state`).
      hyperparams: this run's values of hyperparameters held in ``tx``'s state
        (:func:`with_hyperparams`): runs that differ in these only share the
        compiled steps when given the same ``tx`` object (:func:`shared`).
    """
    from lnjax import training

    train, val, test = splits["train"], splits["validation"], splits["test"]
    state = training.create_train_state(model, tx, train.images[:1], seed=run.seed,
                                        takes_mask=takes_mask)
    if hyperparams:
        state = state.replace(opt_state=with_hyperparams(state.opt_state, hyperparams))
    name = run_name(run.method, run.batch_size, identity(run, settings, train))
    ckpt = os.path.join(settings.out, "checkpoints", name)
    logdir = None
    if settings.tensorboard:
        bs = f"-bs{run.batch_size}-"
        logdir = os.path.join(settings.out, "tensorboard",
                              name.replace(bs, f"{bs[:-1]}-seed{run.seed}-"))
    if not settings.resume:
        for folder in (ckpt, logdir):
            if folder is not None and os.path.isdir(folder):
                shutil.rmtree(folder)
    curves = {k: subset_indices(len(d.labels), settings.eval_examples)
              for k, d in (("validation", val), ("test", test))}
    _, history = training.fit(
        state, (train.images, train.labels), epochs=settings.epochs,
        batch_size=run.batch_size, seed=run.seed,
        evals={"validation": (val.images, val.labels), "test": (test.images, test.labels)},
        curves=curves, evals_per_epoch=settings.evals_per_epoch, checkpoint_dir=ckpt,
        progress=settings.progress, desc=run.label, mesh=mesh, tensorboard_dir=logdir,
        eval_batch_size=settings.eval_batch_size)
    return history
