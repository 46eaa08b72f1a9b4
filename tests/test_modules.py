"""The Linen and NNX modules as drop-ins for flax's own.

Each lnjax module is checked against the flax module of the same name, built
with the same arguments and ``use_fast_variance=False``: the same parameter
trees, the same outputs and the same ``batch_stats`` updates.
"""

from __future__ import annotations

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

X_SHAPE = (4, 5, 6, 8)
CASES = [
    ("LayerNorm", {}),
    ("LayerNorm", dict(reduction_axes=(1, 2, 3), feature_axes=-1)),
    ("LayerNorm", dict(reduction_axes=(2, 3), feature_axes=(2, 3))),
    ("LayerNorm", dict(use_bias=False, epsilon=1e-3)),
    ("RMSNorm", {}),
    ("RMSNorm", dict(reduction_axes=(-2, -1), feature_axes=-1)),
    ("GroupNorm", dict(num_groups=4)),
    ("GroupNorm", dict(num_groups=None, group_size=2, use_scale=False)),
    ("GroupNorm", dict(num_groups=2, reduction_axes=(2, 3))),
    ("InstanceNorm", {}),
    ("InstanceNorm", dict(feature_axes=(2, 3))),
    ("BatchNorm", dict(use_running_average=False)),
    ("BatchNorm", dict(use_running_average=False, axis=(2, 3), momentum=0.9)),
]
IDS = [f"{name}-{i}" for i, (name, _) in enumerate(CASES)]


def _x(offset=0.0, dtype=jnp.float32, seed=0):
    x = np.random.default_rng(seed).standard_normal(X_SHAPE) * 2 + offset
    return jnp.asarray(x.astype(np.float32), dtype)


def _perturb(tree, seed=1):
    """Random parameters of the same tree, so a swapped scale/bias would show."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return treedef.unflatten([leaf + jax.random.normal(k, leaf.shape, leaf.dtype)
                              for leaf, k in zip(leaves, keys)])


def _close(a, b, tol=2e-5):
    jax.tree.map(lambda p, q: np.testing.assert_allclose(p, q, rtol=tol, atol=tol), a, b)


# ------------------------------------------------------------------ linen


@pytest.mark.parametrize("name,kwargs", CASES, ids=IDS)
def test_linen_matches_flax(name, kwargs):
    ours = getattr(lnn, name)(**kwargs)
    theirs = getattr(fnn, name)(use_fast_variance=False, **kwargs)
    assert isinstance(ours, getattr(fnn, name))
    x = _x(offset=3.0)
    v_ours = ours.init(jax.random.key(0), x)
    v_theirs = theirs.init(jax.random.key(0), x)
    assert jax.tree.structure(v_ours) == jax.tree.structure(v_theirs)
    _close(v_ours, v_theirs, tol=0)
    variables = {**v_theirs, "params": _perturb(v_theirs["params"])}
    y_ours, up_ours = ours.apply(variables, x, mutable=["batch_stats"])
    y_theirs, up_theirs = theirs.apply(variables, x, mutable=["batch_stats"])
    assert y_ours.dtype == y_theirs.dtype
    _close(y_ours, y_theirs)
    _close(up_ours, up_theirs, tol=1e-6)
    if name == "BatchNorm":
        assert up_ours  # the running averages moved
        eval_vars = {"params": variables["params"], **up_theirs}
        _close(ours.clone(use_running_average=True).apply(eval_vars, x),
               theirs.clone(use_running_average=True).apply(eval_vars, x))


@pytest.mark.parametrize("name,kwargs", CASES, ids=IDS)
def test_linen_mask_matches_flax(name, kwargs):
    x = _x(offset=-2.0)
    mask = np.random.default_rng(3).random(X_SHAPE) < 0.8
    ours = getattr(lnn, name)(**kwargs)
    theirs = getattr(fnn, name)(use_fast_variance=False, **kwargs)
    variables = theirs.init(jax.random.key(0), x)
    y_ours, up_ours = ours.apply(variables, x, mask=mask, mutable=["batch_stats"])
    y_theirs, up_theirs = theirs.apply(variables, x, mask=mask, mutable=["batch_stats"])
    _close(y_ours, y_theirs)
    _close(up_ours, up_theirs, tol=1e-6)


@pytest.mark.parametrize("name", ["LayerNorm", "RMSNorm", "GroupNorm", "InstanceNorm",
                                  "BatchNorm"])
def test_linen_fast_variance_is_flax_default(name):
    kwargs = {"num_groups": 2} if name == "GroupNorm" else {}
    kwargs.update({"use_running_average": False} if name == "BatchNorm" else {})
    ours = getattr(lnn, name)(use_fast_variance=True, **kwargs)
    theirs = getattr(fnn, name)(**kwargs)
    x = _x(offset=1.0)
    variables = theirs.init(jax.random.key(0), x)
    _close(ours.apply(variables, x, mutable=["batch_stats"]),
           theirs.apply(variables, x, mutable=["batch_stats"]))


@pytest.mark.parametrize("dtype,param_dtype", [(jnp.bfloat16, jnp.float32),
                                               (jnp.bfloat16, jnp.bfloat16),
                                               (jnp.float16, jnp.float32)])
@pytest.mark.parametrize("name", ["LayerNorm", "GroupNorm", "BatchNorm"])
def test_linen_dtypes_follow_flax(name, dtype, param_dtype):
    kwargs = {"num_groups": 2} if name == "GroupNorm" else {}
    kwargs.update({"use_running_average": False} if name == "BatchNorm" else {})
    x = _x(dtype=dtype)
    for module_dtype in (None, jnp.float32):
        ours = getattr(lnn, name)(param_dtype=param_dtype, dtype=module_dtype, **kwargs)
        theirs = getattr(fnn, name)(param_dtype=param_dtype, dtype=module_dtype,
                                    use_fast_variance=False, **kwargs)
        variables = theirs.init(jax.random.key(0), x)
        y_ours, _ = ours.apply(variables, x, mutable=["batch_stats"])
        y_theirs, _ = theirs.apply(variables, x, mutable=["batch_stats"])
        assert y_ours.dtype == y_theirs.dtype
        np.testing.assert_allclose(np.asarray(y_ours, np.float32),
                                   np.asarray(y_theirs, np.float32), rtol=1e-2, atol=1e-2)


def test_linen_layer_norm_exact_far_from_zero():
    x = (1e6 + np.random.default_rng(0).standard_normal((16, 512))).astype(np.float32)
    layer = lnn.LayerNorm()
    y = layer.apply(layer.init(jax.random.key(0), x), x)
    assert np.abs(np.asarray(y, np.float64) - ref.layer_norm(x)).max() < 1e-5


def test_linen_batch_norm_unbiased_at_batch_size_4():
    x = _x()[:, 0, 0, :]  # (4, 8)
    bn = lnn.BatchNorm(use_running_average=False, unbiased=True, epsilon=1e-5, momentum=0.5)
    variables = bn.init(jax.random.key(0), x)
    y, updates = bn.apply(variables, x, mutable=["batch_stats"])
    ry, _, rvar = ref.batch_norm(x, unbiased=True)
    np.testing.assert_allclose(y, ry, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(updates["batch_stats"]["var"], 0.5 + 0.5 * rvar, rtol=1e-5)


def test_linen_weight_norm_dense_matches_flax_weight_norm():
    x = _x()[:, 0, 0, :]
    ours = lnn.WeightNormDense(3)
    v = ours.init(jax.random.key(0), x)["params"]
    v = {**v, "scale": v["scale"] * jnp.array([0.5, 2.0, 3.0]),
         "bias": jnp.array([0.1, -0.2, 0.3])}
    class FlaxWeightNormDense(fnn.Module):
        @fnn.compact
        def __call__(self, x):
            return fnn.WeightNorm(fnn.Dense(3))(x)  # normalizes the kernel only

    y_theirs = FlaxWeightNormDense().apply({"params": {
        "Dense_0": {"kernel": v["kernel"], "bias": v["bias"]},
        "WeightNorm_0": {"Dense_0/kernel/scale": v["scale"]},
    }}, x)
    _close(ours.apply({"params": v}, x), y_theirs)
    # Re-scaling a unit's weight vector leaves the output unchanged (Table 1).
    v2 = {**v, "kernel": v["kernel"].at[:, 1].multiply(7.0)}
    _close(ours.apply({"params": v2}, x), ours.apply({"params": v}, x))


LINEN_ERRORS = [
    (lambda: lnn.LayerNorm(reduction_axes=4), ValueError, r"reduction_axes=4 is out of range"),
    (lambda: lnn.LayerNorm(feature_axes=(1, 1)), ValueError,
     r"feature_axes=\(1, 1\) names the same axis twice"),
    (lambda: lnn.GroupNorm(num_groups=3), ValueError,
     r"num_groups=3 must be a positive divisor of the number of channels 8"),
    (lambda: lnn.GroupNorm(num_groups=None, group_size=3), ValueError,
     r"group_size=3 does not divide the 8 channels"),
    (lambda: lnn.GroupNorm(num_groups=None), ValueError, r"set exactly one of num_groups"),
    (lambda: lnn.GroupNorm(num_groups=2, reduction_axes=(1, 2)), ValueError,
     r"must include the last \(channel\) axis"),
    (lambda: lnn.InstanceNorm(feature_axes=0), ValueError, r"cannot include axis 0"),
    (lambda: lnn.LayerNorm(epsilon=-1.0), ValueError, r"LayerNorm: epsilon must be >= 0"),
]


@pytest.mark.parametrize("make,exc,pattern", LINEN_ERRORS)
def test_linen_bad_configuration_is_a_clear_error(make, exc, pattern):
    with pytest.raises(exc, match=pattern):
        make().init(jax.random.key(0), _x())


def test_linen_integer_input_is_a_type_error():
    with pytest.raises(TypeError, match="LayerNorm: x must have a floating-point dtype"):
        lnn.LayerNorm().init(jax.random.key(0), jnp.ones((2, 3), jnp.int32))


# ------------------------------------------------------------------ nnx


def _num_features(kwargs):
    """flax.nnx's ``num_features``: the size of all feature axes together."""
    feat = kwargs.get("feature_axes", kwargs.get("axis", -1))
    feat = (feat,) if isinstance(feat, int) else feat
    return int(np.prod([X_SHAPE[a] for a in feat]))


# flax.nnx cannot run two of the cases: its BatchNorm keeps one flat feature
# axis for the running averages, and its GroupNorm repeats the group
# statistics along axis 1 instead of the channel axis when reduction_axes
# leaves a spatial axis. lnjax.nnx runs both; they are checked against
# flax.linen in test_nnx_cases_flax_nnx_cannot_run.
FLAX_NNX_CANNOT = {"BatchNorm-12", "GroupNorm-8"}
NNX_CASES = [c for c, i in zip(CASES, IDS) if i not in FLAX_NNX_CANNOT]
NNX_IDS = [i for i in IDS if i not in FLAX_NNX_CANNOT]


@pytest.mark.parametrize("name,kwargs", NNX_CASES, ids=NNX_IDS)
def test_nnx_matches_flax(name, kwargs):
    features = _num_features(kwargs)
    ours = getattr(lnnx, name)(features, rngs=nnx.Rngs(0), **kwargs)
    theirs = getattr(nnx, name)(features, use_fast_variance=False, rngs=nnx.Rngs(0), **kwargs)
    assert isinstance(ours, getattr(nnx, name))
    s_ours, s_theirs = nnx.state(ours), nnx.state(theirs)
    assert jax.tree.structure(s_ours) == jax.tree.structure(s_theirs)
    _close(s_ours, s_theirs, tol=0)
    # Load one random state into both, as a checkpoint would be.
    state = _perturb(nnx.state(theirs, nnx.Param))
    nnx.update(ours, state)
    nnx.update(theirs, state)
    x = _x(offset=3.0)
    y_ours, y_theirs = ours(x), theirs(x)
    assert y_ours.dtype == y_theirs.dtype
    _close(y_ours, y_theirs)
    _close(nnx.state(ours), nnx.state(theirs), tol=1e-6)  # batch stats included
    mask = np.random.default_rng(3).random(X_SHAPE) < 0.8
    _close(ours(x, mask=mask), theirs(x, mask=mask))
    _close(nnx.state(ours), nnx.state(theirs), tol=1e-6)
    if name == "BatchNorm":
        _close(ours(x, use_running_average=True), theirs(x, use_running_average=True))


@pytest.mark.parametrize("case", sorted(FLAX_NNX_CANNOT))
def test_nnx_cases_flax_nnx_cannot_run(case):
    name, kwargs = CASES[IDS.index(case)]
    ours = getattr(lnnx, name)(_num_features(kwargs), rngs=nnx.Rngs(0), **kwargs)
    linen = getattr(fnn, name)(use_fast_variance=False, **kwargs)
    x = _x(offset=3.0)
    variables = linen.init(jax.random.key(0), x)
    params = _perturb(variables["params"])
    for key, value in params.items():
        getattr(ours, key)[...] = value.reshape(-1)
    y_linen, updates = linen.apply({**variables, "params": params}, x, mutable=["batch_stats"])
    _close(ours(x), y_linen)
    for key, value in updates.get("batch_stats", {}).items():
        _close(getattr(ours, key)[...], value.reshape(-1), tol=1e-6)


def test_nnx_model_swaps_one_import_and_loads_state():
    class Model(nnx.Module):
        def __init__(self, norm_module, rngs):
            self.dense = nnx.Linear(8, 8, rngs=rngs)
            self.norm = norm_module.LayerNorm(8, rngs=rngs)
            self.bn = norm_module.BatchNorm(8, use_running_average=False, rngs=rngs)

        def __call__(self, x):
            return self.bn(self.norm(self.dense(x)))

    theirs = Model(nnx, nnx.Rngs(0))
    ours = Model(lnnx, nnx.Rngs(0))
    nnx.update(theirs, _perturb(nnx.state(theirs, nnx.Param)))
    nnx.update(ours, nnx.state(theirs))
    x = _x()[:, :, 0, :]
    _close(ours(x), theirs(x))
    _close(nnx.state(ours), nnx.state(theirs), tol=1e-6)


def test_nnx_batch_norm_gradient_and_jit():
    bn = lnnx.BatchNorm(8, use_running_average=False, rngs=nnx.Rngs(0))
    ref_bn = nnx.BatchNorm(8, use_running_average=False, use_fast_variance=False,
                           rngs=nnx.Rngs(0))
    x = _x()[:, 0, 0, :]

    @nnx.jit
    def loss_grad(model, x):
        return nnx.grad(lambda m: jnp.sum(m(x) ** 3))(model)

    _close(loss_grad(bn, x), loss_grad(ref_bn, x), tol=1e-4)
    _close(nnx.state(bn, nnx.BatchStat), nnx.state(ref_bn, nnx.BatchStat), tol=1e-6)


def test_nnx_weight_norm_linear_invariant_to_unit_rescaling():
    layer = lnnx.WeightNormLinear(8, 3, rngs=nnx.Rngs(0))
    x = _x()[:, 0, 0, :]
    y = layer(x)
    w = layer.kernel[...]
    np.testing.assert_allclose(
        y, ref.weight_norm(w, layer.scale[...], axis=-1).T.dot(np.asarray(x).T).T
        + np.asarray(layer.bias[...]), rtol=1e-5, atol=1e-5)
    layer.kernel[...] = w.at[:, 2].multiply(5.0)
    _close(layer(x), y)


def test_nnx_group_norm_bad_groups_is_a_clear_error():
    with pytest.raises(ValueError, match=r"Number of groups \(3\) does not divide"):
        lnnx.GroupNorm(8, num_groups=3, rngs=nnx.Rngs(0))


def test_nnx_layer_norm_exact_far_from_zero():
    x = (1e6 + np.random.default_rng(0).standard_normal((16, 512))).astype(np.float32)
    y = lnnx.LayerNorm(512, rngs=nnx.Rngs(0))(x)
    assert np.abs(np.asarray(y, np.float64) - ref.layer_norm(x)).max() < 1e-5


# ------------------------------------------------ gaps found by flax's own tests
#
# flax's normalization tests (tests/linen/linen_test.py NormalizationTest and
# tests/nnx/nn/normalization_test.py) run against lnjax's modules found these.

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
    _close(updates, up_flax, tol=1e-5)
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


@pytest.mark.parametrize("module", ["linen", "nnx"])
def test_instance_norm_without_spatial_axes_returns_the_bias_and_warns_once(module):
    import lnjax.normalization as normalization

    x = jnp.asarray(np.random.default_rng(0).standard_normal((10, 6)), jnp.float32)
    bias = jnp.arange(6.0)
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
    normalization._WARNED.discard("InstanceNorm-no-spatial-axes")  # as in a fresh process
    with pytest.warns(UserWarning, match="no axis to normalize over"):
        y = call(x)
    np.testing.assert_array_equal(np.asarray(y), np.broadcast_to(bias, x.shape))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once: a second call is silent
        y_masked = call(x, mask=x > 0)
    np.testing.assert_array_equal(np.asarray(y_masked), np.broadcast_to(bias, x.shape))


@pytest.mark.parametrize("feature_axes", [0, -4, (0, 3), (2, -4)])
@pytest.mark.parametrize("module", ["linen", "nnx"])
def test_instance_norm_batch_axis_error_has_flax_sentence(module, feature_axes):
    x = _x()
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
