"""Sharded jit: every normalization partitions like plain JAX.

On a mesh of the 8 host devices that tests/conftest.py forces, each
normalization (the functions, the Linen and NNX modules, the recurrent
layers) runs under ``jax.jit`` with its input sharded over the batch axis,
over a sequence (or spatial) axis, over the feature axis, and with its
parameters sharded as FSDP shards them, in ``AxisType.Auto`` and
``AxisType.Explicit`` meshes, forward and gradient. Each run is held to
three things:

* its values equal the unsharded computation's (f32: the forward within 1e-6 of
  the array's scale, gradients within 1e-5, see ``GRADIENT_TOL``);
* its outputs keep the sharding plain JAX gives them: the normalized output
  the input's, every other output the reference's (or, for a gradient, the
  sharding of what it differentiates);
* its collectives, read from the compiled HLO, move no activation-sized array
  by all-gather, all-to-all or collective-permute, and no more bytes than the
  reference: flax's module of the same maths, or plain ``jnp`` where flax has
  none. The one allowance: exact (mean-shifted) statistics over a sharded
  axis need the shift before the sums, so their forward sends one more array
  of the statistics' size than a single-pass reference (``SHIFT``).

Recurrent layers are the documented exception to the second point of the
third: a recurrence runs along time, and a matmul over sharded input features
needs them whole, so over a sharded sequence or feature axis they gather
their input, as the reference does (and fewer bytes than its per-step
all-reduce).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import lnjax
from lnjax import parallel

pytestmark = pytest.mark.skipif(
    jax.device_count() < 8,
    reason="needs 8 JAX devices (conftest.py sets --xla_force_host_platform_device_count=8)")

MODES = {"auto": AxisType.Auto, "explicit": AxisType.Explicit}
LAYOUTS = ("batch", "sequence", "feature", "fsdp")
MOVES = ("all-gather", "all-to-all", "collective-permute")
# Forward values within 1e-6 of the array's scale. Gradients sum over up to 2,048
# positions, in another order on 8 devices than on one: f32 sums of n terms so reordered
# differ by up to about sqrt(n) * 1.2e-7 of their scale (5e-6 for n = 2,048), and plain
# JAX's own gradients (flax's modules on these cases) move by up to 6e-6 between one
# device and eight. Gradients are held to 1e-5 of the array's scale.
FORWARD_TOL = 1e-6
GRADIENT_TOL = 1e-5
D = "d"


@functools.cache
def mesh(mode: str) -> jax.sharding.Mesh:
    return jax.make_mesh((8,), (D,), axis_types=(MODES[mode],))


# --------------------------------------------------------------------------- cases


@dataclasses.dataclass(frozen=True, eq=False)
class Case:
    """One normalization: lnjax's function of ``(x, params)`` and a reference of the same maths.

    ``axes`` names, per layout, the axis of ``x`` that layout shards;
    ``reduced`` the layouts whose sharded axis the statistics are taken over
    (there the exact shift costs one collective of ``stats`` elements);
    ``gathers_input``: layouts in which the operation needs its input whole
    along the sharded axis (recurrences); ``plain``: a plain-jnp reference
    for where ``reference`` (flax's module) cannot take the sharding;
    ``param_layouts``: the layouts whose parameters are split over the mesh.
    """

    name: str
    fn: Callable[..., Any]
    reference: Callable[..., Any]
    x: np.ndarray
    params: Any
    axes: dict[str, int]
    reduced: tuple[str, ...] = ()
    stats: int = 0
    gathers_input: tuple[str, ...] = ()
    plain: Callable[..., Any] | None = None
    param_layouts: tuple[str, ...] = ("feature", "fsdp")


RNG = np.random.default_rng(0)


def _data(*shape, offset=3.0):
    return (offset + RNG.standard_normal(shape)).astype(np.float32)


def _near_one(*shape):
    return (1 + 0.3 * RNG.standard_normal(shape)).astype(np.float32)


X3 = _data(8, 16, 32)  # (batch, sequence, features)
X4 = _data(8, 8, 4, 32)  # (batch, height, width, channels)
AXES3 = {"batch": 0, "sequence": 1, "feature": 2, "fsdp": 0}
AXES4 = {"batch": 0, "sequence": 1, "feature": 3, "fsdp": 0}
C = 32  # features (channels) of X3 and X4


def _ln_params(c=C):
    return {"scale": _near_one(c), "bias": _data(c, offset=0.0)}


def _flax(module, collection=None):
    """``(x, params) -> output`` of a flax Linen module (and its updated ``collection``)."""
    def f(x, params):
        if collection is None:
            return module.apply({"params": params}, x)
        y, updates = module.apply({"params": params}, x, mutable=[collection])
        return (y, *jax.tree.leaves(updates[collection]))
    return f


# Plain-jnp references: the same maths as lnjax with two-pass statistics, written as a
# user would, for where flax has no such function or its module fails on a sharding.


def _standardize(x, axes, epsilon):
    mean = jnp.mean(x, axes, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axes, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + epsilon)


def _plain_layer_norm(x, p):
    return _standardize(x, -1, 1e-6) * p["scale"] + p["bias"]


def _plain_rms_norm(x, p):
    return x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + 1e-6) * p["scale"]


def _plain_group_norm(x, p, groups=8):
    xg = x.reshape(x.shape[:-1] + (groups, x.shape[-1] // groups))
    y = _standardize(xg, (1, 2, 4), 1e-6).reshape(x.shape)
    return y * p["scale"] + p["bias"]


def _plain_instance_norm(x, p):
    return _standardize(x, (1, 2), 1e-6) * p["scale"] + p["bias"]


def _plain_batch_norm(x, p, epsilon=1e-5):
    axes = (0, 1, 2)
    mean = jnp.mean(x, axes)
    var = jnp.mean(jnp.square(x - mean), axes)
    return (x - mean) * jax.lax.rsqrt(var + epsilon) * p["scale"] + p["bias"], mean, var


def _plain_renorm(x, p, epsilon=1e-5, r_max=3.0, d_max=5.0):
    axes = (0, 1, 2)
    mean = jnp.mean(x, axes)
    var = jnp.mean(jnp.square(x - mean), axes)
    sigma_b = jnp.sqrt(var + epsilon)
    sigma = jnp.sqrt(p["var"] + epsilon)
    r = jax.lax.stop_gradient(jnp.clip(sigma_b / sigma, 1 / r_max, r_max))
    d = jax.lax.stop_gradient(jnp.clip((mean - p["mean"]) / sigma, -d_max, d_max))
    return ((x - mean) / sigma_b * r + d) * p["scale"] + p["bias"], mean, var


def _plain_weight_norm(v, p):
    return p["g"][:, None] * v / jnp.sqrt(jnp.sum(v * v, axis=1, keepdims=True) + 1e-12)


ROWS3 = X3.size // C
FLAX_LN = _flax(nn.LayerNorm(use_fast_variance=False))
FLAX_RMS = _flax(nn.RMSNorm())

FUNCTIONS = [
    Case("layer_norm", lambda x, p: lnjax.layer_norm(x, p["scale"], p["bias"]),
         FLAX_LN, X3, _ln_params(), AXES3, reduced=("feature",), stats=ROWS3,
         plain=_plain_layer_norm),
    Case("layer_norm(pallas)",
         lambda x, p: lnjax.layer_norm(x, p["scale"], p["bias"], implementation="pallas"),
         FLAX_LN, X3, _ln_params(), AXES3, reduced=("feature",), stats=ROWS3,
         plain=_plain_layer_norm),
    Case("rms_norm", lambda x, p: lnjax.rms_norm(x, p["scale"]),
         FLAX_RMS, X3, {"scale": _near_one(C)}, AXES3, plain=_plain_rms_norm),
    Case("rms_norm(pallas)",
         lambda x, p: lnjax.rms_norm(x, p["scale"], implementation="pallas"),
         FLAX_RMS, X3, {"scale": _near_one(C)}, AXES3, plain=_plain_rms_norm),
    Case("group_norm", lambda x, p: lnjax.group_norm(x, 8, p["scale"], p["bias"]),
         _flax(nn.GroupNorm(num_groups=8, use_fast_variance=False)), X4, _ln_params(),
         AXES4, reduced=("sequence",), stats=8 * 8, plain=_plain_group_norm),
    Case("instance_norm", lambda x, p: lnjax.instance_norm(x, p["scale"], p["bias"]),
         _flax(nn.InstanceNorm(use_fast_variance=False)), X4, _ln_params(), AXES4,
         reduced=("sequence",), stats=8 * C, plain=_plain_instance_norm),
    Case("batch_norm",
         lambda x, p: lnjax.batch_norm(x, p["scale"], p["bias"], axis=(0, 1, 2)),
         _plain_batch_norm, X4, _ln_params(), AXES4,
         reduced=("batch", "sequence", "fsdp"), stats=C),
    Case("batch_renorm", lambda x, p: lnjax.batch_renorm(
             x, p["scale"], p["bias"], running_mean=p["mean"], running_var=p["var"],
             axis=(0, 1, 2)),
         _plain_renorm, X4, {**_ln_params(), "mean": _data(C), "var": _near_one(C) ** 2},
         AXES4, reduced=("batch", "sequence", "fsdp"), stats=C),
    # weight_norm has no activation: its "feature" layout splits v over the kept (output)
    # axis, its "fsdp" layout over the reduced axis.
    Case("weight_norm", lambda v, p: lnjax.weight_norm(v, p["g"], axis=0),
         _plain_weight_norm, _data(32, 64), {"g": _near_one(32)}, {"feature": 0, "fsdp": 1}),
]


# --------------------------------------------------------------------------- the harness


def _param_spec(case: Case, layout: str, v: np.ndarray) -> P:
    """Parameters: replicated, or (feature, FSDP) split along their first axis over the mesh."""
    if layout in case.param_layouts and v.ndim and v.shape[0] % 8 == 0:
        return P(D)
    return P()


def _x_spec(case: Case, layout: str) -> P:
    entries: list[Any] = [None] * case.x.ndim
    entries[case.axes[layout]] = D
    return P(*entries)


def _loss(f):
    """A scalar of every output of ``f``, for its gradient with respect to ``(x, params)``."""
    def loss(x, params):
        return sum(jnp.sum(jnp.sin(3 * o)) for o in jax.tree.leaves(f(x, params)))
    return jax.grad(loss, argnums=(0, 1))


def _gathered_params(f):
    """``f`` with its parameters gathered first (plain JAX's FSDP in an Explicit mesh)."""
    return lambda x, params: f(x, jax.tree.map(lambda v: jax.sharding.reshard(v, P()), params))


def _canonical(spec: P, ndim: int) -> tuple:
    entries = tuple(spec) + (None,) * (ndim - len(spec))
    return tuple(e if e is None or isinstance(e, tuple) else (e,) for e in entries)


_UNSHARDED: dict[tuple[int, bool], Any] = {}


def _unsharded(case: Case, gradient: bool):
    """The case on one device (computed once per test process)."""
    key = (id(case), gradient)
    if key not in _UNSHARDED:
        f = _loss(case.fn) if gradient else case.fn
        _UNSHARDED[key] = jax.device_get(jax.jit(f)(case.x, case.params))
    return _UNSHARDED[key]


def run(case: Case, layout: str, mode: str, gradient: bool):
    """Compiles lnjax and the reference for the layout; returns both and lnjax's outputs."""
    m = mesh(mode)
    x = jax.device_put(case.x, NamedSharding(m, _x_spec(case, layout)))
    params = jax.tree.map(lambda v: jax.device_put(v, NamedSharding(m, _param_spec(case, layout, v))),
                          case.params)
    fn, ref = case.fn, case.reference
    if mode == "explicit" and layout == "fsdp":
        ref = _gathered_params(ref)
    if gradient:
        fn, ref = _loss(fn), _loss(ref)
    with jax.set_mesh(m):
        ours = jax.jit(fn).lower(x, params).compile()
        try:
            theirs = jax.jit(ref).lower(x, params).compile()
        except (ValueError, TypeError):  # flax's module cannot take this sharding
            if case.plain is None:
                raise
            plain = case.plain
            if mode == "explicit" and layout == "fsdp":
                plain = _gathered_params(plain)
            theirs = jax.jit(_loss(plain) if gradient else plain).lower(x, params).compile()
        out = ours(x, params)
    return ours, theirs, out, (x, params)


def check(case: Case, layout: str, mode: str, gradient: bool) -> None:
    ours, theirs, out, inputs = run(case, layout, mode, gradient)
    # 1. The values of the unsharded computation.
    for got, want in zip(jax.tree.leaves(jax.device_get(out)),
                         jax.tree.leaves(_unsharded(case, gradient)), strict=True):
        scale = max(1.0, float(np.max(np.abs(want))))
        tol = GRADIENT_TOL if gradient else FORWARD_TOL
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale,
                                   err_msg=f"{case.name} {layout} {mode}")
    # 2. Output shardings: the normalized output (and a gradient) like its primal; every
    # output like plain JAX's.
    out_specs = [s.spec for s in jax.tree.leaves(ours.output_shardings)]
    ref_specs = [s.spec for s in jax.tree.leaves(theirs.output_shardings)]
    shapes = [np.shape(o) for o in jax.tree.leaves(out)]
    primal_specs = ([_x_spec(case, layout)] + [_param_spec(case, layout, v)
                                               for v in jax.tree.leaves(case.params)]
                    if gradient else [_x_spec(case, layout)])
    for i, (spec, shape) in enumerate(zip(out_specs, shapes)):
        own = _canonical(spec, len(shape))
        allowed = {_canonical(ref_specs[i], len(shape))} if i < len(ref_specs) else set()
        if i < len(primal_specs):
            allowed.add(_canonical(primal_specs[i], len(shape)))
        if i == 0 or (gradient and i < len(primal_specs)):
            assert own in allowed, (case.name, layout, mode, i, own, allowed)
        else:
            assert own in allowed | {_canonical(ref_specs[i], len(shape))}, (
                case.name, layout, mode, i, own, allowed)
    # 3. Collectives: nothing activation-sized moved, no more bytes than the reference.
    mine, reference = parallel.collectives(ours), parallel.collectives(theirs)
    if layout not in case.gathers_input:
        moved = [c for c in mine if c.kind in MOVES and c.elements >= case.x.size // 8]
        assert not moved, (case.name, layout, mode, moved)
    allowance = 4 * case.stats if layout in case.reduced else 0
    assert (sum(c.total_bytes for c in mine)
            <= sum(c.total_bytes for c in reference) + allowance), (
        case.name, layout, mode, mine, reference)


def _matrix(cases):
    return [pytest.param(case, layout, mode, gradient,
                         id=f"{case.name}-{layout}-{mode}-{'grad' if gradient else 'fwd'}")
            for case in cases for layout in LAYOUTS if layout in case.axes
            for mode in MODES for gradient in (False, True)]


@pytest.mark.parametrize("case, layout, mode, gradient", _matrix(FUNCTIONS))
def test_functions(case, layout, mode, gradient):
    check(case, layout, mode, gradient)
