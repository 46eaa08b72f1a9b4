"""Small numerical helpers shared by the statistics and the row kernels.

The names here are public to the package (this module is private to it).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array


def abs2(v: Array) -> Array:
    """``|v|**2``: ``v * v`` for real ``v``, real for complex ``v``."""
    if jnp.iscomplexobj(v):
        return v.real * v.real + v.imag * v.imag
    return v * v


def round_off(v: Array, bits: int = 4) -> Array:
    """``v`` rounded to ``bits`` fewer mantissa bits than its dtype holds.

    Used on a shift (a rough mean): every use then sees one value, because
    the compiler cannot contract ``x - sum * (1/n)`` into an FMA in some
    fusions and not in others, which would centre different sums on
    different shifts.
    """
    if jnp.iscomplexobj(v):
        return lax.complex(round_off(v.real, bits), round_off(v.imag, bits))
    info = jnp.finfo(v.dtype)
    return lax.reduce_precision(v, exponent_bits=info.nexp, mantissa_bits=info.nmant - bits)
