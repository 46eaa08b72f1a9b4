"""The teaching notebooks in colabs/: each ``colabs/0N_name.ipynb`` is paired with a
jupytext percent-format source ``colabs/0N_name.py``; the two hold the same cells, the
notebook is stored without outputs, and each runs end to end in a Jupyter kernel and
draws a figure.

How to edit a notebook: edit the ``.py`` (plain Python, linted by ``make lint``; a
``# %%`` line starts a code cell, ``# %% [markdown]`` a Markdown cell, and magics such
as ``%pip`` are written commented out), then write its cells into the notebook::

    .venv/bin/jupytext --sync colabs/0N_name.py
    .venv/bin/python -m pytest -q tests/test_notebooks.py

(In Jupyter with jupytext installed, saving the paired notebook updates the ``.py``
too.) Store the notebook without outputs: if it was run, ``jupytext --to ipynb
colabs/0N_name.py`` rewrites it from the ``.py`` alone. A new notebook needs the same
header as the others (``formats: ipynb,py:percent``) and an entry in ``NOTEBOOKS``.

The runs use small generated MNIST-format IDX files and tiny sizes. The notebooks know
nothing of this: each has one cell tagged ``parameters`` (papermill's convention) with
the settings a reader changes, and the test inserts a cell tagged
``injected-parameters`` right after it that overrides some of them (``TINY`` below).
"""

import ast
import atexit
import builtins
import importlib.metadata
import importlib.util
import os
import re
import site
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
import pytest

_NOTEBOOKS = ("the notebooks extra is not installed: pip install 'lnjax[notebooks]' "
              "(make test installs it)")
nbformat = pytest.importorskip("nbformat", reason=_NOTEBOOKS)
nbclient = pytest.importorskip("nbclient", reason=_NOTEBOOKS)
ipykernel_spec = pytest.importorskip("ipykernel.kernelspec", reason=_NOTEBOOKS)
jupytext = pytest.importorskip("jupytext", reason=_NOTEBOOKS)
inputtransformer2 = pytest.importorskip("IPython.core.inputtransformer2", reason=_NOTEBOOKS)
interactiveshell = pytest.importorskip("IPython.core.interactiveshell", reason=_NOTEBOOKS)
traitlets_config = pytest.importorskip("traitlets.config", reason=_NOTEBOOKS)

from lnjax import parallel  # noqa: E402
from tests.helpers import idx_bytes, write  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COLABS = ROOT / "colabs"
NOTEBOOKS = ("01_layer_norm.ipynb", "02_permutation_invariant_mnist.ipynb", "03_ln_lstm.ipynb",
             "04_benchmarks.ipynb", "05_transformer.ipynb")
PAIRING = "ipynb,py:percent"
NOTEBOOK_SECONDS = 180  # each notebook, kernel start included
KERNEL = "lnjax-notebook-test"
N_TRAIN = 5_200  # "train" is all but the last 5,000 of the training file
N_TEST = 200
DATA_DIR = "<the generated IDX folder>"  # replaced by the fixture's folder
# What each run overrides in the notebook's parameters cell: tiny sizes, seconds each.
TINY = {
    "01_layer_norm.ipynb": {},
    "02_permutation_invariant_mnist.ipynb": {
        "DATA_DIR": DATA_DIR, "N_TRAIN": 200, "HIDDEN": (32, 32), "EPOCHS": 2},
    "03_ln_lstm.ipynb": {
        "DATA_DIR": DATA_DIR, "HIDDEN": 16, "BATCH": 16, "N_TRAIN": 80, "EPOCHS": 1,
        "N_TEST": 100, "N_PROBE": 32},
    "04_benchmarks.ipynb": {
        "SHAPES": "tiny", "CASES": ["ln_fb", "rms_fb", "ln_fwd", "ln_memory"]},
    "05_transformer.ipynb": {
        "DATA_DIR": DATA_DIR, "LAYERS": 1, "WIDTH": 16, "HEADS": 2, "MLP_DIM": 32, "BATCH": 32,
        "N_TRAIN": 128, "EPOCHS": 2, "WARMUP_STEPS": 4, "N_EVAL": 64},
}
# Words that belong to the tests, not to a notebook.
TEST_WORDS = ("LNJAX_NOTEBOOK", "tests/", "pytest", "test_notebooks", "TINY",
              "injected-parameters")


def _read(name):
    return nbformat.read(COLABS / name, as_version=4)


def _source_path(name):
    return COLABS / Path(name).with_suffix(".py").name


def _read_source(name):
    return jupytext.read(_source_path(name))


def _cells(nb):
    """What pairing keeps equal: each cell's type, source and tags (not ids or outputs)."""
    return [(c.cell_type, c.source, tuple(c.metadata.get("tags", ()))) for c in nb.cells]


def _parameters_cells(nb):
    return [c for c in nb.cells
            if c.cell_type == "code" and "parameters" in c.metadata.get("tags", ())]


def test_the_notebooks_are_all_there():
    assert sorted(p.name for p in COLABS.glob("*.ipynb")) == list(NOTEBOOKS)
    # Each with its source, and no other Python file (no generator script).
    assert sorted(p.name for p in COLABS.glob("*.py")) == [
        _source_path(n).name for n in NOTEBOOKS]
    assert set(TINY) == set(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_paired_with_a_percent_format_source(name):
    nb, source = _read(name), _read_source(name)
    assert nb.metadata.jupytext.formats == PAIRING
    assert source.metadata["jupytext"]["formats"] == PAIRING
    assert source.metadata["jupytext"]["text_representation"]["format_name"] == "percent"
    assert source.metadata["kernelspec"] == nb.metadata.kernelspec


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_and_source_hold_the_same_cells(name):
    notebook, source = _cells(_read(name)), _cells(_read_source(name))
    assert notebook == source, (
        f"colabs/{name} and colabs/{_source_path(name).name} differ: edit the .py, then "
        f"run `jupytext --sync colabs/{_source_path(name).name}`")


@pytest.mark.parametrize("edit", ["code", "markdown", "tags"])
def test_the_pairing_check_sees_an_edit_on_one_side(edit):
    """An edit of the .py alone (a line of code, a word of Markdown, a tag) is a difference."""
    name = NOTEBOOKS[1]
    text = _source_path(name).read_text()
    old, new = {
        "code": ("BATCH_SIZES = (128, 4)\n", "BATCH_SIZES = (128, 8)\n"),
        "markdown": ("# ## Training\n", "# ## Training the models\n"),
        "tags": ('# %% tags=["parameters"]\n', "# %%\n"),
    }[edit]
    assert text.count(old) == 1
    edited = jupytext.reads(text.replace(old, new), fmt="py:percent")
    assert _cells(edited) != _cells(_read(name))
    assert _cells(jupytext.reads(text, fmt="py:percent")) == _cells(_read(name))


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_stored_without_outputs(name):
    nb = _read(name)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code
    for cell in code:
        assert cell.execution_count is None, cell.source[:60]
        assert cell.outputs == [], cell.source[:60]
    assert nb.metadata.kernelspec.name == "python3"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_title_then_install_cell(name):
    nb = _read(name)
    title, install = nb.cells[0], nb.cells[1]
    assert title.cell_type == "markdown" and title.source.startswith("# ")
    assert "arXiv:1607.06450" in title.source
    assert "`LNJAX`" in title.source  # the title says where lnjax is installed from
    assert install.cell_type == "code"  # the first code cell, right after the title
    assert "%matplotlib inline" in "".join(c.source for c in nb.cells if c.cell_type == "code")


# --------------------------------------------------------------------------
# Installing lnjax: the first code cell, from the one place its top states.
# --------------------------------------------------------------------------

EDITABLE = {"04_benchmarks.ipynb"}  # the benchmarks live beside the package, in a clone
EXTRAS = {name: {"bench"} if name in EDITABLE else {"experiments"} for name in NOTEBOOKS}


def _python(source):
    """A code cell's source as the Python IPython runs (magics become calls)."""
    return inputtransformer2.TransformerManager().transform_cell(source)


def _install_from(nb):
    """The value of ``LNJAX``: a string assigned at the top level of the install cell."""
    [value] = [node.value.value for node in ast.parse(_python(nb.cells[1].source)).body
               if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
               and [ast.unparse(t) for t in node.targets] == ["LNJAX"]]
    assert isinstance(value, str)
    return value


def _shell_calls(source):
    """``(call, enclosing top-level statement)`` for each magic or shell escape in a cell."""
    found = []
    for top in ast.parse(_python(source)).body:
        for node in ast.walk(top):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and ast.unparse(node.func.value) == "get_ipython()"):
                found.append((node, top))
    return found


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_lnjax_is_installed_from_LNJAX_only_where_it_cannot_be_imported(name):
    nb = _read(name)
    value = _install_from(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    # One place: LNJAX is assigned once in the notebook, and the one pip is the install
    # cell's, on "$LNJAX", under `if importlib.util.find_spec("lnjax") is None:`.
    assert sum(len(re.findall(r"^LNJAX\s*=", c.source, re.M)) for c in code) == 1
    pips = [(index, call, top) for index, c in enumerate(nb.cells) if c.cell_type == "code"
            for call, top in _shell_calls(c.source) if "pip" in ast.unparse(call)]
    assert [(index, ast.unparse(call)) for index, call, _ in pips] == [
        (1, _python(f'%pip install -q {"-e " if name in EDITABLE else ""}"$LNJAX"').strip())]
    [(_, _, top)] = pips
    assert isinstance(top, ast.If)
    assert ast.unparse(top.test) == "importlib.util.find_spec('lnjax') is None"
    # No address nobody has checked, in this cell or any other.
    assert "://" not in nb.cells[1].source
    for cell in nb.cells:
        assert "github.com/lnjax" not in cell.source and "git+http" not in cell.source
    # The default: the clone the notebook sits in (Jupyter's working directory is colabs/).
    path, extras = re.fullmatch(r"(.+?)\[([\w,]+)\]", value).groups()
    assert (COLABS / path).resolve() == ROOT
    assert set(extras.split(",")) == EXTRAS[name]
    assert EXTRAS[name] <= set(importlib.metadata.metadata("lnjax").get_all("Provides-Extra"))


@pytest.fixture
def ipython(tmp_path, monkeypatch):
    """``(shell, pip_lines)``: an IPython shell whose ``%pip`` records its line, variables
    expanded, instead of running pip. This process's ``__main__`` and builtins, which the
    shell replaces and extends, are put back afterwards."""
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setitem(sys.modules, "__main__", sys.modules["__main__"])
    builtins_before = set(vars(builtins))
    config = traitlets_config.Config()
    config.HistoryManager.hist_file = ":memory:"
    shell = interactiveshell.InteractiveShell.instance(config=config)
    pip_lines = []
    shell.register_magic_function(pip_lines.append, "line", "pip")
    yield shell, pip_lines
    interactiveshell.InteractiveShell.clear_instance()
    atexit.unregister(shell.atexit_operations)
    for added in set(vars(builtins)) - builtins_before:
        delattr(builtins, added)


@pytest.mark.parametrize("importable", [True, False], ids=["lnjax-found", "lnjax-missing"])
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_install_cell_runs_pip_on_LNJAX_only_without_lnjax(name, importable, ipython,
                                                           monkeypatch, capsys):
    """The install cell in IPython: nothing where lnjax imports; where it does not, one
    ``pip install`` of LNJAX's value (editable for the benchmarks, whose .pth file is then
    read in this session)."""
    shell, pip_lines = ipython
    find_spec = importlib.util.find_spec
    if not importable:
        monkeypatch.setattr(importlib.util, "find_spec", lambda module, *args: (
            None if module == "lnjax" else find_spec(module, *args)))
    sitedirs = []
    monkeypatch.setattr(site, "addsitedir", lambda folder, *args: sitedirs.append(folder))
    nb = _read(name)
    shell.run_cell(nb.cells[1].source).raise_error()
    out = capsys.readouterr().out
    if importable:
        assert (pip_lines, sitedirs, out) == ([], [], "")
        return
    editable = name in EDITABLE
    assert pip_lines == [f'install -q {"-e " if editable else ""}"{_install_from(nb)}"']
    assert sitedirs == ([sysconfig.get_path("purelib")] if editable else [])
    assert f"installed from {_install_from(nb)}" in out


@pytest.mark.parametrize("name", NOTEBOOKS[1:])
def test_one_flag_cell_for_the_full_size_run(name):
    nb = _read(name)
    [parameters] = _parameters_cells(nb)
    assert parameters.source.startswith("FULL = False")
    sources = [c.source for c in nb.cells if c.cell_type == "code"]
    assert sum("FULL =" in s for s in sources) == 1


def test_no_parameters_cell_where_nothing_is_set():
    assert TINY[NOTEBOOKS[0]] == {}
    assert _parameters_cells(_read(NOTEBOOKS[0])) == []


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_the_test_settings_stay_out_of_the_notebook(name):
    nb = _read(name)
    for cell in nb.cells:
        for word in TEST_WORDS:
            assert word not in cell.source, (word, cell.source[:60])
        if cell.cell_type == "code":  # no settings from the environment
            assert "environ" not in cell.source and "getenv" not in cell.source, cell.source[:60]
    # What a run overrides are parameters the parameters cell assigns.
    if TINY[name]:
        [parameters] = _parameters_cells(nb)
        assigned = {t.id for node in ast.walk(ast.parse(parameters.source))
                    if isinstance(node, ast.Assign) for target in node.targets
                    for t in ast.walk(target) if isinstance(t, ast.Name)}
        assert set(TINY[name]) <= assigned, set(TINY[name]) - assigned


# --------------------------------------------------------------------------
# Running them.
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def idx_folder(tmp_path_factory):
    """A small MNIST-format data set: 5,200 training and 200 test examples, gzipped."""
    folder = tmp_path_factory.mktemp("idx")
    rng = np.random.default_rng(0)
    for part, n in (("train", N_TRAIN), ("t10k", N_TEST)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        images[:, :3] = 0  # blank rows, as in MNIST
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        write(folder / f"{part}-images-idx3-ubyte", idx_bytes(images, 2051), gz=True)
        write(folder / f"{part}-labels-idx1-ubyte", idx_bytes(labels, 2049), gz=True)
    return folder


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory):
    """A Jupyter path with a kernel that runs this Python (the venv's), whatever else is
    installed in the user's Jupyter folders."""
    root = tmp_path_factory.mktemp("jupyter")
    ipykernel_spec.write_kernel_spec(root / "kernels" / KERNEL)
    return root


def _kernel_env():
    env = dict(os.environ)
    # As a user's kernel: one CPU device (conftest.py asks for eight in this process) and
    # matplotlib's inline backend.
    env["XLA_FLAGS"] = parallel.host_device_flags(None)
    env.pop("MPLBACKEND", None)
    return env


def _inject(nb, settings):
    """Inserts, right after the parameters cell, a cell that assigns ``settings``."""
    if not settings:
        return
    [parameters] = _parameters_cells(nb)
    source = "\n".join(f"{key} = {value!r}" for key, value in settings.items())
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(nb.cells.index(parameters) + 1, cell)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_and_draws(name, idx_folder, kernel_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTER_PATH", str(kernel_dir))
    settings = {k: str(idx_folder) if v == DATA_DIR else v for k, v in TINY[name].items()}
    nb = _read(name)
    _inject(nb, settings)
    # At the end: the values the notebook ran with, and the kernel's Python.
    nb.cells.append(nbformat.v4.new_code_cell(f"print(repr([{', '.join(settings)}]))"))
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.executable)"))
    deadline = time.monotonic() + NOTEBOOK_SECONDS
    client = nbclient.NotebookClient(
        nb, kernel_name=KERNEL, startup_timeout=120,
        timeout_func=lambda cell: max(1, int(deadline - time.monotonic())),
        resources={"metadata": {"path": str(tmp_path)}})  # the kernel's working directory
    start = time.monotonic()
    client.execute(env=_kernel_env())  # raises on a cell's error or on timeout
    seconds = time.monotonic() - start
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "no figure"
    assert nb.cells[-2].outputs[0].text.strip() == repr(list(settings.values()))
    assert nb.cells[-1].outputs[0].text.strip() == sys.executable
    assert seconds < NOTEBOOK_SECONDS
    print(f"{name}: {seconds:.0f} s")
