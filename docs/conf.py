"""Sphinx configuration of lnjax's documentation (``make docs``).

Sphinx + autodoc + napoleon (Google-style docstrings) + MyST-NB, with the
sphinx-book-theme, as flax and optax build theirs. The guides (``docs/guides/``)
are written by hand. Before Sphinx reads the sources, :func:`generate.generate`
(``docs/generate.py``) writes the notebooks of ``colabs/`` executed with the small
settings below (``docs/notebooks/``, git-ignored).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import sys
import textwrap
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent))  # lnjax, benchmarks: importable from a clone
sys.path.insert(0, str(DOCS))

import generate  # noqa: E402  (docs/generate.py)

import lnjax  # noqa: E402

# -- The notebooks' settings ------------------------------------------------
# What the docs build assigns, in a hidden cell right after each notebook's
# `parameters` cell, so that all five run in a few minutes on a 2-core CPU.
# DATA_DIR is left to the notebooks (MNIST or Fashion-MNIST where installed);
# where neither is, generate.py points it at small synthetic IDX files.
NOTEBOOK_SETTINGS = {
    "01_layer_norm.ipynb": {},
    "02_permutation_invariant_mnist.ipynb": {
        "N_TRAIN": 1_000, "HIDDEN": (64, 64), "EPOCHS": 3},
    "03_ln_lstm.ipynb": {
        "HIDDEN": 32, "BATCH": 32, "N_TRAIN": 320, "EPOCHS": 1, "N_TEST": 500, "N_PROBE": 64},
    "04_benchmarks.ipynb": {
        "SHAPES": "tiny", "CASES": ["ln_fb", "rms_fb", "ln_fwd", "ln_memory"]},
    "05_transformer.ipynb": {
        "LAYERS": 1, "WIDTH": 32, "HEADS": 2, "MLP_DIM": 64, "BATCH": 32, "N_TRAIN": 640,
        "EPOCHS": 1, "WARMUP_STEPS": 5, "N_EVAL": 500},
}

# -- Project -----------------------------------------------------------------
project = "lnjax"
author = "The lnjax Authors"
copyright = "The lnjax Authors"  # noqa: A001
release = version = lnjax.__version__

# -- General -----------------------------------------------------------------
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    # MathJax from the site itself, not a CDN: the equations render offline.
    "sphinx-mathjax-offline",
    "sphinx.ext.viewcode",
    "myst_nb",
]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
root_doc = "index"
exclude_patterns = [
    "_build",
    "**.ipynb_checkpoints",
    "_generated",  # the notebooks' stamps, synthetic data
    "notebooks/*.tmp",
]
templates_path: list[str] = []

# -- autodoc, autosummary, napoleon -------------------------------------------
autodoc_member_order = "bysource"
autodoc_typehints = "none"  # signatures as flax's API pages show them; Args: say the types
autodoc_preserve_defaults = True  # `lecun_normal()`, not `<function ...>`
autosummary_generate = False  # tables on the module's page, as optax's API pages
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_attr_annotations = False  # Attributes: sections say what the defaults are
add_module_names = True

# -- MyST-NB -----------------------------------------------------------------
nb_execution_mode = "off"  # generate.py executes the notebooks, with their settings
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "colon_fence"]
# Notebook cells that display Markdown (tables) are parsed as MyST, which has tables;
# CommonMark would show them as pipe text.
nb_render_markdown_format = "myst"
myst_heading_anchors = 3

# -- HTML --------------------------------------------------------------------
html_theme = "sphinx_book_theme"
html_title = f"lnjax {release}"
html_static_path: list[str] = []
html_theme_options = {
    "show_toc_level": 2,
    "home_page_in_toc": True,
}
html_show_sourcelink = False


def _generate(app) -> None:
    generate.generate(NOTEBOOK_SETTINGS)


def _skip_foreign_members(app, what, name, obj, skip, options):
    """A class's members that are not lnjax's own are not documented: a Linen module's
    ``activation = nn.relu`` is a field (its Attributes section says so), not a method."""
    if what == "class" and callable(obj):
        module = getattr(obj, "__module__", None) or ""
        if not module.startswith("lnjax"):
            return True
    return None


def _init_signature(cls) -> str:
    """``cls.__init__``'s parameters as written in its source (defaults as source text)."""
    fn = ast.parse(textwrap.dedent(inspect.getsource(cls.__init__))).body[0]
    a = fn.args
    positional = a.posonlyargs + a.args
    defaults = [None] * (len(positional) - len(a.defaults)) + a.defaults
    parts = [p.arg if d is None else f"{p.arg}={ast.unparse(d)}"
             for p, d in zip(positional, defaults)][1:]  # without self
    if a.vararg:
        parts.append(f"*{a.vararg.arg}")
    elif a.kwonlyargs:
        parts.append("*")
    parts += [p.arg if d is None else f"{p.arg}={ast.unparse(d)}"
              for p, d in zip(a.kwonlyargs, a.kw_defaults)]
    if a.kwarg:
        parts.append(f"**{a.kwarg.arg}")
    return f"({', '.join(parts)})"


def _field_defaults(cls) -> dict[str, str]:
    """The source text of each dataclass field's default, from ``cls`` and its bases."""
    texts: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        for node in tree.body[0].body if tree.body else ():
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and node.value is not None):
                texts[node.target.id] = ast.unparse(node.value)
    return texts


def _dataclass_signature(cls, skip: tuple[str, ...] = ()) -> str:
    """A dataclass's fields with their defaults as written in the source."""
    texts = _field_defaults(cls)
    parts = []
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            parts.append(f.name)
        else:
            parts.append(f"{f.name}={texts.get(f.name, repr(f.default))}")
    return f"({', '.join(parts)})"


def _module_signature(app, what, name, obj, options, signature, return_annotation):
    """Classes' signatures as a user calls them: an NNX module's ``__init__`` (not its
    metaclass's ``(*args, **kwargs)``), a Linen module's fields without flax's ``parent``
    and ``name``, and a dataclass's defaults as written (``nn.sigmoid``, not
    ``<PjitFunction of <function sigmoid>>``)."""
    if what != "class" or not inspect.isclass(obj):
        return None
    from flax import linen, nnx

    if issubclass(obj, nnx.Module):
        return _init_signature(obj), return_annotation
    if issubclass(obj, linen.Module):
        return _dataclass_signature(obj, skip=("parent", "name")), return_annotation
    if dataclasses.is_dataclass(obj):
        return _dataclass_signature(obj), return_annotation
    return None


def setup(app) -> None:
    app.connect("builder-inited", _generate)
    app.connect("autodoc-skip-member", _skip_foreign_members)
    app.connect("autodoc-process-signature", _module_signature)
