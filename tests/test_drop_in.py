"""What flax's own normalization tests found, matched in both front ends.

flax's normalization tests (tests/linen/linen_test.py NormalizationTest and
tests/nnx/nn/normalization_test.py) run against lnjax's modules found these:
complex input to batch norm, instance norm with no axis to normalize over,
flax's error for the batch axis among instance norm's feature axes, and a
test reference that is itself inexact far from zero.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import lnjax
import lnjax.linen as lnn
import lnjax.nnx as lnnx
from tests import reference as ref
from tests.module_cases import close, sample

FLAX_BATCH_AXIS_SENTENCE = ("The channel axes cannot include the leading dimension as this is "
                            "assumed to be the batch axis.")


def _complex_x(seed=0, shape=(6, 3, 4)):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) + 1j * rng.standard_normal(shape) + (2 - 3j)
    return x.astype(np.complex64)


def _complex_batch_stats_reference(x, mask=None):
    """Mean of x and variance of |x - mean|^2 over all but the last axis, in complex128."""
    x = np.asarray(x, np.complex128).reshape(-1, x.shape[-1])
    w = np.ones(x.shape, bool) if mask is None else np.asarray(mask).reshape(x.shape)
    mean = (x * w).sum(0) / w.sum(0)
    var = (np.abs(x - mean) ** 2 * w).sum(0) / w.sum(0)
    return mean, var


@pytest.mark.parametrize("masked", [False, True], ids=["all", "masked"])
def test_linen_batch_norm_on_complex_input(masked):
    x = _complex_x()
    mask = (np.random.default_rng(1).random(x.shape) < 0.7) if masked else None
    bn = lnn.BatchNorm(momentum=0.5, epsilon=1e-5)
    variables = bn.init(jax.random.key(0), x, use_running_average=False)
    assert variables["batch_stats"]["var"].dtype == jnp.float32
    y, updates = bn.apply(variables, x, use_running_average=False, mask=mask,
                          mutable=["batch_stats"])
    assert y.dtype == jnp.complex64
    mean, var = _complex_batch_stats_reference(x, mask)
    want = (x - mean) / np.sqrt(var + 1e-5)
    np.testing.assert_allclose(np.asarray(y), want, rtol=2e-5, atol=2e-5)
    stats = updates["batch_stats"]
    assert stats["var"].dtype == jnp.float32  # the variance is real
    assert stats["mean"].dtype == jnp.complex64  # as flax: the running mean becomes complex
    np.testing.assert_allclose(np.asarray(stats["mean"]), 0.5 * mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(stats["var"]), 0.5 + 0.5 * var, rtol=1e-5)
    # flax computes the same thing (its two-pass formula is exact enough here).
    theirs = fnn.BatchNorm(momentum=0.5, epsilon=1e-5, use_fast_variance=False)
    y_flax, up_flax = theirs.apply(variables, x, use_running_average=False, mask=mask,
                                   mutable=["batch_stats"])
    np.testing.assert_allclose(np.asarray(y), np.asarray(y_flax), rtol=1e-4, atol=1e-4)
    close(updates, up_flax, tol=1e-5)
    # Inference with the (complex) running averages.
    y_run = bn.apply({**variables, **updates}, x, use_running_average=True)
    want = (x - 0.5 * mean) / np.sqrt(0.5 + 0.5 * var + 1e-5)
    np.testing.assert_allclose(np.asarray(y_run), want, rtol=2e-5, atol=2e-5)


def test_nnx_batch_norm_on_complex_input():
    x = _complex_x()
    bn = lnnx.BatchNorm(4, momentum=0.5, epsilon=1e-5, rngs=nnx.Rngs(0))
    y = bn(x)
    mean, var = _complex_batch_stats_reference(x)
    np.testing.assert_allclose(np.asarray(y), (x - mean) / np.sqrt(var + 1e-5),
                               rtol=2e-5, atol=2e-5)
    assert bn.var[...].dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(bn.var[...]), 0.5 + 0.5 * var, rtol=1e-5)
    # the running mean keeps its imaginary part (it becomes complex, as in flax.linen)
    assert bn.mean[...].dtype == jnp.complex64
    np.testing.assert_allclose(np.asarray(bn.mean[...]), 0.5 * mean, rtol=1e-5, atol=1e-5)
    y_eval = bn(x, use_running_average=True)
    np.testing.assert_allclose(np.asarray(y_eval),
                               (x - 0.5 * mean) / np.sqrt(0.5 + 0.5 * var + 1e-5),
                               rtol=2e-5, atol=2e-5)


def test_functional_batch_norm_on_complex_input_is_exact_far_from_zero():
    x = (_complex_x(shape=(64, 5)).astype(np.complex128) * 1e-2 + (1e4 + 1e4j)).astype(
        np.complex64)
    y, mean, var = lnjax.batch_norm(x, epsilon=0.0)
    want_mean, want_var = _complex_batch_stats_reference(x)
    assert mean.dtype == jnp.complex64 and var.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(var), want_var, rtol=1e-3)
    want = (np.asarray(x, np.complex128) - want_mean) / np.sqrt(want_var)
    assert np.abs(np.asarray(y, np.complex128) - want).max() < 1e-3


# A fresh interpreter: the warning is given once a process, whichever module gives it first.
WARNS_ONCE = """
import sys, warnings
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
import lnjax.linen as lnn, lnjax.nnx as lnnx

x = jnp.asarray(np.random.default_rng(0).standard_normal((10, 6)), jnp.float32)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    if sys.argv[1] == "linen":
        layer = lnn.InstanceNorm()
        variables = layer.init(jax.random.key(0), x)
        layer.apply(variables, x)
        layer.apply(variables, x, mask=x > 0)
    else:
        layer = lnnx.InstanceNorm(6, rngs=nnx.Rngs(0))
        layer(x)
        layer(x, mask=x > 0)
for w in caught:
    print(w.category.__name__, w.message)
"""


@pytest.mark.parametrize("module", ["linen", "nnx"])
def test_instance_norm_without_spatial_axes_warns_once_a_process(module):
    run = subprocess.run([sys.executable, "-c", WARNS_ONCE, module], capture_output=True,
                         text=True, timeout=300, check=True)
    warned = [line for line in run.stdout.splitlines() if "no axis to normalize over" in line]
    assert len(warned) == 1, run.stdout
    assert warned[0].startswith("UserWarning InstanceNorm: x of shape (10, 6)")


@pytest.mark.parametrize("module", ["linen", "nnx"])
def test_instance_norm_without_spatial_axes_returns_the_bias(module):
    x = jnp.asarray(np.random.default_rng(0).standard_normal((10, 6)), jnp.float32)
    bias = jnp.arange(6.0)
    with warnings.catch_warnings():
        # This process may already have given the warning (once, whichever test came first).
        warnings.filterwarnings("ignore", "InstanceNorm: .* no axis to normalize over",
                                UserWarning)
        if module == "linen":
            layer = lnn.InstanceNorm()
            variables = layer.init(jax.random.key(0), x)
            variables = {"params": {**variables["params"], "bias": bias}}

            def call(v, **kw):
                return layer.apply(variables, v, **kw)
        else:
            layer = lnnx.InstanceNorm(6, rngs=nnx.Rngs(0))
            layer.bias[...] = bias
            call = layer
        y = call(x)
    np.testing.assert_array_equal(np.asarray(y), np.broadcast_to(bias, x.shape))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once: a later call is silent
        y_masked = call(x, mask=x > 0)
    np.testing.assert_array_equal(np.asarray(y_masked), np.broadcast_to(bias, x.shape))


@pytest.mark.parametrize("feature_axes", [0, -4, (0, 3), (2, -4)])
@pytest.mark.parametrize("module", ["linen", "nnx"])
def test_instance_norm_batch_axis_error_has_flax_sentence(module, feature_axes):
    x = sample()
    with pytest.raises(ValueError) as info:
        if module == "linen":
            lnn.InstanceNorm(feature_axes=feature_axes).init(jax.random.key(0), x)
        else:
            lnnx.InstanceNorm(8, feature_axes=feature_axes, rngs=nnx.Rngs(0))(x)
    assert FLAX_BATCH_AXIS_SENTENCE in str(info.value)
    assert "InstanceNorm" in str(info.value) and "(4, 5, 6, 8)" in str(info.value)


def test_layer_norm_stays_exact_where_flax_test_reference_is_not():
    """flax's test compares LayerNorm at offset 1e6 with a float32 one-liner; lnjax is exact.

    The one-liner (and flax, which computes the same thing) rounds the mean of
    values near 1e6 to float32 (ulp 0.06), and that error is carried into
    ``x - mean``; lnjax's shifted statistics are not.
    """
    x = (np.random.default_rng(0).standard_normal((4, 6)) + 1e6).astype(np.float32)
    variables = lnn.LayerNorm().init(jax.random.key(0), x)
    y = np.asarray(lnn.LayerNorm().apply(variables, x), np.float64)
    xj = jnp.asarray(x)
    mean = xj.mean(-1, keepdims=True)
    one_liner = np.asarray((xj - mean) / jnp.sqrt(((xj - mean) ** 2).mean(-1, keepdims=True)
                                                  + 1e-6), np.float64)
    flax_y = np.asarray(fnn.LayerNorm(use_fast_variance=False).apply(variables, x), np.float64)
    exact = ref.layer_norm(x)
    assert np.abs(y - exact).max() < 1e-6
    assert np.abs(one_liner - exact).max() > 1e-3
    assert np.abs(flax_y - exact).max() > 1e-3
