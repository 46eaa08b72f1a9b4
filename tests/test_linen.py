"""The Linen modules (lnjax.linen) as drop-ins for flax.linen's.

Each module is checked against the flax module of the same name (the cases of
``tests/module_cases.py``); the statistics dtype of each module against flax's
policy; and each module's docstring against its fields.
"""

from __future__ import annotations

import dataclasses
import importlib
import pydoc

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lnjax.linen as lnn
from tests import reference as ref
from tests.module_cases import (
    CASES,
    IDS,
    NORMS,
    X_SHAPE,
    attribute_entries,
    close,
    far_from_zero,
    normalized_with,
    perturb,
    sample,
)


@pytest.mark.parametrize("name,kwargs", CASES, ids=IDS)
def test_linen_matches_flax(name, kwargs):
    ours = getattr(lnn, name)(**kwargs)
    theirs = getattr(fnn, name)(use_fast_variance=False, **kwargs)
    assert isinstance(ours, getattr(fnn, name))
    x = sample(offset=3.0)
    v_ours = ours.init(jax.random.key(0), x)
    v_theirs = theirs.init(jax.random.key(0), x)
    assert jax.tree.structure(v_ours) == jax.tree.structure(v_theirs)
    close(v_ours, v_theirs, tol=0)
    variables = {**v_theirs, "params": perturb(v_theirs["params"])}
    y_ours, up_ours = ours.apply(variables, x, mutable=["batch_stats"])
    y_theirs, up_theirs = theirs.apply(variables, x, mutable=["batch_stats"])
    assert y_ours.dtype == y_theirs.dtype
    close(y_ours, y_theirs)
    close(up_ours, up_theirs, tol=1e-6)
    if name == "BatchNorm":
        assert up_ours  # the running averages moved
        eval_vars = {"params": variables["params"], **up_theirs}
        close(ours.clone(use_running_average=True).apply(eval_vars, x),
               theirs.clone(use_running_average=True).apply(eval_vars, x))


@pytest.mark.parametrize("name,kwargs", CASES, ids=IDS)
def test_linen_mask_matches_flax(name, kwargs):
    x = sample(offset=-2.0)
    mask = np.random.default_rng(3).random(X_SHAPE) < 0.8
    ours = getattr(lnn, name)(**kwargs)
    theirs = getattr(fnn, name)(use_fast_variance=False, **kwargs)
    variables = theirs.init(jax.random.key(0), x)
    y_ours, up_ours = ours.apply(variables, x, mask=mask, mutable=["batch_stats"])
    y_theirs, up_theirs = theirs.apply(variables, x, mask=mask, mutable=["batch_stats"])
    close(y_ours, y_theirs)
    close(up_ours, up_theirs, tol=1e-6)


@pytest.mark.parametrize("name", ["LayerNorm", "RMSNorm", "GroupNorm", "InstanceNorm",
                                  "BatchNorm"])
def test_linen_fast_variance_is_flax_default(name):
    kwargs = {"num_groups": 2} if name == "GroupNorm" else {}
    kwargs.update({"use_running_average": False} if name == "BatchNorm" else {})
    ours = getattr(lnn, name)(use_fast_variance=True, **kwargs)
    theirs = getattr(fnn, name)(**kwargs)
    x = sample(offset=1.0)
    variables = theirs.init(jax.random.key(0), x)
    close(ours.apply(variables, x, mutable=["batch_stats"]),
           theirs.apply(variables, x, mutable=["batch_stats"]))


@pytest.mark.parametrize("dtype,param_dtype", [(jnp.bfloat16, jnp.float32),
                                               (jnp.bfloat16, jnp.bfloat16),
                                               (jnp.float16, jnp.float32)])
@pytest.mark.parametrize("name", ["LayerNorm", "GroupNorm", "BatchNorm"])
def test_linen_dtypes_follow_flax(name, dtype, param_dtype):
    kwargs = {"num_groups": 2} if name == "GroupNorm" else {}
    kwargs.update({"use_running_average": False} if name == "BatchNorm" else {})
    x = sample(dtype=dtype)
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
    x = sample()[:, 0, 0, :]  # (4, 8)
    bn = lnn.BatchNorm(use_running_average=False, unbiased=True, epsilon=1e-5, momentum=0.5)
    variables = bn.init(jax.random.key(0), x)
    y, updates = bn.apply(variables, x, mutable=["batch_stats"])
    ry, _, rvar = ref.batch_norm(x, unbiased=True)
    np.testing.assert_allclose(y, ry, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(updates["batch_stats"]["var"], 0.5 + 0.5 * rvar, rtol=1e-5)


def test_linen_weight_norm_dense_matches_flax_weight_norm():
    x = sample()[:, 0, 0, :]
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
    close(ours.apply({"params": v}, x), y_theirs)
    # Re-scaling a unit's weight vector leaves the output unchanged (Table 1).
    v2 = {**v, "kernel": v["kernel"].at[:, 1].multiply(7.0)}
    close(ours.apply({"params": v2}, x), ours.apply({"params": v}, x))


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
        make().init(jax.random.key(0), sample())


def test_linen_integer_input_is_a_type_error():
    with pytest.raises(TypeError, match="LayerNorm: x must have a floating-point dtype"):
        lnn.LayerNorm().init(jax.random.key(0), jnp.ones((2, 3), jnp.int32))


# ------------------------------------------------------------ statistics dtype

# (input dtype, module dtype, force_float32_reductions, the statistics' dtype): flax's
# policy, the module's dtype (else the input's) promoted to at least float32 unless
# force_float32_reductions=False.
STATS_DTYPES = [
    (jnp.bfloat16, None, True, jnp.float32),
    (jnp.bfloat16, None, False, jnp.bfloat16),
    (jnp.float32, jnp.bfloat16, True, jnp.float32),
    (jnp.float32, jnp.bfloat16, False, jnp.bfloat16),
    (jnp.float16, jnp.float16, True, jnp.float32),
    (jnp.bfloat16, jnp.float16, False, jnp.float16),
]
OTHER = {jnp.float32: jnp.bfloat16, jnp.bfloat16: jnp.float32, jnp.float16: jnp.float32}


@pytest.mark.parametrize("x_dtype,dtype,force,stats_dtype", STATS_DTYPES)
@pytest.mark.parametrize("name", NORMS)
def test_linen_statistics_dtype_is_flax_policy(name, x_dtype, dtype, force, stats_dtype):
    kwargs = {"num_groups": 2} if name == "GroupNorm" else {}
    kwargs.update({"use_running_average": False} if name.startswith("Batch") else {})
    layer = getattr(lnn, name)(dtype=dtype, force_float32_reductions=force, **kwargs)
    x = far_from_zero(x_dtype)
    variables = layer.init(jax.random.key(0), x)
    params = perturb(variables["params"])
    y, _ = layer.apply({**variables, "params": params}, x, mutable=["batch_stats"])
    stats = variables.get("batch_stats", {})
    running = (stats["mean"], stats["var"]) if name == "BatchReNorm" else None

    def computed_in(dtype):
        return np.asarray(normalized_with(
            name, x, params.get("scale"), params.get("bias"), stats_dtype=dtype,
            out_dtype=y.dtype, running=running), np.float32)

    np.testing.assert_array_equal(np.asarray(y, np.float32), computed_in(stats_dtype))
    # The data tells the two dtypes apart.
    assert not np.array_equal(np.asarray(y, np.float32), computed_in(OTHER[stats_dtype]))


# ------------------------------------------------------------------ docstrings


@pytest.mark.parametrize("name", lnn.__all__)
def test_linen_docstring_describes_each_field_once_in_order(name):
    cls = getattr(lnn, name)
    fields = [f.name for f in dataclasses.fields(cls) if f.name not in ("parent", "name")]
    entries = attribute_entries(cls.__doc__)
    assert list(entries) == fields
    assert all(entries.values())


def test_linen_batch_renorm_describes_batch_norms_attributes_as_batch_norm():
    bn, brn = attribute_entries(lnn.BatchNorm.__doc__), attribute_entries(lnn.BatchReNorm.__doc__)
    assert {k: brn[k] for k in bn} == bn
    assert set(brn) - set(bn) == {"r_max", "d_max"}
    # help() shows the whole list, the attributes BatchReNorm adds and BatchNorm's.
    text = pydoc.render_doc(lnn.BatchReNorm, renderer=pydoc.plaintext)
    shown = " ".join(word for word in text.split() if word != "|")  # help()'s margin
    for name in ("unbiased", "axis_name", "r_max"):
        assert f"{name}: {brn[name]}" in shown


# ------------------------------------------------------------------ package


def test_linen_modules_live_by_concern_and_import_from_the_package():
    names = []
    for concern in ("normalization", "recurrent", "weight_norm"):
        module = importlib.import_module(f"lnjax.linen.{concern}")
        for name in module.__all__:
            assert getattr(lnn, name) is getattr(module, name)
            assert getattr(module, name).__module__ == module.__name__
        names += module.__all__
    assert sorted(names) == sorted(lnn.__all__)
