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
# # Permutation-invariant MNIST: layer norm vs batch norm at batch sizes 128 and 4
#
# The paper's section 6.7 and Figure 6, through lnjax's API: a 784-1000-1000-10 network
# trained with Adam, without normalization (*baseline*), with **batch norm** on every
# layer, and with **layer norm** on the hidden layers, at batch sizes 128 and 4 (with
# the unbiased variance estimate for batch norm at batch size 4). The paper's claim:
# layer norm, which normalizes each case on its own, is robust to the batch size, while
# batch norm, whose statistics come from the four cases of a mini-batch, is not.
#
# Reference: Ba, Kiros & Hinton, *Layer Normalization*, 2016,
# [arXiv:1607.06450](https://arxiv.org/abs/1607.06450), section 6.7, Figure 6.
#
# By default the notebook runs a **small** version that finishes in a few minutes on a
# CPU: 2,000 training examples, two hidden layers of 256 units, 5 epochs. Set
# `FULL = True` in the parameters cell below for the paper's setting: 55,000 examples,
# 1000-1000 hidden units, 5 epochs (the paper plots 60); on a CPU expect more than an
# hour (batch size 4 is 13,750 steps per epoch). The command-line version is
# `python -m lnjax.experiments.pi_mnist`.
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
FULL = False  # True: the paper's size (55,000 examples, 1000-1000 hidden units)
DATA_DIR = None  # a folder of MNIST-format IDX files or a TFDS data_dir; None: the usual places
if FULL:  # the paper's
    N_TRAIN, HIDDEN, EPOCHS = None, (1000, 1000), 5
else:  # small: a few minutes on a CPU
    N_TRAIN, HIDDEN, EPOCHS = 2000, (256, 256), 5

# %%
# %matplotlib inline
import tempfile
from pathlib import Path

import jax
import optax
from IPython.display import Image, Markdown, display

import lnjax
from lnjax import data, training
from lnjax.experiments import pi_mnist
from lnjax.experiments.pi_mnist import LABELS, MLP

print(f"lnjax {lnjax.__version__}, jax {jax.__version__}, backend {jax.default_backend()}")

# %% [markdown]
# **Data.** `lnjax.data.load_splits()` never downloads: it takes the first of MNIST and
# Fashion-MNIST that `lnjax.data.load` finds, in MNIST-format IDX files in `DATA_DIR`,
# prepared TFDS data, `$LNJAX_DATA_DIR`, `~/.cache/lnjax/<name>` or Debian's
# `/usr/share/datasets/fashion-mnist` (`sudo apt-get install dataset-fashion-mnist`),
# and returns its train (the first 55,000 training examples, or the first `N_TRAIN`),
# validation and test splits with a record of where they came from; when it finds
# nothing, its error says how to get the data. In Colab the cell first fetches MNIST
# through TFDS with `lnjax.data.prepare("mnist")`, the library's one downloading
# function.

# %%
if "google.colab" in sys.modules and DATA_DIR is None:
    data.prepare("mnist")  # Colab has TensorFlow and the internet: TFDS fetches MNIST once

splits, data_info = data.load_splits(data_dir=DATA_DIR, train_examples=N_TRAIN)
train, test = splits["train"], splits["test"]
print(data.describe(train))
print(data.describe(test))

# %% [markdown]
# ## The configuration and the model
#
# `MLP(method, hidden=...)` flattens the 28×28 image (so the pixel order does not
# matter: *permutation-invariant*) and stacks `Dense` layers with ReLU units. With
# `"layernorm"` each hidden layer's summed inputs go through `lnjax.linen.LayerNorm`
# (and the dense bias is dropped: layer norm's bias takes its place); with
# `"batchnorm"`, every layer, the output layer included, goes through
# `lnjax.linen.BatchNorm` (`unbiased=True` for small batches; running averages with
# momentum 0.99 at test time).

# %%
BATCH_SIZES = (128, 4)
METHODS = ("baseline", "batchnorm", "layernorm")
LR, SEED = 1e-3, 0

x_train, y_train = train.images, train.labels
print(f"{len(y_train)} training examples, hidden layers {HIDDEN}, {EPOCHS} epochs, "
      f"batch sizes {BATCH_SIZES}; test on {len(test.labels)} examples")

variables = MLP("layernorm", hidden=HIDDEN).init(jax.random.key(0), x_train[:1], train=False)
print("layer norm model:", jax.tree.map(lambda p: p.shape, variables["params"]))

# %% [markdown]
# ## Training
#
# For each batch size and method: `training.create_train_state` initializes the model
# and Adam, and `training.fit` runs the epochs (each epoch one `lax.scan` over its
# shuffled batches) and evaluates the test split after each. The histories hold, per
# epoch, the mean training NLL over the epoch's steps and the test NLL and error.

# %%
results = {"dataset": data_info, "config": {"hidden": list(HIDDEN)}, "runs": {}}
for batch_size in BATCH_SIZES:
    for method in METHODS:
        model = MLP(method, hidden=HIDDEN, unbiased=batch_size <= 16)
        state = training.create_train_state(model, optax.adam(LR), x_train[:1], seed=SEED)
        state, history = training.fit(
            state, (x_train, y_train), epochs=EPOCHS, batch_size=batch_size, seed=SEED,
            evals={"test": (test.images, test.labels)}, progress=FULL,
            desc=f"{method} bs={batch_size}")
        results["runs"].setdefault(method, {})[str(batch_size)] = history
        print(f"{LABELS[method]:>9}, batch size {batch_size:>3}: "
              f"train NLL {history['train_loss'][-1]:.3f}, "
              f"test error {100 * history['test_error'][-1]:5.2f} %, "
              f"{history['seconds'][-1]:.0f} s")

# %% [markdown]
# ## Figure 6
#
# The paper's layout: training NLL above test error, one column per batch size, drawn
# by `lnjax.experiments.pi_mnist.plot(results, path)`, the function that draws
# `figure6.png` (and `figure6.pdf`) for `python -m lnjax.experiments.pi_mnist`. Here one
# point per epoch (`fit`'s `train_loss` and `test_error`); the command line evaluates a
# fixed test subset several times per epoch (`fit(..., curves=..., evals_per_epoch=...)`)
# and draws those points. An axis turns logarithmic only when its values span more than
# a decade.

# %%
figure = Path(tempfile.mkdtemp(prefix="lnjax-pi-mnist-")) / "figure6.png"
pi_mnist.plot(results, figure)
display(Image(filename=str(figure)))

# %%
# How much each method loses going from batch size 128 to 4 (last epoch).
lines = ["| method | train NLL, 128 → 4 | test error %, 128 → 4 |", "|---|---:|---:|"]
for method in METHODS:
    big, small = (results["runs"][method][str(b)] for b in (128, 4))
    lines.append(f"| {LABELS[method]} | {big['train_loss'][-1]:.3f} → "
                 f"{small['train_loss'][-1]:.3f} | {100 * big['test_error'][-1]:.2f} → "
                 f"{100 * small['test_error'][-1]:.2f} |")
display(Markdown("\n".join(lines)))

# %% [markdown]
# **What to look for.** In the paper, layer norm's curves barely move between the two
# batch sizes, while batch norm at batch size 4 trains to a clearly higher NLL: its mean
# and variance come from four cases, so every output is noisy, and the running averages
# used at test time differ from the statistics used in training. The table above shows
# the same comparison for this run: compare how far each method's training NLL moves
# between the two batch sizes. The test errors of the default small run, a few epochs
# on a few thousand examples, are noisy; with `FULL = True` (or
# `python -m lnjax.experiments.pi_mnist`) the run has the paper's size, and the guide
# *Experiments* reports a shorter run of the command.
