"""lnjax.datasets.idx: finding and reading IDX files (gzipped or plain), the cache, and the
errors a malformed file gives through lnjax.data.load."""

import gzip
import hashlib
import os

import numpy as np
import pytest

from lnjax import data
from lnjax.datasets import idx
from tests.helpers import idx_bytes, isolate_data, learnable_images, write, write_mnist_folder

N_TRAIN, N_TEST = 12, 5
TRAIN_X, TRAIN_Y = learnable_images(N_TRAIN, 0)  # what write_mnist_folder writes
TEST_X, TEST_Y = learnable_images(N_TEST, 1)
TRAIN_FILES, TEST_FILES = idx.FILES["train"], idx.FILES["test"]


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    return isolate_data(monkeypatch, tmp_path)


def test_file_names_and_magic_numbers_are_mnists():
    assert idx.FILES == {
        "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
    assert (idx.IMAGES_MAGIC, idx.LABELS_MAGIC) == (0x803, 0x801)


@pytest.mark.parametrize("gz", [True, False], ids=["gzipped", "plain"])
def test_read_idx_values_and_checksums(tmp_path, gz):
    payload = idx_bytes(TEST_X, 2051)
    path = write(tmp_path / TEST_FILES[0], payload, gz)
    f = idx.read_idx(path, magic=idx.IMAGES_MAGIC)
    np.testing.assert_array_equal(f.array, TEST_X)
    assert f.array.dtype == np.uint8 and not f.array.flags.writeable
    assert f.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert f.raw_sha256 == hashlib.sha256(payload).hexdigest()
    assert (f.sha256 == f.raw_sha256) == (not gz)


def test_read_idx_caches_by_path_time_and_size(tmp_path):
    path = write(tmp_path / TEST_FILES[1], idx_bytes(TEST_Y, 2049), gz=False)
    first = idx.read_idx(path, magic=idx.LABELS_MAGIC)
    assert idx.read_idx(str(path), magic=idx.LABELS_MAGIC) is first  # parsed once
    path.write_bytes(idx_bytes(np.full(N_TEST, 9), 2049))
    os.utime(path, ns=(1, 1))  # a different mtime, whatever the clock resolution
    again = idx.read_idx(path, magic=idx.LABELS_MAGIC)
    assert again is not first
    np.testing.assert_array_equal(again.array, 9)


def test_read_idx_rejects_an_unknown_magic_number(tmp_path):
    path = write(tmp_path / TEST_FILES[1], idx_bytes(TEST_Y, 2049), gz=False)
    with pytest.raises(ValueError, match="magic must be IMAGES_MAGIC"):
        idx.read_idx(path, magic=2050)


def test_find_files_plain_or_gzipped_and_why_not(tmp_path):
    folder = tmp_path / "d"
    assert idx.find_files(folder, "test") == "no such folder"
    images = write(folder / TEST_FILES[0], idx_bytes(TEST_X, 2051), gz=True)
    assert idx.find_files(folder, "test") == "missing t10k-labels-idx1-ubyte[.gz]"
    labels = write(folder / TEST_FILES[1], idx_bytes(TEST_Y, 2049), gz=False)
    assert idx.find_files(folder, "test") == (images, labels)
    assert idx.find_files(folder, "train") == (
        "missing train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz]")


# --------------------------------------------------------------------------
# Through load: values, gzip, the cache.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False], ids=["gzipped", "plain"])
def test_load_idx_values(tmp_path, isolated, gz):
    folder = write_mnist_folder(tmp_path / "d", N_TRAIN, N_TEST, gz=gz)
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


def test_load_only_needs_the_files_of_its_part(tmp_path, isolated):
    folder = tmp_path / "d"
    write(folder / TEST_FILES[0], idx_bytes(TEST_X, 2051), gz=True)
    write(folder / TEST_FILES[1], idx_bytes(TEST_Y, 2049), gz=True)
    assert len(data.load("mnist", "test", data_dir=folder, source="idx").labels) == N_TEST
    with pytest.raises(data.DataNotFoundError, match="missing train-images-idx3-ubyte"):
        data.load("mnist", "train_full", data_dir=folder, source="idx")


def test_load_caches_parsed_files_and_returns_fresh_arrays(tmp_path, isolated):
    folder = write_mnist_folder(tmp_path / "d", N_TRAIN, N_TEST)
    idx.cache_clear()
    assert idx.cache_info().misses == 0
    train = data.load("mnist", "train", data_dir=folder, validation_size=4)
    assert idx.cache_info().misses == 2  # one images and one labels file
    data.load("mnist", "validation", data_dir=folder, validation_size=4)
    assert idx.cache_info().misses == 2  # not parsed again
    assert idx.cache_info().hits == 2
    train.images[:] = -1.0
    train.labels[:] = -1
    again = data.load("mnist", "train", data_dir=folder, validation_size=4)
    np.testing.assert_array_equal(again.images * 255, TRAIN_X[:8])
    np.testing.assert_array_equal(again.labels, TRAIN_Y[:8])
    cached = idx.read_idx(folder / (TRAIN_FILES[0] + ".gz"), magic=idx.IMAGES_MAGIC)
    assert not cached.array.flags.writeable
    np.testing.assert_array_equal(cached.array, TRAIN_X)  # untouched by the writes above


def test_load_rereads_a_file_rewritten_in_place(tmp_path, isolated):
    folder = write_mnist_folder(tmp_path / "d", N_TRAIN, N_TEST, gz=False)
    data.load("mnist", "test", data_dir=folder)
    path = folder / TEST_FILES[1]
    path.write_bytes(idx_bytes(np.full(N_TEST, 9), 2049))
    os.utime(path, ns=(1, 1))  # a different mtime, whatever the clock resolution
    np.testing.assert_array_equal(data.load("mnist", "test", data_dir=folder).labels, 9)


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
    _malformed(tmp_path / "c", "images_truncated")
    with pytest.raises(ValueError, match=r"truncated or padded: .* shape \(5, 28, 28\)"):
        idx.read_idx(tmp_path / "c" / TEST_FILES[0], magic=idx.IMAGES_MAGIC)
