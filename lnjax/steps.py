"""Steps and epochs: a train state with ``batch_stats``, pure steps, whole-epoch scans.

The lowest layer of training, imported by :mod:`lnjax.parallel` (the
data-parallel epoch) and by :mod:`lnjax.training` (the fit loop, which
re-exports every public name here). This module imports no other lnjax module.

It holds the pieces research code reuses around any model whose outputs a loss
compares with the targets: a Flax Linen module called as ``__call__(x, *,
train)`` (or ``__call__(x, *, train, mask)``), or a ``flax.nnx.Module``
(:class:`NNXModel` gives it Linen's ``init``/``apply``):

* :class:`TrainState` -- flax's train state plus the ``batch_stats`` collection,
  the key of the training RNG streams (dropout), and the static ``takes_mask``
  flag and ``loss_fn``.
* :func:`create_train_state` -- the model initialized from a seed, with its loss.
* :func:`classification_loss` -- the default loss: softmax cross-entropy on
  integer labels, and the errors.
* :func:`train_step` / :func:`eval_step` -- pure functions of (state, batch);
  :func:`step_rngs` -- the RNG keys of a training step.
* :func:`scan_epoch` -- the unjitted body of an epoch: ``lax.scan`` of
  :func:`train_step` (the data-parallel epoch runs it inside ``shard_map``).
* :func:`train_epoch` -- a whole epoch as one jitted ``lax.scan`` over
  device-resident batches: no Python loop per step (at batch size 4 an MNIST
  epoch is 13,750 steps), with an optional progress callback every
  ``report_every`` steps.
* :func:`check_epoch_shapes` -- the ``(steps, batch, ...)`` shape check every
  epoch runs first; :func:`all_finite` -- the NaN/infinity check before a save.
* :func:`evaluate` -- the mean loss (and error) over a whole split, padded and
  weighted; :func:`metric_names` -- which of the two a state's loss gives.
* :class:`NNXModel`, :func:`nnx_module` -- an NNX module behind Linen's
  ``init``/``apply``, and back.

A batch is a dict ``{"x": inputs, "y": targets}`` with an optional ``"weight"``
(1 for a real example, 0 for padding); the targets are integer labels for the
default loss, any array with the examples on its first axis for a ``loss_fn``
of one's own. Everything is determined by the seed: the initial parameters by
``jax.random.key(seed)``, the dropout masks by the seed and the step number.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct
from flax.training import train_state

from lnjax import _checks as checks

__all__ = ["Batch", "LossFn", "NNXModel", "TrainState", "all_finite", "batches",
           "check_epoch_shapes", "classification_loss", "create_train_state", "eval_step",
           "evaluate", "evaluation_sums", "example_mask", "mean_metrics", "metric_names",
           "nnx_module", "scan_epoch", "step_rngs", "train_epoch", "train_step"]

Batch = Mapping[str, jax.Array]
"""A batch: ``{"x": inputs, "y": targets}``, with an optional ``"weight"`` (1 for a real
example, 0 for padding); the targets are int labels for the default loss."""

LossFn = Callable[[Any, Any], Any]
"""``loss_fn(outputs, targets)``: per-example losses of shape ``(batch,)``, or a pair
``(losses, errors)`` of such arrays (:func:`classification_loss` is the default)."""


def classification_loss(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Softmax cross-entropy on integer labels, and the errors: the default ``loss_fn``.

    Per example: ``-log softmax(logits)[label]`` (in float32) and ``1.0`` where
    ``argmax(logits) != label``, else ``0.0``.

    Args:
      logits: ``(batch, classes)`` outputs of a classifier.
      labels: ``(batch,)`` integer labels.

    Returns:
      ``(losses, errors)``, each of shape ``(batch,)``, float32.

    Example:
      >>> import jax.numpy as jnp
      >>> from lnjax import steps
      >>> losses, errors = steps.classification_loss(jnp.array([[0.0, 0.0], [2.0, 0.0]]),
      ...                                            jnp.array([0, 1]))
      >>> [round(float(v), 3) for v in losses], errors.tolist()
      ([0.693, 2.127], [0.0, 1.0])
    """
    nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    wrong = (jnp.argmax(logits, -1) != labels).astype(jnp.float32)
    return nll, wrong


class TrainState(train_state.TrainState):
    """flax's :class:`~flax.training.train_state.TrainState` with ``batch_stats``.

    ``batch_stats`` holds the running statistics of batch-norm layers (an empty
    dict for models without them); :func:`train_step` updates it.
    ``rng`` is the key data (``jax.random.key_data``) of the run's training
    RNG: each step's streams are drawn from it and the step number
    (:func:`step_rngs`), so a resumed run draws the dropout masks an
    uninterrupted one would (``None``: the model is called without ``rngs``).
    The static fields (not pytree leaves, so never saved in a checkpoint: they
    come from the state a checkpoint is restored into, as ``rng`` does):
    ``takes_mask`` says whether the model's ``__call__`` takes ``mask=``: a
    boolean array of the input's rank, ``True`` for the real examples of a
    padded batch, for batch norm to leave the padding out of its statistics;
    ``loss_fn`` is the :data:`LossFn` (``None``: :func:`classification_loss`);
    ``rng_streams`` names the RNG streams the model draws from in training.

    :func:`create_train_state` sets ``apply_fn`` to the model's ``apply`` in a
    form that compares equal for equal Linen modules, so two states of the same
    architecture and the same ``tx`` object (seeds, learning rates held in the
    optimizer's state) share the compiled :func:`train_epoch` and
    :func:`evaluate`: a sweep compiles each distinct network once.
    """

    batch_stats: Any = None
    rng: Any = None
    takes_mask: bool = struct.field(pytree_node=False, default=False)
    loss_fn: LossFn | None = struct.field(pytree_node=False, default=None)
    rng_streams: tuple[str, ...] = struct.field(pytree_node=False, default=("dropout",))


class NNXModel:
    """A ``flax.nnx.Module`` behind Linen's ``init``/``apply``: what :class:`TrainState` calls.

    :func:`create_train_state` wraps an NNX module in one, so an NNX model
    trains wherever a Linen module does. The module is split once into its
    ``nnx.Param`` variables (the state's ``params``), its ``nnx.BatchStat``
    variables (``batch_stats``) and the rest; :meth:`apply` merges them into a
    fresh copy, sets it to training mode (``module.train()``: ``deterministic``
    and ``use_running_average`` False, as for ``nnx.Dropout`` and batch norm)
    or to inference mode (``module.eval()``), and calls it as ``module(x,
    **kwargs)`` (with ``mask=`` when the state ``takes_mask``). In training
    every RNG stream of the module is reseeded from the step's keys
    (:func:`step_rngs`: a stream named in ``rng_streams`` takes that key,
    another one a key derived from it and its name), so its dropout masks
    follow the seed and the step as a Linen model's do.

    The parameters are the module's own (made by the ``nnx.Rngs`` it was built
    with), whatever ``seed`` :func:`create_train_state` is given; the variables
    are plain nested dicts (``nnx.to_pure_dict``).

    Args:
      module: the NNX module (it is not changed: see :func:`nnx_module` for a
        trained copy).

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from lnjax import steps
      >>> model = steps.NNXModel(nnx.Linear(3, 2, rngs=nnx.Rngs(0)))
      >>> variables = model.init(None, jnp.ones((1, 3)))
      >>> sorted(variables["params"]), variables["batch_stats"]
      (['bias', 'kernel'], {})
      >>> model.apply(variables, jnp.ones((4, 3)), train=False).shape
      (4, 2)
    """

    def __init__(self, module: nnx.Module):
        if not isinstance(module, nnx.Module):
            raise TypeError(f"NNXModel: expected a flax.nnx.Module, got {type(module).__name__}.")
        self.graphdef, *states = nnx.split(module, nnx.Param, nnx.BatchStat, ...)
        params, stats, rest = states
        self.rest = nnx.to_pure_dict(rest)
        self.variables = {"params": nnx.to_pure_dict(params),
                          "batch_stats": nnx.to_pure_dict(stats)}

    def init(self, rng: Any, x: Any, *, train: bool = False, **kwargs: Any) -> dict[str, Any]:
        """Copies of the module's own variables, ``{"params", "batch_stats"}`` (copies: a
        train state donates its arrays). The arguments are unused: an NNX module is
        initialized when it is built."""
        del rng, x, train, kwargs
        return jax.tree.map(jnp.copy, self.variables)

    def module(self, variables: Mapping[str, Any]) -> nnx.Module:
        """A copy of the module holding ``variables`` (``{"params"[, "batch_stats"]}``)."""
        return nnx.merge(self.graphdef, variables["params"],
                         variables.get("batch_stats", self.variables["batch_stats"]), self.rest)

    def apply(self, variables: Mapping[str, Any], x: Any, *, train: bool,
              mutable: Sequence[str] | bool = False, rngs: Mapping[str, Any] | None = None,
              **kwargs: Any) -> Any:
        """``module(x, **kwargs)`` with ``variables``, as Linen's ``apply`` does.

        Args:
          variables: ``{"params"[, "batch_stats"]}`` as :meth:`init` returns them.
          x: the input.
          train: training mode (``module.train()``) or inference (``module.eval()``).
          mutable: ``["batch_stats"]`` (or ``True``) to return the updated statistics too.
          rngs: ``{stream: key}``: the keys every RNG stream of the module is reseeded from.
          **kwargs: passed on to the module's ``__call__`` (e.g. ``mask``).

        Returns:
          The outputs, or ``(outputs, {"batch_stats": ...})`` when ``mutable``.
        """
        model = self.module(variables)
        model.train() if train else model.eval()
        if rngs:
            _reseed(model, rngs)
        out = model(x, **kwargs)
        if mutable:
            return out, {"batch_stats": nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))}
        return out


class _ModelApply:
    """``model.apply`` that compares equal for equal models: a :class:`TrainState`'s ``apply_fn``.

    A bound method compares equal only for the same object, so every new but
    identical Linen module (a run's model rebuilt from its settings) would
    compile the jitted steps again. Linen modules are frozen dataclasses:
    equal fields make the same computation, so states of equal models with the
    same ``tx`` object share the compiled steps. A module that is not hashable
    compares by identity.
    """

    __slots__ = ("__self__",)

    def __init__(self, model: Any):
        self.__self__ = model

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__self__.apply(*args, **kwargs)

    def _hashable(self) -> bool:
        try:
            hash(self.__self__)
        except TypeError:
            return False
        return True

    def __hash__(self) -> int:
        return hash(self.__self__) if self._hashable() else id(self.__self__)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _ModelApply):
            return NotImplemented
        mine, theirs = self.__self__, other.__self__
        return mine is theirs or (type(mine) is type(theirs) and self._hashable()
                                  and other._hashable() and bool(mine == theirs))

    def __repr__(self) -> str:
        return f"<apply of {self.__self__!r}>"


def _reseed(model: nnx.Module, rngs: Mapping[str, Any]) -> None:
    """Reseeds every RNG stream of ``model``: from ``rngs[tag]``, or (a tag not in ``rngs``)
    from the first key folded with the tag's CRC-32."""
    first = next(iter(rngs.values()))
    tags = {stream.key.tag for _, stream in nnx.iter_graph(model)
            if isinstance(stream, nnx.RngStream)}
    keys: dict[str, Any] = {
        tag: rngs[tag] if tag in rngs else jax.random.fold_in(first, zlib.crc32(tag.encode()))
        for tag in tags}
    if keys:
        nnx.reseed(model, policy="match_shape", **keys)


def nnx_module(state: TrainState) -> nnx.Module:
    """The NNX module of a state made from one, holding the state's parameters and statistics.

    Raises:
      TypeError: the state was not made from an NNX module (its ``apply_fn`` is
        not an :class:`NNXModel`'s ``apply``).
    """
    model = getattr(state.apply_fn, "__self__", None)
    if not isinstance(model, NNXModel):
        raise TypeError("nnx_module: the state was not created from a flax.nnx.Module.")
    return model.module({"params": state.params, "batch_stats": state.batch_stats})


def create_train_state(model: Any, tx: optax.GradientTransformation, sample_x: Any, *,
                       seed: int, loss_fn: LossFn | None = None, takes_mask: bool = False,
                       rng_streams: Sequence[str] = ("dropout",)) -> TrainState:
    """Initializes ``model`` on ``sample_x`` with ``jax.random.key(seed)``.

    Args:
      model: a Linen module called as ``model.apply(variables, x, train=...)``,
        or a ``flax.nnx.Module`` (wrapped in an :class:`NNXModel`; its
        parameters are its own).
      tx: the optax optimizer.
      sample_x: an input batch (only its shape and dtype matter).
      seed: the integer seed of the initial parameters and of the training RNG
        streams (``jax.random.fold_in(jax.random.key(seed), 1)``).
      loss_fn: ``loss_fn(outputs, targets)`` returning per-example losses of
        shape ``(batch,)``, or ``(losses, errors)``: the steps minimize the
        weighted mean loss and report the mean error when there is one
        (:data:`LossFn`; default :func:`classification_loss`).
      takes_mask: whether the model's ``__call__`` takes ``mask=`` (the real
        examples of a padded batch, for masked batch norm): :func:`train_step`
        then passes it on every step.
      rng_streams: the RNG streams the model draws from in training (a Linen
        ``nn.Dropout`` draws from ``"dropout"``); each step's keys come from the
        seed and the step number (:func:`step_rngs`).

    Returns:
      A :class:`TrainState` at step 0.

    Example:
      >>> import flax.linen as nn, jax.numpy as jnp, optax
      >>> from lnjax import training
      >>> class Net(nn.Module):
      ...     @nn.compact
      ...     def __call__(self, x, *, train):
      ...         return nn.Dense(3)(x)
      >>> state = training.create_train_state(Net(), optax.sgd(0.1), jnp.zeros((2, 4)), seed=0)
      >>> int(state.step), sorted(state.params["Dense_0"]), state.takes_mask
      (0, ['bias', 'kernel'], False)
    """
    if not isinstance(takes_mask, bool):
        raise TypeError(f"create_train_state: takes_mask must be a bool, got {takes_mask!r}.")
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"create_train_state: loss_fn must be callable, got {loss_fn!r}.")
    streams = (rng_streams,) if isinstance(rng_streams, str) else tuple(rng_streams)
    if not all(isinstance(s, str) for s in streams):
        raise TypeError(f"create_train_state: rng_streams must be strings, got {rng_streams!r}.")
    if isinstance(model, nnx.Module):
        model = NNXModel(model)
    key = jax.random.key(seed)
    variables = model.init(key, jnp.asarray(sample_x), train=False)
    return TrainState.create(apply_fn=_ModelApply(model), params=variables["params"], tx=tx,
                             batch_stats=variables.get("batch_stats", {}),
                             rng=jax.random.key_data(jax.random.fold_in(key, 1)),
                             takes_mask=takes_mask, loss_fn=loss_fn, rng_streams=streams)


def step_rngs(state: TrainState, fold: Any = None) -> dict[str, jax.Array]:
    """The RNG keys of the training step ``state.step``: ``{stream: key}``.

    The step's key is ``fold_in(wrap_key_data(state.rng), state.step)`` (then
    ``fold``, if given, folded in: the index of a device, for instance), and
    the ``i``-th stream of ``state.rng_streams`` takes ``fold_in(key, i)``. A
    state without ``rng`` has no streams.

    Example:
      >>> import flax.linen as nn, jax, jax.numpy as jnp, optax
      >>> from lnjax import steps
      >>> class Net(nn.Module):
      ...     @nn.compact
      ...     def __call__(self, x, *, train):
      ...         return nn.Dropout(0.5, deterministic=not train)(nn.Dense(2)(x))
      >>> state = steps.create_train_state(Net(), optax.sgd(0.1), jnp.ones((1, 3)), seed=0)
      >>> first, second = steps.step_rngs(state), steps.step_rngs(state.replace(step=1))
      >>> list(first), bool((jax.random.key_data(first["dropout"])
      ...                    == jax.random.key_data(second["dropout"])).all())
      (['dropout'], False)
    """
    if state.rng is None:
        return {}
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    if fold is not None:
        key = jax.random.fold_in(key, fold)
    return {name: jax.random.fold_in(key, i) for i, name in enumerate(state.rng_streams)}


def _weights(batch: Batch) -> jax.Array:
    w = batch.get("weight")
    if w is not None:
        return w.astype(jnp.float32)
    return jnp.ones(jnp.shape(batch["y"])[:1], jnp.float32)


def example_mask(batch: Batch) -> jax.Array:
    """The real examples of ``batch`` (weight > 0), shaped to broadcast against its inputs.

    Returns:
      A boolean array of shape ``(batch,) + (1,) * (x.ndim - 1)``: ``(batch, 1)``
      for features, ``(batch, 1, 1, 1)`` for images, ``(batch, 1, 1)`` for
      sequences.

    Example:
      >>> import jax.numpy as jnp
      >>> from lnjax import steps
      >>> m = steps.example_mask({"x": jnp.zeros((3, 8, 8, 2)), "y": jnp.zeros(3, int),
      ...                         "weight": jnp.array([1.0, 1.0, 0.0])})
      >>> m.shape, m.ravel().tolist()
      ((3, 1, 1, 1), [True, True, False])
    """
    ndim = jnp.ndim(batch["x"])
    w = _weights(batch)
    return (w > 0).reshape(w.shape[:1] + (1,) * (ndim - 1))


def _per_example(value: Any, n: int, what: str) -> jax.Array:
    if jnp.shape(value) != (n,):
        raise ValueError(f"loss_fn must return per-example {what} of shape ({n},) for a batch "
                         f"of {n}, got shape {jnp.shape(value)}; reduce every axis but the "
                         "first (e.g. mean over the features), not the batch.")
    return jnp.asarray(value).astype(jnp.float32)


def _loss_sums(state: TrainState, outputs: Any, batch: Batch
               ) -> tuple[jax.Array, jax.Array | None, jax.Array]:
    """Weighted sums of the losses and of the errors (``None`` if the loss gives none),
    and the weight."""
    w = _weights(batch)
    out = (state.loss_fn or classification_loss)(outputs, batch["y"])
    losses, errors = out if isinstance(out, tuple | list) else (out, None)
    loss_sum = jnp.sum(w * _per_example(losses, w.shape[0], "losses"))
    err_sum = None if errors is None else jnp.sum(w * _per_example(errors, w.shape[0], "errors"))
    return loss_sum, err_sum, jnp.sum(w)


def _apply(state: TrainState, params: Any, x: jax.Array, *, train: bool,
           mask: jax.Array | None = None, rng_fold: Any = None) -> tuple[Any, Any]:
    variables = {"params": params}
    if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
    kwargs: dict[str, Any] = {} if mask is None else {"mask": mask}
    if train and state.rng is not None:
        kwargs["rngs"] = step_rngs(state, rng_fold)
    if train and state.batch_stats:
        outputs, updates = state.apply_fn(variables, x, train=True, mutable=["batch_stats"],
                                          **kwargs)
        return outputs, updates["batch_stats"]
    return state.apply_fn(variables, x, train=train, **kwargs), state.batch_stats


def train_step(state: TrainState, batch: Batch, *, grad_reduce: Callable | None = None,
               rng_fold: Any = None) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on the weighted mean of ``state.loss_fn`` over ``batch``.

    When ``state.takes_mask``, the model is called with ``mask=`` the real
    examples (weight > 0) shaped ``(batch,) + (1,) * (x.ndim - 1)``
    (:func:`example_mask`), so masked batch norm leaves the padding out of its
    statistics; otherwise without ``mask``. In training mode the model gets
    ``rngs=`` the step's keys (:func:`step_rngs`), for dropout.

    Args:
      state: the current :class:`TrainState`.
      batch: ``{"x", "y"}`` and optionally ``"weight"``.
      grad_reduce: optional function applied to ``(grads, loss_sum, error_sum,
        weight_sum)`` sums before the update (the data-parallel step passes a
        ``psum``); ``error_sum`` is 0 when the loss gives no errors.
      rng_fold: optional integer folded into the step's RNG keys (e.g. the
        index of the device on a mesh, so that devices draw different masks).

    Returns:
      ``(new_state, {"loss", "error"})`` with the batch's mean loss and error
      rate (``{"loss"}`` alone when the loss gives no errors).

    Raises:
      ValueError: ``loss_fn`` does not return per-example values of shape ``(batch,)``.
    """
    mask = example_mask(batch) if state.takes_mask else None

    def objective(params):
        outputs, new_stats = _apply(state, params, batch["x"], train=True, mask=mask,
                                    rng_fold=rng_fold)
        loss_sum, err_sum, n = _loss_sums(state, outputs, batch)
        return loss_sum, (err_sum, n, new_stats)

    (loss_sum, (err_sum, n, new_stats)), grads = jax.value_and_grad(objective, has_aux=True)(
        state.params)
    has_errors = err_sum is not None
    if not has_errors:
        err_sum = jnp.zeros((), jnp.float32)
    if grad_reduce is not None:
        grads, loss_sum, err_sum, n = grad_reduce((grads, loss_sum, err_sum, n))
    n = jnp.maximum(n, 1.0)
    grads = jax.tree.map(lambda g: g / n, grads)
    new_state = state.apply_gradients(grads=grads, batch_stats=new_stats)
    metrics = {"loss": loss_sum / n}
    if has_errors:
        metrics["error"] = err_sum / n
    return new_state, metrics


def eval_step(state: TrainState, batch: Batch) -> dict[str, jax.Array]:
    """Sums of the loss and errors of ``batch`` in inference mode (running statistics).

    The model is called without ``mask`` (inference-mode batch norm uses its
    running statistics, so padding cannot reach the real examples) and without
    ``rngs``; the weights keep the padding out of the sums.

    Returns:
      ``{"loss_sum", "error_sum", "count"}`` (no ``"error_sum"`` when the loss
      gives no errors); padding (weight 0) counts for nothing.
    """
    outputs, _ = _apply(state, state.params, batch["x"], train=False)
    loss_sum, err_sum, n = _loss_sums(state, outputs, batch)
    if err_sum is None:
        return {"loss_sum": loss_sum, "count": n}
    return {"loss_sum": loss_sum, "error_sum": err_sum, "count": n}


def metric_names(state: TrainState, x: Any, y: Any) -> tuple[str, ...]:
    """The metrics the steps report for ``state``: ``("loss", "error")``, or ``("loss",)``
    when its ``loss_fn`` gives no errors.

    Found by tracing :func:`eval_step` on the first example of ``(x, y)``
    (``jax.eval_shape``: nothing is computed).

    Example:
      >>> import flax.linen as nn, jax.numpy as jnp, optax
      >>> from lnjax import steps
      >>> class Net(nn.Module):
      ...     @nn.compact
      ...     def __call__(self, x, *, train):
      ...         return nn.Dense(2)(x)
      >>> x, y = jnp.ones((4, 3)), jnp.zeros((4, 2))
      >>> state = steps.create_train_state(Net(), optax.sgd(0.1), x, seed=0)
      >>> steps.metric_names(state, x, jnp.zeros(4, int))
      ('loss', 'error')
      >>> mse = lambda out, target: ((out - target) ** 2).mean(-1)
      >>> steps.metric_names(state.replace(loss_fn=mse), x, y)
      ('loss',)
    """
    sums = jax.eval_shape(eval_step, state, {"x": np.asarray(x[:1]), "y": np.asarray(y[:1])})
    return ("loss", "error") if "error_sum" in sums else ("loss",)


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
              if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def all_finite(tree: Any) -> bool:
    """Whether every floating-point value in ``tree`` is finite (no NaN, no infinity).

    One compiled reduction over all leaves; works on global arrays replicated
    over several processes (every process must call it).

    Example:
      >>> import jax.numpy as jnp
      >>> from lnjax import steps
      >>> steps.all_finite({"w": jnp.ones(3), "n": jnp.arange(2)}), steps.all_finite([jnp.nan])
      (True, False)
    """
    return bool(_all_finite(tree))


def check_epoch_shapes(xb: Any, yb: Any) -> None:
    """Raises a ``ValueError`` unless ``xb`` is ``(steps, batch, ...)`` and ``yb`` ``(steps, batch, ...)``.

    Example:
      >>> import numpy as np
      >>> from lnjax import steps
      >>> steps.check_epoch_shapes(np.zeros((3, 4, 5)), np.zeros((3, 4)))
      >>> steps.check_epoch_shapes(np.zeros((3, 4, 5)), np.zeros((4, 3)))
      Traceback (most recent call last):
      ...
      ValueError: train_epoch: xb must be (steps, batch, ...) and yb (steps, batch, ...) with the same leading axes; got xb (3, 4, 5) and yb (4, 3).
    """  # noqa: E501
    xs, ys = np.shape(xb), np.shape(yb)
    if len(xs) < 2 or len(ys) < 2 or xs[:2] != ys[:2]:
        raise ValueError(f"train_epoch: xb must be (steps, batch, ...) and yb (steps, batch, ...) "
                         f"with the same leading axes; got xb {xs} and yb {ys}.")


def scan_epoch(state: TrainState, batches: Batch, *, report: Callable | None = None,
               report_every: int = 1000, report_when: Callable[[], Any] | None = None,
               sync: Callable[[TrainState], TrainState] | None = None,
               **step_kwargs: Any) -> tuple[TrainState, dict[str, jax.Array]]:
    """The body of :func:`train_epoch`, unjitted: ``lax.scan`` of :func:`train_step`.

    ``batches`` holds ``(steps, batch, ...)`` arrays; ``report_when`` (a
    traced boolean thunk) restricts the progress calls, e.g. to one device;
    ``sync`` is applied to the state after each step (the data-parallel epoch
    averages running statistics there); ``step_kwargs`` go to :func:`train_step`.
    """
    def body(state, inputs):
        i, batch = inputs
        state, metrics = train_step(state, batch, **step_kwargs)
        if sync is not None:
            state = sync(state)
        if report is not None:
            due = (i + 1) % report_every == 0
            if report_when is not None:
                due = due & report_when()
            jax.lax.cond(due, lambda: jax.debug.callback(report, i + 1), lambda: None)
        return state, metrics

    steps = jnp.arange(batches["y"].shape[0])
    return jax.lax.scan(body, state, (steps, batches))


@functools.partial(jax.jit, donate_argnums=0, static_argnames=("report_every", "report"))
def _train_epoch(state, xb, yb, *, report_every, report):
    return scan_epoch(state, {"x": xb, "y": yb}, report=report, report_every=report_every)


def train_epoch(state: TrainState, xb: jax.Array, yb: jax.Array, *,
                report: Callable[[Any], None] | None = None,
                report_every: int = 1000) -> tuple[TrainState, dict[str, jax.Array]]:
    """A whole epoch as one ``lax.scan`` of :func:`train_step`, compiled once per shape.

    ``state`` is donated: do not use it after the call.

    Args:
      state: the :class:`TrainState`.
      xb: inputs shaped ``(steps, batch, ...)``, ideally already on the device.
      yb: targets shaped ``(steps, batch, ...)`` (integer labels for the default loss).
      report: optional host function called with the number of steps done, every
        ``report_every`` steps, from inside the scan (for progress bars). Pass the
        same function object each epoch, or the epoch is compiled again.
      report_every: steps between calls of ``report``.

    Returns:
      ``(state, {"loss": (steps,), "error": (steps,)})``: the per-step metrics
      (no ``"error"`` when the loss gives no errors).
    """
    check_epoch_shapes(xb, yb)
    return _train_epoch(state, xb, yb, report_every=max(1, int(report_every)), report=report)


@jax.jit
def _eval_sums(state, batch):
    return eval_step(state, batch)


def _pad(a: Any, size: int) -> Any:
    """``a`` with zeros appended along its first axis up to ``size`` rows."""
    pad = size - np.shape(a)[0]
    if not pad:
        return a
    zeros = np.zeros((pad,) + tuple(np.shape(a)[1:]), np.asarray(a[:1]).dtype)
    return jnp.concatenate([jnp.asarray(a), zeros]) if isinstance(a, jax.Array) \
        else np.concatenate([np.asarray(a), zeros])


def evaluation_sums(state: TrainState, x: Any, y: Any, *, batch_size: int = 1000
                    ) -> dict[str, jax.Array]:
    """The sums :func:`evaluate` divides, on the device: ``{"loss_sum", "count"}`` and
    ``"error_sum"`` when the loss gives errors.

    The sums of disjoint parts of a split add up to the split's (up to float
    rounding of the loss), so a subset evaluated on its own and the rest of the
    split give the whole split's :func:`evaluate` through :func:`mean_metrics`.

    Args:
      state: the :class:`TrainState` (batch norm uses its running statistics).
      x: inputs ``(n, ...)``; y: targets ``(n, ...)`` (integer labels for the default loss).
      batch_size: examples per evaluation batch (the last one is padded).

    Example:
      >>> import flax.linen as nn, numpy as np, optax
      >>> class Net(nn.Module):
      ...     @nn.compact
      ...     def __call__(self, x, *, train):
      ...         return nn.Dense(2)(x)
      >>> x, y = np.ones((6, 3), np.float32), np.arange(6) % 2
      >>> state = create_train_state(Net(), optax.sgd(0.1), x, seed=0)
      >>> parts = [evaluation_sums(state, x[:2], y[:2]), evaluation_sums(state, x[2:], y[2:])]
      >>> whole = jax.tree.map(lambda a, b: a + b, *parts)
      >>> float(whole["count"]), mean_metrics(whole)["error"] == evaluate(state, x, y)["error"]
      (6.0, True)
    """
    if np.shape(y)[:1] != np.shape(x)[:1] or np.ndim(y) == 0 or np.shape(y)[0] == 0:
        raise ValueError(f"evaluate: x (n, ...) and y (n, ...) with n > 0; got x {np.shape(x)} "
                         f"and y {np.shape(y)}.")
    batch_size = checks.check_int(batch_size, fn="evaluate", name="batch_size", minimum=1)
    n = np.shape(y)[0]
    bs = int(min(batch_size, n))
    # One compiled step per batch shape, whatever the split's size: a split of 5,000 and
    # one of 10,000 (and a curve's subset) share it; the last batch is padded.
    total: dict[str, Any] | None = None
    for start in range(0, n, bs):
        k = min(bs, n - start)
        weight = (np.arange(bs) < k).astype(np.float32)
        m = _eval_sums(state, {"x": _pad(x[start:start + k], bs),
                               "y": _pad(y[start:start + k], bs), "weight": weight})
        total = m if total is None else jax.tree.map(jnp.add, total, m)
    assert total is not None  # n > 0 was checked above
    return total


def mean_metrics(sums: Mapping[str, Any]) -> dict[str, float]:
    """``{"loss": float, "error": float}`` (or ``{"loss": float}``) of the sums of
    :func:`evaluation_sums` (or of several of them added)."""
    out = {"loss": float(sums["loss_sum"] / sums["count"])}
    if "error_sum" in sums:
        out["error"] = float(sums["error_sum"] / sums["count"])
    return out


def evaluate(state: TrainState, x: Any, y: Any, *, batch_size: int = 1000) -> dict[str, float]:
    """Mean loss and error rate of the model on ``(x, y)`` (``state.loss_fn``; the error
    only when the loss gives one).

    The batches run one by one through one compiled :func:`eval_step` (per
    model and batch shape, so splits of any size share it), their sums added on
    the device (:func:`evaluation_sums`). On a CPU a batch of a few hundred
    examples whose activations stay in the caches can be faster per example
    than a batch of thousands.

    Args:
      state: the :class:`TrainState` (batch norm uses its running statistics).
      x: inputs ``(n, ...)``; y: targets ``(n, ...)`` (integer labels for the default loss).
      batch_size: examples per evaluation batch (the last one is padded).

    Returns:
      ``{"loss": float, "error": float}``, or ``{"loss": float}``.
    """
    return mean_metrics(evaluation_sums(state, x, y, batch_size=batch_size))


def batches(images: Any, labels: Any, batch_size: int, *, seed: int, epoch: int = 0,
            drop_remainder: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """One epoch, shuffled with a seed and stacked into batches for a ``lax.scan``.

    The order is ``np.random.default_rng((seed, epoch)).permutation(N)``: the
    same ``seed`` and ``epoch`` give the same batches, another ``epoch`` another
    order. With ``drop_remainder=True`` the last ``N % batch_size`` examples of
    the shuffled order are left out (different ones each epoch); with
    ``drop_remainder=False`` ``batch_size`` must divide ``N`` (a ``ValueError``
    otherwise), so that every example appears exactly once. Nothing is padded.

    Args:
      images: an array with ``N`` examples on its first axis.
      labels: an array with the same ``N`` examples on its first axis.
      batch_size: examples per batch, ``1 <= batch_size <= N``.
      seed: a non-negative int.
      epoch: a non-negative int, mixed into the seed.
      drop_remainder: leave out the examples that do not fill a last batch
        (else require that ``batch_size`` divides ``N``).

    Returns:
      ``(xb, yb)``: NumPy arrays shaped ``(N // batch_size, batch_size,
      *images.shape[1:])`` and ``(N // batch_size, batch_size,
      *labels.shape[1:])``, with the input dtypes.

    Example:
      >>> import numpy as np
      >>> xb, yb = batches(np.zeros((10, 28, 28)), np.arange(10), 4, seed=0)
      >>> xb.shape, yb.shape
      ((2, 4, 28, 28), (2, 4))
    """
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim == 0 or labels.ndim == 0:
        raise ValueError(f"batches: images and labels need a leading examples axis; got shapes "
                         f"{images.shape} and {labels.shape}.")
    n = images.shape[0]
    if labels.shape[0] != n:
        raise ValueError(f"batches: images (shape {images.shape}) and labels (shape "
                         f"{labels.shape}) must have the same number of examples.")
    batch_size = checks.check_int(batch_size, fn="batches", name="batch_size", minimum=1)
    if batch_size > n:
        raise ValueError(f"batches: batch_size={batch_size} is larger than the {n} examples.")
    seed = checks.check_int(seed, fn="batches", name="seed", minimum=0)
    epoch = checks.check_int(epoch, fn="batches", name="epoch", minimum=0)
    if not drop_remainder and n % batch_size:
        raise ValueError(
            f"batches: batch_size={batch_size} does not divide the {n} examples and "
            f"drop_remainder=False; pass drop_remainder=True to leave out {n % batch_size} "
            f"examples per epoch, or a batch_size that divides {n}.")
    num_batches = n // batch_size
    order = np.random.default_rng((seed, epoch)).permutation(n)
    index = order[: num_batches * batch_size].reshape(num_batches, batch_size)
    return images[index], labels[index]
