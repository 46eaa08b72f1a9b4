"""Training: a train state with ``batch_stats``, pure jitted steps, whole-epoch scans, orbax.

The pieces research code reuses around any Flax Linen classifier whose
``__call__(x, *, train)`` returns logits:

* :class:`TrainState` -- flax's train state plus the ``batch_stats`` collection.
* :func:`train_step` / :func:`eval_step` -- pure functions of (state, batch).
* :func:`train_epoch` -- a whole epoch as one ``lax.scan`` over device-resident
  batches: no Python loop per step (at batch size 4 an MNIST epoch is 13,750
  steps), with an optional progress callback every ``report_every`` steps.
* :func:`evaluate` -- loss and error over a whole split, padded and weighted.
* :class:`Checkpointer` -- orbax save/restore of the state and the run's
  history, so an interrupted run resumes exactly where it stopped.
* :func:`fit` -- the loop the experiments share: epochs, evaluation,
  checkpoints, a progress bar.

A batch is a dict ``{"x": inputs, "y": int labels}`` with an optional
``"weight"`` (1 for a real example, 0 for padding). Everything is determined by
the seed: the initial parameters by ``jax.random.key(seed)``, the order of the
batches by :func:`lnjax.data.batches` with ``(seed, epoch)``.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

Batch = Mapping[str, jax.Array]


class TrainState(train_state.TrainState):
    """flax's :class:`~flax.training.train_state.TrainState` with ``batch_stats``.

    ``batch_stats`` holds the running statistics of batch-norm layers (an empty
    dict for models without them); :func:`train_step` updates it.
    """

    batch_stats: Any = None


def create_train_state(model: Any, tx: optax.GradientTransformation, sample_x: Any, *,
                       seed: int) -> TrainState:
    """Initializes ``model`` on ``sample_x`` with ``jax.random.key(seed)``.

    Args:
      model: a Linen module called as ``model.apply(variables, x, train=...)``.
      tx: the optax optimizer.
      sample_x: an input batch (only its shape and dtype matter).
      seed: the integer seed of the initial parameters.

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
      >>> int(state.step), sorted(state.params["Dense_0"])
      (0, ['bias', 'kernel'])
    """
    variables = model.init(jax.random.key(seed), jnp.asarray(sample_x), train=False)
    return TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                             batch_stats=variables.get("batch_stats", {}))


def _weights(batch: Batch) -> jax.Array:
    w = batch.get("weight")
    return jnp.ones(batch["y"].shape, jnp.float32) if w is None else w.astype(jnp.float32)


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


def train_step(state: TrainState, batch: Batch, *, grad_reduce: Callable | None = None,
               pass_mask: bool = False) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on the mean negative log-likelihood of ``batch``.

    Args:
      state: the current :class:`TrainState`.
      batch: ``{"x", "y"}`` and optionally ``"weight"``.
      grad_reduce: optional function applied to ``(grads, loss_sum, weight_sum)``
        sums before the update (the data-parallel step passes a ``psum``).
      pass_mask: pass ``mask=weight > 0`` to the model (for masked batch norm).

    Returns:
      ``(new_state, {"loss", "error"})`` with the batch's mean loss and error rate.
    """
    mask = (_weights(batch) > 0)[:, None] if pass_mask else None

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

    Returns:
      ``{"loss_sum", "error_sum", "count"}``; padding (weight 0) counts for nothing.
    """
    logits, _ = _apply(state, state.params, batch["x"], train=False)
    loss_sum, err_sum, n = _loss_and_errors(logits, batch)
    return {"loss_sum": loss_sum, "error_sum": err_sum, "count": n}


def _check_epoch(xb: Any, yb: Any) -> None:
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
    _check_epoch(xb, yb)
    return _train_epoch(state, xb, yb, report_every=max(1, int(report_every)), report=report)


@functools.partial(jax.jit, static_argnames=("batch_size",))
def _evaluate(state, x, y, *, batch_size):
    n = y.shape[0]
    steps = -(-n // batch_size)
    pad = steps * batch_size - n
    w = jnp.concatenate([jnp.ones((n,), jnp.float32), jnp.zeros((pad,), jnp.float32)])
    x = jnp.concatenate([x, jnp.zeros((pad,) + x.shape[1:], x.dtype)])
    y = jnp.concatenate([y, jnp.zeros((pad,), y.dtype)])
    shape = (steps, batch_size)

    def body(total, batch):
        m = eval_step(state, batch)
        return jax.tree.map(jnp.add, total, m), None

    zero = {"loss_sum": 0.0, "error_sum": 0.0, "count": 0.0}
    batches = {"x": x.reshape(shape + x.shape[1:]), "y": y.reshape(shape),
               "weight": w.reshape(shape)}
    total, _ = jax.lax.scan(body, jax.tree.map(jnp.float32, zero), batches)
    return {"loss": total["loss_sum"] / total["count"],
            "error": total["error_sum"] / total["count"]}


def evaluate(state: TrainState, x: Any, y: Any, *, batch_size: int = 1000) -> dict[str, float]:
    """Mean negative log-likelihood and error rate of the model on ``(x, y)``.

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
    bs = int(min(batch_size, np.shape(y)[0]))
    out = _evaluate(state, jnp.asarray(x), jnp.asarray(y), batch_size=bs)
    return {k: float(v) for k, v in out.items()}


class Checkpointer:
    """Saves and restores a :class:`TrainState` and a JSON history with orbax.

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
            it provides the model, the optimizer and the shapes.
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


def _new_history() -> dict[str, list]:
    keys = ("epoch", "steps", "train_loss", "train_error", "validation_loss",
            "validation_error", "test_loss", "test_error", "seconds", "step_loss")
    return {k: [] for k in keys}


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
    resumes after its latest epoch and the result equals an uninterrupted run.

    Args:
      state: the initial :class:`TrainState`.
      train: ``(x, y)`` training arrays.
      epochs: total number of epochs (including any already done).
      batch_size: examples per step (the remainder of each epoch is dropped).
      seed: the seed of the batch order.
      evals: ``{"validation": (x, y), "test": (x, y)}``: splits evaluated after
        each epoch (recorded as ``<name>_loss`` and ``<name>_error``).
      checkpoint_dir: folder for orbax checkpoints (``None``: no checkpoints).
      progress: show a tqdm progress bar over the steps.
      desc: the bar's label.
      loss_points: how many points of the step-by-step training loss to record
        per epoch (``step_loss``, for plots against steps).
      on_epoch: optional ``f(epoch, history)`` called after each epoch.
      mesh: a mesh from :func:`lnjax.parallel.make_mesh`: each epoch runs
        data-parallel over it (:func:`lnjax.parallel.train_epoch`); ``None``
        or a one-device mesh: :func:`train_epoch` on the default device.

    Returns:
      ``(state, history)``: per epoch ``epoch``, ``steps`` (total steps done),
      ``train_loss``/``train_error`` (means over the epoch's steps), the
      evaluations, ``seconds`` (cumulative training wall time) and ``step_loss``
      (``[step, loss]`` pairs).
    """
    from lnjax import data

    x, y = train
    history = _new_history()
    ckpt = Checkpointer(checkpoint_dir) if checkpoint_dir is not None else None
    start = 0
    if ckpt is not None and ckpt.latest() is not None:
        state, history = ckpt.restore(state)
        start = int(ckpt.latest())
    steps_per_epoch = len(y) // batch_size
    bar = None
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
            if mesh is not None and mesh.devices.size > 1:
                from lnjax import parallel

                xb, yb = parallel.host_shard(xb.swapaxes(0, 1), yb.swapaxes(0, 1))
                state, metrics = parallel.train_epoch(
                    state, xb.swapaxes(0, 1), yb.swapaxes(0, 1), mesh,
                    report=report if bar else None, report_every=report_every)
            else:
                state, metrics = train_epoch(state, jax.device_put(xb), jax.device_put(yb),
                                             report=report if bar else None,
                                             report_every=report_every)
            loss = np.asarray(metrics["loss"])
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
            for name, (ex, ey) in (evals or {}).items():
                m = evaluate(state, ex, ey)
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
