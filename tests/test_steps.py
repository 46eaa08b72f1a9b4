"""lnjax.steps: batches (one shuffled epoch stacked for a lax.scan), the losses, dropout's
RNG streams and NNX models in the steps."""

import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from lnjax import nnx as lnnx
from lnjax import steps
from lnjax.steps import batches


def test_batches_shapes_dtypes_and_pairing():
    images = np.arange(12, dtype=np.float32)[:, None, None] * np.ones((12, 28, 28), np.float32)
    labels = np.arange(12, dtype=np.int32)
    xb, yb = batches(images, labels, 4, seed=0)
    assert xb.shape == (3, 4, 28, 28) and yb.shape == (3, 4)
    assert xb.dtype == np.float32 and yb.dtype == np.int32
    np.testing.assert_array_equal(xb[:, :, 5, 7], yb)  # each image stays with its label
    assert sorted(yb.ravel().tolist()) == list(range(12))  # every example exactly once


def test_batches_order_is_the_documented_permutation():
    labels = np.arange(10)
    xb, yb = batches(labels * 10, labels, 5, seed=3, epoch=2, drop_remainder=False)
    expected = np.random.default_rng((3, 2)).permutation(10).reshape(2, 5)
    np.testing.assert_array_equal(yb, expected)
    np.testing.assert_array_equal(xb, expected * 10)


def test_batches_seeded_determinism():
    x, y = np.zeros((100, 3)), np.arange(100)
    first = batches(x, y, 10, seed=1, epoch=0)[1]
    np.testing.assert_array_equal(first, batches(x, y, 10, seed=1, epoch=0)[1])
    assert not np.array_equal(first, batches(x, y, 10, seed=1, epoch=1)[1])
    assert not np.array_equal(first, batches(x, y, 10, seed=2, epoch=0)[1])
    assert not np.array_equal(first.ravel(), y)  # shuffled


def test_batches_drop_remainder():
    y = np.arange(10)
    xb, yb = batches(y, y, 4, seed=0)
    assert yb.shape == (2, 4) and len(set(yb.ravel().tolist())) == 8
    dropped = {frozenset(set(range(10)) - set(batches(y, y, 4, seed=0, epoch=e)[1].ravel()))
               for e in range(5)}
    assert len(dropped) > 1  # a different remainder each epoch
    with pytest.raises(ValueError, match="does not divide the 10 examples"):
        batches(y, y, 4, seed=0, drop_remainder=False)


def test_batches_feed_lax_scan():
    y = np.arange(12, dtype=np.int32)
    xb, yb = batches(y.astype(np.float32), y, 3, seed=0)
    total, _ = jax.lax.scan(lambda c, b: (c + jnp.sum(b[0]) + jnp.sum(b[1]), None),
                            jnp.float32(0), (xb, yb))
    assert float(total) == 2 * sum(range(12))


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(batch_size=0), ValueError, "batch_size must be >= 1"),
    (dict(batch_size=11), ValueError, "larger than the 10 examples"),
    (dict(batch_size=2.0), TypeError, "batch_size must be an int"),
    (dict(batch_size=True), TypeError, "batch_size must be an int"),
    (dict(batch_size=2, seed=-1), ValueError, "seed must be >= 0"),
    (dict(batch_size=2, epoch=-1), ValueError, "epoch must be >= 0"),
    (dict(batch_size=2, labels=np.arange(9)), ValueError, "same number of examples"),
    (dict(batch_size=2, labels=np.int32(3)), ValueError, "leading examples axis"),
])
def test_batches_errors(kwargs, err, match):
    labels = kwargs.pop("labels", np.arange(10))
    kwargs.setdefault("seed", 0)
    with pytest.raises(err, match=match):
        batches(np.zeros((10, 2)), labels, **kwargs)


# ------------------------------------------------ losses, dropout and NNX models in the steps

RNG = np.random.default_rng(0)
X = RNG.normal(size=(16, 6)).astype(np.float32)
LABELS = RNG.integers(0, 3, 16).astype(np.int32)
TARGETS = np.stack([X[:, :3].sum(1), X[:, 3:].sum(1)], 1).astype(np.float32)  # (16, 2)


class Dense(nn.Module):
    """6 -> ``out`` with optional dropout before the output layer."""

    out: int = 3
    rate: float = 0.0

    @nn.compact
    def __call__(self, x, *, train):
        x = nn.relu(nn.Dense(8)(x))
        x = nn.Dropout(self.rate, deterministic=not train)(x)
        return nn.Dense(self.out)(x)


def mse(outputs, targets):
    return jnp.mean((outputs - targets) ** 2, axis=-1)


def mse_and_misses(outputs, targets):
    """The squared error, and an "error" where any output is off by more than 1."""
    return mse(outputs, targets), jnp.any(jnp.abs(outputs - targets) > 1, -1)


def test_the_default_loss_is_classification_loss():
    default = steps.create_train_state(Dense(), optax.sgd(0.1), X[:1], seed=0)
    explicit = steps.create_train_state(Dense(), optax.sgd(0.1), X[:1], seed=0,
                                        loss_fn=steps.classification_loss)
    batch = {"x": X, "y": LABELS}
    step = jax.jit(steps.train_step)
    (s1, m1), (s2, m2) = step(default, batch), step(explicit, batch)
    logits = default.apply_fn({"params": default.params}, X, train=True)
    expect = optax.softmax_cross_entropy_with_integer_labels(logits, LABELS).mean()
    np.testing.assert_allclose(m1["loss"], expect, rtol=1e-6)
    np.testing.assert_allclose(m1["error"], np.mean(np.argmax(logits, -1) != LABELS), rtol=1e-6)
    assert (m1["loss"], m1["error"]) == (m2["loss"], m2["error"])
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_regression_loss_on_float_targets_reports_the_loss_alone():
    state = steps.create_train_state(Dense(out=2), optax.sgd(0.1), X[:1], seed=0, loss_fn=mse)
    w = np.array([1.0] * 12 + [0.0] * 4, np.float32)
    new, m = jax.jit(steps.train_step)(state, {"x": X, "y": TARGETS, "weight": w})
    assert set(m) == {"loss"}
    out = state.apply_fn({"params": state.params}, X, train=True)
    np.testing.assert_allclose(m["loss"], np.mean(np.mean((out - TARGETS) ** 2, -1)[:12]),
                               rtol=1e-6)
    assert int(new.step) == 1
    assert steps.metric_names(state, X, TARGETS) == ("loss",)
    assert set(steps.evaluate(state, X, TARGETS, batch_size=5)) == {"loss"}
    np.testing.assert_allclose(steps.evaluate(state, X, TARGETS, batch_size=5)["loss"],
                               float(np.mean((out - TARGETS) ** 2)), rtol=1e-5)
    epoch_state, metrics = steps.train_epoch(state, X.reshape(4, 4, 6), TARGETS.reshape(4, 4, 2))
    assert set(metrics) == {"loss"} and metrics["loss"].shape == (4,)
    assert int(epoch_state.step) == 4


def test_a_loss_with_errors_reports_them():
    state = steps.create_train_state(Dense(out=2), optax.sgd(0.1), X[:1], seed=0,
                                     loss_fn=mse_and_misses)
    _, m = jax.jit(steps.train_step)(state, {"x": X, "y": TARGETS})
    out = state.apply_fn({"params": state.params}, X, train=True)
    np.testing.assert_allclose(m["error"], np.mean(np.any(np.abs(out - TARGETS) > 1, -1)))
    assert steps.metric_names(state, X, TARGETS) == ("loss", "error")
    assert set(steps.evaluate(state, X, TARGETS)) == {"loss", "error"}


def test_a_loss_that_is_not_per_example_is_refused():
    state = steps.create_train_state(Dense(out=2), optax.sgd(0.1), X[:1], seed=0,
                                     loss_fn=lambda out, y: jnp.mean((out - y) ** 2))
    with pytest.raises(ValueError, match=r"per-example losses of shape \(16,\).* got shape \(\)"):
        steps.train_step(state, {"x": X, "y": TARGETS})
    with pytest.raises(TypeError, match="loss_fn must be callable"):
        steps.create_train_state(Dense(), optax.sgd(0.1), X[:1], seed=0, loss_fn="mse")
    with pytest.raises(TypeError, match="rng_streams must be strings"):
        steps.create_train_state(Dense(), optax.sgd(0.1), X[:1], seed=0, rng_streams=(1,))


def test_epoch_shapes_take_targets_of_any_rank():
    steps.check_epoch_shapes(np.zeros((3, 4, 6)), np.zeros((3, 4, 2)))
    with pytest.raises(ValueError, match="xb must be"):
        steps.check_epoch_shapes(np.zeros((3, 4, 6)), np.zeros((3, 5, 2)))


def test_dropout_masks_follow_the_seed_and_the_step():
    """A Linen model with nn.Dropout trains (no InvalidRngError); its masks are a function of
    the seed and the step: the same state gives the same step, another step or seed another."""
    state = steps.create_train_state(Dense(rate=0.5), optax.sgd(0.1), X[:1], seed=0)
    batch = {"x": X, "y": LABELS}
    step = jax.jit(steps.train_step)
    loss = float(step(state, batch)[1]["loss"])
    assert float(step(state, batch)[1]["loss"]) == loss
    assert float(step(state.replace(step=1), batch)[1]["loss"]) != loss
    other = steps.create_train_state(Dense(rate=0.5), optax.sgd(0.1), X[:1], seed=1)
    other = other.replace(params=state.params)  # the same parameters, another seed's masks
    assert float(step(other, batch)[1]["loss"]) != loss
    # Inference mode draws nothing: evaluation is the deterministic model's.
    logits = state.apply_fn({"params": state.params}, X, train=False)
    expect = optax.softmax_cross_entropy_with_integer_labels(logits, LABELS).mean()
    np.testing.assert_allclose(steps.evaluate(state, X, LABELS)["loss"], expect, rtol=1e-5)


class NNXNet(nnx.Module):
    """An NNX classifier with lnjax's NNX batch norm (masked), dropout and a list of layers."""

    def __init__(self, rngs, rate=0.0):
        self.layers = nnx.List([nnx.Linear(6, 8, rngs=rngs), nnx.Linear(8, 3, rngs=rngs)])
        self.norm = lnnx.BatchNorm(8, momentum=0.9, rngs=rngs)
        self.drop = nnx.Dropout(rate, rngs=rngs)

    def __call__(self, x, mask=None):
        h = nnx.relu(self.norm(self.layers[0](x), mask=mask))
        return self.layers[1](self.drop(h))


def test_an_nnx_model_trains_and_updates_its_batch_statistics():
    model = NNXNet(nnx.Rngs(0))
    kernel = np.asarray(model.layers[0].kernel[...])
    state = steps.create_train_state(model, optax.adam(0.05), X[:1], seed=0, takes_mask=True)
    assert isinstance(state.apply_fn.__self__, steps.NNXModel)
    assert set(state.params) == {"layers", "norm"} and set(state.batch_stats) == {"norm"}
    np.testing.assert_array_equal(state.params["layers"][0]["kernel"], kernel)
    w = np.array([1.0] * 12 + [0.0] * 4, np.float32)
    new, m = jax.jit(steps.train_step)(state, {"x": X, "y": LABELS, "weight": w})
    # Training-mode batch norm over the 12 real examples: the running mean moves by 10% of
    # their mean.
    h = X[:12] @ kernel + np.asarray(model.layers[0].bias[...])
    np.testing.assert_allclose(new.batch_stats["norm"]["mean"], 0.1 * h.mean(0), rtol=1e-4,
                               atol=1e-6)
    assert set(m) == {"loss", "error"} and int(new.step) == 1
    assert not np.allclose(new.params["layers"][0]["kernel"], kernel)
    trained = steps.nnx_module(new)
    np.testing.assert_array_equal(trained.norm.mean[...], new.batch_stats["norm"]["mean"])
    np.testing.assert_array_equal(model.layers[0].kernel[...], kernel)  # the original is kept
    # Inference mode is the module's eval mode: running statistics.
    trained.eval()
    logits = state.apply_fn({"params": new.params, "batch_stats": new.batch_stats}, X,
                            train=False)
    np.testing.assert_allclose(logits, trained(X), rtol=1e-5, atol=1e-6)


def test_nnx_dropout_is_reseeded_from_the_step():
    state = steps.create_train_state(NNXNet(nnx.Rngs(0), rate=0.5), optax.sgd(0.1), X[:1],
                                     seed=0)
    batch = {"x": X, "y": LABELS}
    step = jax.jit(steps.train_step)
    loss = float(step(state, batch)[1]["loss"])
    assert float(step(state, batch)[1]["loss"]) == loss
    assert float(step(state.replace(step=1), batch)[1]["loss"]) != loss


def test_nnx_adapter_errors():
    linen = steps.create_train_state(Dense(), optax.sgd(0.1), X[:1], seed=0)
    with pytest.raises(TypeError, match="not created from a flax.nnx.Module"):
        steps.nnx_module(linen)
    with pytest.raises(TypeError, match="expected a flax.nnx.Module"):
        steps.NNXModel(Dense())


class Wide(nn.Module):
    """A module whose field is a list: not hashable."""

    widths: list

    @nn.compact
    def __call__(self, x, *, train):
        return nn.Dense(self.widths[-1])(x)


def test_states_of_equal_models_share_the_compiled_steps(caplog):
    """jit keys its cache on the state's static fields: equal models (and one tx object) give
    equal ones, another model does not; a module that cannot be hashed compares by identity."""
    tx = optax.sgd(0.1)

    def state(model, seed=0):
        return steps.create_train_state(model, tx, X[:1], seed=seed)

    structure = jax.tree.structure
    a, b = state(Dense(), 0), state(Dense(), 1)
    assert a.apply_fn == b.apply_fn and hash(a.apply_fn) == hash(b.apply_fn)
    assert structure(a) == structure(b)
    assert structure(a) != structure(state(Dense(out=4)))
    assert structure(a) != structure(steps.create_train_state(Dense(), optax.sgd(0.1), X[:1],
                                                              seed=0))  # another tx
    model = Wide([3])
    assert state(model).apply_fn == state(model).apply_fn != state(Wide([3])).apply_fn
    # apply_fn is the model's apply.
    np.testing.assert_array_equal(a.apply_fn({"params": a.params}, X, train=False),
                                  Dense().apply({"params": a.params}, X, train=False))
    # One compilation for the epochs of two equal models (a shape no other test uses).
    xb, yb = X[None, :5], LABELS[None, :5]
    with jax.log_compiles(), caplog.at_level(logging.WARNING, logger="jax"):
        steps.train_epoch(state(Dense(out=5)), xb, yb)
        steps.train_epoch(state(Dense(out=5), 1), xb, yb)
    compiled = [r for r in caplog.records
                if r.getMessage().startswith("Compiling jit(_train_epoch)")]
    assert len(compiled) == 1
