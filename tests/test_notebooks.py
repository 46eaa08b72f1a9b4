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

The notebooks run as the docs build runs them (docs/generate.py: the data set found on
the machine, else small synthetic IDX files; small sizes), once for this file and
tests/test_docs.py. The notebooks know nothing of this: each has one cell tagged
``parameters`` (papermill's convention) with the settings a reader changes, and the
build inserts a cell tagged ``injected-parameters`` right after it that overrides some
of them (``NOTEBOOK_SETTINGS`` in docs/conf.py).
"""

import ast
import atexit
import builtins
import importlib.metadata
import importlib.util
import re
import site
import sys
import sysconfig
from pathlib import Path

import pytest

_NOTEBOOKS = ("the notebooks extra is not installed: pip install 'lnjax[notebooks]' "
              "(make test installs it)")
nbformat = pytest.importorskip("nbformat", reason=_NOTEBOOKS)
nbclient = pytest.importorskip("nbclient", reason=_NOTEBOOKS)
pytest.importorskip("ipykernel.kernelspec", reason=_NOTEBOOKS)
jupytext = pytest.importorskip("jupytext", reason=_NOTEBOOKS)
inputtransformer2 = pytest.importorskip("IPython.core.inputtransformer2", reason=_NOTEBOOKS)
interactiveshell = pytest.importorskip("IPython.core.interactiveshell", reason=_NOTEBOOKS)
traitlets_config = pytest.importorskip("traitlets.config", reason=_NOTEBOOKS)

from tests.helpers import docs_conf  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COLABS = ROOT / "colabs"
NOTEBOOKS = ("01_layer_norm.ipynb", "02_permutation_invariant_mnist.ipynb", "03_ln_lstm.ipynb",
             "04_benchmarks.ipynb", "05_transformer.ipynb")
PAIRING = "ipynb,py:percent"
NOTEBOOK_SECONDS = 180  # each notebook, kernel start included
# What the docs build (and so this file's run of them) overrides in each notebook's
# parameters cell: small sizes, seconds each.
SETTINGS = docs_conf().NOTEBOOK_SETTINGS
# Words that belong to the tests, not to a notebook.
TEST_WORDS = ("LNJAX_NOTEBOOK", "tests/", "pytest", "test_notebooks", "NOTEBOOK_SETTINGS",
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
    assert set(SETTINGS) == set(NOTEBOOKS)


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
    assert SETTINGS[NOTEBOOKS[0]] == {}
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
    if SETTINGS[name]:
        [parameters] = _parameters_cells(nb)
        assigned = {t.id for node in ast.walk(ast.parse(parameters.source))
                    if isinstance(node, ast.Assign) for target in node.targets
                    for t in ast.walk(target) if isinstance(t, ast.Name)}
        assert set(SETTINGS[name]) <= assigned, set(SETTINGS[name]) - assigned


# --------------------------------------------------------------------------
# Running them: as the docs build does (docs/generate.py, with docs/conf.py's
# NOTEBOOK_SETTINGS), once for this file and tests/test_docs.py (the
# ``executed_notebooks`` fixture of conftest.py).
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_and_draws(name, executed_notebooks):
    folder, settings, stamps = executed_notebooks
    nb = nbformat.read(folder / name, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert all(c.execution_count is not None for c in code), "a cell did not run"
    assert any("image/png" in o.get("data", {}) for o in outputs), "no figure"
    # It ran with the settings given, right after its parameters cell, and its own cells
    # are the notebook's as written.
    injected = [c for c in code if "injected-parameters" in c.metadata.get("tags", ())]
    if settings[name]:
        [cell] = injected
        assert code.index(cell) == code.index(_parameters_cells(nb)[0]) + 1
        assigned = {}
        exec(cell.source, {}, assigned)
        assert {k: assigned[k] for k in settings[name]} == settings[name]
    else:
        assert injected == []
    assert _cells(nbformat.v4.new_notebook(cells=[c for c in nb.cells if c not in injected
                                                  and "docs-settings" not in
                                                  c.metadata.get("tags", ())])) == _cells(
        _read(name))
    assert stamps[name]["seconds"] < NOTEBOOK_SECONDS
