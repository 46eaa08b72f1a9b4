"""The plain XLA row kernel: layer norm and RMS norm over trailing axes, for GPU and TPU.

Implements the contract of :mod:`lnjax.kernels` (``row_norm``) for ``x`` of
shape ``(..., *F)`` normalized over its trailing axes ``F``, with none of
the XLA:CPU tricks of :mod:`lnjax.kernels.xla_cpu`: no
``optimization_barrier`` (which blocks fusion on GPU and TPU) and no
``dot_general`` (layer norm has no matmul; on an accelerator the outer
products of the CPU path only materialize buffers). XLA's GPU and TPU
compilers fuse each pass below into one kernel by themselves.

Statistics: the shift is the rough mean of the row, rounded off
(:func:`lnjax._numerics.round_off`) so every use sees one value; the sums of
``d = x - shift`` and ``d**2`` give the mean and variance exactly, as in
:func:`lnjax.normalization.moments`.

Derivatives: a ``custom_jvp`` whose tangent is linear in the tangents::

    ty = g r (tx - a) - g r xh c + xh tg + tb,
    a = mean_j tx,  c = mean_j tx xh,  xh = (d - m) r

JAX transposes it into the analytic backward (two row reductions and one
elementwise pass for ``dx``, two column reductions for ``dscale`` and
``dbias``); forward mode, ``jacfwd`` and ``hessian`` differentiate it as
ordinary code. The tangent is wrapped in ``jax.checkpoint`` (with
``prevent_cse=False``, so without a barrier): reverse mode saves ``x``,
``scale`` and three numbers per row and recomputes ``xh``.

:func:`forward` and :func:`tangent` are also the reference the Pallas
kernels' derivatives fall back on, and, given ``axis_name``, what a Pallas
kernel runs per shard when the normalized axes are sharded: each device holds
part of every row, and the row sums are completed by ``psum`` (one collective
for the shift, one for the sums of the statistics, one for the two sums of
the tangent).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from lnjax._numerics import round_off

Array = jax.Array


def trailing_axes(x: Array, num_axes: int) -> tuple[int, ...]:
    """The last ``num_axes`` axes of ``x``: the normalized ones."""
    return tuple(range(x.ndim - num_axes, x.ndim))


def row_sum(v: Array, axes: tuple[int, ...], axis_name: Any = None) -> Array:
    """``sum(v)`` over ``axes`` (kept as size 1), and over ``axis_name``'s devices if given.

    ``axis_name``: the mesh axes that shard the normalized axes, inside a
    per-shard computation (``shard_map``, custom partitioning); the sum then
    covers the whole row.
    """
    s = jnp.sum(v, axes, keepdims=True)
    return s if not axis_name else lax.psum(s, axis_name)


def row_stats(x: Array, *, epsilon: float, centered: bool, num_axes: int = 1,
              axis_name: Any = None) -> tuple[Array, Array, Array]:
    """Per-row ``(shift, mean, rstd)`` of ``x`` over its last ``num_axes`` axes (kept as size 1).

    ``shift + mean`` is the mean of the row; ``rstd = 1 / sqrt(var + epsilon)``.
    RMS statistics (``centered=False``) have ``shift = mean = 0``. With
    ``axis_name`` (inside a per-shard computation whose devices each hold part
    of every row) the sums run over the whole row: one collective for the
    shift, one for the two sums.
    """
    axes = trailing_axes(x, num_axes)
    inv_h = 1.0 / _row_size(x, axes, axis_name)
    if not centered:
        rstd = lax.rsqrt(row_sum(x * x, axes, axis_name) * inv_h + epsilon)
        zero = jnp.zeros_like(rstd)
        return zero, zero, rstd
    shift = lax.stop_gradient(round_off(row_sum(x, axes, axis_name) * inv_h))
    d = x - shift
    s1, s2 = _sum_pair(d, d * d, axes, axis_name)
    mean = s1 * inv_h
    var = jnp.maximum(s2 * inv_h - mean * mean, 0)
    return shift, mean, lax.rsqrt(var + epsilon)


def _sum_pair(a: Array, b: Array, axes: tuple[int, ...], axis_name: Any) -> tuple[Array, Array]:
    """Two row sums in one collective (where there is one)."""
    if not axis_name:
        return jnp.sum(a, axes, keepdims=True), jnp.sum(b, axes, keepdims=True)
    both = lax.psum(jnp.stack([jnp.sum(a, axes, keepdims=True),
                               jnp.sum(b, axes, keepdims=True)]), axis_name)
    return both[0], both[1]


def _row_size(x: Array, axes: tuple[int, ...], axis_name: Any) -> int:
    """The number of elements of one row (over every device's part, with ``axis_name``)."""
    n = math.prod(x.shape[a] for a in axes)
    return n * (lax.axis_size(axis_name) if axis_name else 1)


def forward(x: Array, scale: Array | None, bias: Array | None, epsilon: float, centered: bool,
            out_dtype: Any, num_axes: int = 1,
            axis_name: Any = None) -> tuple[Array, tuple[Array, Array, Array]]:
    """``(y, (shift, mean, rstd))`` of ``x`` over its last ``num_axes`` (statistics dtype)."""
    shift, mean, rstd = row_stats(x, epsilon=epsilon, centered=centered, num_axes=num_axes,
                                  axis_name=axis_name)
    y = ((x - shift) - mean) * rstd if centered else x * rstd
    if scale is not None:
        y = y * scale
    if bias is not None:
        y = y + bias
    return y.astype(out_dtype), (shift, mean, rstd)


def tangent(x: Array, scale: Array | None, shift: Array, mean: Array, rstd: Array, tx: Array,
            tscale: Array | None, tbias: Array | None, *, centered: bool, out_dtype: Any,
            num_axes: int = 1, axis_name: Any = None) -> Array:
    """The output tangent at ``x``: linear in ``(tx, tscale, tbias)``.

    With ``axis_name`` (a per-shard computation holding part of every row) the
    two row sums are taken over the whole row in one collective.
    """
    axes = trailing_axes(x, num_axes)
    inv_h = 1.0 / _row_size(x, axes, axis_name)
    tx = tx.astype(x.dtype)
    xhat = ((x - shift) - mean) * rstd if centered else x * rstd
    gain = rstd if scale is None else scale * rstd
    if centered:
        a, c = _sum_pair(tx, tx * xhat, axes, axis_name)
        tx = tx - a * inv_h
    else:
        c = row_sum(tx * xhat, axes, axis_name)
    ty = gain * (tx - xhat * (c * inv_h))
    if tscale is not None:
        ty = ty + xhat * tscale.astype(x.dtype)
    if tbias is not None:
        ty = ty + tbias.astype(x.dtype)
    return ty.astype(out_dtype)


def backward(x: Array, scale: Array | None, shift: Array, mean: Array, rstd: Array, dy: Array,
             *, centered: bool, num_axes: int = 1,
             axis_name: Any = None) -> tuple[Array, Array, Array]:
    """``(dx, dscale, dbias)``: the transpose of :func:`tangent`, written out.

    ``dx = rstd (w - mean(w) - xh mean(w xh))`` with ``w = dy * scale`` (RMS:
    without ``mean(w)``); ``dscale`` and ``dbias`` are the sums of ``dy * xh``
    and ``dy`` over the leading axes (of this device's rows only). With
    ``axis_name`` the two row means run over the whole row in one collective.
    Everything is in ``x``'s dtype (the statistics dtype).
    """
    axes = trailing_axes(x, num_axes)
    lead = tuple(range(x.ndim - num_axes))
    inv_h = 1.0 / _row_size(x, axes, axis_name)
    dy = dy.astype(x.dtype)
    xhat = ((x - shift) - mean) * rstd if centered else x * rstd
    w = dy if scale is None else dy * scale
    if centered:
        a, c = _sum_pair(w, w * xhat, axes, axis_name)
        w = w - a * inv_h
    else:
        c = row_sum(w * xhat, axes, axis_name)
    dx = (w - xhat * (c * inv_h)) * rstd
    return dx, jnp.sum(dy * xhat, lead), jnp.sum(dy, lead)


def custom_row_norm(forward: Callable, tangent: Callable, *,
                    prevent_cse: bool) -> Callable[..., Array]:
    """A row kernel with :func:`lnjax.kernels.row_norm`'s signature from a forward and a tangent.

    ``forward(x, scale, bias, epsilon, centered, out_dtype, num_axes) -> (y,
    (shift, mean, rstd))`` and ``tangent(x, scale, shift, mean, rstd, tx,
    tscale, tbias, *, centered, out_dtype, num_axes)`` (linear in the tangents)
    become one ``custom_jvp``; the tangent runs under ``jax.checkpoint`` (so
    reverse mode saves ``x``, ``scale`` and three numbers per row), with
    ``prevent_cse`` passed on (``False``: no ``optimization_barrier``).
    """
    @functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4, 5, 6))
    def norm(x, scale, bias, epsilon, centered, out_dtype, num_axes):
        return forward(x, scale, bias, epsilon, centered, out_dtype, num_axes)[0]

    @norm.defjvp
    def norm_jvp(epsilon, centered, out_dtype, num_axes, primals, tangents):
        x, scale, bias = primals
        tx, tscale, tbias = tangents
        y, (shift, mean, rstd) = forward(x, scale, bias, epsilon, centered, out_dtype, num_axes)
        linear = jax.checkpoint(functools.partial(tangent, centered=centered,
                                                  out_dtype=out_dtype, num_axes=num_axes),
                                prevent_cse=prevent_cse)
        return y, linear(x, scale, shift, mean, rstd, tx, tscale, tbias)

    def row_norm(x: Array, scale: Array | None, bias: Array | None, *, epsilon: float,
                 centered: bool, stats_dtype: Any, out_dtype: Any, num_axes: int = 1) -> Array:
        scale, bias = (None if p is None else p.astype(stats_dtype) for p in (scale, bias))
        return norm(x.astype(stats_dtype), scale, bias, float(epsilon), bool(centered),
                    jnp.dtype(out_dtype), int(num_axes))

    return row_norm


# prevent_cse=False: no optimization_barrier, which would block fusion on GPU and TPU.
_row_norm = custom_row_norm(forward, tangent, prevent_cse=False)


def row_norm(x: Array, scale: Array | None, bias: Array | None, *, epsilon: float,
             centered: bool, stats_dtype: Any, out_dtype: Any, num_axes: int = 1) -> Array:
    """Layer norm (``centered``) or RMS norm of ``x`` over its last ``num_axes`` axes.

    The contract of :func:`lnjax.kernels.row_norm`.

    Example:
      >>> import jax.numpy as jnp
      >>> y = row_norm(jnp.array([[1.0, 2.0, 3.0]]), None, None, epsilon=0.0, centered=True,
      ...              stats_dtype=jnp.float32, out_dtype=jnp.float32)
      >>> [round(float(v), 4) for v in y[0]]
      [-1.2247, 0.0, 1.2247]
    """
    return _row_norm(x, scale, bias, epsilon=epsilon, centered=centered,
                     stats_dtype=stats_dtype, out_dtype=out_dtype, num_axes=num_axes)
