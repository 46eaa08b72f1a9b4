"""Row kernels: layer norm and RMS norm over trailing axes, one contract, one per platform.

:mod:`lnjax.normalization` hands a normalization to a row kernel when
:func:`applies` says one computes it: the normalized axes are the trailing
axes of ``x`` (and the parameters' axes are the same), with no mask, no
cross-device axis, a concrete ``epsilon`` and the exact (shifted) variance.
:func:`row_norm` then computes the result from ``x`` as it is: no axis is
merged into another, so under sharded ``jit`` every axis keeps its sharding.
Everything else takes :func:`lnjax.normalization.normalized`, the analytic
path over any axes, which computes the same values.

The contract every implementation keeps (``row_norm(x, scale, bias, *,
epsilon, centered, stats_dtype, out_dtype, num_axes)``):

* ``x``: ``(..., *F)`` in the input's dtype, normalized over its last
  ``num_axes`` axes ``F``; ``scale``, ``bias``: of shape ``F``, or None.
* Returns ``x``'s shape in ``out_dtype``: ``((x - shift) - mean) * rstd *
  scale + bias`` (``centered``) or ``x * rstd * scale`` (RMS), with the shifted
  statistics of :func:`lnjax.normalization.moments` computed in
  ``stats_dtype`` (population variance, ``epsilon`` inside the square root).
* Differentiable in both modes: reverse mode (``grad``, ``vjp``) and forward
  mode (``jvp``, ``jacfwd``, ``hessian``).
* Under sharded ``jit`` (Auto and Explicit meshes) the values equal the
  unsharded ones and only statistics-sized arrays cross devices. The XLA
  kernels are plain JAX that the partitioner splits; the Pallas kernels run
  per shard (:mod:`lnjax.kernels.sharded`).

The implementations, chosen per platform when the program is lowered
(:func:`jax.lax.platform_dependent`, so one exported program carries the
right one for each platform):

====================  ===============================  ==================================
``implementation``    CPU                              GPU (cuda, rocm) and TPU
====================  ===============================  ==================================
``"xla"``             :mod:`~lnjax.kernels.xla_cpu`    :mod:`~lnjax.kernels.xla` (plain
                      (tuned for XLA:CPU)              XLA: no barriers, no matmuls)
``"pallas"``          :mod:`~lnjax.kernels.pallas`     :mod:`~lnjax.kernels.pallas`
                      in interpret mode                (Triton on GPU, Mosaic on TPU)
====================  ===============================  ==================================

``implementation=None`` takes :data:`DEFAULTS`, the platform's default:
``"xla"`` on every platform. A platform's default is ``"pallas"`` only where a
run on that hardware has shown the Pallas kernels correct and faster than
``"xla"``.

When ``implementation="pallas"`` is asked for and something else runs, one
``UserWarning`` per call site says what ran and why:

* on a CPU (JAX's default backend), the Pallas kernel runs in interpret mode,
  an emulation several times slower than ``"xla"``, meant for testing;
* where no row kernel applies (:func:`why_not`: statistics not over the
  trailing axes, a mask, ``axis_name``, the one-pass variance, an empty ``x``,
  a traced epsilon, and every batch, group and instance norm), the XLA path
  of :func:`lnjax.normalization.normalized` runs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax import lax

from lnjax.kernels import pallas, xla, xla_cpu

__all__ = ["DEFAULTS", "IMPLEMENTATIONS", "applies", "check_implementation", "kernel",
           "row_norm", "why_not"]

Array = jax.Array

IMPLEMENTATIONS = ("xla", "pallas")
"""The names ``implementation`` takes (besides ``None``, the platform's default)."""

DEFAULTS = {"cpu": "xla", "cuda": "xla", "rocm": "xla", "tpu": "xla"}
"""The implementation that ``implementation=None`` takes on each platform; others take
``"xla"``."""

_PALLAS_BACKENDS = {"cpu": "interpret", "cuda": "triton", "rocm": "triton", "tpu": "mosaic"}


def check_implementation(implementation: Any, *, fn: str) -> None:
    """``implementation`` is None or one of :data:`IMPLEMENTATIONS`, or a ``ValueError``."""
    if implementation is not None and implementation not in IMPLEMENTATIONS:
        raise ValueError(f"{fn}: implementation={implementation!r} must be None (the "
                         f"platform's default) or one of {list(IMPLEMENTATIONS)}.")


def kernel(platform: str, implementation: str | None = None) -> Callable[..., Array]:
    """The row kernel ``implementation`` means on ``platform`` (``"cpu"``, ``"cuda"``, ...).

    Example:
      >>> kernel("cpu") is xla_cpu.row_norm, kernel("tpu") is xla.row_norm
      (True, True)
    """
    name = DEFAULTS.get(platform, "xla") if implementation is None else implementation
    if name == "xla":
        return xla_cpu.row_norm if platform == "cpu" else xla.row_norm
    return _pallas(_PALLAS_BACKENDS.get(platform, "triton"))


@functools.cache
def _pallas(backend: str) -> Callable[..., Array]:
    return functools.partial(pallas.row_norm, backend=backend)


def applies(shape: tuple[int, ...], reduction_axes: tuple[int, ...],
            feature_axes: tuple[int, ...], *, epsilon: Any, masked: bool, axis_name: Any,
            fast_variance: bool) -> bool:
    """Whether a row kernel computes this normalization (the one predicate).

    Args:
      shape: the shape of ``x``.
      reduction_axes, feature_axes: canonical (sorted, non-negative) axes.
      epsilon: the epsilon given (a traced or array epsilon does not qualify).
      masked: whether a mask selects the positions counted.
      axis_name: the cross-device axis, if any.
      fast_variance: whether ``E[x^2] - E[x]^2`` was asked for.

    Example:
      >>> applies((2, 3), (1,), (1,), epsilon=1e-6, masked=False, axis_name=None,
      ...         fast_variance=False)
      True
    """
    return why_not(shape, reduction_axes, feature_axes, epsilon=epsilon, masked=masked,
                   axis_name=axis_name, fast_variance=fast_variance) is None


def why_not(shape: tuple[int, ...], reduction_axes: tuple[int, ...],
            feature_axes: tuple[int, ...], *, epsilon: Any, masked: bool, axis_name: Any,
            fast_variance: bool) -> str | None:
    """Why no row kernel computes this normalization, in a few words (``None``: one does).

    The arguments are :func:`applies`'s. These are the cases in which
    ``implementation="pallas"`` (or any row kernel) is not used and the XLA
    path of :func:`lnjax.normalization.normalized` runs instead.

    Example:
      >>> why_not((2, 3), (0,), (1,), epsilon=1e-6, masked=False, axis_name=None,
      ...         fast_variance=False)
      'the statistics are not over the trailing axes with the scale on them'
    """
    ndim = len(shape)
    trailing = tuple(range(ndim - len(reduction_axes), ndim))
    if not (tuple(reduction_axes) == tuple(feature_axes) == trailing and reduction_axes):
        return "the statistics are not over the trailing axes with the scale on them"
    if masked:
        return "a mask selects the positions counted"
    if axis_name is not None:
        return "the statistics are merged across devices (axis_name)"
    if fast_variance:
        return "the one-pass variance was asked for (use_fast_variance)"
    if int(np.prod(shape)) == 0:
        return "x is empty"
    if not isinstance(epsilon, (int, float, np.floating)) or isinstance(epsilon, bool):
        return "epsilon is an array or traced"
    return None


def row_norm(x: Array, scale: Array | None, bias: Array | None, *, epsilon: float,
             centered: bool, stats_dtype: Any, out_dtype: Any,
             implementation: str | None = None, num_axes: int = 1) -> Array:
    """Layer norm (``centered``) or RMS norm of ``x`` over its last ``num_axes`` axes.

    Args:
      x: ``(..., *F)`` in the input's dtype: any leading axes, then the
        ``num_axes`` normalized axes ``F``.
      scale, bias: arrays of shape ``F``, or None.
      epsilon: added to the variance inside the square root.
      centered: ``True`` for layer norm, ``False`` for RMS norm.
      stats_dtype: the dtype the statistics are computed in (float32 or wider).
      out_dtype: the result's dtype.
      implementation: ``None`` (the platform's default), ``"xla"`` or ``"pallas"``.
      num_axes: how many trailing axes are normalized (default 1).

    Returns:
      ``x``'s shape in ``out_dtype``.

    No axis is merged into another: under sharded ``jit`` the leading axes
    keep whatever sharding they have (batch, sequence), and the normalized
    axes may be sharded too (see :mod:`lnjax.kernels`).

    Example:
      >>> import jax.numpy as jnp
      >>> y = row_norm(jnp.array([[1.0, 2.0, 3.0]]), None, None, epsilon=0.0,
      ...              centered=True, stats_dtype=jnp.float32, out_dtype=jnp.float32)
      >>> [round(float(v), 4) for v in y[0]]
      [-1.2247, 0.0, 1.2247]
    """
    check_implementation(implementation, fn="row_norm")
    has = (scale is not None, bias is not None)
    operands = [a for a in (x, scale, bias) if a is not None]
    kwargs = {"epsilon": float(epsilon), "centered": bool(centered),
              "stats_dtype": stats_dtype, "out_dtype": out_dtype, "num_axes": int(num_axes)}
    branches = {p: _branch(kernel(p, implementation), has, **kwargs) for p in DEFAULTS}
    return lax.platform_dependent(*operands, **branches,
                                  default=_branch(kernel("other", implementation), has, **kwargs))


def _branch(fn: Callable[..., Array], has: tuple[bool, bool],
            **kwargs: Any) -> Callable[..., Array]:
    """``fn`` called on the operands present; one function object per kernel, so that
    :func:`jax.lax.platform_dependent` joins the platforms that share a kernel."""
    return _branch_cached(fn, has, tuple(sorted(kwargs.items(), key=lambda kv: kv[0])))


@functools.cache
def _branch_cached(fn, has, items):
    kwargs = dict(items)

    def run(x, *params):
        it = iter(params)
        scale = next(it) if has[0] else None
        bias = next(it) if has[1] else None
        return fn(x, scale, bias, **kwargs)

    return run
