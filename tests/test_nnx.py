"""The NNX modules (lnjax.nnx) as drop-ins for flax.nnx's.

Each module is checked against the flax module of the same name (the cases of
``tests/module_cases.py``, where flax.nnx can run them, else against
flax.linen); the statistics dtype of each module against flax's policy; and
each module's docstring against the attributes it holds and its Linen twin's.
"""

from __future__ import annotations

import importlib

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from flax.nnx.nn.dtypes import promote_dtype

import lnjax.linen as lnn
import lnjax.nnx as lnnx
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
    num_features,
    perturb,
    sample,
)

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
    features = num_features(kwargs)
    ours = getattr(lnnx, name)(features, rngs=nnx.Rngs(0), **kwargs)
    theirs = getattr(nnx, name)(features, use_fast_variance=False, rngs=nnx.Rngs(0), **kwargs)
    assert isinstance(ours, getattr(nnx, name))
    s_ours, s_theirs = nnx.state(ours), nnx.state(theirs)
    assert jax.tree.structure(s_ours) == jax.tree.structure(s_theirs)
    close(s_ours, s_theirs, tol=0)
    # Load one random state into both, as a checkpoint would be.
    state = perturb(nnx.state(theirs, nnx.Param))
    nnx.update(ours, state)
    nnx.update(theirs, state)
    x = sample(offset=3.0)
    y_ours, y_theirs = ours(x), theirs(x)
    assert y_ours.dtype == y_theirs.dtype
    close(y_ours, y_theirs)
    close(nnx.state(ours), nnx.state(theirs), tol=1e-6)  # batch stats included
    mask = np.random.default_rng(3).random(X_SHAPE) < 0.8
    close(ours(x, mask=mask), theirs(x, mask=mask))
    close(nnx.state(ours), nnx.state(theirs), tol=1e-6)
    if name == "BatchNorm":
        close(ours(x, use_running_average=True), theirs(x, use_running_average=True))


@pytest.mark.parametrize("case", sorted(FLAX_NNX_CANNOT))
def test_nnx_cases_flax_nnx_cannot_run(case):
    name, kwargs = CASES[IDS.index(case)]
    ours = getattr(lnnx, name)(num_features(kwargs), rngs=nnx.Rngs(0), **kwargs)
    linen = getattr(fnn, name)(use_fast_variance=False, **kwargs)
    x = sample(offset=3.0)
    variables = linen.init(jax.random.key(0), x)
    params = perturb(variables["params"])
    for key, value in params.items():
        getattr(ours, key)[...] = value.reshape(-1)
    y_linen, updates = linen.apply({**variables, "params": params}, x, mutable=["batch_stats"])
    close(ours(x), y_linen)
    for key, value in updates.get("batch_stats", {}).items():
        close(getattr(ours, key)[...], value.reshape(-1), tol=1e-6)


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
    nnx.update(theirs, perturb(nnx.state(theirs, nnx.Param)))
    nnx.update(ours, nnx.state(theirs))
    x = sample()[:, :, 0, :]
    close(ours(x), theirs(x))
    close(nnx.state(ours), nnx.state(theirs), tol=1e-6)


def test_nnx_batch_norm_gradient_and_jit():
    bn = lnnx.BatchNorm(8, use_running_average=False, rngs=nnx.Rngs(0))
    ref_bn = nnx.BatchNorm(8, use_running_average=False, use_fast_variance=False,
                           rngs=nnx.Rngs(0))
    x = sample()[:, 0, 0, :]

    @nnx.jit
    def loss_grad(model, x):
        return nnx.grad(lambda m: jnp.sum(m(x) ** 3))(model)

    close(loss_grad(bn, x), loss_grad(ref_bn, x), tol=1e-4)
    close(nnx.state(bn, nnx.BatchStat), nnx.state(ref_bn, nnx.BatchStat), tol=1e-6)


def test_nnx_weight_norm_linear_invariant_to_unit_rescaling():
    layer = lnnx.WeightNormLinear(8, 3, rngs=nnx.Rngs(0))
    x = sample()[:, 0, 0, :]
    y = layer(x)
    w = layer.kernel[...]
    np.testing.assert_allclose(
        y, ref.weight_norm(w, layer.scale[...], axis=-1).T.dot(np.asarray(x).T).T
        + np.asarray(layer.bias[...]), rtol=1e-5, atol=1e-5)
    layer.kernel[...] = w.at[:, 2].multiply(5.0)
    close(layer(x), y)


def test_nnx_group_norm_bad_groups_is_a_clear_error():
    with pytest.raises(ValueError, match=r"Number of groups \(3\) does not divide"):
        lnnx.GroupNorm(8, num_groups=3, rngs=nnx.Rngs(0))


def test_nnx_layer_norm_exact_far_from_zero():
    x = (1e6 + np.random.default_rng(0).standard_normal((16, 512))).astype(np.float32)
    y = lnnx.LayerNorm(512, rngs=nnx.Rngs(0))(x)
    assert np.abs(np.asarray(y, np.float64) - ref.layer_norm(x)).max() < 1e-5


# ------------------------------------------------------------ statistics dtype

# (input dtype, module dtype, param_dtype, the statistics' dtype, another dtype): flax's
# policy, the dtype of the input after promote_dtype (to the module's dtype, else to the
# input's and the parameters') promoted to at least float32.
STATS_DTYPES = [
    (jnp.bfloat16, None, jnp.bfloat16, jnp.float32, jnp.bfloat16),
    (jnp.bfloat16, None, jnp.float32, jnp.float32, jnp.bfloat16),
    (jnp.float32, jnp.bfloat16, jnp.float32, jnp.float32, jnp.bfloat16),
    (jnp.float16, jnp.float16, jnp.float32, jnp.float32, jnp.float16),
]


@pytest.mark.parametrize("x_dtype,dtype,param_dtype,stats_dtype,other", STATS_DTYPES)
@pytest.mark.parametrize("name", NORMS)
def test_nnx_statistics_dtype_is_flax_policy(name, x_dtype, dtype, param_dtype, stats_dtype,
                                             other):
    kwargs = {"num_groups": 2} if name == "GroupNorm" else {}
    layer = getattr(lnnx, name)(8, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(0),
                                **kwargs)
    nnx.update(layer, perturb(nnx.state(layer, nnx.Param)))
    x = far_from_zero(x_dtype)
    scale = layer.scale[...] if layer.scale is not None else None
    bias = layer.bias[...] if getattr(layer, "bias", None) is not None else None
    running = (layer.mean[...], layer.var[...]) if name == "BatchReNorm" else ()
    x, scale, bias, *running = promote_dtype((x, scale, bias, *running), dtype=dtype)
    y = layer(x)

    def computed_in(dtype):
        return np.asarray(normalized_with(name, x, scale, bias, stats_dtype=dtype,
                                          out_dtype=y.dtype, running=running or None),
                          np.float32)

    np.testing.assert_array_equal(np.asarray(y, np.float32), computed_in(stats_dtype))
    # The data tells the two dtypes apart.
    assert not np.array_equal(np.asarray(y, np.float32), computed_in(other))


# ------------------------------------------------------------------ docstrings


def _instance(cls):
    rngs = nnx.Rngs(0)
    if cls.__name__ == "GroupNorm":
        return cls(4, num_groups=2, rngs=rngs)
    if cls.__name__.startswith("LN") or cls.__name__ == "WeightNormLinear":
        return cls(3, 4, rngs=rngs)
    return cls(4, rngs=rngs)


@pytest.mark.parametrize("name", lnnx.__all__)
def test_nnx_docstring_describes_each_attribute_it_holds_once(name):
    cls = getattr(lnnx, name)
    held = {k for k in vars(_instance(cls)) if not k.startswith("_")}
    entries = attribute_entries(cls.__doc__)
    assert held <= set(entries)
    # flax's GroupNorm takes num_features without keeping it.
    assert set(entries) - held <= {"num_features"}
    assert all(entries.values())


def test_nnx_batch_renorm_describes_batch_norms_attributes_as_batch_norm():
    bn = attribute_entries(lnnx.BatchNorm.__doc__)
    brn = attribute_entries(lnnx.BatchReNorm.__doc__)
    assert {k: brn[k] for k in bn} == bn
    assert set(brn) - set(bn) == {"r_max", "d_max"}


TWINS = [(name, name) for name in NORMS] + [("WeightNormDense", "WeightNormLinear")] + [
    (name, name) for name in ("LNSimpleCell", "LNGRUCell", "LNLSTMCell", "LNSimpleRNN",
                              "LNGRU", "LNLSTM")]


@pytest.mark.parametrize("linen_name,nnx_name", TWINS)
def test_an_attribute_of_both_front_ends_reads_the_same_in_both(linen_name, nnx_name):
    ours = attribute_entries(getattr(lnnx, nnx_name).__doc__)
    linen = attribute_entries(getattr(lnn, linen_name).__doc__)
    # use_running_average differs: Linen's default None (given at call time), NNX's False.
    common = (set(ours) & set(linen)) - {"use_running_average"}
    assert common
    assert {k: ours[k] for k in common} == {k: linen[k] for k in common}


# ------------------------------------------------------------------ package


def test_nnx_modules_live_by_concern_and_import_from_the_package():
    names = []
    for concern in ("normalization", "recurrent", "weight_norm"):
        module = importlib.import_module(f"lnjax.nnx.{concern}")
        for name in module.__all__:
            assert getattr(lnnx, name) is getattr(module, name)
            assert getattr(module, name).__module__ == module.__name__
        names += module.__all__
    assert sorted(names) == sorted(lnnx.__all__)
