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
# # Layer norm in Transformers: post-LN, pre-LN and learning-rate warm-up
#
# Layer norm is what Transformers use, and *where* it sits matters. The original
# Transformer normalizes after each residual connection (**post-LN**); Xiong et al.
# (2020) showed that post-LN needs a learning-rate warm-up to train, while putting the
# norm inside the residual branch (**pre-LN**) trains without one. This notebook walks
# through `python -m lnjax.experiments.transformer`, which tests that finding on a small
# ViT-style classifier of Fashion-MNIST (or MNIST): post-LN, pre-LN, pre-RMSNorm and no
# normalization, each with and without warm-up, at a learning rate where it matters.
#
# References: Ba, Kiros & Hinton, *Layer Normalization*, 2016,
# [arXiv:1607.06450](https://arxiv.org/abs/1607.06450); Xiong et al., *On Layer
# Normalization in the Transformer Architecture*, 2020,
# [arXiv:2002.04745](https://arxiv.org/abs/2002.04745).
#
# By default the notebook runs a **small** version that finishes in a few minutes on a
# CPU: 6,400 training examples, two epochs (100 steps of 128), evaluated on 2,000
# images. Set `FULL = True` in the parameters cell below for the command line's default
# run (12,800 examples, evaluated on the whole validation and test splits; about ten
# minutes on a 2-core CPU). The experiment's docstring gives the flags of a full-size run.
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
import sys

if importlib.util.find_spec("lnjax") is None:
    # %pip install -q "$LNJAX"
    importlib.invalidate_caches()
    print(f"lnjax {importlib.metadata.version('lnjax')} installed from {LNJAX}")

# %% [markdown]
# **Parameters.** The one cell to edit: `FULL` picks the size of the run, and
# `DATA_DIR` where the data come from (see *Data* below); the sizes follow from `FULL`.

# %% tags=["parameters"]
FULL = False  # True: the command line's default run
DATA_DIR = None  # a folder of MNIST-format IDX files or a TFDS data_dir; None: the usual places
LAYERS, WIDTH, HEADS, MLP_DIM = 4, 128, 4, 256  # the encoder
BATCH, LR = 128, 3e-3  # Adam's peak learning rate, from the first step without warm-up
if FULL:  # python -m lnjax.experiments.transformer
    N_TRAIN, EPOCHS, WARMUP_STEPS, N_EVAL = 12_800, 2, 40, None
else:  # small: 100 steps
    N_TRAIN, EPOCHS, WARMUP_STEPS, N_EVAL = 6_400, 2, 20, 2_000

# %%
# %matplotlib inline
import tempfile
from pathlib import Path

import jax
import matplotlib.pyplot as plt
import numpy as np
import optax
from IPython.display import Image, Markdown, display

import lnjax
from lnjax import data
from lnjax.experiments import tables, transformer
from lnjax.experiments.transformer import LABELS, METHODS, NORMS, PatchTransformer

print(f"lnjax {lnjax.__version__}, jax {jax.__version__}, backend {jax.default_backend()}")

# %% [markdown]
# ## The two places for the norm
#
# An encoder block has two residual sublayers, self-attention `Attn` and a
# position-wise MLP. With `x_l` the block's input:
#
# **Post-LN** (Vaswani et al. 2017): the norm after the residual sum,
#
#     y   = LN(x_l + Attn(x_l))
#     x_l+1 = LN(y + MLP(y))
#
# **Pre-LN** (Xiong et al. 2020): the norm at the start of each branch, the residual
# path left untouched, and one more norm after the last block,
#
#     y   = x_l + Attn(LN(x_l))
#     x_l+1 = y + MLP(LN(y)),        output: LN(x_L)
#
# with `LN(z) = g ⊙ (z − μ)/σ + b`, μ and σ over the width of each token (the paper's
# layer norm, Ba et al. Eq. 4). **Pre-RMSNorm** is pre-LN with `RMSNorm(z) = g ⊙ z /
# sqrt(mean(z²))`; **no norm** is `x_l+1 = y + MLP(y)`, `y = x_l + Attn(x_l)`.
#
# Xiong et al.'s argument: at initialization the gradients of post-LN's parameters near
# the output are large, so a large learning rate in the first steps throws the model
# off; warm-up keeps the first steps small. In pre-LN every block adds to an
# un-normalized residual stream, and the gradients are well-behaved from the start.
#
# `transformer.residual(x, f, norm, position)` is the one function that places the
# norm, and `EncoderBlock` calls it for both sublayers. With a sublayer that doubles
# its input, post-LN gives `LN(3x)` and pre-LN gives `x + 2 LN(x)`:

# %%
x = np.random.default_rng(0).normal(3.0, 2.0, (1, 6)).astype(np.float32)


def double(v):
    """A stand-in sublayer: f(v) = 2v."""
    return 2 * v


for position in ("post", "pre", "none"):
    norm = None if position == "none" else lnjax.layer_norm
    print(f"{position:>4}: {np.round(transformer.residual(x, double, norm, position), 3)}")
print("LN(3x):      ", np.round(lnjax.layer_norm(3 * x), 3))
print("x + 2 LN(x): ", np.round(x + 2 * lnjax.layer_norm(x), 3))

# %% [markdown]
# **Data.** `lnjax.data.load_splits()` never downloads: it takes the first of MNIST and
# Fashion-MNIST that `lnjax.data.load` finds, in MNIST-format IDX files in `DATA_DIR`,
# prepared TFDS data, `$LNJAX_DATA_DIR`, `~/.cache/lnjax/<name>` or Debian's
# `/usr/share/datasets/fashion-mnist` (`sudo apt-get install dataset-fashion-mnist`),
# and returns its train (the first `N_TRAIN` examples), validation and test splits
# with a record of where they came from. In Colab the cell first fetches Fashion-MNIST
# through TFDS with `lnjax.data.prepare`, the library's one downloading function.

# %%
if "google.colab" in sys.modules and DATA_DIR is None:
    data.prepare("fashion_mnist")  # Colab has TensorFlow and the internet

splits, data_info = data.load_splits(data_dir=DATA_DIR, train_examples=N_TRAIN)
if N_EVAL is not None:  # the small run evaluates on the first N_EVAL images of each
    splits = {k: v if k == "train" else v._replace(images=v.images[:N_EVAL],
                                                  labels=v.labels[:N_EVAL])
              for k, v in splits.items()}
for ds in splits.values():
    print(data.describe(ds))

# %% [markdown]
# ## The model
#
# `PatchTransformer(norm, ...)` cuts each 28×28 image into 7×7 = 49 patches of 4×4
# pixels, embeds each patch with one `Dense` layer, adds a learned position embedding,
# runs `LAYERS` encoder blocks (flax's `nn.MultiHeadDotProductAttention`, an MLP with
# GELU; lnjax's `LayerNorm` or `RMSNorm` where the variant puts them), a final norm for
# the pre-norm variants, averages over the patches and classifies with a dense head.
# The parameter trees show where the norms are:

# %%
for norm in NORMS:
    model = PatchTransformer(norm, layers=LAYERS, width=WIDTH, heads=HEADS, mlp_dim=MLP_DIM)
    params = jax.eval_shape(  # the shapes alone, without computing the initial values
        lambda x, model=model: model.init(jax.random.key(0), x, train=False)["params"],
        splits["train"].images[:1])
    count = sum(p.size for p in jax.tree.leaves(params))
    block = sorted(params["block_0"])
    print(f"{LABELS[norm]:>11}: {count:,} parameters; block_0: {block}; "
          f"final norm: {'final_norm' in params}")

# %% [markdown]
# Xiong et al.'s diagnosis, on this model: the gradient norm of each block's
# parameters at initialization, on one batch of training images (the same initial
# weights for the attention and MLP kernels in all four variants). In their analysis
# (their Figure 3) post-LN's gradient norm grows with the layer index, largest next to
# the output, while pre-LN's does not grow; compare the curves below. Without any norm
# nothing holds the residual stream's scale in check: compare its level with the others.

# %%
x_batch = splits["train"].images[:BATCH]
y_batch = splits["train"].labels[:BATCH]
grad_norms = {}
for norm in NORMS:
    model = PatchTransformer(norm, layers=LAYERS, width=WIDTH, heads=HEADS, mlp_dim=MLP_DIM)
    params = model.init(jax.random.key(0), x_batch[:1], train=False)["params"]

    def loss(p, model=model):
        logits = model.apply({"params": p}, x_batch, train=False)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y_batch).mean()

    grads = jax.grad(loss)(params)
    grad_norms[norm] = [float(optax.global_norm(grads[f"block_{i}"])) for i in range(LAYERS)]

fig, ax = plt.subplots(figsize=(6, 3.2))
for norm in NORMS:
    ax.plot(range(1, LAYERS + 1), grad_norms[norm], marker="o", label=LABELS[norm],
            color=transformer.COLORS[norm])
ax.set(xlabel="block (1 = next to the input)", ylabel="gradient norm at initialization",
       yscale="log", xticks=range(1, LAYERS + 1))
ax.grid(alpha=0.3, which="both")
ax.legend(fontsize=8)
plt.show()
for norm in NORMS:
    print(f"{LABELS[norm]:>11}: " + ", ".join(f"{g:.2f}" for g in grad_norms[norm]))

# %% [markdown]
# ## Training the eight runs
#
# `transformer.run(method, batch_size, splits, ...)` is the function the command line
# calls for each run: it builds the model, Adam with `transformer.schedule(lr,
# warmup_steps)` (a linear warm-up from 0 to `LR` for the `*_warmup` methods, `LR`
# from the first step otherwise), and trains with `lnjax.training.fit`, evaluating the
# validation and test splits after each epoch. Checkpoints go to a temporary folder.
# The rate and the warm-up's length live in the optimizer's state
# (`transformer.optimizer()`), so a method and its `_warmup` twin train the same
# compiled step: eight runs, four compilations.

# %%
out = tempfile.mkdtemp(prefix="lnjax-transformer-")
model_flags = {"layers": LAYERS, "width": WIDTH, "heads": HEADS, "mlp_dim": MLP_DIM,
               "warmup_steps": WARMUP_STEPS}
results = {"experiment": "transformer", "dataset": data_info,
           "config": {"lr": LR, "epochs": EPOCHS, **model_flags}, "runs": {}}
for method in METHODS:
    history = transformer.run(method, BATCH, splits, epochs=EPOCHS, lr=LR, seed=0, out=out,
                              resume=False, progress=FULL, **model_flags)
    results["runs"][method] = {str(BATCH): history}
    print(f"{transformer.label(method):>24}: train NLL {history['train_loss'][-1]:.3f}, "
          f"test error {100 * history['test_error'][-1]:5.2f} % after "
          f"{history['steps'][-1]} steps, {history['seconds'][-1]:.0f} s")

# %% [markdown]
# ## The figure and the verdict
#
# `transformer.plot(results, path)` draws the figure of the command line's `curves.png`:
# the training loss and the test error (on a fixed subset of the test images, four times
# per epoch) against steps (color: the normalization; solid: warm-up; dashed: none) and
# the last test error of each run on the whole test set. `transformer.verdict(results)` compares
# each normalization with and without warm-up: it *needs* warm-up when without it the
# training loss is not finite or the run loses more than `transformer.SHORTFALL` (a
# fifth) of what the run with warm-up gained in test error over guessing (90 %);
# Xiong et al.'s finding holds when post-LN needs warm-up and pre-LN does not.

# %%
figure = Path(out) / "curves.png"
transformer.plot(results, figure)
display(Image(filename=str(figure)))

# %%
display(Markdown(tables.summary_table(results["runs"], columns=transformer.COLUMNS)))
display(Markdown("\n".join(transformer.verdict(results))))

# %% [markdown]
# **What to look for.** In Xiong et al.'s experiments, post-LN without warm-up trains
# to a much worse result than with it, while pre-LN reaches about the same result with
# or without. The dashed red curve (post-LN, no warm-up) is the one to watch: at a
# learning rate this high, does it leave the loss of guessing (ln 10 ≈ 2.30)? The
# verdict above is computed from this run's numbers, not written in advance. These
# runs are short (one seed, a hundred or two steps): differences of a point or two in
# test error between the other runs are within the noise of such runs. The guide
# *Experiments* reports the command line's default run.
