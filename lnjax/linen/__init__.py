"""Flax Linen modules over :mod:`lnjax.normalization`.

Each normalization module subclasses the ``flax.linen`` module of the same
name: the same constructor arguments and defaults, the same parameter names
(``scale``, ``bias``) and the same ``batch_stats`` collection (``mean``,
``var``), so swapping ``flax.linen.LayerNorm`` for ``lnjax.linen.LayerNorm``
changes one import and old checkpoints still load. One default differs:
``use_fast_variance=False``, because lnjax's statistics are exact by default
(``True`` still selects flax's ``E[x^2] - E[x]^2``).

The modules live by concern in :mod:`lnjax.linen.normalization` (the
normalization layers), :mod:`lnjax.linen.weight_norm` (``WeightNormDense``)
and :mod:`lnjax.linen.recurrent` (the LN-RNN cells and sequence layers); each
is importable from here.
"""

from lnjax.linen.normalization import (
    BatchNorm,
    BatchReNorm,
    GroupNorm,
    InstanceNorm,
    LayerNorm,
    RMSNorm,
)
from lnjax.linen.recurrent import (
    LNGRU,
    LNLSTM,
    LNGRUCell,
    LNLSTMCell,
    LNSimpleCell,
    LNSimpleRNN,
)
from lnjax.linen.weight_norm import WeightNormDense

__all__ = [
    "BatchNorm",
    "BatchReNorm",
    "GroupNorm",
    "InstanceNorm",
    "LNGRU",
    "LNGRUCell",
    "LNLSTM",
    "LNLSTMCell",
    "LNSimpleCell",
    "LNSimpleRNN",
    "LayerNorm",
    "RMSNorm",
    "WeightNormDense",
]
