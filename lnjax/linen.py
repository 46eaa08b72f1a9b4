"""Flax Linen modules over :mod:`lnjax.normalization`.

Each normalization module subclasses the ``flax.linen`` module of the same
name: the same constructor arguments and defaults, the same parameter names
(``scale``, ``bias``) and the same ``batch_stats`` collection (``mean``,
``var``), so swapping ``flax.linen.LayerNorm`` for ``lnjax.linen.LayerNorm``
changes one import and old checkpoints still load. One default differs:
``use_fast_variance=False``, because lnjax's statistics are exact by default
(``True`` still selects flax's ``E[x^2] - E[x]^2``).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen import dtypes
from jax.nn import initializers

from lnjax import normalization as N

__all__ = [
    "BatchNorm",
    "GroupNorm",
    "InstanceNorm",
    "LayerNorm",
    "RMSNorm",
    "WeightNormDense",
]


def _stats_dtype(mdl: nn.Module, x: jax.Array) -> Any:
    """The statistics dtype flax would use: at least f32 unless told otherwise."""
    dtype = jnp.result_type(x) if mdl.dtype is None else mdl.dtype
    if getattr(mdl, "force_float32_reductions", True):
        dtype = jnp.promote_types(dtype, jnp.float32)
    return dtype


def _scale_bias(mdl: nn.Module, shape: tuple[int, ...], *, use_scale: bool,
                use_bias: bool) -> tuple[Any, Any]:
    scale = mdl.param("scale", mdl.scale_init, shape, mdl.param_dtype) if use_scale else None
    bias = mdl.param("bias", mdl.bias_init, shape, mdl.param_dtype) if use_bias else None
    return scale, bias


def _feature_shape(fn: str, x: jax.Array, feature_axes: Any) -> tuple[int, ...]:
    x = N._as_float_array(x, fn=fn)
    axes = N.canonicalize_axes(x.ndim, feature_axes, fn=fn, name="feature_axes", shape=x.shape)
    return tuple(x.shape[a] for a in axes)


class LayerNorm(nn.LayerNorm):
    """Layer normalization (Ba, Kiros & Hinton 2016), a drop-in for ``flax.linen.LayerNorm``.

    ``y = scale * (x - mean) / sqrt(var + epsilon) + bias`` with the
    statistics over ``reduction_axes`` and the parameters over
    ``feature_axes``. Same attributes as flax's; ``use_fast_variance``
    defaults to ``False`` (exact, mean-shifted statistics).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from lnjax import linen as lnn
      >>> x = jnp.ones((2, 3)) * 1e4 + jnp.arange(3.0)
      >>> params = lnn.LayerNorm().init(jax.random.key(0), x)
      >>> y = lnn.LayerNorm().apply(params, x)
      >>> [round(float(v), 3) for v in y[0]]
      [-1.225, 0.0, 1.225]
    """

    use_fast_variance: bool = False

    @nn.compact
    def __call__(self, x, *, mask: jax.Array | None = None):
        """Normalizes ``x``; ``mask`` selects the positions the statistics count."""
        scale, bias = _scale_bias(self, _feature_shape("LayerNorm", x, self.feature_axes),
                                  use_scale=self.use_scale, use_bias=self.use_bias)
        y, _ = N._normalize_axes(
            "LayerNorm", x, scale, bias, reduction_axes=self.reduction_axes,
            feature_axes=self.feature_axes, epsilon=self.epsilon, mask=mask,
            fast_variance=self.use_fast_variance, axis_name=self.axis_name,
            axis_index_groups=self.axis_index_groups,
            dtype=dtypes.canonicalize_dtype(x, scale, bias, dtype=self.dtype),
            stats_dtype=_stats_dtype(self, x), names=("reduction_axes", "feature_axes"))
        return y


class RMSNorm(nn.RMSNorm):
    """RMS normalization, a drop-in for ``flax.linen.RMSNorm``.

    ``y = scale * x / sqrt(mean(x**2) + epsilon)`` over ``reduction_axes``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from lnjax import linen as lnn
      >>> x = jnp.array([[3.0, 4.0]])
      >>> y = lnn.RMSNorm(epsilon=0.0).apply({"params": {"scale": jnp.ones(2)}}, x)
      >>> [round(float(v), 4) for v in y[0]]
      [0.8485, 1.1314]
    """

    use_fast_variance: bool = False

    @nn.compact
    def __call__(self, x, *, mask: jax.Array | None = None):
        """RMS-normalizes ``x``; ``mask`` selects the positions counted."""
        scale, _ = _scale_bias(self, _feature_shape("RMSNorm", x, self.feature_axes),
                               use_scale=self.use_scale, use_bias=False)
        y, _ = N._normalize_axes(
            "RMSNorm", x, scale, None, reduction_axes=self.reduction_axes,
            feature_axes=self.feature_axes, epsilon=self.epsilon, mask=mask, centered=False,
            axis_name=self.axis_name, axis_index_groups=self.axis_index_groups,
            dtype=dtypes.canonicalize_dtype(x, scale, dtype=self.dtype),
            stats_dtype=_stats_dtype(self, x), names=("reduction_axes", "feature_axes"))
        return y


class GroupNorm(nn.GroupNorm):
    """Group normalization, a drop-in for ``flax.linen.GroupNorm``.

    Set ``num_groups`` (default 32) or ``group_size`` (with
    ``num_groups=None``). Channels last; the statistics of each group are
    taken over ``reduction_axes`` (default: all but the batch axis).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from lnjax import linen as lnn
      >>> x = jnp.ones((2, 5, 4))
      >>> variables = lnn.GroupNorm(num_groups=2).init(jax.random.key(0), x)
      >>> variables["params"]["scale"].shape
      (4,)
    """

    use_fast_variance: bool = False

    @nn.compact
    def __call__(self, x, *, mask: jax.Array | None = None):
        """Group-normalizes channels-last ``x``."""
        x = N._as_float_array(x, fn="GroupNorm")
        channels = x.shape[-1]
        if (self.num_groups is None) == (self.group_size is None):
            raise ValueError(
                "GroupNorm: set exactly one of num_groups and group_size (to use group_size, "
                f"pass num_groups=None); got num_groups={self.num_groups}, "
                f"group_size={self.group_size}.")
        if self.group_size is not None:
            if self.group_size <= 0 or channels % self.group_size:
                raise ValueError(f"GroupNorm: group_size={self.group_size} does not divide the "
                                 f"{channels} channels of x of shape {x.shape}.")
            num_groups = channels // self.group_size
        else:
            num_groups = self.num_groups
        scale, bias = _scale_bias(self, (channels,), use_scale=self.use_scale,
                                  use_bias=self.use_bias)
        return N._group_norm(
            "GroupNorm", x, num_groups, scale, bias, reduction_axes=self.reduction_axes,
            epsilon=self.epsilon, mask=mask, fast_variance=self.use_fast_variance,
            axis_name=self.axis_name, axis_index_groups=self.axis_index_groups,
            dtype=dtypes.canonicalize_dtype(x, scale, bias, dtype=self.dtype),
            stats_dtype=_stats_dtype(self, x))


class InstanceNorm(nn.InstanceNorm):
    """Instance normalization, a drop-in for ``flax.linen.InstanceNorm``.

    Each example and feature (``feature_axes``, default the last) is
    normalized over the remaining non-batch axes.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from lnjax import linen as lnn
      >>> x = jnp.array([[[1.0], [3.0]]])
      >>> y = lnn.InstanceNorm(epsilon=0.0).apply(
      ...     {"params": {"scale": jnp.ones(1), "bias": jnp.zeros(1)}}, x)
      >>> [float(v) for v in y.ravel()]
      [-1.0, 1.0]
    """

    use_fast_variance: bool = False

    @nn.compact
    def __call__(self, x, *, mask: jax.Array | None = None):
        """Instance-normalizes ``x``."""
        x = N._as_float_array(x, fn="InstanceNorm")
        feat = N.canonicalize_axes(x.ndim, self.feature_axes, fn="InstanceNorm",
                                   name="feature_axes", shape=x.shape)
        if 0 in feat:
            raise ValueError("InstanceNorm: feature_axes cannot include axis 0, the batch axis "
                             f"(feature_axes={self.feature_axes!r}, x of shape {x.shape}).")
        red = tuple(i for i in range(1, x.ndim) if i not in feat)
        scale, bias = _scale_bias(self, tuple(x.shape[a] for a in feat),
                                  use_scale=self.use_scale, use_bias=self.use_bias)
        y, _ = N._normalize_axes(
            "InstanceNorm", x, scale, bias, reduction_axes=red, feature_axes=feat,
            epsilon=self.epsilon, mask=mask, fast_variance=self.use_fast_variance,
            axis_name=self.axis_name, axis_index_groups=self.axis_index_groups,
            dtype=dtypes.canonicalize_dtype(x, scale, bias, dtype=self.dtype),
            stats_dtype=_stats_dtype(self, x), names=("feature_axes", "feature_axes"))
        return y


class BatchNorm(nn.BatchNorm):
    """Batch normalization, a drop-in for ``flax.linen.BatchNorm``.

    Statistics over every axis but ``axis`` (the features); running averages
    in the ``batch_stats`` collection (``mean``, ``var``), updated with
    ``momentum`` when the collection is mutable. With ``axis_name`` the
    statistics are merged across devices, each device weighted by the number
    of positions it counts (so masked, uneven batches are exact).

    Beyond flax: ``unbiased=True`` normalizes with the unbiased variance
    ``n/(n-1) * var`` (the paper's choice at batch size 4).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from lnjax import linen as lnn
      >>> x = jnp.array([[1.0], [3.0]])
      >>> bn = lnn.BatchNorm(use_running_average=False, momentum=0.5, epsilon=0.0)
      >>> variables = bn.init(jax.random.key(0), x)
      >>> y, updates = bn.apply(variables, x, mutable=["batch_stats"])
      >>> [float(v) for v in y.ravel()], float(updates["batch_stats"]["mean"][0])
      ([-1.0, 1.0], 1.0)
    """

    use_fast_variance: bool = False
    unbiased: bool = False

    @nn.compact
    def __call__(self, x, use_running_average: bool | None = None, *,
                 mask: jax.Array | None = None):
        """Normalizes ``x`` with batch statistics or, if asked, the running averages."""
        use_running_average = nn.merge_param(
            "use_running_average", self.use_running_average, use_running_average)
        x = N._as_float_array(x, fn="BatchNorm")
        feat = N.canonicalize_axes(x.ndim, self.axis, fn="BatchNorm", shape=x.shape)
        red = tuple(i for i in range(x.ndim) if i not in feat)
        feature_shape = tuple(x.shape[a] for a in feat)
        stat_dtype = jnp.float32 if self.force_float32_reductions else self.param_dtype
        ra_mean = self.variable("batch_stats", "mean",
                                lambda s: jnp.zeros(s, stat_dtype), feature_shape)
        ra_var = self.variable("batch_stats", "var",
                               lambda s: jnp.ones(s, stat_dtype), feature_shape)
        scale, bias = _scale_bias(self, feature_shape, use_scale=self.use_scale,
                                  use_bias=self.use_bias)
        y, (mean, var) = N._batch_norm(
            "BatchNorm", x, scale, bias, reduction_axes=red, feature_axes=feat,
            epsilon=self.epsilon, mask=mask,
            axis_name=None if self.is_initializing() else self.axis_name,
            axis_index_groups=self.axis_index_groups, unbiased=self.unbiased,
            fast_variance=self.use_fast_variance,
            stats=(ra_mean.value, ra_var.value) if use_running_average else None,
            dtype=dtypes.canonicalize_dtype(x, scale, bias, dtype=self.dtype),
            stats_dtype=_stats_dtype(self, x))
        if not use_running_average and not self.is_initializing():
            ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
            ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        return y


class WeightNormDense(nn.Module):
    """A dense layer with a weight-normalized kernel (Salimans & Kingma 2016).

    ``y = x @ (scale * v / ||v||) + bias``: the kernel ``v`` of shape
    ``(in, features)`` is normalized per output unit (column), so each unit's
    summed input is invariant to re-scaling its weight vector (Table 1 of Ba et
    al.). Parameters: ``kernel`` (v), ``scale`` (g), ``bias``.

    Attributes:
      features: number of output units.
      use_bias: add a bias.
      dtype: computation dtype (default: inferred from input and params).
      param_dtype: parameter dtype.
      precision: matmul precision.
      kernel_init, bias_init, scale_init: initializers.
      epsilon: added to the squared column norm.

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
        w = N.weight_norm(kernel, scale, axis=-1, epsilon=self.epsilon)
        x, w, bias = dtypes.promote_dtype(x, w, bias, dtype=self.dtype)
        y = jnp.matmul(x, w, precision=self.precision)
        return y if bias is None else y + bias
