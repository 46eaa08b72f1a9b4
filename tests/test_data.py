"""lnjax.data, the entry point: its names are lnjax.datasets' objects, the old name of
batches, the command line `python -m lnjax.data`, and loading IDX files without jax or
tensorflow-datasets."""

import subprocess
import sys
from pathlib import Path

import pytest

from lnjax import data
from lnjax.datasets import checksums, cli, core, loading, splits, tfds_source
from tests.helpers import write_mnist_folder

N_TRAIN, N_TEST = 12, 5
PACKAGE = Path(data.__file__).parent  # lnjax/


def test_public_names_are_the_packages_objects():
    homes = {"load": loading, "load_splits": loading, "describe": loading, "Dataset": core,
             "NAMES": core, "DataNotFoundError": core, "WrongDataSetError": core,
             "SPLITS": splits, "VALIDATION_SIZE": splits, "KNOWN_SHA256": checksums,
             "prepare": tfds_source}
    assert sorted(data.__all__) == sorted(homes)
    for name, module in homes.items():
        assert getattr(data, name) is getattr(module, name), name
        assert name in module.__all__, name
    assert data.main is cli.main


def test_batches_old_name_warns_and_is_steps_batches():
    with pytest.warns(DeprecationWarning, match="lnjax.steps.batches"):
        old = data.batches
    from lnjax import steps
    assert old is steps.batches
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        data.nope  # noqa: B018


# --------------------------------------------------------------------------
# The command line.
# --------------------------------------------------------------------------


def test_main_reports_what_it_finds(tmp_path, capsys):
    folder = write_mnist_folder(tmp_path / "d" / "mnist", N_TRAIN, N_TEST)
    assert data.main(["mnist", "--data-dir", str(tmp_path / "d")]) == 0
    assert capsys.readouterr().out == (f"mnist/test: {N_TEST} examples from idx:{folder}\n"
                                       f"identity: unknown IDX data in {folder}\n")
    assert data.main(["kmnist", "--data-dir", str(tmp_path / "empty")]) == 1
    assert "none of kmnist found" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        data.main(["cifar10"])
    assert "unknown data set(s) ['cifar10']" in capsys.readouterr().err


@pytest.mark.parametrize("module", ["lnjax.data", "lnjax.datasets"])
def test_python_dash_m_exit_status(tmp_path, module):
    """What the Makefile relies on: 0 when a data set is found, 1 when none is."""
    folder = write_mnist_folder(tmp_path / "d", N_TRAIN, N_TEST)
    found = subprocess.run([sys.executable, "-m", module, "fashion_mnist", "--data-dir",
                            str(folder)], capture_output=True, text=True, timeout=120)
    assert found.returncode == 0, found.stderr
    assert found.stdout.startswith(f"fashion_mnist/test: {N_TEST} examples from idx:{folder}")
    missing = subprocess.run([sys.executable, "-m", module, "--data-dir", str(tmp_path / "no")],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1, missing.stderr
    assert "none of mnist, fashion_mnist found" in missing.stdout


# --------------------------------------------------------------------------
# No jax, no tensorflow-datasets.
# --------------------------------------------------------------------------


def test_modules_import_and_read_idx_without_jax_or_tensorflow_datasets(tmp_path):
    """lnjax/__init__.py imports jax; a bare package stands in for it, so that what runs is
    lnjax.data, every module of lnjax.datasets and what they import, with jax, flax and
    tensorflow(-datasets) unimportable."""
    folder = write_mnist_folder(tmp_path / "d", N_TRAIN, N_TEST)
    script = f"""
import importlib, pkgutil, sys, types
BLOCKED = ("jax", "jaxlib", "flax", "optax", "tensorflow", "tensorflow_datasets")
for name in BLOCKED:
    sys.modules[name] = None  # any import of it fails
package = types.ModuleType("lnjax")
package.__path__ = [{str(PACKAGE)!r}]
sys.modules["lnjax"] = package
import lnjax.data as data
import lnjax.datasets
for info in pkgutil.iter_modules(lnjax.datasets.__path__, "lnjax.datasets."):
    importlib.import_module(info.name)
ds = data.load("mnist", "test", data_dir={str(folder)!r})
assert ds.images.shape == ({N_TEST}, 28, 28), ds.images.shape
splits, info = data.load_splits("mnist", data_dir={str(folder)!r}, validation_size=4)
assert info["sizes"] == {{"train": {N_TRAIN - 4}, "validation": 4, "test": {N_TEST}}}, info
try:
    data.load("mnist", "test", source="tfds")
except data.DataNotFoundError as e:
    assert "tensorflow_datasets is not installed" in str(e), e
else:
    raise AssertionError("no error")
try:
    data.prepare("mnist")
except ImportError as e:
    assert 'pip install "lnjax[data]"' in str(e), e
else:
    raise AssertionError("no error")
loaded = [m for m, mod in sys.modules.items() if mod is not None and m.split(".")[0] in BLOCKED]
assert not loaded, loaded
assert "lnjax.normalization" not in sys.modules and "lnjax.steps" not in sys.modules
print(sorted(m for m in sys.modules if m.startswith("lnjax.datasets.")))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    for module in ("idx", "checksums", "folders", "splits", "tfds_source", "loading", "cli"):
        assert f"'lnjax.datasets.{module}'" in out.stdout, module
