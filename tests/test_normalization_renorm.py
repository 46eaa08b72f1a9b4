"""Batch renormalization (Ioffe 2017): the function against the float64 reference, its limits,
and the BatchReNorm modules (Linen and NNX)."""

from __future__ import annotations

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import lnjax
import lnjax.linen as lnn
import lnjax.nnx as lnnx
from tests import reference as ref


def _data(shape=(16, 5), offset=0.0, seed=0):
    rng = np.random.default_rng(seed)
    x = (offset + 2 * rng.standard_normal(shape)).astype(np.float32)
    features = shape[-1]
    scale = (1 + 0.3 * rng.standard_normal(features)).astype(np.float32)
    bias = rng.standard_normal(features).astype(np.float32)
    running_mean = (offset + rng.standard_normal(features)).astype(np.float32)
    running_var = (0.5 + 3 * rng.random(features)).astype(np.float32)
    return x, scale, bias, running_mean, running_var


@pytest.mark.parametrize("offset", [0.0, 1e4])
@pytest.mark.parametrize("limits", [(3.0, 5.0), (1.5, 0.2)], ids=["default", "clipping"])
def test_matches_float64_reference(offset, limits):
    x, scale, bias, mu, var = _data(offset=offset)
    r_max, d_max = limits
    f = jax.jit(lambda *a: lnjax.batch_renorm(a[0], a[1], a[2], running_mean=a[3],
                                              running_var=a[4], r_max=r_max, d_max=d_max))
    y, mean, bvar = f(x, scale, bias, mu, var)
    want_y, want_mean, want_var = ref.batch_renorm(x, scale, bias, running_mean=mu,
                                                   running_var=var, r_max=r_max, d_max=d_max)
    np.testing.assert_allclose(y, want_y, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(mean, want_mean, rtol=1e-6, atol=1e-6 * max(offset, 1))
    np.testing.assert_allclose(bvar, want_var, rtol=1e-5)


def test_the_limits_are_reached_in_this_data():
    """The clipping case above clips both r and d (else it would test nothing)."""
    x, _, _, mu, var = _data()
    mean, bvar = x.mean(0), x.var(0)
    r = np.sqrt(bvar + 1e-5) / np.sqrt(var + 1e-5)
    d = (mean - mu) / np.sqrt(var + 1e-5)
    assert (np.abs(np.log(r)) > np.log(1.5)).any() and (np.abs(d) > 0.2).any()


def test_r_max_1_and_d_max_0_is_batch_norm():
    x, scale, bias, mu, var = _data(offset=3.0)
    y, mean, bvar = lnjax.batch_renorm(x, scale, bias, running_mean=mu, running_var=var,
                                       r_max=1.0, d_max=0.0)
    y_bn, mean_bn, var_bn = lnjax.batch_norm(x, scale, bias)
    np.testing.assert_array_equal(y, y_bn)
    np.testing.assert_array_equal(mean, mean_bn)
    np.testing.assert_array_equal(bvar, var_bn)


def test_running_statistics_equal_to_the_batch_give_batch_norm():
    # Offset 3: the batch mean handed back as running_mean is rounded to float32 (half an
    # ulp of the offset, over sigma, enters d), so keep the offset small against 1e-6.
    x, scale, bias, _, _ = _data(offset=3.0)
    _, mean, bvar = lnjax.batch_norm(x)
    y, *_ = lnjax.batch_renorm(x, scale, bias, running_mean=mean, running_var=bvar)
    np.testing.assert_allclose(y, lnjax.batch_norm(x, scale, bias)[0], rtol=1e-6, atol=1e-6)


def test_r_and_d_carry_no_gradient():
    """The gradient is batch norm's, scaled by r, with r and d held constant."""
    with jax.enable_x64(True):
        x, scale, bias, mu, var = (np.asarray(a, np.float64) for a in _data((8, 3), seed=2))
        w = np.random.default_rng(9).standard_normal(x.shape)

        def loss(v, g, b):
            y, *_ = lnjax.batch_renorm(v, g, b, running_mean=mu, running_var=var,
                                       r_max=10.0, d_max=10.0)
            return jnp.sum(w * y)

        grads = jax.grad(loss, (0, 1, 2))(x, scale, bias)
        mean, bvar = x.mean(0), x.var(0)
        r = np.sqrt(bvar + 1e-5) / np.sqrt(var + 1e-5)
        d = (mean - mu) / np.sqrt(var + 1e-5)

        def bn_loss(v, g, b):  # batch norm with r and d as constants
            y, *_ = lnjax.batch_norm(v, g * r, g * d + b)
            return jnp.sum(w * y)

        want = jax.grad(bn_loss, (0,))(x, scale, bias)[0]
        np.testing.assert_allclose(grads[0], want, rtol=1e-10, atol=1e-10)
        xhat = (x - mean) / np.sqrt(bvar + 1e-5)
        np.testing.assert_allclose(grads[1], (w * (xhat * r + d)).sum(0), rtol=1e-10)
        np.testing.assert_allclose(grads[2], w.sum(0), rtol=1e-10)


def test_masked_statistics_match_the_reference():
    x, scale, bias, mu, var = _data((12, 4))
    mask = np.random.default_rng(4).random(x.shape[0]) < 0.6
    y, mean, bvar = lnjax.batch_renorm(x, scale, bias, running_mean=mu, running_var=var,
                                       mask=mask[:, None])
    want = ref.batch_renorm(x, scale, bias, running_mean=mu, running_var=var,
                            mask=mask[:, None])
    for got, exp in zip((y, mean, bvar), want):
        np.testing.assert_allclose(got, exp, rtol=2e-5, atol=2e-5)


def test_cross_device_equals_the_whole_batch():
    mesh = jax.make_mesh((8,), ("batch",))
    x, scale, bias, mu, var = _data((32, 5), offset=1e3)

    def local(v):
        y, mean, bvar = lnjax.batch_renorm(v, scale, bias, running_mean=mu, running_var=var,
                                           axis_name="batch")
        return y, mean, bvar

    f = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=P("batch"),
                              out_specs=(P("batch"), P(), P())))
    y, mean, bvar = f(jax.device_put(x, NamedSharding(mesh, P("batch"))))
    want = ref.batch_renorm(x, scale, bias, running_mean=mu, running_var=var)
    np.testing.assert_allclose(y, want[0], rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(mean, want[1], rtol=1e-6)
    np.testing.assert_allclose(bvar, want[2], rtol=1e-5)


@pytest.mark.parametrize("kwargs,match", [
    (dict(r_max=0.5), "r_max=0.5 must be >= 1"),
    (dict(d_max=-1.0), "d_max=-1.0 must be >= 0"),
    (dict(running_mean=np.zeros(4)), "running_mean of shape"),
    (dict(running_var=np.ones((5, 1))), "running_var of shape"),
])
def test_bad_arguments_are_clear_errors(kwargs, match):
    x, _, _, mu, var = _data()
    args = {"running_mean": mu, "running_var": var, **kwargs}
    with pytest.raises(ValueError, match=match):
        lnjax.batch_renorm(x, **args)


def test_renorm_limits_follow_the_papers_ramps():
    limits = jax.jit(lambda s: lnjax.renorm_limits(s, warmup_steps=100, r_steps=400,
                                                   d_steps=200))
    assert [float(v) for v in limits(0)] == [1.0, 0.0]
    assert [float(v) for v in limits(100)] == [1.0, 0.0]
    r, d = (float(v) for v in limits(300))
    np.testing.assert_allclose((r, d), (1.0 + 2.0 * 200 / 400, 5.0 * 200 / 200))
    assert [float(v) for v in limits(10_000)] == [3.0, 5.0]


# ------------------------------------------------------------------ modules


def test_linen_module_trains_with_renorm_and_infers_with_running_averages():
    x, _, _, _, _ = _data((16, 5), offset=2.0)
    layer = lnn.BatchReNorm(momentum=0.9, r_max=2.0, d_max=1.0)
    variables = layer.init(jax.random.key(0), x, use_running_average=False)
    assert isinstance(layer, lnn.BatchNorm) and isinstance(layer, fnn.BatchNorm)
    flax_vars = fnn.BatchNorm().init(jax.random.key(0), x, use_running_average=False)
    assert jax.tree.structure(variables) == jax.tree.structure(flax_vars)
    stats = {"mean": jnp.full(5, 1.0), "var": jnp.full(5, 2.0)}
    params = {"scale": jnp.linspace(0.5, 1.5, 5), "bias": jnp.linspace(-1, 1, 5)}
    y, updates = layer.apply({"params": params, "batch_stats": stats}, x,
                             use_running_average=False, mutable=["batch_stats"])
    want, mean, bvar = ref.batch_renorm(x, params["scale"], params["bias"],
                                        running_mean=stats["mean"], running_var=stats["var"],
                                        r_max=2.0, d_max=1.0)
    np.testing.assert_allclose(y, want, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(updates["batch_stats"]["mean"], 0.9 * 1.0 + 0.1 * mean,
                               rtol=1e-5)
    np.testing.assert_allclose(updates["batch_stats"]["var"], 0.9 * 2.0 + 0.1 * bvar,
                               rtol=1e-5)
    y_eval = layer.apply({"params": params, "batch_stats": stats}, x, use_running_average=True)
    np.testing.assert_allclose(y_eval, lnn.BatchNorm().apply(
        {"params": params, "batch_stats": stats}, x, use_running_average=True), rtol=1e-6)


def test_linen_limits_can_be_ramped_at_call_time_under_jit():
    x, _, _, _, _ = _data((16, 5), offset=2.0)
    layer = lnn.BatchReNorm(use_running_average=False)
    variables = layer.init(jax.random.key(0), x)
    variables = {**variables, "batch_stats": {"mean": jnp.full(5, 1.0), "var": jnp.full(5, 2.0)}}

    @jax.jit
    def step(v, r_max, d_max):
        return layer.apply(variables, v, r_max=r_max, d_max=d_max, mutable=["batch_stats"])[0]

    as_bn = lnn.BatchNorm(use_running_average=False).apply(variables, x,
                                                           mutable=["batch_stats"])[0]
    np.testing.assert_allclose(step(x, 1.0, 0.0), as_bn, rtol=1e-6, atol=1e-6)
    assert not np.allclose(step(x, 3.0, 5.0), as_bn, atol=1e-3)


def test_nnx_module_matches_linen():
    x, _, _, _, _ = _data((16, 5), offset=2.0)
    ours = lnnx.BatchReNorm(5, momentum=0.9, r_max=2.0, d_max=1.0, rngs=nnx.Rngs(0))
    assert isinstance(ours, nnx.BatchNorm)
    ours.mean[...] = jnp.full(5, 1.0)
    ours.var[...] = jnp.full(5, 2.0)
    linen = lnn.BatchReNorm(momentum=0.9, r_max=2.0, d_max=1.0)
    variables = {"params": {"scale": jnp.ones(5), "bias": jnp.zeros(5)},
                 "batch_stats": {"mean": jnp.full(5, 1.0), "var": jnp.full(5, 2.0)}}
    y_linen, updates = linen.apply(variables, x, use_running_average=False,
                                   mutable=["batch_stats"])
    np.testing.assert_allclose(ours(x), y_linen, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ours.mean[...], updates["batch_stats"]["mean"], rtol=1e-6)
    np.testing.assert_allclose(ours.var[...], updates["batch_stats"]["var"], rtol=1e-6)
    ours.eval()
    np.testing.assert_allclose(ours(x), linen.apply({**variables, **updates}, x,
                                                    use_running_average=True), rtol=1e-6)
