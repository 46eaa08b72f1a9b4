"""Flax NNX modules over :mod:`lnjax.normalization`.

Each normalization module subclasses the ``flax.nnx`` module of the same name:
the same constructor (``num_features``, keyword options, ``rngs``), the same
``Param`` attributes (``scale``, ``bias``) and ``BatchStat`` attributes
(``mean``, ``var``), so a model swaps one import and its state still loads.
One default differs: ``use_fast_variance=False`` (exact statistics).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.nnx.nn import dtypes

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
    "WeightNormLinear",
]


def _value(v: Any) -> Any:
    return None if v is None else v[...]


def _shaped(p: Any, spec: NormSpec) -> Any:
    """A flat ``(num_features,)`` parameter reshaped to the spec's feature shape.

    flax.nnx stores one flat vector for several feature axes; lnjax's
    normalizations take the parameter in the shape of those axes.
    """
    shape = spec.feature_shape
    if p is not None and p.ndim == 1 and len(shape) > 1 and p.size == int(np.prod(shape)):
        return p.reshape(shape)
    return p


def _stats_dtype(dtype: Any, x: jax.Array) -> Any:
    return jnp.promote_types(jnp.result_type(x) if dtype is None else dtype, jnp.float32)


class LayerNorm(nnx.LayerNorm):
    """Layer normalization (Ba, Kiros & Hinton 2016), a drop-in for ``flax.nnx.LayerNorm``.

    Beyond flax: ``implementation`` (``None``, ``"xla"``, ``"pallas"``) picks the
    row kernel of :mod:`lnjax.kernels`; it changes no parameter.

    The constructor takes ``num_features`` and each option below as a
    keyword, and, as flax's, ``bias_init`` and ``scale_init`` (default zeros
    and ones), ``bias_metadata``, ``scale_metadata`` and ``rngs``.

    Attributes:
      num_features: the number of features (required).
      scale: the learned gain, an ``nnx.Param`` of ``num_features`` (None without
        ``use_scale``).
      bias: the learned bias, an ``nnx.Param`` of ``num_features`` (None without
        ``use_bias``).
      epsilon: added to the variance inside the square root (default ``1e-6``).
      dtype: the dtype of the result (default ``None``: inferred from the input
        and the parameters).
      param_dtype: the dtype of the parameters (default ``jnp.float32``).
      use_bias: add the learned bias ``bias`` (default ``True``).
      use_scale: multiply by the learned gain ``scale`` (default ``True``).
      reduction_axes: the axes the statistics are computed over (default ``-1``).
      feature_axes: the axes of ``scale`` and ``bias`` (default ``-1``).
      axis_name: a mapped axis name (``shard_map``, ``pmap``) over which the
        statistics are merged across devices (default ``None``: each device's own).
      axis_index_groups: groups of device indices within ``axis_name``, each
        merged separately (default ``None``: all devices together).
      use_fast_variance: ``True`` computes flax's one-pass ``E[x^2] - E[x]^2``
        (fast, inexact far from zero) instead of lnjax's mean-shifted statistics
        (default ``False``; flax's default is ``True``).
      promote_dtype: flax's function that casts the input and the parameters to
        ``dtype`` (default flax's ``promote_dtype``).
      implementation: the row kernel, ``None`` (the platform's default),
        ``"xla"`` or ``"pallas"`` (see :mod:`lnjax.kernels`); it changes no
        parameter (default ``None``).

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from lnjax import nnx as lnnx
      >>> layer = lnnx.LayerNorm(3, rngs=nnx.Rngs(0))
      >>> y = layer(jnp.array([[1e4, 1e4 + 1, 1e4 + 2]]))
      >>> [round(float(v), 3) for v in y[0]]
      [-1.225, 0.0, 1.225]
    """

    def __init__(self, num_features: int, *, use_fast_variance: bool = False,
                 implementation: str | None = None, **kwargs: Any):
        super().__init__(num_features, use_fast_variance=use_fast_variance, **kwargs)
        self.implementation = implementation

    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        """Normalizes ``x``; ``mask`` selects the positions the statistics count."""
        x = checks.as_inexact_array(x, fn="LayerNorm")
        x, scale, bias = self.promote_dtype((x, _value(self.scale), _value(self.bias)),
                                            dtype=self.dtype)
        spec = NormSpec.layer(
            "LayerNorm", x, reduction_axes=self.reduction_axes, feature_axes=self.feature_axes,
            epsilon=self.epsilon, fast_variance=self.use_fast_variance,
            axis_name=self.axis_name, axis_index_groups=self.axis_index_groups,
            stats_dtype=_stats_dtype(self.dtype, x), implementation=self.implementation,
            arg_names=("reduction_axes", "feature_axes"))
        return spec.apply(x, _shaped(scale, spec), _shaped(bias, spec), mask=mask)[0]


class RMSNorm(nnx.RMSNorm):
    """RMS normalization, a drop-in for ``flax.nnx.RMSNorm``.

    Beyond flax: ``implementation`` (``None``, ``"xla"``, ``"pallas"``) picks the
    row kernel of :mod:`lnjax.kernels`; it changes no parameter.

    The constructor takes ``num_features`` and each option below as a
    keyword, and, as flax's, ``scale_init`` (default ones),
    ``scale_metadata`` and ``rngs``.

    Attributes:
      num_features: the number of features (required).
      scale: the learned gain, an ``nnx.Param`` of ``num_features`` (None without
        ``use_scale``).
      epsilon: added to the mean square inside the square root (default ``1e-6``).
      dtype: the dtype of the result (default ``None``: inferred from the input
        and the parameters).
      param_dtype: the dtype of the parameters (default ``jnp.float32``).
      use_scale: multiply by the learned gain ``scale`` (default ``True``).
      reduction_axes: the axes the mean square is computed over (default ``-1``).
      feature_axes: the axes of ``scale`` (default ``-1``).
      axis_name: a mapped axis name (``shard_map``, ``pmap``) over which the
        statistics are merged across devices (default ``None``: each device's own).
      axis_index_groups: groups of device indices within ``axis_name``, each
        merged separately (default ``None``: all devices together).
      use_fast_variance: kept for flax's signature; RMS norm takes no variance
        (default ``False``).
      promote_dtype: flax's function that casts the input and the parameters to
        ``dtype`` (default flax's ``promote_dtype``).
      implementation: the row kernel, ``None`` (the platform's default),
        ``"xla"`` or ``"pallas"`` (see :mod:`lnjax.kernels`); it changes no
        parameter (default ``None``).

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from lnjax import nnx as lnnx
      >>> y = lnnx.RMSNorm(2, epsilon=0.0, rngs=nnx.Rngs(0))(jnp.array([3.0, 4.0]))
      >>> [round(float(v), 4) for v in y]
      [0.8485, 1.1314]
    """

    def __init__(self, num_features: int, *, use_fast_variance: bool = False,
                 implementation: str | None = None, **kwargs: Any):
        super().__init__(num_features, use_fast_variance=use_fast_variance, **kwargs)
        self.implementation = implementation

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """RMS-normalizes ``x``; ``mask`` selects the positions counted."""
        x = checks.as_inexact_array(x, fn="RMSNorm")
        x, scale = self.promote_dtype((x, _value(self.scale)), dtype=self.dtype)
        spec = NormSpec.layer(
            "RMSNorm", x, reduction_axes=self.reduction_axes, feature_axes=self.feature_axes,
            epsilon=self.epsilon, centered=False, axis_name=self.axis_name,
            axis_index_groups=self.axis_index_groups, stats_dtype=_stats_dtype(self.dtype, x),
            implementation=self.implementation, arg_names=("reduction_axes", "feature_axes"))
        return spec.apply(x, _shaped(scale, spec), mask=mask)[0]


class GroupNorm(nnx.GroupNorm):
    """Group normalization, a drop-in for ``flax.nnx.GroupNorm``.

    The constructor takes ``num_features``, ``num_groups``, ``group_size``
    and each other option below as a keyword, and, as flax's, ``bias_init``
    and ``scale_init`` (default zeros and ones), ``bias_metadata``,
    ``scale_metadata`` and ``rngs``.

    Attributes:
      num_features: the number of features (required).
      num_groups: the number of groups of channels (default ``32``); ``None``
        when ``group_size`` is given.
      group_size: the number of channels in a group (default ``None``: computed
        from ``num_groups``).
      feature_axis: the channel axis, the last (``-1``).
      scale: the learned gain, an ``nnx.Param`` of ``num_features`` (None without
        ``use_scale``).
      bias: the learned bias, an ``nnx.Param`` of ``num_features`` (None without
        ``use_bias``).
      epsilon: added to the variance inside the square root (default ``1e-6``).
      dtype: the dtype of the result (default ``None``: inferred from the input
        and the parameters).
      param_dtype: the dtype of the parameters (default ``jnp.float32``).
      use_bias: add the learned bias ``bias`` (default ``True``).
      use_scale: multiply by the learned gain ``scale`` (default ``True``).
      reduction_axes: the axes the statistics are computed over (default ``None``:
        all but the first, the batch axis).
      axis_name: a mapped axis name (``shard_map``, ``pmap``) over which the
        statistics are merged across devices (default ``None``: each device's own).
      axis_index_groups: groups of device indices within ``axis_name``, each
        merged separately (default ``None``: all devices together).
      use_fast_variance: ``True`` computes flax's one-pass ``E[x^2] - E[x]^2``
        (fast, inexact far from zero) instead of lnjax's mean-shifted statistics
        (default ``False``; flax's default is ``True``).
      promote_dtype: flax's function that casts the input and the parameters to
        ``dtype`` (default flax's ``promote_dtype``).

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from lnjax import nnx as lnnx
      >>> lnnx.GroupNorm(4, num_groups=2, rngs=nnx.Rngs(0))(jnp.ones((2, 5, 4))).shape
      (2, 5, 4)
    """

    def __init__(self, num_features: int, *, use_fast_variance: bool = False, **kwargs: Any):
        super().__init__(num_features, use_fast_variance=use_fast_variance, **kwargs)

    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        """Group-normalizes channels-last ``x``."""
        x = checks.as_inexact_array(x, fn="GroupNorm")
        x, scale, bias = self.promote_dtype((x, _value(self.scale), _value(self.bias)),
                                            dtype=self.dtype)
        spec = NormSpec.group(
            "GroupNorm", x, self.num_groups, reduction_axes=self.reduction_axes,
            epsilon=self.epsilon, fast_variance=self.use_fast_variance,
            axis_name=self.axis_name, axis_index_groups=self.axis_index_groups,
            stats_dtype=_stats_dtype(self.dtype, x))
        return spec.apply(x, scale, bias, mask=mask)[0]


class InstanceNorm(nnx.InstanceNorm):
    """Instance normalization, a drop-in for ``flax.nnx.InstanceNorm``.

    The constructor takes ``num_features`` and each option below as a
    keyword, and, as flax's, ``bias_init`` and ``scale_init`` (default zeros
    and ones), ``bias_metadata``, ``scale_metadata`` and ``rngs``.

    Attributes:
      num_features: the number of features (required).
      scale: the learned gain, an ``nnx.Param`` of ``num_features`` (None without
        ``use_scale``).
      bias: the learned bias, an ``nnx.Param`` of ``num_features`` (None without
        ``use_bias``).
      epsilon: added to the variance inside the square root (default ``1e-6``).
      dtype: the dtype of the result (default ``None``: inferred from the input
        and the parameters).
      param_dtype: the dtype of the parameters (default ``jnp.float32``).
      use_bias: add the learned bias ``bias`` (default ``True``).
      use_scale: multiply by the learned gain ``scale`` (default ``True``).
      feature_axes: the axes of the features, each normalized on its own and
        holding ``scale`` and ``bias`` (default ``-1``).
      axis_name: a mapped axis name (``shard_map``, ``pmap``) over which the
        statistics are merged across devices (default ``None``: each device's own).
      axis_index_groups: groups of device indices within ``axis_name``, each
        merged separately (default ``None``: all devices together).
      use_fast_variance: ``True`` computes flax's one-pass ``E[x^2] - E[x]^2``
        (fast, inexact far from zero) instead of lnjax's mean-shifted statistics
        (default ``False``; flax's default is ``True``).
      promote_dtype: flax's function that casts the input and the parameters to
        ``dtype`` (default flax's ``promote_dtype``).

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from lnjax import nnx as lnnx
      >>> y = lnnx.InstanceNorm(1, epsilon=0.0, rngs=nnx.Rngs(0))(jnp.array([[[1.0], [3.0]]]))
      >>> [float(v) for v in y.ravel()]
      [-1.0, 1.0]
    """

    def __init__(self, num_features: int, *, use_fast_variance: bool = False, **kwargs: Any):
        super().__init__(num_features, use_fast_variance=use_fast_variance, **kwargs)

    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        """Instance-normalizes ``x``."""
        x = checks.as_inexact_array(x, fn="InstanceNorm")
        x, scale, bias = self.promote_dtype((x, _value(self.scale), _value(self.bias)),
                                            dtype=self.dtype)
        spec = NormSpec.instance(
            "InstanceNorm", x, feature_axes=self.feature_axes, epsilon=self.epsilon,
            fast_variance=self.use_fast_variance, axis_name=self.axis_name,
            axis_index_groups=self.axis_index_groups, stats_dtype=_stats_dtype(self.dtype, x))
        return spec.apply(x, _shaped(scale, spec), _shaped(bias, spec), mask=mask)[0]


class BatchNorm(nnx.BatchNorm):
    """Batch normalization, a drop-in for ``flax.nnx.BatchNorm``.

    Running averages in the ``BatchStat`` attributes ``mean`` and ``var``.
    With ``axis_name`` the statistics merge across devices, each weighted by
    the positions it counts. Beyond flax: ``unbiased=True`` normalizes with
    ``n/(n-1) * var``.

    The constructor takes ``num_features`` and each option below as a
    keyword, and, as flax's, ``bias_init`` and ``scale_init`` (default zeros
    and ones), ``bias_metadata``, ``scale_metadata`` and ``rngs``.

    Attributes:
      num_features: the number of features (required).
      scale: the learned gain, an ``nnx.Param`` of ``num_features`` (None without
        ``use_scale``).
      bias: the learned bias, an ``nnx.Param`` of ``num_features`` (None without
        ``use_bias``).
      mean: the running mean, an ``nnx.BatchStat`` of ``num_features`` (starts at 0).
      var: the running variance, an ``nnx.BatchStat`` of ``num_features`` (starts
        at 1).
      use_running_average: normalize with ``mean`` and ``var`` instead of the
        batch's statistics (default ``False``); the call's argument overrides it.
      axis: the feature axis; the statistics are taken over all others (default
        ``-1``).
      momentum: the decay of the running averages (default ``0.99``).
      epsilon: added to the variance inside the square root (default ``1e-5``).
      dtype: the dtype of the result (default ``None``: inferred from the input
        and the parameters).
      param_dtype: the dtype of the parameters (default ``jnp.float32``).
      use_bias: add the learned bias ``bias`` (default ``True``).
      use_scale: multiply by the learned gain ``scale`` (default ``True``).
      axis_name: a mapped axis name (``shard_map``, ``pmap``) over which the
        statistics are merged across devices (default ``None``: each device's own).
      axis_index_groups: groups of device indices within ``axis_name``, each
        merged separately (default ``None``: all devices together).
      use_fast_variance: ``True`` computes flax's one-pass ``E[x^2] - E[x]^2``
        (fast, inexact far from zero) instead of lnjax's mean-shifted statistics
        (default ``False``; flax's default is ``True``).
      promote_dtype: flax's function that casts the input and the parameters to
        ``dtype`` (default flax's ``promote_dtype``).
      unbiased: normalize with the unbiased variance ``n/(n-1) * var`` (default
        ``False``).

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from lnjax import nnx as lnnx
      >>> bn = lnnx.BatchNorm(1, momentum=0.5, epsilon=0.0, rngs=nnx.Rngs(0))
      >>> [float(v) for v in bn(jnp.array([[1.0], [3.0]])).ravel()], float(bn.mean[0])
      ([-1.0, 1.0], 1.0)
    """

    def __init__(self, num_features: int, *, use_fast_variance: bool = False,
                 unbiased: bool = False, **kwargs: Any):
        super().__init__(num_features, use_fast_variance=use_fast_variance, **kwargs)
        self.unbiased = unbiased

    def __call__(self, x: jax.Array, use_running_average: bool | None = None, *,
                 mask: jax.Array | None = None) -> jax.Array:
        """Normalizes ``x`` with batch statistics or the running averages."""
        return self._normalize(x, use_running_average, mask, None)

    def _normalize(self, x, use_running_average, mask, limits):
        """The call of BatchNorm (``limits is None``) or BatchReNorm (``(r_max, d_max)``)."""
        name = type(self).__name__
        use_running_average = nnx.module.first_from(
            use_running_average, self.use_running_average,
            error_msg=f"{name}: pass use_running_average to the constructor or the call.")
        x = checks.as_inexact_array(x, fn=name, complex_ok=True)
        x, mean, var, scale, bias = self.promote_dtype(
            (x, self.mean[...], self.var[...], _value(self.scale), _value(self.bias)),
            dtype=self.dtype)
        spec = NormSpec.batch(
            name, x, feature_axes=self.axis, epsilon=self.epsilon,
            running=bool(use_running_average), unbiased=self.unbiased,
            fast_variance=self.use_fast_variance, axis_name=self.axis_name,
            axis_index_groups=self.axis_index_groups, stats_dtype=_stats_dtype(self.dtype, x))
        mean, var, scale, bias = (_shaped(p, spec) for p in (mean, var, scale, bias))
        if use_running_average:
            return spec.apply(x, scale, bias, stats=(mean, var))[0]
        renorm = None if limits is None else Renorm(mean, var, *limits)
        y, st = spec.apply(x, scale, bias, mask=mask, renorm=renorm)
        mean, var = spec.feature_stats(st)
        update = (jax.lax.stop_gradient
                  if self.mean._can_update or self.var._can_update else (lambda v: v))
        mean, var = mean.reshape(self.mean.shape), var.reshape(self.var.shape)
        new_mean = update(self.momentum * self.mean[...] + (1 - self.momentum) * mean)
        if jnp.iscomplexobj(new_mean) and not jnp.iscomplexobj(self.mean[...]):
            # Complex input: the running mean becomes complex (as in flax.linen) rather
            # than losing its imaginary part to the real variable it started as.
            self.mean.set_value(new_mean)
        else:
            self.mean[...] = new_mean
        self.var[...] = update(self.momentum * self.var[...] + (1 - self.momentum) * var)
        return y


class BatchReNorm(BatchNorm):
    """Batch renormalization (Ioffe 2017): batch norm corrected towards its running statistics.

    The same equations, arguments, ``BatchStat`` attributes and ramps as
    :class:`lnjax.linen.BatchReNorm`: ``r_max`` and ``d_max`` as constructor
    keywords, overridable at call time (``layer(x, r_max=r, d_max=d)``).

    The constructor takes ``num_features`` and each option below as a
    keyword, and, as flax's, ``bias_init`` and ``scale_init`` (default zeros
    and ones), ``bias_metadata``, ``scale_metadata`` and ``rngs``.

    Attributes:
      num_features: the number of features (required).
      scale: the learned gain, an ``nnx.Param`` of ``num_features`` (None without
        ``use_scale``).
      bias: the learned bias, an ``nnx.Param`` of ``num_features`` (None without
        ``use_bias``).
      mean: the running mean, an ``nnx.BatchStat`` of ``num_features`` (starts at 0).
      var: the running variance, an ``nnx.BatchStat`` of ``num_features`` (starts
        at 1).
      use_running_average: normalize with ``mean`` and ``var`` instead of the
        batch's statistics (default ``False``); the call's argument overrides it.
      axis: the feature axis; the statistics are taken over all others (default
        ``-1``).
      momentum: the decay of the running averages (default ``0.99``).
      epsilon: added to the variance inside the square root (default ``1e-5``).
      dtype: the dtype of the result (default ``None``: inferred from the input
        and the parameters).
      param_dtype: the dtype of the parameters (default ``jnp.float32``).
      use_bias: add the learned bias ``bias`` (default ``True``).
      use_scale: multiply by the learned gain ``scale`` (default ``True``).
      axis_name: a mapped axis name (``shard_map``, ``pmap``) over which the
        statistics are merged across devices (default ``None``: each device's own).
      axis_index_groups: groups of device indices within ``axis_name``, each
        merged separately (default ``None``: all devices together).
      use_fast_variance: ``True`` computes flax's one-pass ``E[x^2] - E[x]^2``
        (fast, inexact far from zero) instead of lnjax's mean-shifted statistics
        (default ``False``; flax's default is ``True``).
      promote_dtype: flax's function that casts the input and the parameters to
        ``dtype`` (default flax's ``promote_dtype``).
      unbiased: normalize with the unbiased variance ``n/(n-1) * var`` (default
        ``False``).
      r_max: the largest scale correction, ``>= 1`` (default ``3.0``); the call's
        ``r_max`` overrides it.
      d_max: the largest shift correction, in running standard deviations,
        ``>= 0`` (default ``5.0``); the call's ``d_max`` overrides it.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from lnjax import nnx as lnnx
      >>> layer = lnnx.BatchReNorm(1, epsilon=0.0, rngs=nnx.Rngs(0))
      >>> [float(v) for v in layer(jnp.array([[1.0], [3.0]])).ravel()]  # r = 1, d = 2: y = x
      [1.0, 3.0]

    Reference: Ioffe (2017), arXiv:1702.03275.
    """

    def __init__(self, num_features: int, *, r_max: float = 3.0, d_max: float = 5.0,
                 **kwargs: Any):
        check_renorm_limits(r_max, d_max, fn="BatchReNorm")
        super().__init__(num_features, **kwargs)
        self.r_max, self.d_max = r_max, d_max

    def __call__(self, x: jax.Array, use_running_average: bool | None = None, *,
                 mask: jax.Array | None = None, r_max: Any = None,
                 d_max: Any = None) -> jax.Array:
        """Renormalizes ``x`` (training) or normalizes it with the running averages."""
        r_max = self.r_max if r_max is None else r_max
        d_max = self.d_max if d_max is None else d_max
        check_renorm_limits(r_max, d_max, fn="BatchReNorm")
        return self._normalize(x, use_running_average, mask, (r_max, d_max))


_DEFAULT_KERNEL_INIT = nnx.initializers.lecun_normal()
_ZEROS = nnx.initializers.zeros_init()
_ONES = nnx.initializers.ones_init()
_ORTHOGONAL = nnx.initializers.orthogonal()


class WeightNormLinear(nnx.Module):
    """A linear layer with a weight-normalized kernel (Salimans & Kingma 2016).

    ``y = x @ (scale * v / ||v||) + bias`` with the kernel ``v`` of shape
    ``(in_features, out_features)`` normalized per output unit. Attributes
    ``kernel`` (v), ``scale`` (g) and ``bias`` are ``nnx.Param``.

    The constructor also takes ``param_dtype`` (default ``jnp.float32``) and
    ``rngs``.

    Attributes:
      in_features: the number of input features (required).
      out_features: the number of output units (required).
      kernel: ``v``, an ``nnx.Param`` of ``(in_features, out_features)``
        (initialized by ``kernel_init``, default ``lecun_normal()``).
      scale: ``g``, an ``nnx.Param`` of ``out_features`` (``scale_init``, default
        ones).
      bias: an ``nnx.Param`` of ``out_features`` (``bias_init``, default zeros), or
        None with ``use_bias=False`` (default ``True``).
      dtype: the dtype of the computation (default ``None``: inferred from the
        input and the parameters).
      precision: the matmul's precision (default ``None``).
      epsilon: added to each column's squared norm (default ``1e-12``).

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
        x, w, bias = dtypes.promote_dtype((x, w, _value(self.bias)), dtype=self.dtype)
        y = _sharding.matmul(x, w, precision=self.precision)
        return y if bias is None else y + _sharding.match_broadcast(bias, y)


# --------------------------------------------------------------------------
# Layer-normalized recurrent networks.
# --------------------------------------------------------------------------


class _RecurrentBase(nnx.Module):
    """Parameters, options and carry of an LN cell (shared by cell and sequence layer)."""

    _spec_type: ClassVar[type[R.CellSpec]] = R.SimpleSpec

    def __init__(self, in_features: int, hidden_features: int, *, layer_norm: bool = True,
                 norm_per_gate: bool = False, epsilon: float = 1e-5,
                 gate_fn: Any = jax.nn.sigmoid, activation_fn: Any = jnp.tanh,
                 kernel_init: Any = _DEFAULT_KERNEL_INIT,
                 recurrent_kernel_init: Any = _ORTHOGONAL, bias_init: Any = _ZEROS,
                 dtype: Any = None, param_dtype: Any = jnp.float32,
                 carry_init: Any = _ZEROS, rngs: nnx.Rngs, **spec_extra: Any):
        self.in_features, self.hidden_features = in_features, hidden_features
        self.spec = self._spec_type(
            features=hidden_features, layer_norm=layer_norm, norm_per_gate=norm_per_gate,
            epsilon=epsilon, gate_fn=gate_fn, activation_fn=activation_fn,
            name=type(self).__name__, **spec_extra)
        self.dtype, self.param_dtype, self.carry_init = dtype, param_dtype, carry_init
        inits = R.param_initializers(self.spec, in_features, kernel_init=kernel_init,
                                     recurrent_kernel_init=recurrent_kernel_init,
                                     bias_init=bias_init)
        for name, (shape, init) in inits.items():
            setattr(self, name, nnx.Param(init(rngs.params(), shape, param_dtype)))
        self._param_names = tuple(inits)

    def _params(self, *arrays):
        values = [getattr(self, n)[...] for n in self._param_names]
        out = dtypes.promote_dtype((*values, *arrays), dtype=self.dtype)
        return dict(zip(self._param_names, out[:len(values)])), out[len(values):]

    def initialize_carry(self, input_shape: tuple[int, ...], rngs: Any = None,
                         carry_init: Any = None) -> Any:
        """The initial carry for inputs of ``input_shape`` (``(*batch, features)``)."""
        init = self.carry_init if carry_init is None else carry_init
        key = jax.random.key(0)
        if rngs is not None:
            key = (rngs.carry if isinstance(rngs, nnx.Rngs) else rngs)()
        shapes = self.spec.carry_shapes(tuple(input_shape[:-1]))
        if isinstance(shapes[0], tuple):
            keys = jax.random.split(key, len(shapes))
            return tuple(init(k, s, self.param_dtype) for k, s in zip(keys, shapes))
        return init(key, shapes, self.param_dtype)

    @property
    def num_feature_axes(self) -> int:
        return 1


class _Cell(_RecurrentBase, nnx.RNNCellBase):
    def __call__(self, carry, inputs):
        """One time step: ``(carry, x) -> (carry, y)``."""
        inputs = checks.as_inexact_array(inputs, fn=self.spec.name, name="inputs")
        params, (inputs,) = self._params(inputs)
        return self.spec.cell(params, carry, inputs)


class LNSimpleCell(_Cell):
    """LN-RNN cell (equation 4), a drop-in cell for ``flax.nnx.RNN``.

    Same equations, options and parameter names as :class:`lnjax.linen.LNSimpleCell`.

    The constructor takes ``in_features``, ``hidden_features`` and the keywords
    ``layer_norm`` (default ``True``), ``norm_per_gate`` (``False``),
    ``epsilon`` (``1e-5``), ``gate_fn`` (``sigmoid``), ``activation_fn``
    (``tanh``), ``kernel_init`` (``lecun_normal()``),
    ``recurrent_kernel_init`` (``orthogonal()``), ``bias_init`` (zeros),
    ``dtype``, ``param_dtype``, ``carry_init`` and ``rngs``, with the meanings
    of :class:`lnjax.linen.LNSimpleCell`'s attributes.

    Attributes:
      in_features: the number of input features.
      hidden_features: the number of hidden units H.
      spec: the cell's options and equations, a :class:`~lnjax.recurrent.SimpleSpec`
        (``layer_norm``, ``norm_per_gate``, ``epsilon``, ``gate_fn``,
        ``activation_fn``).
      input_kernel: ``W_x``, an ``nnx.Param`` of ``(in_features, H)``.
      recurrent_kernel: ``W_h``, an ``nnx.Param`` of ``(H, H)``.
      bias: ``b``, an ``nnx.Param`` of ``(H,)``.
      scale: the layer norm's gain, an ``nnx.Param`` of ``(H,)`` (with
        ``layer_norm``).
      dtype: the dtype of the computation (default ``None``: inferred from the
        inputs and the parameters).
      param_dtype: the dtype of the parameters (default ``jnp.float32``).
      carry_init: the initializer of :meth:`initialize_carry`'s carry (default
        zeros).

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from lnjax import nnx as lnnx
      >>> rnn = nnx.RNN(lnnx.LNSimpleCell(3, 8, rngs=nnx.Rngs(0)))
      >>> rnn(jnp.ones((2, 5, 3))).shape
      (2, 5, 8)
    """


class LNGRUCell(_Cell):
    """LN-GRU cell (equations 26-28), a drop-in cell for ``flax.nnx.RNN``.

    Same equations, options and parameter names as :class:`lnjax.linen.LNGRUCell`.

    The constructor takes ``in_features``, ``hidden_features`` and the keywords
    ``layer_norm`` (default ``True``), ``norm_per_gate`` (``False``),
    ``epsilon`` (``1e-5``), ``gate_fn`` (``sigmoid``), ``activation_fn``
    (``tanh``), ``kernel_init`` (``lecun_normal()``),
    ``recurrent_kernel_init`` (``orthogonal()``), ``bias_init`` (zeros),
    ``dtype``, ``param_dtype``, ``carry_init`` and ``rngs``, with the meanings
    of :class:`lnjax.linen.LNGRUCell`'s attributes.

    Attributes:
      in_features: the number of input features.
      hidden_features: the number of hidden units H.
      spec: the cell's options and equations, a :class:`~lnjax.recurrent.GRUSpec`
        (``layer_norm``, ``norm_per_gate``, ``epsilon``, ``gate_fn``,
        ``activation_fn``).
      input_kernel: ``W_x``, an ``nnx.Param`` of ``(in_features, 3H)``.
      recurrent_kernel: ``W_h``, an ``nnx.Param`` of ``(H, 3H)``.
      bias: ``b``, an ``nnx.Param`` of ``(3H,)``.
      recurrent_bias: the candidate's recurrent bias, an ``nnx.Param`` of
        ``(H,)``.
      input_scale: the input path's layer-norm gain, an ``nnx.Param`` of
        ``(3H,)`` (with ``layer_norm``).
      recurrent_scale: the recurrent path's layer-norm gain, an ``nnx.Param``
        of ``(3H,)`` (with ``layer_norm``).
      dtype: the dtype of the computation (default ``None``: inferred from the
        inputs and the parameters).
      param_dtype: the dtype of the parameters (default ``jnp.float32``).
      carry_init: the initializer of :meth:`initialize_carry`'s carry (default
        zeros).

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from lnjax import nnx as lnnx
      >>> cell = lnnx.LNGRUCell(3, 4, rngs=nnx.Rngs(0))
      >>> cell(cell.initialize_carry((2, 3)), jnp.ones((2, 3)))[1].shape
      (2, 4)
    """

    _spec_type = R.GRUSpec


class LNLSTMCell(_Cell):
    """LN-LSTM cell (equations 20-22), a drop-in cell for ``flax.nnx.RNN``.

    Same equations, options and parameter names as :class:`lnjax.linen.LNLSTMCell`.

    The constructor takes ``in_features``, ``hidden_features`` and the keywords
    ``layer_norm`` (default ``True``), ``norm_per_gate`` (``False``),
    ``epsilon`` (``1e-5``), ``gate_fn`` (``sigmoid``), ``activation_fn``
    (``tanh``), ``carry_normalized_cell`` (``False``), ``kernel_init``
    (``lecun_normal()``), ``recurrent_kernel_init`` (``orthogonal()``),
    ``bias_init`` (zeros), ``dtype``, ``param_dtype``, ``carry_init`` and
    ``rngs``, with the meanings of :class:`lnjax.linen.LNLSTMCell`'s attributes.

    Attributes:
      in_features: the number of input features.
      hidden_features: the number of hidden units H.
      spec: the cell's options and equations, a :class:`~lnjax.recurrent.LSTMSpec`
        (``layer_norm``, ``norm_per_gate``, ``epsilon``, ``gate_fn``,
        ``activation_fn``, ``carry_normalized_cell``).
      input_kernel: ``W_x``, an ``nnx.Param`` of ``(in_features, 4H)``.
      recurrent_kernel: ``W_h``, an ``nnx.Param`` of ``(H, 4H)``.
      bias: ``b``, an ``nnx.Param`` of ``(4H,)``.
      input_scale: the input path's layer-norm gain, an ``nnx.Param`` of
        ``(4H,)`` (with ``layer_norm``).
      recurrent_scale: the recurrent path's layer-norm gain, an ``nnx.Param``
        of ``(4H,)`` (with ``layer_norm``).
      cell_scale: the gain of ``LN(c_t)``, an ``nnx.Param`` of ``(H,)`` (with
        ``layer_norm``).
      cell_bias: the bias of ``LN(c_t)``, an ``nnx.Param`` of ``(H,)`` (with
        ``layer_norm``).
      dtype: the dtype of the computation (default ``None``: inferred from the
        inputs and the parameters).
      param_dtype: the dtype of the parameters (default ``jnp.float32``).
      carry_init: the initializer of :meth:`initialize_carry`'s carry (default
        zeros).

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from lnjax import nnx as lnnx
      >>> rnn = nnx.RNN(lnnx.LNLSTMCell(3, 8, rngs=nnx.Rngs(0)))
      >>> rnn(jnp.ones((2, 5, 3))).shape
      (2, 5, 8)
    """

    _spec_type = R.LSTMSpec

    def __init__(self, in_features: int, hidden_features: int, *,
                 carry_normalized_cell: bool = False, **kwargs: Any):
        super().__init__(in_features, hidden_features,
                         carry_normalized_cell=carry_normalized_cell, **kwargs)


class _Sequence(nnx.Module):
    """A cell over a whole sequence with the input path hoisted; state under ``cell``."""

    _cell_type: type = LNSimpleCell

    def __init__(self, in_features: int, hidden_features: int, *, time_major: bool = False,
                 return_carry: bool = False, reverse: bool = False, keep_order: bool = False,
                 unroll: int = 1, **cell_kwargs: Any):
        self.cell = self._cell_type(in_features, hidden_features, **cell_kwargs)
        self.time_major, self.return_carry = time_major, return_carry
        self.reverse, self.keep_order, self.unroll = reverse, keep_order, unroll

    def __call__(self, inputs, *, initial_carry=None, rngs=None, seq_lengths=None,
                 return_carry=None, time_major=None, reverse=None, keep_order=None):
        """Same keywords as ``flax.nnx.RNN.__call__`` (so it works in ``nnx.Bidirectional``)."""
        cell = self.cell
        spec = dataclasses.replace(cell.spec, name=type(self).__name__)
        inputs = checks.as_inexact_array(inputs, fn=spec.name, name="inputs")
        R.check_sequence_rank(spec.name, inputs)
        params, (inputs,) = cell._params(inputs)
        return R.run_layer(
            spec, params, inputs, initial_carry=initial_carry,
            make_carry=lambda shape: cell.initialize_carry(shape, rngs),
            defaults=self, seq_lengths=seq_lengths, return_carry=return_carry,
            time_major=time_major, reverse=reverse, keep_order=keep_order)


class LNSimpleRNN(_Sequence):
    """An LN-RNN over a sequence; its state is :class:`LNSimpleCell`'s under ``cell``.

    The constructor takes ``in_features``, ``hidden_features``, the options
    below as keywords, and any keyword of :class:`LNSimpleCell`, passed on to it.

    Attributes:
      cell: the :class:`LNSimpleCell` that holds the parameters and the options.
      time_major: inputs and outputs are ``(time, *batch, features)`` instead of
        ``(*batch, time, features)`` (default ``False``).
      return_carry: return ``(carry, outputs)`` instead of the outputs (default
        ``False``).
      reverse: run from each sequence's last valid step to its first (default
        ``False``).
      keep_order: with ``reverse``, return the outputs in time order instead
        of processing order (default ``False``, as ``flax.nnx.RNN``).
      unroll: the time steps unrolled in each iteration of the scan (default
        ``1``).

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from lnjax import nnx as lnnx
      >>> lnnx.LNSimpleRNN(3, 8, rngs=nnx.Rngs(0))(jnp.ones((2, 5, 3))).shape
      (2, 5, 8)
    """


class LNGRU(_Sequence):
    """An LN-GRU over a sequence, input path hoisted; state :class:`LNGRUCell`'s under ``cell``.

    The constructor takes ``in_features``, ``hidden_features``, the options
    below as keywords, and any keyword of :class:`LNGRUCell`, passed on to it.

    Attributes:
      cell: the :class:`LNGRUCell` that holds the parameters and the options.
      time_major: inputs and outputs are ``(time, *batch, features)`` instead of
        ``(*batch, time, features)`` (default ``False``).
      return_carry: return ``(carry, outputs)`` instead of the outputs (default
        ``False``).
      reverse: run from each sequence's last valid step to its first (default
        ``False``).
      keep_order: with ``reverse``, return the outputs in time order instead
        of processing order (default ``False``, as ``flax.nnx.RNN``).
      unroll: the time steps unrolled in each iteration of the scan (default
        ``1``).

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from lnjax import nnx as lnnx
      >>> lnnx.LNGRU(3, 8, rngs=nnx.Rngs(0))(jnp.ones((2, 5, 3))).shape
      (2, 5, 8)
    """

    _cell_type = LNGRUCell


class LNLSTM(_Sequence):
    """An LN-LSTM over a sequence, input path hoisted; state :class:`LNLSTMCell`'s under ``cell``.

    The constructor takes ``in_features``, ``hidden_features``, the options
    below as keywords, and any keyword of :class:`LNLSTMCell`, passed on to it.

    Attributes:
      cell: the :class:`LNLSTMCell` that holds the parameters and the options.
      time_major: inputs and outputs are ``(time, *batch, features)`` instead of
        ``(*batch, time, features)`` (default ``False``).
      return_carry: return ``(carry, outputs)`` instead of the outputs (default
        ``False``).
      reverse: run from each sequence's last valid step to its first (default
        ``False``).
      keep_order: with ``reverse``, return the outputs in time order instead
        of processing order (default ``False``, as ``flax.nnx.RNN``).
      unroll: the time steps unrolled in each iteration of the scan (default
        ``1``).

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from lnjax import nnx as lnnx
      >>> layer = lnnx.LNLSTM(3, 8, return_carry=True, rngs=nnx.Rngs(0))
      >>> (c, h), y = layer(jnp.ones((2, 5, 3)), seq_lengths=jnp.array([5, 1]))
      >>> y.shape, h.shape
      ((2, 5, 8), (2, 8))
    """

    _cell_type = LNLSTMCell
