"""Linen weight normalization: a dense layer whose kernel is :func:`~lnjax.weight_norm`'s."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from flax.linen import dtypes
from jax.nn import initializers

from lnjax import _modules as docs
from lnjax import _sharding
from lnjax.normalization import weight_norm

__all__ = ["WeightNormDense"]


@docs.attributes(docs.WEIGHT_NORM)
class WeightNormDense(nn.Module):
    """A dense layer with a weight-normalized kernel (Salimans & Kingma 2016).

    ``y = x @ (scale * v / ||v||) + bias``: the kernel ``v`` of shape
    ``(in, features)`` is normalized per output unit (column), so each unit's
    summed input is invariant to re-scaling its weight vector (Table 1 of Ba et
    al.). Parameters: ``kernel`` (v), ``scale`` (g), ``bias``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from lnjax import linen as lnn
      >>> layer = lnn.WeightNormDense(3)
      >>> variables = layer.init(jax.random.key(0), jnp.ones((2, 4)))
      >>> sorted(variables["params"])
      ['bias', 'kernel', 'scale']
    """

    features: int
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: Any = None
    kernel_init: Any = nn.initializers.lecun_normal()
    bias_init: Any = initializers.zeros
    scale_init: Any = initializers.ones
    epsilon: float = 1e-12

    @nn.compact
    def __call__(self, x):
        """Applies the weight-normalized affine map to the last axis of ``x``."""
        kernel = self.param("kernel", self.kernel_init, (jnp.shape(x)[-1], self.features),
                            self.param_dtype)
        scale = self.param("scale", self.scale_init, (self.features,), self.param_dtype)
        bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
                if self.use_bias else None)
        # Under sharded jit the kernel is gathered first (if FSDP shards it), as plain
        # code does, so the norms of its columns need no collective.
        x, kernel = _sharding.dense_operands(jnp.asarray(x), kernel)
        w = weight_norm(kernel, scale, axis=-1, epsilon=self.epsilon)
        x, w, bias = dtypes.promote_dtype(x, w, bias, dtype=self.dtype)
        y = _sharding.matmul(x, w, precision=self.precision)
        return y if bias is None else y + _sharding.match_broadcast(bias, y)
