"""The XLA:CPU-tuned row kernel: layer norm and RMS norm of ``(rows, H)`` as one ``custom_jvp``.

Implements the contract of :mod:`lnjax.kernels` (``row_norm``). The
statistics are those of :func:`lnjax.normalization.moments`: the shift is the
rough mean of the row (the sum of ``x`` / H); the sums of ``d = x - shift``
and ``d**2`` give the mean and variance exactly.

Derivatives: a ``custom_jvp`` whose tangent is linear in the tangents::

    ty = g r (tx - a) - g r xh c + xh tg + tb,
    a = mean_j tx,  c = mean_j tx xh,  xh = (d - m) r

JAX transposes it into the analytic backward; forward mode, ``jacfwd`` and
``hessian`` differentiate it as ordinary code. The tangent is wrapped in
``jax.checkpoint``: reverse mode saves ``x``, ``scale`` and three numbers per
row (shift, mean, reciprocal std) and recomputes ``xh`` in the backward pass.

Tricks for XLA:CPU, each measured on the 2-core x86-64 CPU this project
develops on (jax 0.10.2); they are not meant for GPU or TPU, where they block
fusions:

* **Per-use copies of per-row values** (:func:`per_use`,
  ``optimization_barrier``): for arrays of at least ``SPLIT_USES_FROM``
  elements, every use of a per-row value gets its own copy, so that XLA:CPU
  cannot merge the broadcasts into one materialized ``(rows, H)`` buffer.
  Below that size the uses share one value and XLA fuses freely (kernel
  launches dominate small arrays, e.g. inside the LN-LSTM's ``lax.scan``).
* **Outer products as matmuls** (:func:`outer`): in the tangent, the terms
  that broadcast a per-row or per-column value are written as ``u[:, None] @
  v[None, :]``, so that their transposes in the backward pass are
  matrix-vector products over ``dy`` and over ``q = dy * xh`` (computed once),
  XLA:CPU's fastest reductions.
* **One reduction for the shift**: the shift is the output of a single
  reduction with nothing after it that a consumer could recompute and round
  differently, so every use sees one value.

Measured effect of the first two (one switch, ``SPLIT_USES_FROM``, turns both
on; set it beyond the array size to turn them off), f32, scale and bias,
medians of 15 interleaved rounds on the 2-core x86-64 CPU, jax 0.10.2
(2026-11-26):

==============  =======  ==========  ===========  ==========
shape           pass     tricks on   tricks off   off / on
==============  =======  ==========  ===========  ==========
4096 x 1024     fwd       2.41 ms     2.32 ms      0.97
4096 x 1024     fwd+bwd   9.21 ms    24.49 ms      2.66
16384 x 256     fwd       2.52 ms     2.52 ms      1.00
16384 x 256     fwd+bwd   8.02 ms    23.21 ms      2.89
1024 x 8192     fwd      19.80 ms    20.39 ms      1.03
1024 x 8192     fwd+bwd  31.27 ms    52.49 ms      1.68
==============  =======  ==========  ===========  ==========

They leave the forward pass as it is and make the backward 1.7-2.9x faster,
so they stay for XLA:CPU.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from lnjax.kernels import xla

Array = jax.Array

# Below this many elements the per-row values are shared by all their uses:
# the arrays are small, so a broadcast buffer costs nothing, and letting XLA
# fuse freely saves kernel launches (which dominate inside lax.scan).
SPLIT_USES_FROM = 1 << 16


def per_use(a: Array, n: int, split: bool) -> tuple[Array, ...]:
    """``n`` uses of a per-row (or per-column) array: distinct copies when ``split``."""
    if split:
        return lax.optimization_barrier((a,) * n)
    return (lax.optimization_barrier(a),) * n


def row_stats(x: Array, *, epsilon: float, centered: bool) -> tuple[Array, Array, Array]:
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
    s_sum, s_sq = per_use(shift, 2, True)  # shared, x - shift would be materialized
    mean = jnp.sum(x - s_sum, -1, keepdims=True) * (1.0 / h)
    d = x - s_sq
    var = jnp.maximum(jnp.sum(d * d, -1, keepdims=True) * (1.0 / h) - mean * mean, 0)
    return shift, mean, lax.rsqrt(var + epsilon)


def forward(x, scale, bias, epsilon, centered, out_dtype):
    """``(y, (shift, mean, rstd))`` for 2-D ``x`` in the statistics dtype."""
    shift, mean, rstd = row_stats(x, epsilon=epsilon, centered=centered)
    split = x.size >= SPLIT_USES_FROM
    (r,) = per_use(rstd, 1, split)
    if centered:
        (s,), (m,) = per_use(shift, 1, split), per_use(mean, 1, split)
        y = ((x - s) - m) * r
    else:
        y = x * r
    if scale is not None:
        y = y * scale
    if bias is not None:
        y = y + bias
    return y.astype(out_dtype), (shift, mean, rstd)


def outer(u: Array, v: Array) -> Array:
    """``u[:, None] * v[None, :]`` as a matmul: its transpose is a matrix-vector product."""
    return u[:, None] @ v[None, :]


def tangent(x, scale, shift, mean, rstd, tx, tscale, tbias, *, centered, out_dtype):
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
    split = x.size >= SPLIT_USES_FROM
    s, m, r = (per_use(v, 4, split) for v in (shift, mean, rstd))
    g: tuple[Array, ...] = () if scale is None else per_use(scale, 4, split)  # read with a scale

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
        ty = ty + outer(-(rstd_row * (jnp.sum(tx, -1) * (1.0 / h))), gvec)
    cross = outer(-(rstd_row * c[:, 0]), gvec)
    if tscale is not None:
        cross = cross + outer(ones, tscale)
    ty = ty + xhat(2) * cross
    if tbias is not None:
        ty = ty + outer(ones, tbias)
    return ty.astype(out_dtype)


_row_norm = xla.custom_row_norm(forward, tangent, prevent_cse=True)


def row_norm(x: Array, scale: Array | None, bias: Array | None, *, epsilon: float,
             centered: bool, stats_dtype: Any, out_dtype: Any) -> Array:
    """Layer norm (``centered``) or RMS norm of 2-D ``x`` over its last axis.

    The contract of :func:`lnjax.kernels.row_norm`.
    """
    return _row_norm(x, scale, bias, epsilon=epsilon, centered=centered,
                     stats_dtype=stats_dtype, out_dtype=out_dtype)
