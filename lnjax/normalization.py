"""Normalization functions: statistics and the normalizations built on them.

Pure ``jax.numpy``: nothing here knows about Flax or optax. Every
normalization in lnjax (the functions below and the Linen/NNX modules that wrap
them) computes its statistics with :func:`moments` and applies them with
:func:`normalize`, so the variance algorithm is written once, here.

Numerical choices, in one place:

* **Mean-shifted statistics.** The deviations are taken from a first-pass
  estimate of the mean (the *shift*), held apart from the small correction
  ``mean(x - shift)``; the output is ``((x - shift) - mean(x - shift)) /
  sigma``. Neither the variance nor the centred values suffer the catastrophic
  cancellation of ``E[x^2] - E[x]^2`` (flax's default) or the rounding of a
  large mean to the input precision (a plain two-pass). In f32 the output
  stays within about 1e-6 of a float64 reference for data whose mean is 1e6
  times their standard deviation.
* **Precision.** Statistics are computed in at least float32 whatever the
  input dtype (bf16 and f16 included); the result has the input's dtype.
* **Population variance** (divide by the count), as in the paper; an
  ``epsilon`` is added inside the square root.
* **Masks** select the positions the statistics are computed over; every
  position is normalized. A selection with no positions has mean 0 and
  variance 0 (finite, never NaN).
* **Fused path.** :func:`layer_norm`, :func:`rms_norm` and the
  LayerNorm/RMSNorm modules normalizing over trailing axes (no mask, no
  ``axis_name``) run one ``custom_jvp`` with the analytic derivative: the
  same statistics, a backward pass of a few fused passes over ``x`` and
  ``dy``, and reverse mode saving only ``x`` and three numbers per row.
  Forward mode, ``jacfwd`` and ``hessian`` differentiate its linear tangent
  rule.
* **Cross-device statistics** (``axis_name``) merge the per-device sums with
  Chan's parallel formula, weighting every device by its number of selected
  positions, so devices that hold different numbers of examples give the
  statistics of the whole batch.

Reference: Ba, Kiros & Hinton, "Layer Normalization", arXiv:1607.06450 (2016).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array
Axes = int | Sequence[int]

__all__ = [
    "Moments",
    "batch_norm",
    "canonicalize_axes",
    "group_norm",
    "instance_norm",
    "layer_norm",
    "moments",
    "normalize",
    "rms_norm",
    "weight_norm",
]


# --------------------------------------------------------------------------
# Argument checks: every error is raised at trace time, names the argument and
# the shapes involved, and says what to do instead.
# --------------------------------------------------------------------------


def _as_float_array(x: Any, *, fn: str, name: str = "x") -> Array:
    """``x`` as a jax array with a floating dtype, or a ``TypeError``."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"{fn}: {name} must have a floating-point dtype, got {x.dtype} "
            f"(shape {x.shape}); cast it first, e.g. {name}.astype(jnp.float32)."
        )
    return x


def canonicalize_axes(ndim: int, axis: Axes, *, fn: str, name: str = "axis",
                      shape: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """Sorted non-negative axes from an int or a sequence of ints.

    Raises ``ValueError`` for an axis out of range or named twice, and
    ``TypeError`` for anything that is not an integer.
    """
    shape_txt = f"x of shape {shape}" if shape is not None else f"an array of rank {ndim}"
    if isinstance(axis, (int, np.integer)):
        axes = (axis,)
    elif isinstance(axis, Sequence):
        axes = tuple(axis)
    else:
        raise TypeError(f"{fn}: {name}={axis!r} must be an int or a tuple of ints.")
    out = []
    for a in axes:
        if isinstance(a, bool) or not isinstance(a, (int, np.integer)):
            raise TypeError(f"{fn}: {name}={axis!r} must be an int or a tuple of ints.")
        if not -ndim <= a < ndim:
            raise ValueError(
                f"{fn}: {name}={axis!r} is out of range for {shape_txt} "
                f"(valid axes are {-ndim}..{ndim - 1})."
            )
        out.append(int(a) % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"{fn}: {name}={axis!r} names the same axis twice for {shape_txt}.")
    return tuple(sorted(out))


def _check_epsilon(epsilon: Any, *, fn: str) -> None:
    if isinstance(epsilon, (int, float, np.number)) and not epsilon >= 0:
        raise ValueError(f"{fn}: epsilon must be >= 0, got {epsilon}.")


def _check_nonempty(shape: tuple[int, ...], axes: tuple[int, ...], *, fn: str, name: str) -> None:
    if not axes:
        raise ValueError(f"{fn}: {name}=() selects no axis of x of shape {shape}; "
                         "there is nothing to normalize over.")
    empty = [a for a in axes if shape[a] == 0]
    if empty:
        raise ValueError(f"{fn}: the normalized axes {axes} of x of shape {shape} include "
                         f"axis {empty[0]} of size 0; statistics of an empty axis are undefined.")


def _broadcast_mask(mask: Any, shape: tuple[int, ...], *, fn: str) -> Array | None:
    if mask is None:
        return None
    mask = jnp.asarray(mask)
    try:
        full = np.broadcast_shapes(mask.shape, shape)
    except ValueError:
        full = None
    if full != tuple(shape):
        raise ValueError(f"{fn}: mask of shape {mask.shape} does not broadcast to x of "
                         f"shape {tuple(shape)}.")
    return jnp.broadcast_to(mask.astype(bool), shape)


def _param(p: Any, name: str, feature_shape: tuple[int, ...], target_shape: tuple[int, ...],
           *, fn: str) -> Array | None:
    """``scale``/``bias`` checked against ``feature_shape``, reshaped to broadcast."""
    if p is None:
        return None
    p = jnp.asarray(p)
    if not jnp.issubdtype(p.dtype, jnp.inexact):
        p = p.astype(jnp.float32)
    try:
        ok = np.broadcast_shapes(p.shape, feature_shape) == tuple(feature_shape)
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"{fn}: {name} of shape {p.shape} does not match the feature "
                         f"shape {tuple(feature_shape)} (it must equal it or broadcast to it).")
    return jnp.broadcast_to(p, feature_shape).reshape(target_shape)


def _stats_dtype(dtype: Any) -> Any:
    return jnp.promote_types(dtype, jnp.float32)


# --------------------------------------------------------------------------
# Statistics: the one variance algorithm of lnjax.
# --------------------------------------------------------------------------


class Moments(NamedTuple):
    """Statistics of ``x`` over some axes, kept with the reduced axes of size 1.

    The mean is held as an unevaluated sum ``shift + mean`` so that centring
    ``(x - shift) - mean`` loses nothing to the rounding of a large mean.
    """

    shift: Array  # f32[...] centre the deviations are taken from (no gradient)
    mean: Array  # f32[...] mean of (x - shift); the mean of x is shift + mean
    var: Array  # f32[...] population variance (uncentred: mean of x**2)
    count: Array  # f32[...] number of positions the statistics cover


def moments(x: Array, axes: tuple[int, ...], *, mask: Array | None = None,
            centered: bool = True, fast_variance: bool = False,
            axis_name: Any = None, axis_index_groups: Any = None,
            dtype: Any = None) -> Moments:
    """Mean-shifted mean and variance of ``x`` over ``axes``.

    .. math::
        s = \\mathrm{stop\\_gradient}(\\bar x),\\quad d = x - s,\\quad
        m = \\tfrac1n \\sum d,\\quad \\sigma^2 = \\tfrac1n \\sum d^2 - m^2

    Args:
      x: floating input; cast to ``dtype`` (default: at least float32).
      axes: canonical axes to reduce over (see :func:`canonicalize_axes`).
      mask: optional boolean array of ``x``'s shape: the positions counted.
      centered: ``False`` gives RMS statistics (mean 0, variance E[x^2]).
      fast_variance: use ``E[x^2] - E[x]^2`` with no shift (flax's fast path,
        inaccurate far from zero; for compatibility only).
      axis_name: a mapped axis name (``shard_map``/``pmap``) over which the
        statistics are merged.
      axis_index_groups: optional groups of device indices along ``axis_name``.
      dtype: the computation dtype (default ``promote_types(x.dtype, f32)``).

    Returns:
      :class:`Moments` with the reduced axes kept as size 1.
    """
    cdtype = _stats_dtype(x.dtype) if dtype is None else dtype
    x = x.astype(cdtype)
    if mask is None:
        count = jnp.full((), math.prod(x.shape[a] for a in axes), cdtype)
        count = jnp.broadcast_to(count, _kept_shape(x.shape, axes))
    else:
        count = jnp.sum(mask, axis=axes, keepdims=True, dtype=cdtype)
    safe_count = jnp.maximum(count, 1)

    def masked(v):
        return v if mask is None else jnp.where(mask, v, 0)

    if centered and not fast_variance:
        # First pass: a rough mean. It need not be exact, only close to the
        # data, so that x - shift is computed exactly. Every use must see the
        # same value: rounding it to a few bits less than the dtype holds
        # stops the compiler from contracting ``x - sum * (1/n)`` into an FMA
        # in some fusions and not in others, which would centre the sums and
        # the output on different shifts.
        shift = jnp.sum(masked(x), axes, keepdims=True) / safe_count
        shift = lax.stop_gradient(_round_off(shift))
    else:
        shift = jnp.zeros_like(safe_count)
    d = masked(x - shift)
    s1 = jnp.sum(d, axes, keepdims=True) if centered else jnp.zeros_like(shift)
    s2 = jnp.sum(d * d, axes, keepdims=True)

    if axis_name is not None:
        shift, s1, s2, count = _merge_across_devices(shift, s1, s2, count, axis_name,
                                                     axis_index_groups)
        safe_count = jnp.maximum(count, 1)
    mean = s1 / safe_count
    var = s2 / safe_count
    if centered:
        var = jnp.maximum(var - mean * mean, 0)
    return Moments(shift, mean, var, count)


def _round_off(v: Array, bits: int = 4) -> Array:
    """``v`` rounded to ``bits`` fewer mantissa bits than its dtype holds."""
    info = jnp.finfo(v.dtype)
    return lax.reduce_precision(v, exponent_bits=info.nexp, mantissa_bits=info.nmant - bits)


def _kept_shape(shape: tuple[int, ...], axes: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(1 if i in axes else n for i, n in enumerate(shape))


def _merge_across_devices(shift, s1, s2, count, axis_name, axis_index_groups):
    """Chan's parallel merge of per-device shifted sums along ``axis_name``.

    Each device holds sums of deviations from its own shift. A first ``psum``
    agrees on a common shift (the count-weighted mean of the shifts, rounded
    off so every use sees one value); each device moves its sums to it by the
    exact difference ``shift_k - common``; a second ``psum`` adds them up.
    Every device gets the same ``(common, sum, sum of squares, count)``, and
    each device counts by its number of positions, however uneven.
    """
    def psum(*vs):
        return tuple(lax.psum(jnp.stack(vs), axis_name, axis_index_groups=axis_index_groups))

    total, weighted = psum(count, count * shift)
    common = _round_off(weighted / jnp.maximum(total, 1))
    delta = shift - common  # exact: both lie close to the data
    g1, g2 = psum(s1 + count * delta, s2 + 2 * delta * s1 + count * delta * delta)
    return common, g1, g2, total


def normalize(x: Array, stats: Moments, *, epsilon: float, scale: Array | None = None,
              bias: Array | None = None, dtype: Any = None) -> Array:
    """``((x - shift) - mean) / sqrt(var + epsilon) * scale + bias``.

    Args:
      x: the input the statistics were computed from.
      stats: :class:`Moments` of ``x`` (reduced axes kept as size 1).
      epsilon: added to the variance inside the square root.
      scale, bias: optional arrays that broadcast against ``x``.
      dtype: the result dtype (default: ``x``'s dtype).

    Returns:
      The normalized array.
    """
    cdtype = stats.var.dtype
    xs = x.astype(cdtype)
    y = ((xs - stats.shift) - stats.mean) * lax.rsqrt(stats.var + epsilon)
    if scale is not None:
        y = y * scale
    if bias is not None:
        y = y + bias
    return y.astype(x.dtype if dtype is None else dtype)


# --------------------------------------------------------------------------
# The fused path: layer norm and RMS norm over trailing axes, as one
# custom_jvp with the analytic derivative.
# --------------------------------------------------------------------------
#
# Used by layer_norm, rms_norm and the LayerNorm/RMSNorm modules whenever the
# normalized axes are the trailing axes of x (and the scale/bias axes are the
# same), with no mask and no cross-device axis: x is viewed as (rows, H).
# Everything else takes the generic path above, which computes the same
# values.
#
# * Statistics. The shift is the rough mean of the row (the sum of x / H);
#   the sums of d = x - shift and d**2 then give the mean and variance
#   exactly as :func:`moments` does. The uses of a per-row value go through
#   ``optimization_barrier`` copies: for large arrays one copy per use, so
#   that XLA cannot merge their broadcasts into one materialized (rows, H)
#   buffer.
# * Derivatives. A custom_jvp whose tangent is linear in the tangents::
#
#       ty = g r (tx - a) - g r xh c + xh tg + tb,
#       a = mean_j tx,  c = mean_j tx xh,  xh = (d - m) r
#
#   JAX transposes it into the analytic backward, and forward mode, jacfwd
#   and hessian differentiate it as ordinary code. For large arrays the
#   broadcast terms are written as outer products, so the backward is: three
#   matrix-vector products (dy @ g, 1^T dy, and with q = dy * xh computed
#   once, q @ g and 1^T q) and one elementwise pass for dx. The tangent is
#   wrapped in ``jax.checkpoint``: reverse mode saves x, scale and three
#   numbers per row (shift, mean, reciprocal std), and recomputes xh in the
#   backward pass instead of storing it.


# Below this many elements the per-row values are shared by all their uses:
# the arrays are small, so a broadcast buffer costs nothing, and letting XLA
# fuse freely saves kernel launches (which dominate inside lax.scan).
_SPLIT_USES_FROM = 1 << 16


def _per_use(a: Array, n: int, split: bool) -> tuple[Array, ...]:
    """``n`` uses of a per-row (or per-column) array: distinct copies when ``split``."""
    if split:
        return lax.optimization_barrier((a,) * n)
    return (lax.optimization_barrier(a),) * n


def _fused_stats(x: Array, *, epsilon: float, centered: bool) -> tuple[Array, Array, Array]:
    """Per-row ``(shift, mean, rstd)`` of a 2-D ``x``, each of shape ``(rows, 1)``."""
    h = x.shape[-1]
    if not centered:
        zero = jnp.zeros(x.shape[:1] + (1,), x.dtype)
        rstd = lax.rsqrt(jnp.sum(x * x, -1, keepdims=True) * (1.0 / h) + epsilon)
        return zero, zero, rstd
    # The shift is the output of one reduction (with no operation after it that
    # a consumer could recompute and round differently), so every use sees one
    # value; XLA may fuse it with the sums below into a single kernel.
    shift = lax.stop_gradient(jnp.sum(x * (1.0 / h), -1, keepdims=True))
    s_sum, s_sq = _per_use(shift, 2, True)  # shared, x - shift would be materialized
    mean = jnp.sum(x - s_sum, -1, keepdims=True) * (1.0 / h)
    d = x - s_sq
    var = jnp.maximum(jnp.sum(d * d, -1, keepdims=True) * (1.0 / h) - mean * mean, 0)
    return shift, mean, lax.rsqrt(var + epsilon)


def _fused_forward(x, scale, bias, epsilon, centered, out_dtype):
    """``(y, (shift, mean, rstd))`` for 2-D ``x`` in the statistics dtype."""
    shift, mean, rstd = _fused_stats(x, epsilon=epsilon, centered=centered)
    split = x.size >= _SPLIT_USES_FROM
    (r,) = _per_use(rstd, 1, split)
    if centered:
        (s,), (m,) = _per_use(shift, 1, split), _per_use(mean, 1, split)
        y = ((x - s) - m) * r
    else:
        y = x * r
    if scale is not None:
        y = y * scale
    if bias is not None:
        y = y + bias
    return y.astype(out_dtype), (shift, mean, rstd)


def _outer(u: Array, v: Array) -> Array:
    """``u[:, None] * v[None, :]`` as a matmul: its transpose is a matrix-vector product."""
    return u[:, None] @ v[None, :]


def _fused_tangent(x, scale, shift, mean, rstd, tx, tscale, tbias, *, centered, out_dtype):
    """The output tangent: linear in ``(tx, tscale, tbias)``.

    For large arrays the terms that broadcast a per-row or per-column tangent
    are written as outer products (matmuls), so that their transposes in the
    backward pass are matrix-vector products over ``dy`` and over
    ``q = dy * xhat`` (computed once), XLA:CPU's fastest reductions.
    """
    h = x.shape[-1]
    tx = tx.astype(x.dtype)
    tscale = None if tscale is None else tscale.astype(x.dtype)
    tbias = None if tbias is None else tbias.astype(x.dtype)
    split = x.size >= _SPLIT_USES_FROM
    s, m, r = (_per_use(v, 4, split) for v in (shift, mean, rstd))
    g = (None,) * 4 if scale is None else _per_use(scale, 4, split)

    def xhat(i):
        return ((x - s[i]) - m[i]) * r[i] if centered else x * r[i]

    def gain(i):
        return r[i] if scale is None else g[i] * r[i]

    c = jnp.sum(tx * xhat(0), -1, keepdims=True) * (1.0 / h)  # mean_j tx xhat
    if not split:
        if centered:
            tx = tx - jnp.sum(tx, -1, keepdims=True) * (1.0 / h)
        ty = gain(1) * tx - gain(2) * xhat(2) * c
        if tscale is not None:
            ty = ty + xhat(3) * tscale
        return (ty if tbias is None else ty + tbias).astype(out_dtype)
    # ty = g r tx - (r a) (x) g + xhat * (1 (x) tscale - (r c) (x) g) + 1 (x) tbias
    ones = jnp.ones(x.shape[:1], x.dtype)
    gvec = jnp.ones((h,), x.dtype) if scale is None else g[2]
    rstd_row = rstd[:, 0]
    ty = gain(1) * tx
    if centered:
        ty = ty + _outer(-(rstd_row * (jnp.sum(tx, -1) * (1.0 / h))), gvec)
    cross = _outer(-(rstd_row * c[:, 0]), gvec)
    if tscale is not None:
        cross = cross + _outer(ones, tscale)
    ty = ty + xhat(2) * cross
    if tbias is not None:
        ty = ty + _outer(ones, tbias)
    return ty.astype(out_dtype)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4, 5))
def _fused_norm(x, scale, bias, epsilon, centered, out_dtype):
    """Layer norm (``centered``) or RMS norm of 2-D ``x`` over its last axis."""
    return _fused_forward(x, scale, bias, epsilon, centered, out_dtype)[0]


@_fused_norm.defjvp
def _fused_norm_jvp(epsilon, centered, out_dtype, primals, tangents):
    x, scale, bias = primals
    tx, tscale, tbias = tangents
    y, (shift, mean, rstd) = _fused_forward(x, scale, bias, epsilon, centered, out_dtype)
    tangent = jax.checkpoint(functools.partial(_fused_tangent, centered=centered,
                                               out_dtype=out_dtype))
    return y, tangent(x, scale, shift, mean, rstd, tx, tscale, tbias)


def _fused_applies(x: Array, red: tuple[int, ...], feat: tuple[int, ...], *, epsilon: Any,
                   mask: Any, fast_variance: bool, axis_name: Any) -> bool:
    """Whether :func:`_fused_norm` computes this normalization."""
    trailing = tuple(range(x.ndim - len(red), x.ndim))
    return (red == feat == trailing and mask is None and axis_name is None
            and not fast_variance and x.size > 0
            and isinstance(epsilon, (int, float, np.floating)) and not isinstance(epsilon, bool))


def _normalize_axes(fn: str, x: Any, scale: Any, bias: Any, *, reduction_axes: Axes,
                    feature_axes: Axes, epsilon: float, mask: Any, centered: bool = True,
                    fast_variance: bool = False, axis_name: Any = None,
                    axis_index_groups: Any = None, dtype: Any = None,
                    stats_dtype: Any = None,
                    names: tuple[str, str] = ("axis", "axis")) -> tuple[Array, Moments | None]:
    """Checked statistics over ``reduction_axes``, scale/bias over ``feature_axes``.

    ``names`` are the user-facing names of the two axis arguments, for errors.
    Returns ``(y, stats)``; ``stats`` is None where the fused path (trailing
    axes, no mask, no ``axis_name``) computed ``y`` without forming them.
    """
    x = _as_float_array(x, fn=fn)
    _check_epsilon(epsilon, fn=fn)
    red = canonicalize_axes(x.ndim, reduction_axes, fn=fn, name=names[0], shape=x.shape)
    _check_nonempty(x.shape, red, fn=fn, name=names[0])
    feat = canonicalize_axes(x.ndim, feature_axes, fn=fn, name=names[1], shape=x.shape)
    feature_shape = tuple(x.shape[a] for a in feat)
    if _fused_applies(x, red, feat, epsilon=epsilon, mask=mask, fast_variance=fast_variance,
                      axis_name=axis_name):
        cdtype = _stats_dtype(x.dtype) if stats_dtype is None else stats_dtype
        width = math.prod(feature_shape)
        scale, bias = (_param(p, name, feature_shape, (width,), fn=fn)
                       for p, name in ((scale, "scale"), (bias, "bias")))
        scale, bias = (None if p is None else p.astype(cdtype) for p in (scale, bias))
        y = _fused_norm(x.reshape(-1, width).astype(cdtype), scale, bias, float(epsilon),
                        centered, jnp.dtype(x.dtype if dtype is None else dtype))
        return y.reshape(x.shape), None
    target = tuple(n if i in feat else 1 for i, n in enumerate(x.shape))
    scale = _param(scale, "scale", feature_shape, target, fn=fn)
    bias = _param(bias, "bias", feature_shape, target, fn=fn)
    mask = _broadcast_mask(mask, x.shape, fn=fn)
    st = moments(x, red, mask=mask, centered=centered, fast_variance=fast_variance,
                 axis_name=axis_name, axis_index_groups=axis_index_groups, dtype=stats_dtype)
    return normalize(x, st, epsilon=epsilon, scale=scale, bias=bias, dtype=dtype), st


# --------------------------------------------------------------------------
# The public normalizations.
# --------------------------------------------------------------------------


def layer_norm(x: Array, scale: Array | None = None, bias: Array | None = None, *,
               axis: Axes = -1, epsilon: float = 1e-6, mask: Array | None = None) -> Array:
    """Layer normalization: each case normalized over its own summed inputs.

    .. math::
        \\mathrm{LN}(x) = g \\odot \\frac{x - \\mu}{\\sqrt{\\sigma^2 + \\epsilon}} + b,
        \\quad \\mu = \\tfrac1H \\sum_i x_i,\\quad
        \\sigma^2 = \\tfrac1H \\sum_i (x_i - \\mu)^2

    with the statistics over ``axis`` (the H summed inputs of one case).

    Args:
      x: floating input of any shape.
      scale: optional gain ``g`` with the shape of the normalized axes
        (``x.shape[axis]``) or broadcastable to it.
      bias: optional bias ``b``, shaped like ``scale``.
      axis: the axis or axes normalized over (default: the last).
      epsilon: added to the variance inside the square root (>= 0).
      mask: optional boolean array broadcastable to ``x``: the positions the
        statistics are computed over.

    Returns:
      An array of ``x``'s shape and dtype.

    When ``axis`` names the trailing axes and there is no mask, the fused
    path computes the result and its analytic derivative (see the module
    notes); otherwise the generic path, with the same statistics.

    Example:
      >>> import jax.numpy as jnp, lnjax
      >>> y = lnjax.layer_norm(jnp.array([[1.0, 2.0, 3.0]]), epsilon=0.0)
      >>> [round(float(v), 4) for v in y[0]]
      [-1.2247, 0.0, 1.2247]

    Reference: Ba, Kiros & Hinton (2016), Eqs. 3-4.
    """
    y, _ = _normalize_axes("layer_norm", x, scale, bias, reduction_axes=axis,
                           feature_axes=axis, epsilon=epsilon, mask=mask)
    return y


def rms_norm(x: Array, scale: Array | None = None, *, axis: Axes = -1,
             epsilon: float = 1e-6, mask: Array | None = None) -> Array:
    """RMS normalization: layer norm without re-centring.

    .. math::
        \\mathrm{RMS}(x) = g \\odot \\frac{x}{\\sqrt{\\tfrac1H \\sum_i x_i^2 + \\epsilon}}

    Args:
      x: floating input of any shape.
      scale: optional gain with the shape of the normalized axes.
      axis: the axis or axes normalized over (default: the last).
      epsilon: added inside the square root (>= 0).
      mask: optional boolean array broadcastable to ``x``: the positions the
        mean square is computed over.

    Returns:
      An array of ``x``'s shape and dtype.

    Trailing axes without a mask take the fused path, as for
    :func:`layer_norm`.

    Example:
      >>> import jax.numpy as jnp, lnjax
      >>> y = lnjax.rms_norm(jnp.array([3.0, 4.0]), epsilon=0.0)
      >>> [round(float(v), 4) for v in y]
      [0.8485, 1.1314]

    Reference: Zhang & Sennrich (2019), arXiv:1910.07467.
    """
    y, _ = _normalize_axes("rms_norm", x, scale, None, reduction_axes=axis,
                           feature_axes=axis, epsilon=epsilon, mask=mask, centered=False)
    return y


def _group_norm(fn: str, x: Any, num_groups: int, scale: Any, bias: Any, *,
                reduction_axes: Axes | None, epsilon: float, mask: Any,
                fast_variance: bool = False, axis_name: Any = None,
                axis_index_groups: Any = None, dtype: Any = None,
                stats_dtype: Any = None) -> Array:
    """Group norm over channels-last ``x``; ``reduction_axes`` must end with -1."""
    x = _as_float_array(x, fn=fn)
    _check_epsilon(epsilon, fn=fn)
    if x.ndim < 2:
        raise ValueError(f"{fn}: x must have a batch and a channel axis, got shape {x.shape}.")
    channels = x.shape[-1]
    if (isinstance(num_groups, bool) or not isinstance(num_groups, (int, np.integer))
            or num_groups <= 0 or channels % num_groups):
        raise ValueError(f"{fn}: num_groups={num_groups!r} must be a positive divisor of the "
                         f"number of channels {channels} (x of shape {x.shape}).")
    red = (tuple(range(1, x.ndim)) if reduction_axes is None else
           canonicalize_axes(x.ndim, reduction_axes, fn=fn, name="reduction_axes",
                             shape=x.shape))
    if x.ndim - 1 not in red:
        raise ValueError(f"{fn}: reduction_axes={reduction_axes!r} must include the last "
                         f"(channel) axis of x of shape {x.shape}.")
    _check_nonempty(x.shape, red, fn=fn, name="reduction_axes")
    target = (1,) * (x.ndim - 1) + (channels,)
    scale = _param(scale, "scale", (channels,), target, fn=fn)
    bias = _param(bias, "bias", (channels,), target, fn=fn)
    mask = _broadcast_mask(mask, x.shape, fn=fn)
    group_shape = x.shape[:-1] + (num_groups, channels // num_groups)
    xg = x.reshape(group_shape)
    # Reduce over the chosen axes and over the channels within each group.
    gred = tuple(a for a in red if a != x.ndim - 1) + (x.ndim,)
    gmask = None if mask is None else mask.reshape(group_shape)
    st = moments(xg, gred, mask=gmask, fast_variance=fast_variance, axis_name=axis_name,
                 axis_index_groups=axis_index_groups, dtype=stats_dtype)
    y = normalize(xg, st, epsilon=epsilon, dtype=st.var.dtype).reshape(x.shape)
    if scale is not None:
        y = y * scale
    if bias is not None:
        y = y + bias
    return y.astype(x.dtype if dtype is None else dtype)


def group_norm(x: Array, num_groups: int, scale: Array | None = None,
               bias: Array | None = None, *, epsilon: float = 1e-6,
               mask: Array | None = None) -> Array:
    """Group normalization of channels-last ``x``.

    The C channels are split into ``num_groups`` groups of consecutive
    channels; each example's group is normalized over its channels and all
    spatial axes (every axis but the first, which is the batch).

    .. math::
        y_{n,\\ldots,c} = g_c \\frac{x_{n,\\ldots,c} - \\mu_{n,G(c)}}
        {\\sqrt{\\sigma^2_{n,G(c)} + \\epsilon}} + b_c

    Args:
      x: floating input of shape ``(N, ..., C)``.
      num_groups: number of groups; must divide C.
      scale, bias: optional per-channel arrays of shape ``(C,)``.
      epsilon: added to the variance inside the square root (>= 0).
      mask: optional boolean array broadcastable to ``x``.

    Returns:
      An array of ``x``'s shape and dtype.

    Example:
      >>> import jax.numpy as jnp, lnjax
      >>> x = jnp.arange(8.0).reshape(1, 2, 4)
      >>> lnjax.group_norm(x, 2).shape
      (1, 2, 4)

    Reference: Wu & He (2018), arXiv:1803.08494.
    """
    return _group_norm("group_norm", x, num_groups, scale, bias, reduction_axes=None,
                       epsilon=epsilon, mask=mask)


def instance_norm(x: Array, scale: Array | None = None, bias: Array | None = None, *,
                  epsilon: float = 1e-6, mask: Array | None = None) -> Array:
    """Instance normalization of channels-last ``x``.

    Each example and channel is normalized over its spatial axes (every axis
    but the first, the batch, and the last, the channels).

    .. math::
        y_{n,\\ldots,c} = g_c
        \\frac{x_{n,\\ldots,c} - \\mu_{n,c}}{\\sqrt{\\sigma^2_{n,c} + \\epsilon}} + b_c

    Args:
      x: floating input of shape ``(N, S1, ..., C)`` with at least one spatial
        axis.
      scale, bias: optional per-channel arrays of shape ``(C,)``.
      epsilon: added to the variance inside the square root (>= 0).
      mask: optional boolean array broadcastable to ``x``.

    Returns:
      An array of ``x``'s shape and dtype.

    Example:
      >>> import jax.numpy as jnp, lnjax
      >>> y = lnjax.instance_norm(jnp.array([[[1.0], [3.0]]]), epsilon=0.0)
      >>> [float(v) for v in y.ravel()]
      [-1.0, 1.0]

    Reference: Ulyanov, Vedaldi & Lempitsky (2016), arXiv:1607.08022.
    """
    x = _as_float_array(x, fn="instance_norm")
    if x.ndim < 3:
        raise ValueError(f"instance_norm: x must be (N, spatial..., C) with at least one "
                         f"spatial axis, got shape {x.shape}; for (N, C) use layer_norm.")
    y, _ = _normalize_axes("instance_norm", x, scale, bias,
                           reduction_axes=tuple(range(1, x.ndim - 1)), feature_axes=-1,
                           epsilon=epsilon, mask=mask)
    return y


def batch_norm(x: Array, scale: Array | None = None, bias: Array | None = None, *,
               axis: Axes = 0, epsilon: float = 1e-5, mask: Array | None = None,
               axis_name: Any = None, axis_index_groups: Any = None,
               unbiased: bool = False) -> tuple[Array, Array, Array]:
    """Batch normalization: each unit normalized over the mini-batch.

    .. math::
        y = g \\odot \\frac{x - \\mu_B}{\\sqrt{\\sigma_B^2 + \\epsilon}} + b

    with the statistics over ``axis`` (the batch, and for convolutions the
    spatial axes too), optionally merged across devices along ``axis_name``.

    Args:
      x: floating input.
      scale, bias: optional arrays with the shape of the axes *not* reduced
        (the features), or broadcastable to it.
      axis: the reduction axis or axes (default 0, the batch).
      epsilon: added to the variance inside the square root (>= 0).
      mask: optional boolean array broadcastable to ``x``: the examples (or
        positions) the statistics count.
      axis_name: a mapped axis (``shard_map``/``pmap``) to merge the
        statistics over: synchronized batch norm. Devices may hold different
        numbers of selected positions; each counts by its number.
      axis_index_groups: optional groups of device indices along ``axis_name``.
      unbiased: normalize with the unbiased variance ``n/(n-1) * var`` (the
        paper's choice for batch size 4).

    Returns:
      ``(y, mean, var)``: the output (``x``'s shape and dtype) and the batch
      mean and variance used, shaped like the feature axes, in float32 (or
      wider).

    Example:
      >>> import jax.numpy as jnp, lnjax
      >>> y, mean, var = lnjax.batch_norm(jnp.array([[1.0], [3.0]]), epsilon=0.0)
      >>> [float(v) for v in y.ravel()], float(mean[0]), float(var[0])
      ([-1.0, 1.0], 2.0, 1.0)

    Reference: Ioffe & Szegedy (2015), arXiv:1502.03167.
    """
    fn = "batch_norm"
    x = _as_float_array(x, fn=fn)
    red = canonicalize_axes(x.ndim, axis, fn=fn, shape=x.shape)
    feat = tuple(i for i in range(x.ndim) if i not in red)
    y, (mean, var) = _batch_norm(fn, x, scale, bias, reduction_axes=red, feature_axes=feat,
                                 epsilon=epsilon, mask=mask, axis_name=axis_name,
                                 axis_index_groups=axis_index_groups, unbiased=unbiased)
    return y, mean, var


def _batch_norm(fn, x, scale, bias, *, reduction_axes, feature_axes, epsilon, mask=None,
                axis_name=None, axis_index_groups=None, unbiased=False, fast_variance=False,
                stats=None, dtype=None, stats_dtype=None):
    """Batch-norm core shared with the modules: returns ``y, (mean, var)``.

    ``stats``, when given, is a ``(mean, var)`` pair shaped like the feature
    axes (running averages) used instead of the batch's statistics.
    """
    x = _as_float_array(x, fn=fn)
    _check_epsilon(epsilon, fn=fn)
    red = canonicalize_axes(x.ndim, reduction_axes, fn=fn, shape=x.shape)
    feat = canonicalize_axes(x.ndim, feature_axes, fn=fn, name="feature axes", shape=x.shape)
    feature_shape = tuple(x.shape[a] for a in feat)
    target = tuple(n if i in feat else 1 for i, n in enumerate(x.shape))
    scale = _param(scale, "scale", feature_shape, target, fn=fn)
    bias = _param(bias, "bias", feature_shape, target, fn=fn)
    cdtype = _stats_dtype(x.dtype) if stats_dtype is None else stats_dtype
    if stats is None:
        _check_nonempty(x.shape, red, fn=fn, name="axis")
        mask = _broadcast_mask(mask, x.shape, fn=fn)
        st = moments(x, red, mask=mask, fast_variance=fast_variance, axis_name=axis_name,
                     axis_index_groups=axis_index_groups, dtype=cdtype)
        if unbiased:
            st = st._replace(var=st.var * st.count / jnp.maximum(st.count - 1, 1))
    else:
        mean, var = (jnp.asarray(s, cdtype).reshape(target) for s in stats)
        st = Moments(mean, jnp.zeros_like(mean), var, jnp.ones_like(mean))
    y = normalize(x, st, epsilon=epsilon, scale=scale, bias=bias, dtype=dtype)
    mean = (st.shift + st.mean).reshape(feature_shape)
    return y, (mean, st.var.reshape(feature_shape))


def weight_norm(v: Array, g: Array, *, axis: Axes | None = 0,
                epsilon: float = 1e-12) -> Array:
    """Weight normalization: the weight ``g * v / ||v||``.

    .. math::
        w_i = \\frac{g_i}{\\lVert v_i \\rVert} v_i

    where ``i`` runs over ``axis`` (the output units) and the norm is over all
    other axes. For a PyTorch-style ``(out, in)`` matrix use ``axis=0``; for a
    Flax ``Dense`` kernel ``(in, out)`` use ``axis=-1``; ``axis=None`` takes
    one norm over the whole array.

    Args:
      v: the direction parameter.
      g: the gain, of shape ``tuple(v.shape[a] for a in axis)`` (or
        broadcastable to it; a scalar when ``axis`` is None).
      axis: the axis or axes kept (one norm per index along them).
      epsilon: added to the squared norm, so a zero ``v`` gives 0, not NaN.

    Returns:
      The weight, of ``v``'s shape and dtype (computed in at least float32).

    Example:
      >>> import jax.numpy as jnp, lnjax
      >>> w = lnjax.weight_norm(jnp.array([[3.0, 4.0]]), jnp.array([10.0]))
      >>> [float(a) for a in w[0]]
      [6.0, 8.0]

    Reference: Salimans & Kingma (2016), arXiv:1602.07868; Table 1 of Ba et al.
    """
    fn = "weight_norm"
    v = _as_float_array(v, fn=fn, name="v")
    _check_epsilon(epsilon, fn=fn)
    kept = () if axis is None else canonicalize_axes(v.ndim, axis, fn=fn, shape=v.shape)
    red = tuple(i for i in range(v.ndim) if i not in kept)
    feature_shape = tuple(v.shape[a] for a in kept)
    target = tuple(n if i in kept else 1 for i, n in enumerate(v.shape))
    g = _param(g, "g", feature_shape, target, fn=fn)
    vs = v.astype(_stats_dtype(v.dtype))
    w = vs * lax.rsqrt(jnp.sum(vs * vs, axis=red, keepdims=True) + epsilon) * g
    return w.astype(v.dtype)
