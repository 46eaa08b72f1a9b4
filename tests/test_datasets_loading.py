"""lnjax.datasets.loading and lnjax.datasets.core: load's arguments, load_splits's choice of
a data set ("auto"), its record of the run's data, describe, and Dataset."""

import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest

from lnjax import data
from lnjax.datasets import core, idx
from tests.helpers import idx_bytes, isolate_data, learnable_images, write, write_mnist_folder

N_TRAIN, N_TEST = 12, 5
TRAIN_X, TRAIN_Y = learnable_images(N_TRAIN, 0)  # what write_mnist_folder writes
TEST_X, TEST_Y = learnable_images(N_TEST, 1)
TRAIN_FILES, TEST_FILES = idx.FILES["train"], idx.FILES["test"]


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    return isolate_data(monkeypatch, tmp_path)


@pytest.fixture
def no_tfds(monkeypatch):
    """``import tensorflow_datasets`` raises ImportError."""
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)


def sha256_of(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_load_splits_auto_takes_mnist_first(tmp_path, isolated):
    folder = write_mnist_folder(tmp_path / "d" / "mnist", N_TRAIN, N_TEST)
    fashion = tmp_path / "d" / "fashion_mnist"
    write(fashion / TEST_FILES[0], idx_bytes(TEST_X[:2], 2051), gz=False)
    write(fashion / TEST_FILES[1], idx_bytes(TEST_Y[:2], 2049), gz=False)
    splits, info = data.load_splits(data_dir=tmp_path / "d", validation_size=4)
    assert set(splits) == {"train", "validation", "test"}
    assert info == {"name": "mnist", "source": f"idx:{folder}",
                    "identity": f"unknown IDX data in {folder}", "verified": False,
                    "sha256": {f.name: sha256_of(f) for f in folder.iterdir()},
                    "sizes": {"train": N_TRAIN - 4, "validation": 4, "test": N_TEST}}
    assert list(info["sha256"]) == [f + ".gz" for f in TRAIN_FILES + TEST_FILES]
    assert [ds.split for ds in splits.values()] == ["train", "validation", "test"]
    np.testing.assert_array_equal(splits["train"].labels, TRAIN_Y[:-4])
    np.testing.assert_array_equal(splits["validation"].labels, TRAIN_Y[-4:])
    np.testing.assert_array_equal(splits["test"].images * 255, TEST_X)


def test_load_splits_auto_falls_back_to_fashion_mnist(tmp_path, isolated, no_tfds):
    write_mnist_folder(tmp_path / "d" / "fashion-mnist", N_TRAIN, N_TEST)
    splits, info = data.load_splits("auto", data_dir=tmp_path / "d", train_examples=3,
                                    validation_size=4)
    assert info["name"] == "fashion_mnist"
    assert info["sizes"] == {"train": 3, "validation": 4, "test": N_TEST}
    assert all(ds.name == "fashion_mnist" for ds in splits.values())
    np.testing.assert_array_equal(splits["train"].labels, TRAIN_Y[:3])
    np.testing.assert_array_equal(splits["train"].images * 255, TRAIN_X[:3])
    # A named data set is the only one tried.
    with pytest.raises(data.DataNotFoundError, match="'mnist'") as e:
        data.load_splits("mnist", data_dir=tmp_path / "d", validation_size=4)
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
    ({"validation_size": 0}, ValueError, "validation_size must be >= 1"),
])
def test_load_splits_bad_arguments(tmp_path, isolated, kwargs, err, match):
    with pytest.raises(err, match=match):
        data.load_splits(data_dir=tmp_path, **kwargs)


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(name="emnist", split="test"), ValueError, r"'mnist', 'fashion_mnist', 'kmnist'"),
    (dict(name="mnist", split="dev"), ValueError, r"'train', 'validation', 'test', 'train_full'"),
    (dict(name="mnist", split="test", source="web"), ValueError, "source"),
    (dict(name=3, split="test"), TypeError, "name"),
    (dict(name="mnist", split="test", validation_size=-1), ValueError, "validation_size"),
])
def test_load_bad_arguments(kwargs, err, match):
    name, split = kwargs.pop("name"), kwargs.pop("split")
    with pytest.raises(err, match=match):
        data.load(name, split, **kwargs)


def test_describe(tmp_path, isolated):
    folder = write_mnist_folder(tmp_path / "d", N_TRAIN, N_TEST)
    ds = data.load("kmnist", "test", data_dir=folder)
    assert data.describe(ds) == f"kmnist/test: {N_TEST} examples from idx:{folder}"


# --------------------------------------------------------------------------
# core: Dataset and identities.
# --------------------------------------------------------------------------


def test_dataset_from_uint8_scales_and_copies():
    images = np.array([[[0, 51, 255]]], np.uint8).repeat(2, axis=0)
    labels = np.array([9, 0], np.uint8)
    images.flags.writeable = labels.flags.writeable = False  # as the cached arrays are
    ds = core.Dataset.from_uint8(images, labels, name="kmnist", split="test", source="s",
                                 identity=core.verified_identity("kmnist"))
    np.testing.assert_array_equal(ds.images, np.array([[[0.0, 0.2, 1.0]]] * 2, np.float32))
    assert ds.images.dtype == np.float32 and ds.labels.dtype == np.int32
    assert ds.images.flags.writeable and ds.labels.flags.writeable
    assert ds.verified and ds.sha256 == ()
    assert not ds._replace(name="mnist").verified


def test_verified_identities_name_their_data_set():
    for name in core.NAMES:
        assert core.verified_name(core.verified_identity(name)) == name
    assert core.verified_name("mnist (TFDS data set, not verified by checksum)") is None
    assert core.verified_name("emnist (verified by checksum)") is None
