# ---
# jupyter:
#   colab:
#     provenance: []
#     toc_visible: true
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: colab
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Layer norm, batch norm and weight norm with lnjax
#
# This notebook shows, with lnjax's functional API and its Flax modules:
#
# 1. what **layer norm**, **batch norm** and **weight norm** compute, checked against
#    plain NumPy;
# 2. the paper's **Table 1** (which transformations of the weights and the data leave
#    the normalized summed inputs unchanged), measured live;
# 3. why the algorithm for the **statistics** matters: far from zero, f32 layer norm
#    computed as `E[x²] − E[x]²` (flax's default) loses every digit;
# 4. `lnjax.linen.LayerNorm` as a **drop-in** for `flax.linen.LayerNorm`.
#
# Reference: Ba, Kiros & Hinton, *Layer Normalization*, 2016,
# [arXiv:1607.06450](https://arxiv.org/abs/1607.06450), sections 3 and 5.1, Table 1.
#
# **Installing lnjax.** The first code cell installs lnjax only if this kernel cannot
# import it (in a clone's virtualenv, after `pip install -e .` or `make demo`, it installs
# nothing), from `LNJAX`, set at its top. Its default, `"..[experiments]"`, is the clone
# this notebook sits in: Jupyter runs a notebook in the notebook's folder, `colabs/`, so
# `..` is the clone's root. Set `LNJAX` to the path of a wheel built with `python -m build`
# (`"path/to/lnjax-0.1.0-py3-none-any.whl[experiments]"`) or, where there is no clone, as
# in Colab, to `"lnjax[experiments] @ git+"` followed by the address of your copy of the
# repository.

# %%
# Where pip installs lnjax from if this kernel cannot import it (see above): this clone
# (the default), a built wheel's path, or "lnjax[experiments] @ git+" and your copy's address.
LNJAX = "..[experiments]"

import importlib.metadata
import importlib.util

if importlib.util.find_spec("lnjax") is None:
    # %pip install -q "$LNJAX"
    importlib.invalidate_caches()
    print(f"lnjax {importlib.metadata.version('lnjax')} installed from {LNJAX}")

# %%
# %matplotlib inline
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Markdown, display

import lnjax
from lnjax import linen as lnn
from lnjax.experiments.invariance import format_table, invariance_table

print(f"lnjax {lnjax.__version__}, jax {jax.__version__}, flax {flax.__version__}, "
      f"backend {jax.default_backend()}")

# %% [markdown]
# ## 1. Three ways to normalize the summed inputs
#
# A layer with weights `W` (one row per hidden unit) maps a batch of cases `X`
# (one row per case) to the **summed inputs** `a = X Wᵀ`, a (cases × units) matrix.
# The three methods rescale `a` differently:
#
# | method | statistics | computes |
# |---|---|---|
# | batch norm | per **unit**, over the cases of the mini-batch | `(a − μ_unit) / σ_unit` |
# | layer norm | per **case**, over the units of the layer | `(a − μ_case) / σ_case` |
# | weight norm | none: the weights | `a_i / ‖w_i‖`, i.e. the weight `g v / ‖v‖` |
#
# with population variances (`σ² = mean((a − μ)²)`) and, in practice, a small `ε`
# inside the square root (we set it to 0 here to compare with NumPy exactly). Each is
# then followed by a learned gain `g` and bias `b` per unit.
#
# In lnjax: `lnjax.layer_norm(x, scale, bias, axis=-1)`,
# `lnjax.batch_norm(x, scale, bias, reduction_axes=0)` (returns `(y, mean, var)`) and
# `lnjax.weight_norm(v, g, axis=0)` (returns the weight; `axis` is the axis of the
# units, and the norm runs over every other axis).

# %%
rng = np.random.default_rng(0)
X = (rng.normal(size=(6, 5)) + 2.0).astype(np.float32)  # 6 cases, 5 inputs
W = rng.normal(size=(4, 5)).astype(np.float32)  # 4 hidden units
a = X @ W.T  # summed inputs, (cases, units)

ln = np.asarray(lnjax.layer_norm(a, epsilon=0.0))  # each case (row) over its units
bn, bn_mean, bn_var = lnjax.batch_norm(a, reduction_axes=0, epsilon=0.0)  # each unit over the cases
bn = np.asarray(bn)
w = np.asarray(lnjax.weight_norm(W, jnp.ones(4), axis=0))  # each unit's weights: norm g = 1
wn = X @ w.T

# The same three things in plain NumPy:
np.testing.assert_allclose(ln, (a - a.mean(1, keepdims=True)) / a.std(1, keepdims=True),
                           atol=1e-5)
np.testing.assert_allclose(bn, (a - a.mean(0)) / a.std(0), atol=1e-5)
np.testing.assert_allclose(bn_mean, a.mean(0), rtol=1e-5)
np.testing.assert_allclose(wn, a / np.linalg.norm(W, axis=1), rtol=1e-5)

np.set_printoptions(precision=3, suppress=True)
print("layer norm  - per case: mean", ln.mean(1).round(6) + 0.0, "std", ln.std(1))
print("batch norm  - per unit: mean", bn.mean(0).round(6) + 0.0, "std", bn.std(0))
print("weight norm - per unit: norm of the weights", np.linalg.norm(w, axis=1))

# %%
panels = [("summed inputs a = X Wᵀ", a), ("layer norm: each row", ln),
          ("batch norm: each column", bn), ("weight norm: a_i / ‖w_i‖", wn)]
fig, axes = plt.subplots(1, 4, figsize=(13, 3.2))
for ax, (title, values) in zip(axes, panels):
    im = ax.imshow(values, cmap="RdBu_r", vmin=-np.abs(values).max(),
                   vmax=np.abs(values).max())
    ax.set(title=title, xlabel="hidden unit", ylabel="training case")
    fig.colorbar(im, ax=ax, shrink=0.8)
fig.tight_layout()
plt.show()

# %% [markdown]
# Layer norm makes every **row** (case) mean 0 and variance 1, whatever the other cases
# are; batch norm does this to every **column** (unit), so each output depends on the
# whole mini-batch; weight norm does not look at the data at all.
#
# ## 2. Table 1: invariances, measured
#
# The paper's Table 1 lists which transformations leave the normalized summed inputs
# unchanged. `lnjax.experiments.invariance.invariance_table` applies each
# transformation to random `W` and `X` and measures the largest change of each
# method's normalized summed inputs (no gain, no bias, `ε = 0`);
# `format_table` marks a change below 1e-4 as *invariant* and compares with the paper:
#
# * **weight matrix re-scaling** `W → δW` and **re-centering** `W → W + 1γᵀ` (the
#   same vector added to every unit's weights: each case's summed inputs all move by
#   the same `γ·x`, which layer norm's mean removes);
# * **weight vector re-scaling**: one unit's weights scaled (batch and weight norm
#   undo it per unit; layer norm mixes that unit into every case's statistics);
# * **dataset re-scaling / re-centering**: every case scaled, or shifted by one vector;
# * **single training case re-scaling**: one case scaled (only layer norm, whose
#   statistics are that case's own, is invariant).

# %%
table = invariance_table(seed=0)
display(Markdown(format_table(table)))

# %% [markdown]
# ## 3. Why the algorithm for the statistics matters
#
# The variance can be computed as `E[x²] − E[x]²` in one pass over the data: this is
# flax's `LayerNorm(use_fast_variance=True)`, its default. When the mean is large
# compared with the spread, both terms are huge and nearly equal, and in f32 their
# difference is rounding noise (clipped at 0): the output is garbage. The two-pass
# `E[(x − E[x])²]` (`use_fast_variance=False`) is much better, but still loses
# digits, because the mean itself is rounded to f32 before it is subtracted. lnjax
# subtracts a rough mean first and computes the statistics of what is left (see the
# guide *The equations*, section *How lnjax computes the statistics*).
#
# Below: rows of values with standard deviation 1 around an offset `10^k`, in f32,
# normalized by each implementation (`ε = 1e-6`, gain 1, bias 0) and compared with
# float64 NumPy on the same f32 inputs.

# %%
ROWS, WIDTH, EPS = 64, 1024, 1e-6
OFFSETS = [10.0**k for k in range(7)]


def reference(x):
    """Layer norm in float64 NumPy."""
    x = x.astype(np.float64)
    d = x - x.mean(-1, keepdims=True)
    return d / np.sqrt((d**2).mean(-1, keepdims=True) + EPS)


def flax_layer_norm(use_fast_variance):
    module = nn.LayerNorm(epsilon=EPS, use_fast_variance=use_fast_variance)
    variables = module.init(jax.random.key(0), jnp.zeros((1, WIDTH)))  # scale 1, bias 0
    return jax.jit(lambda x: module.apply(variables, x))


implementations = {
    "lnjax.layer_norm": jax.jit(lambda x: lnjax.layer_norm(x, epsilon=EPS)),
    "flax default (fast variance)": flax_layer_norm(True),
    "flax two-pass": flax_layer_norm(False),
}
rng = np.random.default_rng(0)
errors = {name: [] for name in implementations}
for offset in OFFSETS:
    x = (offset + rng.standard_normal((ROWS, WIDTH))).astype(np.float32)
    expected = reference(x)
    for name, f in implementations.items():
        errors[name].append(float(np.max(np.abs(np.asarray(f(x), np.float64) - expected))))

lines = ["| offset / std | " + " | ".join(implementations) + " |",
         "|---:|" + "---:|" * len(implementations)]
for i, offset in enumerate(OFFSETS):
    lines.append(f"| {offset:.0e} | " + " | ".join(f"{errors[n][i]:.1e}" for n in errors)
                 + " |")
display(Markdown("\n".join(lines)))

# %%
fig, ax = plt.subplots(figsize=(6.4, 4.2))
styles = {"lnjax.layer_norm": ("tab:red", "o"),
          "flax default (fast variance)": ("tab:blue", "s"),
          "flax two-pass": ("tab:green", "^")}
for name, errs in errors.items():
    color, marker = styles[name]
    ax.loglog(OFFSETS, errs, marker=marker, color=color, label=name)
ax.axhline(np.finfo(np.float32).eps, color="gray", lw=0.8, ls=":", label="f32 machine epsilon")
ax.set(xlabel="offset (mean / standard deviation of each row)",
       ylabel="max |error| vs float64 reference",
       title=f"f32 layer norm far from zero ({ROWS} rows of {WIDTH})")
ax.set_ylim(bottom=1e-8)
ax.grid(alpha=0.3, which="both")
ax.legend()
plt.show()

# %% [markdown]
# **Reading the plot.** lnjax should stay at f32 rounding, a few units of f32's machine
# epsilon (the dotted line), at every offset. flax's default error grows with the
# offset until the two terms of `E[x²] − E[x]²` cancel completely: from there on its
# variance is rounding noise, clipped at zero, and the output is `(x − mean) / √ε`,
# wrong by orders of magnitude. The two-pass error grows roughly in proportion to the
# offset (the rounding of the mean). The cell below reads these facts off the
# measurements above.

# %%
F32_EPS = float(np.finfo(np.float32).eps)
for name, errs in errors.items():
    worst = max(errs)
    bad = [offset for offset, e in zip(OFFSETS, errs) if e > 1e-3]
    where = f"first above 1e-3 at offset {bad[0]:.0e}" if bad else "never above 1e-3"
    print(f"{name:>28}: largest error {worst:.1e} ({worst / F32_EPS:.2g} f32 epsilons), "
          f"{where}")

# %% [markdown]
# Large offsets are not exotic: summed inputs with a large common component (a
# constant input feature, a big bias, unnormalized pixels) are exactly what layer norm
# is asked to normalize.
#
# ## 4. A drop-in for `flax.linen.LayerNorm`
#
# `lnjax.linen.LayerNorm` takes the same arguments as `flax.linen.LayerNorm` and has the
# same parameters (`scale`, `bias`) and defaults, except `use_fast_variance=False`.
# Parameters made by (or checkpointed from) flax's module drive lnjax's unchanged.

# %%
x = jax.random.normal(jax.random.key(0), (16, 64))  # ordinary data: mean 0, std 1
ours, theirs = lnn.LayerNorm(), nn.LayerNorm()
v_ours = ours.init(jax.random.key(1), x)
v_theirs = theirs.init(jax.random.key(1), x)

print("lnjax's LayerNorm is a flax LayerNorm:", isinstance(ours, nn.LayerNorm))
print("lnjax params:", jax.tree.map(jnp.shape, v_ours))
print("flax  params:", jax.tree.map(jnp.shape, v_theirs))
assert jax.tree.structure(v_ours) == jax.tree.structure(v_theirs)

# flax's parameters, with a non-trivial gain and bias, drive lnjax's module:
k1, k2 = jax.random.split(jax.random.key(2))
v = {"params": {"scale": 1 + 0.1 * jax.random.normal(k1, (64,)),
                "bias": 0.1 * jax.random.normal(k2, (64,))}}
diff = float(jnp.max(jnp.abs(ours.apply(v, x) - theirs.apply(v, x))))
print(f"largest output difference on N(0, 1) data: {diff:.1e}")
print("use_fast_variance default: lnjax", ours.use_fast_variance,
      "/ flax", theirs.use_fast_variance)

# %% [markdown]
# Inside a model, swapping the import is all it takes: the same parameter tree, so the
# same checkpoints.

# %%
class Block(nn.Module):
    norm: type = nn.LayerNorm  # flax's, or lnjax's

    @nn.compact
    def __call__(self, x):
        x = nn.relu(self.norm()(nn.Dense(32)(x)))
        return nn.Dense(10)(x)


flax_block, lnjax_block = Block(nn.LayerNorm), Block(lnn.LayerNorm)
variables = flax_block.init(jax.random.key(3), x)  # made by the flax model
lnjax_variables = lnjax_block.init(jax.random.key(3), x)
assert jax.tree.structure(variables) == jax.tree.structure(lnjax_variables)
diff = float(jnp.max(jnp.abs(lnjax_block.apply(variables, x) - flax_block.apply(variables, x))))
print("parameter tree:", jax.tree.map(jnp.shape, variables)["params"])
print(f"largest output difference: {diff:.1e}")

# %% [markdown]
# On ordinary data the two modules agree to f32 rounding; they differ only where flax's
# fast variance breaks down (section 3). The other modules (`RMSNorm`, `GroupNorm`,
# `InstanceNorm`, `BatchNorm`, and the `lnjax.nnx` versions) are drop-ins in the same way.
