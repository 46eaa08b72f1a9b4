"""lnjax: exact, fast layer normalization for JAX and Flax.

The functional API is re-exported here; the Flax modules live in
:mod:`lnjax.linen` and :mod:`lnjax.nnx`. :class:`MissingExtraError` is what
any lnjax function raises when a feature needs an optional extra that is not
installed.
"""

from lnjax._optional import MissingExtraError
from lnjax.normalization import (
    batch_norm,
    batch_renorm,
    group_norm,
    instance_norm,
    layer_norm,
    renorm_limits,
    rms_norm,
    weight_norm,
)

__version__ = "0.1.0"

__all__ = [
    "MissingExtraError",
    "batch_norm",
    "batch_renorm",
    "group_norm",
    "instance_norm",
    "layer_norm",
    "renorm_limits",
    "rms_norm",
    "weight_norm",
]
