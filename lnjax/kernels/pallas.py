"""Pallas row kernels: layer norm and RMS norm of ``(rows, H)`` for GPU (Triton) and TPU (Mosaic).

Implements the contract of :mod:`lnjax.kernels` (:func:`row_norm`) as Pallas
kernels, with the statistics of :mod:`lnjax.kernels.xla`: the shift is the
rough mean of the row (the sum of ``x`` / H), computed once per row inside the
kernel so every use sees one value; the sums of ``d = x - shift`` and ``d**2``
give ``mean`` and ``var = max(mean(d**2) - mean**2, 0)``; ``rstd = rsqrt(var +
epsilon)``; ``y = (d - mean) * rstd * scale + bias`` (RMS: ``y = x * rsqrt(
mean(x**2) + epsilon) * scale``). Statistics are in ``stats_dtype`` (float32
for bf16/f16/f32 input) whatever the input dtype; ``y`` is cast to
``out_dtype`` on the way out.

Where each kernel runs (``backend``, see ``BACKENDS``):

* ``"triton"``: GPU, the Pallas Triton backend
  (``jax.experimental.pallas.triton.CompilerParams``; the default Mosaic GPU
  backend rejects row reductions).
* ``"mosaic"``: TPU, Pallas Mosaic (``jax.experimental.pallas.tpu``).
* ``"interpret"``: the Triton-style kernels in Pallas interpret mode (any
  platform, ordinary JAX ops; what the CPU runs).
* ``"interpret_mosaic"``: the TPU-style kernels in interpret mode, so that the
  CPU tests run both kernel bodies.

Kernel designs:

* **Triton forward** (:func:`forward`): grid ``cdiv(rows, BR)``, one program
  per block of ``BR`` rows (a power of two: ``BR * BLOCK_H <=
  TRITON_BLOCK_ELEMENTS``, or one row when wider) with each row whole on
  chip: ``BLOCK_H`` is the next power of two ``>= H``; loads and stores are
  masked (padded lanes read 0 and are kept out of every sum;
  padded rows are never stored). No BlockSpecs: the kernel indexes the
  whole-array refs with ``program_id``, which is how Triton allows widths that
  are not powers of two.
* **Triton backward** (:func:`backward`): a persistent grid of at most
  ``TRITON_MAX_PROGRAMS`` programs, each looping over a contiguous stripe of
  row blocks: per row ``dx = rstd * (wdy - mean(wdy) - xhat * mean(wdy *
  xhat))`` with ``wdy = dy * scale`` (RMS: without ``mean(wdy)``), and
  per-program f32 partial sums of ``dy * xhat`` and ``dy`` in registers,
  written once as a ``(programs, H)`` array; one ``jnp.sum`` over programs
  then gives ``dscale`` and ``dbias``.
* **TPU forward and backward**: BlockSpecs ``(BR, H)`` (the last block dim is
  the full width, so Mosaic keeps each row whole in VMEM), ``BR`` a multiple
  of 16 sized so that one f32 block holds about ``TPU_BLOCK_ELEMENTS``
  elements (or all rows, when fewer); the grid is ``cdiv(rows, BR)`` and the
  last block may overhang: its extra rows are never stored and are masked out
  of the partial sums (interpret mode fills them with NaN, so the tests would
  see a leak). The backward writes dx and per-block partials ``(blocks, 1,
  H)``, then one ``jnp.sum``. Both grids are ``"parallel"``.

What is saved for reverse mode: ``x``, ``scale`` and three numbers per row
(``shift``, ``mean``, ``rstd``, shape ``(rows, 1)``, from the forward kernel);
``xhat`` is recomputed in the backward kernel.

Derivatives: :func:`row_norm` is a ``jax.custom_jvp``. Its primal is the
forward kernel (no statistics written); its JVP rule runs the forward kernel
that also writes the statistics and returns, as the tangent, a primitive
(``row_norm_tangent``) linear in ``(tx, tscale, tbias)``:

* lowered as :func:`lnjax.kernels.xla.tangent` (forward mode, ``jvp`` and
  ``jacfwd``, is computed by XLA);
* transposed into the Pallas backward kernels (reverse mode: ``grad``,
  ``vjp``, ``jacrev``);
* differentiated (second order) and batched (``vmap``) through
  :func:`lnjax.kernels.xla.tangent`.

For second order through reverse mode (``hessian = jacfwd(jacrev)``) the
backward kernels and the statistics-writing forward kernel are each a
``custom_jvp`` whose rule differentiates an XLA reference of the same
function (the transpose of :func:`lnjax.kernels.xla.tangent`, and
:func:`lnjax.kernels.xla.forward`).

Checking without the hardware: the interpret backends run the same kernel
bodies as the compiled ones, with ordinary JAX ops, so a CPU holds both kernel
styles against float64 references (tests/test_kernels_pallas.py). For the
compiled backends a CPU can go as far as lowering: ``jax.export`` for
``cuda`` (and ``rocm``) generates the Triton IR inside a
``__gpu$xla.gpu.triton`` custom call, which shows that every op is one the
Pallas Triton lowering accepts, and for ``tpu`` the serialized Mosaic kernel
inside a ``tpu_custom_call``. Compiling is left to the hardware's toolchain
(Triton's passes on the GPU, Mosaic's layout passes in libtpu), so only a run
on a GPU or TPU shows that a kernel compiles, and how fast it is.

Block sizes follow from the shape alone (:func:`triton_blocks`,
:func:`tpu_block_rows`, ``TRITON_BLOCK_ELEMENTS``, ``TPU_BLOCK_ELEMENTS``),
not from timings of a device. Each row stays whole on chip: very wide rows
(tens of thousands of elements and more) spill registers on GPU, and on TPU a
block of 16 such rows must fit ``TPU_VMEM_LIMIT_BYTES``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pltriton
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from lnjax.kernels import sharded, xla

Array = jax.Array

BACKENDS = ("triton", "mosaic", "interpret", "interpret_mosaic")
"""The backends: kernel style (Triton or Mosaic) and whether it runs in interpret mode."""

TRITON_BLOCK_ELEMENTS = 4096
"""Most elements of one Triton program's block (rows x next power of two of H)."""

TRITON_MAX_PROGRAMS = 256
"""Most programs of the Triton backward (each loops over a stripe of row blocks)."""

TPU_BLOCK_ELEMENTS = 1 << 18
"""Elements of one TPU block (``BR x H``, 1 MiB in f32) the row count is sized to."""

TPU_VMEM_LIMIT_BYTES = 32 << 20
"""Scoped VMEM the TPU kernels ask for (double-buffered blocks plus f32 temporaries)."""

_STYLE = {"triton": ("triton", False), "mosaic": ("mosaic", False),
          "interpret": ("triton", True), "interpret_mosaic": ("mosaic", True)}


@dataclasses.dataclass(frozen=True)
class _Config:
    """The static part of one call: hashable, passed as a non-differentiable argument."""

    epsilon: float
    centered: bool
    stats_dtype: Any
    out_dtype: Any
    style: str
    interpret: bool
    num_axes: int = 1  # how many trailing axes of x are normalized


# --------------------------------------------------------------------------- the contract


def row_norm(x: Array, scale: Array | None, bias: Array | None, *, epsilon: float,
             centered: bool, stats_dtype: Any, out_dtype: Any, backend: str,
             num_axes: int = 1) -> Array:
    """Layer norm (``centered``) or RMS norm of ``x`` over its last ``num_axes`` axes, in Pallas.

    The contract of :func:`lnjax.kernels.row_norm`, differentiable in both
    modes. Under sharded ``jit`` each device runs the kernels on its own rows
    (:mod:`lnjax.kernels.sharded`); where the normalized axes themselves are
    sharded, each device runs :mod:`lnjax.kernels.xla`'s maths on its part of
    every row, completing the row sums with collectives.

    Args:
      x: ``(..., *F)`` in the input dtype (f32, bf16, f16; f64 in interpret
        mode): any leading axes (the rows), then the ``num_axes`` normalized axes.
      scale, bias: arrays of shape ``F`` of any float dtype, or None (``bias``
        must be None when ``centered`` is False).
      epsilon: added to the variance inside the square root.
      centered: ``True`` for layer norm, ``False`` for RMS norm.
      stats_dtype: the dtype of the statistics (float32 for bf16/f16/f32 input).
      out_dtype: the result's dtype.
      backend: one of ``BACKENDS``: ``"triton"`` (GPU), ``"mosaic"`` (TPU),
        ``"interpret"`` / ``"interpret_mosaic"`` (those kernels in interpret mode).
      num_axes: how many trailing axes are normalized (default 1).

    Returns:
      ``x``'s shape in ``out_dtype``.

    Example:
      >>> import jax.numpy as jnp
      >>> y = row_norm(jnp.array([[1.0, 2.0, 3.0]]), None, None, epsilon=0.0, centered=True,
      ...              stats_dtype=jnp.float32, out_dtype=jnp.float32, backend="interpret")
      >>> [round(float(v), 4) for v in y[0]]
      [-1.2247, 0.0, 1.2247]
    """
    cfg = _config(x, scale, bias, epsilon=epsilon, centered=centered, stats_dtype=stats_dtype,
                  out_dtype=out_dtype, backend=backend, num_axes=num_axes)
    scale, bias = (None if p is None else p.astype(cfg.stats_dtype) for p in (scale, bias))
    if x.ndim == num_axes:  # a single row: give it a leading axis
        return _row_norm(x[None], scale, bias, cfg)[0]
    return _row_norm(x, scale, bias, cfg)


def _config(x: Array, scale: Array | None, bias: Array | None, *, epsilon: float,
            centered: bool, stats_dtype: Any, out_dtype: Any, backend: str,
            num_axes: int = 1) -> _Config:
    """Checks the arguments (raising errors that name them) and returns the static config."""
    if backend not in _STYLE:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    shape = tuple(jnp.shape(x))
    if not 1 <= num_axes <= len(shape):
        raise ValueError(f"num_axes={num_axes} must be between 1 and the rank of x of shape "
                         f"{shape}")
    if not all(shape):
        raise ValueError(f"x must have at least one row and one column, got shape {shape}")
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        raise TypeError(f"x must have a floating dtype, got {jnp.result_type(x)}")
    feature_shape = shape[len(shape) - num_axes:]
    for name, p in (("scale", scale), ("bias", bias)):
        if p is None:
            continue
        if tuple(jnp.shape(p)) != feature_shape:
            raise ValueError(f"{name} of shape {jnp.shape(p)} does not match x of shape "
                             f"{shape}: expected {feature_shape}")
        if not jnp.issubdtype(jnp.result_type(p), jnp.floating):
            raise TypeError(f"{name} must have a floating dtype, got {jnp.result_type(p)}")
    if bias is not None and not centered:
        raise ValueError("bias must be None for RMS norm (centered=False)")
    stats_dtype, out_dtype = jnp.dtype(stats_dtype), jnp.dtype(out_dtype)
    if not jnp.issubdtype(stats_dtype, jnp.floating):
        raise TypeError(f"stats_dtype must be a floating dtype, got {stats_dtype}")
    style, interpret = _STYLE[backend]
    return _Config(float(epsilon), bool(centered), stats_dtype, out_dtype, style, interpret,
                   int(num_axes))


# --------------------------------------------------------------------------- Triton kernels


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def triton_blocks(rows: int, width: int) -> tuple[int, int, int]:
    """The Triton block layout: one program holds ``BR`` whole rows, padded to ``BLOCK_H`` lanes.

    Args:
      rows, width: the shape of ``x``.

    Returns:
      ``(BR, BLOCK_H, num_warps)``: powers of two, ``BLOCK_H >= width``.
    """
    block_h = _pow2(width)
    block_r = max(1, min(_pow2(rows), TRITON_BLOCK_ELEMENTS // block_h))
    num_warps = min(16, max(4, block_r * block_h // 512))
    return block_r, block_h, num_warps


def triton_backward_grid(rows: int, width: int) -> tuple[int, int]:
    """The Triton backward's persistent grid: each program loops over a stripe of row blocks.

    Args:
      rows, width: the shape of ``x``.

    Returns:
      ``(programs, blocks_per_program)``; ``programs <= TRITON_MAX_PROGRAMS``.
    """
    n_blocks = pl.cdiv(rows, triton_blocks(rows, width)[0])
    per_program = pl.cdiv(n_blocks, TRITON_MAX_PROGRAMS)
    return pl.cdiv(n_blocks, per_program), per_program


def _triton_tile(rows, width, block_r, block_h, start):
    """Row/column indices and masks of the ``(block_r, block_h)`` tile from row ``start``."""
    r = start + jnp.arange(block_r)
    c = jnp.arange(block_h)
    rmask, cmask = r < rows, c < width
    return r, c, rmask, cmask, rmask[:, None] & cmask[None, :]


def _row_statistics(x, valid, inv_h, epsilon, centered):
    """``(shift, mean, rstd, xhat)`` of a block of rows; ``valid`` masks padded lanes (or None)."""
    mask = (lambda v: v) if valid is None else (lambda v: jnp.where(valid, v, 0))
    if not centered:
        rstd = lax.rsqrt(jnp.sum(x * x, axis=1, keepdims=True) * inv_h + epsilon)
        zero = jnp.zeros_like(rstd)
        return zero, zero, rstd, x * rstd
    shift = jnp.sum(x, axis=1, keepdims=True) * inv_h
    d = mask(x - shift)
    mean = jnp.sum(d, axis=1, keepdims=True) * inv_h
    var = jnp.maximum(jnp.sum(d * d, axis=1, keepdims=True) * inv_h - mean * mean, 0)
    rstd = lax.rsqrt(var + epsilon)
    return shift, mean, rstd, mask((d - mean) * rstd)


def _triton_forward_kernel(x_ref, *in_refs, rows, width, block_r, block_h, epsilon, centered,
                           has_scale, has_bias, save_stats, stats_dtype):
    refs = list(in_refs)
    scale_ref = refs.pop(0) if has_scale else None
    bias_ref = refs.pop(0) if has_bias else None
    y_ref = refs.pop(0)
    r, c, rmask, cmask, mask = _triton_tile(rows, width, block_r, block_h,
                                            pl.program_id(0) * block_r)
    x = pltriton.load(x_ref.at[r[:, None], c[None, :]], mask=mask, other=0).astype(stats_dtype)
    shift, mean, rstd, y = _row_statistics(x, mask, 1.0 / width, epsilon, centered)
    if scale_ref is not None:
        y = y * pltriton.load(scale_ref.at[c], mask=cmask, other=0)[None, :]
    if bias_ref is not None:
        y = y + pltriton.load(bias_ref.at[c], mask=cmask, other=0)[None, :]
    pltriton.store(y_ref.at[r[:, None], c[None, :]], y.astype(y_ref.dtype), mask=mask)
    if save_stats:
        for ref, v in zip(refs, (shift, mean, rstd)):
            pltriton.store(ref.at[r], v[:, 0], mask=rmask)


def _triton_backward_kernel(x_ref, *in_refs, rows, width, block_r, block_h, blocks_per_program,
                            centered, has_scale, need_dscale, need_dbias, stats_dtype):
    refs = list(in_refs)
    scale_ref = refs.pop(0) if has_scale else None
    shift_ref, mean_ref, rstd_ref, dy_ref, dx_ref = refs[:5]
    ds_ref = refs[5] if need_dscale else None
    db_ref = refs[-1] if need_dbias else None
    pid = pl.program_id(0)
    c = jnp.arange(block_h)
    cmask = c < width
    gain = (pltriton.load(scale_ref.at[c], mask=cmask, other=0)[None, :]
            if scale_ref is not None else None)

    def body(i, acc):
        start = (pid * blocks_per_program + i) * block_r
        r, _, rmask, _, mask = _triton_tile(rows, width, block_r, block_h, start)
        tile = r[:, None], c[None, :]
        x = pltriton.load(x_ref.at[tile], mask=mask, other=0).astype(stats_dtype)
        dy = pltriton.load(dy_ref.at[tile], mask=mask, other=0).astype(stats_dtype)
        shift, mean, rstd = (pltriton.load(ref.at[r], mask=rmask, other=0)[:, None]
                             for ref in (shift_ref, mean_ref, rstd_ref))
        dx, q = _dx_and_product(x, dy, gain, shift, mean, rstd, mask, 1.0 / width, centered)
        pltriton.store(dx_ref.at[tile], dx.astype(dx_ref.dtype), mask=mask)
        ds_acc, db_acc = acc
        return ds_acc + jnp.sum(q, axis=0), db_acc + jnp.sum(dy, axis=0)

    zeros = jnp.zeros((block_h,), stats_dtype)
    ds, db = lax.fori_loop(0, blocks_per_program, body, (zeros, zeros))
    if ds_ref is not None:
        pltriton.store(ds_ref.at[pid, c], ds, mask=cmask)
    if db_ref is not None:
        pltriton.store(db_ref.at[pid, c], db, mask=cmask)


def _dx_and_product(x, dy, gain, shift, mean, rstd, valid, inv_h, centered):
    """``(dx, dy * xhat)`` of a block of rows (the LN/RMS backward); ``valid`` masks lanes."""
    xhat = ((x - shift) - mean) * rstd if centered else x * rstd
    if valid is not None:
        xhat = jnp.where(valid, xhat, 0)
    wdy = dy if gain is None else dy * gain
    c = jnp.sum(wdy * xhat, axis=1, keepdims=True) * inv_h
    if centered:
        wdy = wdy - jnp.sum(wdy, axis=1, keepdims=True) * inv_h
    return (wdy - xhat * c) * rstd, dy * xhat


# --------------------------------------------------------------------------- TPU kernels


def tpu_block_rows(rows: int, width: int) -> int:
    """Rows of one TPU block ``(BR, H)``.

    Args:
      rows, width: the shape of ``x``.

    Returns:
      A multiple of 16 (bf16's sublane tiling; f32 needs 8) from 16 to 1024
      near ``TPU_BLOCK_ELEMENTS / width``, or ``rows`` when that is fewer.
    """
    block_r = max(16, min(1024, (TPU_BLOCK_ELEMENTS // width) // 16 * 16))
    return rows if block_r >= rows else block_r


def _mosaic_forward_kernel(x_ref, *in_refs, width, epsilon, centered, has_scale, has_bias,
                           save_stats, stats_dtype):
    refs = list(in_refs)
    scale_ref = refs.pop(0) if has_scale else None
    bias_ref = refs.pop(0) if has_bias else None
    y_ref = refs.pop(0)
    x = x_ref[...].astype(stats_dtype)
    shift, mean, rstd, y = _row_statistics(x, None, 1.0 / width, epsilon, centered)
    if scale_ref is not None:
        y = y * scale_ref[...]
    if bias_ref is not None:
        y = y + bias_ref[...]
    y_ref[...] = y.astype(y_ref.dtype)
    if save_stats:
        for ref, v in zip(refs, (shift, mean, rstd)):
            ref[...] = v


def _mosaic_backward_kernel(x_ref, *in_refs, rows, width, block_r, centered, has_scale,
                            need_dscale, need_dbias, stats_dtype):
    refs = list(in_refs)
    scale_ref = refs.pop(0) if has_scale else None
    shift_ref, mean_ref, rstd_ref, dy_ref, dx_ref = refs[:5]
    ds_ref = refs[5] if need_dscale else None
    db_ref = refs[-1] if need_dbias else None
    x = x_ref[...].astype(stats_dtype)
    dy = dy_ref[...].astype(stats_dtype)
    gain = scale_ref[...] if scale_ref is not None else None
    dx, q = _dx_and_product(x, dy, gain, shift_ref[...], mean_ref[...], rstd_ref[...], None,
                            1.0 / width, centered)
    dx_ref[...] = dx.astype(dx_ref.dtype)
    # The last block may overhang the array: its extra rows hold garbage (NaN in
    # interpret mode) and must not reach the partial sums.
    row = pl.program_id(0) * block_r + lax.broadcasted_iota(jnp.int32, (block_r, 1), 0)
    valid = row < rows
    if ds_ref is not None:
        ds_ref[...] = jnp.sum(jnp.where(valid, q, 0), axis=0, keepdims=True)
    if db_ref is not None:
        db_ref[...] = jnp.sum(jnp.where(valid, dy, 0), axis=0, keepdims=True)


def _mosaic_params():
    return pltpu.CompilerParams(dimension_semantics=("parallel",),
                                vmem_limit_bytes=TPU_VMEM_LIMIT_BYTES)


# --------------------------------------------------------------------------- kernel calls


def forward(x: Array, scale: Array | None, bias: Array | None, *, epsilon: float,
            centered: bool, stats_dtype: Any, out_dtype: Any, backend: str,
            save_stats: bool = False,
            num_axes: int = 1) -> Array | tuple[Array, tuple[Array, ...]]:
    """The forward kernel alone (no custom derivative), per shard under sharded ``jit``.

    Args:
      x: ``(..., *F)`` in the input dtype (at least one leading axis).
      scale, bias: arrays of shape ``F``, or None.
      epsilon, centered, stats_dtype, out_dtype, backend, num_axes: as in
        :func:`row_norm`.
      save_stats: whether the kernel also writes the per-row statistics.

    Returns:
      ``y`` (``x``'s shape in ``out_dtype``), or, when ``save_stats``,
      ``(y, (shift, mean, rstd))`` with each statistic of ``x``'s shape with
      the normalized axes of size 1, in ``stats_dtype``.
    """
    cfg = _config(x, scale, bias, epsilon=epsilon, centered=centered, stats_dtype=stats_dtype,
                  out_dtype=out_dtype, backend=backend, num_axes=num_axes)
    scale, bias = (None if p is None else p.astype(cfg.stats_dtype) for p in (scale, bias))
    return _forward(x, scale, bias, cfg, save_stats)


def _forward(x: Array, scale: Array | None, bias: Array | None, cfg: _Config,
             save_stats: bool) -> Array | tuple[Array, tuple[Array, ...]]:
    params = [p for p in (scale, bias) if p is not None]
    call = sharded.Call(
        "the Pallas row kernel", _local_forward, _xla_forward,
        (("cfg", cfg), ("has", (scale is not None, bias is not None)), ("save_stats", save_stats)),
        cfg.num_axes, ("rows",) + ("params",) * len(params),
        ("rows",) + ("stats",) * (3 if save_stats else 0))
    y, *stats = sharded.per_shard(call, x, *params)
    if not save_stats:
        return y
    return y, tuple(_keep_dims(v, cfg.num_axes) for v in stats)


def _keep_dims(v: Array, num_axes: int) -> Array:
    """A per-row statistic of shape ``L`` as ``L + (1,) * num_axes`` (the XLA kernels' form)."""
    return v.reshape(v.shape + (1,) * num_axes)


def _drop_dims(v: Array, num_axes: int) -> Array:
    return v.reshape(v.shape[:v.ndim - num_axes])


def _unpack(params, has):
    it = iter(params)
    return tuple(next(it) if h else None for h in has)


def _local_forward(x, *params, cfg, has, save_stats, row_axes, feature_axes):
    """One device's block of the forward: the Pallas kernel on its rows, or, where the
    normalized axes are sharded, the XLA maths with the row sums completed across devices."""
    del row_axes  # each row is whole on its device, or completed over feature_axes
    scale, bias = _unpack(params, has)
    n = cfg.num_axes
    if feature_axes:
        y, stats = xla.forward(x.astype(cfg.stats_dtype), scale, bias, cfg.epsilon, cfg.centered,
                               cfg.out_dtype, n, axis_name=feature_axes)
        return (y, *(_drop_dims(v, n) for v in stats)) if save_stats else (y,)
    lead, width = x.shape[:x.ndim - n], math.prod(x.shape[x.ndim - n:])
    scale, bias = (None if p is None else p.reshape(width) for p in (scale, bias))
    out = _kernel_forward(x.reshape(-1, width), scale, bias, cfg, save_stats)
    return (out[0].reshape(x.shape), *(v.reshape(lead) for v in out[1:]))


def _xla_forward(x, *params, cfg, has, save_stats):
    """The forward in plain XLA (what a mapped parameter under ``vmap`` computes)."""
    scale, bias = _unpack(params, has)
    y, stats = xla.forward(x.astype(cfg.stats_dtype), scale, bias, cfg.epsilon, cfg.centered,
                           cfg.out_dtype, cfg.num_axes)
    return (y, *(_drop_dims(v, cfg.num_axes) for v in stats)) if save_stats else (y,)


def _kernel_forward(x: Array, scale: Array | None, bias: Array | None, cfg: _Config,
                    save_stats: bool) -> tuple[Array, ...]:
    """The forward ``pallas_call`` on 2-D ``x`` and ``(H,)`` parameters: ``(y, *stats)``,
    each statistic ``(rows,)``."""
    rows, width = x.shape
    stats_dtype = cfg.stats_dtype
    params = [p for p in (scale, bias) if p is not None]
    flags = dict(epsilon=cfg.epsilon, centered=cfg.centered, has_scale=scale is not None,
                 has_bias=bias is not None, save_stats=save_stats, stats_dtype=stats_dtype)
    y_shape = jax.ShapeDtypeStruct((rows, width), cfg.out_dtype)
    if cfg.style == "triton":
        block_r, block_h, num_warps = triton_blocks(rows, width)
        stat_shape = jax.ShapeDtypeStruct((rows,), stats_dtype)
        out = pl.pallas_call(
            functools.partial(_triton_forward_kernel, rows=rows, width=width, block_r=block_r,
                              block_h=block_h, **flags),
            grid=(pl.cdiv(rows, block_r),),
            out_shape=[y_shape] + [stat_shape] * (3 if save_stats else 0),
            compiler_params=pltriton.CompilerParams(num_warps=num_warps, num_stages=1),
            interpret=cfg.interpret, name="lnjax_row_norm_fwd")(x, *params)
        y, stats = out[0], tuple(out[1:])
    else:
        block_r = tpu_block_rows(rows, width)
        row_block = pl.BlockSpec((block_r, width), lambda i: (i, 0))
        stat_block = pl.BlockSpec((block_r, 1), lambda i: (i, 0))
        param_block = pl.BlockSpec((1, width), lambda i: (0, 0))
        stat_shape = jax.ShapeDtypeStruct((rows, 1), stats_dtype)
        n_stats = 3 if save_stats else 0
        out = pl.pallas_call(
            functools.partial(_mosaic_forward_kernel, width=width, **flags),
            grid=(pl.cdiv(rows, block_r),),
            in_specs=[row_block] + [param_block] * len(params),
            out_specs=[row_block] + [stat_block] * n_stats,
            out_shape=[y_shape] + [stat_shape] * n_stats,
            compiler_params=_mosaic_params(),
            interpret=cfg.interpret, name="lnjax_row_norm_fwd")(
                x, *(p.reshape(1, width) for p in params))
        y, stats = out[0], tuple(s[:, 0] for s in out[1:])
    return (y, *stats)


def backward(x: Array, scale: Array | None, shift: Array, mean: Array, rstd: Array, dy: Array,
             *, centered: bool, backend: str, need_dscale: bool = True,
             need_dbias: bool = True,
             num_axes: int = 1) -> tuple[Array, Array | None, Array | None]:
    """The backward kernels alone: ``(dx, dscale, dbias)`` from the cotangent ``dy``.

    Args:
      x: ``(..., *F)`` in the input dtype.
      scale: an array of shape ``F`` in the statistics dtype, or None.
      shift, mean, rstd: the statistics of :func:`forward` (the normalized axes
        of size 1).
      dy: the cotangent of ``y``, of ``x``'s shape.
      centered, backend, num_axes: as in :func:`row_norm`.
      need_dscale, need_dbias: whether to compute ``dscale`` (the sum over rows
        of ``dy * xhat``) and ``dbias`` (of ``dy``).

    Returns:
      ``dx`` (``x``'s shape and dtype), ``dscale`` and ``dbias`` (of shape
      ``F`` in the statistics dtype, or None where not asked for).
    """
    cfg = _config(x, scale, None, epsilon=0.0, centered=centered, stats_dtype=rstd.dtype,
                  out_dtype=dy.dtype, backend=backend, num_axes=num_axes)
    return _backward_kernels(x, scale, shift, mean, rstd, dy, cfg, need_dscale, need_dbias)


def _backward_kernels(x: Array, scale: Array | None, shift: Array, mean: Array, rstd: Array,
                      dy: Array, cfg: _Config, need_dscale: bool,
                      need_dbias: bool) -> tuple[Array, Array | None, Array | None]:
    n = cfg.num_axes
    need = (need_dscale and scale is not None, need_dbias)
    call = sharded.Call(
        "the Pallas row kernel", _local_backward, _xla_backward,
        (("cfg", cfg), ("has_scale", scale is not None), ("need", need)), n,
        ("rows",) + ("params",) * (scale is not None) + ("stats",) * 3 + ("rows",),
        ("rows",) + ("params",) * sum(need))
    operands = [x] + ([scale] if scale is not None else [])
    operands += [_drop_dims(v, n) for v in (shift, mean, rstd)] + [dy]
    dx, *sums = sharded.per_shard(call, *operands)
    ds, db = _unpack(sums, need)
    return dx, ds, db


def _local_backward(x, *ops, cfg, has_scale, need, row_axes, feature_axes):
    """One device's block of the backward: ``dx`` for its rows and the parameter gradients
    summed over every device's rows (one collective over ``row_axes``)."""
    scale, shift, mean, rstd, dy = (ops if has_scale else (None, *ops))
    n = cfg.num_axes
    ds: Array | None
    db: Array | None
    if feature_axes:
        dx, ds, db = xla.backward(x.astype(cfg.stats_dtype), scale, _keep_dims(shift, n),
                                  _keep_dims(mean, n), _keep_dims(rstd, n), dy,
                                  centered=cfg.centered, num_axes=n, axis_name=feature_axes)
        dx = dx.astype(x.dtype)
    else:
        width = math.prod(x.shape[x.ndim - n:])
        fshape = x.shape[x.ndim - n:]
        flat = [v.reshape(-1) for v in (shift, mean, rstd)]
        dx2, ds, db = _kernel_backward(
            x.reshape(-1, width), None if scale is None else scale.reshape(width),
            flat[0], flat[1], flat[2], dy.reshape(-1, width), cfg, need[0], need[1])
        dx = dx2.reshape(x.shape)
        ds = None if ds is None else ds.reshape(fshape)
        db = None if db is None else db.reshape(fshape)
    sums = [v for v, k in zip((ds, db), need) if k]
    if row_axes and sums:
        sums = list(jax.lax.psum(tuple(sums), row_axes))
    return (dx, *sums)


def _xla_backward(x, *ops, cfg, has_scale, need):
    """The backward in plain XLA (what a mapped call under ``vmap`` computes)."""
    scale, shift, mean, rstd, dy = (ops if has_scale else (None, *ops))
    n = cfg.num_axes
    dx, ds, db = xla.backward(x.astype(cfg.stats_dtype), scale, _keep_dims(shift, n),
                              _keep_dims(mean, n), _keep_dims(rstd, n), dy,
                              centered=cfg.centered, num_axes=n)
    return (dx.astype(x.dtype), *(v for v, k in zip((ds, db), need) if k))


def _kernel_backward(x: Array, scale: Array | None, shift: Array, mean: Array, rstd: Array,
                     dy: Array, cfg: _Config, need_dscale: bool,
                     need_dbias: bool) -> tuple[Array, Array | None, Array | None]:
    """The backward ``pallas_call`` on 2-D ``x``, ``(rows,)`` statistics: ``(dx, ds, db)``."""
    rows, width = x.shape
    stats_dtype = cfg.stats_dtype
    params = [] if scale is None else [scale]
    flags = dict(centered=cfg.centered, has_scale=scale is not None, need_dscale=need_dscale,
                 need_dbias=need_dbias, stats_dtype=stats_dtype)
    n_partials = int(need_dscale) + int(need_dbias)
    dx_shape = jax.ShapeDtypeStruct((rows, width), x.dtype)
    if cfg.style == "triton":
        block_r, block_h, num_warps = triton_blocks(rows, width)
        programs, per_program = triton_backward_grid(rows, width)
        partial_shape = jax.ShapeDtypeStruct((programs, width), stats_dtype)
        out = pl.pallas_call(
            functools.partial(_triton_backward_kernel, rows=rows, width=width, block_r=block_r,
                              block_h=block_h, blocks_per_program=per_program, **flags),
            grid=(programs,),
            out_shape=[dx_shape] + [partial_shape] * n_partials,
            compiler_params=pltriton.CompilerParams(num_warps=num_warps, num_stages=2),
            interpret=cfg.interpret, name="lnjax_row_norm_bwd")(
                x, *params, shift, mean, rstd, dy)
    else:
        block_r = tpu_block_rows(rows, width)
        programs = pl.cdiv(rows, block_r)
        row_block = pl.BlockSpec((block_r, width), lambda i: (i, 0))
        stat_block = pl.BlockSpec((block_r, 1), lambda i: (i, 0))
        param_block = pl.BlockSpec((1, width), lambda i: (0, 0))
        partial_block = pl.BlockSpec((None, 1, width), lambda i: (i, 0, 0))
        partial_shape = jax.ShapeDtypeStruct((programs, 1, width), stats_dtype)
        out = pl.pallas_call(
            functools.partial(_mosaic_backward_kernel, rows=rows, width=width, block_r=block_r,
                              **flags),
            grid=(programs,),
            in_specs=[row_block] + [param_block] * len(params) + [stat_block] * 3 + [row_block],
            out_specs=[row_block] + [partial_block] * n_partials,
            out_shape=[dx_shape] + [partial_shape] * n_partials,
            compiler_params=_mosaic_params(),
            interpret=cfg.interpret, name="lnjax_row_norm_bwd")(
                x, *(p.reshape(1, width) for p in params),
                *(v[:, None] for v in (shift, mean, rstd)), dy)
    dx, partials = out[0], [p.reshape(programs, width) for p in out[1:]]
    dscale = jnp.sum(partials.pop(0), axis=0) if need_dscale else None
    dbias = jnp.sum(partials.pop(0), axis=0) if need_dbias else None
    return dx, dscale, dbias


# --------------------------------------------------------------------------- derivatives


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def _row_norm(x, scale, bias, cfg):
    return _forward(x, scale, bias, cfg, False)


@_row_norm.defjvp
def _row_norm_jvp(cfg, primals, tangents):
    x, scale, bias = primals
    tx, tscale, tbias = tangents
    y, (shift, mean, rstd) = _forward_saving_stats(x, scale, bias, cfg)
    args = [x] + ([scale] if scale is not None else []) + [shift, mean, rstd, tx]
    args += [t for t in (tscale, tbias) if t is not None]
    ty = row_norm_tangent_p.bind(*args, **_tangent_params(cfg, scale is not None,
                                                          bias is not None))
    return y, ty


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def _forward_saving_stats(x, scale, bias, cfg):
    return _forward(x, scale, bias, cfg, True)


@_forward_saving_stats.defjvp
def _forward_saving_stats_jvp(cfg, primals, tangents):
    out = _forward_saving_stats(*primals, cfg)
    _, t_out = jax.jvp(lambda v, s, b: xla.forward(v.astype(cfg.stats_dtype), s, b, cfg.epsilon,
                                                   cfg.centered, cfg.out_dtype, cfg.num_axes),
                       primals, tangents)
    return out, t_out


def _tangent_params(cfg: _Config, has_scale: bool, has_bias: bool) -> dict:
    return dict(cfg=cfg, has_scale=has_scale, has_bias=has_bias)


def _split(args, has_scale, has_bias):
    """``(x, scale, shift, mean, rstd, tx, tscale, tbias)`` from the primitive's operands."""
    args = list(args)
    x = args.pop(0)
    scale = args.pop(0) if has_scale else None
    shift, mean, rstd, tx = args[:4]
    rest = args[4:]
    tscale = rest.pop(0) if has_scale else None
    tbias = rest.pop(0) if has_bias else None
    return x, scale, shift, mean, rstd, tx, tscale, tbias


def _tangent_reference(*args, cfg, has_scale, has_bias):
    """The output tangent by :func:`lnjax.kernels.xla.tangent` (linear in the last operands)."""
    x, scale, shift, mean, rstd, tx, tscale, tbias = _split(args, has_scale, has_bias)
    return xla.tangent(x.astype(cfg.stats_dtype), scale, shift, mean, rstd, tx, tscale, tbias,
                       centered=cfg.centered, out_dtype=cfg.out_dtype, num_axes=cfg.num_axes)


row_norm_tangent_p = Primitive("row_norm_tangent")
"""The tangent of :func:`row_norm`: XLA forward mode, transposed into the Pallas backward.

Operands ``x, [scale], shift, mean, rstd, tx, [tscale], [tbias]``; linear in
``tx, tscale, tbias``.
"""
row_norm_tangent_p.def_impl(_tangent_reference)
row_norm_tangent_p.def_abstract_eval(
    lambda x, *_, cfg, **__: jax.core.ShapedArray(x.shape, cfg.out_dtype))
mlir.register_lowering(row_norm_tangent_p,
                       mlir.lower_fun(_tangent_reference, multiple_results=False))


def _tangent_jvp(primals, tangents, **params):
    tangents = [ad.instantiate_zeros(t) for t in tangents]
    return jax.jvp(functools.partial(_tangent_reference, **params), primals, tangents)


def _tangent_transpose(ct, *args, cfg, has_scale, has_bias):
    x, scale, shift, mean, rstd, tx, tscale, tbias = _split(args, has_scale, has_bias)
    if any(ad.is_undefined_primal(v) for v in (x, scale, shift, mean, rstd)):
        raise NotImplementedError("row_norm_tangent is linear only in (tx, tscale, tbias)")
    out = [None] * len(args)
    if ct is None or type(ct) is ad.Zero:
        return out
    need = tuple(ad.is_undefined_primal(t) for t in (tx, tscale, tbias))
    cts = _backward(x, scale, shift, mean, rstd, ct, cfg, need)
    ins = [tx] + [t for t in (tscale, tbias) if t is not None]
    grads = [cts[0]] + [g for g, t in zip(cts[1:], (tscale, tbias)) if t is not None]
    first = len(args) - len(ins)
    for k, (g, t) in enumerate(zip(grads, ins)):
        if ad.is_undefined_primal(t):
            out[first + k] = g.astype(t.aval.dtype)
    return out


def _tangent_batch(args, dims, **params):
    in_axes = list(dims)  # None where an operand is not batched
    fn = functools.partial(_tangent_reference, **params)
    return jax.vmap(fn, in_axes=in_axes)(*args), 0


ad.primitive_jvps[row_norm_tangent_p] = _tangent_jvp
ad.primitive_transposes[row_norm_tangent_p] = _tangent_transpose
batching.primitive_batchers[row_norm_tangent_p] = _tangent_batch


@functools.partial(jax.custom_jvp, nondiff_argnums=(6, 7))
def _backward(x, scale, shift, mean, rstd, dy, cfg, need):
    """``(dx, dscale, dbias)`` by the Pallas backward kernels; differentiable through XLA."""
    _, need_dscale, need_dbias = need
    dx, ds, db = _backward_kernels(x, scale, shift, mean, rstd, dy, cfg,
                                   need_dscale and scale is not None, need_dbias)
    return dx, ds, db


@_backward.defjvp
def _backward_jvp(cfg, need, primals, tangents):
    out = _backward(*primals, cfg, need)
    _, t_out = jax.jvp(functools.partial(_backward_reference, cfg=cfg, need=need), primals,
                       tangents)
    return out, t_out


def _backward_reference(x, scale, shift, mean, rstd, dy, *, cfg, need):
    """The transpose of :func:`lnjax.kernels.xla.tangent`: the XLA twin of :func:`_backward`."""
    fshape = x.shape[x.ndim - cfg.num_axes:]
    zeros: tuple[Array | None, ...] = (
        jnp.zeros_like(x), jnp.zeros(fshape, cfg.stats_dtype), jnp.zeros(fshape, cfg.stats_dtype))
    has = (True, scale is not None and need[1], need[2])
    zeros = tuple(z if h else None for z, h in zip(zeros, has))
    _, vjp = jax.vjp(lambda tx, ts, tb: xla.tangent(
        x.astype(cfg.stats_dtype), scale, shift, mean, rstd, tx, ts, tb,
        centered=cfg.centered, out_dtype=dy.dtype, num_axes=cfg.num_axes), *zeros)
    return vjp(dy)
