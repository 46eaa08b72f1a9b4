"""Linen normalization layers: drop-ins for flax's, and batch renormalization.

``LayerNorm``, ``RMSNorm``, ``GroupNorm``, ``InstanceNorm`` and ``BatchNorm``
subclass the ``flax.linen`` modules of the same names (see :mod:`lnjax.linen`);
``BatchReNorm`` is a ``BatchNorm`` corrected towards its running statistics.
Each builds a :class:`~lnjax.normalization.NormSpec` and applies it; what is
theirs is creating the parameters and ``batch_stats`` and flax's dtype policy.
An attribute both front ends have is described once, for both (and a
subclass's inherited attribute as its base class describes it).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen import dtypes

from lnjax import _checks as checks
from lnjax import _modules as docs
from lnjax._modules import stats_dtype
from lnjax.normalization import NormSpec, Renorm, check_renorm_limits

__all__ = ["BatchNorm", "BatchReNorm", "GroupNorm", "InstanceNorm", "LayerNorm", "RMSNorm"]


def _scale_bias(mdl: nn.Module, shape: tuple[int, ...], *, use_scale: bool,
                use_bias: bool) -> tuple[Any, Any]:
    scale = mdl.param("scale", mdl.scale_init, shape, mdl.param_dtype) if use_scale else None
    bias = mdl.param("bias", mdl.bias_init, shape, mdl.param_dtype) if use_bias else None
    return scale, bias


@docs.attributes(docs.LAYER_NORM, docs.LINEN_NORMALIZATION)
class LayerNorm(nn.LayerNorm):
    """Layer normalization (Ba, Kiros & Hinton 2016), a drop-in for ``flax.linen.LayerNorm``.

    ``y = scale * (x - mean) / sqrt(var + epsilon) + bias`` with the
    statistics over ``reduction_axes`` and the parameters over
    ``feature_axes``. Same attributes as flax's; ``use_fast_variance``
    defaults to ``False`` (exact, mean-shifted statistics), and
    ``implementation`` is lnjax's.

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
    implementation: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        """Normalizes ``x``; ``mask`` selects the positions the statistics count."""
        spec = NormSpec.layer(
            "LayerNorm", x, reduction_axes=self.reduction_axes, feature_axes=self.feature_axes,
            epsilon=self.epsilon, fast_variance=self.use_fast_variance,
            axis_name=self.axis_name, axis_index_groups=self.axis_index_groups,
            stats_dtype=stats_dtype(x, self.dtype, force_float32=self.force_float32_reductions),
            implementation=self.implementation, arg_names=("reduction_axes", "feature_axes"))
        scale, bias = _scale_bias(self, spec.feature_shape, use_scale=self.use_scale,
                                  use_bias=self.use_bias)
        dtype = dtypes.canonicalize_dtype(x, scale, bias, dtype=self.dtype)
        return spec.apply(x, scale, bias, mask=mask, dtype=dtype)[0]


@docs.attributes(docs.RMS_NORM, docs.LINEN_NORMALIZATION)
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
    implementation: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        """RMS-normalizes ``x``; ``mask`` selects the positions counted."""
        spec = NormSpec.layer(
            "RMSNorm", x, reduction_axes=self.reduction_axes, feature_axes=self.feature_axes,
            epsilon=self.epsilon, centered=False, axis_name=self.axis_name,
            axis_index_groups=self.axis_index_groups,
            stats_dtype=stats_dtype(x, self.dtype, force_float32=self.force_float32_reductions),
            implementation=self.implementation, arg_names=("reduction_axes", "feature_axes"))
        scale, _ = _scale_bias(self, spec.feature_shape, use_scale=self.use_scale,
                               use_bias=False)
        dtype = dtypes.canonicalize_dtype(x, scale, dtype=self.dtype)
        return spec.apply(x, scale, mask=mask, dtype=dtype)[0]


@docs.attributes(docs.GROUP_NORM, docs.LINEN_NORMALIZATION)
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
    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        """Group-normalizes channels-last ``x``."""
        x = checks.as_inexact_array(x, fn="GroupNorm")
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
            num_groups: int | None = channels // self.group_size
        else:
            num_groups = self.num_groups
        spec = NormSpec.group(
            "GroupNorm", x, num_groups, reduction_axes=self.reduction_axes,
            epsilon=self.epsilon, fast_variance=self.use_fast_variance,
            axis_name=self.axis_name, axis_index_groups=self.axis_index_groups,
            stats_dtype=stats_dtype(x, self.dtype, force_float32=self.force_float32_reductions))
        scale, bias = _scale_bias(self, spec.feature_shape, use_scale=self.use_scale,
                                  use_bias=self.use_bias)
        dtype = dtypes.canonicalize_dtype(x, scale, bias, dtype=self.dtype)
        return spec.apply(x, scale, bias, mask=mask, dtype=dtype)[0]


@docs.attributes(docs.INSTANCE_NORM, docs.LINEN_NORMALIZATION)
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
    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        """Instance-normalizes ``x``."""
        spec = NormSpec.instance(
            "InstanceNorm", x, feature_axes=self.feature_axes, epsilon=self.epsilon,
            fast_variance=self.use_fast_variance, axis_name=self.axis_name,
            axis_index_groups=self.axis_index_groups,
            stats_dtype=stats_dtype(x, self.dtype, force_float32=self.force_float32_reductions))
        scale, bias = _scale_bias(self, spec.feature_shape, use_scale=self.use_scale,
                                  use_bias=self.use_bias)
        dtype = dtypes.canonicalize_dtype(x, scale, bias, dtype=self.dtype)
        return spec.apply(x, scale, bias, mask=mask, dtype=dtype)[0]


@docs.attributes(docs.BATCH_NORM, docs.LINEN_NORMALIZATION)
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
    def __call__(self, x: jax.Array, use_running_average: bool | None = None, *,
                 mask: jax.Array | None = None) -> jax.Array:
        """Normalizes ``x`` with batch statistics or, if asked, the running averages."""
        return _batch_norm(self, x, use_running_average, mask)


def _batch_norm(mdl: nn.Module, x: Any, use_running_average: bool | None, mask: Any,
                limits: tuple[Any, Any] | None = None) -> jax.Array:
    """BatchNorm's (``limits is None``) or BatchReNorm's (``(r_max, d_max)``) call."""
    use_running_average = nn.merge_param(
        "use_running_average", mdl.use_running_average, use_running_average)
    name = type(mdl).__name__
    spec = NormSpec.batch(
        name, x, feature_axes=mdl.axis, epsilon=mdl.epsilon,
        running=bool(use_running_average), unbiased=mdl.unbiased,
        fast_variance=mdl.use_fast_variance,
        axis_name=None if mdl.is_initializing() else mdl.axis_name,
        axis_index_groups=mdl.axis_index_groups,
        stats_dtype=stats_dtype(x, mdl.dtype, force_float32=mdl.force_float32_reductions))
    # The running averages' dtype is flax's: float32, or the parameters' without
    # force_float32_reductions.
    stat_dtype = jnp.float32 if mdl.force_float32_reductions else mdl.param_dtype
    ra_mean = mdl.variable("batch_stats", "mean",
                           lambda s: jnp.zeros(s, stat_dtype), spec.feature_shape)
    ra_var = mdl.variable("batch_stats", "var",
                          lambda s: jnp.ones(s, stat_dtype), spec.feature_shape)
    scale, bias = _scale_bias(mdl, spec.feature_shape, use_scale=mdl.use_scale,
                              use_bias=mdl.use_bias)
    dtype = dtypes.canonicalize_dtype(x, scale, bias, dtype=mdl.dtype)
    if use_running_average:
        y, _ = spec.apply(x, scale, bias, stats=(ra_mean.value, ra_var.value), dtype=dtype)
        return y
    renorm = None if limits is None else Renorm(ra_mean.value, ra_var.value, *limits)
    y, st = spec.apply(x, scale, bias, mask=mask, renorm=renorm, dtype=dtype)
    mean, var = spec.feature_stats(st)
    if not mdl.is_initializing():
        ra_mean.value = mdl.momentum * ra_mean.value + (1 - mdl.momentum) * mean
        ra_var.value = mdl.momentum * ra_var.value + (1 - mdl.momentum) * var
    return y


@docs.attributes(docs.BATCH_NORM, docs.LINEN_NORMALIZATION)
class BatchReNorm(BatchNorm):
    """Batch renormalization (Ioffe 2017): batch norm corrected towards its running statistics.

    In training, ``y = scale * ((x - mu_B) / sigma_B * r + d) + bias`` with
    ``r = clip(sigma_B / sigma, 1/r_max, r_max)`` and ``d = clip((mu_B - mu) /
    sigma, -d_max, d_max)`` from the running statistics (held constant in the
    gradient), so the output no longer depends on the batch alone; in
    inference, the running statistics, as batch norm. :class:`BatchNorm`'s
    attributes, parameters and ``batch_stats`` (``mean``, ``var``, updated the
    same way), plus ``r_max`` and ``d_max``. ``r_max=1, d_max=0`` is batch norm.

    The paper starts from batch norm and ramps the limits up: pass them at
    call time, e.g. ``layer(x, r_max=r, d_max=d)`` with ``r, d =
    lnjax.renorm_limits(state.step)`` (traced values are fine under ``jit``).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from lnjax import linen as lnn
      >>> x = jnp.array([[1.0], [3.0]])
      >>> layer = lnn.BatchReNorm(use_running_average=False, epsilon=0.0)
      >>> variables = layer.init(jax.random.key(0), x)
      >>> y, _ = layer.apply(variables, x, mutable=["batch_stats"])
      >>> [float(v) for v in y.ravel()]  # running mean 0, var 1: r = 1, d = 2, y = x
      [1.0, 3.0]

    Reference: Ioffe (2017), arXiv:1702.03275.
    """

    r_max: float = 3.0
    d_max: float = 5.0

    @nn.compact
    def __call__(self, x: jax.Array, use_running_average: bool | None = None, *,
                 mask: jax.Array | None = None, r_max: Any = None,
                 d_max: Any = None) -> jax.Array:
        """Renormalizes ``x`` (training) or normalizes it with the running averages.

        ``r_max``/``d_max`` given here override the attributes (for ramps).
        """
        r_max = self.r_max if r_max is None else r_max
        d_max = self.d_max if d_max is None else d_max
        check_renorm_limits(r_max, d_max, fn=type(self).__name__)
        return _batch_norm(self, x, use_running_average, mask, (r_max, d_max))
