"""NNX normalization layers: the modules of :mod:`lnjax.linen.normalization` for flax.nnx.

The drop-ins subclass the ``flax.nnx`` modules of the same names (see
:mod:`lnjax.nnx`), ``BatchReNorm`` subclasses ``BatchNorm``. Each builds a
:class:`~lnjax.normalization.NormSpec` from its input and applies it with its
``Param`` and ``BatchStat`` attributes. An attribute a Linen module has too
reads as it does there.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lnjax import _checks as checks
from lnjax import _modules as docs
from lnjax._modules import stats_dtype
from lnjax.normalization import NormSpec, Renorm, check_renorm_limits

__all__ = ["BatchNorm", "BatchReNorm", "GroupNorm", "InstanceNorm", "LayerNorm", "RMSNorm"]

# Each module's attributes, in the order its Attributes section lists them.
_COMMON = ("epsilon", "dtype", "param_dtype", "use_bias", "use_scale")
_DEVICES = ("axis_name", "axis_index_groups", "use_fast_variance", "promote_dtype")
_LAYER_NORM = ("num_features", "scale", "bias", *_COMMON, "reduction_axes", "feature_axes",
               *_DEVICES, "implementation")
_RMS_NORM = ("num_features", "scale", "epsilon", "dtype", "param_dtype", "use_scale",
             "reduction_axes", "feature_axes", *_DEVICES, "implementation")
_GROUP_NORM = ("num_features", "num_groups", "group_size", "feature_axis", "scale", "bias",
               *_COMMON, "reduction_axes", *_DEVICES)
_INSTANCE_NORM = ("num_features", "scale", "bias", *_COMMON, "feature_axes", *_DEVICES)
_BATCH_NORM = ("num_features", "scale", "bias", "mean", "var", "use_running_average", "axis",
               "momentum", *_COMMON, *_DEVICES, "unbiased")
_BATCH_RENORM = (*_BATCH_NORM, "r_max", "d_max")


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


@docs.attributes(docs.LAYER_NORM, docs.NNX_NORMALIZATION, names=_LAYER_NORM)
class LayerNorm(nnx.LayerNorm):
    """Layer normalization (Ba, Kiros & Hinton 2016), a drop-in for ``flax.nnx.LayerNorm``.

    The constructor is ``flax.nnx.LayerNorm``'s, plus the keyword ``implementation``.

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
            stats_dtype=stats_dtype(x, self.dtype), implementation=self.implementation,
            arg_names=("reduction_axes", "feature_axes"))
        return spec.apply(x, _shaped(scale, spec), _shaped(bias, spec), mask=mask)[0]


@docs.attributes(docs.RMS_NORM, docs.NNX_NORMALIZATION, names=_RMS_NORM)
class RMSNorm(nnx.RMSNorm):
    """RMS normalization, a drop-in for ``flax.nnx.RMSNorm``.

    The constructor is ``flax.nnx.RMSNorm``'s, plus the keyword ``implementation``.

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
            axis_index_groups=self.axis_index_groups, stats_dtype=stats_dtype(x, self.dtype),
            implementation=self.implementation, arg_names=("reduction_axes", "feature_axes"))
        return spec.apply(x, _shaped(scale, spec), mask=mask)[0]


@docs.attributes(docs.GROUP_NORM, docs.NNX_NORMALIZATION, names=_GROUP_NORM)
class GroupNorm(nnx.GroupNorm):
    """Group normalization, a drop-in for ``flax.nnx.GroupNorm``.

    The constructor is ``flax.nnx.GroupNorm``'s: ``num_features``, then
    ``num_groups`` or ``group_size`` (with ``num_groups=None``).

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
            stats_dtype=stats_dtype(x, self.dtype))
        return spec.apply(x, scale, bias, mask=mask)[0]


@docs.attributes(docs.INSTANCE_NORM, docs.NNX_NORMALIZATION, names=_INSTANCE_NORM)
class InstanceNorm(nnx.InstanceNorm):
    """Instance normalization, a drop-in for ``flax.nnx.InstanceNorm``.

    The constructor is ``flax.nnx.InstanceNorm``'s.

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
            axis_index_groups=self.axis_index_groups, stats_dtype=stats_dtype(x, self.dtype))
        return spec.apply(x, _shaped(scale, spec), _shaped(bias, spec), mask=mask)[0]


@docs.attributes(docs.BATCH_NORM, docs.NNX_NORMALIZATION, names=_BATCH_NORM)
class BatchNorm(nnx.BatchNorm):
    """Batch normalization, a drop-in for ``flax.nnx.BatchNorm``.

    Running averages in the ``BatchStat`` attributes ``mean`` and ``var``.
    With ``axis_name`` the statistics merge across devices, each weighted by
    the positions it counts. Beyond flax: ``unbiased=True`` normalizes with
    ``n/(n-1) * var``. The constructor is ``flax.nnx.BatchNorm``'s, plus the
    keyword ``unbiased``.

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
            axis_index_groups=self.axis_index_groups, stats_dtype=stats_dtype(x, self.dtype))
        mean, var, scale, bias = (_shaped(p, spec) for p in (mean, var, scale, bias))
        if use_running_average:
            return spec.apply(x, scale, bias, stats=(mean, var))[0]
        renorm = None if limits is None else Renorm(mean, var, *limits)
        y, st = spec.apply(x, scale, bias, mask=mask, renorm=renorm)
        mean, var = spec.feature_stats(st)
        # As flax.nnx.BatchNorm does: a variable that can be updated in place takes no
        # gradient through its update.
        can_update = self.mean._can_update or self.var._can_update  # noqa: SLF001
        update = jax.lax.stop_gradient if can_update else (lambda v: v)
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


@docs.attributes(docs.BATCH_NORM, docs.NNX_NORMALIZATION, names=_BATCH_RENORM)
class BatchReNorm(BatchNorm):
    """Batch renormalization (Ioffe 2017) for flax.nnx: :class:`BatchNorm` with a correction.

    The same equations, arguments, ``BatchStat`` attributes and ramps as
    :class:`lnjax.linen.BatchReNorm`: :class:`BatchNorm`'s constructor plus
    the keywords ``r_max`` and ``d_max``, overridable at call time
    (``layer(x, r_max=r, d_max=d)``).

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from lnjax import nnx as lnnx
      >>> layer = lnnx.BatchReNorm(1, epsilon=0.0, rngs=nnx.Rngs(0))
      >>> [float(v) for v in layer(jnp.array([[1.0], [3.0]])).ravel()]  # r = 1, d = 2: y = x
      [1.0, 3.0]
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
