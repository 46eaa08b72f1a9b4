"""Normalization functions: statistics and the normalizations built on them.

Pure ``jax.numpy``: nothing here knows about Flax or optax. Every
normalization in lnjax (the functions below and the Linen/NNX modules that wrap
them) is a :class:`NormSpec`: built once per call from the input and the axes
(which checks them), then applied. It computes its statistics with
:func:`moments` and applies them with :func:`normalize`, so the variance
algorithm is written once, here; where a row kernel of :mod:`lnjax.kernels`
applies (layer and RMS norm over trailing axes) it computes the same values.

Numerical choices, in one place:

* **Mean-shifted statistics.** The deviations are taken from a first-pass
  estimate of the mean (the *shift*), held apart from the small correction
  ``mean(x - shift)``; the output is ``((x - shift) - mean(x - shift)) /
  sigma``. Neither the variance nor the centred values suffer the catastrophic
  cancellation of ``E[x^2] - E[x]^2`` (flax's default) or the rounding of a
  large mean to the input precision (a plain two-pass). In f32 the output
  stays within about 1e-6 of a float64 reference for data whose mean is 1e6
  times their standard deviation.
* **Precision.** Statistics are computed in at least float32 whatever the
  input dtype (bf16 and f16 included); the result has the input's dtype.
* **Population variance** (divide by the count), as in the paper; an
  ``epsilon`` is added inside the square root.
* **Complex input** (batch norm, as flax allows): the mean of ``x`` and the
  variance of ``|x - mean|^2``, which is real.
* **Masks** select the positions the statistics are computed over; every
  position is normalized. A selection with no positions has mean 0 and
  variance 0 (finite, never NaN).
* **Analytic derivatives.** Every normalization computed from the
  statistics of its input is one ``custom_jvp`` (:func:`normalized`, any
  reduction axes, masks and ``axis_name`` included): reverse mode saves
  ``x`` (and a mask) and statistics-sized arrays, forward mode, ``jacfwd``
  and ``hessian`` still work. :func:`layer_norm`, :func:`rms_norm` and the
  LayerNorm/RMSNorm modules normalizing over trailing axes (no mask, no
  ``axis_name``) hand ``x``, as it is, to a row kernel instead
  (:func:`lnjax.kernels.row_norm`, tuned per platform): the same values,
  reverse mode saving ``x`` and three numbers per row.
* **Sharded jit.** No axis is merged into another by a reshape, parameters
  and running statistics take ``x``'s sharding where they meet it, and a
  sharded reduced axis costs only statistics-sized collectives (one more for
  the shift than a one-pass variance; see :mod:`lnjax.kernels`).
* **Cross-device statistics** (``axis_name``) merge the per-device sums with
  Chan's parallel formula, weighting every device by its number of selected
  positions, so devices that hold different numbers of examples give the
  statistics of the whole batch.

Reference: Ba, Kiros & Hinton, "Layer Normalization", arXiv:1607.06450 (2016).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lnjax import _checks as checks
from lnjax import _sharding, kernels
from lnjax._checks import canonicalize_axes
from lnjax._numerics import abs2, round_off

Array = jax.Array
Axes = int | Sequence[int]

__all__ = [
    "Moments",
    "NormSpec",
    "Options",
    "Running",
    "batch_norm",
    "batch_renorm",
    "canonicalize_axes",
    "group_norm",
    "instance_norm",
    "layer_norm",
    "moments",
    "normalize",
    "normalized",
    "renorm_correction",
    "renorm_limits",
    "rms_norm",
    "weight_norm",
]


# --------------------------------------------------------------------------
# Statistics: the one variance algorithm of lnjax.
# --------------------------------------------------------------------------


class Moments(NamedTuple):
    """Statistics of ``x`` over some axes, kept with the reduced axes of size 1.

    The mean is held as an unevaluated sum ``shift + mean`` so that centring
    ``(x - shift) - mean`` loses nothing to the rounding of a large mean.
    """

    shift: Array  # f32[...] centre the deviations are taken from (no gradient)
    mean: Array  # f32[...] mean of (x - shift); the mean of x is shift + mean
    var: Array  # f32[...] population variance (uncentred: mean of |x|**2); always real
    # A public field that shadows tuple.count, which typeshed declares a method.
    count: Array  # type: ignore[assignment]  # f32[...] number of positions the statistics cover


def moments(x: Array, axes: tuple[int, ...], *, mask: Array | None = None,
            centered: bool = True, fast_variance: bool = False,
            axis_name: Any = None, axis_index_groups: Any = None,
            dtype: Any = None) -> Moments:
    """Mean-shifted mean and variance of ``x`` over ``axes``.

    .. math::
        s = \\mathrm{stop\\_gradient}(\\bar x),\\quad d = x - s,\\quad
        m = \\tfrac1n \\sum d,\\quad \\sigma^2 = \\tfrac1n \\sum d^2 - m^2

    For complex ``x`` the mean is complex and the variance is that of
    ``|x - mean|^2`` (real), as in flax.

    Args:
      x: floating (or complex) input; cast to ``dtype`` (default: at least float32).
      axes: canonical axes to reduce over (see :func:`canonicalize_axes`).
      mask: optional boolean array of ``x``'s shape: the positions counted.
      centered: ``False`` gives RMS statistics (mean 0, variance E[x^2]).
      fast_variance: use ``E[x^2] - E[x]^2`` with no shift (flax's fast path,
        inaccurate far from zero; for compatibility only).
      axis_name: a mapped axis name (``shard_map``/``pmap``) over which the
        statistics are merged.
      axis_index_groups: optional groups of device indices along ``axis_name``.
      dtype: the computation dtype (default ``promote_types(x.dtype, f32)``).

    Returns:
      :class:`Moments` with the reduced axes kept as size 1.
    """
    cdtype = checks.stats_dtype(x.dtype) if dtype is None else dtype
    rdtype = jnp.finfo(cdtype).dtype  # the real dtype of counts and variances
    x = x.astype(cdtype)
    if mask is None:
        count = jnp.full((), math.prod(x.shape[a] for a in axes), rdtype)
        count = jnp.broadcast_to(count, _kept_shape(x.shape, axes))
    else:
        count = jnp.sum(mask, axis=axes, keepdims=True, dtype=rdtype)
    safe_count = jnp.maximum(count, 1)

    def masked(v):
        return v if mask is None else jnp.where(mask, v, 0)

    if centered and not fast_variance:
        # First pass: a rough mean. It need not be exact, only close to the
        # data, so that x - shift is computed exactly. Every use must see the
        # same value: rounding it to a few bits less than the dtype holds
        # stops the compiler from contracting ``x - sum * (1/n)`` into an FMA
        # in some fusions and not in others, which would centre the sums and
        # the output on different shifts.
        shift = jnp.sum(masked(x), axes, keepdims=True) / safe_count
        shift = lax.stop_gradient(round_off(shift))
    else:
        shift = jnp.zeros_like(safe_count, dtype=cdtype)
    d = masked(x - shift)
    s1 = jnp.sum(d, axes, keepdims=True) if centered else jnp.zeros_like(shift)
    s2 = jnp.sum(abs2(d), axes, keepdims=True)

    if axis_name is not None:
        shift, s1, s2, count = _merge_across_devices(shift, s1, s2, count, axis_name,
                                                     axis_index_groups)
        safe_count = jnp.maximum(count, 1)
    mean = s1 / safe_count
    var = s2 / safe_count
    if centered:
        var = jnp.maximum(var - abs2(mean), 0)
    return Moments(shift, mean, var, count)


def _kept_shape(shape: tuple[int, ...], axes: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(1 if i in axes else n for i, n in enumerate(shape))


def _merge_across_devices(shift, s1, s2, count, axis_name, axis_index_groups):
    """Chan's parallel merge of per-device shifted sums along ``axis_name``.

    Each device holds sums of deviations from its own shift. A first ``psum``
    agrees on a common shift (the count-weighted mean of the shifts, rounded
    off so every use sees one value); each device moves its sums to it by the
    exact difference ``shift_k - common``; a second ``psum`` adds them up.
    Every device gets the same ``(common, sum, sum of squares, count)``, and
    each device counts by its number of positions, however uneven.
    """
    def psum(*vs):
        if any(jnp.iscomplexobj(v) for v in vs):  # keep real sums real
            return lax.psum(vs, axis_name, axis_index_groups=axis_index_groups)
        return tuple(lax.psum(jnp.stack(vs), axis_name, axis_index_groups=axis_index_groups))

    total, weighted = psum(count, count * shift)
    common = round_off(weighted / jnp.maximum(total, 1))
    delta = shift - common  # exact: both lie close to the data
    # sum |d + delta|^2 = s2 + 2 Re(conj(delta) s1) + n |delta|^2
    cross = delta * s1 if not jnp.iscomplexobj(delta) else (jnp.conj(delta) * s1).real
    g1, g2 = psum(s1 + count * delta, s2 + 2 * cross + count * abs2(delta))
    return common, g1, g2, total


def normalize(x: Array, stats: Moments, *, epsilon: float, scale: Array | None = None,
              bias: Array | None = None, dtype: Any = None,
              correction: tuple[Array, Array] | None = None) -> Array:
    """``((x - shift) - mean) / sqrt(var + epsilon) * scale + bias``.

    Args:
      x: the input the statistics were computed from.
      stats: :class:`Moments` of ``x`` (reduced axes kept as size 1).
      epsilon: added to the variance inside the square root.
      scale, bias: optional arrays that broadcast against ``x``.
      dtype: the result dtype (default: ``x``'s dtype).
      correction: optional ``(r, d)`` of batch renormalization
        (:func:`renorm_correction`): the normalized value becomes ``xhat * r + d``
        before the scale and bias.

    Returns:
      The normalized array.
    """
    cdtype = jnp.result_type(stats.shift, stats.var)
    xs = x.astype(cdtype)
    # As flax does: the gain folds into the reciprocal standard deviation before it
    # meets x (one product per element); g (xhat r + d) + b = (x - mu) (r g / sigma) +
    # (d g + b), so r = 1, d = 0 gives batch norm's result bit for bit.
    factor = lax.rsqrt(stats.var + epsilon)
    offset = None
    if correction is not None:
        r, offset = correction
        factor = factor * r
    if scale is not None:
        factor = factor * scale
        offset = None if offset is None else offset * scale
    if bias is not None:
        offset = bias if offset is None else offset + bias
    y = ((xs - stats.shift) - stats.mean) * factor
    if offset is not None:
        y = y + offset
    return y.astype(x.dtype if dtype is None else dtype)


def renorm_correction(stats: Moments, running: Moments, *, epsilon: Any, r_max: Any,
                      d_max: Any) -> tuple[Array, Array]:
    """Batch renormalization's ``(r, d)`` (Ioffe 2017), constants of the gradient.

    .. math::
        r = \\mathrm{clip}_{[1/r_{max}, r_{max}]}(\\sigma_B / \\sigma),\\quad
        d = \\mathrm{clip}_{[-d_{max}, d_{max}]}((\\mu_B - \\mu) / \\sigma)

    with the batch statistics ``stats`` and the running ones ``running``
    (variances without ``epsilon``; it is added to both). ``mu_B - mu`` is
    taken as ``(shift_B - shift) + mean_B``: exact far from zero.
    """
    sigma_b = jnp.sqrt(stats.var + epsilon)
    rsigma = lax.rsqrt(running.var + epsilon)
    r_max = jnp.asarray(r_max, stats.var.dtype)
    d_max = jnp.asarray(d_max, stats.var.dtype)
    r = lax.stop_gradient(jnp.clip(sigma_b * rsigma, 1 / r_max, r_max))
    d = lax.stop_gradient(jnp.clip(((stats.shift - running.shift) + stats.mean) * rsigma,
                                   -d_max, d_max))
    return r, d


# --------------------------------------------------------------------------
# The analytic path: statistics -> normalize -> scale/bias as one custom_jvp.
# --------------------------------------------------------------------------


class Options(NamedTuple):
    """The static options of :func:`normalized` (hashable: a ``custom_jvp``'s nondiff argument)."""

    axes: tuple[int, ...]  # canonical axes the statistics run over
    centered: bool = True  # False: RMS statistics (no mean)
    fast_variance: bool = False  # E[x^2] - E[x]^2 (flax's fast path)
    unbiased: bool = False  # normalize with n/(n-1) * var (batch norm)
    axis_name: Any = None  # mapped axis the statistics are merged over
    axis_index_groups: Any = None  # a tuple of tuples, or None
    stats_dtype: Any = None  # the dtype the statistics are computed in
    out_dtype: Any = None  # the result's dtype
    epsilon: float | None = None  # a concrete epsilon (None: the epsilon operand)


class Running(NamedTuple):
    """Batch renormalization's operands: the running moments and the limits of ``(r, d)``."""

    moments: Moments  # the running mean and variance (variance without epsilon)
    r_max: Any
    d_max: Any


def normalized(x: Array, scale: Array | None, bias: Array | None, mask: Array | None,
               epsilon: Any, running: Running | None, opts: Options) -> tuple[Array, Moments]:
    """``(y, moments)``: ``x`` normalized over ``opts.axes`` with its own statistics.

    The one path every normalization over any axes takes (the row kernels of
    :mod:`lnjax.kernels` compute the same values for trailing axes): the
    statistics of :func:`moments` (``n/(n-1)`` times the variance if
    ``opts.unbiased``), :func:`normalize` with ``scale`` and ``bias`` (of
    ``x``'s rank, broadcasting), and with ``running`` batch renormalization's
    correction (:func:`renorm_correction`).

    Real ``x`` is differentiated analytically (a ``custom_jvp``); the tangent,
    linear in the tangents of ``x``, ``scale``, ``bias`` and ``epsilon``, is::

        ty = g rs rc (tx - a - xc rs^2 (k c + teps / 2)) + (xc rs rc + d) tg + tb,
        a = mean_m tx,  c = mean_m tx xc,  xc = x - mu,  rs = 1 / sqrt(k var + eps)

    (``mean_m``: over the reduced axes and the mask's positions, across
    devices with ``axis_name``; ``k = n/(n-1)`` or 1; ``rc, d`` the renorm
    correction, constants). JAX transposes it into the analytic backward:
    reverse mode saves ``x``, the parameters and the statistics (and the
    mask) and recomputes ``x - shift``; forward mode, ``jacfwd`` and
    ``hessian`` differentiate it as ordinary code. Complex ``x`` (batch norm) is differentiated by
    autodiff of the same composition.

    Example:
      >>> import jax.numpy as jnp
      >>> x = jnp.array([[1.0, 2.0], [3.0, 6.0]])
      >>> opts = Options((0,), epsilon=0.0, stats_dtype=jnp.float32, out_dtype=jnp.float32)
      >>> y, st = normalized(x, None, None, None, None, None, opts)
      >>> [float(v) for v in y[:, 1]], float((st.shift + st.mean)[0, 1])
      ([-1.0, 1.0], 4.0)
    """
    if jnp.iscomplexobj(x):
        return _normalized(x, scale, bias, mask, epsilon, running, opts)
    return _normalized_real(x, scale, bias, mask, epsilon, running, opts)


def _normalized(x, scale, bias, mask, epsilon, running, opts):
    """The composition itself: statistics, correction, normalize."""
    y, st, _ = _forward(x, scale, bias, mask, epsilon, running, opts)
    return y, st


def _forward(x, scale, bias, mask, epsilon, running, opts):
    """``(y, moments, correction)``: what the tangent needs besides the operands."""
    eps = opts.epsilon if opts.epsilon is not None else epsilon
    st = moments(x, opts.axes, mask=mask, centered=opts.centered,
                 fast_variance=opts.fast_variance, axis_name=opts.axis_name,
                 axis_index_groups=opts.axis_index_groups, dtype=opts.stats_dtype)
    if opts.unbiased:
        st = st._replace(var=st.var * _unbiased_factor(st.count))
    correction = None if running is None else renorm_correction(
        st, running.moments, epsilon=eps, r_max=running.r_max, d_max=running.d_max)
    y = normalize(x, st, epsilon=eps, scale=scale, bias=bias, dtype=opts.out_dtype,
                  correction=correction)
    return y, st, correction


def _unbiased_factor(count: Array) -> Array:
    return count / jnp.maximum(count - 1, 1)


_normalized_real = jax.custom_jvp(_normalized, nondiff_argnums=(6,))


@_normalized_real.defjvp
def _normalized_jvp(opts, primals, tangents):
    x, scale, bias, mask, epsilon, running = primals
    tx, tscale, tbias, _, teps, _ = tangents
    y, st, correction = _forward(x, scale, bias, mask, epsilon, running, opts)
    eps = opts.epsilon if opts.epsilon is not None else epsilon
    # Reverse mode saves the operands of the linear tangent and recomputes x - shift.
    linear = jax.checkpoint(functools.partial(_tangent, opts=opts), prevent_cse=False)
    ty, tmean, tvar = linear(x, scale, mask, eps, st, correction, tx, tscale, tbias,
                             None if opts.epsilon is not None else teps)
    zero = jnp.zeros_like(st.count)
    return (y, st), (ty, Moments(jnp.zeros_like(st.shift), tmean, tvar, zero))


def _tangent(x, scale, mask, eps, st, correction, tx, tscale, tbias, teps, *, opts):
    """``(ty, t mean, t var)``: linear in ``(tx, tscale, tbias, teps)``.

    Written as ``ty = gain tx + (x - shift) B + A`` with ``gain``, ``B`` and
    ``A`` formed on the statistics and the parameters before they meet ``x``
    (``x - mu = (x - shift) - mean``, the small ``mean`` moved into ``A``).
    """
    cdtype = st.var.dtype
    axes, axis_name, groups = opts.axes, opts.axis_name, opts.axis_index_groups

    def mean_m(v):  # the mean over the reduced axes and the mask's positions
        s = jnp.sum(v if mask is None else jnp.where(mask, v, 0), axes, keepdims=True)
        if axis_name is not None:
            s = lax.psum(s, axis_name, axis_index_groups=groups)
        return s / jnp.maximum(st.count, 1)

    xs, tx = x.astype(cdtype), tx.astype(cdtype)
    k = _unbiased_factor(st.count) if opts.unbiased else 1
    rs = lax.rsqrt(st.var + eps)
    # x - mu = (x - shift) - mean, with the mean (a small correction) applied to the
    # per-group terms rather than to x: one per-group array fewer meets x.
    xd = xs - st.shift if opts.centered else xs
    a = mean_m(tx) if opts.centered else None
    cc = mean_m(tx * xd)  # half the tangent of the (biased) variance
    if a is not None:
        cc = cc - st.mean * a
    # d rs = -rs^3 (k cc + teps / 2)
    drs = k * cc if teps is None else k * cc + teps.astype(cdtype) / 2
    rc, d = (None, None) if correction is None else correction
    # ty = gain tx + xd B + A, with B and A small (per group and feature): each sum of
    # the backward over the reduced axes is then taken once, of dy * xd for B and of dy
    # for A, and shared by the terms of dx, dscale and dbias (also when a reduced axis
    # is sharded: one partial sum crosses devices for each). The gain g rs rc joins
    # B and A where it is smaller than x; a scale along every reduced axis (layer
    # norm's) multiplies the terms of x's tangent once, at the end.
    gain = rs if rc is None else rs * rc
    last = None if scale is None else scale.astype(cdtype)
    folded = last is None or math.prod(jnp.broadcast_shapes(gain.shape, last.shape)) < xs.size
    if folded:
        if last is not None:
            gain = gain * last
        ty = gain * tx
        b_terms = [gain * (-rs * rs * drs)]
        a_terms = [] if a is None else [gain * (-a)]
    else:
        h = -rs * rs * drs
        inner = tx + xd * h
        offset = None if a is None else -(a + st.mean * h)
        ty = last * (gain * (inner if offset is None else inner + offset))
        b_terms, a_terms = [], []
    if tscale is not None:
        ts = tscale.astype(cdtype)
        b_terms.append((rs if rc is None else rs * rc) * ts)
        if d is not None:
            a_terms.append(d * ts)
    if tbias is not None:
        a_terms.append(tbias.astype(cdtype))
    if b_terms:
        b = functools.reduce(jnp.add, b_terms)
        ty = ty + xd * b
        if opts.centered:
            a_terms.append(-(st.mean * b))
    if a_terms:
        ty = ty + functools.reduce(jnp.add, a_terms)
    tmean = a if a is not None else jnp.zeros_like(st.mean)
    return ty.astype(opts.out_dtype), tmean, 2 * k * cc


# --------------------------------------------------------------------------
# NormSpec: a normalization resolved against one input, checked once.
# --------------------------------------------------------------------------


_WARNED: set[str] = set()
_WARNED_SITES: set[tuple[str, str, int]] = set()


def _say_what_ran(fn: str, no_kernel: str | None) -> None:
    """One warning per call site when ``implementation="pallas"`` does not run a compiled
    Pallas kernel: the XLA path ran (``no_kernel`` says why), or the kernel runs in
    interpret mode on a CPU."""
    if no_kernel is not None:
        message = (f"{fn}: implementation='pallas' has no kernel here ({no_kernel}); the XLA "
                   f"path ran.")
    elif jax.default_backend() == "cpu":
        message = (f"{fn}: implementation='pallas' on a CPU runs the Pallas kernel in "
                   f"interpret mode, an emulation several times slower than "
                   f"implementation='xla' (meant for testing the kernels).")
    else:
        return
    _warn_at_call_site(message)


def _warn_at_call_site(message: str) -> None:
    """``message`` as a UserWarning located at the first frame outside lnjax, flax and jax,
    once per such call site."""
    files = (getattr(sys.modules.get(n), "__file__", None) for n in ("lnjax", "flax", "jax"))
    roots = tuple(os.path.dirname(f) + os.sep for f in files if f)
    frame = inspect.currentframe()
    assert frame is not None  # CPython
    while frame.f_back is not None and frame.f_code.co_filename.startswith(roots):
        frame = frame.f_back
    site = (message, frame.f_code.co_filename, frame.f_lineno)
    if site in _WARNED_SITES:
        return
    _WARNED_SITES.add(site)
    warnings.warn_explicit(message, UserWarning, frame.f_code.co_filename, frame.f_lineno,
                           module=frame.f_globals.get("__name__", "__main__"))


def _warn_once(key: str, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, UserWarning, stacklevel=4)


class Renorm(NamedTuple):
    """Batch renormalization's correction (Ioffe 2017): the running statistics and the limits."""

    running_mean: Any  # f32[features] the running mean mu
    running_var: Any  # f32[features] the running variance (sigma^2 - epsilon)
    r_max: Any  # r = sigma_B / sigma is clipped to [1 / r_max, r_max]
    d_max: Any  # d = (mu_B - mu) / sigma is clipped to [-d_max, d_max]


def check_renorm_limits(r_max: Any, d_max: Any, *, fn: str) -> None:
    """Concrete limits must satisfy ``r_max >= 1`` and ``d_max >= 0`` (traced ones are taken)."""
    for name, v, low in (("r_max", r_max, 1), ("d_max", d_max, 0)):
        if isinstance(v, (int, float, np.number)) and not v >= low:
            raise ValueError(f"{fn}: {name}={v} must be >= {low} (r_max=1, d_max=0 is batch "
                             "norm).")


@dataclasses.dataclass(frozen=True)
class NormSpec:
    """A normalization resolved against one input: its axes, shapes and dtypes, checked once.

    The functions of this module and the Linen and NNX modules all describe
    what they compute with one of the constructors (:meth:`layer`,
    :meth:`instance`, :meth:`group`, :meth:`batch`), which checks the input,
    the axes and ``epsilon`` and raises errors naming ``name`` (the caller, as
    the user wrote it: ``"layer_norm"``, ``"LayerNorm"``), then call
    :meth:`apply` with their parameters. The modules keep only what is theirs:
    creating parameters and ``batch_stats``, and flax's dtype policy.

    Each constructor resolves one kind into the same few things: the reduced
    and feature axes, the statistics' :class:`Options`, and for group norm a
    :attr:`view` of ``x`` with its channels split into groups. :meth:`apply`
    then takes one path whatever the kind: a row kernel where one applies,
    otherwise :func:`normalized` (statistics, normalize, scale and bias; batch
    renormalization's correction from the running moments), or, given running
    averages, :func:`normalize` with them.

    Example:
      >>> import jax.numpy as jnp
      >>> x = jnp.array([[1.0, 2.0, 3.0]])
      >>> spec = NormSpec.layer("layer_norm", x, reduction_axes=-1, feature_axes=-1,
      ...                       epsilon=0.0)
      >>> spec.reduction_axes, spec.feature_shape
      ((1,), (3,))
      >>> y, _ = spec.apply(x)
      >>> [round(float(v), 4) for v in y[0]]
      [-1.2247, 0.0, 1.2247]
    """

    name: str  # the caller, for errors
    shape: tuple[int, ...]  # the input's shape
    dtype: Any  # the input's dtype (the default result dtype)
    reduction_axes: tuple[int, ...]  # canonical axes the statistics run over
    feature_axes: tuple[int, ...]  # canonical axes of scale and bias
    epsilon: Any  # added to the variance inside the square root
    options: Options  # the statistics' options, over the axes of x (or of its view)
    view: tuple[int, ...] | None = None  # group norm: x's shape with the channels in groups
    implementation: str | None = None  # the row kernel (see lnjax.kernels), where one applies

    @property
    def stats_dtype(self) -> Any:
        """The dtype the statistics are computed in."""
        return self.options.stats_dtype

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """The shape of ``scale`` and ``bias``: the sizes of the feature axes."""
        return tuple(self.shape[a] for a in self.feature_axes)

    @property
    def target_shape(self) -> tuple[int, ...]:
        """``x``'s shape with every non-feature axis of size 1 (parameters broadcast to it)."""
        return tuple(n if i in self.feature_axes else 1 for i, n in enumerate(self.shape))

    # ---------------------------------------------------------- constructors

    @classmethod
    def layer(cls, name: str, x: Any, *, reduction_axes: Axes, feature_axes: Axes,
              epsilon: Any, centered: bool = True, fast_variance: bool = False,
              axis_name: Any = None, axis_index_groups: Any = None, stats_dtype: Any = None,
              implementation: str | None = None,
              arg_names: tuple[str, str] = ("axis", "axis")) -> NormSpec:
        """Layer norm (``centered``) or RMS norm: statistics over ``reduction_axes``.

        ``arg_names`` are the user-facing names of the two axis arguments
        (``("axis", "axis")`` for the functions, ``("reduction_axes",
        "feature_axes")`` for the modules). ``implementation`` picks the row
        kernel (:mod:`lnjax.kernels`) where one applies.
        """
        x = checks.as_inexact_array(x, fn=name)
        checks.check_epsilon(epsilon, fn=name)
        kernels.check_implementation(implementation, fn=name)
        red = canonicalize_axes(x.ndim, reduction_axes, fn=name, name=arg_names[0],
                                shape=x.shape)
        checks.check_nonempty(x.shape, red, fn=name, name=arg_names[0])
        feat = canonicalize_axes(x.ndim, feature_axes, fn=name, name=arg_names[1],
                                 shape=x.shape)
        return cls(name, x.shape, x.dtype, red, feat, epsilon,
                   _options(x, red, epsilon, stats_dtype, centered=centered,
                            fast_variance=fast_variance, axis_name=axis_name,
                            axis_index_groups=axis_index_groups),
                   implementation=implementation)

    @classmethod
    def instance(cls, name: str, x: Any, *, feature_axes: Axes = -1, epsilon: Any,
                 fast_variance: bool = False, axis_name: Any = None,
                 axis_index_groups: Any = None, stats_dtype: Any = None) -> NormSpec:
        """Instance norm: each example and feature over the other non-batch axes.

        Axis 0 is the batch and may not be a feature axis. An input with no
        axis left to normalize over (such as ``(batch, features)``) is
        normalized over no axes, as flax does: every value is its own mean, so
        the output is the bias (masked positions included, where flax gives
        NaN). That warns once.
        """
        x = checks.as_inexact_array(x, fn=name)
        checks.check_epsilon(epsilon, fn=name)
        feat = canonicalize_axes(x.ndim, feature_axes, fn=name, name="feature_axes",
                                 shape=x.shape)
        if 0 in feat:
            raise ValueError(
                "The channel axes cannot include the leading dimension as this is assumed to "
                f"be the batch axis. ({name}: feature_axes={feature_axes!r} cannot include axis "
                f"0, the batch axis of x of shape {x.shape}.)")
        red = tuple(i for i in range(1, x.ndim) if i not in feat)
        if red:
            checks.check_nonempty(x.shape, red, fn=name, name="the spatial axes")
        else:
            _warn_once(f"{name}-no-spatial-axes", (
                f"{name}: x of shape {x.shape} with feature_axes={feature_axes!r} has no axis "
                "to normalize over, so (as in flax) the output is the bias alone; for "
                "(batch, features) input you may want LayerNorm."))
        return cls(name, x.shape, x.dtype, red, feat, epsilon,
                   _options(x, red, epsilon, stats_dtype, fast_variance=fast_variance,
                            axis_name=axis_name, axis_index_groups=axis_index_groups))

    @classmethod
    def group(cls, name: str, x: Any, num_groups: Any, *, reduction_axes: Axes | None = None,
              epsilon: Any, fast_variance: bool = False, axis_name: Any = None,
              axis_index_groups: Any = None, stats_dtype: Any = None) -> NormSpec:
        """Group norm of channels-last ``x``: ``num_groups`` groups of consecutive channels.

        ``reduction_axes`` (default: every axis but the batch) must include the
        last (channel) axis; the statistics of each group run over them.
        """
        x = checks.as_inexact_array(x, fn=name)
        checks.check_epsilon(epsilon, fn=name)
        if x.ndim < 2:
            raise ValueError(f"{name}: x must have a batch and a channel axis, got shape "
                             f"{x.shape}.")
        channels = x.shape[-1]
        if (isinstance(num_groups, bool) or not isinstance(num_groups, int | np.integer)
                or num_groups <= 0 or channels % num_groups):
            raise ValueError(f"{name}: num_groups={num_groups!r} must be a positive divisor of "
                             f"the number of channels {channels} (x of shape {x.shape}).")
        red = (tuple(range(1, x.ndim)) if reduction_axes is None else
               canonicalize_axes(x.ndim, reduction_axes, fn=name, name="reduction_axes",
                                 shape=x.shape))
        if x.ndim - 1 not in red:
            raise ValueError(f"{name}: reduction_axes={reduction_axes!r} must include the last "
                             f"(channel) axis of x of shape {x.shape}.")
        checks.check_nonempty(x.shape, red, fn=name, name="reduction_axes")
        # x viewed as (..., groups, channels per group): each group over the chosen axes
        # and its own channels.
        view = x.shape[:-1] + (int(num_groups), channels // int(num_groups))
        view_axes = tuple(a for a in red if a != x.ndim - 1) + (x.ndim,)
        return cls(name, x.shape, x.dtype, red, (x.ndim - 1,), epsilon,
                   _options(x, view_axes, epsilon, stats_dtype, fast_variance=fast_variance,
                            axis_name=axis_name, axis_index_groups=axis_index_groups),
                   view=view)

    @classmethod
    def batch(cls, name: str, x: Any, *, reduction_axes: Axes | None = None,
              feature_axes: Axes | None = None, epsilon: Any, running: bool = False,
              unbiased: bool = False, fast_variance: bool = False, axis_name: Any = None,
              axis_index_groups: Any = None, stats_dtype: Any = None) -> NormSpec:
        """Batch norm: statistics over ``reduction_axes``, parameters over the others.

        Give the reduction axes (the functions' ``axis``) or the feature axes
        (the modules' ``axis``); the other set is the rest. ``running``: the
        statistics will come from running averages, so the reduction may be
        empty. Complex input is accepted, as flax does.
        """
        x = checks.as_inexact_array(x, fn=name, complex_ok=True)
        checks.check_epsilon(epsilon, fn=name)
        if feature_axes is None:
            if reduction_axes is None:  # canonicalize_axes's own message for axis=None
                raise TypeError(f"{name}: axis=None must be an int or a tuple of ints.")
            red = canonicalize_axes(x.ndim, reduction_axes, fn=name, shape=x.shape)
            feat = tuple(i for i in range(x.ndim) if i not in red)
        else:
            feat = canonicalize_axes(x.ndim, feature_axes, fn=name, shape=x.shape)
            red = tuple(i for i in range(x.ndim) if i not in feat)
        if not running:
            checks.check_nonempty(x.shape, red, fn=name, name="axis")
            if axis_name is None and math.prod(x.shape[a] for a in red) == 1:
                _warn_at_call_site(
                    f"{name}: batch statistics over a single example (x of shape {x.shape}, "
                    f"reduced over axes {red}, each of size 1): every output is the bias"
                    + (" and the unbiased variance divides by n - 1 = 0" if unbiased else "")
                    + ". Evaluate one example with the running averages "
                      "(use_running_average=True), or use a larger batch.")
        return cls(name, x.shape, x.dtype, red, feat, epsilon,
                   _options(x, red, epsilon, stats_dtype, fast_variance=fast_variance,
                            unbiased=unbiased, axis_name=axis_name,
                            axis_index_groups=axis_index_groups))

    # ----------------------------------------------------------------- apply

    def apply(self, x: Any, scale: Any = None, bias: Any = None, *, mask: Any = None,
              stats: tuple[Any, Any] | None = None, renorm: Renorm | None = None,
              dtype: Any = None) -> tuple[Array, Moments | None]:
        """Normalizes ``x``, the input this spec was built from.

        Args:
          x: the input (its shape must be :attr:`shape`).
          scale, bias: optional parameters of :attr:`feature_shape` (or
            broadcastable to it).
          mask: optional boolean array broadcastable to ``x``: the positions
            the statistics count.
          stats: optional ``(mean, var)`` of :attr:`feature_shape` used instead
            of the statistics of ``x`` (batch norm's running averages).
          renorm: optional :class:`Renorm`: batch renormalization's correction
            of the batch statistics towards the running ones.
          dtype: the result dtype (default: ``x``'s).

        Returns:
          ``(y, moments)``: the output and the :class:`Moments` it used, or
          ``None`` where a row kernel computed ``y`` without forming them.
        """
        x = jnp.asarray(x)
        fn = self.name
        if x.shape != self.shape:
            raise ValueError(f"{fn}: x of shape {x.shape} given to a normalization built for "
                             f"shape {self.shape}.")
        out_dtype = self.dtype if dtype is None else dtype
        fshape = self.feature_shape
        opts = self.options
        if stats is not None or renorm is not None or self.view is not None:
            no_kernel: str | None = "it is not a layer or RMS norm"
        else:
            no_kernel = kernels.why_not(self.shape, self.reduction_axes, self.feature_axes,
                                        epsilon=self.epsilon, masked=mask is not None,
                                        axis_name=opts.axis_name,
                                        fast_variance=opts.fast_variance)
        if self.implementation == "pallas":
            _say_what_ran(fn, no_kernel)
        if no_kernel is None:
            # x keeps its shape: no reshape merges an axis that may be sharded.
            params = (_sharding.match_feature_axes(
                checks.feature_param(p, name, fshape, fshape, fn=fn), x, self.feature_axes)
                for name, p in (("scale", scale), ("bias", bias)))
            y = kernels.row_norm(
                x, *params, epsilon=float(self.epsilon), centered=opts.centered,
                stats_dtype=self.stats_dtype, out_dtype=jnp.dtype(out_dtype),
                implementation=self.implementation, num_axes=len(self.reduction_axes))
            return y, None
        target = self.target_shape
        # Parameters take x's sharding of their axes (an FSDP parameter is gathered).
        scale = _sharding.match_broadcast(checks.feature_param(scale, "scale", fshape, target,
                                                               fn=fn), x)
        bias = _sharding.match_broadcast(checks.feature_param(bias, "bias", fshape, target,
                                                              fn=fn), x)
        mask = checks.broadcast_mask(mask, self.shape, fn=fn)
        if not self.reduction_axes:  # instance norm over no axes: every value is its own mean
            y = jnp.zeros(self.shape, self.stats_dtype) + (0 if bias is None else bias)
            return y.astype(out_dtype), None
        if stats is not None:  # running averages: no statistics of x, no derivative of them
            st = self._given_moments(x, *stats)
            return normalize(x, st, epsilon=self.epsilon, scale=scale, bias=bias,
                             dtype=out_dtype), st
        running = None if renorm is None else Running(
            self._given_moments(x, renorm.running_mean, renorm.running_var), renorm.r_max,
            renorm.d_max)
        _sharding.check_axis_name(opts.axis_name, fn=fn)
        opts = opts._replace(out_dtype=jnp.dtype(out_dtype))
        eps = None if opts.epsilon is not None else self.epsilon  # a traced epsilon: an operand
        if self.view is None:
            return normalized(x, scale, bias, mask, eps, running, opts)
        # Group norm: the channels (and the per-channel parameters) split into groups, the
        # gain folded into one pass over x as for the other kinds.
        scale, bias = (None if p is None else p.reshape(p.shape[:-1] + self.view[-2:])
                       for p in (scale, bias))
        y, st = normalized(x.reshape(self.view), scale, bias,
                           None if mask is None else mask.reshape(self.view), eps, running, opts)
        return y.reshape(self.shape), st

    def _given_moments(self, x: Array, mean: Any, var: Any) -> Moments:
        """Moments from a mean and variance of :attr:`feature_shape` (running averages),
        sharded as ``x`` along its feature axes."""
        fshape, target = self.feature_shape, self.target_shape

        def shaped(name, v, dtype):
            v = checks.feature_param(jnp.asarray(v), name, fshape, target, fn=self.name)
            return _sharding.match_broadcast(v.astype(dtype), x)

        mean = shaped("running_mean", mean, self.stats_dtype)
        # A variance is real, whatever dtype a caller promoted it to (flax's promote_dtype
        # makes it complex beside complex input).
        var = shaped("running_var", jnp.real(var), jnp.finfo(self.stats_dtype).dtype)
        return Moments(mean, jnp.zeros_like(mean), var, jnp.ones_like(var))

    def feature_stats(self, st: Moments | None) -> tuple[Array, Array]:
        """The mean and variance of ``st`` shaped like the feature axes (batch norm's).

        ``st`` is the moments :meth:`apply` returned, which a batch norm always forms.
        """
        if st is None:
            raise ValueError(f"{self.name}: no statistics to reshape (apply formed none).")
        # Squeezed, not reshaped: the statistics keep the sharding of x's feature axes.
        red = self.reduction_axes
        return jnp.squeeze(st.shift + st.mean, red), jnp.squeeze(st.var, red)


def _options(x: Array, axes: tuple[int, ...], epsilon: Any, stats_dtype: Any,
             **kw: Any) -> Options:
    """The statistics' :class:`Options` over ``axes`` (a concrete epsilon kept in them)."""
    groups = kw.pop("axis_index_groups", None)
    concrete = isinstance(epsilon, (int, float, np.floating)) and not isinstance(epsilon, bool)
    return Options(axes, stats_dtype=checks.stats_dtype(x.dtype) if stats_dtype is None
                   else stats_dtype, epsilon=float(epsilon) if concrete else None,
                   axis_index_groups=None if groups is None else
                   tuple(tuple(int(i) for i in g) for g in groups), **kw)


def layer_norm(x: Array, scale: Array | None = None, bias: Array | None = None, *,
               axis: Axes = -1, epsilon: float = 1e-6, mask: Array | None = None,
               implementation: str | None = None) -> Array:
    """Layer normalization: each case normalized over its own summed inputs.

    .. math::
        \\mathrm{LN}(x) = g \\odot \\frac{x - \\mu}{\\sqrt{\\sigma^2 + \\epsilon}} + b,
        \\quad \\mu = \\tfrac1H \\sum_i x_i,\\quad
        \\sigma^2 = \\tfrac1H \\sum_i (x_i - \\mu)^2

    with the statistics over ``axis`` (the H summed inputs of one case).

    Args:
      x: floating input of any shape.
      scale: optional gain ``g`` with the shape of the normalized axes
        (``x.shape[axis]``) or broadcastable to it.
      bias: optional bias ``b``, shaped like ``scale``.
      axis: the axis or axes normalized over (default: the last).
      epsilon: added to the variance inside the square root (>= 0).
      mask: optional boolean array broadcastable to ``x``: the positions the
        statistics are computed over.
      implementation: the row kernel: ``None`` (the platform's default),
        ``"xla"`` or ``"pallas"`` (see :mod:`lnjax.kernels`).

    Returns:
      An array of ``x``'s shape and dtype.

    When ``axis`` names the trailing axes and there is no mask, a row kernel
    (:mod:`lnjax.kernels`, chosen by ``implementation``) computes the result
    and its analytic derivative; otherwise :func:`normalized`, with the same
    statistics and an analytic derivative too, whatever ``implementation``
    says.

    Example:
      >>> import jax.numpy as jnp, lnjax
      >>> y = lnjax.layer_norm(jnp.array([[1.0, 2.0, 3.0]]), epsilon=0.0)
      >>> [round(float(v), 4) for v in y[0]]
      [-1.2247, 0.0, 1.2247]

    Reference: Ba, Kiros & Hinton (2016), Eqs. 3-4.
    """
    spec = NormSpec.layer("layer_norm", x, reduction_axes=axis, feature_axes=axis,
                          epsilon=epsilon, implementation=implementation)
    return spec.apply(x, scale, bias, mask=mask)[0]


def rms_norm(x: Array, scale: Array | None = None, *, axis: Axes = -1,
             epsilon: float = 1e-6, mask: Array | None = None,
             implementation: str | None = None) -> Array:
    """RMS normalization: layer norm without re-centring.

    .. math::
        \\mathrm{RMS}(x) = g \\odot \\frac{x}{\\sqrt{\\tfrac1H \\sum_i x_i^2 + \\epsilon}}

    Args:
      x: floating input of any shape.
      scale: optional gain with the shape of the normalized axes.
      axis: the axis or axes normalized over (default: the last).
      epsilon: added inside the square root (>= 0).
      mask: optional boolean array broadcastable to ``x``: the positions the
        mean square is computed over.
      implementation: the row kernel: ``None`` (the platform's default),
        ``"xla"`` or ``"pallas"`` (see :mod:`lnjax.kernels`).

    Returns:
      An array of ``x``'s shape and dtype.

    Trailing axes without a mask take a row kernel, as for :func:`layer_norm`.

    Example:
      >>> import jax.numpy as jnp, lnjax
      >>> y = lnjax.rms_norm(jnp.array([3.0, 4.0]), epsilon=0.0)
      >>> [round(float(v), 4) for v in y]
      [0.8485, 1.1314]

    Reference: Zhang & Sennrich (2019), arXiv:1910.07467.
    """
    spec = NormSpec.layer("rms_norm", x, reduction_axes=axis, feature_axes=axis,
                          epsilon=epsilon, centered=False, implementation=implementation)
    return spec.apply(x, scale, mask=mask)[0]


def group_norm(x: Array, num_groups: int, scale: Array | None = None,
               bias: Array | None = None, *, epsilon: float = 1e-6,
               mask: Array | None = None) -> Array:
    """Group normalization of channels-last ``x``.

    The C channels are split into ``num_groups`` groups of consecutive
    channels; each example's group is normalized over its channels and all
    spatial axes (every axis but the first, which is the batch).

    .. math::
        y_{n,\\ldots,c} = g_c \\frac{x_{n,\\ldots,c} - \\mu_{n,G(c)}}
        {\\sqrt{\\sigma^2_{n,G(c)} + \\epsilon}} + b_c

    Args:
      x: floating input of shape ``(N, ..., C)``.
      num_groups: number of groups; must divide C.
      scale, bias: optional per-channel arrays of shape ``(C,)``.
      epsilon: added to the variance inside the square root (>= 0).
      mask: optional boolean array broadcastable to ``x``.

    Returns:
      An array of ``x``'s shape and dtype.

    Example:
      >>> import jax.numpy as jnp, lnjax
      >>> x = jnp.arange(8.0).reshape(1, 2, 4)
      >>> lnjax.group_norm(x, 2).shape
      (1, 2, 4)

    Reference: Wu & He (2018), arXiv:1803.08494.
    """
    spec = NormSpec.group("group_norm", x, num_groups, epsilon=epsilon)
    return spec.apply(x, scale, bias, mask=mask)[0]


def instance_norm(x: Array, scale: Array | None = None, bias: Array | None = None, *,
                  epsilon: float = 1e-6, mask: Array | None = None) -> Array:
    """Instance normalization of channels-last ``x``.

    Each example and channel is normalized over its spatial axes (every axis
    but the first, the batch, and the last, the channels).

    .. math::
        y_{n,\\ldots,c} = g_c
        \\frac{x_{n,\\ldots,c} - \\mu_{n,c}}{\\sqrt{\\sigma^2_{n,c} + \\epsilon}} + b_c

    Args:
      x: floating input of shape ``(N, S1, ..., C)`` with at least one spatial
        axis.
      scale, bias: optional per-channel arrays of shape ``(C,)``.
      epsilon: added to the variance inside the square root (>= 0).
      mask: optional boolean array broadcastable to ``x``.

    Returns:
      An array of ``x``'s shape and dtype.

    Example:
      >>> import jax.numpy as jnp, lnjax
      >>> y = lnjax.instance_norm(jnp.array([[[1.0], [3.0]]]), epsilon=0.0)
      >>> [float(v) for v in y.ravel()]
      [-1.0, 1.0]

    Reference: Ulyanov, Vedaldi & Lempitsky (2016), arXiv:1607.08022.
    """
    x = checks.as_inexact_array(x, fn="instance_norm")
    if x.ndim < 3:
        raise ValueError(f"instance_norm: x must be (N, spatial..., C) with at least one "
                         f"spatial axis, got shape {x.shape}; for (N, C) use layer_norm.")
    spec = NormSpec.instance("instance_norm", x, epsilon=epsilon)
    return spec.apply(x, scale, bias, mask=mask)[0]


def _reduction_axes(fn: str, x: Any, reduction_axes: Axes | None, axis: Axes | None) -> Axes:
    """``reduction_axes`` (default 0), or the deprecated ``axis`` with a warning that says
    which axes it reduces."""
    if axis is None:
        return 0 if reduction_axes is None else reduction_axes
    if reduction_axes is not None:
        raise TypeError(f"{fn}: pass reduction_axes only (axis is its deprecated name); got "
                        f"both reduction_axes={reduction_axes!r} and axis={axis!r}.")
    ndim = np.ndim(x)
    reduced = checks.canonicalize_axes(ndim, axis, fn=fn)
    kept = tuple(a for a in range(ndim) if a not in reduced)
    warnings.warn(
        f"{fn}: axis= is deprecated: it names the axes reduced over, here {reduced} of "
        f"x's {ndim} (the features are {kept}); pass reduction_axes={reduced} instead. "
        f"(lnjax.linen.BatchNorm's axis, as flax's, names the feature axes.)",
        DeprecationWarning, stacklevel=3)
    return axis


def batch_norm(x: Array, scale: Array | None = None, bias: Array | None = None, *,
               reduction_axes: Axes | None = None, epsilon: float = 1e-5,
               mask: Array | None = None, axis_name: Any = None,
               axis_index_groups: Any = None, unbiased: bool = False,
               axis: Axes | None = None) -> tuple[Array, Array, Array]:
    """Batch normalization: each unit normalized over the mini-batch.

    .. math::
        y = g \\odot \\frac{x - \\mu_B}{\\sqrt{\\sigma_B^2 + \\epsilon}} + b

    with the statistics over ``reduction_axes`` (the batch, and for
    convolutions the spatial axes too), optionally merged across devices along
    ``axis_name``. The axes named here are the ones *reduced over*; the axes
    left are the features. (:class:`lnjax.linen.BatchNorm`'s ``axis``, as
    flax's, names the feature axes instead.)

    Args:
      x: floating input.
      scale, bias: optional arrays with the shape of the axes *not* reduced
        (the features), or broadcastable to it.
      reduction_axes: the axis or axes the statistics are taken over (default
        0, the batch; ``(0, 1, 2)`` for NHWC images).
      epsilon: added to the variance inside the square root (>= 0).
      mask: optional boolean array broadcastable to ``x``: the examples (or
        positions) the statistics count.
      axis_name: a mapped axis (``shard_map``/``pmap``) to merge the
        statistics over: synchronized batch norm. Devices may hold different
        numbers of selected positions; each counts by its number.
      axis_index_groups: optional groups of device indices along ``axis_name``.
      unbiased: normalize with the unbiased variance ``n/(n-1) * var`` (the
        paper's choice for batch size 4).
      axis: the former name of ``reduction_axes`` (the axes reduced over);
        deprecated, with a ``DeprecationWarning`` naming the axes it reduces.

    Returns:
      ``(y, mean, var)``: the output (``x``'s shape and dtype) and the batch
      mean and variance used, shaped like the feature axes, in float32 (or
      wider).

    Raises:
      TypeError: both ``reduction_axes`` and ``axis`` are given.

    Example:
      >>> import jax.numpy as jnp, lnjax
      >>> y, mean, var = lnjax.batch_norm(jnp.array([[1.0], [3.0]]), epsilon=0.0)
      >>> [float(v) for v in y.ravel()], float(mean[0]), float(var[0])
      ([-1.0, 1.0], 2.0, 1.0)

    Reference: Ioffe & Szegedy (2015), arXiv:1502.03167.
    """
    axes = _reduction_axes("batch_norm", x, reduction_axes, axis)
    spec = NormSpec.batch("batch_norm", x, reduction_axes=axes, epsilon=epsilon,
                          unbiased=unbiased, axis_name=axis_name,
                          axis_index_groups=axis_index_groups)
    y, st = spec.apply(x, scale, bias, mask=mask)
    return (y, *spec.feature_stats(st))


def batch_renorm(x: Array, scale: Array | None = None, bias: Array | None = None, *,
                 running_mean: Array, running_var: Array, r_max: Any = 3.0, d_max: Any = 5.0,
                 reduction_axes: Axes | None = None, epsilon: float = 1e-5,
                 mask: Array | None = None, axis_name: Any = None,
                 axis_index_groups: Any = None,
                 axis: Axes | None = None) -> tuple[Array, Array, Array]:
    """Batch renormalization: batch norm corrected towards the running statistics.

    .. math::
        r = \\mathrm{clip}_{[1/r_{max},\\, r_{max}]}\\Big(\\frac{\\sigma_B}{\\sigma}\\Big),\\quad
        d = \\mathrm{clip}_{[-d_{max},\\, d_{max}]}\\Big(\\frac{\\mu_B - \\mu}{\\sigma}\\Big),\\quad
        y = g \\odot \\Big(\\frac{x - \\mu_B}{\\sigma_B}\\, r + d\\Big) + b

    with the batch statistics ``mu_B``, ``sigma_B = sqrt(var_B + epsilon)`` over
    ``reduction_axes`` (as :func:`batch_norm`, exact and optionally masked or merged
    across devices), ``sigma = sqrt(running_var + epsilon)``, and ``r``, ``d``
    held constant in the gradient. ``r_max=1, d_max=0`` is batch norm; the
    paper ramps them up from there over training (:func:`renorm_limits`).

    Args:
      x: floating input.
      scale, bias: optional arrays with the shape of the axes not reduced.
      running_mean, running_var: the running statistics ``mu`` and
        ``sigma**2 - epsilon``, shaped like the axes not reduced.
      r_max: the largest correction of the scale (>= 1; may be traced).
      d_max: the largest correction of the shift, in running standard
        deviations (>= 0; may be traced).
      reduction_axes: the axis or axes the statistics are taken over (default
        0, the batch), as in :func:`batch_norm`.
      epsilon: added to the variances inside the square roots (>= 0).
      mask: optional boolean array broadcastable to ``x``: the positions the
        statistics count.
      axis_name: a mapped axis to merge the batch statistics over.
      axis_index_groups: optional groups of device indices along ``axis_name``.
      axis: the former name of ``reduction_axes``; deprecated, as in
        :func:`batch_norm`.

    Returns:
      ``(y, mean, var)``: the output (``x``'s shape and dtype) and the batch
      mean and variance (to update the running statistics with), shaped like
      the feature axes.

    Example:
      >>> import jax.numpy as jnp, lnjax
      >>> x = jnp.array([[1.0], [3.0]])
      >>> y, mean, var = lnjax.batch_renorm(x, running_mean=jnp.array([2.0]),
      ...                                   running_var=jnp.array([4.0]), epsilon=0.0)
      >>> [float(v) for v in y.ravel()]  # r = sigma_B / sigma = 1/2, d = 0
      [-0.5, 0.5]

    Reference: Ioffe (2017), "Batch Renormalization", arXiv:1702.03275.
    """
    axes = _reduction_axes("batch_renorm", x, reduction_axes, axis)
    spec = NormSpec.batch("batch_renorm", x, reduction_axes=axes, epsilon=epsilon,
                          axis_name=axis_name, axis_index_groups=axis_index_groups)
    check_renorm_limits(r_max, d_max, fn="batch_renorm")
    y, st = spec.apply(x, scale, bias, mask=mask,
                       renorm=Renorm(running_mean, running_var, r_max, d_max))
    return (y, *spec.feature_stats(st))


def renorm_limits(step: Any, *, r_max: float = 3.0, d_max: float = 5.0,
                  warmup_steps: int = 5000, r_steps: int = 35000,
                  d_steps: int = 20000) -> tuple[Array, Array]:
    """Batch renormalization's ``(r_max, d_max)`` at ``step``, ramped up as in the paper.

    Both start at batch norm's values (1 and 0) and stay there for
    ``warmup_steps``; then ``r_max`` rises linearly to its final value over
    ``r_steps`` steps and ``d_max`` over ``d_steps`` (the paper: 5k steps of
    batch norm, r_max to 3 by 40k steps, d_max to 5 by 25k). Pass the result to
    :func:`batch_renorm` or to ``BatchReNorm(...)(x, r_max=..., d_max=...)``;
    ``step`` may be traced (e.g. ``state.step`` inside a jitted train step).

    Example:
      >>> import lnjax
      >>> [float(v) for v in lnjax.renorm_limits(0)], [float(v) for v in lnjax.renorm_limits(40000)]
      ([1.0, 0.0], [3.0, 5.0])
    """
    t = jnp.maximum(jnp.asarray(step, jnp.float32) - warmup_steps, 0)
    r = 1 + (r_max - 1) * jnp.minimum(t / max(r_steps, 1), 1)
    d = d_max * jnp.minimum(t / max(d_steps, 1), 1)
    return r, d


def weight_norm(v: Array, g: Array, *, axis: Axes | None = 0,
                epsilon: float = 1e-12) -> Array:
    """Weight normalization: the weight ``g * v / ||v||``.

    .. math::
        w_i = \\frac{g_i}{\\lVert v_i \\rVert} v_i

    where ``i`` runs over ``axis`` (the output units) and the norm is over all
    other axes. For a PyTorch-style ``(out, in)`` matrix use ``axis=0``; for a
    Flax ``Dense`` kernel ``(in, out)`` use ``axis=-1``; ``axis=None`` takes
    one norm over the whole array.

    Args:
      v: the direction parameter.
      g: the gain, of shape ``tuple(v.shape[a] for a in axis)`` (or
        broadcastable to it; a scalar when ``axis`` is None).
      axis: the axis or axes kept (one norm per index along them).
      epsilon: added to the squared norm, so a zero ``v`` gives 0, not NaN.

    Returns:
      The weight, of ``v``'s shape and dtype (computed in at least float32).

    Example:
      >>> import jax.numpy as jnp, lnjax
      >>> w = lnjax.weight_norm(jnp.array([[3.0, 4.0]]), jnp.array([10.0]))
      >>> [float(a) for a in w[0]]
      [6.0, 8.0]

    Reference: Salimans & Kingma (2016), arXiv:1602.07868; Table 1 of Ba et al.
    """
    fn = "weight_norm"
    v = checks.as_inexact_array(v, fn=fn, name="v")
    checks.check_epsilon(epsilon, fn=fn)
    kept = () if axis is None else canonicalize_axes(v.ndim, axis, fn=fn, shape=v.shape)
    red = tuple(i for i in range(v.ndim) if i not in kept)
    feature_shape = tuple(v.shape[a] for a in kept)
    target = tuple(n if i in kept else 1 for i, n in enumerate(v.shape))
    gain = _sharding.match_broadcast(checks.feature_param(g, "g", feature_shape, target, fn=fn),
                                     v)
    vs = v.astype(checks.stats_dtype(v.dtype))
    w = vs * lax.rsqrt(jnp.sum(vs * vs, axis=red, keepdims=True) + epsilon) * gain
    return w.astype(v.dtype)
