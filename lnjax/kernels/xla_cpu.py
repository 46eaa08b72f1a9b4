"""The XLA:CPU-tuned row kernel: layer norm and RMS norm over trailing axes as one ``custom_jvp``.

Implements the contract of :mod:`lnjax.kernels` (``row_norm``) for ``x`` of
shape ``(..., *F)``, normalized over its trailing axes ``F`` (any leading
axes, none merged into another). The statistics are those of
:func:`lnjax.normalization.moments`: the shift is the rough mean of the row
(the sum of ``x`` / H); the sums of ``d = x - shift`` and ``d**2`` give the
mean and variance exactly.

Derivatives: a ``custom_jvp`` whose tangent is linear in the tangents::

    ty = g r (tx - a) - g r xh c + xh tg + tb,
    a = mean_j tx,  c = mean_j tx xh,  xh = (d - m) r

JAX transposes it into the analytic backward; forward mode, ``jacfwd`` and
``hessian`` differentiate it as ordinary code. The tangent is wrapped in
``jax.checkpoint``: reverse mode saves ``x``, ``scale`` and three numbers per
row (shift, mean, reciprocal std) and recomputes ``xh`` in the backward pass.

Tricks for XLA:CPU (they block fusions on GPU and TPU, which take
:mod:`lnjax.kernels.xla` instead); ``python -m benchmarks.run`` times the
kernel against flax, with and without them:

* **Per-use copies of per-row values** (:func:`per_use`,
  ``optimization_barrier``): for arrays of at least ``SPLIT_USES_FROM``
  elements, every use of a per-row value gets its own copy, so that XLA:CPU
  cannot merge the broadcasts into one materialized buffer of ``x``'s size.
  Below that size the uses share one value and XLA fuses freely (kernel
  launches dominate small arrays, e.g. inside the LN-LSTM's ``lax.scan``).
* **Per-row outer products as matmuls** (:func:`outer`): in the tangent, the
  terms that broadcast a per-row value along the row are written as a
  ``dot_general`` of the per-row vector with a vector of ones, so that their
  transposes in the backward pass are matrix-vector products, XLA:CPU's
  fastest row reductions. The per-column terms
  (``dscale``, ``dbias``) stay plain sums over the leading axes: a matmul
  contracting several leading axes makes XLA:CPU transpose the whole array
  first, and under sharded ``jit`` a plain sum is what the partitioner turns
  into one all-reduce of the parameters' size.
* **One reduction for the shift**: the shift is the output of a single
  reduction with nothing after it that a consumer could recompute and round
  differently, so every use sees one value.

``SPLIT_USES_FROM`` switches the first two on; set it beyond the array size
to turn them off. They change how XLA:CPU compiles the backward pass (which
buffers it materializes, which reductions become matrix-vector products); the
values are the same either way, and the forward pass computes ``y`` with the
same operations.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from lnjax import _sharding
from lnjax.kernels import xla

Array = jax.Array

SPLIT_USES_FROM = 1 << 16
"""Arrays of at least this many elements take the per-use copies and the matmuls.

Below it the per-row values are shared by all their uses: the arrays are
small, so a broadcast buffer costs little, and letting XLA fuse freely saves
kernel launches (which dominate inside ``lax.scan``)."""


def per_use(a: Array, n: int, split: bool) -> tuple[Array, ...]:
    """``n`` uses of a per-row (or per-column) array: distinct copies when ``split``."""
    if split:
        return lax.optimization_barrier((a,) * n)
    return (lax.optimization_barrier(a),) * n


def row_stats(x: Array, *, epsilon: float, centered: bool,
              num_axes: int = 1) -> tuple[Array, Array, Array]:
    """Per-row ``(shift, mean, rstd)`` of ``x`` over its last ``num_axes`` axes (kept as size 1)."""
    axes = xla.trailing_axes(x, num_axes)
    inv_h = 1.0 / math.prod(x.shape[a] for a in axes)
    if not centered:
        rstd = lax.rsqrt(jnp.sum(x * x, axes, keepdims=True) * inv_h + epsilon)
        zero = jnp.zeros_like(rstd)
        return zero, zero, rstd
    # The shift is the output of one reduction (with no operation after it that
    # a consumer could recompute and round differently), so every use sees one
    # value; XLA may fuse it with the sums below into a single kernel.
    shift = lax.stop_gradient(jnp.sum(x * inv_h, axes, keepdims=True))
    # A copy per sum: one value shared by both would have XLA:CPU materialize x - shift.
    s_sum, s_sq = per_use(shift, 2, True)
    mean = jnp.sum(x - s_sum, axes, keepdims=True) * inv_h
    d = x - s_sq
    var = jnp.maximum(jnp.sum(d * d, axes, keepdims=True) * inv_h - mean * mean, 0)
    return shift, mean, lax.rsqrt(var + epsilon)


def forward(x, scale, bias, epsilon, centered, out_dtype, num_axes=1):
    """``(y, (shift, mean, rstd))`` for ``x`` in the statistics dtype."""
    shift, mean, rstd = row_stats(x, epsilon=epsilon, centered=centered, num_axes=num_axes)
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
    """``u (x) v`` (of shape ``u.shape + v.shape``) as a ``dot_general``.

    Its transposes are matrix-vector products: over the trailing axes (a
    per-row result) and over the leading ones (a per-column result).
    """
    return lax.dot_general(u[..., None], v[None, ...], (((u.ndim,), (0,)), ((), ())))


def tangent(x, scale, shift, mean, rstd, tx, tscale, tbias, *, centered, out_dtype, num_axes=1):
    """The output tangent: linear in ``(tx, tscale, tbias)``.

    For large arrays the terms that broadcast a per-row tangent along the row
    are written as outer products with a vector of ones (matmuls), so that
    their transposes in the backward pass are matrix-vector products,
    XLA:CPU's fastest row reductions.
    """
    axes = xla.trailing_axes(x, num_axes)
    inv_h = 1.0 / math.prod(x.shape[a] for a in axes)
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

    c = jnp.sum(tx * xhat(0), axes, keepdims=True) * inv_h  # mean_j tx xhat
    if not split:
        if centered:
            tx = tx - jnp.sum(tx, axes, keepdims=True) * inv_h
        # One product with the gain (under sharded jit, one gather of an FSDP gain).
        ty = gain(1) * (tx - xhat(2) * c)
        if tscale is not None:
            ty = ty + xhat(3) * tscale
        return (ty if tbias is None else ty + tbias).astype(out_dtype)
    # ty = g * (r tx - (r a) (x) 1 - xhat * ((r c) (x) 1)) + xhat * tscale + tbias.
    # The gain multiplies once, outside the matmuls: under sharded jit a gain
    # sharded otherwise than x (FSDP) is then gathered once per pass, as in
    # plain code, not once per matmul. The ones take x's sharding (Explicit).
    ones = _sharding.full_like_axes(x, axes, 1.0)
    rstd_row = jnp.squeeze(rstd, axes)
    inner = r[1] * tx
    if centered:
        inner = inner + outer(-(rstd_row * (jnp.sum(tx, axes) * inv_h)), ones)
    inner = inner + xhat(2) * outer(-(rstd_row * jnp.squeeze(c, axes)), ones)
    ty = inner if scale is None else g[1] * inner
    if tscale is not None:
        ty = ty + xhat(3) * tscale
    if tbias is not None:
        ty = ty + tbias
    return ty.astype(out_dtype)


_row_norm = xla.custom_row_norm(forward, tangent, prevent_cse=True)


def row_norm(x: Array, scale: Array | None, bias: Array | None, *, epsilon: float,
             centered: bool, stats_dtype: Any, out_dtype: Any, num_axes: int = 1) -> Array:
    """Layer norm (``centered``) or RMS norm of ``x`` over its last ``num_axes`` axes.

    The contract of :func:`lnjax.kernels.row_norm`.
    """
    return _row_norm(x, scale, bias, epsilon=epsilon, centered=centered,
                     stats_dtype=stats_dtype, out_dtype=out_dtype, num_axes=num_axes)
