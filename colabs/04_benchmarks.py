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
# # lnjax benchmarks: layer norm and LN-LSTM against flax and PyTorch
#
# Runs the benchmark suite (`python -m benchmarks.run --quick`) and shows its
# ratios: lnjax's layer norm and RMS norm (forward + backward, and forward
# alone) against `flax.linen.LayerNorm`/`RMSNorm`, against `torch.nn.LayerNorm`
# when PyTorch is installed, and against a memory copy of the same bytes (the
# floor); the compiled temporary memory; and the LN-LSTM sequence layer
# against flax's LSTM with and without layer norm. All timings are medians of
# interleaved rounds in this one process, so the *ratios* are what to read.
#
# Reference: Ba, Kiros & Hinton, *Layer Normalization*, 2016,
# [arXiv:1607.06450](https://arxiv.org/abs/1607.06450); the LN-LSTM is its Eqs. 20-22.
#
# **Installing lnjax.** The benchmarks live beside the package in a clone of the
# repository, so this notebook runs from a clone. The first code cell installs lnjax only
# if this kernel cannot import it (in the clone's virtualenv, after `make bench` or
# `pip install -e ".[bench]"`, it installs nothing), editable, from `LNJAX`, set at its
# top. Its default, `"..[bench]"`, is the clone this notebook sits in: Jupyter runs a
# notebook in the notebook's folder, `colabs/`, so `..` is the clone's root. Elsewhere,
# as in Colab, clone your copy of the repository first and set `LNJAX` to its folder;
# `"..[bench,torch]"` adds PyTorch, which the suite then compares against.

# %%
# Where pip installs lnjax from, editable, if this kernel cannot import it (see above):
# the clone this notebook is in (the default) or another clone's folder.
LNJAX = "..[bench]"

import importlib.metadata
import importlib.util
import site
import sys
import sysconfig

if importlib.util.find_spec("lnjax") is None:
    # %pip install -q -e "$LNJAX"
    # An editable install takes effect through a .pth file, which Python reads at start-up:
    # read it now.
    site.addsitedir(sysconfig.get_path("purelib"))
    importlib.invalidate_caches()
    print(f"lnjax {importlib.metadata.version('lnjax')} installed from {LNJAX}, editable")

# %% [markdown]
# **Parameters.** The one cell to edit. By default the suite runs in quick mode (few
# rounds of the real shapes, a few minutes on a laptop CPU); `FULL = True` runs every
# round, as `make bench` does. `SHAPES = "tiny"` swaps the real shapes for toy ones
# that only exercise the plumbing (their numbers mean nothing), and `CASES` picks a
# subset of the suite's cases (`None`: all of them).

# %% tags=["parameters"]
FULL = False  # True: every round of the suite (as `make bench`); False: quick mode
SHAPES = "full"  # "full": the real shapes; "tiny": toy shapes, numbers meaningless
CASES = None  # None: every case; or a list such as ["ln_fb", "ln_fwd"]

# %%
# %matplotlib inline
import tempfile
from pathlib import Path

from IPython.display import Image, Markdown, display

import lnjax

# The benchmarks sit beside the package in a clone of the repository.
root = Path(lnjax.__file__).resolve().parents[1]
if not (root / "benchmarks" / "run.py").exists():
    raise FileNotFoundError(f"benchmarks/ not found beside {root / 'lnjax'}: run this "
                            "notebook from a clone of the repository (pip install -e .)")
sys.path.insert(0, str(root))
from benchmarks import report
from benchmarks import run as bench  # importable now that the clone is on the path

out = Path(tempfile.mkdtemp(prefix="lnjax-bench-"))
results = bench.run(quick=not FULL, shapes=SHAPES, out=out, cases=CASES)
print(results["machine"])

# %% [markdown]
# ## Speed-ups and the memory floor
#
# `benchmarks.report.plot(results, path)` draws every ratio of the run as one bar: against
# flax and PyTorch, how many times faster lnjax is (above 1, lnjax is faster); against
# a memory copy of the same bytes, lnjax's time in units of one copy. The forward pass
# reads `x` and writes `y` (about 1 copy); forward + backward also reads `dy` and
# writes `dx` (about 2.5 copies at best). The black ticks are the targets of the
# speed work: a green bar meets its target, a red one misses it, a gray one has none.

# %%
report.plot(results, out / "ratios.png")
display(Image(filename=str(out / "ratios.png")))

# %% [markdown]
# The same run as tables, with every measured time (the `results.md` that the suite
# writes beside its `results.json`):

# %%
display(Markdown((out / "results.md").read_text()))
