"""The functional API against the float64 references in tests/reference.py."""

from __future__ import annotations

import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax.test_util import check_grads

import lnjax
from tests import reference as ref

F32_TOL = dict(rtol=2e-5, atol=2e-5)


# ---------------------------------------------------------------- strategies


@st.composite
def shapes(draw, min_ndim=1, max_ndim=4, max_side=6):
    ndim = draw(st.integers(min_ndim, max_ndim))
    return tuple(draw(st.integers(1, max_side)) for _ in range(ndim))


@st.composite
def axes_for(draw, ndim):
    """A non-empty set of axes, as an int or a tuple, positive or negative."""
    chosen = draw(st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True))
    chosen = [a - ndim if draw(st.booleans()) else a for a in chosen]
    return chosen[0] if len(chosen) == 1 and draw(st.booleans()) else tuple(chosen)


def _rng(data):
    return np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))


def _array(rng, shape, offset=0.0):
    return (offset + rng.standard_normal(shape) * rng.uniform(0.5, 3)).astype(np.float32)


DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def _tolerance(dtype, expect):
    """f32: a few ulps. Half precision: two ulps of the dtype at the output's scale."""
    if dtype == jnp.float32:
        return F32_TOL
    eps = float(jnp.finfo(dtype).eps)
    return dict(rtol=2 * eps, atol=2 * eps * max(1.0, float(np.nanmax(np.abs(expect)))))


def _maybe_mask(data, rng, shape):
    """None, or a boolean mask of a shape that broadcasts to ``shape``."""
    if not data.draw(st.booleans(), label="use mask"):
        return None
    mshape = tuple(1 if data.draw(st.booleans()) else n for n in shape)
    return rng.random(mshape) < 0.7


def _maybe_param(data, rng, feature_shape, name):
    """None, a full parameter, or one that broadcasts to ``feature_shape``."""
    kind = data.draw(st.sampled_from(["none", "full", "broadcast"]), label=name)
    if kind == "none":
        return None
    shape = feature_shape if kind == "full" else tuple(1 for _ in feature_shape)
    return rng.standard_normal(shape).astype(np.float32)


def _feature_shape(shape, axis):
    axes = (axis,) if isinstance(axis, int) else axis
    return tuple(shape[a] for a in sorted(a % len(shape) for a in axes))


# ------------------------------------------------------- against references


class AgainstReferenceTest(chex.TestCase):
    """Every function, with and without jit, over drawn shapes, axes, masks."""

    @chex.variants(with_jit=True, without_jit=True)
    @given(st.data())
    def test_layer_norm(self, data):
        rng = _rng(data)
        shape = data.draw(shapes())
        axis = data.draw(axes_for(len(shape)))
        x = _array(rng, shape, offset=data.draw(st.sampled_from([0.0, 5.0, -300.0])))
        scale = _maybe_param(data, rng, _feature_shape(shape, axis), "scale")
        bias = _maybe_param(data, rng, _feature_shape(shape, axis), "bias")
        mask = _maybe_mask(data, rng, shape)
        eps = data.draw(st.sampled_from([0.0, 1e-6, 1e-2]))
        dtype = DTYPES[data.draw(st.sampled_from(sorted(DTYPES)), label="dtype")]
        x = jnp.asarray(x, dtype)
        f = self.variant(lambda x, s, b, m: lnjax.layer_norm(x, s, b, axis=axis, epsilon=eps, mask=m))
        y = f(x, scale, bias, mask)
        self.assertEqual(y.dtype, dtype)
        self.assertEqual(y.shape, x.shape)
        x = np.asarray(x, np.float64)  # the reference sees the values lnjax saw
        expect = ref.layer_norm(x, scale, bias, axis=axis, epsilon=eps, mask=mask)
        if dtype != jnp.float32:  # the output is rounded to the dtype
            expect = np.asarray(jnp.asarray(expect, dtype), np.float64)
        # Compare where the normalization is well conditioned: a row whose
        # selected values are all equal has variance 0 and, with epsilon 0,
        # no defined output.
        red = tuple(sorted(a % x.ndim for a in np.atleast_1d(axis)))
        _, var, _ = ref.moments(x, red, mask)
        good = np.broadcast_to(var + eps > 1e-4, x.shape)
        y = np.asarray(y, np.float64)
        np.testing.assert_array_equal(np.isnan(y), np.isnan(expect))
        if good.any():
            np.testing.assert_allclose(y[good], expect[good], **_tolerance(dtype, expect[good]))

    @chex.variants(with_jit=True, without_jit=True)
    @given(st.data())
    def test_rms_norm(self, data):
        rng = _rng(data)
        shape = data.draw(shapes())
        axis = data.draw(axes_for(len(shape)))
        x = _array(rng, shape, offset=data.draw(st.sampled_from([0.0, 5.0])))
        scale = _maybe_param(data, rng, _feature_shape(shape, axis), "scale")
        mask = _maybe_mask(data, rng, shape)
        dtype = DTYPES[data.draw(st.sampled_from(sorted(DTYPES)), label="dtype")]
        x = jnp.asarray(x, dtype)
        f = self.variant(lambda x, s, m: lnjax.rms_norm(x, s, axis=axis, epsilon=1e-6, mask=m))
        y = f(x, scale, mask)
        self.assertEqual(y.dtype, dtype)
        expect = ref.rms_norm(np.asarray(x, np.float64), scale, axis=axis, epsilon=1e-6, mask=mask)
        if dtype != jnp.float32:
            expect = np.asarray(jnp.asarray(expect, dtype), np.float64)
        np.testing.assert_allclose(np.asarray(y, np.float64), expect, **_tolerance(dtype, expect))

    @chex.variants(with_jit=True, without_jit=True)
    @given(st.data())
    def test_group_norm(self, data):
        rng = _rng(data)
        shape = data.draw(shapes(min_ndim=2))
        groups = data.draw(st.integers(1, 3))
        shape = shape[:-1] + (groups * data.draw(st.integers(1, 3)),)
        x = _array(rng, shape, offset=data.draw(st.sampled_from([0.0, 40.0])))
        scale = _maybe_param(data, rng, shape[-1:], "scale")
        bias = _maybe_param(data, rng, shape[-1:], "bias")
        mask = _maybe_mask(data, rng, shape)
        f = self.variant(lambda x, s, b, m: lnjax.group_norm(x, groups, s, b, epsilon=1e-3, mask=m))
        np.testing.assert_allclose(
            f(x, scale, bias, mask),
            ref.group_norm(x, groups, scale, bias, epsilon=1e-3, mask=mask), **F32_TOL)

    @chex.variants(with_jit=True, without_jit=True)
    @given(st.data())
    def test_instance_norm(self, data):
        rng = _rng(data)
        shape = data.draw(shapes(min_ndim=3))
        x = _array(rng, shape, offset=data.draw(st.sampled_from([0.0, -7.0])))
        scale = _maybe_param(data, rng, shape[-1:], "scale")
        bias = _maybe_param(data, rng, shape[-1:], "bias")
        mask = _maybe_mask(data, rng, shape)
        f = self.variant(lambda x, s, b, m: lnjax.instance_norm(x, s, b, epsilon=1e-3, mask=m))
        np.testing.assert_allclose(
            f(x, scale, bias, mask),
            ref.instance_norm(x, scale, bias, epsilon=1e-3, mask=mask), **F32_TOL)

    @chex.variants(with_jit=True, without_jit=True)
    @given(st.data())
    def test_batch_norm(self, data):
        rng = _rng(data)
        shape = data.draw(shapes(min_ndim=2))
        axis = data.draw(axes_for(len(shape)))
        red = sorted(a % len(shape) for a in np.atleast_1d(axis))
        feature_shape = tuple(n for i, n in enumerate(shape) if i not in red)
        x = _array(rng, shape, offset=data.draw(st.sampled_from([0.0, 100.0])))
        scale = _maybe_param(data, rng, feature_shape, "scale")
        bias = _maybe_param(data, rng, feature_shape, "bias")
        mask = _maybe_mask(data, rng, shape)
        unbiased = data.draw(st.booleans(), label="unbiased")
        dtype = DTYPES[data.draw(st.sampled_from(sorted(DTYPES)), label="dtype")]
        x = jnp.asarray(x, dtype)
        f = self.variant(lambda x, s, b, m: lnjax.batch_norm(
            x, s, b, reduction_axes=axis, epsilon=1e-3, mask=m, unbiased=unbiased))
        y, mean, var = f(x, scale, bias, mask)
        self.assertEqual(y.dtype, dtype)
        x = np.asarray(x, np.float64)
        ry, rmean, rvar = ref.batch_norm(x, scale, bias, axis=axis, epsilon=1e-3, mask=mask,
                                         unbiased=unbiased)
        if dtype != jnp.float32:
            ry = np.asarray(jnp.asarray(ry, dtype), np.float64)
        np.testing.assert_allclose(np.asarray(y, np.float64), ry, **_tolerance(dtype, ry))
        np.testing.assert_allclose(mean, rmean, rtol=1e-6, atol=1e-5)
        np.testing.assert_allclose(var, rvar, rtol=2e-5, atol=2e-5)
        self.assertEqual(mean.dtype, jnp.float32)

    @chex.variants(with_jit=True, without_jit=True)
    @given(st.data())
    def test_weight_norm(self, data):
        rng = _rng(data)
        shape = data.draw(shapes())
        axis = data.draw(st.one_of(st.none(), axes_for(len(shape))))
        feature_shape = () if axis is None else _feature_shape(shape, axis)
        v = _array(rng, shape)
        g = rng.standard_normal(feature_shape).astype(np.float32)
        f = self.variant(lambda v, g: lnjax.weight_norm(v, g, axis=axis))
        np.testing.assert_allclose(f(v, g), ref.weight_norm(v, g, axis=axis), **F32_TOL)


# ---------------------------------------------------------- exactness


FUNCTIONS = {
    "layer_norm": (lambda x: lnjax.layer_norm(x), lambda x: ref.layer_norm(x)),
    "layer_norm_masked": (
        lambda x: lnjax.layer_norm(x, mask=np.arange(x.shape[-1]) % 5 != 0),
        lambda x: ref.layer_norm(x, mask=np.arange(x.shape[-1]) % 5 != 0)),
    "group_norm": (lambda x: lnjax.group_norm(x.reshape(8, -1, 16), 4).reshape(x.shape),
                   lambda x: ref.group_norm(x.reshape(8, -1, 16), 4).reshape(x.shape)),
    "instance_norm": (lambda x: lnjax.instance_norm(x.reshape(8, -1, 4)).reshape(x.shape),
                      lambda x: ref.instance_norm(x.reshape(8, -1, 4)).reshape(x.shape)),
    "batch_norm": (lambda x: lnjax.batch_norm(x.T)[0].T, lambda x: ref.batch_norm(x.T)[0].T),
}


@pytest.mark.parametrize("offset", [1e4, 1e5, 1e6])
@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_exact_far_from_zero(name, offset):
    """f32 rows of unit variance around ``offset``: within 1e-5 of float64."""
    ours, theirs = FUNCTIONS[name]
    rng = np.random.default_rng(int(offset))
    x = (offset + rng.standard_normal((8, 1024))).astype(np.float32)
    err = np.max(np.abs(np.asarray(jax.jit(ours)(x), np.float64) - theirs(x)))
    assert err < 1e-5, f"{name} at offset {offset:g}: max error {err:.3g}"


@pytest.mark.parametrize("width", [3, 4096])
def test_rms_norm_far_from_zero(width):
    x = (1e6 + np.random.default_rng(0).standard_normal((4, width))).astype(np.float32)
    err = np.max(np.abs(np.asarray(lnjax.rms_norm(x), np.float64) - ref.rms_norm(x)))
    assert err < 1e-5


# ------------------------------------------------------- dtypes


HALF = [jnp.bfloat16, jnp.float16]


@pytest.mark.parametrize("dtype", HALF, ids=["bf16", "f16"])
@pytest.mark.parametrize("name", ["layer_norm", "rms_norm", "group_norm", "instance_norm",
                                  "batch_norm"])
def test_half_precision_stats_in_f32(name, dtype):
    """Half-precision input: output in that dtype, statistics in f32.

    The data sit at 100 with unit spread, where a half-precision mean is off
    by a quarter: only statistics kept in f32 land within one output ulp.
    """
    rng = np.random.default_rng(1)
    x = jnp.asarray((100 + rng.standard_normal((4, 8, 64))).astype(np.float32), dtype)
    x32 = np.asarray(x.astype(jnp.float32))
    fns = {
        "layer_norm": (lnjax.layer_norm, ref.layer_norm),
        "rms_norm": (lnjax.rms_norm, ref.rms_norm),
        "group_norm": (lambda v: lnjax.group_norm(v, 8), lambda v: ref.group_norm(v, 8)),
        "instance_norm": (lnjax.instance_norm, ref.instance_norm),
        "batch_norm": (lambda v: lnjax.batch_norm(v, reduction_axes=(0, 1))[0],
                       lambda v: ref.batch_norm(v, axis=(0, 1))[0]),
    }
    ours, theirs = fns[name]
    y = jax.jit(ours)(x)
    assert y.dtype == dtype
    expect = theirs(x32)
    ulp = float(jnp.finfo(dtype).eps)
    np.testing.assert_allclose(np.asarray(y, np.float64), expect,
                               rtol=ulp, atol=ulp * np.abs(expect).max())


def test_batch_norm_stats_are_f32_for_half_input():
    x = jnp.ones((4, 3), jnp.bfloat16)
    _, mean, var = lnjax.batch_norm(x)
    assert mean.dtype == jnp.float32 and var.dtype == jnp.float32


def test_float64_input_keeps_float64():
    with jax.enable_x64(True):
        x = np.random.default_rng(0).standard_normal((3, 5))
        y = lnjax.layer_norm(x)
        assert y.dtype == jnp.float64
        np.testing.assert_allclose(y, ref.layer_norm(x), rtol=1e-12, atol=1e-12)


# ------------------------------------------------------- robustness


def test_nan_in_one_row_leaves_the_others_untouched():
    x = np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32)
    x[2, 3] = np.nan
    y = np.asarray(jax.jit(lnjax.layer_norm)(x))
    assert np.isnan(y[2]).all()
    clean = np.delete(np.arange(5), 2)
    assert np.isfinite(y[clean]).all()
    np.testing.assert_allclose(y[clean], ref.layer_norm(x[clean]), **F32_TOL)


def test_masked_out_nan_and_inf_do_not_leak():
    x = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    mask = np.ones_like(x, bool)
    mask[:, 0] = False
    x[:, 0] = [np.nan, np.inf, -np.inf]
    y = jax.jit(lambda v: lnjax.layer_norm(v, mask=mask))(x)
    np.testing.assert_allclose(np.asarray(y)[:, 1:], ref.layer_norm(x, mask=mask)[:, 1:],
                               **F32_TOL)


def test_masked_out_values_do_not_change_valid_gradients():
    """Gradients at selected positions ignore whatever finite junk is masked out."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 8)).astype(np.float32)
    w = rng.standard_normal((3, 7)).astype(np.float32)
    mask = np.ones_like(x, bool)
    mask[:, 0] = False
    grad = jax.jit(jax.grad(lambda v: jnp.sum(w * lnjax.layer_norm(v, mask=mask)[:, 1:])))
    junk = x.copy()
    junk[:, 0] = [1e6, -3e4, 0.0]
    np.testing.assert_allclose(np.asarray(grad(junk))[:, 1:], np.asarray(grad(x))[:, 1:],
                               rtol=1e-5, atol=1e-6)


def test_fully_masked_row_is_finite():
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    mask = np.array([[True] * 4, [False] * 4])
    y = lnjax.layer_norm(x, mask=mask)
    assert np.isfinite(np.asarray(y)).all()
    np.testing.assert_allclose(y, ref.layer_norm(x, mask=mask), rtol=1e-5)


# ------------------------------------------------------- bad input


BAD_INPUTS = [
    ("axis out of range", ValueError, r"axis=2 is out of range for x of shape \(3, 4\)",
     lambda: lnjax.layer_norm(jnp.ones((3, 4)), axis=2)),
    ("axis repeated", ValueError, r"axis=\(1, -1\) names the same axis twice",
     lambda: lnjax.layer_norm(jnp.ones((3, 4)), axis=(1, -1))),
    ("axis not an int", TypeError, r"axis=1.0 must be an int",
     lambda: lnjax.rms_norm(jnp.ones((3, 4)), axis=1.0)),
    ("scale wrong shape", ValueError, r"scale of shape \(3,\) does not match the feature shape \(4,\)",
     lambda: lnjax.layer_norm(jnp.ones((3, 4)), jnp.ones(3))),
    ("bias wrong shape", ValueError, r"bias of shape \(2, 4\) does not match the feature shape \(4,\)",
     lambda: lnjax.layer_norm(jnp.ones((3, 4)), None, jnp.ones((2, 4)))),
    ("batch_norm scale", ValueError, r"scale of shape \(3,\) does not match the feature shape \(4,\)",
     lambda: lnjax.batch_norm(jnp.ones((3, 4)), jnp.ones(3))),
    ("group_norm bias", ValueError, r"bias of shape \(5,\) does not match the feature shape \(6,\)",
     lambda: lnjax.group_norm(jnp.ones((2, 6)), 2, None, jnp.ones(5))),
    ("weight_norm g", ValueError, r"g of shape \(3,\) does not match the feature shape \(2,\)",
     lambda: lnjax.weight_norm(jnp.ones((2, 5)), jnp.ones(3))),
    ("mask not broadcastable", ValueError,
     r"mask of shape \(2,\) does not broadcast to x of shape \(3, 4\)",
     lambda: lnjax.layer_norm(jnp.ones((3, 4)), mask=jnp.ones(2, bool))),
    ("mask larger than x", ValueError, r"mask of shape \(2, 3, 4\) does not broadcast",
     lambda: lnjax.batch_norm(jnp.ones((3, 4)), mask=jnp.ones((2, 3, 4), bool))),
    ("negative epsilon", ValueError, r"epsilon must be >= 0, got -1e-05",
     lambda: lnjax.layer_norm(jnp.ones((3, 4)), epsilon=-1e-5)),
    ("negative epsilon bn", ValueError, r"batch_norm: epsilon must be >= 0",
     lambda: lnjax.batch_norm(jnp.ones((3, 4)), epsilon=-1.0)),
    ("groups do not divide", ValueError,
     r"num_groups=4 must be a positive divisor of the number of channels 6",
     lambda: lnjax.group_norm(jnp.ones((2, 3, 6)), 4)),
    ("zero groups", ValueError, r"num_groups=0 must be a positive divisor",
     lambda: lnjax.group_norm(jnp.ones((2, 3, 6)), 0)),
    ("empty axis", ValueError, r"include axis 1 of size 0",
     lambda: lnjax.layer_norm(jnp.ones((3, 0)))),
    ("empty batch", ValueError, r"include axis 0 of size 0",
     lambda: lnjax.batch_norm(jnp.ones((0, 4)))),
    ("no axis at all", ValueError, r"axis=\(\) selects no axis",
     lambda: lnjax.layer_norm(jnp.ones((3, 4)), axis=())),
    ("integer input", TypeError, r"layer_norm: x must have a floating-point dtype, got int32",
     lambda: lnjax.layer_norm(jnp.ones((3, 4), jnp.int32))),
    ("integer input bn", TypeError, r"batch_norm: x must have a floating-point dtype, got bool",
     lambda: lnjax.batch_norm(jnp.ones((3, 4), bool))),
    ("integer weights", TypeError, r"weight_norm: v must have a floating-point dtype",
     lambda: lnjax.weight_norm(np.ones((3, 4), np.int64), jnp.ones(3))),
    ("instance_norm rank", ValueError, r"at least one spatial axis, got shape \(3, 4\)",
     lambda: lnjax.instance_norm(jnp.ones((3, 4)))),
]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_raises_a_clear_error(case):
    _, exc, pattern, call = case
    with pytest.raises(exc, match=pattern):
        call()


def test_bad_input_raises_at_trace_time_under_jit():
    with pytest.raises(ValueError, match=r"scale of shape \(3,\)"):
        jax.jit(lambda x: lnjax.layer_norm(x, jnp.ones(3)))(jnp.ones((2, 4)))


# ------------------------------------------------------- transformations


GRAD_CASES = {
    "layer_norm": lambda x, s, b: lnjax.layer_norm(x, s, b, epsilon=1e-3),
    "layer_norm_axes": lambda x, s, b: lnjax.layer_norm(x, s.reshape(1, 4), b.reshape(1, 4),
                                                        axis=(0, 1)),
    "layer_norm_masked": lambda x, s, b: lnjax.layer_norm(
        x, s, b, mask=jnp.array([True, False, True, True])),
    "rms_norm": lambda x, s, b: lnjax.rms_norm(x, s) + b,
    "group_norm": lambda x, s, b: lnjax.group_norm(x.reshape(3, 1, 4), 2, s, b),
    "instance_norm": lambda x, s, b: lnjax.instance_norm(x.reshape(1, 3, 4), s, b),
    "batch_norm": lambda x, s, b: lnjax.batch_norm(x, s, b, epsilon=1e-3)[0],
    "batch_norm_unbiased_masked": lambda x, s, b: lnjax.batch_norm(
        x, s, b, mask=jnp.array([[True], [True], [False]]), unbiased=True)[0],
    "batch_norm_stats": lambda x, s, b: jnp.concatenate(
        [v.ravel() for v in lnjax.batch_norm(x.reshape(3, 2, 2), s[:2], b[:2], reduction_axes=(0, 2),
                                             unbiased=True)]),
    # Running statistics far from the batch's: r and d sit on their limits (constants, as
    # the gradient takes them, so that finite differences agree with it).
    "batch_renorm": lambda x, s, b: lnjax.batch_renorm(
        x, s, b, running_mean=b - 50.0, running_var=100 * s * s, r_max=2.0, d_max=0.7)[0],
    "group_norm_masked": lambda x, s, b: lnjax.group_norm(
        x.reshape(1, 3, 4), 2, s, b, mask=jnp.array([[[True], [False], [True]]])),
    "instance_norm_masked": lambda x, s, b: lnjax.instance_norm(
        x.reshape(1, 3, 4), s, b, mask=jnp.array([[[True], [True], [False]]])),
    "rms_norm_masked": lambda x, s, b: lnjax.rms_norm(
        x, s[:3], axis=0, mask=jnp.array([[True], [False], [True]])) + b,
    "weight_norm": lambda x, s, b: lnjax.weight_norm(x, s[:3], axis=0) + b,
}


@pytest.mark.parametrize("name", sorted(GRAD_CASES))
def test_gradients_second_order(name):
    """check_grads to order 2 in forward and reverse mode, in float64."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        x = rng.standard_normal((3, 4)) + 2.0
        s = rng.standard_normal(4) + 1.0
        b = rng.standard_normal(4)
        check_grads(jax.jit(GRAD_CASES[name]), (x, s, b), order=2, modes=("fwd", "rev"),
                    atol=1e-5, rtol=1e-5)


def test_gradients_in_a_traced_epsilon():
    """epsilon is differentiable where it is traced (forward and reverse, to order 2)."""
    with jax.enable_x64(True):
        x = np.random.default_rng(0).standard_normal((5, 3)) + 4.0
        for f in (lambda e: lnjax.batch_norm(x, epsilon=e)[0],
                  lambda e: lnjax.group_norm(x.reshape(1, 5, 3), 3, epsilon=e),
                  lambda e: lnjax.layer_norm(x, axis=0, epsilon=e)):
            check_grads(jax.jit(f), (0.3,), order=2, modes=("fwd", "rev"), atol=1e-6,
                        rtol=1e-6)


RESIDUAL_X = jnp.asarray(np.random.default_rng(0).standard_normal((8, 4, 4, 6)), jnp.float32)
RESIDUAL_MASK = jnp.asarray(np.random.default_rng(1).random((8, 4, 4, 6)) < 0.8)
RESIDUAL_CASES = {
    "batch_norm": lambda x, s, b: lnjax.batch_norm(x, s, b, reduction_axes=(0, 1, 2))[0],
    "batch_norm_masked": lambda x, s, b: lnjax.batch_norm(x, s, b, reduction_axes=(0, 1, 2),
                                                          mask=RESIDUAL_MASK)[0],
    "batch_renorm": lambda x, s, b: lnjax.batch_renorm(
        x, s, b, reduction_axes=(0, 1, 2), running_mean=b, running_var=s)[0],
    "group_norm": lambda x, s, b: lnjax.group_norm(x, 3, s, b),
    "instance_norm": lambda x, s, b: lnjax.instance_norm(x, s, b),
    "layer_norm_masked": lambda x, s, b: lnjax.layer_norm(x, s, b, mask=RESIDUAL_MASK),
    "layer_norm_leading_axis": lambda x, s, b: lnjax.layer_norm(x, axis=0),
}


@pytest.mark.parametrize("name", sorted(RESIDUAL_CASES))
def test_reverse_mode_saves_only_x_and_the_mask(name):
    """The analytic backward keeps x (and a mask) and statistics-sized arrays, nothing else
    of x's size (autodiff of the statistics would keep x - shift and the centred values)."""
    s, b = jnp.full((6,), 1.5), jnp.full((6,), 0.25)
    _, vjp = jax.vjp(RESIDUAL_CASES[name], RESIDUAL_X, s, b)
    big = [leaf.dtype for leaf in jax.tree.leaves(vjp)
           if getattr(leaf, "size", 0) >= RESIDUAL_X.size]
    assert sorted(map(str, big)) == (["bool", "float32"] if "masked" in name else ["float32"])


def test_vmap_jacfwd_hessian_compose():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((5, 3, 6)), jnp.float32)
    batched = jax.vmap(lnjax.layer_norm)(x)
    np.testing.assert_allclose(batched, lnjax.layer_norm(x), rtol=1e-6, atol=1e-6)

    def f(v):
        return jnp.sum(jnp.tanh(lnjax.layer_norm(v, epsilon=1e-3)) ** 2)

    with jax.enable_x64(True):
        v = np.random.default_rng(1).standard_normal(6)
        h_fwd = jax.jit(jax.hessian(f))(v)
        h_rev = jax.jit(jax.jacrev(jax.jacrev(f)))(v)
        np.testing.assert_allclose(h_fwd, h_rev, rtol=1e-10, atol=1e-10)
        # The Hessian of a shift-invariant function annihilates the ones vector.
        np.testing.assert_allclose(h_fwd @ np.ones(6), np.zeros(6), atol=1e-10)


def test_gradient_far_from_zero_matches_reference_gradient():
    """d/dx sum(w * LN(x)) at offset 1e5, in f32, against the float64 formula."""
    rng = np.random.default_rng(3)
    x = (1e5 + rng.standard_normal((4, 256))).astype(np.float32)
    w = rng.standard_normal((4, 256)).astype(np.float32)
    g = np.asarray(jax.grad(lambda v: jnp.sum(w * lnjax.layer_norm(v)))(x), np.float64)
    xd = x.astype(np.float64)
    xhat = ref.layer_norm(xd)
    r = 1 / np.sqrt(xd.var(-1, keepdims=True) + 1e-6)
    expect = r * (w - w.mean(-1, keepdims=True) - xhat * (w * xhat).mean(-1, keepdims=True))
    np.testing.assert_allclose(g, expect, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("offset", [0.0, 1e4, 1e5])
def test_batch_norm_gradient_far_from_zero_matches_reference_gradient(offset):
    """d/dx sum(w * BN(x)) in f32 against the float64 formula: the analytic backward keeps
    the exactness of the shifted statistics far from zero."""
    rng = np.random.default_rng(3)
    x = (offset + rng.standard_normal((256, 16))).astype(np.float32)
    w = rng.standard_normal((256, 16)).astype(np.float32)
    g = np.asarray(jax.grad(lambda v: jnp.sum(w * lnjax.batch_norm(v)[0]))(x), np.float64)
    xd = x.astype(np.float64)
    xhat = ref.batch_norm(xd)[0]
    r = 1 / np.sqrt(xd.var(0) + 1e-5)
    expect = r * (w - w.mean(0) - xhat * (w * xhat).mean(0))
    np.testing.assert_allclose(g, expect, rtol=0, atol=1e-6 * np.abs(expect).max())


def test_batch_norm_nan_example_masked_out_keeps_outputs_but_not_that_features_gradients():
    """What the known limit says (docs/guides/known-limits.md): the mask keeps a NaN example
    out of the statistics and the other outputs; the gradients of its feature are NaN all the
    same."""
    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    x[1, 3] = np.nan
    keep = np.ones((4, 1), bool)
    keep[1] = False
    w = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    y, mean, var = lnjax.batch_norm(x, mask=keep)
    assert np.isfinite(np.delete(np.asarray(y), 1, 0)).all()
    assert np.isfinite(np.asarray(mean)).all() and np.isfinite(np.asarray(var)).all()
    g = np.asarray(jax.grad(lambda v: jnp.sum(jnp.where(
        keep, lnjax.batch_norm(v, mask=keep)[0] * w, 0)))(x))
    others = np.delete(g, 1, 0)
    assert np.isnan(others[:, 3]).all()
    assert np.isfinite(np.delete(others, 3, 1)).all()


# --------------------------------------------------------------------------
# batch_norm's reduced axes: reduction_axes, and the deprecated axis.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("fn", ["batch_norm", "batch_renorm"])
def test_the_old_axis_warns_naming_the_axes_it_reduces_and_gives_the_same_result(fn):
    x = jnp.asarray(np.random.default_rng(0).normal(3.0, 2.0, (4, 3, 3, 5)), jnp.float32)
    extra = ({} if fn == "batch_norm" else
             {"running_mean": jnp.zeros(5), "running_var": jnp.ones(5)})
    f = getattr(lnjax, fn)
    with pytest.warns(DeprecationWarning, match=r"reduced over, here \(0, 1, 2\) of x's 4 "
                      r"\(the features are \(3,\)\); pass reduction_axes=\(0, 1, 2\)"):
        old = f(x, axis=(0, 1, -2), **extra)
    new = f(x, reduction_axes=(0, 1, 2), **extra)
    for a, b in zip(old, new, strict=True):
        np.testing.assert_array_equal(a, b)
    assert new[1].shape == (5,)
    with pytest.raises(TypeError, match="pass reduction_axes only"):
        f(x, reduction_axes=0, axis=0, **extra)


def test_batch_norm_and_the_module_say_which_meaning_their_axis_has():
    from lnjax import linen as lnn

    function, module = (" ".join(f.__doc__.split()) for f in (lnjax.batch_norm, lnn.BatchNorm))
    assert "*reduced over*" in function and "names the feature axes" in function
    assert "the feature axis or axes, as in flax; the statistics are taken over all others" in (
        module)
    assert "names the axes reduced over instead, as ``reduction_axes``" in module


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.int32, jnp.uint8])
def test_a_mask_that_is_not_boolean_is_a_type_error_naming_its_dtype(dtype):
    from lnjax import linen as lnn

    x = jnp.ones((4, 3))
    mask = jnp.asarray([[1, 0, 1]] * 4, dtype)
    name = jnp.dtype(dtype).name
    for call in (lambda: lnjax.layer_norm(x, mask=mask),
                 lambda: lnjax.batch_norm(x, mask=mask),
                 lambda: lnn.LayerNorm().init_with_output(jax.random.key(0), x, mask=mask)):
        with pytest.raises(TypeError, match=f"mask must be boolean .* got dtype {name}"):
            call()
    np.testing.assert_array_equal(lnjax.layer_norm(x, mask=mask != 0), lnjax.layer_norm(
        x, mask=jnp.asarray([[True, False, True]] * 4)))


def _single_example_warnings(call):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        out = call()
    return out, [str(w.message) for w in seen if "single example" in str(w.message)]


def test_batch_statistics_over_one_example_warn_once_naming_the_module_and_the_shape():
    from flax import nnx

    from lnjax import linen as lnn
    from lnjax import nnx as lnnx

    x = jnp.arange(4.0).reshape(1, 4)
    y, said = _single_example_warnings(lambda: lnjax.batch_norm(x, None, jnp.full(4, 0.5)))
    np.testing.assert_array_equal(y[0], jnp.full((1, 4), 0.5))  # exactly the bias
    assert said == ["batch_norm: batch statistics over a single example (x of shape (1, 4), "
                    "reduced over axes (0,), each of size 1): every output is the bias. "
                    "Evaluate one example with the running averages (use_running_average=True), "
                    "or use a larger batch."]
    module = lnn.BatchNorm(use_running_average=False, unbiased=True)
    _, said = _single_example_warnings(lambda: module.init(jax.random.key(0), x))
    assert len(said) == 1 and said[0].startswith("BatchNorm: batch statistics over a single "
                                                 "example (x of shape (1, 4)")
    assert "divides by n - 1 = 0" in said[0]
    bn = lnnx.BatchNorm(4, rngs=nnx.Rngs(0))
    _, said = _single_example_warnings(lambda: bn(jnp.ones((1, 1, 1, 4))))
    assert len(said) == 1 and "(1, 1, 1, 4), reduced over axes (0, 1, 2)" in said[0]
    # once per call site: the same line again says nothing
    calls = [lambda: lnjax.batch_norm(x)]
    assert len(_single_example_warnings(calls[0])[1]) == 1
    assert _single_example_warnings(calls[0])[1] == []


def test_two_examples_running_averages_and_cross_device_statistics_do_not_warn():
    from lnjax import linen as lnn

    x1 = jnp.ones((1, 4))
    for call in (lambda: lnjax.batch_norm(jnp.ones((2, 4))),
                 lambda: lnjax.batch_norm(jnp.ones((1, 3, 4)), reduction_axes=(0, 1)),
                 lambda: lnn.BatchNorm(use_running_average=True).init(jax.random.key(0), x1)):
        assert _single_example_warnings(call)[1] == []
