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
  (and the gradient of the input) the input's, every other output the
  reference's or that of the parameter it is the gradient or update of;
* its collectives, read from the compiled HLO (loops counted by their trip
  counts), move no activation-sized array by all-gather, all-to-all or
  collective-permute where plain JAX moves none, and send no more bytes than
  the reference: flax's module of the same maths, or plain ``jnp`` where flax
  has none or cannot take the sharding. The one allowance: exact
  (mean-shifted) statistics over a sharded axis need the shift before the
  sums, one more collective of the statistics' size (see ``check``).

A layer whose maths contracts a sharded axis (a dense layer over sharded
input features) or runs along one (a recurrence over a sharded time axis)
moves activations in plain JAX too; there lnjax moves no more than the
reference does.
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
from flax import nnx
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import lnjax
from lnjax import linen as lnn
from lnjax import nnx as lnnx
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
    ``plain``: a plain-jnp reference
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
    plain: Callable[..., Any] | None = None
    keeps_input_sharding: bool = True  # False: output 0 is not x normalized (a dense layer)
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


def _standardize(x, axes, epsilon, scale=1.0):
    """As flax's modules write it: the gain folded into the reciprocal deviation."""
    mean = jnp.mean(x, axes, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axes, keepdims=True)
    return (x - mean) * (jax.lax.rsqrt(var + epsilon) * scale)


def _plain_layer_norm(x, p):
    return _standardize(x, -1, 1e-6, p["scale"]) + p["bias"]


def _plain_rms_norm(x, p):
    return x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + 1e-6) * p["scale"]


def _plain_group_norm(x, p, groups=8):
    xg = x.reshape(x.shape[:-1] + (groups, x.shape[-1] // groups))
    y = _standardize(xg, (1, 2, 4), 1e-6).reshape(x.shape)
    return y * p["scale"] + p["bias"]


def _plain_instance_norm(x, p):
    return _standardize(x, (1, 2), 1e-6, p["scale"]) + p["bias"]


def _plain_batch_norm(x, p, epsilon=1e-5):
    axes = (0, 1, 2)
    mean = jnp.mean(x, axes)
    var = jnp.mean(jnp.square(x - mean), axes)
    return (x - mean) * (jax.lax.rsqrt(var + epsilon) * p["scale"]) + p["bias"], mean, var


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
         lambda x, p: lnjax.batch_norm(x, p["scale"], p["bias"], reduction_axes=(0, 1, 2)),
         _plain_batch_norm, X4, _ln_params(), AXES4,
         reduced=("batch", "sequence", "fsdp"), stats=C),
    Case("batch_renorm", lambda x, p: lnjax.batch_renorm(
             x, p["scale"], p["bias"], running_mean=p["mean"], running_var=p["var"],
             reduction_axes=(0, 1, 2)),
         _plain_renorm, X4, {**_ln_params(), "mean": _data(C), "var": _near_one(C) ** 2},
         AXES4, reduced=("batch", "sequence", "fsdp"), stats=C),
    # weight_norm has no activation: its "feature" layout splits v over the kept (output)
    # axis, its "fsdp" layout over the reduced axis.
    Case("weight_norm", lambda v, p: lnjax.weight_norm(v, p["g"], axis=0),
         _plain_weight_norm, _data(32, 64), {"g": _near_one(32)}, {"feature": 0, "fsdp": 1}),
]


# --------------------------------------------------------------------------- modules


def _linen(module, mutable=None):
    """``(x, variables) -> output`` of a Linen module (and its updated collection's leaves)."""
    def f(x, variables):
        if mutable is None:
            return module.apply(variables, x)
        y, updates = module.apply(variables, x, mutable=[mutable])
        return (y, *jax.tree.leaves(updates))
    return f


def _init(module, x):
    return jax.device_get(module.init(jax.random.key(1), x))


def _nnx(module, stats=False):
    """``(x, state) -> output`` of an NNX module given its whole state (and its new
    batch statistics), and that state."""
    graphdef, state = nnx.split(module)

    def f(x, st):
        m = nnx.merge(graphdef, st)
        y = m(x)
        return (y, *jax.tree.leaves(nnx.state(m, nnx.BatchStat))) if stats else y
    return f, jax.device_get(state)


def _plain_weight_norm_dense(x, v):
    p = v["params"]
    w = p["scale"] * p["kernel"] / jnp.sqrt(jnp.sum(p["kernel"] ** 2, 0) + 1e-12)
    return x @ w + p["bias"]


def _plain_renorm_module(x, v):
    p = {**v["params"], "mean": v["batch_stats"]["mean"], "var": v["batch_stats"]["var"]}
    return _plain_renorm(x, p)[0]


def _linen_cases() -> list[Case]:
    stats4 = {"reduced": ("batch", "sequence", "fsdp"), "stats": C}
    rn = lnn.BatchReNorm(use_running_average=False)
    return [
        Case("linen.LayerNorm", _linen(lnn.LayerNorm()), FLAX_LN_V, X3,
             _init(lnn.LayerNorm(), X3), AXES3, reduced=("feature",), stats=ROWS3),
        Case("linen.RMSNorm", _linen(lnn.RMSNorm()), _linen(nn.RMSNorm()), X3,
             _init(lnn.RMSNorm(), X3), AXES3),
        Case("linen.GroupNorm", _linen(lnn.GroupNorm(num_groups=8)),
             _linen(nn.GroupNorm(num_groups=8, use_fast_variance=False)), X4,
             _init(lnn.GroupNorm(num_groups=8), X4), AXES4, reduced=("sequence",), stats=64,
             plain=lambda x, v: _plain_group_norm(x, v["params"])),
        Case("linen.InstanceNorm", _linen(lnn.InstanceNorm()),
             _linen(nn.InstanceNorm(use_fast_variance=False)), X4,
             _init(lnn.InstanceNorm(), X4), AXES4, reduced=("sequence",), stats=8 * C),
        Case("linen.BatchNorm", _linen(lnn.BatchNorm(use_running_average=False), "batch_stats"),
             _linen(nn.BatchNorm(use_running_average=False, use_fast_variance=False),
                    "batch_stats"),
             X4, _init(lnn.BatchNorm(use_running_average=False), X4), AXES4, **stats4),
        Case("linen.BatchReNorm", lambda x, v: rn.apply(v, x, mutable=["batch_stats"])[0],
             _plain_renorm_module, X4, _init(rn, X4), AXES4, **stats4),
        Case("linen.WeightNormDense", _linen(lnn.WeightNormDense(64)), _plain_weight_norm_dense,
             X3, _init(lnn.WeightNormDense(64), X3), AXES3, keeps_input_sharding=False),
    ]


def _nnx_cases() -> list[Case]:
    stats4 = {"reduced": ("batch", "sequence", "fsdp"), "stats": C}
    rngs = nnx.Rngs(0)
    made = {
        "LayerNorm": _nnx(lnnx.LayerNorm(C, rngs=rngs)),
        "RMSNorm": _nnx(lnnx.RMSNorm(C, rngs=rngs)),
        "GroupNorm": _nnx(lnnx.GroupNorm(C, num_groups=8, rngs=rngs)),
        "InstanceNorm": _nnx(lnnx.InstanceNorm(C, rngs=rngs)),
        "BatchNorm": _nnx(lnnx.BatchNorm(C, use_running_average=False, rngs=rngs), stats=True),
        "BatchReNorm": _nnx(lnnx.BatchReNorm(C, use_running_average=False, rngs=rngs),
                            stats=True),
        "WeightNormLinear": _nnx(lnnx.WeightNormLinear(C, 64, rngs=rngs)),
    }
    flax_made = {
        "LayerNorm": _nnx(nnx.LayerNorm(C, use_fast_variance=False, rngs=rngs))[0],
        "RMSNorm": _nnx(nnx.RMSNorm(C, rngs=rngs))[0],
        "GroupNorm": _nnx(nnx.GroupNorm(C, num_groups=8, use_fast_variance=False,
                                        rngs=rngs))[0],
        "InstanceNorm": _nnx(nnx.InstanceNorm(C, use_fast_variance=False, rngs=rngs))[0],
        "BatchNorm": _nnx(nnx.BatchNorm(C, use_running_average=False, use_fast_variance=False,
                                        rngs=rngs), stats=True)[0],
    }
    plain = {
        "GroupNorm": lambda x, st: _plain_group_norm(x, {"scale": st["scale"][...],
                                                         "bias": st["bias"][...]}),
        "BatchReNorm": lambda x, st: _plain_renorm(x, {
            "scale": st["scale"][...], "bias": st["bias"][...], "mean": st["mean"][...],
            "var": st["var"][...]}),
        "WeightNormLinear": lambda x, st: _plain_weight_norm_dense(x, {"params": {
            "kernel": st["kernel"][...], "scale": st["scale"][...], "bias": st["bias"][...]}}),
    }
    extra = {"LayerNorm": {"reduced": ("feature",), "stats": ROWS3},
             "GroupNorm": {"reduced": ("sequence",), "stats": 64},
             "InstanceNorm": {"reduced": ("sequence",), "stats": 8 * C},
             "BatchNorm": stats4, "BatchReNorm": stats4}
    cases = []
    for name, (fn, state) in made.items():
        x, axes = (X3, AXES3) if name in ("LayerNorm", "RMSNorm", "WeightNormLinear") else (
            X4, AXES4)
        reference = flax_made.get(name) or plain[name]
        cases.append(Case(f"nnx.{name}", fn, reference, x, state, axes,
                          plain=plain.get(name), keeps_input_sharding=name != "WeightNormLinear",
                          **extra.get(name, {})))
    return cases


FLAX_LN_V = _linen(nn.LayerNorm(use_fast_variance=False))
MODULES = _linen_cases() + _nnx_cases()


# --------------------------------------------------------------------------- recurrent


H = 32  # hidden units


def _plain_rnn(cell):
    """A Linen cell scanned over time in plain JAX, as a user would write it: in an Explicit
    mesh the time axis and the input features gathered first (a scan needs the time axis
    whole, the input matmul the features), the carry sharded as the batch."""
    def f(x, variables):
        xt = jnp.moveaxis(x, 1, 0)
        spec = lnjax_explicit_spec(xt)
        if spec is not None:
            xt = jax.sharding.reshard(xt, P(None, spec[1] or None, None))
        carry = cell.initialize_carry(jax.random.key(0), xt.shape[1:])
        if spec is not None:
            carry = jax.tree.map(lambda c: jax.sharding.reshard(c, P(spec[1] or None, None)),
                                 carry)
        params = {"params": variables["params"]["cell"]}
        _, ys = jax.lax.scan(lambda c, xs: cell.apply(params, c, xs), carry, xt)
        return jnp.moveaxis(ys, 0, 1)
    return f


def lnjax_explicit_spec(x):
    """Per axis, the one Explicit mesh axis sharding it (or None); None for an Auto mesh."""
    sharding = jax.typeof(x).sharding
    if sharding.mesh.empty or AxisType.Explicit not in sharding.mesh.axis_types:
        return None
    return tuple(sharding.spec) + (None,) * (x.ndim - len(sharding.spec))


def _recurrent_cases() -> list[Case]:
    # The recurrent layers' parameters are replicated in the feature layout (the input
    # features are sharded; the kernels stay whole).
    opts = {"param_layouts": ("fsdp",)}
    cases = []
    for layer, cell in ((lnn.LNLSTM, lnn.LNLSTMCell), (lnn.LNGRU, lnn.LNGRUCell),
                        (lnn.LNSimpleRNN, lnn.LNSimpleCell)):
        module = layer(H)
        cases.append(Case(f"linen.{layer.__name__}", _linen(module), _linen(nn.RNN(cell(H))),
                          X3, _init(module, X3), AXES3, plain=_plain_rnn(cell(H)),
                          keeps_input_sharding=False, **opts))
    # The NNX layers run the same sequence code (lnjax.recurrent.sequence) through their own
    # front end: the LN-LSTM's stands for the three (each recurrent case compiles a scan
    # and its transpose on eight devices, seconds apiece on this CPU).
    rngs = nnx.Rngs(0)
    for name in ("LNLSTM",):
        fn, state = _nnx(getattr(lnnx, name)(C, H, rngs=rngs))
        linen_cell = {"LNLSTM": lnn.LNLSTMCell, "LNGRU": lnn.LNGRUCell,
                      "LNSimpleRNN": lnn.LNSimpleCell}[name](H)
        plain = _plain_rnn(linen_cell)
        cases.append(Case(f"nnx.{name}", fn,
                          lambda x, st, plain=plain: plain(x, _as_linen(st)), X3, state, AXES3,
                          keeps_input_sharding=False, **opts))
    return cases


def _as_linen(state):
    """An NNX recurrent layer's state as the Linen cell's variables (the same names)."""
    cell = state["cell"] if "cell" in state else state
    return {"params": {"cell": {k: v[...] for k, v in cell.items()}}}


RECURRENT = _recurrent_cases()


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


def _compile_reference(case, layout, mode, gradient, x, params):
    """The reference compiled for the layout: flax's module, else (where flax cannot take
    the sharding) the plain-jnp one; in an Explicit mesh, with its parameters gathered
    first where it cannot take them sharded (as a plain-JAX user would write it)."""
    candidates = [case.reference] + ([case.plain] if case.plain is not None else [])
    if mode == "explicit":
        candidates += [_gathered_params(f) for f in candidates]
    for i, f in enumerate(candidates):
        try:
            return jax.jit(_loss(f) if gradient else f).lower(x, params).compile()
        except Exception:  # noqa: BLE001 (jax's sharding errors have no common base)
            if i == len(candidates) - 1:
                raise


def run(case: Case, layout: str, mode: str, gradient: bool):
    """Compiles lnjax and the reference for the layout; returns both and lnjax's outputs."""
    m = mesh(mode)
    x = jax.device_put(case.x, NamedSharding(m, _x_spec(case, layout)))
    params = jax.tree.map(lambda v: jax.device_put(v, NamedSharding(m, _param_spec(case, layout, v))),
                          case.params)
    fn = _loss(case.fn) if gradient else case.fn
    with jax.set_mesh(m):
        ours = jax.jit(fn).lower(x, params).compile()
        theirs = _compile_reference(case, layout, mode, gradient, x, params)
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
    param_specs = {(np.shape(v), _canonical(_param_spec(case, layout, v), np.ndim(v)))
                   for v in jax.tree.leaves(case.params)}
    for i, (spec, shape) in enumerate(zip(out_specs, shapes)):
        own = _canonical(spec, len(shape))
        if i == 0 and case.keeps_input_sharding:
            # the normalized output (or the gradient of x): x's sharding.
            assert own == _canonical(primal_specs[0], len(shape)), (
                case.name, layout, mode, i, own)
            continue
        # plain JAX's, or the sharding of the parameter it is the gradient (or the
        # update) of
        allowed = {_canonical(ref_specs[i], len(shape))} if i < len(ref_specs) else set()
        allowed |= {s for p_shape, s in param_specs if p_shape == tuple(shape)}
        if i == 0:  # a layer's output (dense, recurrent): plain JAX's, or x's sharding
            allowed.add(_canonical(primal_specs[0], len(shape)))
        assert own in allowed, (case.name, layout, mode, i, own, allowed)
    # 3. Collectives: nothing activation-sized moved, no more bytes than the reference.
    mine, reference = parallel.collectives(ours), parallel.collectives(theirs)
    # Activation-sized traffic (a collective in a loop counts with every run): a
    # normalization moves no activation-sized array (all-gather, all-to-all,
    # collective-permute); a layer whose maths contracts or runs along a sharded axis (a
    # dense layer over sharded input features, a recurrence) sends no more of it, of any
    # kind, than plain JAX.
    largest_param = max(np.size(v) for v in jax.tree.leaves(case.params))

    def activation_sized(c):
        return c.elements * c.runs > max(largest_param, case.x.size // 8)

    if case.keeps_input_sharding:
        moved = [c for c in mine if c.kind in MOVES and activation_sized(c)]
        assert not moved, (case.name, layout, mode, moved)
    assert (sum(c.total_bytes for c in mine if activation_sized(c))
            <= sum(c.total_bytes for c in reference if activation_sized(c))), (
        case.name, layout, mode, mine, reference)
    # The exact shift: one more collective of the statistics' size. In an Auto mesh with
    # FSDP-sharded parameters the partitioner may also shard the statistics (to return
    # them sharded like the parameters) and gather each back where it meets x: the
    # shift and the mean it is held apart from then cost up to four vectors more.
    times = 4 if (mode == "auto" and layout == "fsdp") else 1
    allowance = 4 * case.stats * times if layout in case.reduced else 0
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


@pytest.mark.parametrize("case, layout, mode, gradient", _matrix(MODULES))
def test_modules(case, layout, mode, gradient):
    check(case, layout, mode, gradient)


@pytest.mark.parametrize("case, layout, mode, gradient", _matrix(RECURRENT))
def test_recurrent(case, layout, mode, gradient):
    check(case, layout, mode, gradient)


# --------------------------------------------------------------------------- layer norm, closely


def _compiled(f, mode, layout_spec, *args):
    m = mesh(mode)
    placed = [jax.device_put(a, NamedSharding(m, s)) for a, s in zip(args, layout_spec)]
    with jax.set_mesh(m):
        return jax.jit(f).lower(*placed).compile()


def _reduced_sizes(compiled):
    """The element count of each all-reduce, sorted."""
    return sorted(c.elements for c in parallel.collectives(compiled) if c.kind == "all-reduce")


@pytest.mark.parametrize("mode", MODES)
def test_feature_sharded_layer_norm_needs_two_collectives_forward_and_one_backward(mode):
    """Exact statistics: the shift (one number per row) before the two sums (one collective
    of two numbers per row); the backward's two row sums in one more. flax's two-pass
    (``use_fast_variance=False``) also takes two forward; the one-pass E[x^2] - E[x]^2
    takes one, and so does lnjax when asked for it, collective for collective."""
    x, scale = X3, _near_one(C)
    specs = (P(None, None, D), P(D))
    rows = X3.size // C

    def fwd(module):
        return lambda v, g: module.apply({"params": {"scale": g, "bias": 0 * g}}, v)

    def grad(module):
        return jax.grad(lambda v, g: jnp.sum(jnp.sin(fwd(module)(v, g))), (0, 1))

    exact = lnn.LayerNorm()
    assert _reduced_sizes(_compiled(fwd(exact), mode, specs, x, scale)) == [rows, 2 * rows]
    assert _reduced_sizes(_compiled(grad(exact), mode, specs, x, scale)) == [
        rows, 2 * rows, 2 * rows]
    flax_exact = nn.LayerNorm(use_fast_variance=False)
    assert len(_reduced_sizes(_compiled(fwd(flax_exact), mode, specs, x, scale))) == 2
    for ours, theirs in ((lnn.LayerNorm(use_fast_variance=True), nn.LayerNorm()),
                         (lnn.RMSNorm(), nn.RMSNorm())):
        for build in (fwd, grad):
            assert (_reduced_sizes(_compiled(build(ours), mode, specs, x, scale))
                    == _reduced_sizes(_compiled(build(theirs), mode, specs, x, scale)))
    assert _reduced_sizes(_compiled(fwd(lnn.RMSNorm()), mode, specs, x, scale)) == [rows]


# --------------------------------------------------------------------------- the Pallas kernels


@pytest.mark.parametrize("mode, wrapper", [("auto", "custom_partitioning"),
                                           ("explicit", "shard_map")])
def test_pallas_kernels_run_per_shard(mode, wrapper):
    """Rows sharded: each device runs the forward and backward kernels on its own rows (in
    an Auto mesh through custom partitioning, in an Explicit one through shard_map), the
    output stays row-sharded, and the backward's only collective is one all-reduce of the
    two parameter gradients."""
    x, scale, bias = X3, _near_one(C), _data(C, offset=0.0)
    m = mesh(mode)
    args = [jax.device_put(a, NamedSharding(m, s))
            for a, s in zip((x, scale, bias), (P(D), P(), P()))]

    def loss(v, g, b):
        return jnp.sum(jnp.sin(lnjax.layer_norm(v, g, b, implementation="pallas")))

    with jax.set_mesh(m):
        jaxpr = str(jax.make_jaxpr(jax.grad(loss, (0, 1, 2)))(*args))
        compiled = jax.jit(jax.grad(loss, (0, 1, 2))).lower(*args).compile()
        grads = jax.jit(jax.grad(loss, (0, 1, 2)))(*args)
    assert wrapper in jaxpr and "pallas_call" in jaxpr
    assert jaxpr.count(wrapper) >= 2  # the forward kernel and the backward kernel
    found = parallel.collectives(compiled)
    assert [(c.kind, c.elements) for c in found] == [("all-reduce", 2 * C)], found
    assert _canonical(grads[0].sharding.spec, 3) == (("d",), None, None)
    want = jax.jit(jax.grad(loss, (0, 1, 2)))(x, scale, bias)
    for a, b in zip(grads, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(np.max(np.abs(b))))


def test_pallas_takes_an_unevenly_sharded_axis_whole_and_says_so():
    """An Auto mesh can split 60 rows over 8 devices (padding the last block); the Pallas
    kernel would count the padding, so it takes that axis whole and warns, naming it; the
    XLA path keeps it split. Both give the unsharded values."""
    x = _data(60, C)

    def norm(implementation, sharded=True):
        def f(v):
            if sharded:
                v = jax.lax.with_sharding_constraint(v, NamedSharding(mesh("auto"), P(D)))
            return lnjax.layer_norm(v, implementation=implementation)
        return f

    want = jax.jit(norm("xla", sharded=False))(x)
    with jax.set_mesh(mesh("auto")):
        with pytest.warns(UserWarning, match=r"axis 0 of x \(shape \(60, 32\), a leading axis\) "
                                             r"is sharded over \['d'\] \(8 shards\), which does "
                                             r"not divide its size 60.*implementation='xla'"):
            got = jax.jit(norm("pallas"))(x)
        xla = jax.jit(norm("xla"))(x)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(xla, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_export_of_sharded_programs(mode):
    """implementation="xla" exports sharded programs in both meshes; the Pallas kernels
    export in an Explicit mesh (a shard_map) but not from an Auto one, where they are a
    custom-partitioning call, which jax.export cannot serialize."""
    m = mesh(mode)
    shapes = (jax.ShapeDtypeStruct((64, C), jnp.float32, sharding=NamedSharding(m, P(D))),
              jax.ShapeDtypeStruct((C,), jnp.float32, sharding=NamedSharding(m, P())))

    def norm(implementation):
        return jax.jit(lambda v, g: lnjax.layer_norm(v, g, implementation=implementation))

    with jax.set_mesh(m):
        assert jax.export.export(norm("xla"), platforms=["cpu"])(*shapes).nr_devices == 8
        if mode == "explicit":
            exported = jax.export.export(norm("pallas"), platforms=["cpu"])(*shapes)
            assert "sdy.manual_computation" in exported.mlir_module()
        else:
            with pytest.raises(NotImplementedError, match="host_callbacks"):
                jax.export.export(norm("pallas"), platforms=["cpu"])(*shapes)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("call", [
    lambda v: lnjax.batch_norm(v, axis_name=D)[0],
    lambda v: lnjax.batch_renorm(v, running_mean=jnp.zeros(C), running_var=jnp.ones(C),
                                 axis_name=D)[0],
    lambda v: lnn.BatchNorm(use_running_average=False, axis_name=D).apply(
        {"params": {"scale": jnp.ones(C), "bias": jnp.zeros(C)},
         "batch_stats": {"mean": jnp.zeros(C), "var": jnp.ones(C)}}, v,
        mutable=["batch_stats"])[0],
    lambda v: lnn.LayerNorm(axis_name=D).apply(
        {"params": {"scale": jnp.ones(C), "bias": jnp.zeros(C)}}, v),
    lambda v: lnnx.BatchNorm(C, use_running_average=False, axis_name=D,
                             rngs=nnx.Rngs(0))(v),
], ids=["batch_norm", "batch_renorm", "linen.BatchNorm", "linen.LayerNorm", "nnx.BatchNorm"])
@pytest.mark.parametrize("mode", MODES)
def test_axis_name_under_jit_without_shard_map_is_one_clear_error(call, mode):
    x = jax.device_put(_data(64, C), NamedSharding(mesh(mode), P(D)))
    with jax.set_mesh(mesh(mode)):
        with pytest.raises(ValueError, match=r"axis_name='d' is not bound here: axis_name names "
                                             r"an axis of jax.shard_map.*leave axis_name=None"):
            jax.jit(call)(x)


# --------------------------------------------------------------------------- whole blocks


def _train(model, x, y, *, mesh3=None, mutable=False, steps=3):
    """``steps`` SGD steps of ``model`` from the same initial parameters; with ``mesh3`` the
    input split over ("data", "seq") and the parameters as tensor parallelism splits them
    over "model"."""
    import optax

    from benchmarks import sharding as bench

    params = jax.jit(model.init)(jax.random.key(0), x)
    # SGD: an update proportional to the gradient. (Adam would turn the rounding noise of
    # gradients that are zero in exact arithmetic, such as an attention key's bias, into
    # full-size steps of either sign.)
    tx = optax.sgd(0.1)
    step = bench.train_step(model, tx, mutable=mutable)
    if mesh3 is not None:
        specs = bench.param_specs(params, "tensor", {"model": "model"})
        params = jax.device_put(params, jax.tree.map(lambda s: NamedSharding(mesh3, s), specs))
        x_spec = P("data", "seq")
        x, y = (jax.device_put(a, NamedSharding(mesh3, x_spec)) for a in (x, y))
    opt_state = jax.jit(tx.init)(params)
    losses = []
    # The state leaves the step sharded as it came in, as a training loop keeps it.
    state_shardings = jax.tree.map(lambda a: a.sharding, (params, opt_state))
    with jax.set_mesh(mesh3) if mesh3 is not None else _nothing():
        compiled = jax.jit(step, out_shardings=(*state_shardings, None)).lower(
            params, opt_state, x, y).compile()
        for _ in range(steps):
            params, opt_state, loss = compiled(params, opt_state, x, y)
            losses.append(float(loss))
    return params, losses, compiled


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("block", ["transformer", "convnet"])
def test_blocks_train_under_data_sequence_and_tensor_sharding_as_on_one_device(block):
    """Three SGD steps of a pre-LN Transformer block (lnjax's LayerNorm) or a ConvNet block
    (lnjax's BatchNorm) on a 2 x 2 x 2 mesh: batch over "data", sequence (or image rows)
    over "seq", attention heads, MLP units and convolution channels over "model". The same
    losses and parameters as on one device, and the collectives of the same block with
    flax's modules (plus the exact shift)."""
    from benchmarks import sharding as bench

    mesh3 = jax.make_mesh((2, 2, 2), ("data", "seq", "model"),
                          axis_types=(AxisType.Auto,) * 3)
    if block == "transformer":
        model, mutable = bench.Block(lnn.LayerNorm), False
        x, y = _data(4, 16, 32), _data(4, 16, 32, offset=0.0)
    else:
        model, mutable = bench.ConvBlock(lnn.BatchNorm), True
        x, y = _data(4, 8, 8, 16), _data(4, 8, 8, 16, offset=0.0)
    one, one_losses, _ = _train(model, x, y, mutable=mutable)
    many, many_losses, compiled = _train(model, x, y, mesh3=mesh3, mutable=mutable)
    np.testing.assert_allclose(many_losses, one_losses, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(jax.device_get(many)), jax.tree.leaves(one), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)
    # The flax-module twin of the block compiles to the same collectives.
    twin = (bench.Block(nn.LayerNorm) if block == "transformer"
            else bench.ConvBlock(nn.BatchNorm))
    *_, flax_compiled = _train(twin, x, y, mesh3=mesh3, mutable=mutable, steps=1)
    ours, theirs = parallel.collectives(compiled), parallel.collectives(flax_compiled)
    # BatchNorm's exact statistics over the sharded batch and rows: the shift, one vector
    # of its channels more than flax's one-pass statistics (the residual stream's layer
    # norms have no sharded axis to reduce over: nothing more).
    shift = 4 * x.shape[-1] if block == "convnet" else 0
    assert sum(c.total_bytes for c in ours) <= sum(c.total_bytes for c in theirs) + shift, (
        ours, theirs)
