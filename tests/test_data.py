"""Tests for lnjax.data: IDX parsing, splits, sources, the not-found message, batching."""

import gzip
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lnjax import data
from tests.helpers import idx_bytes, known_sha256, write

N_TRAIN, N_TEST = 12, 5
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
TRAIN_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
TEST_FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def fake_images(n, offset):
    """Image i: pixel (r, c) = (offset + 7 i + r + c) mod 256, so every image differs."""
    i, r, c = np.ogrid[:n, :28, :28]
    return ((offset + 7 * i + r + c) % 256).astype(np.uint8)


def fake_labels(n, offset):
    return ((np.arange(n) + offset) % 10).astype(np.uint8)


TRAIN_X, TRAIN_Y = fake_images(N_TRAIN, 0), fake_labels(N_TRAIN, 0)
TEST_X, TEST_Y = fake_images(N_TEST, 100), fake_labels(N_TEST, 3)


def sha256_of(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _idx_paths(folder):
    """The four IDX files in ``folder``, train first, as ``load_splits`` records them."""
    return [next(Path(folder).glob(stem + "*")) for stem in TRAIN_FILES + TEST_FILES]


def write_idx_folder(folder, *, gz=True):
    """The four IDX files of a 12-train / 5-test data set in ``folder``."""
    write(folder / TRAIN_FILES[0], idx_bytes(TRAIN_X, 2051), gz)
    write(folder / TRAIN_FILES[1], idx_bytes(TRAIN_Y, 2049), gz)
    write(folder / TEST_FILES[0], idx_bytes(TEST_X, 2051), gz)
    write(folder / TEST_FILES[1], idx_bytes(TEST_Y, 2049), gz)
    return folder


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """No data anywhere by default: empty HOME, no $LNJAX_DATA_DIR, no Debian folders."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("LNJAX_DATA_DIR", raising=False)
    monkeypatch.setattr(data, "_DEBIAN_DIRS", {
        "mnist": str(tmp_path / "debian" / "mnist"),
        "fashion_mnist": str(tmp_path / "debian" / "fashion-mnist")})
    data._read_idx_cached.cache_clear()
    return home


@pytest.fixture
def no_tfds(monkeypatch):
    """``import tensorflow_datasets`` raises ImportError."""
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)


# --------------------------------------------------------------------------
# IDX files.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False], ids=["gzipped", "plain"])
def test_load_idx_values(tmp_path, isolated, gz):
    folder = write_idx_folder(tmp_path / "d", gz=gz)
    test = data.load("mnist", "test", data_dir=folder)
    assert test.images.dtype == np.float32 and test.labels.dtype == np.int32
    assert test.images.shape == (N_TEST, 28, 28) and test.labels.shape == (N_TEST,)
    np.testing.assert_array_equal(test.images, TEST_X.astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(test.labels, TEST_Y)
    assert (test.name, test.split, test.source) == ("mnist", "test", f"idx:{folder}")
    full = data.load("mnist", "train_full", data_dir=folder)
    np.testing.assert_array_equal(full.images * 255, TRAIN_X)
    np.testing.assert_array_equal(full.labels, TRAIN_Y)
    assert full.images.min() >= 0 and full.images.max() <= 1


def test_load_idx_mixed_gz_and_plain(tmp_path, isolated):
    folder = tmp_path / "d"
    write(folder / TEST_FILES[0], idx_bytes(TEST_X, 2051), gz=True)
    write(folder / TEST_FILES[1], idx_bytes(TEST_Y, 2049), gz=False)
    np.testing.assert_array_equal(data.load("kmnist", "test", data_dir=folder).labels, TEST_Y)


def test_load_idx_detects_gzip_by_content(tmp_path, isolated):
    folder = tmp_path / "d"
    write(folder / TEST_FILES[0], gzip.compress(idx_bytes(TEST_X, 2051)), gz=False)
    write(folder / TEST_FILES[1], idx_bytes(TEST_Y, 2049), gz=True)
    np.testing.assert_array_equal(data.load("mnist", "test", data_dir=folder).images * 255, TEST_X)


@pytest.mark.parametrize("sub", ["fashion_mnist", "fashion-mnist"])
def test_load_idx_subfolder_named_after_the_data_set(tmp_path, isolated, sub):
    write_idx_folder(tmp_path / "d" / sub)
    ds = data.load("fashion_mnist", "test", data_dir=tmp_path / "d", source="idx")
    assert ds.source == f"idx:{tmp_path / 'd' / sub}"
    np.testing.assert_array_equal(ds.labels, TEST_Y)


def test_load_idx_subfolder_wins_over_the_folder_itself(tmp_path, isolated):
    write_idx_folder(tmp_path / "d")
    sub = tmp_path / "d" / "kmnist"
    write(sub / TEST_FILES[0], idx_bytes(TEST_X[:2], 2051), gz=False)
    write(sub / TEST_FILES[1], idx_bytes(TEST_Y[:2], 2049), gz=False)
    assert len(data.load("kmnist", "test", data_dir=tmp_path / "d").labels) == 2
    assert len(data.load("mnist", "test", data_dir=tmp_path / "d").labels) == N_TEST


def test_load_only_needs_the_files_of_its_part(tmp_path, isolated):
    folder = tmp_path / "d"
    write(folder / TEST_FILES[0], idx_bytes(TEST_X, 2051), gz=True)
    write(folder / TEST_FILES[1], idx_bytes(TEST_Y, 2049), gz=True)
    assert len(data.load("mnist", "test", data_dir=folder, source="idx").labels) == N_TEST
    with pytest.raises(data.DataNotFoundError, match="missing train-images-idx3-ubyte"):
        data.load("mnist", "train_full", data_dir=folder, source="idx")


def test_load_caches_parsed_files_and_returns_fresh_arrays(tmp_path, isolated, monkeypatch):
    monkeypatch.setattr(data, "_VALIDATION_SIZE", 4)
    folder = write_idx_folder(tmp_path / "d")
    train = data.load("mnist", "train", data_dir=folder)
    misses = data._read_idx_cached.cache_info().misses
    assert misses == 2  # one images and one labels file
    data.load("mnist", "validation", data_dir=folder)
    assert data._read_idx_cached.cache_info().misses == misses  # not parsed again
    train.images[:] = -1.0
    train.labels[:] = -1
    again = data.load("mnist", "train", data_dir=folder)
    np.testing.assert_array_equal(again.images * 255, TRAIN_X[:8])
    np.testing.assert_array_equal(again.labels, TRAIN_Y[:8])
    cached = data._read_idx(folder / (TRAIN_FILES[0] + ".gz"), magic=2051)
    assert not cached.flags.writeable


def test_load_rereads_a_file_rewritten_in_place(tmp_path, isolated):
    folder = write_idx_folder(tmp_path / "d", gz=False)
    data.load("mnist", "test", data_dir=folder)
    path = folder / TEST_FILES[1]
    path.write_bytes(idx_bytes(np.full(N_TEST, 9), 2049))
    os.utime(path, ns=(1, 1))  # a different mtime, whatever the clock resolution
    np.testing.assert_array_equal(data.load("mnist", "test", data_dir=folder).labels, 9)


# --------------------------------------------------------------------------
# Splits.
# --------------------------------------------------------------------------


def test_split_slice_mnist_sizes():
    assert data._split_slice("train", 60_000) == ("train", slice(0, 55_000))
    assert data._split_slice("validation", 60_000) == ("train", slice(55_000, 60_000))
    assert data._split_slice("train_full", 60_000) == ("train", slice(None))
    assert data._split_slice("test", 10_000) == ("test", slice(None))
    # The hold-out is the last examples of the training file, whatever its length.
    assert data._split_slice("validation", 12, validation_size=4) == ("train", slice(8, 12))
    assert data._split_slice("train", 12, validation_size=4) == ("train", slice(0, 8))


def test_split_slice_too_few_training_examples():
    with pytest.raises(ValueError, match="train_full"):
        data._split_slice("train", 5_000)
    with pytest.raises(ValueError, match="unknown split"):
        data._split_slice("dev", 60_000)


def test_tfds_split_strings_match_the_paper_split():
    pytest.importorskip("tensorflow_datasets", reason="tensorflow-datasets is not installed: pip install 'lnjax[data]' (make test installs it)")
    from tensorflow_datasets.core import ReadInstruction, splits

    info = {"train": splits.SplitInfo(name="train", shard_lengths=[60_000], num_bytes=0,
                                       filename_template=None)}

    def absolute(split):
        (inst,) = ReadInstruction.from_spec(data._tfds_split(split)).to_absolute(info)
        return inst.splitname, inst.from_, inst.to

    assert absolute("train") == ("train", None, 55_000)
    assert absolute("validation") == ("train", 55_000, None)
    assert absolute("train_full") == ("train", None, None)
    assert data._tfds_split("test") == "test"


def test_load_splits_partition_the_training_file(tmp_path, isolated, monkeypatch):
    monkeypatch.setattr(data, "_VALIDATION_SIZE", 4)
    folder = write_idx_folder(tmp_path / "d")
    train = data.load("mnist", "train", data_dir=folder)
    val = data.load("mnist", "validation", data_dir=folder)
    assert len(train.labels) == N_TRAIN - 4 and len(val.labels) == 4
    np.testing.assert_array_equal(train.labels, TRAIN_Y[:-4])
    np.testing.assert_array_equal(val.labels, TRAIN_Y[-4:])
    np.testing.assert_array_equal(val.images * 255, TRAIN_X[-4:])


def test_load_splits_auto_takes_mnist_first(tmp_path, isolated, monkeypatch):
    monkeypatch.setattr(data, "_VALIDATION_SIZE", 4)
    write_idx_folder(tmp_path / "d" / "mnist")
    fashion = tmp_path / "d" / "fashion_mnist"
    write(fashion / TEST_FILES[0], idx_bytes(TEST_X[:2], 2051), gz=False)
    write(fashion / TEST_FILES[1], idx_bytes(TEST_Y[:2], 2049), gz=False)
    splits, info = data.load_splits(data_dir=tmp_path / "d")
    assert set(splits) == {"train", "validation", "test"}
    folder = tmp_path / "d" / "mnist"
    assert info == {"name": "mnist", "source": f"idx:{folder}",
                    "identity": f"unknown IDX data in {folder}", "verified": False,
                    "sha256": {f.name: sha256_of(f) for f in _idx_paths(folder)},
                    "sizes": {"train": N_TRAIN - 4, "validation": 4, "test": N_TEST}}
    assert [ds.split for ds in splits.values()] == ["train", "validation", "test"]
    np.testing.assert_array_equal(splits["train"].labels, TRAIN_Y[:-4])
    np.testing.assert_array_equal(splits["validation"].labels, TRAIN_Y[-4:])
    np.testing.assert_array_equal(splits["test"].images * 255, TEST_X)


def test_load_splits_auto_falls_back_to_fashion_mnist(tmp_path, isolated, monkeypatch, no_tfds):
    monkeypatch.setattr(data, "_VALIDATION_SIZE", 4)
    write_idx_folder(tmp_path / "d" / "fashion-mnist")
    splits, info = data.load_splits("auto", data_dir=tmp_path / "d", train_examples=3)
    assert info["name"] == "fashion_mnist"
    assert info["sizes"] == {"train": 3, "validation": 4, "test": N_TEST}
    assert all(ds.name == "fashion_mnist" for ds in splits.values())
    np.testing.assert_array_equal(splits["train"].labels, TRAIN_Y[:3])
    np.testing.assert_array_equal(splits["train"].images * 255, TRAIN_X[:3])
    # A named data set is the only one tried.
    with pytest.raises(data.DataNotFoundError, match="'mnist'") as e:
        data.load_splits("mnist", data_dir=tmp_path / "d")
    assert "for 'fashion_mnist'" not in str(e.value)
    assert "No data set found" not in str(e.value)


def test_load_splits_nothing_found_lists_every_candidate(tmp_path, isolated, no_tfds):
    with pytest.raises(data.DataNotFoundError, match="No data set found") as e:
        data.load_splits(data_dir=tmp_path / "empty")
    assert "for 'mnist'" in str(e.value) and "for 'fashion_mnist'" in str(e.value)
    assert "kmnist" not in str(e.value)


@pytest.mark.parametrize("kwargs, err, match", [
    ({"dataset": "cifar10"}, ValueError, "unknown dataset"),
    ({"dataset": None}, TypeError, "dataset must be a string"),
    ({"train_examples": 0}, ValueError, "train_examples must be >= 1"),
])
def test_load_splits_bad_arguments(tmp_path, isolated, kwargs, err, match):
    with pytest.raises(err, match=match):
        data.load_splits(data_dir=tmp_path, **kwargs)


def test_load_train_split_of_a_small_file_is_an_error(tmp_path, isolated):
    folder = write_idx_folder(tmp_path / "d")
    with pytest.raises(ValueError, match="only 12"):
        data.load("mnist", "train", data_dir=folder)


# --------------------------------------------------------------------------
# Malformed files.
# --------------------------------------------------------------------------


def _malformed(folder, which):
    """A test part whose ``which`` file is broken; returns the broken file's path."""
    images, labels = idx_bytes(TEST_X, 2051), idx_bytes(TEST_Y, 2049)
    broken_images = {
        "images_magic": idx_bytes(TEST_X, 2049),
        "images_truncated": images[:-1],
        "images_padded": images + b"\0",
        "images_header": images[:10],
        "images_shape": idx_bytes(TEST_X[:, :27], 2051),
        "images_gzip": gzip.compress(images)[:-20],
    }
    broken_labels = {
        "labels_magic": idx_bytes(TEST_Y, 2051),
        "labels_count": idx_bytes(TEST_Y[:-1], 2049),
        "labels_range": idx_bytes(np.full(N_TEST, 10), 2049),
    }
    if which in broken_images:
        images = broken_images[which]
    else:
        labels = broken_labels[which]
    image_path = write(folder / TEST_FILES[0], images, gz=False)
    label_path = write(folder / TEST_FILES[1], labels, gz=False)
    return image_path if which in broken_images else label_path


@pytest.mark.parametrize("which", [
    "images_magic", "images_truncated", "images_padded", "images_header", "images_shape",
    "images_gzip", "labels_magic", "labels_count", "labels_range"])
def test_malformed_idx_file_raises_value_error_naming_it(tmp_path, isolated, which):
    path = _malformed(tmp_path / "d", which)
    with pytest.raises(ValueError) as excinfo:
        data.load("mnist", "test", data_dir=tmp_path / "d")
    assert str(path) in str(excinfo.value)
    assert not isinstance(excinfo.value, FileNotFoundError)


def test_malformed_messages_say_what_is_wrong(tmp_path, isolated):
    _malformed(tmp_path / "a", "images_magic")
    with pytest.raises(ValueError, match="magic number is 2049, expected 2051"):
        data.load("mnist", "test", data_dir=tmp_path / "a")
    _malformed(tmp_path / "b", "labels_count")
    with pytest.raises(ValueError, match="5 images but .* 4 labels"):
        data.load("mnist", "test", data_dir=tmp_path / "b")


# --------------------------------------------------------------------------
# Where the data are looked for, and the message when they are nowhere.
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
    assert "/usr/share/datasets" not in msg.split("To get the data")[0]  # none for kmnist


def test_search_order_lnjax_data_dir_then_cache_then_debian(tmp_path, isolated, monkeypatch,
                                                            no_tfds):
    debian = write_idx_folder(tmp_path / "debian" / "fashion-mnist")
    assert data.load("fashion_mnist", "test").source == f"idx:{debian}"
    cache = write_idx_folder(isolated / ".cache" / "lnjax" / "fashion_mnist")
    assert data.load("fashion_mnist", "test").source == f"idx:{cache}"
    env = write_idx_folder(tmp_path / "env")
    monkeypatch.setenv("LNJAX_DATA_DIR", str(env))
    assert data.load("fashion_mnist", "test").source == f"idx:{env}"
    env_sub = write_idx_folder(env / "fashion_mnist")
    assert data.load("fashion_mnist", "test").source == f"idx:{env_sub}"
    given = write_idx_folder(tmp_path / "given")
    assert data.load("fashion_mnist", "test", data_dir=given).source == f"idx:{given}"


def test_forced_tfds_source_skips_idx_folders(tmp_path, isolated, no_tfds):
    folder = write_idx_folder(tmp_path / "d")
    with pytest.raises(data.DataNotFoundError, match="tensorflow_datasets is not installed"):
        data.load("mnist", "test", data_dir=folder, source="tfds")


def test_module_imports_and_reads_idx_without_tensorflow_datasets(tmp_path):
    folder = write_idx_folder(tmp_path / "d")
    module = Path(data.__file__)
    script = f"""
import importlib.util, sys
sys.modules["tensorflow_datasets"] = None  # any import of it fails
spec = importlib.util.spec_from_file_location("lnjax_data", {str(module)!r})
data = importlib.util.module_from_spec(spec)
sys.modules["lnjax_data"] = data
spec.loader.exec_module(data)
ds = data.load("mnist", "test", data_dir={str(folder)!r})
assert ds.images.shape == ({N_TEST}, 28, 28), ds.images.shape
try:
    data.load("mnist", "test", source="tfds")
except data.DataNotFoundError as e:
    assert "not installed" in str(e)
else:
    raise AssertionError("no error")
assert not any(m.startswith(("jax", "tensorflow")) for m in sys.modules if sys.modules[m])
"""
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(name="emnist", split="test"), ValueError, r"'mnist', 'fashion_mnist', 'kmnist'"),
    (dict(name="mnist", split="dev"), ValueError, r"'train', 'validation', 'test', 'train_full'"),
    (dict(name="mnist", split="test", source="web"), ValueError, "source"),
    (dict(name=3, split="test"), TypeError, "name"),
])
def test_load_bad_arguments(kwargs, err, match):
    name, split = kwargs.pop("name"), kwargs.pop("split")
    with pytest.raises(err, match=match):
        data.load(name, split, **kwargs)


# --------------------------------------------------------------------------
# TFDS (mocked: tfds.testing.mock_data serves random examples to data_source).
# --------------------------------------------------------------------------


@pytest.fixture
def tfds():
    return pytest.importorskip("tensorflow_datasets", reason="tensorflow-datasets is not installed: pip install 'lnjax[data]' (make test installs it)")


@pytest.mark.parametrize("name", data.NAMES)
def test_tfds_source_with_mock_data(tmp_path, isolated, tfds, name):
    with tfds.testing.mock_data(num_examples=7):
        ds = data.load(name, "train", source="tfds")
        raw = tfds.data_source(name, split="train", download=False)
        raw_images = np.stack([raw[i]["image"][..., 0] for i in range(len(raw))])
        raw_labels = np.array([raw[i]["label"] for i in range(len(raw))])
    assert ds.images.shape == (7, 28, 28) and ds.images.dtype == np.float32
    assert ds.labels.shape == (7,) and ds.labels.dtype == np.int32
    assert 0 <= ds.images.min() and ds.images.max() <= 1 and ds.images.max() > 0
    assert 0 <= ds.labels.min() and ds.labels.max() < 10
    np.testing.assert_array_equal(ds.images * 255, raw_images)
    np.testing.assert_array_equal(ds.labels, raw_labels)
    assert ds.source.startswith(f"tfds:{name} (") and ds.name == name


def test_tfds_is_asked_for_the_paper_splits_without_download(tmp_path, isolated, tfds,
                                                             monkeypatch):
    calls = []
    real = tfds.data_source

    def spy(name, **kwargs):
        calls.append((name, kwargs["split"], kwargs["download"], kwargs["data_dir"]))
        return real(name, **kwargs)

    monkeypatch.setattr(tfds, "data_source", spy)
    with tfds.testing.mock_data(num_examples=3):
        for split in data.SPLITS:
            assert data.load("mnist", split, data_dir=tmp_path, source="tfds").split == split
    assert calls == [("mnist", s, False, str(tmp_path)) for s in
                     ("train[:-5000]", "train[-5000:]", "test", "train")]


def test_auto_order_idx_data_dir_then_tfds_then_idx_folders(tmp_path, isolated, tfds):
    given = write_idx_folder(tmp_path / "given")
    write_idx_folder(isolated / ".cache" / "lnjax" / "mnist")
    empty = tmp_path / "empty"
    empty.mkdir()
    with tfds.testing.mock_data(num_examples=3):
        assert data.load("mnist", "test", data_dir=given).source == f"idx:{given}"
        assert data.load("mnist", "test", data_dir=empty).source.startswith("tfds:mnist")
        assert data.load("mnist", "test", data_dir=given, source="tfds").source.startswith("tfds:")
    # TFDS not prepared (no mock): without a data_dir the IDX folders are next; a data_dir
    # given is the only place looked.
    assert data.load("mnist", "test").source == f"idx:{isolated / '.cache' / 'lnjax' / 'mnist'}"
    with pytest.raises(data.DataNotFoundError, match=f"in data_dir={empty}"):
        data.load("mnist", "test", data_dir=empty)


# --------------------------------------------------------------------------
# A folder the user names is the only place looked; one source per run.
# --------------------------------------------------------------------------


def test_named_data_dir_is_never_replaced_by_another_copy(tmp_path, isolated, monkeypatch,
                                                          no_tfds):
    """Data in $LNJAX_DATA_DIR, the cache and the Debian folder; the named folder is empty."""
    write_idx_folder(tmp_path / "debian" / "fashion-mnist")
    write_idx_folder(isolated / ".cache" / "lnjax" / "fashion_mnist")
    monkeypatch.setenv("LNJAX_DATA_DIR", str(write_idx_folder(tmp_path / "env")))
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


def test_named_empty_folder_does_not_load_debians_copy(tmp_path):
    """The report's case, with the real search path (Debian's Fashion-MNIST where installed)."""
    data._read_idx_cached.cache_clear()
    with pytest.raises(data.DataNotFoundError) as e:
        data.load("fashion_mnist", "train", data_dir=tmp_path)
    assert f"in data_dir={tmp_path}" in str(e.value).splitlines()[0]
    assert "idx:/usr/share/datasets" not in str(e.value)


def test_data_dir_with_only_the_training_files_is_an_error(tmp_path, isolated, monkeypatch,
                                                           no_tfds):
    monkeypatch.setattr(data, "_VALIDATION_SIZE", 4)
    write_idx_folder(tmp_path / "debian" / "fashion-mnist")  # a complete copy elsewhere
    partial = tmp_path / "partial"
    write(partial / TRAIN_FILES[0], idx_bytes(TRAIN_X, 2051), gz=True)
    write(partial / TRAIN_FILES[1], idx_bytes(TRAIN_Y, 2049), gz=True)
    assert data.load("fashion_mnist", "train", data_dir=partial).source == f"idx:{partial}"
    with pytest.raises(data.DataNotFoundError,
                       match=r"missing t10k-images-idx3-ubyte\[.gz\], t10k-labels") as e:
        data.load_splits("fashion_mnist", data_dir=partial)
    assert f"in data_dir={partial}" in str(e.value)
    with pytest.raises(data.DataNotFoundError, match=f"in data_dir={partial}"):
        data.load_splits("auto", data_dir=partial)


@pytest.mark.parametrize("dataset", ["fashion_mnist", "auto"])
def test_splits_from_two_places_stop_the_run(tmp_path, isolated, monkeypatch, no_tfds, dataset):
    """$LNJAX_DATA_DIR has only the training files; the Debian folder has all four."""
    monkeypatch.setattr(data, "_VALIDATION_SIZE", 4)
    debian = write_idx_folder(tmp_path / "debian" / "fashion-mnist")
    env = tmp_path / "env"
    write(env / TRAIN_FILES[0], idx_bytes(TRAIN_X, 2051), gz=True)
    write(env / TRAIN_FILES[1], idx_bytes(TRAIN_Y, 2049), gz=True)
    monkeypatch.setenv("LNJAX_DATA_DIR", str(env))
    with pytest.raises(ValueError, match="come from different places") as e:
        data.load_splits(dataset)
    assert not isinstance(e.value, FileNotFoundError)
    assert f"train and validation from idx:{env}; test from idx:{debian}" in str(e.value)


# --------------------------------------------------------------------------
# Identity: what the files are, by their checksums.
# --------------------------------------------------------------------------


def test_unknown_files_are_read_and_recorded_as_unknown(tmp_path, isolated):
    folder = write_idx_folder(tmp_path / "d", gz=False)
    ds = data.load("kmnist", "test", data_dir=folder)
    assert ds.name == "kmnist" and ds.identity == f"unknown IDX data in {folder}"
    assert not ds.verified
    assert ds.sha256 == tuple((f, sha256_of(folder / f)) for f in TEST_FILES)


def test_files_with_known_checksums_are_verified(tmp_path, isolated, monkeypatch):
    gz = write_idx_folder(tmp_path / "gz")
    plain = write_idx_folder(tmp_path / "plain", gz=False)
    monkeypatch.setattr(data, "KNOWN_SHA256", known_sha256(gz, "fashion_mnist"))
    ds = data.load("fashion_mnist", "test", data_dir=gz)
    assert ds.identity == "fashion_mnist (verified by checksum)" and ds.verified
    # A plain copy of known .gz files is unknown unless its raw digests are known too.
    assert data.load("fashion_mnist", "test", data_dir=plain).identity.startswith("unknown")
    monkeypatch.setattr(data, "KNOWN_SHA256", {**known_sha256(gz, "fashion_mnist"),
                                               **known_sha256(plain, "fashion_mnist")})
    data._read_idx_cached.cache_clear()
    assert data.load("fashion_mnist", "test", data_dir=plain).verified
    # ... and a gzipped copy with other .gz bytes is recognised by its decompressed bytes.
    regz = tmp_path / "regz"
    for f in TEST_FILES:
        write(regz / f, (plain / f).read_bytes(), gz=True)
    monkeypatch.setattr(data, "KNOWN_SHA256", known_sha256(plain, "fashion_mnist"))
    assert data.load("fashion_mnist", "test", data_dir=regz).verified


def test_a_known_file_under_another_files_name_is_not_verified(tmp_path, isolated, monkeypatch):
    folder = write_idx_folder(tmp_path / "d", gz=False)
    known = known_sha256(folder, "mnist")
    # The test labels' digest registered as the training labels' file: not that file.
    swapped = {k: (n, TRAIN_FILES[1] if stem == TEST_FILES[1] else stem, form)
               for k, (n, stem, form) in known.items()}
    monkeypatch.setattr(data, "KNOWN_SHA256", swapped)
    assert data.load("mnist", "test", data_dir=folder).identity.startswith("unknown IDX data")
    # Only one of the two files known: unknown too.
    monkeypatch.setattr(data, "KNOWN_SHA256", {k: v for k, v in known.items()
                                               if v[1] != TEST_FILES[1]})
    assert not data.load("mnist", "test", data_dir=folder).verified


def test_verified_files_of_another_data_set_are_an_error(tmp_path, isolated, monkeypatch,
                                                         capsys):
    monkeypatch.setattr(data, "_VALIDATION_SIZE", 4)
    folder = write_idx_folder(tmp_path / "fashion")  # the files directly in the folder
    monkeypatch.setattr(data, "KNOWN_SHA256", known_sha256(folder, "fashion_mnist"))
    with pytest.raises(data.WrongDataSetError,
                       match=f"in {folder} are fashion_mnist .* not 'mnist'; ask for "
                             "'fashion_mnist'") as e:
        data.load("mnist", "test", data_dir=folder)
    assert isinstance(e.value, ValueError)
    with pytest.raises(data.WrongDataSetError, match="not 'kmnist'"):
        data.load_splits("kmnist", data_dir=folder)
    # The command line goes on to the next name.
    assert data.main(["mnist", "fashion_mnist", "--data-dir", str(folder)]) == 0
    printed = capsys.readouterr().out
    assert "are fashion_mnist" in printed
    assert "fashion_mnist/test: 5 examples" in printed
    assert "identity: fashion_mnist (verified by checksum)" in printed


def test_auto_names_the_run_after_the_files(tmp_path, isolated, monkeypatch, no_tfds):
    """'auto' tries mnist first, which finds the files in the folder itself; their checksums
    say fashion_mnist, so that is the run's name."""
    monkeypatch.setattr(data, "_VALIDATION_SIZE", 4)
    folder = write_idx_folder(tmp_path / "fashion")
    monkeypatch.setattr(data, "KNOWN_SHA256", known_sha256(folder, "fashion_mnist"))
    splits, info = data.load_splits("auto", data_dir=folder)
    assert info == {"name": "fashion_mnist", "source": f"idx:{folder}",
                    "identity": "fashion_mnist (verified by checksum)", "verified": True,
                    "sha256": {f.name: sha256_of(f) for f in _idx_paths(folder)},
                    "sizes": {"train": N_TRAIN - 4, "validation": 4, "test": N_TEST}}
    assert all(ds.name == "fashion_mnist" and ds.verified for ds in splits.values())
    splits, info = data.load_splits("fashion_mnist", data_dir=folder)
    assert info["name"] == "fashion_mnist" and info["verified"]


def test_splits_that_mix_data_sets_stop_the_run(tmp_path, isolated, monkeypatch):
    monkeypatch.setattr(data, "_VALIDATION_SIZE", 4)
    folder = write_idx_folder(tmp_path / "d")
    known = known_sha256(folder, "mnist")
    monkeypatch.setattr(data, "KNOWN_SHA256", {
        k: ("kmnist" if stem.startswith("t10k") else n, stem, form)
        for k, (n, stem, form) in known.items()})
    with pytest.raises(ValueError, match=f"in {folder} mix data sets .* the training files are "
                                         "mnist's, the test files are kmnist's"):
        data.load_splits("auto", data_dir=folder)
    # Known training files with unknown test files: read, and recorded as unknown.
    monkeypatch.setattr(data, "KNOWN_SHA256", {k: v for k, v in known.items()
                                               if not v[1].startswith("t10k")})
    splits, info = data.load_splits("mnist", data_dir=folder)
    assert splits["train"].verified and not splits["test"].verified
    assert info["identity"] == f"unknown IDX data in {folder}" and not info["verified"]


def test_known_checksums_table_is_well_formed():
    assert len(data.KNOWN_SHA256) == 20
    for digest, (name, stem, form) in data.KNOWN_SHA256.items():
        assert len(digest) == 64 and int(digest, 16) >= 0
        assert name in data.NAMES and form in ("gz", "raw")
        assert stem in TRAIN_FILES + TEST_FILES
    for name in data.NAMES:  # the four published .gz files of each
        stems = sorted(s for n, s, f in data.KNOWN_SHA256.values() if n == name and f == "gz")
        assert set(stems) == set(TRAIN_FILES + TEST_FILES), name


def test_tfds_data_is_named_by_tfds_and_not_verified(tmp_path, isolated, tfds):
    with tfds.testing.mock_data(num_examples=3):
        splits, info = data.load_splits("kmnist")
    assert info["identity"] == "kmnist (TFDS data set, not verified by checksum)"
    assert not info["verified"] and info["sha256"] == {}
    assert info["source"].startswith("tfds:kmnist (")


# --------------------------------------------------------------------------
# describe, and the old name of batches.
# --------------------------------------------------------------------------


def test_batches_old_name_warns_and_is_steps_batches():
    with pytest.warns(DeprecationWarning, match="lnjax.steps.batches"):
        old = data.batches
    from lnjax import steps
    assert old is steps.batches


def test_describe(tmp_path, isolated):
    folder = write_idx_folder(tmp_path / "d")
    ds = data.load("kmnist", "test", data_dir=folder)
    assert data.describe(ds) == f"kmnist/test: {N_TEST} examples from idx:{folder}"


# --------------------------------------------------------------------------
# The real Fashion-MNIST test split, where the Debian package installed it.
# --------------------------------------------------------------------------


def test_real_fashion_mnist_test_split(isolated, monkeypatch):
    if not DEBIAN_FASHION.is_dir():
        pytest.skip(f"{DEBIAN_FASHION} is absent (apt-get install dataset-fashion-mnist)")
    monkeypatch.setattr(data, "_DEBIAN_DIRS", {"fashion_mnist": str(DEBIAN_FASHION)})
    ds = data.load("fashion_mnist", "test", source="idx")  # found via the search path
    assert ds.source == f"idx:{DEBIAN_FASHION}"
    assert ds.images.shape == (10_000, 28, 28) and ds.images.dtype == np.float32
    assert ds.labels.shape == (10_000,) and ds.labels.dtype == np.int32
    assert ds.images.min() == 0.0 and ds.images.max() == 1.0
    np.testing.assert_array_equal(np.bincount(ds.labels, minlength=10), [1000] * 10)


def test_real_fashion_mnist_files_are_verified_and_auto_names_them(isolated):
    """Debian's Fashion-MNIST with --dataset auto: 'mnist' finds the files first (they are in
    the folder itself); their checksums make the run fashion_mnist."""
    if not DEBIAN_FASHION.is_dir():
        pytest.skip(f"{DEBIAN_FASHION} is absent (apt-get install dataset-fashion-mnist)")
    for path in sorted(DEBIAN_FASHION.iterdir()):
        stem = path.name.removesuffix(".gz")
        assert data.KNOWN_SHA256[sha256_of(path)] == ("fashion_mnist", stem, "gz")
        raw = hashlib.sha256(gzip.decompress(path.read_bytes())).hexdigest()
        assert data.KNOWN_SHA256[raw] == ("fashion_mnist", stem, "raw")
    splits, info = data.load_splits("auto", data_dir=DEBIAN_FASHION, train_examples=10)
    assert info["name"] == "fashion_mnist" and info["source"] == f"idx:{DEBIAN_FASHION}"
    assert info["identity"] == "fashion_mnist (verified by checksum)" and info["verified"]
    assert info["sha256"] == {p.name: sha256_of(p) for p in _idx_paths(DEBIAN_FASHION)}
    assert info["sizes"] == {"train": 10, "validation": 5_000, "test": 10_000}
    assert all(ds.name == "fashion_mnist" for ds in splits.values())
    with pytest.raises(data.WrongDataSetError, match="are fashion_mnist"):
        data.load("mnist", "test", data_dir=DEBIAN_FASHION)


def test_prepare_asks_tfds_for_array_record_data(monkeypatch, tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets", reason="tensorflow-datasets is not installed: pip install 'lnjax[data]' (make test installs it)")
    calls = []

    class Builder:
        def __init__(self, name, data_dir=None):
            calls.append(("builder", name, data_dir))

        def download_and_prepare(self, **kwargs):
            calls.append(("prepare", kwargs))

    monkeypatch.setattr(tfds, "builder", Builder)
    data.prepare("fashion_mnist", data_dir=tmp_path)
    assert calls == [("builder", "fashion_mnist", str(tmp_path)),
                     ("prepare", {"file_format": "array_record"})]
    with pytest.raises(ValueError, match="name"):
        data.prepare("cifar10")
