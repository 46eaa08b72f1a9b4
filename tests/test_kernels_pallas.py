"""The Pallas row kernels (lnjax.kernels.pallas), proven on a CPU.

Both kernel styles run here in Pallas interpret mode: ``"interpret"`` runs the
Triton-style (GPU) kernel bodies and ``"interpret_mosaic"`` the TPU-style ones.
They are held against the float64 references of tests/reference.py (forward
and all three gradients) and against the XLA path in forward mode and at second
order. The compiled backends (``"triton"``, ``"mosaic"``) cannot run without a
GPU or TPU: they are lowered with ``jax.export`` for ``cuda`` and ``tpu``.
"""

from __future__ import annotations

import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

import lnjax
from lnjax import linen as lnn
from lnjax.kernels import pallas, xla
from tests import reference as ref

INTERPRET = ["interpret", "interpret_mosaic"]  # Triton-style and TPU-style kernel bodies
TRITON_CALL = "__gpu$xla.gpu.triton"


def _norm(backend, centered, epsilon=1e-6, stats_dtype=jnp.float32, out_dtype=None):
    def f(x, scale, bias):
        return pallas.row_norm(x, scale, bias, epsilon=epsilon, centered=centered,
                               stats_dtype=stats_dtype,
                               out_dtype=x.dtype if out_dtype is None else out_dtype,
                               backend=backend)
    return f


def _data(rows, width, *, offset, dtype, params, centered, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(offset + rng.standard_normal((rows, width)), dtype)
    pdtype = np.float64 if jnp.dtype(dtype) == jnp.float64 else np.float32
    scale = (1 + 0.3 * rng.standard_normal(width)).astype(pdtype)
    bias = rng.standard_normal(width).astype(pdtype)
    dy = jnp.asarray(rng.standard_normal((rows, width)), dtype)
    scale = scale if params in ("scale", "both") else None
    bias = bias if params == "both" and centered else None
    return x, scale, bias, dy


def _reference(x, scale, bias, dy, *, centered, epsilon):
    """Float64 ``y`` and the gradients of ``sum(dy * y)`` for x, scale and bias."""
    x, dy = (np.asarray(a, np.float64) for a in (x, dy))
    s = 1.0 if scale is None else np.asarray(scale, np.float64)
    if centered:
        y = ref.layer_norm(x, scale, bias, axis=-1, epsilon=epsilon)
        xhat = ref.layer_norm(x, axis=-1, epsilon=epsilon)
        r = 1 / np.sqrt(x.var(-1, keepdims=True) + epsilon)
    else:
        y = ref.rms_norm(x, scale, axis=-1, epsilon=epsilon)
        xhat = ref.rms_norm(x, axis=-1, epsilon=epsilon)
        r = 1 / np.sqrt((x * x).mean(-1, keepdims=True) + epsilon)
    g = dy * s
    c = (g * xhat).mean(-1, keepdims=True)
    dx = r * (g - g.mean(-1, keepdims=True) - xhat * c) if centered else r * (g - xhat * c)
    return y, dx, (dy * xhat).sum(0), dy.sum(0)


def _check(got, want, dtype, name):
    """f32: the XLA path's tolerances (tests/test_kernels.py); half: one ulp of the result."""
    got = np.asarray(got, np.float64)
    if jnp.dtype(dtype) == jnp.float32:
        err = np.max(np.abs(got - want))
        assert err <= 2e-5 * max(1.0, np.max(np.abs(want))), (name, err)
    else:
        ulp = float(jnp.finfo(dtype).eps)
        np.testing.assert_allclose(got, want, rtol=ulp, atol=ulp * np.abs(want).max(),
                                   err_msg=name)


def _value_and_grads(f, x, scale, bias, dy):
    """``(y, (dx, dscale, dbias))`` of ``f``, the gradients by ``jax.vjp`` at ``dy``, in one jit."""
    def run(x, scale, bias, dy):
        y, vjp = jax.vjp(f, x, scale, bias)
        return y, vjp(dy)
    return jax.jit(run)(x, scale, bias, dy)


# ------------------------------------------------------- values and gradients

# (norm, dtype, width, rows, offset, params). Half-precision inputs sit at
# offsets they can represent around a unit spread (bf16 has 8 mantissa bits).
CASES = [
    ("ln", jnp.float32, 42, 1, 0.0, "both"),
    ("ln", jnp.float32, 1000, 37, 1e4, "both"),
    ("ln", jnp.float32, 4097, 3, 1e6, "both"),
    ("ln", jnp.float32, 1000, 5, 1e6, "none"),
    ("ln", jnp.bfloat16, 42, 37, 100.0, "both"),
    ("ln", jnp.bfloat16, 4097, 3, 0.0, "scale"),
    ("ln", jnp.float16, 1000, 5, 100.0, "both"),
    ("rms", jnp.float32, 1000, 37, 0.0, "scale"),
    ("rms", jnp.float32, 4097, 1, 1e4, "none"),
    ("rms", jnp.bfloat16, 42, 3, 0.0, "scale"),
]


def _case_id(case):
    norm, dtype, width, rows, offset, params = case
    return f"{norm}-{jnp.dtype(dtype).name}-w{width}-r{rows}-off{offset:g}-{params}"


@pytest.mark.parametrize("backend", INTERPRET)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_forward_and_gradients_match_float64(backend, case):
    norm, dtype, width, rows, offset, params = case
    centered = norm == "ln"
    x, scale, bias, dy = _data(rows, width, offset=offset, dtype=dtype, params=params,
                               centered=centered)
    y, (dx, dscale, dbias) = _value_and_grads(_norm(backend, centered), x, scale, bias, dy)
    want_y, want_dx, want_dscale, want_dbias = _reference(x, scale, bias, dy,
                                                          centered=centered, epsilon=1e-6)
    assert y.dtype == dtype and dx.dtype == dtype
    _check(y, want_y, dtype, "y")
    _check(dx, want_dx, dtype, "dx")
    if scale is not None:  # statistics and parameter gradients are f32
        assert dscale.dtype == jnp.float32
        _check(dscale, want_dscale, jnp.float32, "dscale")
    if bias is not None:
        _check(dbias, want_dbias, jnp.float32, "dbias")


@pytest.mark.parametrize("backend", INTERPRET)
def test_exact_far_from_zero(backend):
    """f32 rows 1e6 standard deviations from zero: the result within 1e-6 of float64."""
    x, _, _, _ = _data(37, 1000, offset=1e6, dtype=jnp.float32, params="none", centered=True,
                       seed=3)
    y = jax.jit(lambda v: _norm(backend, True)(v, None, None))(x)
    err = np.max(np.abs(np.asarray(y, np.float64) - ref.layer_norm(x, epsilon=1e-6)))
    assert err <= 1e-6, err


@pytest.mark.parametrize("backend", INTERPRET)
def test_many_blocks_and_an_overhanging_last_block(backend, monkeypatch):
    """Small blocks: several row blocks, backward programs looping over stripes, and a last
    block that overhangs the rows (interpret mode fills the overhang with NaN)."""
    monkeypatch.setattr(pallas, "TRITON_BLOCK_ELEMENTS", 128)
    monkeypatch.setattr(pallas, "TRITON_MAX_PROGRAMS", 4)
    monkeypatch.setattr(pallas, "TPU_BLOCK_ELEMENTS", 64)
    rows, width = 37, 42
    assert pallas.triton_blocks(rows, width)[:2] == (2, 64)  # 19 blocks of 2 rows
    assert pallas.triton_backward_grid(rows, width) == (4, 5)  # the last program: 4 of 5 blocks
    assert pallas.tpu_block_rows(rows, width) == 16  # 3 blocks, the last 11 rows over
    for centered in (True, False):
        x, scale, bias, dy = _data(rows, width, offset=1e4, dtype=jnp.float32, params="both",
                                   centered=centered, seed=1)
        y, (dx, dscale, dbias) = _value_and_grads(_norm(backend, centered), x, scale, bias, dy)
        want = _reference(x, scale, bias, dy, centered=centered, epsilon=1e-6)
        for name, got, expect in zip(("y", "dx", "dscale", "dbias"), (y, dx, dscale, dbias),
                                     want):
            if got is not None:
                _check(got, expect, jnp.float32, name)


# ------------------------------------------------------- transformations


@pytest.mark.parametrize("backend", INTERPRET)
@pytest.mark.parametrize("centered", [True, False], ids=["layer_norm", "rms_norm"])
def test_forward_mode_and_second_order_match_xla_path(backend, centered):
    """jvp, jacfwd (== jacrev) and the hessian in (x, scale, bias), in float64."""
    with jax.enable_x64(True):
        x, scale, bias, _ = _data(3, 42, offset=2.0, dtype=jnp.float64, params="both",
                                  centered=centered, seed=7)
        kw = dict(epsilon=1e-3, centered=centered, stats_dtype=jnp.float64,
                  out_dtype=jnp.float64)
        paths = {"pallas": lambda *a: pallas.row_norm(*a, backend=backend, **kw),
                 "xla": lambda *a: xla.row_norm(*a, **kw)}
        argnums = (0, 1, 2) if centered else (0, 1)
        tangents = (jnp.ones_like(x), jnp.full_like(scale, 0.5),
                    None if bias is None else jnp.full_like(bias, 0.25))
        results = {}
        for name, f in paths.items():
            loss = lambda *a, f=f: jnp.sum(jnp.tanh(f(*a)) ** 3)  # noqa: E731
            results[name] = jax.jit(lambda *a, f=f, loss=loss: (
                jax.jvp(f, a, tangents)[1], jax.jacfwd(f, argnums)(*a),
                jax.jacrev(f, argnums)(*a), jax.hessian(loss, argnums)(*a)))(x, scale, bias)
        (jvp_p, fwd_p, rev_p, hess_p), (jvp_x, fwd_x, rev_x, hess_x) = (
            results["pallas"], results["xla"])
        np.testing.assert_allclose(jvp_p, jvp_x, rtol=1e-12, atol=1e-12)
        for jac_fwd, jac_rev, want_fwd, want_rev in zip(fwd_p, rev_p, fwd_x, rev_x):
            np.testing.assert_allclose(jac_fwd, jac_rev, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(jac_fwd, want_fwd, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(jac_rev, want_rev, rtol=1e-12, atol=1e-12)
        for a, b in zip(jax.tree.leaves(hess_p), jax.tree.leaves(hess_x)):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("backend", INTERPRET)
def test_vmap_of_values_and_gradients(backend):
    x, scale, bias, _ = _data(5, 42, offset=3.0, dtype=jnp.float32, params="both",
                              centered=True)
    xs = jnp.stack([x, 2 * x - 1, x * x])
    f = lambda v: _norm(backend, True)(v, scale, bias)  # noqa: E731
    grad = jax.grad(lambda v: jnp.sum(f(v) ** 3))
    ys, gs = jax.jit(lambda v: (jax.vmap(f)(v), jax.vmap(grad)(v)))(xs)
    for i in range(len(xs)):
        np.testing.assert_allclose(ys[i], ref.layer_norm(xs[i], scale, bias), rtol=2e-5,
                                   atol=2e-5)
        np.testing.assert_allclose(gs[i], jax.jit(grad)(xs[i]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", INTERPRET)
def test_reverse_mode_runs_the_pallas_backward_and_saves_x_and_row_stats(backend):
    """The gradient is the Pallas backward kernel; jax.vjp keeps x, the scale and three
    numbers per row (shift, mean, rstd), nothing of size rows x H but x."""
    rows, width = 24, 40
    x, scale, bias, _ = _data(rows, width, offset=1.0, dtype=jnp.float32, params="both",
                              centered=True)
    f = _norm(backend, True)
    _, vjp = jax.vjp(f, x, scale, bias)
    shapes = sorted(leaf.shape for leaf in jax.tree_util.tree_leaves(vjp)
                    if hasattr(leaf, "shape"))
    assert shapes == sorted([(rows, width), (width,), (rows, 1), (rows, 1), (rows, 1)]), shapes
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda *a: jnp.sum(f(*a) ** 2), (0, 1, 2)))(
        x, scale, bias))
    assert jaxpr.count("pallas_call") == 2
    assert "lnjax_row_norm_fwd" in jaxpr and "lnjax_row_norm_bwd" in jaxpr


# ------------------------------------------------------- lowering for GPU and TPU


@pytest.mark.parametrize("platform, width, dtype", [
    ("cuda", 1000, jnp.bfloat16), ("cuda", 1024, jnp.float32),
    ("tpu", 1000, jnp.bfloat16), ("tpu", 1024, jnp.float32)])
def test_lowers_for_gpu_and_tpu(platform, width, dtype):
    """jax.export of the forward and of jax.grad (all three inputs), layer and RMS norm."""
    backend, target = {"cuda": ("triton", TRITON_CALL), "tpu": ("mosaic", "tpu_custom_call")}[
        platform]
    x = jax.ShapeDtypeStruct((512, width), dtype)
    p = jax.ShapeDtypeStruct((width,), jnp.float32)
    for centered in (True, False):
        f = _norm(backend, centered)
        args = (x, p, p if centered else None)
        grad = jax.grad(lambda *a, f=f: jnp.sum(f(*a).astype(jnp.float32) ** 2),
                        (0, 1, 2) if centered else (0, 1))
        for fn, kernels in ((f, ["lnjax_row_norm_fwd"]),
                            (grad, ["lnjax_row_norm_fwd", "lnjax_row_norm_bwd"])):
            exp = export.export(
                jax.jit(fn), platforms=[platform],
                disabled_checks=[export.DisabledSafetyCheck.custom_call(TRITON_CALL)])(*args)
            text = exp.mlir_module()
            assert set(re.findall(r"custom_call @([^(\s]+)\(", text)) == {target}
            assert text.count(f"custom_call @{target}(") == len(kernels)
            assert all(k in text for k in kernels)


def test_tpu_lowering_needs_no_disabled_check():
    """tpu_custom_call is on jax.export's list of stable custom calls."""
    x = jax.ShapeDtypeStruct((64, 1000), jnp.float32)
    exp = export.export(jax.jit(lambda v: _norm("mosaic", True)(v, None, None)),
                        platforms=["tpu"])(x)
    assert "tpu_custom_call" in exp.mlir_module()


# ------------------------------------------------------- argument errors


def test_errors_name_the_argument():
    x = jnp.ones((4, 6))
    f = lambda *a, **kw: pallas.row_norm(*a, **{  # noqa: E731
        "epsilon": 1e-6, "centered": True, "stats_dtype": jnp.float32,
        "out_dtype": jnp.float32, "backend": "interpret", **kw})
    with pytest.raises(ValueError, match="backend must be one of"):
        f(x, None, None, backend="cuda")
    with pytest.raises(ValueError, match=r"num_axes=3 must be between 1 and the rank of x of "
                                         r"shape \(4, 6\)"):
        f(x, None, None, num_axes=3)
    with pytest.raises(ValueError, match=r"num_axes=0"):
        f(x, None, None, num_axes=0)
    with pytest.raises(ValueError, match=r"scale of shape \(6,\) does not match x of shape "
                                         r"\(4, 6\): expected \(4, 6\)"):
        f(x, jnp.ones(6), None, num_axes=2)
    with pytest.raises(ValueError, match=r"scale of shape \(5,\) does not match x"):
        f(x, jnp.ones(5), None)
    with pytest.raises(ValueError, match=r"bias of shape \(4, 6\) does not match x"):
        f(x, None, jnp.ones((4, 6)))
    with pytest.raises(ValueError, match="bias must be None for RMS norm"):
        f(x, None, jnp.ones(6), centered=False)
    with pytest.raises(TypeError, match="x must have a floating dtype"):
        f(jnp.ones((4, 6), jnp.int32), None, None)
    with pytest.raises(ValueError, match="at least one row"):
        f(jnp.ones((0, 6)), None, None)


def _what_ran(call):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        call()
    return [(str(w.message), w.filename, w.lineno) for w in seen
            if "implementation='pallas'" in str(w.message)]


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="interpret mode is the CPU's")
def test_pallas_on_a_cpu_says_once_per_call_site_that_it_runs_in_interpret_mode():
    x = jnp.ones((4, 8))
    module = lnn.LayerNorm(implementation="pallas")
    calls = [lambda: lnjax.layer_norm(x, implementation="pallas"),
             lambda: module.init(jax.random.key(0), x)]
    first = [_what_ran(c) for c in calls]
    for said, name in zip(first, ("layer_norm", "LayerNorm"), strict=True):
        assert len(said) == 1 and said[0][0].startswith(f"{name}: implementation='pallas' on a "
                                                        "CPU runs the Pallas kernel in interpret")
        assert said[0][1] == __file__  # located at the caller's line, not inside lnjax
    assert [_what_ran(c) for c in calls] == [[], []]  # once per call site


@pytest.mark.parametrize("call, why", [
    (lambda x: lnjax.layer_norm(x, axis=0, implementation="pallas"),
     "the statistics are not over the trailing axes"),
    (lambda x: lnjax.layer_norm(x, mask=x > 0, implementation="pallas"),
     "a mask selects the positions counted"),
    (lambda x: lnjax.rms_norm(x, epsilon=jnp.float32(1e-6), implementation="pallas"),
     "epsilon is an array or traced"),
])
def test_pallas_says_when_the_xla_path_ran_instead_and_why(call, why):
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 8)), jnp.float32)
    said = _what_ran(lambda: call(x))
    assert len(said) == 1 and f"has no kernel here ({why}" in said[0][0], said
    assert "the XLA path ran" in said[0][0]
    np.testing.assert_array_equal(call(x), call(x))  # and it computes


def test_xla_and_the_default_say_nothing():
    x = jnp.ones((4, 8))
    assert _what_ran(lambda: lnjax.layer_norm(x, implementation="xla")) == []
    assert _what_ran(lambda: lnjax.layer_norm(x, axis=0)) == []
