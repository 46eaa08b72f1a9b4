"""lnjax.datasets.folders: where load looks for IDX files ($LNJAX_DATA_DIR, ~/.cache/lnjax,
$LNJAX_SYSTEM_DATA_DIR), a data_dir as the only place looked, one source per run, and the
message when the data are nowhere."""

import sys
from pathlib import Path

import numpy as np
import pytest

from lnjax import data
from lnjax.datasets import folders, idx
from tests.helpers import idx_bytes, isolate_data, learnable_images, write, write_mnist_folder

N_TRAIN, N_TEST = 12, 5
TRAIN_X, TRAIN_Y = learnable_images(N_TRAIN, 0)  # what write_mnist_folder writes
TEST_X, TEST_Y = learnable_images(N_TEST, 1)
TRAIN_FILES, TEST_FILES = idx.FILES["train"], idx.FILES["test"]
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    return isolate_data(monkeypatch, tmp_path)


@pytest.fixture
def no_tfds(monkeypatch):
    """``import tensorflow_datasets`` raises ImportError."""
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)


def write_part(folder, part, n=None):
    """The two IDX files of ``part`` ("train" or "test") alone, gzipped."""
    x, y = (TRAIN_X, TRAIN_Y) if part == "train" else (TEST_X, TEST_Y)
    write(folder / idx.FILES[part][0], idx_bytes(x[:n], 2051), gz=True)
    write(folder / idx.FILES[part][1], idx_bytes(y[:n], 2049), gz=True)
    return folder


# --------------------------------------------------------------------------
# The list of folders.
# --------------------------------------------------------------------------


def test_search_dirs_follow_the_environment(tmp_path, isolated, monkeypatch):
    assert folders.search_dirs("fashion_mnist") == [
        "$LNJAX_DATA_DIR: not set", isolated / ".cache" / "lnjax" / "fashion_mnist",
        tmp_path / "debian" / "fashion-mnist"]
    assert folders.search_dirs("kmnist")[-1] == isolated / ".cache" / "lnjax" / "kmnist"
    monkeypatch.setenv("LNJAX_DATA_DIR", str(tmp_path / "env"))
    monkeypatch.delenv("LNJAX_SYSTEM_DATA_DIR")
    assert folders.search_dirs("mnist") == [
        tmp_path / "env" / "mnist", tmp_path / "env", isolated / ".cache" / "lnjax" / "mnist",
        Path("/usr/share/datasets/mnist")]
    assert folders.system_data_dir() == Path(folders.SYSTEM_DATA_DIR)
    monkeypatch.setenv("LNJAX_SYSTEM_DATA_DIR", "")  # empty: the default
    assert folders.system_data_dir() == Path("/usr/share/datasets")


def test_candidate_folders_name_then_hyphens_then_the_folder(tmp_path):
    assert folders.candidate_folders(tmp_path, "fashion_mnist") == [
        tmp_path / "fashion_mnist", tmp_path / "fashion-mnist", tmp_path]
    assert folders.candidate_folders(tmp_path, "mnist") == [tmp_path / "mnist", tmp_path]


def test_load_folder_returns_the_split_or_why_not(tmp_path, isolated):
    folder = write_part(tmp_path / "d", "test")
    ds = folders.load_folder(folder, "kmnist", "test")
    assert (ds.name, ds.split, ds.source) == ("kmnist", "test", f"idx:{folder}")
    np.testing.assert_array_equal(ds.labels, TEST_Y)
    assert folders.load_folder(folder, "kmnist", "validation", validation_size=4) == (
        "missing train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz]")
    write_part(folder, "train")
    ds = folders.load_folder(folder, "kmnist", "validation", validation_size=4)
    np.testing.assert_array_equal(ds.labels, TRAIN_Y[-4:])


# --------------------------------------------------------------------------
# Through load.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("sub", ["fashion_mnist", "fashion-mnist"])
def test_load_idx_subfolder_named_after_the_data_set(tmp_path, isolated, sub):
    write_mnist_folder(tmp_path / "d" / sub, N_TRAIN, N_TEST)
    ds = data.load("fashion_mnist", "test", data_dir=tmp_path / "d", source="idx")
    assert ds.source == f"idx:{tmp_path / 'd' / sub}"
    np.testing.assert_array_equal(ds.labels, TEST_Y)


def test_load_idx_subfolder_wins_over_the_folder_itself(tmp_path, isolated):
    write_mnist_folder(tmp_path / "d", N_TRAIN, N_TEST)
    write_part(tmp_path / "d" / "kmnist", "test", n=2)
    assert len(data.load("kmnist", "test", data_dir=tmp_path / "d").labels) == 2
    assert len(data.load("mnist", "test", data_dir=tmp_path / "d").labels) == N_TEST


def test_search_order_lnjax_data_dir_then_cache_then_system(tmp_path, isolated, monkeypatch,
                                                            no_tfds):
    debian = write_mnist_folder(tmp_path / "debian" / "fashion-mnist", N_TRAIN, N_TEST)
    assert data.load("fashion_mnist", "test").source == f"idx:{debian}"
    cache = write_mnist_folder(isolated / ".cache" / "lnjax" / "fashion_mnist", N_TRAIN, N_TEST)
    assert data.load("fashion_mnist", "test").source == f"idx:{cache}"
    env = write_mnist_folder(tmp_path / "env", N_TRAIN, N_TEST)
    monkeypatch.setenv("LNJAX_DATA_DIR", str(env))
    assert data.load("fashion_mnist", "test").source == f"idx:{env}"
    env_sub = write_mnist_folder(env / "fashion_mnist", N_TRAIN, N_TEST)
    assert data.load("fashion_mnist", "test").source == f"idx:{env_sub}"
    given = write_mnist_folder(tmp_path / "given", N_TRAIN, N_TEST)
    assert data.load("fashion_mnist", "test", data_dir=given).source == f"idx:{given}"


def test_system_data_dir_holds_the_debian_layout(tmp_path, isolated, monkeypatch, no_tfds):
    shared = tmp_path / "shared"
    write_mnist_folder(shared / "fashion-mnist", N_TRAIN, N_TEST)
    with pytest.raises(data.DataNotFoundError):
        data.load("fashion_mnist", "test")  # tmp_path/debian: empty
    monkeypatch.setenv("LNJAX_SYSTEM_DATA_DIR", str(shared))
    assert data.load("fashion_mnist", "test").source == f"idx:{shared / 'fashion-mnist'}"
    write_mnist_folder(shared / "kmnist", N_TRAIN, N_TEST)  # no system package installs it
    with pytest.raises(data.DataNotFoundError):
        data.load("kmnist", "test")


def test_forced_tfds_source_skips_idx_folders(tmp_path, isolated, no_tfds):
    folder = write_mnist_folder(tmp_path / "d", N_TRAIN, N_TEST)
    with pytest.raises(data.DataNotFoundError, match="tensorflow_datasets is not installed"):
        data.load("mnist", "test", data_dir=folder, source="tfds")


# --------------------------------------------------------------------------
# The message when the data are nowhere.
# --------------------------------------------------------------------------


HOW_TO_GET_THE_DATA = [
    "pip install tensorflow-datasets tensorflow",
    "tfds.builder('fashion_mnist').download_and_prepare(file_format='array_record')",
    "data_dir=FOLDER", "--data-dir", "LNJAX_DATA_DIR",
    "sudo apt-get install dataset-fashion-mnist",
    "t10k-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
]


def test_missing_data_message(tmp_path, isolated, monkeypatch):
    try:  # TFDS's default folder: an empty one, not this user's ~/tensorflow_datasets
        from tensorflow_datasets.core import constants
    except ImportError:
        pass
    else:
        monkeypatch.setattr(constants, "DATA_DIR", str(tmp_path / "tfds"))
    with pytest.raises(data.DataNotFoundError) as excinfo:
        data.load("fashion_mnist", "test")
    assert isinstance(excinfo.value, FileNotFoundError)
    msg = str(excinfo.value)
    for text in [
        *HOW_TO_GET_THE_DATA,
        # the places tried, in order
        "tfds:fashion_mnist in",
        "$LNJAX_DATA_DIR: not set",
        f"idx:{isolated / '.cache' / 'lnjax' / 'fashion_mnist'}: no such folder",
        f"idx:{tmp_path / 'debian' / 'fashion-mnist'}: no such folder",
    ]:
        assert text in msg, text
    tried = [msg.index(t) for t in ("tfds:", "$LNJAX", ".cache", "debian")]
    assert tried == sorted(tried)


def test_missing_data_message_with_data_dir_names_only_that_folder(tmp_path, isolated):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(data.DataNotFoundError) as excinfo:
        data.load("fashion_mnist", "test", data_dir=empty)
    assert isinstance(excinfo.value, FileNotFoundError)
    msg = str(excinfo.value)
    assert msg.startswith(f"load: no data found for 'fashion_mnist' (split 'test', "
                          f"source='auto') in data_dir={empty}.")
    assert "A data_dir given is the only place looked" in msg
    for text in [
        *HOW_TO_GET_THE_DATA,
        # the places tried, in order: the folder, its subfolders, TFDS in it
        f"idx:{empty / 'fashion_mnist'}: no such folder",
        f"idx:{empty}: missing t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]",
        f"tfds:fashion_mnist in {empty}",
    ]:
        assert text in msg, text
    tried = msg.split("Tried, in order:")[1].split("To get the data")[0]
    assert tried.index("idx:" + str(empty)) < tried.index("tfds:")
    for elsewhere in ("$LNJAX_DATA_DIR", ".cache", "debian"):
        assert elsewhere not in tried, elsewhere


def test_missing_data_lists_lnjax_data_dir(tmp_path, isolated, monkeypatch, no_tfds):
    monkeypatch.setenv("LNJAX_DATA_DIR", str(tmp_path / "env"))
    with pytest.raises(data.DataNotFoundError) as excinfo:
        data.load("kmnist", "train")
    msg = str(excinfo.value)
    assert f"idx:{tmp_path / 'env' / 'kmnist'}: no such folder" in msg
    assert f"idx:{tmp_path / 'env'}: no such folder" in msg
    assert "tfds:kmnist: tensorflow_datasets is not installed" in msg
    assert "debian" not in msg.split("To get the data")[0]  # no system folder for kmnist


# --------------------------------------------------------------------------
# A folder the user names is the only place looked; one source per run.
# --------------------------------------------------------------------------


def test_named_data_dir_is_never_replaced_by_another_copy(tmp_path, isolated, monkeypatch,
                                                          no_tfds):
    """Data in $LNJAX_DATA_DIR, the cache and the system folder; the named folder is empty."""
    write_mnist_folder(tmp_path / "debian" / "fashion-mnist", N_TRAIN, N_TEST)
    write_mnist_folder(isolated / ".cache" / "lnjax" / "fashion_mnist", N_TRAIN, N_TEST)
    monkeypatch.setenv("LNJAX_DATA_DIR",
                       str(write_mnist_folder(tmp_path / "env", N_TRAIN, N_TEST)))
    assert data.load("fashion_mnist", "test").source == f"idx:{tmp_path / 'env'}"  # found
    empty = tmp_path / "empty"
    empty.mkdir()
    for source in ("auto", "idx"):
        with pytest.raises(data.DataNotFoundError, match=f"in data_dir={empty}") as e:
            data.load("fashion_mnist", "train_full", data_dir=empty, source=source)
        tried = str(e.value).split("Tried, in order:")[1].split("To get the data")[0]
        assert str(tmp_path / "env") not in tried and ".cache" not in tried
        assert "debian" not in tried and str(empty) in tried
    with pytest.raises(data.DataNotFoundError, match=f"in data_dir={empty}"):
        data.load_splits("fashion_mnist", data_dir=empty)
    with pytest.raises(data.DataNotFoundError, match="no such folder"):
        data.load("fashion_mnist", "test", data_dir=tmp_path / "typo")


def test_named_empty_folder_does_not_load_debians_copy(tmp_path, monkeypatch):
    """With the real search path (Debian's Fashion-MNIST where installed)."""
    monkeypatch.delenv("LNJAX_SYSTEM_DATA_DIR", raising=False)
    with pytest.raises(data.DataNotFoundError) as e:
        data.load("fashion_mnist", "train", data_dir=tmp_path)
    assert f"in data_dir={tmp_path}" in str(e.value).splitlines()[0]
    assert "idx:/usr/share/datasets" not in str(e.value)


def test_data_dir_with_only_the_training_files_is_an_error(tmp_path, isolated, no_tfds):
    write_mnist_folder(tmp_path / "debian" / "fashion-mnist", N_TRAIN, N_TEST)  # elsewhere
    partial = write_part(tmp_path / "partial", "train")
    assert data.load("fashion_mnist", "train", data_dir=partial,
                     validation_size=4).source == f"idx:{partial}"
    with pytest.raises(data.DataNotFoundError,
                       match=r"missing t10k-images-idx3-ubyte\[.gz\], t10k-labels") as e:
        data.load_splits("fashion_mnist", data_dir=partial, validation_size=4)
    assert f"in data_dir={partial}" in str(e.value)
    with pytest.raises(data.DataNotFoundError, match=f"in data_dir={partial}"):
        data.load_splits("auto", data_dir=partial, validation_size=4)


@pytest.mark.parametrize("dataset", ["fashion_mnist", "auto"])
def test_splits_from_two_places_stop_the_run(tmp_path, isolated, monkeypatch, no_tfds, dataset):
    """$LNJAX_DATA_DIR has only the training files; the system folder has all four."""
    debian = write_mnist_folder(tmp_path / "debian" / "fashion-mnist", N_TRAIN, N_TEST)
    env = write_part(tmp_path / "env", "train")
    monkeypatch.setenv("LNJAX_DATA_DIR", str(env))
    with pytest.raises(ValueError, match="come from different places") as e:
        data.load_splits(dataset, validation_size=4)
    assert not isinstance(e.value, FileNotFoundError)
    assert f"train and validation from idx:{env}; test from idx:{debian}" in str(e.value)


def test_real_fashion_mnist_test_split_found_in_the_system_folder(isolated, monkeypatch):
    if not DEBIAN_FASHION.is_dir():
        pytest.skip(f"{DEBIAN_FASHION} is absent (apt-get install dataset-fashion-mnist)")
    monkeypatch.delenv("LNJAX_SYSTEM_DATA_DIR")  # /usr/share/datasets
    ds = data.load("fashion_mnist", "test", source="idx")  # found via the search path
    assert ds.source == f"idx:{DEBIAN_FASHION}"
    assert ds.images.shape == (10_000, 28, 28) and ds.images.dtype == np.float32
    assert ds.labels.shape == (10_000,) and ds.labels.dtype == np.int32
    assert ds.images.min() == 0.0 and ds.images.max() == 1.0
    np.testing.assert_array_equal(np.bincount(ds.labels, minlength=10), [1000] * 10)
