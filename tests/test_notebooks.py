"""The teaching notebooks in colabs/: stored without outputs and as colabs/_build.py
writes them, and each runs end to end in a Jupyter kernel and draws a figure.

The runs use small generated MNIST-format IDX files: the notebooks read
``LNJAX_NOTEBOOK_DATA_DIR`` (passed to ``lnjax.data.load`` as ``data_dir``) and
switch to a tiny configuration when it is set.
"""

import importlib.util
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
ipykernel_spec = pytest.importorskip("ipykernel.kernelspec")

from tests.test_data import idx_bytes, write  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COLABS = ROOT / "colabs"
NOTEBOOKS = ("01_layer_norm.ipynb", "02_permutation_invariant_mnist.ipynb", "03_ln_lstm.ipynb",
             "04_benchmarks.ipynb")
NOTEBOOK_SECONDS = 180  # each notebook, kernel start included
KERNEL = "lnjax-notebook-test"
N_TRAIN = 5_200  # "train" is all but the last 5,000 of the training file
N_TEST = 200


def _read(name):
    return nbformat.read(COLABS / name, as_version=4)


def test_the_notebooks_are_all_there():
    assert sorted(p.name for p in COLABS.glob("*.ipynb")) == list(NOTEBOOKS)


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
def test_title_then_colab_install_cell(name):
    nb = _read(name)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    assert "arXiv:1607.06450" in nb.cells[0].source
    install = next(c for c in nb.cells if c.cell_type == "code")
    assert 'if "google.colab" in sys.modules:' in install.source
    assert "pip install" in install.source
    assert "%matplotlib inline" in "".join(c.source for c in nb.cells if c.cell_type == "code")


@pytest.mark.parametrize("name", NOTEBOOKS[1:3])
def test_one_flag_cell_for_the_full_size_run(name):
    sources = [c.source.strip() for c in _read(name).cells if c.cell_type == "code"]
    assert len([s for s in sources if s.startswith("FULL = False")]) == 1
    assert sum("FULL =" in s for s in sources) == 1


def test_the_notebooks_are_what_the_build_script_writes(tmp_path):
    spec = importlib.util.spec_from_file_location("colabs_build", COLABS / "_build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    written = build.build(tmp_path)
    assert sorted(p.name for p in written) == list(NOTEBOOKS)
    for path in written:
        assert path.read_text() == (COLABS / path.name).read_text(), (
            f"colabs/{path.name} is out of date: run `python colabs/_build.py`")


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


def _kernel_env(data_dir):
    env = dict(os.environ)
    env["LNJAX_NOTEBOOK_DATA_DIR"] = str(data_dir)
    # As a user's kernel: one CPU device (conftest.py asks for eight in this process) and
    # matplotlib's inline backend.
    flags = [f for f in env.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(flags)
    env.pop("MPLBACKEND", None)
    return env


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_and_draws(name, idx_folder, kernel_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTER_PATH", str(kernel_dir))
    nb = _read(name)
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.executable)"))
    deadline = time.monotonic() + NOTEBOOK_SECONDS
    client = nbclient.NotebookClient(
        nb, kernel_name=KERNEL, startup_timeout=120,
        timeout_func=lambda cell: max(1, int(deadline - time.monotonic())),
        resources={"metadata": {"path": str(tmp_path)}})  # the kernel's working directory
    start = time.monotonic()
    client.execute(env=_kernel_env(idx_folder))  # raises on a cell's error or on timeout
    seconds = time.monotonic() - start
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "no figure"
    assert nb.cells[-1].outputs[0].text.strip() == sys.executable
    assert seconds < NOTEBOOK_SECONDS
    print(f"{name}: {seconds:.0f} s")
