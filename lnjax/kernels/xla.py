"""The plain XLA row kernel: layer norm and RMS norm of ``(rows, H)`` for GPU and TPU.

Implements the contract of :mod:`lnjax.kernels` (``row_norm``) with none of
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
kernels' derivatives fall back on.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from lnjax._numerics import round_off

Array = jax.Array


def row_stats(x: Array, *, epsilon: float, centered: bool) -> tuple[Array, Array, Array]:
    """Per-row ``(shift, mean, rstd)`` of a 2-D ``x``, each of shape ``(rows, 1)``.

    ``shift + mean`` is the mean of the row; ``rstd = 1 / sqrt(var + epsilon)``.
    RMS statistics (``centered=False``) have ``shift = mean = 0``.
    """
    inv_h = 1.0 / x.shape[-1]
    if not centered:
        zero = jnp.zeros(x.shape[:1] + (1,), x.dtype)
        return zero, zero, lax.rsqrt(jnp.sum(x * x, -1, keepdims=True) * inv_h + epsilon)
    shift = lax.stop_gradient(round_off(jnp.sum(x, -1, keepdims=True) * inv_h))
    d = x - shift
    mean = jnp.sum(d, -1, keepdims=True) * inv_h
    var = jnp.maximum(jnp.sum(d * d, -1, keepdims=True) * inv_h - mean * mean, 0)
    return shift, mean, lax.rsqrt(var + epsilon)


def forward(x: Array, scale: Array | None, bias: Array | None, epsilon: float, centered: bool,
            out_dtype: Any) -> tuple[Array, tuple[Array, Array, Array]]:
    """``(y, (shift, mean, rstd))`` for 2-D ``x`` in the statistics dtype."""
    shift, mean, rstd = row_stats(x, epsilon=epsilon, centered=centered)
    y = ((x - shift) - mean) * rstd if centered else x * rstd
    if scale is not None:
        y = y * scale
    if bias is not None:
        y = y + bias
    return y.astype(out_dtype), (shift, mean, rstd)


def tangent(x: Array, scale: Array | None, shift: Array, mean: Array, rstd: Array, tx: Array,
            tscale: Array | None, tbias: Array | None, *, centered: bool,
            out_dtype: Any) -> Array:
    """The output tangent at ``x``: linear in ``(tx, tscale, tbias)``."""
    inv_h = 1.0 / x.shape[-1]
    tx = tx.astype(x.dtype)
    xhat = ((x - shift) - mean) * rstd if centered else x * rstd
    gain = rstd if scale is None else scale * rstd
    c = jnp.sum(tx * xhat, -1, keepdims=True) * inv_h
    if centered:
        tx = tx - jnp.sum(tx, -1, keepdims=True) * inv_h
    ty = gain * (tx - xhat * c)
    if tscale is not None:
        ty = ty + xhat * tscale.astype(x.dtype)
    if tbias is not None:
        ty = ty + tbias.astype(x.dtype)
    return ty.astype(out_dtype)


def custom_row_norm(forward: Callable, tangent: Callable, *,
                    prevent_cse: bool) -> Callable[..., Array]:
    """A row kernel with :func:`lnjax.kernels.row_norm`'s signature from a forward and a tangent.

    ``forward(x, scale, bias, epsilon, centered, out_dtype) -> (y, (shift, mean,
    rstd))`` and ``tangent(x, scale, shift, mean, rstd, tx, tscale, tbias, *,
    centered, out_dtype)`` (linear in the tangents) become one ``custom_jvp``;
    the tangent runs under ``jax.checkpoint`` (so reverse mode saves ``x``,
    ``scale`` and three numbers per row), with ``prevent_cse`` passed on
    (``False``: no ``optimization_barrier``).
    """
    @functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4, 5))
    def norm(x, scale, bias, epsilon, centered, out_dtype):
        return forward(x, scale, bias, epsilon, centered, out_dtype)[0]

    @norm.defjvp
    def norm_jvp(epsilon, centered, out_dtype, primals, tangents):
        x, scale, bias = primals
        tx, tscale, tbias = tangents
        y, (shift, mean, rstd) = forward(x, scale, bias, epsilon, centered, out_dtype)
        linear = jax.checkpoint(functools.partial(tangent, centered=centered,
                                                  out_dtype=out_dtype), prevent_cse=prevent_cse)
        return y, linear(x, scale, shift, mean, rstd, tx, tscale, tbias)

    def row_norm(x: Array, scale: Array | None, bias: Array | None, *, epsilon: float,
                 centered: bool, stats_dtype: Any, out_dtype: Any) -> Array:
        scale, bias = (None if p is None else p.astype(stats_dtype) for p in (scale, bias))
        return norm(x.astype(stats_dtype), scale, bias, float(epsilon), bool(centered),
                    jnp.dtype(out_dtype))

    return row_norm


# prevent_cse=False: no optimization_barrier, which would block fusion on GPU and TPU.
_row_norm = custom_row_norm(forward, tangent, prevent_cse=False)


def row_norm(x: Array, scale: Array | None, bias: Array | None, *, epsilon: float,
             centered: bool, stats_dtype: Any, out_dtype: Any) -> Array:
    """Layer norm (``centered``) or RMS norm of 2-D ``x`` over its last axis.

    The contract of :func:`lnjax.kernels.row_norm`.

    Example:
      >>> import jax.numpy as jnp
      >>> y = row_norm(jnp.array([[1.0, 2.0, 3.0]]), None, None, epsilon=0.0, centered=True,
      ...              stats_dtype=jnp.float32, out_dtype=jnp.float32)
      >>> [round(float(v), 4) for v in y[0]]
      [-1.2247, 0.0, 1.2247]
    """
    return _row_norm(x, scale, bias, epsilon=epsilon, centered=centered,
                     stats_dtype=stats_dtype, out_dtype=out_dtype)
