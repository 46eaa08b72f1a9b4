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


def batch_renorm(x, scale=None, bias=None, *, running_mean, running_var, r_max=3.0, d_max=5.0,
                 axis=0, epsilon=1e-5, mask=None):
    """Batch renormalization (Ioffe 2017), float64: ``(y, mean, var)`` of the batch.

    r = clip(sigma_B / sigma, 1/r_max, r_max), d = clip((mu_B - mu) / sigma, -d_max, d_max),
    y = scale * ((x - mu_B) / sigma_B * r + d) + bias, sigma from the running variance.
    """
    x = np.asarray(x, np.float64)
    axes = _axes(x.ndim, axis)
    feat = tuple(i for i in range(x.ndim) if i not in axes)
    mean, var, _ = moments(x, axes, mask)
    mu = _feature(running_mean, x.shape, feat)
    sigma = np.sqrt(_feature(running_var, x.shape, feat) + epsilon)
    sigma_b = np.sqrt(var + epsilon)
    r = np.clip(sigma_b / sigma, 1 / r_max, r_max)
    d = np.clip((mean - mu) / sigma, -d_max, d_max)
    y = (x - mean) / sigma_b * r + d
    y = _affine(y, _feature(scale, x.shape, feat), _feature(bias, x.shape, feat))
    fshape = tuple(x.shape[a] for a in feat)
    return y, mean.reshape(fshape), var.reshape(fshape)


def weight_norm(v, g, *, axis=0, epsilon=1e-12):
    v = np.asarray(v, np.float64)
    kept = () if axis is None else _axes(v.ndim, axis)
    red = tuple(i for i in range(v.ndim) if i not in kept)
    norm = np.sqrt((v * v).sum(axis=red, keepdims=True) + epsilon)
    return _feature(g, v.shape, kept) * v / norm


# ---------------------------------------------------------------- recurrent


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def _ln_segments(v, segments, scale=None, epsilon=1e-5):
    """Layer norm of each consecutive segment of the last axis, then a gain."""
    parts, start = [], 0
    for size in segments:
        parts.append(layer_norm(v[..., start:start + size], epsilon=epsilon))
        start += size
    y = np.concatenate(parts, axis=-1)
    return y if scale is None else y * np.asarray(scale, np.float64)


def lstm_step(p, carry, x, *, layer_norm_on=True, per_gate=False, carry_normalized=False,
              epsilon=1e-5):
    """LN-LSTM, Eqs. 20-22 (gate order i, f, g, o), written out in float64."""
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    c, h = (np.asarray(a, np.float64) for a in carry)
    x = np.asarray(x, np.float64)
    hidden = h.shape[-1]
    segments = (hidden,) * 4 if per_gate else (4 * hidden,)
    wx, wh = x @ p["input_kernel"], h @ p["recurrent_kernel"]
    if layer_norm_on:
        wx = _ln_segments(wx, segments, p["input_scale"], epsilon)
        wh = _ln_segments(wh, segments, p["recurrent_scale"], epsilon)
    gates = wh + wx + p["bias"]
    i, f, g, o = (gates[..., k * hidden:(k + 1) * hidden] for k in range(4))
    new_c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
    normed = (layer_norm(new_c, p["cell_scale"], p["cell_bias"], epsilon=epsilon)
              if layer_norm_on else new_c)
    new_h = _sigmoid(o) * np.tanh(normed)
    return (normed if carry_normalized else new_c, new_h), new_h


def gru_step(p, h, x, *, layer_norm_on=True, per_gate=False, epsilon=1e-5):
    """LN-GRU, Eqs. 26-28, written out in float64."""
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    h, x = np.asarray(h, np.float64), np.asarray(x, np.float64)
    n = h.shape[-1]
    segments = (n, n, n) if per_gate else (2 * n, n)
    wx, wh = x @ p["input_kernel"], h @ p["recurrent_kernel"]
    if layer_norm_on:
        wx = _ln_segments(wx, segments, p["input_scale"], epsilon)
        wh = _ln_segments(wh, segments, p["recurrent_scale"], epsilon)
    wx = wx + p["bias"]
    z = wx[..., :n] + wh[..., :n]
    r = wx[..., n:2 * n] + wh[..., n:2 * n]
    candidate = np.tanh(wx[..., 2 * n:] + _sigmoid(r) * (wh[..., 2 * n:] + p["recurrent_bias"]))
    new_h = (1 - _sigmoid(z)) * h + _sigmoid(z) * candidate
    return new_h, new_h


def simple_step(p, h, x, *, layer_norm_on=True, epsilon=1e-5):
    """LN-RNN, Eq. 4, written out in float64."""
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    h, x = np.asarray(h, np.float64), np.asarray(x, np.float64)
    a = h @ p["recurrent_kernel"] + x @ p["input_kernel"]
    if layer_norm_on:
        a = layer_norm(a, p["scale"], epsilon=epsilon)
    new_h = np.tanh(a + p["bias"])
    return new_h, new_h


def run_sequence(step, carry, xs, seq_lengths=None, reverse=False):
    """Batch-major ``xs`` (B, T, F), one sequence at a time, stopping at each length.

    With ``reverse`` each sequence runs from its last valid step to its first.
    Returns ``(final carries, outputs)`` in time order; outputs past a length
    are zero, and a sequence of length 0 keeps its initial carry.
    """
    xs = np.asarray(xs, np.float64)
    batch, steps = xs.shape[:2]
    lengths = [steps] * batch if seq_lengths is None else [int(n) for n in seq_lengths]
    tuple_carry = isinstance(carry, tuple)
    width = (carry[-1] if tuple_carry else carry).shape[-1]
    outputs = np.zeros((batch, steps, width))
    finals = []
    for b in range(batch):
        c = (tuple(np.asarray(v, np.float64)[b:b + 1] for v in carry) if tuple_carry
             else np.asarray(carry, np.float64)[b:b + 1])
        order = range(lengths[b] - 1, -1, -1) if reverse else range(lengths[b])
        for t in order:
            c, y = step(c, xs[b:b + 1, t])
            outputs[b, t] = y[0]
        finals.append(c)
    if tuple_carry:
        final = tuple(np.concatenate([f[i] for f in finals]) for i in range(len(carry)))
    else:
        final = np.concatenate(finals)
    return final, outputs
