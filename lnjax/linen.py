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

from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen import dtypes
from jax.nn import initializers

from lnjax import _checks as checks
from lnjax import _sharding
from lnjax import recurrent as R
from lnjax.normalization import NormSpec, Renorm, check_renorm_limits, weight_norm

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


class LayerNorm(nn.LayerNorm):
    """Layer normalization (Ba, Kiros & Hinton 2016), a drop-in for ``flax.linen.LayerNorm``.

    ``y = scale * (x - mean) / sqrt(var + epsilon) + bias`` with the
    statistics over ``reduction_axes`` and the parameters over
    ``feature_axes``. Same attributes as flax's; ``use_fast_variance``
    defaults to ``False`` (exact, mean-shifted statistics). Beyond flax:
    ``implementation`` (``None``, ``"xla"``, ``"pallas"``) picks the row kernel
    of :mod:`lnjax.kernels`; it changes no parameter.

    Attributes:
      epsilon: added to the variance inside the square root (default ``1e-6``).
      dtype: the dtype of the result (default ``None``: inferred from the input
        and the parameters).
      param_dtype: the dtype of the parameters (default ``jnp.float32``).
      use_bias: add the learned bias ``bias`` (default ``True``).
      use_scale: multiply by the learned gain ``scale`` (default ``True``).
      bias_init: the initializer of ``bias`` (default zeros).
      scale_init: the initializer of ``scale`` (default ones).
      reduction_axes: the axes the statistics are computed over (default ``-1``).
      feature_axes: the axes of the learned ``scale`` and ``bias`` (default ``-1``).
      axis_name: a mapped axis name (``shard_map``, ``pmap``) over which the
        statistics are merged across devices (default ``None``: each device's own).
      axis_index_groups: groups of device indices within ``axis_name``, each
        merged separately (default ``None``: all devices together).
      use_fast_variance: ``True`` computes flax's one-pass ``E[x^2] - E[x]^2``
        (fast, inexact far from zero) instead of lnjax's mean-shifted statistics
        (default ``False``; flax's default is ``True``).
      force_float32_reductions: compute the statistics in at least float32
        (default ``True``); ``False`` computes them in the input's dtype.
      implementation: the row kernel, ``None`` (the platform's default),
        ``"xla"`` or ``"pallas"`` (see :mod:`lnjax.kernels`); it changes no
        parameter (default ``None``).

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
            stats_dtype=_stats_dtype(self, x), implementation=self.implementation,
            arg_names=("reduction_axes", "feature_axes"))
        scale, bias = _scale_bias(self, spec.feature_shape, use_scale=self.use_scale,
                                  use_bias=self.use_bias)
        dtype = dtypes.canonicalize_dtype(x, scale, bias, dtype=self.dtype)
        return spec.apply(x, scale, bias, mask=mask, dtype=dtype)[0]


class RMSNorm(nn.RMSNorm):
    """RMS normalization, a drop-in for ``flax.linen.RMSNorm``.

    ``y = scale * x / sqrt(mean(x**2) + epsilon)`` over ``reduction_axes``.
    Beyond flax: ``implementation`` (``None``, ``"xla"``, ``"pallas"``) picks
    the row kernel of :mod:`lnjax.kernels`; it changes no parameter.

    Attributes:
      epsilon: added to the mean square inside the square root (default ``1e-6``).
      dtype: the dtype of the result (default ``None``: inferred from the input
        and the parameters).
      param_dtype: the dtype of the parameters (default ``jnp.float32``).
      use_scale: multiply by the learned gain ``scale`` (default ``True``).
      scale_init: the initializer of ``scale`` (default ones).
      reduction_axes: the axes the mean square is computed over (default ``-1``).
      feature_axes: the axes of the learned ``scale`` (default ``-1``).
      axis_name: a mapped axis name (``shard_map``, ``pmap``) over which the
        statistics are merged across devices (default ``None``: each device's own).
      axis_index_groups: groups of device indices within ``axis_name``, each
        merged separately (default ``None``: all devices together).
      use_fast_variance: kept for flax's signature; RMS norm takes no variance
        (default ``False``).
      force_float32_reductions: compute the mean square in at least float32
        (default ``True``); ``False`` computes them in the input's dtype.
      implementation: the row kernel, ``None`` (the platform's default),
        ``"xla"`` or ``"pallas"`` (see :mod:`lnjax.kernels`); it changes no
        parameter (default ``None``).

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
            axis_index_groups=self.axis_index_groups, stats_dtype=_stats_dtype(self, x),
            implementation=self.implementation, arg_names=("reduction_axes", "feature_axes"))
        scale, _ = _scale_bias(self, spec.feature_shape, use_scale=self.use_scale,
                               use_bias=False)
        dtype = dtypes.canonicalize_dtype(x, scale, dtype=self.dtype)
        return spec.apply(x, scale, mask=mask, dtype=dtype)[0]


class GroupNorm(nn.GroupNorm):
    """Group normalization, a drop-in for ``flax.linen.GroupNorm``.

    Set ``num_groups`` (default 32) or ``group_size`` (with
    ``num_groups=None``). Channels last; the statistics of each group are
    taken over ``reduction_axes`` (default: all but the batch axis).

    Attributes:
      num_groups: the number of groups of channels (default ``32``); ``None``
        when ``group_size`` is given.
      group_size: the number of channels in a group (default ``None``); set it
        with ``num_groups=None``.
      epsilon: added to the variance inside the square root (default ``1e-6``).
      dtype: the dtype of the result (default ``None``: inferred from the input
        and the parameters).
      param_dtype: the dtype of the parameters (default ``jnp.float32``).
      use_bias: add the learned bias ``bias`` (default ``True``).
      use_scale: multiply by the learned gain ``scale`` (default ``True``).
      bias_init: the initializer of ``bias`` (default zeros).
      scale_init: the initializer of ``scale`` (default ones).
      reduction_axes: the axes the statistics are computed over (default ``None``:
        all but the first, the batch axis).
      axis_name: a mapped axis name (``shard_map``, ``pmap``) over which the
        statistics are merged across devices (default ``None``: each device's own).
      axis_index_groups: groups of device indices within ``axis_name``, each
        merged separately (default ``None``: all devices together).
      use_fast_variance: ``True`` computes flax's one-pass ``E[x^2] - E[x]^2``
        (fast, inexact far from zero) instead of lnjax's mean-shifted statistics
        (default ``False``; flax's default is ``True``).
      force_float32_reductions: compute the statistics in at least float32
        (default ``True``); ``False`` computes them in the input's dtype.

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
            stats_dtype=_stats_dtype(self, x))
        scale, bias = _scale_bias(self, spec.feature_shape, use_scale=self.use_scale,
                                  use_bias=self.use_bias)
        dtype = dtypes.canonicalize_dtype(x, scale, bias, dtype=self.dtype)
        return spec.apply(x, scale, bias, mask=mask, dtype=dtype)[0]


class InstanceNorm(nn.InstanceNorm):
    """Instance normalization, a drop-in for ``flax.linen.InstanceNorm``.

    Each example and feature (``feature_axes``, default the last) is
    normalized over the remaining non-batch axes.

    Attributes:
      epsilon: added to the variance inside the square root (default ``1e-6``).
      dtype: the dtype of the result (default ``None``: inferred from the input
        and the parameters).
      param_dtype: the dtype of the parameters (default ``jnp.float32``).
      use_bias: add the learned bias ``bias`` (default ``True``).
      use_scale: multiply by the learned gain ``scale`` (default ``True``).
      bias_init: the initializer of ``bias`` (default zeros).
      scale_init: the initializer of ``scale`` (default ones).
      feature_axes: the axes of the features, each normalized on its own and
        holding the learned ``scale`` and ``bias`` (default ``-1``).
      axis_name: a mapped axis name (``shard_map``, ``pmap``) over which the
        statistics are merged across devices (default ``None``: each device's own).
      axis_index_groups: groups of device indices within ``axis_name``, each
        merged separately (default ``None``: all devices together).
      use_fast_variance: ``True`` computes flax's one-pass ``E[x^2] - E[x]^2``
        (fast, inexact far from zero) instead of lnjax's mean-shifted statistics
        (default ``False``; flax's default is ``True``).
      force_float32_reductions: compute the statistics in at least float32
        (default ``True``); ``False`` computes them in the input's dtype.

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
            axis_index_groups=self.axis_index_groups, stats_dtype=_stats_dtype(self, x))
        scale, bias = _scale_bias(self, spec.feature_shape, use_scale=self.use_scale,
                                  use_bias=self.use_bias)
        dtype = dtypes.canonicalize_dtype(x, scale, bias, dtype=self.dtype)
        return spec.apply(x, scale, bias, mask=mask, dtype=dtype)[0]


class BatchNorm(nn.BatchNorm):
    """Batch normalization, a drop-in for ``flax.linen.BatchNorm``.

    Statistics over every axis but ``axis`` (the features); running averages
    in the ``batch_stats`` collection (``mean``, ``var``), updated with
    ``momentum`` when the collection is mutable. With ``axis_name`` the
    statistics are merged across devices, each device weighted by the number
    of positions it counts (so masked, uneven batches are exact).

    Beyond flax: ``unbiased=True`` normalizes with the unbiased variance
    ``n/(n-1) * var`` (the paper's choice at batch size 4).

    Attributes:
      use_running_average: normalize with the running averages in
        ``batch_stats`` instead of the batch's statistics (default ``None``: given at
        call time).
      axis: the feature axis or axes; the statistics are taken over all others
        (default ``-1``).
      momentum: the decay of the running averages (default ``0.99``).
      epsilon: added to the variance inside the square root (default ``1e-5``).
      dtype: the dtype of the result (default ``None``: inferred from the input
        and the parameters).
      param_dtype: the dtype of the parameters (default ``jnp.float32``).
      use_bias: add the learned bias ``bias`` (default ``True``).
      use_scale: multiply by the learned gain ``scale`` (default ``True``).
      bias_init: the initializer of ``bias`` (default zeros).
      scale_init: the initializer of ``scale`` (default ones).
      axis_name: a mapped axis name (``shard_map``, ``pmap``) over which the
        statistics are merged across devices (default ``None``: each device's own).
      axis_index_groups: groups of device indices within ``axis_name``, each
        merged separately (default ``None``: all devices together).
      use_fast_variance: ``True`` computes flax's one-pass ``E[x^2] - E[x]^2``
        (fast, inexact far from zero) instead of lnjax's mean-shifted statistics
        (default ``False``; flax's default is ``True``).
      force_float32_reductions: compute the statistics in at least float32
        (default ``True``); ``False`` computes them in the input's dtype.
      unbiased: normalize with the unbiased variance ``n/(n-1) * var`` (default
        ``False``).

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
        axis_index_groups=mdl.axis_index_groups, stats_dtype=_stats_dtype(mdl, x))
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


class BatchReNorm(BatchNorm):
    """Batch renormalization (Ioffe 2017): batch norm corrected towards its running statistics.

    In training, ``y = scale * ((x - mu_B) / sigma_B * r + d) + bias`` with
    ``r = clip(sigma_B / sigma, 1/r_max, r_max)`` and ``d = clip((mu_B - mu) /
    sigma, -d_max, d_max)`` from the running statistics (held constant in the
    gradient), so the output no longer depends on the batch alone; in
    inference, the running statistics, as batch norm. BatchNorm's arguments,
    parameters and ``batch_stats`` (``mean``, ``var``, updated the same way),
    plus ``r_max`` and ``d_max``. ``r_max=1, d_max=0`` is batch norm.

    The paper starts from batch norm and ramps the limits up: pass them at
    call time, e.g. ``layer(x, r_max=r, d_max=d)`` with ``r, d =
    lnjax.renorm_limits(state.step)`` (traced values are fine under ``jit``).

    Attributes:
      use_running_average: normalize with the running averages in
        ``batch_stats`` instead of the batch's statistics (default ``None``: given at
        call time).
      axis: the feature axis or axes; the statistics are taken over all others
        (default ``-1``).
      momentum: the decay of the running averages (default ``0.99``).
      epsilon: added to the variance inside the square root (default ``1e-5``).
      dtype: the dtype of the result (default ``None``: inferred from the input
        and the parameters).
      param_dtype: the dtype of the parameters (default ``jnp.float32``).
      use_bias: add the learned bias ``bias`` (default ``True``).
      use_scale: multiply by the learned gain ``scale`` (default ``True``).
      bias_init: the initializer of ``bias`` (default zeros).
      scale_init: the initializer of ``scale`` (default ones).
      axis_name: a mapped axis name (``shard_map``, ``pmap``) over which the
        statistics are merged across devices (default ``None``: each device's own).
      axis_index_groups: groups of device indices within ``axis_name``, each
        merged separately (default ``None``: all devices together).
      use_fast_variance: ``True`` computes flax's one-pass ``E[x^2] - E[x]^2``
        (fast, inexact far from zero) instead of lnjax's mean-shifted statistics
        (default ``False``; flax's default is ``True``).
      force_float32_reductions: compute the statistics in at least float32
        (default ``True``); ``False`` computes them in the input's dtype.
      unbiased: normalize with the unbiased variance ``n/(n-1) * var`` (default
        ``False``).
      r_max: the largest scale correction, ``>= 1`` (default ``3.0``).
      d_max: the largest shift correction, in running standard deviations,
        ``>= 0`` (default ``5.0``).

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


class WeightNormDense(nn.Module):
    """A dense layer with a weight-normalized kernel (Salimans & Kingma 2016).

    ``y = x @ (scale * v / ||v||) + bias``: the kernel ``v`` of shape
    ``(in, features)`` is normalized per output unit (column), so each unit's
    summed input is invariant to re-scaling its weight vector (Table 1 of Ba et
    al.). Parameters: ``kernel`` (v), ``scale`` (g), ``bias``.

    Attributes:
      features: the number of output units.
      use_bias: add the learned bias ``bias`` (default ``True``).
      dtype: the dtype of the computation (default ``None``: inferred from the
        input and the parameters).
      param_dtype: the dtype of the parameters (default ``jnp.float32``).
      precision: the matmul's precision (default ``None``).
      kernel_init: the initializer of ``kernel`` (default ``lecun_normal()``).
      bias_init: the initializer of ``bias`` (default zeros).
      scale_init: the initializer of ``scale`` (default ones).
      epsilon: added to each column's squared norm (default ``1e-12``).

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


# --------------------------------------------------------------------------
# Layer-normalized recurrent networks.
# --------------------------------------------------------------------------


def _recurrent_params(mdl: nn.Module, spec: R.CellSpec, in_features: int) -> dict:
    """Create (or fetch) a cell's parameters in ``mdl``'s scope."""
    inits = R.param_initializers(spec, in_features, kernel_init=mdl.kernel_init,
                                 recurrent_kernel_init=mdl.recurrent_kernel_init,
                                 bias_init=mdl.bias_init)
    return {name: mdl.param(name, init, shape, mdl.param_dtype)
            for name, (shape, init) in inits.items()}


def _promote(mdl: nn.Module, params: dict, *arrays: Any) -> tuple[dict, list[Any]]:
    """Cast parameters and arrays to one dtype, as flax's cells do."""
    names = list(params)
    out = dtypes.promote_dtype(*params.values(), *arrays, dtype=mdl.dtype)
    return dict(zip(names, out[:len(names)])), out[len(names):]


class _Params(nn.Module):
    """Creates a recurrent cell's parameters under its own name (``cell``)."""

    spec: Any
    kernel_init: Any
    recurrent_kernel_init: Any
    bias_init: Any
    param_dtype: Any

    @nn.compact
    def __call__(self, in_features: int) -> dict:
        return _recurrent_params(self, self.spec, in_features)


class _RecurrentBase(nn.Module):
    """Fields and carry handling shared by the LN cells and sequence layers."""

    features: int
    layer_norm: bool = True
    norm_per_gate: bool = False
    epsilon: float = 1e-5
    gate_fn: Any = nn.sigmoid
    activation_fn: Any = nn.tanh
    kernel_init: Any = nn.initializers.lecun_normal()
    recurrent_kernel_init: Any = nn.initializers.orthogonal()
    bias_init: Any = initializers.zeros
    dtype: Any = None
    param_dtype: Any = jnp.float32
    carry_init: Any = initializers.zeros

    _spec_type: ClassVar[type[R.CellSpec]] = R.SimpleSpec
    _spec_extra: ClassVar[tuple[str, ...]] = ()  # option names passed on to the spec

    @nn.nowrap
    def spec(self) -> R.CellSpec:
        """The pure description of this cell (see :mod:`lnjax.recurrent`)."""
        extra = {k: getattr(self, k) for k in self._spec_extra}
        return self._spec_type(
            features=self.features, layer_norm=self.layer_norm,
            norm_per_gate=self.norm_per_gate, epsilon=self.epsilon, gate_fn=self.gate_fn,
            activation_fn=self.activation_fn, name=type(self).__name__, **extra)

    @nn.nowrap
    def initialize_carry(self, rng: jax.Array, input_shape: tuple[int, ...]) -> Any:
        """The initial carry for inputs of ``input_shape`` (``(*batch, features)``)."""
        shapes = self.spec().carry_shapes(tuple(input_shape[:-1]))
        if isinstance(shapes, tuple) and shapes and isinstance(shapes[0], tuple):
            keys = jax.random.split(rng, len(shapes))
            return tuple(self.carry_init(k, s, self.param_dtype) for k, s in zip(keys, shapes))
        return self.carry_init(rng, shapes, self.param_dtype)

    @property
    def num_feature_axes(self) -> int:
        return 1


class _CellCall(nn.Module):
    """``__call__(carry, x) -> (carry, y)``: one step, a drop-in for flax's cells."""

    @nn.compact
    def __call__(self, carry, inputs):
        """One time step; ``carry`` from :meth:`initialize_carry`."""
        spec = self.spec()
        inputs = checks.as_inexact_array(inputs, fn=spec.name, name="inputs")
        params = _recurrent_params(self, spec, inputs.shape[-1])
        params, (inputs,) = _promote(self, params, inputs)
        return spec.cell(params, carry, inputs)


class _SequenceCall(nn.Module):
    """A whole sequence with the input path hoisted out of the time loop."""

    time_major: bool = False
    return_carry: bool = False
    reverse: bool = False
    keep_order: bool = False
    unroll: int = 1

    @nn.compact
    def __call__(self, inputs, *, initial_carry=None, init_key=None, seq_lengths=None,
                 return_carry=None, time_major=None, reverse=None, keep_order=None):
        """Runs the cell over ``inputs`` ``(*batch, time, features)``.

        Same keywords as ``flax.linen.RNN.__call__``, so the layer works inside
        ``flax.linen.Bidirectional``. Outputs past ``seq_lengths`` are zero.
        Returns the outputs, or ``(carry, outputs)`` with ``return_carry``.
        """
        spec = self.spec()
        inputs = checks.as_inexact_array(inputs, fn=spec.name, name="inputs")
        R.check_sequence_rank(spec.name, inputs)
        params = _Params(spec=spec, kernel_init=self.kernel_init,
                         recurrent_kernel_init=self.recurrent_kernel_init,
                         bias_init=self.bias_init, param_dtype=self.param_dtype,
                         name="cell")(inputs.shape[-1])
        params, (inputs,) = _promote(self, params, inputs)
        key = jax.random.key(0) if init_key is None else init_key
        return R.run_layer(
            spec, params, inputs, initial_carry=initial_carry,
            make_carry=lambda shape: self.initialize_carry(key, shape),
            defaults=self, seq_lengths=seq_lengths, return_carry=return_carry,
            time_major=time_major, reverse=reverse, keep_order=keep_order)


class _LSTMBase(_RecurrentBase):
    carry_normalized_cell: bool = False
    _spec_type = R.LSTMSpec
    _spec_extra = ("carry_normalized_cell",)


class _GRUBase(_RecurrentBase):
    _spec_type = R.GRUSpec


class LNSimpleCell(_CellCall, _RecurrentBase, nn.RNNCellBase):
    """LN-RNN cell (the paper's equation 4): ``h' = tanh(LN(W_h h + W_x x; scale) + bias)``.

    A drop-in cell for ``flax.linen.RNN``/``Bidirectional``; ``layer_norm=False``
    gives the plain cell. Parameters: ``input_kernel``, ``recurrent_kernel``,
    ``bias`` and (with layer norm) ``scale``.

    Attributes:
      features: the number of hidden units H.
      layer_norm: the layer-normalized cell; ``False`` gives the plain cell
        (default ``True``).
      norm_per_gate: no effect: the cell has one block of H (default ``False``).
      epsilon: added to the variance inside the square root of every layer norm
        (default ``1e-5``, as the authors' code).
      gate_fn: unused by this cell, which has no gate (default ``sigmoid``).
      activation_fn: the output's nonlinearity (default ``tanh``).
      kernel_init: the initializer of ``input_kernel`` (default ``lecun_normal()``).
      recurrent_kernel_init: the initializer of ``recurrent_kernel`` (default
        ``orthogonal()``).
      bias_init: the initializer of the biases (default zeros); the gains start
        at one.
      dtype: the dtype of the computation (default ``None``: inferred from the
        inputs and the parameters).
      param_dtype: the dtype of the parameters (default ``jnp.float32``).
      carry_init: the initializer of :meth:`initialize_carry`'s carry (default
        zeros).

    Example:
      >>> import jax, jax.numpy as jnp, flax.linen as nn
      >>> from lnjax import linen as lnn
      >>> rnn = nn.RNN(lnn.LNSimpleCell(8))
      >>> variables = rnn.init(jax.random.key(0), jnp.ones((2, 5, 3)))
      >>> rnn.apply(variables, jnp.ones((2, 5, 3))).shape
      (2, 5, 8)
    """


class LNGRUCell(_CellCall, _GRUBase, nn.RNNCellBase):
    """LN-GRU cell (equations 26-28), a drop-in cell for ``flax.linen.RNN``.

    See :class:`lnjax.recurrent.GRUSpec` for the equations. Parameters:
    ``input_kernel`` (in, 3H), ``recurrent_kernel`` (H, 3H), ``bias`` (3H),
    ``recurrent_bias`` (H), and with layer norm ``input_scale``,
    ``recurrent_scale`` (3H). ``norm_per_gate`` normalizes z, r and the
    candidate separately.

    Attributes:
      features: the number of hidden units H.
      layer_norm: the layer-normalized cell; ``False`` gives the plain cell
        (default ``True``).
      norm_per_gate: normalize z, r and the candidate separately instead of
        the gates (2H) and the candidate (H) (default ``False``).
      epsilon: added to the variance inside the square root of every layer norm
        (default ``1e-5``, as the authors' code).
      gate_fn: the gates' nonlinearity (default ``sigmoid``).
      activation_fn: the candidate's nonlinearity (default ``tanh``).
      kernel_init: the initializer of ``input_kernel`` (default ``lecun_normal()``).
      recurrent_kernel_init: the initializer of ``recurrent_kernel`` (default
        ``orthogonal()``).
      bias_init: the initializer of the biases (default zeros); the gains start
        at one.
      dtype: the dtype of the computation (default ``None``: inferred from the
        inputs and the parameters).
      param_dtype: the dtype of the parameters (default ``jnp.float32``).
      carry_init: the initializer of :meth:`initialize_carry`'s carry (default
        zeros).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from lnjax import linen as lnn
      >>> cell = lnn.LNGRUCell(4)
      >>> carry = cell.initialize_carry(jax.random.key(0), (2, 3))
      >>> variables = cell.init(jax.random.key(1), carry, jnp.ones((2, 3)))
      >>> cell.apply(variables, carry, jnp.ones((2, 3)))[1].shape
      (2, 4)
    """


class LNLSTMCell(_CellCall, _LSTMBase, nn.RNNCellBase):
    """LN-LSTM cell (equations 20-22), a drop-in cell for ``flax.linen.RNN``.

    ``gates = LN(W_h h) + LN(W_x x) + b`` over the whole 4H vector (gate order
    i, f, g, o); ``c' = σ(f) c + σ(i) tanh(g)``; ``h' = σ(o) tanh(LN(c'))``;
    the carried ``c'`` is un-normalized. Options: ``layer_norm=False`` (the
    plain LSTM, computing what ``flax.linen.LSTMCell`` computes),
    ``norm_per_gate`` (TensorFlow's LayerNormBasicLSTMCell),
    ``carry_normalized_cell`` (TensorFlow Addons). Parameters:
    ``input_kernel`` (in, 4H), ``recurrent_kernel`` (H, 4H), ``bias`` (4H),
    and with layer norm ``input_scale``, ``recurrent_scale`` (4H),
    ``cell_scale``, ``cell_bias`` (H). Gains start at 1, biases at 0.

    Attributes:
      features: the number of hidden units H.
      layer_norm: the layer-normalized cell; ``False`` gives the plain cell
        (default ``True``).
      norm_per_gate: normalize each gate's H summed inputs separately, as
        TensorFlow's LayerNormBasicLSTMCell, instead of the whole 4H vector
        (default ``False``).
      epsilon: added to the variance inside the square root of every layer norm
        (default ``1e-5``, as the authors' code).
      gate_fn: the gates' nonlinearity (default ``sigmoid``).
      activation_fn: the nonlinearity of the candidate and the output (default
        ``tanh``).
      kernel_init: the initializer of ``input_kernel`` (default ``lecun_normal()``).
      recurrent_kernel_init: the initializer of ``recurrent_kernel`` (default
        ``orthogonal()``).
      bias_init: the initializer of the biases (default zeros); the gains start
        at one.
      dtype: the dtype of the computation (default ``None``: inferred from the
        inputs and the parameters).
      param_dtype: the dtype of the parameters (default ``jnp.float32``).
      carry_init: the initializer of :meth:`initialize_carry`'s carry (default
        zeros).
      carry_normalized_cell: carry ``LN(c_t)`` instead of ``c_t``, as
        TensorFlow Addons (default ``False``, the paper's).

    Example:
      >>> import jax, jax.numpy as jnp, flax.linen as nn
      >>> from lnjax import linen as lnn
      >>> rnn = nn.RNN(lnn.LNLSTMCell(8))
      >>> variables = rnn.init(jax.random.key(0), jnp.ones((2, 5, 3)))
      >>> sorted(variables["params"]["cell"])[:3]
      ['bias', 'cell_bias', 'cell_scale']
    """


class LNSimpleRNN(_SequenceCall, _RecurrentBase):
    """An LN-RNN over a whole sequence; its parameters are :class:`LNSimpleCell`'s, under ``cell``.

    Attributes:
      features: the number of hidden units H.
      layer_norm: the layer-normalized cell; ``False`` gives the plain cell
        (default ``True``).
      norm_per_gate: no effect: the cell has one block of H (default ``False``).
      epsilon: added to the variance inside the square root of every layer norm
        (default ``1e-5``, as the authors' code).
      gate_fn: unused by this cell, which has no gate (default ``sigmoid``).
      activation_fn: the output's nonlinearity (default ``tanh``).
      kernel_init: the initializer of ``input_kernel`` (default ``lecun_normal()``).
      recurrent_kernel_init: the initializer of ``recurrent_kernel`` (default
        ``orthogonal()``).
      bias_init: the initializer of the biases (default zeros); the gains start
        at one.
      dtype: the dtype of the computation (default ``None``: inferred from the
        inputs and the parameters).
      param_dtype: the dtype of the parameters (default ``jnp.float32``).
      carry_init: the initializer of :meth:`initialize_carry`'s carry (default
        zeros).
      time_major: inputs and outputs are ``(time, *batch, features)`` instead of
        ``(*batch, time, features)`` (default ``False``).
      return_carry: return ``(carry, outputs)`` instead of the outputs (default
        ``False``).
      reverse: run from each sequence's last valid step to its first (default
        ``False``).
      keep_order: with ``reverse``, return the outputs in time order instead
        of processing order (default ``False``, as ``flax.linen.RNN``).
      unroll: the time steps unrolled in each iteration of the scan (default
        ``1``).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from lnjax import linen as lnn
      >>> layer = lnn.LNSimpleRNN(8)
      >>> variables = layer.init(jax.random.key(0), jnp.ones((2, 5, 3)))
      >>> layer.apply(variables, jnp.ones((2, 5, 3))).shape
      (2, 5, 8)
    """


class LNGRU(_SequenceCall, _GRUBase):
    """An LN-GRU over a whole sequence with the input path hoisted.

    Its parameters are exactly :class:`LNGRUCell`'s, under ``cell``.

    Attributes:
      features: the number of hidden units H.
      layer_norm: the layer-normalized cell; ``False`` gives the plain cell
        (default ``True``).
      norm_per_gate: normalize z, r and the candidate separately instead of
        the gates (2H) and the candidate (H) (default ``False``).
      epsilon: added to the variance inside the square root of every layer norm
        (default ``1e-5``, as the authors' code).
      gate_fn: the gates' nonlinearity (default ``sigmoid``).
      activation_fn: the candidate's nonlinearity (default ``tanh``).
      kernel_init: the initializer of ``input_kernel`` (default ``lecun_normal()``).
      recurrent_kernel_init: the initializer of ``recurrent_kernel`` (default
        ``orthogonal()``).
      bias_init: the initializer of the biases (default zeros); the gains start
        at one.
      dtype: the dtype of the computation (default ``None``: inferred from the
        inputs and the parameters).
      param_dtype: the dtype of the parameters (default ``jnp.float32``).
      carry_init: the initializer of :meth:`initialize_carry`'s carry (default
        zeros).
      time_major: inputs and outputs are ``(time, *batch, features)`` instead of
        ``(*batch, time, features)`` (default ``False``).
      return_carry: return ``(carry, outputs)`` instead of the outputs (default
        ``False``).
      reverse: run from each sequence's last valid step to its first (default
        ``False``).
      keep_order: with ``reverse``, return the outputs in time order instead
        of processing order (default ``False``, as ``flax.linen.RNN``).
      unroll: the time steps unrolled in each iteration of the scan (default
        ``1``).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from lnjax import linen as lnn
      >>> layer = lnn.LNGRU(8, return_carry=True)
      >>> variables = layer.init(jax.random.key(0), jnp.ones((2, 5, 3)))
      >>> carry, y = layer.apply(variables, jnp.ones((2, 5, 3)), seq_lengths=jnp.array([5, 2]))
      >>> carry.shape, y.shape
      ((2, 8), (2, 5, 8))
    """


class LNLSTM(_SequenceCall, _LSTMBase):
    """An LN-LSTM over a whole sequence with the input path hoisted.

    Its parameters are exactly :class:`LNLSTMCell`'s, under ``cell``.

    ``flax.linen.RNN(LNLSTMCell(...))`` and ``LNLSTM(...)`` share one
    parameter tree and compute the same outputs; ``LNLSTM`` computes
    ``LN(W_x x_t) + b`` for all steps in one matmul before the scan.

    Attributes:
      features: the number of hidden units H.
      layer_norm: the layer-normalized cell; ``False`` gives the plain cell
        (default ``True``).
      norm_per_gate: normalize each gate's H summed inputs separately, as
        TensorFlow's LayerNormBasicLSTMCell, instead of the whole 4H vector
        (default ``False``).
      epsilon: added to the variance inside the square root of every layer norm
        (default ``1e-5``, as the authors' code).
      gate_fn: the gates' nonlinearity (default ``sigmoid``).
      activation_fn: the nonlinearity of the candidate and the output (default
        ``tanh``).
      kernel_init: the initializer of ``input_kernel`` (default ``lecun_normal()``).
      recurrent_kernel_init: the initializer of ``recurrent_kernel`` (default
        ``orthogonal()``).
      bias_init: the initializer of the biases (default zeros); the gains start
        at one.
      dtype: the dtype of the computation (default ``None``: inferred from the
        inputs and the parameters).
      param_dtype: the dtype of the parameters (default ``jnp.float32``).
      carry_init: the initializer of :meth:`initialize_carry`'s carry (default
        zeros).
      carry_normalized_cell: carry ``LN(c_t)`` instead of ``c_t``, as
        TensorFlow Addons (default ``False``, the paper's).
      time_major: inputs and outputs are ``(time, *batch, features)`` instead of
        ``(*batch, time, features)`` (default ``False``).
      return_carry: return ``(carry, outputs)`` instead of the outputs (default
        ``False``).
      reverse: run from each sequence's last valid step to its first (default
        ``False``).
      keep_order: with ``reverse``, return the outputs in time order instead
        of processing order (default ``False``, as ``flax.linen.RNN``).
      unroll: the time steps unrolled in each iteration of the scan (default
        ``1``).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from lnjax import linen as lnn
      >>> layer = lnn.LNLSTM(8)
      >>> variables = layer.init(jax.random.key(0), jnp.ones((2, 5, 3)))
      >>> layer.apply(variables, jnp.ones((2, 5, 3)), reverse=True, keep_order=True).shape
      (2, 5, 8)
    """
