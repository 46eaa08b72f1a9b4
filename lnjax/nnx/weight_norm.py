"""NNX weight normalization: a linear layer whose kernel is :func:`~lnjax.weight_norm`'s."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import dtypes

from lnjax import _modules as docs
from lnjax import _sharding
from lnjax.normalization import weight_norm

__all__ = ["WeightNormLinear"]

_DEFAULT_KERNEL_INIT = nnx.initializers.lecun_normal()
_ZEROS = nnx.initializers.zeros_init()
_ONES = nnx.initializers.ones_init()
_WEIGHT_NORM_LINEAR = ("in_features", "out_features", "kernel", "scale", "bias", "dtype",
                       "precision", "epsilon")


@docs.attributes(docs.WEIGHT_NORM, names=_WEIGHT_NORM_LINEAR)
class WeightNormLinear(nnx.Module):
    """A linear layer with a weight-normalized kernel (Salimans & Kingma 2016).

    ``y = x @ (scale * v / ||v||) + bias`` with the kernel ``v`` of shape
    ``(in_features, out_features)`` normalized per output unit. Attributes
    ``kernel`` (v), ``scale`` (g) and ``bias`` are ``nnx.Param``. The
    constructor takes ``in_features``, ``out_features``, ``rngs`` and, as
    keywords, the options of :class:`lnjax.linen.WeightNormDense` but
    ``features``.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from lnjax import nnx as lnnx
      >>> lnnx.WeightNormLinear(4, 3, rngs=nnx.Rngs(0))(jnp.ones((2, 4))).shape
      (2, 3)
    """

    def __init__(self, in_features: int, out_features: int, *, use_bias: bool = True,
                 dtype: Any = None, param_dtype: Any = jnp.float32, precision: Any = None,
                 kernel_init: Any = _DEFAULT_KERNEL_INIT, bias_init: Any = _ZEROS,
                 scale_init: Any = _ONES, epsilon: float = 1e-12,
                 rngs: nnx.Rngs):
        self.kernel = nnx.Param(kernel_init(rngs.params(), (in_features, out_features),
                                            param_dtype))
        self.scale = nnx.Param(scale_init(rngs.params(), (out_features,), param_dtype))
        self.bias = (nnx.Param(bias_init(rngs.params(), (out_features,), param_dtype))
                     if use_bias else nnx.data(None))
        self.in_features, self.out_features = in_features, out_features
        self.dtype, self.precision, self.epsilon = dtype, precision, epsilon

    def __call__(self, x):
        """Applies the weight-normalized affine map to the last axis of ``x``."""
        # Under sharded jit the kernel is gathered first (if FSDP shards it), as plain
        # code does, so the norms of its columns need no collective.
        x, kernel = _sharding.dense_operands(jnp.asarray(x), self.kernel[...])
        w = weight_norm(kernel, self.scale[...], axis=-1, epsilon=self.epsilon)
        bias = None if self.bias is None else self.bias[...]
        x, w, bias = dtypes.promote_dtype((x, w, bias), dtype=self.dtype)
        y = _sharding.matmul(x, w, precision=self.precision)
        return y if bias is None else y + _sharding.match_broadcast(bias, y)
