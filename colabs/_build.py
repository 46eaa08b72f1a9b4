"""Writes the teaching notebooks in this folder from the cell sources below.

The notebooks are generated so that a review reads Python and Markdown, not
JSON, and they are stored without outputs. After editing this file::

    .venv/bin/python colabs/_build.py            # rewrites colabs/*.ipynb
    .venv/bin/python -m pytest -q tests/test_notebooks.py

``tests/test_notebooks.py`` checks that the stored notebooks are what this
script writes and runs each of them (on small generated data).
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

import nbformat
from nbformat import v4

HERE = Path(__file__).resolve().parent
REPO_URL = "https://github.com/lnjax/lnjax"
PAPER = ("Ba, Kiros & Hinton, *Layer Normalization*, 2016, "
         "[arXiv:1607.06450](https://arxiv.org/abs/1607.06450)")

INSTALL = f'''\
# In Colab, install lnjax first; run locally (lnjax installed), this cell does nothing.
import sys

if "google.colab" in sys.modules:
    %pip install -q "lnjax[experiments] @ git+{REPO_URL}"
'''

DATA_MD = """\
**Data.** `lnjax.data.load(name, split)` never downloads: it reads MNIST-format
IDX files from `data_dir`, prepared TFDS data, `$LNJAX_DATA_DIR`,
`~/.cache/lnjax/<name>` or Debian's `/usr/share/datasets/fashion-mnist`
(`sudo apt-get install dataset-fashion-mnist`); when it finds nothing, its error
says how to get the data. In Colab the cell first fetches MNIST through TFDS
with `lnjax.data.prepare("mnist")`, the library's one downloading function.
The cell below takes the first of MNIST and Fashion-MNIST that it finds and
prints which one and from where.

If the environment variable `LNJAX_NOTEBOOK_DATA_DIR` is set, the data come
from the IDX files in that folder (`data_dir=`) and the notebook runs a tiny
configuration: this is how `tests/test_notebooks.py` runs it in seconds on
small generated files. Leave it unset to run on the real data."""

DATA_CODE = '''\
DATA_DIR = os.environ.get("LNJAX_NOTEBOOK_DATA_DIR")  # None: the usual places
TINY = DATA_DIR is not None  # the test's tiny configuration


def find_dataset(names=("mnist", "fashion_mnist")):
    """The first of ``names`` that lnjax.data finds."""
    errors = []
    for name in names:
        try:
            data.load(name, "test", data_dir=DATA_DIR)
            return name
        except FileNotFoundError as e:
            errors.append(str(e))
    raise FileNotFoundError("No data set found.\\n\\n" + "\\n\\n".join(errors))


if "google.colab" in sys.modules and DATA_DIR is None:
    data.prepare("mnist")  # Colab has TensorFlow and the internet: TFDS fetches MNIST once

DATASET = find_dataset()
train = data.load(DATASET, "train", data_dir=DATA_DIR)  # the first 55,000 training examples
test = data.load(DATASET, "test", data_dir=DATA_DIR)
print(data.describe(train))
print(data.describe(test))
'''


def _src(text: str) -> str:
    return textwrap.dedent(text).strip("\n")


class Notebook:
    """Cells with stable ids (so regenerating a notebook changes nothing)."""

    def __init__(self, stem: str):
        self.stem = stem
        self.cells: list = []

    def _id(self) -> str:
        return f"{self.stem.split('_')[0]}-{len(self.cells):02d}"

    def md(self, text: str) -> None:
        self.cells.append(v4.new_markdown_cell(_src(text), id=self._id()))

    def code(self, text: str) -> None:
        self.cells.append(v4.new_code_cell(_src(text), id=self._id()))

    def node(self) -> nbformat.NotebookNode:
        nb = v4.new_notebook(cells=self.cells)
        nb.metadata = {
            "kernelspec": {"name": "python3", "display_name": "Python 3",
                           "language": "python"},
            "language_info": {"name": "python"},
            "colab": {"provenance": [], "toc_visible": True},
        }
        nbformat.validate(nb)
        return nb

    def badge(self) -> str:
        url = ("https://colab.research.google.com/github/lnjax/lnjax/blob/main/colabs/"
               f"{self.stem}.ipynb")
        return (f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
                f"({url})")


# --------------------------------------------------------------------------
# 01: what the three normalizations compute, Table 1, accuracy, drop-in.
# --------------------------------------------------------------------------


def layer_norm_notebook() -> Notebook:
    nb = Notebook("01_layer_norm")
    nb.md(f"""
    # Layer norm, batch norm and weight norm with lnjax

    {nb.badge()}

    This notebook shows, with [lnjax]({REPO_URL})'s functional API and its Flax modules:

    1. what **layer norm**, **batch norm** and **weight norm** compute, checked against
       plain NumPy;
    2. the paper's **Table 1** (which transformations of the weights and the data leave
       the normalized summed inputs unchanged), measured live;
    3. why the algorithm for the **statistics** matters: far from zero, f32 layer norm
       computed as `E[x²] − E[x]²` (flax's default) loses every digit;
    4. `lnjax.linen.LayerNorm` as a **drop-in** for `flax.linen.LayerNorm`.

    Reference: {PAPER}, sections 3 and 5.1, Table 1.
    """)
    nb.code(INSTALL)
    nb.code("""
    %matplotlib inline
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
    """)
    nb.md("""
    ## 1. Three ways to normalize the summed inputs

    A layer with weights `W` (one row per hidden unit) maps a batch of cases `X`
    (one row per case) to the **summed inputs** `a = X Wᵀ`, a (cases × units) matrix.
    The three methods rescale `a` differently:

    | method | statistics | computes |
    |---|---|---|
    | batch norm | per **unit**, over the cases of the mini-batch | `(a − μ_unit) / σ_unit` |
    | layer norm | per **case**, over the units of the layer | `(a − μ_case) / σ_case` |
    | weight norm | none: the weights | `a_i / ‖w_i‖`, i.e. the weight `g v / ‖v‖` |

    with population variances (`σ² = mean((a − μ)²)`) and, in practice, a small `ε`
    inside the square root (we set it to 0 here to compare with NumPy exactly). Each is
    then followed by a learned gain `g` and bias `b` per unit.

    In lnjax: `lnjax.layer_norm(x, scale, bias, axis=-1)`,
    `lnjax.batch_norm(x, scale, bias, axis=0)` (returns `(y, mean, var)`) and
    `lnjax.weight_norm(v, g, axis=0)` (returns the weight; `axis` is the axis of the
    units, and the norm runs over every other axis).
    """)
    nb.code("""
    rng = np.random.default_rng(0)
    X = (rng.normal(size=(6, 5)) + 2.0).astype(np.float32)  # 6 cases, 5 inputs
    W = rng.normal(size=(4, 5)).astype(np.float32)  # 4 hidden units
    a = X @ W.T  # summed inputs, (cases, units)

    ln = np.asarray(lnjax.layer_norm(a, epsilon=0.0))  # each case (row) over its units
    bn, bn_mean, bn_var = lnjax.batch_norm(a, axis=0, epsilon=0.0)  # each unit over the cases
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
    """)
    nb.code("""
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
    """)
    nb.md("""
    Layer norm makes every **row** (case) mean 0 and variance 1, whatever the other cases
    are; batch norm does this to every **column** (unit), so each output depends on the
    whole mini-batch; weight norm does not look at the data at all.

    ## 2. Table 1: invariances, measured

    The paper's Table 1 lists which transformations leave the normalized summed inputs
    unchanged. `lnjax.experiments.invariance.invariance_table` applies each
    transformation to random `W` and `X` and measures the largest change of each
    method's normalized summed inputs (no gain, no bias, `ε = 0`);
    `format_table` marks a change below 1e-4 as *invariant* and compares with the paper:

    * **weight matrix re-scaling** `W → δW` and **re-centering** `W → W + 1γᵀ` (the
      same vector added to every unit's weights: each case's summed inputs all move by
      the same `γ·x`, which layer norm's mean removes);
    * **weight vector re-scaling**: one unit's weights scaled (batch and weight norm
      undo it per unit; layer norm mixes that unit into every case's statistics);
    * **dataset re-scaling / re-centering**: every case scaled, or shifted by one vector;
    * **single training case re-scaling**: one case scaled (only layer norm, whose
      statistics are that case's own, is invariant).
    """)
    nb.code("""
    table = invariance_table(seed=0)
    display(Markdown(format_table(table)))
    """)
    nb.md("""
    ## 3. Why the algorithm for the statistics matters

    The variance can be computed as `E[x²] − E[x]²` in one pass over the data: this is
    flax's `LayerNorm(use_fast_variance=True)`, its default. When the mean is large
    compared with the spread, both terms are huge and nearly equal, and in f32 their
    difference is rounding noise (clipped at 0): the output is garbage. The two-pass
    `E[(x − E[x])²]` (`use_fast_variance=False`) is much better, but still loses
    digits, because the mean itself is rounded to f32 before it is subtracted. lnjax
    subtracts a rough mean first and computes the statistics of what is left (see the
    README's *How lnjax computes the statistics*).

    Below: rows of 1024 values with standard deviation 1 around an offset `10^k`, in f32,
    normalized by each implementation (`ε = 1e-6`, gain 1, bias 0) and compared with
    float64 NumPy on the same f32 inputs.
    """)
    nb.code('''
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
    display(Markdown("\\n".join(lines)))
    ''')
    nb.code("""
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
    """)
    nb.md("""
    lnjax stays at f32 rounding (a few 1e-7, a few units of f32's machine epsilon) at
    every offset. flax's default fast variance is off by about 5e-5 at offset 10, 5e-3
    at 100 and 0.2 at 1000; from 10^4 on its variance is rounding noise, clipped at
    zero, and the output is `(x − mean) / √ε`, off by thousands. The two-pass error
    grows roughly in proportion to the offset (the rounding of the mean), to a few
    hundredths at 10^6.

    Large offsets are not exotic: summed inputs with a large common component (a
    constant input feature, a big bias, unnormalized pixels) are exactly what layer norm
    is asked to normalize.

    ## 4. A drop-in for `flax.linen.LayerNorm`

    `lnjax.linen.LayerNorm` is a subclass of `flax.linen.LayerNorm` with the same
    arguments, parameters (`scale`, `bias`) and defaults, except
    `use_fast_variance=False`. Parameters made by (or checkpointed from) flax's module
    drive lnjax's unchanged.
    """)
    nb.code("""
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
    """)
    nb.md("""
    Inside a model, swapping the import is all it takes: the same parameter tree, so the
    same checkpoints.
    """)
    nb.code("""
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
    """)
    nb.md("""
    On ordinary data the two modules agree to f32 rounding; they differ only where flax's
    fast variance breaks down (section 3). The other modules (`RMSNorm`, `GroupNorm`,
    `InstanceNorm`, `BatchNorm`, and the `lnjax.nnx` versions) are drop-ins in the same way.
    """)
    return nb


# --------------------------------------------------------------------------
# 02: permutation-invariant MNIST, Figure 6.
# --------------------------------------------------------------------------


def pi_mnist_notebook() -> Notebook:
    nb = Notebook("02_permutation_invariant_mnist")
    nb.md(f"""
    # Permutation-invariant MNIST: layer norm vs batch norm at batch sizes 128 and 4

    {nb.badge()}

    The paper's section 6.7 and Figure 6, through lnjax's API: a 784-1000-1000-10 network
    trained with Adam, without normalization (*baseline*), with **batch norm** on every
    layer, and with **layer norm** on the hidden layers, at batch sizes 128 and 4 (with
    the unbiased variance estimate for batch norm at batch size 4). The paper's claim:
    layer norm, which normalizes each case on its own, is robust to the batch size, while
    batch norm, whose statistics come from the four cases of a mini-batch, is not.

    Reference: {PAPER}, section 6.7, Figure 6.

    By default the notebook runs a **small** version that finishes in a minute or two on
    a 2-core CPU: 2,000 training examples, two hidden layers of 256 units, 5 epochs. Set
    `FULL = True` below for the paper's setting: 55,000 examples, 1000-1000 hidden units,
    5 epochs (the paper plots 60); on a 2-core CPU expect more than an hour (batch size 4
    is 13,750 steps per epoch). The command-line version is
    `python -m lnjax.experiments.pi_mnist`.
    """)
    nb.code(INSTALL)
    nb.code("""
    FULL = False  # True: the paper's size (55,000 examples, 1000-1000 hidden units)
    """)
    nb.code("""
    %matplotlib inline
    import os

    import jax
    import matplotlib.pyplot as plt
    import optax
    from IPython.display import Markdown, display

    import lnjax
    from lnjax import data, training
    from lnjax.experiments.pi_mnist import COLORS, LABELS, MLP

    print(f"lnjax {lnjax.__version__}, jax {jax.__version__}, backend {jax.default_backend()}")
    """)
    nb.md(DATA_MD)
    nb.code(DATA_CODE)
    nb.md("""
    ## The configuration and the model

    `MLP(method, hidden=...)` flattens the 28×28 image (so the pixel order does not
    matter: *permutation-invariant*) and stacks `Dense` layers with ReLU units. With
    `"layernorm"` each hidden layer's summed inputs go through `lnjax.linen.LayerNorm`
    (and the dense bias is dropped: layer norm's bias takes its place); with
    `"batchnorm"`, every layer, the output layer included, goes through
    `lnjax.linen.BatchNorm` (`unbiased=True` for small batches; running averages with
    momentum 0.99 at test time).
    """)
    nb.code("""
    if TINY:  # the test's configuration: seconds
        N_TRAIN, HIDDEN, EPOCHS = 200, (32, 32), 2
    elif FULL:  # the paper's
        N_TRAIN, HIDDEN, EPOCHS = None, (1000, 1000), 5
    else:  # small: a couple of minutes on a CPU
        N_TRAIN, HIDDEN, EPOCHS = 2000, (256, 256), 5
    BATCH_SIZES = (128, 4)
    METHODS = ("baseline", "batchnorm", "layernorm")
    LR, SEED = 1e-3, 0

    x_train, y_train = train.images[:N_TRAIN], train.labels[:N_TRAIN]
    print(f"{len(y_train)} training examples, hidden layers {HIDDEN}, {EPOCHS} epochs, "
          f"batch sizes {BATCH_SIZES}; test on {len(test.labels)} examples")

    variables = MLP("layernorm", hidden=HIDDEN).init(jax.random.key(0), x_train[:1], train=False)
    print("layer norm model:", jax.tree.map(lambda p: p.shape, variables["params"]))
    """)
    nb.md("""
    ## Training

    For each batch size and method: `training.create_train_state` initializes the model
    and Adam, and `training.fit` runs the epochs (each epoch one `lax.scan` over its
    shuffled batches) and evaluates the test split after each. The histories hold, per
    epoch, the mean training NLL over the epoch's steps and the test NLL and error.
    """)
    nb.code("""
    results = {"dataset": {"name": DATASET, "source": train.source}, "runs": {}}
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
    """)
    nb.md("""
    ## Figure 6

    The paper's layout: training NLL (log scale) above test error, one column per batch
    size. (`lnjax.experiments.pi_mnist.plot(results, "figure6.png")` writes the same
    layout to a PNG for command-line runs; its title names the paper's 784-1000-1000-10
    network, so here we draw it directly with the sizes actually used.)
    """)
    nb.code("""
    sizes = sorted(BATCH_SIZES, reverse=True)
    fig, axes = plt.subplots(2, len(sizes), figsize=(4.4 * len(sizes), 6.4), squeeze=False,
                             sharey="row")  # the same scales for both batch sizes
    for col, batch_size in enumerate(sizes):
        top, bottom = axes[0, col], axes[1, col]
        for method, by_size in results["runs"].items():
            h = by_size[str(batch_size)]
            style = dict(color=COLORS[method], label=LABELS[method], marker="o", markersize=3)
            top.plot(h["epoch"], h["train_loss"], **style)
            bottom.plot(h["epoch"], [100 * e for e in h["test_error"]], **style)
        top.set(yscale="log", title=f"batch size {batch_size}", ylabel="train NLL")
        bottom.set(xlabel="epoch", ylabel="test error (%)")
        for ax in (top, bottom):
            ax.grid(alpha=0.3, which="both")
            ax.set_xticks(h["epoch"])
        top.legend()
    widths = "-".join(str(w) for w in (784, *HIDDEN, 10))
    fig.suptitle(f"Permutation-invariant {DATASET}, {widths}, Adam, "
                 f"{len(y_train)} training examples", fontsize=11)
    fig.tight_layout()
    plt.show()
    """)
    nb.code("""
    # How much each method loses going from batch size 128 to 4 (last epoch).
    lines = ["| method | train NLL, 128 → 4 | test error %, 128 → 4 |", "|---|---:|---:|"]
    for method in METHODS:
        big, small = (results["runs"][method][str(b)] for b in (128, 4))
        lines.append(f"| {LABELS[method]} | {big['train_loss'][-1]:.3f} → "
                     f"{small['train_loss'][-1]:.3f} | {100 * big['test_error'][-1]:.2f} → "
                     f"{100 * small['test_error'][-1]:.2f} |")
    display(Markdown("\\n".join(lines)))
    """)
    nb.md("""
    **What to look for.** In the paper, layer norm's curves barely move between the
    two batch sizes, while batch norm at batch size 4 trains to a clearly higher NLL: its
    mean and variance come from four cases, so every output is noisy, and the running
    averages used at test time differ from the statistics used in training. The table
    above shows the same comparison for this run. In the default small run on
    Fashion-MNIST (lnjax 0.1.0, jax 0.10.2, CPU), batch norm's training NLL at batch size 4
    was more than twice its value at 128 (0.55 → 1.29) while layer norm's hardly changed
    (0.36 → 0.38) and stayed the lowest at both sizes; the test errors of such a short
    run on 2,000 examples are noisy (each method's moved by about a point). With
    `FULL = True` (or `python -m lnjax.experiments.pi_mnist`) the run has the paper's
    size; the README reports a 3-epoch, 12,000-example run in which layer norm's test
    error moved by 0.4 points between the batch sizes and batch norm's by 3.9.
    """)
    return nb


# --------------------------------------------------------------------------
# 03: LN-LSTM vs LSTM on sequential MNIST, and the summed inputs over time.
# --------------------------------------------------------------------------


def ln_lstm_notebook() -> Notebook:
    nb = Notebook("03_ln_lstm")
    nb.md(f"""
    # LN-LSTM against LSTM on row-by-row sequential MNIST

    {nb.badge()}

    An LSTM reads each 28×28 image one row (28 pixels) per time step and a softmax layer
    classifies its last hidden state. We train a plain LSTM and a layer-normalized LSTM
    (the paper's Eqs. 20–22) from the same initial weights, and then look inside: the
    **summed inputs** of the recurrent units at each of the 28 time steps, with and
    without layer norm, at initialization and after training. The paper (section 3.1)
    motivates layer norm in RNNs by these dynamics: in a plain RNN the average magnitude
    of the summed inputs to the recurrent units tends to grow or shrink from step to
    step, and layer norm makes the layer invariant to re-scaling all of them; its
    abstract: "Layer normalization is very effective at stabilizing the hidden state
    dynamics in recurrent networks."

    Reference: {PAPER}, sections 3.1 and 6, Eqs. 20–22.

    The LN-LSTM step (gate order i, f, g, o; `LN(v; a)` is layer norm over the whole 4H
    gate vector with gain `a`):

        (i, f, g, o) = LN(W_h h_{{t-1}}; a_h) + LN(W_x x_t; a_x) + b
        c_t = σ(f) ⊙ c_{{t-1}} + σ(i) ⊙ tanh(g)
        h_t = σ(o) ⊙ tanh(LN(c_t; a_c, b_c))

    and the plain LSTM is the same without the three layer norms. By default the notebook
    trains each network for 40 steps of 64 examples (the whole notebook takes a minute or
    two on a CPU); set `FULL = True` for two epochs over the 55,000 training examples (the
    setting of `python -m lnjax.experiments.seq_mnist`, several minutes on a CPU).
    """)
    nb.code(INSTALL)
    nb.code("""
    FULL = False  # True: two epochs over 55,000 examples
    """)
    nb.code("""
    %matplotlib inline
    import functools
    import os

    import jax
    import jax.numpy as jnp
    import matplotlib.pyplot as plt
    import numpy as np
    import optax

    import lnjax
    from lnjax import data, training
    from lnjax import linen as lnn
    from lnjax.experiments.seq_mnist import RowClassifier, standardize

    print(f"lnjax {lnjax.__version__}, jax {jax.__version__}, backend {jax.default_backend()}")
    """)
    nb.md(DATA_MD + "\n\n" + _src("""
    The pixels are standardized with the training set's mean and standard deviation
    (`standardize`): a layer-normalized recurrence that reads blank rows of exact zeros
    from a zero state would normalize zero vectors (see the README's *Known limits*).
    """))
    nb.code(DATA_CODE)
    nb.code("""
    if TINY:  # the test's configuration: seconds
        HIDDEN, BATCH, N_TRAIN, EPOCHS, N_TEST, N_PROBE = 16, 16, 80, 1, 100, 32
    elif FULL:
        HIDDEN, BATCH, N_TRAIN, EPOCHS, N_TEST, N_PROBE = 128, 128, None, 2, None, 256
    else:  # small: 40 steps of 64 examples
        HIDDEN, BATCH, N_TRAIN, EPOCHS, N_TEST, N_PROBE = 128, 64, 40 * 64, 1, 1000, 256

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
    """)
    nb.md("""
    ## Training both networks

    `RowClassifier("lstm")` and `RowClassifier("ln_lstm")` use the same layer,
    `lnjax.linen.LNLSTM(hidden, layer_norm=False/True)`, so the comparison isolates
    layer norm; both start from the same kernels (the LN-LSTM adds the gains `a_x`,
    `a_h`, `a_c` at 1 and `b_c` at 0). Adam with learning rate 1e-3 and gradient clipping
    at norm 1. We keep a copy of the initial parameters (`fit` donates the state's
    buffers).
    """)
    nb.code("""
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
    """)
    nb.code("""
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for method, label in METHODS.items():
        steps, losses = zip(*histories[method]["step_loss"])
        ax.plot(steps, losses, label=label, color="tab:red" if method == "ln_lstm" else "tab:blue")
    ax.set(xlabel="step", ylabel="training NLL (batch)", title=f"Row-by-row {DATASET}")
    ax.grid(alpha=0.3)
    ax.legend()
    plt.show()
    """)
    nb.md("""
    ## The summed inputs over the 28 time steps

    We rerun each trained (and initial) network on a batch of test images, one step at a
    time, and record the **summed inputs** of the 4H gate units at every step:

    * plain LSTM: `a_t = W_h h_{t-1} + W_x x_t + b`, which goes straight into the gates;
    * LN-LSTM: the raw `a_t = W_h h_{t-1} + W_x x_t` *before* normalization (the bias
      comes after the layer norms), and the gate pre-activations that the nonlinearities
      actually see, `LN(W_h h_{t-1}; a_h) + LN(W_x x_t; a_x) + b`;
    * both: the recurrent part `W_h h_{t-1}` alone.

    For each step we take the mean and the standard deviation **across the 4H units**
    of each image, averaged over the batch. The loop uses the trained parameters
    (`variables["params"]["rnn"]["cell"]`: `input_kernel` (28, 4H), `recurrent_kernel`
    (H, 4H), `bias` (4H) and, with layer norm, `input_scale`, `recurrent_scale`,
    `cell_scale`, `cell_bias`), advances the state with the library's own step
    (`LSTMSpec.step` from `lnjax.recurrent`, the spec taken from the layer), and checks at
    every step that the gates computed here reproduce its new state, and at the end
    that the logits equal the model's. (Each step is `jax.jit`-compiled once; the loop
    over the 28 steps is plain Python.)
    """)
    nb.code('''
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
    ''')
    nb.code("""
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
                 f"{DATASET}", fontsize=11)
    fig.tight_layout()
    plt.show()
    """)
    nb.code("""
    # The spread (std across units) over the steps t = 2..28, as numbers.
    for (method, stage), s in stats.items():
        for name in ("summed", "gates", "recurrent"):
            if method == "lstm" and name == "gates":
                continue  # the same as "summed"
            spread = s[name][1][1:]
            print(f"{METHODS[method]:>8} {stage:>7} {name:>9}: spread {spread.min():.3f} .. "
                  f"{spread.max():.3f} (max/min {spread.max() / spread.min():.2f})")
    """)
    nb.md("""
    **What the plot shows.** The numbers below are from the default small run on
    Fashion-MNIST (40 steps, lnjax 0.1.0, jax 0.10.2, CPU); the printout above gives
    this run's.

    * **Plain LSTM.** Its summed inputs change with the time step and with training.
      At initialization their spread follows the image: about 0.8 at the blank first
      and last rows, up to 1.1 in the middle. The recurrent part `W_h h_{t-1}` starts at
      0 (`h_0 = 0`) and builds up over the first steps. After only 40 training steps
      the spread is larger at almost every step (up to 1.3), the mean has moved from
      about 0 to between 0.1 and 0.3 and varies along the sequence, and the recurrent
      part's spread has roughly doubled (up to about 0.6).
    * **LN-LSTM, raw summed inputs.** At initialization they are almost the LSTM's
      (the same kernels; the recurrent part is a little larger because
      `h_t = σ(o) tanh(LN(c_t))` is at full scale from the first step). Training moved
      them much less in this run: the mean stays near 0 and the spread grew by a few
      hundredths.
    * **LN-LSTM, what the gates see** (dashed). By construction, spread 1 at the first
      step (only `LN(W_x x)`, since `h_0 = 0`), then about 1.42 ≈ √2 at every later
      step, at initialization and after training: two normalized vectors, whose sum's
      spread depends only on how correlated they are (here hardly: 1.40 to 1.44). The
      mean is near 0 (exactly the mean of `b` while the gains are 1). The dependence on
      the time step and on the weights' scale that the raw sums show does not reach the
      gates: this is the stabilization of the hidden dynamics that the paper describes.
      (The gains `a_x`, `a_h` and the bias are learned, so longer training can move
      this level.)

    This is one seed and a few dozen steps: it shows the mechanism, not the size of the
    effect over a whole training run. With `FULL = True` the networks train for 858
    steps; the README reports the accuracies of such a run.
    """)
    return nb


# --------------------------------------------------------------------------
# 04: the benchmark suite in quick mode, as plots.
# --------------------------------------------------------------------------

BENCH_INSTALL = f"""\
# In Colab, clone lnjax (the benchmarks live beside the package) and install it;
# run locally from a clone, this cell does nothing.
import sys

if "google.colab" in sys.modules:
    !git clone -q {REPO_URL} /content/lnjax
    %pip install -q -e "/content/lnjax[bench,torch]"
    %cd /content/lnjax
"""


def benchmarks_notebook() -> Notebook:
    nb = Notebook("04_benchmarks")
    nb.md(f"""
    # lnjax benchmarks: layer norm and LN-LSTM against flax and PyTorch

    {nb.badge()}

    Runs the benchmark suite (`python -m benchmarks.run --quick`) and plots its
    ratios: lnjax's layer norm and RMS norm (forward + backward, and forward
    alone) against `flax.linen.LayerNorm`/`RMSNorm`, against `torch.nn.LayerNorm`
    when PyTorch is installed, and against a memory copy of the same bytes (the
    floor); the compiled temporary memory; and the LN-LSTM sequence layer
    against flax's LSTM with and without layer norm. All timings are medians of
    interleaved rounds in this one process, so the *ratios* are what to read.

    Reference: {PAPER}; the LN-LSTM is its Eqs. 20-22.
    """)
    nb.code(BENCH_INSTALL)
    nb.md("""
    **Settings.** Quick mode: few rounds of the real shapes, a few minutes on a
    laptop CPU. If the environment variable `LNJAX_NOTEBOOK_DATA_DIR` is set (as
    `tests/test_notebooks.py` does), tiny shapes are used so the notebook runs
    in seconds; the numbers are then meaningless, only the plumbing is tested.
    """)
    nb.code("""
    %matplotlib inline
    import os
    import sys
    import tempfile
    from pathlib import Path

    import lnjax

    # The benchmarks sit beside the package in a clone of the repository.
    root = Path(lnjax.__file__).resolve().parents[1]
    if not (root / "benchmarks" / "run.py").exists():
        raise FileNotFoundError(f"benchmarks/ not found beside {root / 'lnjax'}: run this "
                                "notebook from a clone of the repository (pip install -e .)")
    sys.path.insert(0, str(root))
    from benchmarks import run as bench

    TINY = os.environ.get("LNJAX_NOTEBOOK_DATA_DIR") is not None
    out = Path(tempfile.mkdtemp(prefix="lnjax-bench-"))
    results = bench.run(quick=True, shapes="tiny" if TINY else "full", out=out,
                        cases=["ln_fb", "rms_fb", "ln_fwd", "ln_memory"] if TINY else None)
    print(results["machine"])
    """)
    nb.md("""
    ## Speed-ups against flax and PyTorch

    Each bar is `time(other) / time(lnjax)`: above 1, lnjax is faster. The black
    ticks are the targets of the speed work.
    """)
    nb.code("""
    %matplotlib inline
    import matplotlib.pyplot as plt  # (the suite wrote its PNG with the Agg backend)
    import numpy as np

    rows = [(rec["title"], r) for rec in results["cases"] for r in rec.get("ratios", [])
            if r["num"] != "copy"]
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(rows) + 1.2))
    ys = np.arange(len(rows))[::-1]
    colors = ["tab:blue" if "torch" in r["den"] or "torch" in r["num"] else "tab:orange"
              for _, r in rows]
    ax.barh(ys, [r["value"] for _, r in rows], color=colors)
    for y, (_, r) in zip(ys, rows):
        if r["target"] is not None:
            ax.plot([r["target"]] * 2, [y - 0.4, y + 0.4], color="black", lw=2)
    ax.axvline(1, color="gray", ls=":")
    ax.set_yticks(ys, [f"{t}: {r['num']} vs {r['den']}" for t, r in rows], fontsize=8)
    ax.set_xlabel("speed-up (x)")
    ax.set_title("lnjax against flax (orange) and PyTorch (blue)")
    fig.tight_layout()
    plt.show()
    """)
    nb.md("""
    ## Distance from the memory floor

    Time in units of one copy of the same array: the forward pass reads `x`
    and writes `y` (about 1 copy), forward + backward also reads `dy` and
    writes `dx` (about 2.5 copies at best).
    """)
    nb.code("""
    rows = [(rec["title"], r) for rec in results["cases"] for r in rec.get("ratios", [])
            if r["num"] == "copy"]
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(rows) + 1.2))
    ys = np.arange(len(rows))[::-1]
    ax.barh(ys, [r["value"] for _, r in rows],
            color=["tab:green" if "lnjax" in r["den"] else "tab:gray" for _, r in rows])
    ax.set_yticks(ys, [f"{t}: {r['den']}" for t, r in rows], fontsize=8)
    ax.set_xlabel("time / time of one copy")
    ax.set_title("Layer norm in units of a memory copy (lnjax green)")
    fig.tight_layout()
    plt.show()
    """)
    nb.code("""
    from IPython.display import Markdown, display

    display(Markdown((out / "results.md").read_text()))
    """)
    return nb


NOTEBOOKS = (layer_norm_notebook, pi_mnist_notebook, ln_lstm_notebook, benchmarks_notebook)


def build(out_dir: Path = HERE) -> list[Path]:
    """Writes every notebook (without outputs) to ``out_dir``; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for make in NOTEBOOKS:
        nb = make()
        path = out_dir / f"{nb.stem}.ipynb"
        nbformat.write(nb.node(), str(path))
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE, help="where to write the notebooks")
    args = parser.parse_args(argv)
    for path in build(args.out):
        print("wrote", path)


if __name__ == "__main__":
    main()
