"""Float64 NumPy references: the truth lnjax is held against.

Each function computes in float64 from the definition, the slow and obvious
way, with no shared code path with :mod:`lnjax`. Masks select the positions
the statistics count; a selection with no positions has mean 0 and variance 0.
"""

from __future__ import annotations

import numpy as np


def _axes(ndim, axis):
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    return tuple(sorted(a % ndim for a in axes))


def moments(x, axes, mask=None):
    """Mean, population variance and count over ``axes`` (kept as size 1)."""
    x = np.asarray(x, np.float64)
    m = np.ones(x.shape, bool) if mask is None else np.broadcast_to(np.asarray(mask, bool), x.shape)
    n = m.sum(axis=axes, keepdims=True).astype(np.float64)
    safe = np.maximum(n, 1)
    mean = np.where(m, x, 0.0).sum(axis=axes, keepdims=True) / safe
    var = np.where(m, (x - mean) ** 2, 0.0).sum(axis=axes, keepdims=True) / safe
    return mean, var, n


def _feature(p, x_shape, feat_axes):
    if p is None:
        return None
    shape = tuple(x_shape[a] for a in feat_axes)
    target = tuple(n if i in feat_axes else 1 for i, n in enumerate(x_shape))
    return np.broadcast_to(np.asarray(p, np.float64), shape).reshape(target)


def _affine(y, scale, bias):
    if scale is not None:
        y = y * scale
    if bias is not None:
        y = y + bias
    return y


def layer_norm(x, scale=None, bias=None, *, axis=-1, epsilon=1e-6, mask=None):
    x = np.asarray(x, np.float64)
    axes = _axes(x.ndim, axis)
    mean, var, _ = moments(x, axes, mask)
    y = (x - mean) / np.sqrt(var + epsilon)
    return _affine(y, _feature(scale, x.shape, axes), _feature(bias, x.shape, axes))


def rms_norm(x, scale=None, *, axis=-1, epsilon=1e-6, mask=None):
    x = np.asarray(x, np.float64)
    axes = _axes(x.ndim, axis)
    mean_sq, _, _ = moments(x * x, axes, mask)
    y = x / np.sqrt(mean_sq + epsilon)
    return _affine(y, _feature(scale, x.shape, axes), None)


def group_norm(x, num_groups, scale=None, bias=None, *, epsilon=1e-6, mask=None):
    x = np.asarray(x, np.float64)
    c = x.shape[-1]
    gshape = x.shape[:-1] + (num_groups, c // num_groups)
    xg = x.reshape(gshape)
    gm = None if mask is None else np.broadcast_to(np.asarray(mask, bool), x.shape).reshape(gshape)
    axes = tuple(range(1, x.ndim - 1)) + (x.ndim,)
    mean, var, _ = moments(xg, axes, gm)
    y = ((xg - mean) / np.sqrt(var + epsilon)).reshape(x.shape)
    feat = (x.ndim - 1,)
    return _affine(y, _feature(scale, x.shape, feat), _feature(bias, x.shape, feat))


def instance_norm(x, scale=None, bias=None, *, epsilon=1e-6, mask=None):
    x = np.asarray(x, np.float64)
    axes = tuple(range(1, x.ndim - 1))
    mean, var, _ = moments(x, axes, mask)
    y = (x - mean) / np.sqrt(var + epsilon)
    feat = (x.ndim - 1,)
    return _affine(y, _feature(scale, x.shape, feat), _feature(bias, x.shape, feat))


def batch_norm(x, scale=None, bias=None, *, axis=0, epsilon=1e-5, mask=None, unbiased=False):
    """Returns ``(y, mean, var)``, mean and var shaped like the feature axes."""
    x = np.asarray(x, np.float64)
    axes = _axes(x.ndim, axis)
    feat = tuple(i for i in range(x.ndim) if i not in axes)
    mean, var, n = moments(x, axes, mask)
    if unbiased:
        var = var * n / np.maximum(n - 1, 1)
    y = (x - mean) / np.sqrt(var + epsilon)
    y = _affine(y, _feature(scale, x.shape, feat), _feature(bias, x.shape, feat))
    fshape = tuple(x.shape[a] for a in feat)
    return y, mean.reshape(fshape), var.reshape(fshape)


def weight_norm(v, g, *, axis=0, epsilon=1e-12):
    v = np.asarray(v, np.float64)
    kept = () if axis is None else _axes(v.ndim, axis)
    red = tuple(i for i in range(v.ndim) if i not in kept)
    norm = np.sqrt((v * v).sum(axis=red, keepdims=True) + epsilon)
    return _feature(g, v.shape, kept) * v / norm
