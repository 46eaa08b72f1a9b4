"""Steps and epochs: a train state with ``batch_stats``, pure steps, whole-epoch scans.

The lowest layer of training, imported by :mod:`lnjax.parallel` (the
data-parallel epoch) and by :mod:`lnjax.training` (the fit loop, which
re-exports every public name here). This module imports no other lnjax module.

It holds the pieces research code reuses around any Flax Linen classifier whose
``__call__(x, *, train)`` (or ``__call__(x, *, train, mask)``) returns logits:

* :class:`TrainState` -- flax's train state plus the ``batch_stats`` collection
  and the static ``takes_mask`` flag.
* :func:`create_train_state` -- the model initialized from a seed.
* :func:`train_step` / :func:`eval_step` -- pure functions of (state, batch).
* :func:`scan_epoch` -- the unjitted body of an epoch: ``lax.scan`` of
  :func:`train_step` (the data-parallel epoch runs it inside ``shard_map``).
* :func:`train_epoch` -- a whole epoch as one jitted ``lax.scan`` over
  device-resident batches: no Python loop per step (at batch size 4 an MNIST
  epoch is 13,750 steps), with an optional progress callback every
  ``report_every`` steps.
* :func:`check_epoch_shapes` -- the ``(steps, batch, ...)`` shape check every
  epoch runs first; :func:`all_finite` -- the NaN/infinity check before a save.
* :func:`evaluate` -- loss and error over a whole split, padded and weighted.

A batch is a dict ``{"x": inputs, "y": int labels}`` with an optional
``"weight"`` (1 for a real example, 0 for padding). Everything is determined by
the seed: the initial parameters by ``jax.random.key(seed)``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from flax.training import train_state

from lnjax import _checks as checks

__all__ = ["Batch", "TrainState", "all_finite", "batches", "check_epoch_shapes",
           "create_train_state", "eval_step", "evaluate", "example_mask", "scan_epoch",
           "train_epoch", "train_step"]

Batch = Mapping[str, jax.Array]
"""A batch: ``{"x": inputs, "y": int labels}``, with an optional ``"weight"`` (1 for a real
example, 0 for padding)."""


class TrainState(train_state.TrainState):
    """flax's :class:`~flax.training.train_state.TrainState` with ``batch_stats``.

    ``batch_stats`` holds the running statistics of batch-norm layers (an empty
    dict for models without them); :func:`train_step` updates it.
    ``takes_mask`` (static, not a pytree leaf, so never saved in a checkpoint)
    says whether the model's ``__call__`` takes ``mask=``: a boolean array of
    the input's rank, ``True`` for the real examples of a padded batch, for
    batch norm to leave the padding out of its statistics.
    """

    batch_stats: Any = None
    takes_mask: bool = struct.field(pytree_node=False, default=False)


def create_train_state(model: Any, tx: optax.GradientTransformation, sample_x: Any, *,
                       seed: int, takes_mask: bool = False) -> TrainState:
    """Initializes ``model`` on ``sample_x`` with ``jax.random.key(seed)``.

    Args:
      model: a Linen module called as ``model.apply(variables, x, train=...)``.
      tx: the optax optimizer.
      sample_x: an input batch (only its shape and dtype matter).
      seed: the integer seed of the initial parameters.
      takes_mask: whether the model's ``__call__`` takes ``mask=`` (the real
        examples of a padded batch, for masked batch norm): :func:`train_step`
        then passes it on every step.

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
    variables = model.init(jax.random.key(seed), jnp.asarray(sample_x), train=False)
    return TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                             batch_stats=variables.get("batch_stats", {}),
                             takes_mask=takes_mask)


def _weights(batch: Batch) -> jax.Array:
    w = batch.get("weight")
    return jnp.ones(batch["y"].shape, jnp.float32) if w is None else w.astype(jnp.float32)


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


def _loss_and_errors(logits: jax.Array, batch: Batch) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Weighted sums of the negative log-likelihood and of the errors, and the weight."""
    w = _weights(batch)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32),
                                                          batch["y"])
    wrong = (jnp.argmax(logits, -1) != batch["y"]).astype(jnp.float32)
    return jnp.sum(w * nll), jnp.sum(w * wrong), jnp.sum(w)


def _apply(state: TrainState, params: Any, x: jax.Array, *, train: bool,
           mask: jax.Array | None = None) -> tuple[jax.Array, Any]:
    variables = {"params": params}
    if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
    kwargs = {} if mask is None else {"mask": mask}
    if train and state.batch_stats:
        logits, updates = state.apply_fn(variables, x, train=True, mutable=["batch_stats"],
                                         **kwargs)
        return logits, updates["batch_stats"]
    return state.apply_fn(variables, x, train=train, **kwargs), state.batch_stats


def train_step(state: TrainState, batch: Batch, *, grad_reduce: Callable | None = None
               ) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on the mean negative log-likelihood of ``batch``.

    When ``state.takes_mask``, the model is called with ``mask=`` the real
    examples (weight > 0) shaped ``(batch,) + (1,) * (x.ndim - 1)``
    (:func:`example_mask`), so masked batch norm leaves the padding out of its
    statistics; otherwise without ``mask``.

    Args:
      state: the current :class:`TrainState`.
      batch: ``{"x", "y"}`` and optionally ``"weight"``.
      grad_reduce: optional function applied to ``(grads, loss_sum, error_sum,
        weight_sum)`` sums before the update (the data-parallel step passes a
        ``psum``).

    Returns:
      ``(new_state, {"loss", "error"})`` with the batch's mean loss and error rate.
    """
    mask = example_mask(batch) if state.takes_mask else None

    def loss_fn(params):
        logits, new_stats = _apply(state, params, batch["x"], train=True, mask=mask)
        loss_sum, err_sum, n = _loss_and_errors(logits, batch)
        return loss_sum, (err_sum, n, new_stats)

    (loss_sum, (err_sum, n, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    if grad_reduce is not None:
        grads, loss_sum, err_sum, n = grad_reduce((grads, loss_sum, err_sum, n))
    n = jnp.maximum(n, 1.0)
    grads = jax.tree.map(lambda g: g / n, grads)
    new_state = state.apply_gradients(grads=grads, batch_stats=new_stats)
    return new_state, {"loss": loss_sum / n, "error": err_sum / n}


def eval_step(state: TrainState, batch: Batch) -> dict[str, jax.Array]:
    """Sums of the loss and errors of ``batch`` in inference mode (running statistics).

    The model is called without ``mask`` (inference-mode batch norm uses its
    running statistics, so padding cannot reach the real examples); the
    weights keep the padding out of the sums.

    Returns:
      ``{"loss_sum", "error_sum", "count"}``; padding (weight 0) counts for nothing.
    """
    logits, _ = _apply(state, state.params, batch["x"], train=False)
    loss_sum, err_sum, n = _loss_and_errors(logits, batch)
    return {"loss_sum": loss_sum, "error_sum": err_sum, "count": n}


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
    """Raises a ``ValueError`` unless ``xb`` is ``(steps, batch, ...)`` and ``yb`` ``(steps, batch)``.

    Example:
      >>> import numpy as np
      >>> from lnjax import steps
      >>> steps.check_epoch_shapes(np.zeros((3, 4, 5)), np.zeros((3, 4)))
      >>> steps.check_epoch_shapes(np.zeros((3, 4, 5)), np.zeros((4, 3)))
      Traceback (most recent call last):
      ...
      ValueError: train_epoch: xb must be (steps, batch, ...) and yb (steps, batch) with the same leading axes; got xb (3, 4, 5) and yb (4, 3).
    """  # noqa: E501
    xs, ys = np.shape(xb), np.shape(yb)
    if len(ys) != 2 or xs[:2] != ys:
        raise ValueError(f"train_epoch: xb must be (steps, batch, ...) and yb (steps, batch) "
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
      yb: integer labels shaped ``(steps, batch)``.
      report: optional host function called with the number of steps done, every
        ``report_every`` steps, from inside the scan (for progress bars). Pass the
        same function object each epoch, or the epoch is compiled again.
      report_every: steps between calls of ``report``.

    Returns:
      ``(state, {"loss": (steps,), "error": (steps,)})``: the per-step metrics.
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


def evaluate(state: TrainState, x: Any, y: Any, *, batch_size: int = 1000) -> dict[str, float]:
    """Mean negative log-likelihood and error rate of the model on ``(x, y)``.

    The batches run one by one through one compiled :func:`eval_step` (per
    model and batch shape, so splits of any size share it), their sums added on
    the device.

    Args:
      state: the :class:`TrainState` (batch norm uses its running statistics).
      x: inputs ``(n, ...)``; y: integer labels ``(n,)``.
      batch_size: examples per evaluation batch (the last one is padded).

    Returns:
      ``{"loss": float, "error": float}``.
    """
    if np.shape(y)[:1] != np.shape(x)[:1] or np.ndim(y) != 1 or np.shape(y)[0] == 0:
        raise ValueError(f"evaluate: x (n, ...) and y (n,) with n > 0; got x {np.shape(x)} "
                         f"and y {np.shape(y)}.")
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
    return {"loss": float(total["loss_sum"] / total["count"]),
            "error": float(total["error_sum"] / total["count"])}


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
