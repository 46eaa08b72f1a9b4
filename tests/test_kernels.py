"""The row kernels of lnjax.kernels (layer/RMS norm as a custom_jvp with the analytic derivative).

layer_norm, rms_norm and the LayerNorm/RMSNorm modules hand the work to a row
kernel (the "fused path") when the normalized axes are the trailing axes, with
no mask and no cross-device axis. These tests hold it against the float64
references, the analytic path over any axes (normalization.normalized) and
JAX's transformations in both modes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads

import lnjax
from lnjax import kernels
from lnjax import linen as lnn
from lnjax import nnx as lnnx
from lnjax.kernels import xla, xla_cpu
from tests import reference as ref


def _ln(x, scale=None, bias=None, **kw):
    return lnjax.layer_norm(x, scale, bias, **kw)


def _rms(x, scale=None, bias=None, **kw):
    del bias
    return lnjax.rms_norm(x, scale, **kw)


NORMS = {"layer_norm": (_ln, ref.layer_norm), "rms_norm": (_rms, ref.rms_norm)}


def _generic(fn, x, *args, **kw):
    """The same normalization through the analytic path over any axes (a mask that selects
    everything)."""
    return fn(x, *args, mask=jnp.ones(jnp.shape(x), bool), **kw)


def _uses_fused_path(fn, *args) -> bool:
    """Whether a row kernel ran: it is chosen per platform (``lax.platform_dependent``);
    the path over any axes, analytic too (a ``custom_jvp``), is the same on every platform."""
    return "platform_index" in str(jax.make_jaxpr(fn)(*args))


def _data(shape, offset=0.0, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    x = (offset + rng.standard_normal(shape)).astype(dtype)
    scale = (1 + 0.3 * rng.standard_normal(shape[-1])).astype(dtype)
    bias = rng.standard_normal(shape[-1]).astype(dtype)
    return x, scale, bias


# ------------------------------------------------------- which path is taken


def test_fused_path_taken_only_where_it_applies():
    x = jnp.ones((3, 4, 5))
    assert _uses_fused_path(lambda v: lnjax.layer_norm(v), x)
    assert _uses_fused_path(lambda v: lnjax.layer_norm(v, axis=(-2, -1)), x)
    assert _uses_fused_path(lambda v: lnjax.rms_norm(v, axis=(1, 2)), x)
    assert _uses_fused_path(lambda v: lnn.LayerNorm().apply(
        {"params": {"scale": jnp.ones(5), "bias": jnp.zeros(5)}}, v), x)
    assert not _uses_fused_path(lambda v: lnjax.layer_norm(v, axis=0), x)
    assert not _uses_fused_path(lambda v: lnjax.layer_norm(v, axis=(0, 2)), x)
    assert not _uses_fused_path(lambda v: lnjax.layer_norm(v, mask=v > 0), x)
    assert not _uses_fused_path(lambda v: lnjax.instance_norm(v), x)


# ------------------------------------------------------- values and gradients


@pytest.mark.parametrize("name, params, axis", [
    ("layer_norm", "both", -1), ("layer_norm", "scale", (-2, -1)),
    ("layer_norm", "none", -1), ("rms_norm", "scale", -1), ("rms_norm", "none", (-2, -1))])
def test_matches_reference_and_generic_path(name, params, axis):
    fn, reference = NORMS[name]
    x, scale, bias = _data((2, 3, 8), offset=3.0)  # (8,) scale/bias broadcast to (3, 8)
    args = {"none": (), "scale": (scale,), "both": (scale, bias)}[params]
    kw = {"axis": axis, "epsilon": 1e-5}
    y = jax.jit(lambda v, *a: fn(v, *a, **kw))(x, *args)
    ref_args = args if name == "layer_norm" or params == "none" else args[:1]
    np.testing.assert_allclose(y, reference(x, *ref_args, **kw), rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(y, _generic(fn, x, *args, **kw), rtol=2e-6, atol=2e-6)

    def loss(path):
        def f(v, *a):
            out = path(v, *a)
            return jnp.sum(jnp.sin(3 * out) * jnp.arange(out.size).reshape(out.shape))
        return f

    argnums = tuple(range(1 + len(args)))
    g_fused = jax.jit(jax.grad(loss(lambda v, *a: fn(v, *a, **kw)), argnums))(x, *args)
    g_generic = jax.jit(jax.grad(loss(lambda v, *a: _generic(fn, v, *a, **kw)),
                                 argnums))(x, *args)
    for a, b in zip(g_fused, g_generic):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", sorted(NORMS))
def test_check_grads_second_order_float64(name):
    """check_grads to order 2, forward and reverse mode, in float64."""
    fn, _ = NORMS[name]
    with jax.enable_x64(True):
        x, scale, bias = _data((3, 5), offset=2.0, dtype=np.float64)
        check_grads(jax.jit(lambda v, s, b: fn(v, s, b, epsilon=1e-3)), (x, scale, bias),
                    order=2, modes=("fwd", "rev"), atol=1e-6, rtol=1e-6)


def _ln_vjp_reference(x, scale, dy, epsilon):
    """Float64 gradients of sum(dy * LN(x; scale, bias)) for x, scale and bias."""
    x, scale, dy = (np.asarray(a, np.float64) for a in (x, scale, dy))
    xhat = ref.layer_norm(x, epsilon=epsilon)
    r = 1 / np.sqrt(x.var(-1, keepdims=True) + epsilon)
    g = dy * scale
    dx = r * (g - g.mean(-1, keepdims=True) - xhat * (g * xhat).mean(-1, keepdims=True))
    return dx, (dy * xhat).sum(0), dy.sum(0)


@pytest.mark.parametrize("shape", [(16, 512), (128, 1024)], ids=["small", "large"])
def test_gradients_exact_far_from_zero(shape):
    """f32 rows at 1e6 standard deviations from zero: values and all three gradients.

    Both sizes: small arrays and large ones (from ``SPLIT_USES_FROM``
    elements) take differently arranged kernels.
    """
    assert (shape[0] * shape[1] >= xla_cpu.SPLIT_USES_FROM) == (shape[0] == 128)
    x, scale, bias = _data(shape, offset=1e6, seed=3)
    dy = np.random.default_rng(4).standard_normal(x.shape).astype(np.float32)
    y, vjp = jax.vjp(lambda v, s, b: lnjax.layer_norm(v, s, b), x, scale, bias)
    np.testing.assert_allclose(y, ref.layer_norm(x, scale, bias), rtol=0, atol=1e-5)
    for got, expect in zip(vjp(dy), _ln_vjp_reference(x, scale, dy, 1e-6)):
        err = np.max(np.abs(np.asarray(got, np.float64) - expect))
        assert err <= 2e-5 * max(1.0, np.max(np.abs(expect))), err


def test_rms_norm_gradient_matches_float64():
    x, scale, _ = _data((8, 64), offset=0.5, seed=5)
    dy = np.random.default_rng(6).standard_normal(x.shape).astype(np.float32)
    _, vjp = jax.vjp(lambda v, s: lnjax.rms_norm(v, s), x, scale)
    dx, dscale = vjp(dy)
    xd, sd, dyd = (a.astype(np.float64) for a in (x, scale, dy))
    r = 1 / np.sqrt((xd * xd).mean(-1, keepdims=True) + 1e-6)
    xhat, g = xd * r, dyd * sd
    np.testing.assert_allclose(dx, r * (g - xhat * (g * xhat).mean(-1, keepdims=True)),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dscale, (dyd * xhat).sum(0), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------- forward mode and composition


@pytest.mark.parametrize("name", sorted(NORMS))
def test_jacfwd_equals_jacrev_and_hessian_is_symmetric(name):
    fn, _ = NORMS[name]
    with jax.enable_x64(True):
        x, scale, bias = _data((2, 6), offset=1.0, seed=7, dtype=np.float64)
        f = lambda v: fn(v, scale, bias, epsilon=1e-3)  # noqa: E731
        np.testing.assert_allclose(jax.jit(jax.jacfwd(f))(x), jax.jit(jax.jacrev(f))(x),
                                   rtol=1e-12, atol=1e-12)
        loss = lambda v: jnp.sum(jnp.tanh(f(v)) ** 3)  # noqa: E731
        hess = jax.jit(jax.hessian(loss))(x)
        np.testing.assert_allclose(hess, jnp.transpose(hess, (2, 3, 0, 1)), atol=1e-10)
        generic = jax.jit(jax.hessian(lambda v: jnp.sum(jnp.tanh(_generic(
            fn, v, scale, bias, epsilon=1e-3)) ** 3)))(x)
        np.testing.assert_allclose(hess, generic, rtol=1e-9, atol=1e-9)


def test_jvp_of_scale_and_bias_alone():
    """Forward mode with a tangent on the parameters only (x's tangent is zero)."""
    x, scale, bias = _data((4, 8), offset=2.0)
    ts, tb = np.ones_like(scale), np.full_like(bias, 0.5)
    _, ty = jax.jvp(lambda s, b: lnjax.layer_norm(x, s, b), (scale, bias), (ts, tb))
    np.testing.assert_allclose(ty, ref.layer_norm(x) * ts + tb, rtol=2e-5, atol=2e-5)


def test_vmap_of_fused_path():
    x, scale, bias = _data((5, 3, 16), offset=4.0)
    f = lambda v: lnjax.layer_norm(v, scale, bias)  # noqa: E731
    np.testing.assert_allclose(jax.jit(jax.vmap(f))(x), f(x), rtol=1e-6, atol=1e-6)
    grad = jax.grad(lambda v: jnp.sum(f(v) ** 3))
    np.testing.assert_allclose(jax.jit(jax.vmap(grad))(x), jax.jit(grad)(x), rtol=1e-4,
                               atol=1e-4)


def test_reverse_mode_saves_only_x_and_per_row_numbers():
    """The residuals of jax.vjp: x itself, the scale, and three numbers per row."""
    rows, width = 24, 40
    x, scale, bias = _data((rows, width), offset=1.0)

    def vjp_of(v, s, b):
        return jax.vjp(lambda v, s, b: lnjax.layer_norm(v, s, b), v, s, b)[1]

    # Eagerly, and under jit, where the kernels of all platforms are staged out
    # (lax.platform_dependent) and must not add residuals of their own.
    for vjp in (vjp_of(x, scale, bias), jax.jit(vjp_of)(x, scale, bias)):
        sizes = sorted(leaf.size for leaf in jax.tree_util.tree_leaves(vjp)
                       if hasattr(leaf, "size"))
        assert sizes.count(rows * width) == 1, sizes
        assert all(s <= max(rows, width) for s in sizes if s != rows * width), sizes
        assert sum(s == rows for s in sizes) <= 3, sizes


# ------------------------------------------------------- dtypes and robustness


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=["bf16", "f16"])
def test_half_precision_statistics_in_f32(dtype):
    x32, scale, bias = _data((4, 256), offset=100.0, seed=8)
    x = jnp.asarray(x32, dtype)
    y = jax.jit(lnjax.layer_norm)(x, scale, bias)
    assert y.dtype == dtype
    expect = ref.layer_norm(np.asarray(x, np.float64), scale, bias)
    ulp = float(jnp.finfo(dtype).eps)
    np.testing.assert_allclose(np.asarray(y, np.float64), expect, rtol=ulp,
                               atol=ulp * np.abs(expect).max())
    dx, ds, db = jax.grad(lambda v, s, b: jnp.sum(lnjax.layer_norm(v, s, b).astype(
        jnp.float32) ** 2), (0, 1, 2))(x, scale, bias)
    assert dx.dtype == dtype and ds.dtype == jnp.float32 and db.dtype == jnp.float32
    assert np.isfinite(np.asarray(dx, np.float32)).all()


def test_nan_row_stays_in_its_row_through_the_gradient():
    x, scale, bias = _data((5, 32), seed=9)
    x[2, 7] = np.nan
    y, vjp = jax.vjp(lambda v: lnjax.layer_norm(v, scale, bias), x)
    (dx,) = vjp(np.ones_like(x))
    clean = np.delete(np.arange(5), 2)
    assert np.isnan(np.asarray(y)[2]).all() and np.isfinite(np.asarray(y)[clean]).all()
    assert np.isfinite(np.asarray(dx)[clean]).all()


def test_outlier_leading_element_keeps_exactness():
    """A shift taken from one element would lose precision here; the rough mean does not."""
    x = np.zeros((4, 4096), np.float32)
    x[:, 0] = 1e4
    x += np.random.default_rng(10).standard_normal(x.shape).astype(np.float32) * 1e-2 + 1e5
    expect = ref.layer_norm(x)
    err = np.max(np.abs(np.asarray(jax.jit(lnjax.layer_norm)(x), np.float64) - expect))
    assert err < 2e-6 * np.max(np.abs(expect)), err


def test_fused_path_reports_shape_errors_by_name():
    with pytest.raises(ValueError, match="scale of shape"):
        lnjax.layer_norm(jnp.ones((2, 4)), jnp.ones(3))
    with pytest.raises(ValueError, match="bias of shape"):
        lnjax.layer_norm(jnp.ones((2, 4)), None, jnp.ones((2, 4)))


def test_kernel_applies_predicate():
    def applies(shape=(2, 3), red=(1,), feat=(1,), **kw):
        kw = {"epsilon": 1e-6, "masked": False, "fast_variance": False, "axis_name": None,
              **kw}
        return kernels.applies(shape, red, feat, **kw)

    assert applies()
    assert applies((2, 3, 4), (1, 2), (1, 2))
    assert not applies(epsilon=jnp.float32(1e-6))
    assert not applies(epsilon=True)
    assert not applies(fast_variance=True)
    assert not applies(axis_name="batch")
    assert not applies(masked=True)
    assert not applies(red=(0,), feat=(0,))  # not the trailing axes
    assert not applies((2, 3, 4), (2,), (1, 2))  # parameters over other axes
    assert not applies((0, 3))  # nothing to compute


KERNELS = {"xla_cpu": xla_cpu.row_norm, "xla": xla.row_norm}


@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_every_xla_kernel_keeps_the_contract(kernel):
    """Each XLA row kernel matches the float64 reference, layer and RMS norm, f32 and bf16 in."""
    impl = KERNELS[kernel]
    for dtype, tol in ((np.float32, 1e-5), (jnp.bfloat16, 2e-2)):
        x, scale, bias = _data((8, 40), offset=1e4)
        x = jnp.asarray(x, dtype)
        for centered, reference in ((True, ref.layer_norm), (False, ref.rms_norm)):
            y = impl(x, jnp.asarray(scale), jnp.asarray(bias) if centered else None,
                     epsilon=1e-6, centered=centered, stats_dtype=jnp.float32, out_dtype=dtype)
            assert y.dtype == dtype
            xd = np.asarray(x, np.float64)
            want = (reference(xd, scale, bias, axis=-1, epsilon=1e-6) if centered else
                    reference(xd, scale, axis=-1, epsilon=1e-6))
            np.testing.assert_allclose(np.asarray(y, np.float64), want, rtol=tol, atol=tol,
                                       err_msg=f"{kernel} {dtype}")


@pytest.mark.parametrize("centered", [True, False], ids=["layer", "rms"])
def test_plain_xla_kernel_derivatives_equal_the_tuned_ones(centered):
    """Reverse mode, jacfwd and hessian of the GPU/TPU kernel equal the CPU-tuned kernel's."""
    with jax.enable_x64(True):
        x, scale, bias = _data((3, 7), offset=1e3, seed=5, dtype=np.float64)
        bias = bias if centered else None

        def loss(impl):
            return lambda v, g: jnp.sum(jnp.tanh(impl(
                v, g, bias, epsilon=1e-3, centered=centered, stats_dtype=jnp.float64,
                out_dtype=jnp.float64)) ** 3)

        for transform in (jax.grad, jax.hessian):
            got = jax.jit(transform(loss(xla.row_norm), (0, 1)))(x, scale)
            want = jax.jit(transform(loss(xla_cpu.row_norm), (0, 1)))(x, scale)
            jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9),
                         got, want)
        check_grads(lambda v, g: xla.row_norm(v, g, bias, epsilon=1e-3, centered=centered,
                                              stats_dtype=jnp.float64, out_dtype=jnp.float64),
                    (x, scale), order=2, modes=("fwd", "rev"))


# ------------------------------------------------- the choice per platform


def _exported_text(f, platforms, *args):
    exp = jax.export.export(jax.jit(f), platforms=platforms)(*args)
    return exp.mlir_module()


@pytest.mark.parametrize("name", ["layer_norm", "rms_norm"])
def test_default_lowering_per_platform(name):
    """GPU and TPU get the plain XLA kernel (no barrier, no matmul); the CPU the tuned one."""
    fn = NORMS[name][0]
    x, scale, bias = (jnp.asarray(a) for a in _data((512, 1024)))
    fwd = lambda v, g, b: fn(v, g, b)  # noqa: E731
    grad = jax.grad(lambda v, g, b: jnp.sum(fn(v, g, b) ** 2), (0, 1, 2))
    for f in (fwd, grad):
        for platform in ("cuda", "tpu"):
            text = _exported_text(f, [platform], x, scale, bias)
            assert "optimization_barrier" not in text, (name, platform)
            assert "dot_general" not in text, (name, platform)
        cpu = _exported_text(f, ["cpu"], x, scale, bias)
        assert "optimization_barrier" in cpu
    assert "dot_general" in _exported_text(grad, ["cpu"], x, scale, bias)


def test_one_export_carries_a_kernel_for_each_platform():
    x, scale, bias = (jnp.asarray(a) for a in _data((64, 256)))
    f = jax.grad(lambda v, g, b: jnp.sum(lnjax.layer_norm(v, g, b) ** 2), (0, 1, 2))
    exp = jax.export.export(jax.jit(f), platforms=["cpu", "cuda", "tpu"])(x, scale, bias)
    assert exp.platforms == ("cpu", "cuda", "tpu")
    assert "stablehlo.case" in exp.mlir_module()
    got = exp.call(x, scale, bias)  # runs the CPU branch here
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6),
                 got, jax.jit(f)(x, scale, bias))


def test_platform_defaults_are_xla_until_measured():
    """No platform defaults to Pallas without a measurement on that hardware (docs/guides)."""
    assert set(kernels.DEFAULTS.values()) == {"xla"}
    assert kernels.kernel("cpu") is xla_cpu.row_norm
    assert kernels.kernel("cuda") is kernels.kernel("tpu") is xla.row_norm
    assert kernels.kernel("cpu", "xla") is xla_cpu.row_norm


def test_implementation_is_checked_by_name():
    x = jnp.ones((2, 4))
    with pytest.raises(ValueError, match=r"layer_norm: implementation='triton' must be None"):
        lnjax.layer_norm(x, implementation="triton")
    with pytest.raises(ValueError, match=r"rms_norm: implementation='XLA'"):
        lnjax.rms_norm(x, implementation="XLA")
    with pytest.raises(ValueError, match=r"LayerNorm: implementation='cuda'"):
        lnn.LayerNorm(implementation="cuda").init(jax.random.key(0), x)
    with pytest.raises(ValueError, match=r"RMSNorm: implementation='gpu'"):
        lnnx.RMSNorm(4, implementation="gpu", rngs=nnx.Rngs(0))(x)


@pytest.mark.parametrize("name", ["LayerNorm", "RMSNorm"])
def test_module_implementation_changes_no_parameter(name):
    x = jnp.asarray(_data((3, 8))[0])
    plain = getattr(lnn, name)().init(jax.random.key(0), x)
    chosen = getattr(lnn, name)(implementation="xla").init(jax.random.key(0), x)
    assert jax.tree.structure(plain) == jax.tree.structure(chosen)
    np.testing.assert_array_equal(getattr(lnn, name)(implementation="xla").apply(chosen, x),
                                  getattr(lnn, name)().apply(plain, x))
    a = getattr(lnnx, name)(8, implementation="xla", rngs=nnx.Rngs(0))
    b = getattr(lnnx, name)(8, rngs=nnx.Rngs(0))
    assert jax.tree.structure(nnx.state(a, nnx.Param)) == jax.tree.structure(
        nnx.state(b, nnx.Param))
    np.testing.assert_array_equal(a(x), b(x))


# ------------------------------------------------- implementation="pallas"


@pytest.mark.parametrize("name", sorted(NORMS))
def test_pallas_implementation_through_the_public_api(name):
    """implementation="pallas" (interpret mode on this CPU) equals float64 and the XLA path."""
    fn, reference = NORMS[name]
    x, scale, bias = _data((6, 300), offset=1e4, seed=3)
    want = (reference(x, scale, bias, epsilon=1e-6) if name == "layer_norm" else
            reference(x, scale, epsilon=1e-6))
    y = jax.jit(lambda v, g, b: fn(v, g, b, implementation="pallas"))(x, scale, bias)
    np.testing.assert_allclose(np.asarray(y, np.float64), want, rtol=2e-6, atol=2e-6)

    def loss(implementation):
        return jax.jit(jax.grad(lambda v, g, b: jnp.sum(jnp.sin(
            fn(v, g, b, implementation=implementation))), (0, 1, 2)))

    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
                 loss("pallas")(x, scale, bias), loss("xla")(x, scale, bias))
    assert "pallas_call" in str(jax.make_jaxpr(loss("pallas"))(x, scale, bias))
    assert "pallas_call" not in str(jax.make_jaxpr(loss("xla"))(x, scale, bias))


def test_pallas_implementation_in_the_modules():
    x = jnp.asarray(_data((4, 3, 64), offset=10.0)[0])
    variables = lnn.LayerNorm().init(jax.random.key(0), x)
    np.testing.assert_allclose(lnn.LayerNorm(implementation="pallas").apply(variables, x),
                               lnn.LayerNorm().apply(variables, x), rtol=1e-6, atol=1e-6)
    a = lnnx.RMSNorm(64, implementation="pallas", rngs=nnx.Rngs(0))
    b = lnnx.RMSNorm(64, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(a(x), b(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", sorted(NORMS))
def test_pallas_implementation_lowers_to_triton_and_mosaic(name):
    """Through the public function: the CUDA module holds the Triton kernel, the TPU module
    a Mosaic kernel (lowered here; no GPU or TPU on this machine)."""
    fn = NORMS[name][0]
    x, scale, bias = (jnp.asarray(a) for a in _data((256, 1000)))
    grad = jax.grad(lambda v, g, b: jnp.sum(fn(v, g, b, implementation="pallas") ** 2),
                    (0, 1, 2))
    triton = "__gpu$xla.gpu.triton"
    cuda = jax.export.export(
        jax.jit(grad), platforms=["cuda"],
        disabled_checks=[jax.export.DisabledSafetyCheck.custom_call(triton)])(x, scale, bias)
    assert triton in cuda.mlir_module()
    tpu = jax.export.export(jax.jit(grad), platforms=["tpu"])(x, scale, bias)
    assert "tpu_custom_call" in tpu.mlir_module()
