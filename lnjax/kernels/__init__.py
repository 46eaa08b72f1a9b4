"""Row kernels: layer norm and RMS norm of a ``(rows, H)`` array, one contract.

:mod:`lnjax.normalization` hands a normalization to a row kernel when
:func:`applies` says one computes it: the normalized axes are the trailing
axes of ``x`` (and the parameters' axes are the same), with no mask, no
cross-device axis, a concrete ``epsilon`` and the exact (shifted) variance.
``x`` is then viewed as ``(rows, H)`` and :func:`row_norm` computes the
result. Everything else takes the generic path of :mod:`lnjax.normalization`,
which computes the same values.

The contract every implementation keeps (``row_norm``):

* ``x``: ``(rows, H)``, already in the statistics dtype (float32 or wider);
  ``scale``, ``bias``: ``(H,)`` in the same dtype, or None.
* Returns ``(rows, H)`` in ``out_dtype``: ``((x - shift) - mean) * rstd *
  scale + bias`` (``centered``) or ``x * rstd * scale`` (RMS), with the shifted
  statistics of :func:`lnjax.normalization.moments` (population variance,
  ``epsilon`` inside the square root).
* Differentiable in both modes: reverse mode (``grad``, ``vjp``) and forward
  mode (``jvp``, ``jacfwd``, ``hessian``), e.g. a ``custom_jvp`` whose linear
  tangent transposes into the backward.

Implementations, one module each (``IMPLEMENTATIONS``):

* ``xla_cpu`` (:mod:`lnjax.kernels.xla_cpu`): ``jax.numpy`` tuned for
  XLA:CPU; today it serves every platform.

A platform-specific implementation (plain XLA for GPU/TPU, Pallas kernels) is
a module beside ``xla_cpu`` with the same ``row_norm`` signature, registered
in ``IMPLEMENTATIONS`` and chosen in :func:`row_norm`; nothing else in lnjax
changes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from lnjax.kernels import xla_cpu

Array = jax.Array

IMPLEMENTATIONS: dict[str, Callable[..., Array]] = {"xla_cpu": xla_cpu.row_norm}
"""The row-kernel implementations by name; each has :func:`row_norm`'s signature."""

DEFAULT = "xla_cpu"
"""The implementation :func:`row_norm` uses."""


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
    ndim = len(shape)
    trailing = tuple(range(ndim - len(reduction_axes), ndim))
    return (tuple(reduction_axes) == tuple(feature_axes) == trailing and bool(reduction_axes)
            and not masked and axis_name is None and not fast_variance
            and int(np.prod(shape)) > 0
            and isinstance(epsilon, (int, float, np.floating)) and not isinstance(epsilon, bool))


def row_norm(x: Array, scale: Array | None, bias: Array | None, *, epsilon: float,
             centered: bool, out_dtype: Any) -> Array:
    """Layer norm (``centered``) or RMS norm of ``(rows, H)`` ``x`` over its last axis.

    Args:
      x: ``(rows, H)`` in the statistics dtype.
      scale, bias: ``(H,)`` arrays in that dtype, or None.
      epsilon: added to the variance inside the square root.
      centered: ``True`` for layer norm, ``False`` for RMS norm.
      out_dtype: the result's dtype.

    Returns:
      ``(rows, H)`` in ``out_dtype``.

    Example:
      >>> import jax.numpy as jnp
      >>> y = row_norm(jnp.array([[1.0, 2.0, 3.0]]), None, None, epsilon=0.0,
      ...              centered=True, out_dtype=jnp.float32)
      >>> [round(float(v), 4) for v in y[0]]
      [-1.2247, 0.0, 1.2247]
    """
    return IMPLEMENTATIONS[DEFAULT](x, scale, bias, epsilon=epsilon, centered=centered,
                                    out_dtype=out_dtype)
