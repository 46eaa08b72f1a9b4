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
# # LN-LSTM against LSTM on row-by-row sequential MNIST
#
# An LSTM reads each 28×28 image one row (28 pixels) per time step and a softmax layer
# classifies its last hidden state. We train a plain LSTM and a layer-normalized LSTM
# (the paper's Eqs. 20–22) from the same initial weights, and then look inside: the
# **summed inputs** of the recurrent units at each of the 28 time steps, with and
# without layer norm, at initialization and after training. The paper (section 3.1)
# motivates layer norm in RNNs by these dynamics: in a plain RNN the average magnitude
# of the summed inputs to the recurrent units tends to grow or shrink from step to
# step, and layer norm makes the layer invariant to re-scaling all of them; its
# abstract: "Layer normalization is very effective at stabilizing the hidden state
# dynamics in recurrent networks."
#
# Reference: Ba, Kiros & Hinton, *Layer Normalization*, 2016,
# [arXiv:1607.06450](https://arxiv.org/abs/1607.06450), sections 3.1 and 6, Eqs. 20–22.
#
# The LN-LSTM step (gate order i, f, g, o; `LN(v; a)` is layer norm over the whole 4H
# gate vector with gain `a`):
#
#     (i, f, g, o) = LN(W_h h_{t-1}; a_h) + LN(W_x x_t; a_x) + b
#     c_t = σ(f) ⊙ c_{t-1} + σ(i) ⊙ tanh(g)
#     h_t = σ(o) ⊙ tanh(LN(c_t; a_c, b_c))
#
# and the plain LSTM is the same without the three layer norms. By default the notebook
# trains each network for 40 steps of 64 examples (the whole notebook takes a few
# minutes on a CPU); set `FULL = True` in the parameters cell below for two epochs over
# the 55,000 training examples (the setting of `python -m lnjax.experiments.seq_mnist`,
# longer on a CPU).
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
FULL = False  # True: two epochs over 55,000 examples
DATA_DIR = None  # a folder of MNIST-format IDX files or a TFDS data_dir; None: the usual places
if FULL:
    HIDDEN, BATCH, N_TRAIN, EPOCHS, N_TEST, N_PROBE = 128, 128, None, 2, None, 256
else:  # small: 40 steps of 64 examples
    HIDDEN, BATCH, N_TRAIN, EPOCHS, N_TEST, N_PROBE = 128, 64, 40 * 64, 1, 1000, 256

# %%
# %matplotlib inline
import functools
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from IPython.display import Image, display

import lnjax
from lnjax import data, training
from lnjax import linen as lnn
from lnjax.experiments import seq_mnist
from lnjax.experiments.seq_mnist import RowClassifier, standardize

print(f"lnjax {lnjax.__version__}, jax {jax.__version__}, backend {jax.default_backend()}")

# %% [markdown]
# **Data.** `lnjax.data.load_splits()` never downloads: it takes the first of MNIST and
# Fashion-MNIST that `lnjax.data.load` finds, in MNIST-format IDX files in `DATA_DIR`,
# prepared TFDS data, `$LNJAX_DATA_DIR`, `~/.cache/lnjax/<name>` or Debian's
# `/usr/share/datasets/fashion-mnist` (`sudo apt-get install dataset-fashion-mnist`),
# and returns its train (the first 55,000 training examples), validation and test
# splits with a record of where they came from; when it finds nothing, its error says
# how to get the data. In Colab the cell first fetches MNIST through TFDS with
# `lnjax.data.prepare("mnist")`, the library's one downloading function.
#
# The pixels are standardized with the training set's mean and standard deviation
# (`standardize`): a layer-normalized recurrence that reads blank rows of exact zeros
# from a zero state would normalize zero vectors (see the guide *Known limits*).

# %%
if "google.colab" in sys.modules and DATA_DIR is None:
    data.prepare("mnist")  # Colab has TensorFlow and the internet: TFDS fetches MNIST once

splits, data_info = data.load_splits(data_dir=DATA_DIR)
train, test = splits["train"], splits["test"]
print(data.describe(train))
print(data.describe(test))

# %%
small_train = train._replace(images=train.images[:N_TRAIN], labels=train.labels[:N_TRAIN])
small_test = test._replace(images=test.images[:N_TEST], labels=test.labels[:N_TEST])
small_train = standardize(small_train, train)  # with the whole training split's statistics
small_test = standardize(small_test, train)
x_train, y_train = small_train.images, small_train.labels
x_test, y_test = small_test.images, small_test.labels
probe = x_test[:N_PROBE]  # the images whose summed inputs we will look at
print(f"{len(y_train)} training examples in batches of {BATCH}, {EPOCHS} epoch(s): "
      f"{EPOCHS * (len(y_train) // BATCH)} steps; {HIDDEN} units; "
      f"pixels now mean {x_train.mean():.2f}, std {x_train.std():.2f}")

# %% [markdown]
# ## Training both networks
#
# `RowClassifier("lstm")` and `RowClassifier("ln_lstm")` use the same layer,
# `lnjax.linen.LNLSTM(hidden, layer_norm=False/True)`, so the comparison isolates
# layer norm; both start from the same kernels (the LN-LSTM adds the gains `a_x`,
# `a_h`, `a_c` at 1 and `b_c` at 0). Adam with learning rate 1e-3 and gradient clipping
# at norm 1. We keep a copy of the initial parameters (`fit` donates the state's
# buffers).

# %%
METHODS = {"lstm": "LSTM", "ln_lstm": "LN-LSTM"}
params, histories = {}, {}
for method in METHODS:
    model = RowClassifier(method, hidden=HIDDEN)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))
    state = training.create_train_state(model, tx, x_train[:1], seed=0)
    initial = jax.tree.map(np.array, state.params)  # a host copy
    state, histories[method] = training.fit(
        state, (x_train, y_train), epochs=EPOCHS, batch_size=BATCH, seed=0,
        evals={"test": (x_test, y_test)}, progress=FULL, desc=method)
    params[method] = {"init": initial, "trained": jax.tree.map(np.array, state.params)}
    h = histories[method]
    print(f"{METHODS[method]:>8}: train NLL {h['train_loss'][-1]:.3f}, "
          f"test accuracy {100 * (1 - h['test_error'][-1]):.1f} % "
          f"after {h['steps'][-1]} steps, {h['seconds'][-1]:.0f} s")

cell = params["ln_lstm"]["init"]["rnn"]["cell"]
print("LN-LSTM cell parameters:", {k: v.shape for k, v in cell.items()})
same = all(np.array_equal(cell[k], params["lstm"]["init"]["rnn"]["cell"][k])
           for k in ("input_kernel", "recurrent_kernel", "bias"))
print("both networks start from the same kernels and bias:", same)

# %% [markdown]
# The training curves, drawn by `lnjax.experiments.seq_mnist.plot(results, path)`, the
# function that draws `curves.png` for `python -m lnjax.experiments.seq_mnist`: the
# training NLL against steps and the test error (%) after each epoch (the command line
# draws it several times per epoch, on a fixed test subset).

# %%
results = {"dataset": data_info,
           "runs": {method: {str(BATCH): histories[method]} for method in METHODS}}
figure = Path(tempfile.mkdtemp(prefix="lnjax-ln-lstm-")) / "curves.png"
seq_mnist.plot(results, figure)
display(Image(filename=str(figure)))

# %% [markdown]
# ## The summed inputs over the 28 time steps
#
# We rerun each trained (and initial) network on a batch of test images, one step at a
# time, and record the **summed inputs** of the 4H gate units at every step:
#
# * plain LSTM: `a_t = W_h h_{t-1} + W_x x_t + b`, which goes straight into the gates;
# * LN-LSTM: the raw `a_t = W_h h_{t-1} + W_x x_t` *before* normalization (the bias
#   comes after the layer norms), and the gate pre-activations that the nonlinearities
#   actually see, `LN(W_h h_{t-1}; a_h) + LN(W_x x_t; a_x) + b`;
# * both: the recurrent part `W_h h_{t-1}` alone.
#
# For each step we take the mean and the standard deviation **across the 4H units**
# of each image, averaged over the batch. The loop uses the trained parameters
# (`variables["params"]["rnn"]["cell"]`: `input_kernel` (28, 4H), `recurrent_kernel`
# (H, 4H), `bias` (4H) and, with layer norm, `input_scale`, `recurrent_scale`,
# `cell_scale`, `cell_bias`), advances the state with the library's own step
# (`LSTMSpec.step` from `lnjax.recurrent`, the spec taken from the layer), and checks at
# every step that the gates computed here reproduce its new state, and at the end
# that the logits equal the model's. (Each step is `jax.jit`-compiled once; the loop
# over the 28 steps is plain Python.)

# %%
def unit_stats(v):
    """Mean and spread (std across units), each averaged over the batch: (T,) arrays."""
    v = np.asarray(v)
    return v.mean(-1).mean(-1), v.std(-1).mean(-1)


@functools.partial(jax.jit, static_argnames="layer_norm")
def lstm_step(cell, c, h, x_t, *, layer_norm):
    """One step by hand (Eqs. 20-22) and, to check it, the library's own step."""
    spec = lnn.LNLSTM(HIDDEN, layer_norm=layer_norm).spec()  # the layer's own maths
    eps = spec.epsilon
    wx = x_t @ cell["input_kernel"]  # W_x x_t, (batch, 4H)
    wh = h @ cell["recurrent_kernel"]  # W_h h_{t-1}
    if layer_norm:  # Eq. 20
        summed = wh + wx
        gates = (lnjax.layer_norm(wh, cell["recurrent_scale"], epsilon=eps)
                 + lnjax.layer_norm(wx, cell["input_scale"], epsilon=eps) + cell["bias"])
    else:
        summed = gates = wh + wx + cell["bias"]
    i, f, g, o = jnp.split(gates, 4, axis=-1)  # Eqs. 21-22
    c_new = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    c_out = (lnjax.layer_norm(c_new, cell["cell_scale"], cell["cell_bias"], epsilon=eps)
             if layer_norm else c_new)
    h_new = jax.nn.sigmoid(o) * jnp.tanh(c_out)
    library, _ = spec.step(cell, (c, h), spec.input_path(cell, x_t))
    return {"summed": summed, "gates": gates, "recurrent": wh}, (c_new, h_new), library


forward = {method: jax.jit(functools.partial(RowClassifier(method, hidden=HIDDEN).apply,
                                             train=False))
           for method in METHODS}  # the models' logits, to check against


def summed_inputs(method, p, x):
    """Steps the LSTM over the rows of ``x``; returns per-step statistics."""
    cell = p["rnn"]["cell"]
    c = h = jnp.zeros((x.shape[0], HIDDEN))
    record = {"summed": [], "gates": [], "recurrent": []}
    for t in range(x.shape[1]):  # the 28 rows
        values, mine, (c, h) = lstm_step(cell, c, h, x[:, t], layer_norm=method == "ln_lstm")
        np.testing.assert_allclose(mine[0], c, atol=1e-4)
        np.testing.assert_allclose(mine[1], h, atol=1e-4)
        for name, value in values.items():
            record[name].append(np.asarray(value))
    logits = forward[method]({"params": p}, x)
    np.testing.assert_allclose(h @ p["head"]["kernel"] + p["head"]["bias"], logits,
                               atol=1e-4)
    return {name: unit_stats(np.stack(values)) for name, values in record.items()}


stats = {(method, stage): summed_inputs(method, params[method][stage], probe)
         for method in METHODS for stage in ("init", "trained")}
print("our gates reproduce lnjax's LSTM steps and logits for both networks")

# %%
T = np.arange(1, probe.shape[1] + 1)
curves = [  # (statistic, label, style)
    (("lstm", "summed"), "LSTM: W_h h + W_x x + b", dict(color="tab:blue")),
    (("ln_lstm", "summed"), "LN-LSTM: W_h h + W_x x (raw)", dict(color="tab:red")),
    (("ln_lstm", "gates"), "LN-LSTM: LN(W_h h) + LN(W_x x) + b",
     dict(color="tab:red", ls="--")),
]
rows = [("mean over units", "summed inputs: mean", 0, curves),
        ("std across units", "summed inputs: spread", 1, curves),
        ("std across units", "recurrent part W_h h_{t-1}: spread", 1,
         [(("lstm", "recurrent"), "LSTM", dict(color="tab:blue")),
          (("ln_lstm", "recurrent"), "LN-LSTM (raw)", dict(color="tab:red"))])]
fig, axes = plt.subplots(3, 2, figsize=(11, 9.5), sharex=True, sharey="row")
for r, (ylabel, title, which, lines) in enumerate(rows):
    for col, stage in enumerate(("init", "trained")):
        ax = axes[r, col]
        for (method, name), label, style in lines:
            ax.plot(T, stats[(method, stage)][name][which], marker=".", label=label, **style)
        ax.set_title(f"{title} ({'at initialization' if stage == 'init' else 'trained'})",
                     fontsize=10)
        ax.grid(alpha=0.3)
        if col == 0:
            ax.set_ylabel(ylabel)
        if r == 2:
            ax.set_xlabel("time step (image row)")
    axes[r, 1].legend(fontsize=8)
fig.suptitle(f"Summed inputs of the {4 * HIDDEN} gate units, {len(probe)} test images of "
             f"{data_info['name']}", fontsize=11)
fig.tight_layout()
plt.show()

# %%
# The spread (std across units) over the steps t = 2..28, and the mean, as numbers.
for (method, stage), s in stats.items():
    for name in ("summed", "gates", "recurrent"):
        if method == "lstm" and name == "gates":
            continue  # the same as "summed"
        mean, spread = s[name][0][1:], s[name][1][1:]
        print(f"{METHODS[method]:>8} {stage:>7} {name:>9}: spread {spread.min():.3f} .. "
              f"{spread.max():.3f} (max/min {spread.max() / spread.min():.2f}), "
              f"mean {mean.min():+.3f} .. {mean.max():+.3f}")

# %% [markdown]
# **What the plot shows.** The printout above gives this run's numbers; what to look
# for in them:
#
# * **Plain LSTM.** Its summed inputs change with the time step and with training.
#   At initialization their spread follows the image: smaller at the blank first and
#   last rows than in the middle. The recurrent part `W_h h_{t-1}` starts at 0
#   (`h_0 = 0`) and builds up over the first steps. Training moves the spread, the mean
#   (away from 0, differently at different steps) and the recurrent part's spread.
# * **LN-LSTM, raw summed inputs.** At initialization they are almost the LSTM's
#   (the same kernels; the recurrent part is a little larger because
#   `h_t = σ(o) tanh(LN(c_t))` is at full scale from the first step). Compare how far
#   training moves them with how far it moves the LSTM's.
# * **LN-LSTM, what the gates see** (dashed). By construction, spread 1 at the first
#   step (only `LN(W_x x)`, since `h_0 = 0`), then at every later step the spread of a
#   sum of two normalized vectors, which depends only on how correlated they are: √2
#   for uncorrelated ones. The mean is near 0 (exactly the mean of `b` while the gains
#   are 1). The dependence on the time step and on the weights' scale that the raw sums
#   show does not reach the gates: this is the stabilization of the hidden dynamics that
#   the paper describes. (The gains `a_x`, `a_h` and the bias are learned, so longer
#   training can move this level.)
#
# This is one seed and a few dozen steps: it shows the mechanism, not the size of the
# effect over a whole training run. With `FULL = True` the networks train for two
# epochs; the guide *Experiments* reports the accuracies of such a run.
