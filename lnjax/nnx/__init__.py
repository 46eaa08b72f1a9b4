"""Flax NNX modules over :mod:`lnjax.normalization`.

Each normalization module subclasses the ``flax.nnx`` module of the same name:
the same constructor (``num_features``, keyword options, ``rngs``), the same
``Param`` attributes (``scale``, ``bias``) and ``BatchStat`` attributes
(``mean``, ``var``), so a model swaps one import and its state still loads.
One default differs: ``use_fast_variance=False`` (exact statistics).

The modules live by concern in :mod:`lnjax.nnx.normalization` (the
normalization layers), :mod:`lnjax.nnx.weight_norm` (``WeightNormLinear``)
and :mod:`lnjax.nnx.recurrent` (the LN-RNN cells and sequence layers); each is
importable from here. Where an attribute is also a Linen module's, it means
the same as in :mod:`lnjax.linen`.
"""

from lnjax.nnx.normalization import (
    BatchNorm,
    BatchReNorm,
    GroupNorm,
    InstanceNorm,
    LayerNorm,
    RMSNorm,
)
from lnjax.nnx.recurrent import (
    LNGRU,
    LNLSTM,
    LNGRUCell,
    LNLSTMCell,
    LNSimpleCell,
    LNSimpleRNN,
)
from lnjax.nnx.weight_norm import WeightNormLinear

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
    "WeightNormLinear",
]
