"""Argument checks shared by lnjax's functions and modules.

Every check raises at trace time (shapes and dtypes are static), names the
caller (``fn``) and the argument, gives the shapes involved and, where there is
one, says what to do instead: ``layer_norm: scale of shape (3,) does not match
the feature shape (4,) ...``. The names here are public to the package (this
module is private to it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, overload

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Axes = int | Sequence[int]


def as_inexact_array(x: Any, *, fn: str, name: str = "x", complex_ok: bool = False) -> Array:
    """``x`` as a jax array with a floating (or, if ``complex_ok``, complex) dtype.

    Raises ``TypeError`` for integer, boolean and (unless allowed) complex
    input, with the cast to use instead.
    """
    x = jnp.asarray(x)
    ok = jnp.issubdtype(x.dtype, jnp.floating) or (
        complex_ok and jnp.issubdtype(x.dtype, jnp.complexfloating))
    if not ok:
        also = " (complex dtypes are accepted too)" if complex_ok else ""
        raise TypeError(
            f"{fn}: {name} must have a floating-point dtype, got {x.dtype} "
            f"(shape {x.shape}); cast it first, e.g. {name}.astype(jnp.float32){also}."
        )
    return x


def canonicalize_axes(ndim: int, axis: Axes, *, fn: str, name: str = "axis",
                      shape: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """Sorted non-negative axes from an int or a sequence of ints.

    Raises ``ValueError`` for an axis out of range or named twice, and
    ``TypeError`` for anything that is not an integer.

    Example:
      >>> canonicalize_axes(3, (-1, 0), fn="f")
      (0, 2)
    """
    shape_txt = f"x of shape {shape}" if shape is not None else f"an array of rank {ndim}"
    if isinstance(axis, (int, np.integer)):
        axes: tuple[Any, ...] = (axis,)
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


def check_epsilon(epsilon: Any, *, fn: str) -> None:
    """A concrete ``epsilon`` must be >= 0 (a traced one is taken as it is)."""
    if isinstance(epsilon, (int, float, np.number)) and not epsilon >= 0:
        raise ValueError(f"{fn}: epsilon must be >= 0, got {epsilon}.")


def check_nonempty(shape: tuple[int, ...], axes: tuple[int, ...], *, fn: str, name: str) -> None:
    """The normalized ``axes`` of ``shape`` exist and hold at least one element."""
    if not axes:
        raise ValueError(f"{fn}: {name}=() selects no axis of x of shape {shape}; "
                         "there is nothing to normalize over.")
    empty = [a for a in axes if shape[a] == 0]
    if empty:
        raise ValueError(f"{fn}: the normalized axes {axes} of x of shape {shape} include "
                         f"axis {empty[0]} of size 0; statistics of an empty axis are undefined.")


def broadcast_mask(mask: Any, shape: tuple[int, ...], *, fn: str) -> Array | None:
    """``mask`` as a boolean array of ``shape`` (None stays None).

    A mask selects positions; it is not a weight. One of another dtype (0.5
    weights, 0/1 integers) is a ``TypeError`` naming the dtype rather than a
    silent cast to bool.
    """
    if mask is None:
        return None
    mask = jnp.asarray(mask)
    if mask.dtype != jnp.bool_:
        raise TypeError(f"{fn}: mask must be boolean (True for the positions the statistics "
                        f"count), got dtype {mask.dtype}; for 0/1 values pass mask != 0. "
                        f"Masks select positions: they are not weights.")
    try:
        full = np.broadcast_shapes(mask.shape, shape)
    except ValueError:
        full = None
    if full != tuple(shape):
        raise ValueError(f"{fn}: mask of shape {mask.shape} does not broadcast to x of "
                         f"shape {tuple(shape)}.")
    return jnp.broadcast_to(mask.astype(bool), shape)


@overload
def feature_param(p: None, name: str, feature_shape: tuple[int, ...],
                  target_shape: tuple[int, ...], *, fn: str) -> None: ...
@overload
def feature_param(p: jax.typing.ArrayLike, name: str, feature_shape: tuple[int, ...],
                  target_shape: tuple[int, ...], *, fn: str) -> Array: ...
def feature_param(p: Any, name: str, feature_shape: tuple[int, ...],
                  target_shape: tuple[int, ...], *, fn: str) -> Array | None:
    """``scale``/``bias`` checked against ``feature_shape``, reshaped to ``target_shape``.

    ``p`` must equal the feature shape or broadcast to it; integer parameters
    are cast to float32. None stays None.
    """
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


def stats_dtype(dtype: Any) -> Any:
    """The dtype statistics are computed in: ``dtype`` promoted to at least float32."""
    return jnp.promote_types(dtype, jnp.float32)


def check_int(value: Any, *, fn: str, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{fn}: {name} must be an int, got {value!r}.")
    if value < minimum:
        raise ValueError(f"{fn}: {name} must be >= {minimum}, got {value}.")
    return int(value)
