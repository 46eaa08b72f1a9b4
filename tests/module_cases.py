"""What the Linen and NNX module tests share: the configurations each module is checked in
against flax, sample inputs, comparisons, and the statistics dtype each configuration must
compute in.

Each lnjax module is checked against the flax module of the same name, built with the same
arguments and ``use_fast_variance=False``: the same parameter trees, the same outputs and
the same ``batch_stats`` updates.
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np

from lnjax.normalization import NormSpec, Renorm

X_SHAPE = (4, 5, 6, 8)
CASES = [
    ("LayerNorm", {}),
    ("LayerNorm", dict(reduction_axes=(1, 2, 3), feature_axes=-1)),
    ("LayerNorm", dict(reduction_axes=(2, 3), feature_axes=(2, 3))),
    ("LayerNorm", dict(use_bias=False, epsilon=1e-3)),
    ("RMSNorm", {}),
    ("RMSNorm", dict(reduction_axes=(-2, -1), feature_axes=-1)),
    ("GroupNorm", dict(num_groups=4)),
    ("GroupNorm", dict(num_groups=None, group_size=2, use_scale=False)),
    ("GroupNorm", dict(num_groups=2, reduction_axes=(2, 3))),
    ("InstanceNorm", {}),
    ("InstanceNorm", dict(feature_axes=(2, 3))),
    ("BatchNorm", dict(use_running_average=False)),
    ("BatchNorm", dict(use_running_average=False, axis=(2, 3), momentum=0.9)),
]
IDS = [f"{name}-{i}" for i, (name, _) in enumerate(CASES)]
NORMS = ["LayerNorm", "RMSNorm", "GroupNorm", "InstanceNorm", "BatchNorm", "BatchReNorm"]


def sample(offset=0.0, dtype=jnp.float32, seed=0):
    x = np.random.default_rng(seed).standard_normal(X_SHAPE) * 2 + offset
    return jnp.asarray(x.astype(np.float32), dtype)


def perturb(tree, seed=1):
    """Random parameters of the same tree, so a swapped scale/bias would show."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return treedef.unflatten([leaf + jax.random.normal(k, leaf.shape, leaf.dtype)
                              for leaf, k in zip(leaves, keys)])


def close(a, b, tol=2e-5):
    jax.tree.map(lambda p, q: np.testing.assert_allclose(p, q, rtol=tol, atol=tol), a, b)


def num_features(kwargs):
    """flax.nnx's ``num_features``: the size of all feature axes together."""
    feat = kwargs.get("feature_axes", kwargs.get("axis", -1))
    feat = (feat,) if isinstance(feat, int) else feat
    return int(np.prod([X_SHAPE[a] for a in feat]))


# ------------------------------------------------------------- statistics dtype


def far_from_zero(dtype, seed=0):
    """``(4, 6, 8)`` values near 300: statistics in a 16-bit dtype visibly differ from
    float32 ones there, so an output shows which dtype computed them."""
    x = 300 + np.random.default_rng(seed).standard_normal((4, 6, 8)) * 3
    return jnp.asarray(x.astype(np.float32), dtype)


def normalized_with(name, x, scale, bias, *, stats_dtype, out_dtype, running=None):
    """What module ``name`` (default options; ``GroupNorm(num_groups=2)``) computes on ``x``
    with its statistics in ``stats_dtype``, built from the public :class:`NormSpec`.
    ``running``: BatchReNorm's ``(mean, var)``."""
    if name in ("LayerNorm", "RMSNorm"):
        spec = NormSpec.layer(name, x, reduction_axes=-1, feature_axes=-1, epsilon=1e-6,
                              centered=name == "LayerNorm", stats_dtype=stats_dtype)
    elif name == "GroupNorm":
        spec = NormSpec.group(name, x, 2, epsilon=1e-6, stats_dtype=stats_dtype)
    elif name == "InstanceNorm":
        spec = NormSpec.instance(name, x, feature_axes=-1, epsilon=1e-6,
                                 stats_dtype=stats_dtype)
    else:
        spec = NormSpec.batch(name, x, feature_axes=-1, epsilon=1e-5, stats_dtype=stats_dtype)
    renorm = None if running is None else Renorm(*running, 3.0, 5.0)
    return spec.apply(x, scale, bias, renorm=renorm, dtype=out_dtype)[0]


# ------------------------------------------------------------------ docstrings


def attribute_entries(doc):
    """The entries of a Google-style docstring's ``Attributes:`` section, by name, in order
    (each its text joined into one line)."""
    lines = inspect.cleandoc(doc).splitlines()
    entries: dict[str, str] = {}
    name = None
    for line in lines[lines.index("Attributes:") + 1:]:
        if line and not line.startswith(" "):
            break
        if line.startswith("  ") and not line.startswith("   "):
            name, text = line.strip().split(":", 1)
            assert name not in entries, f"{name} documented twice"
            entries[name] = text.strip()
        elif line.strip():
            entries[name] += " " + line.strip()
    return entries
