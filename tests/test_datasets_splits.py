"""lnjax.datasets.splits: which examples each split takes, with the paper's 5,000 held out or
another validation_size, in IDX files and in TFDS split strings."""

import numpy as np
import pytest

from lnjax import data
from lnjax.datasets import splits
from lnjax.datasets.splits import split_slice, tfds_split
from tests.helpers import isolate_data, learnable_images, write_mnist_folder

N_TRAIN, N_TEST = 12, 5
TRAIN_X, TRAIN_Y = learnable_images(N_TRAIN, 0)  # what write_mnist_folder writes


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    return isolate_data(monkeypatch, tmp_path)


def test_the_paper_split_is_the_default():
    assert splits.VALIDATION_SIZE == data.VALIDATION_SIZE == 5_000
    assert splits.SPLITS == data.SPLITS == ("train", "validation", "test", "train_full")


def test_split_slice_mnist_sizes():
    assert split_slice("train", 60_000) == ("train", slice(0, 55_000))
    assert split_slice("validation", 60_000) == ("train", slice(55_000, 60_000))
    assert split_slice("train_full", 60_000) == ("train", slice(None))
    assert split_slice("test", 10_000) == ("test", slice(None))
    # The hold-out is the last examples of the training file, whatever its length.
    assert split_slice("validation", 12, validation_size=4) == ("train", slice(8, 12))
    assert split_slice("train", 12, validation_size=4) == ("train", slice(0, 8))


def test_split_slice_errors():
    with pytest.raises(ValueError, match="train_full"):
        split_slice("train", 5_000)
    with pytest.raises(ValueError, match="only 4; use split='train_full' or a smaller "
                                         "validation_size"):
        split_slice("validation", 4, validation_size=4)
    with pytest.raises(ValueError, match="unknown split"):
        split_slice("dev", 60_000)
    with pytest.raises(ValueError, match="validation_size must be >= 1"):
        split_slice("train", 60_000, validation_size=0)
    with pytest.raises(TypeError, match="validation_size must be an int"):
        split_slice("train", 60_000, validation_size=0.5)


def test_tfds_split_strings():
    assert [tfds_split(s) for s in splits.SPLITS] == [
        "train[:-5000]", "train[-5000:]", "test", "train"]
    assert tfds_split("train", validation_size=48) == "train[:-48]"
    with pytest.raises(ValueError, match="unknown split"):
        tfds_split("dev")


@pytest.mark.parametrize("validation_size", [5_000, 48])
def test_tfds_split_strings_take_what_split_slice_takes(validation_size):
    """TFDS's own reading of the strings, on a 60,000-example training split."""
    pytest.importorskip("tensorflow_datasets", reason="tensorflow-datasets is not installed: pip install 'lnjax[data]' (make test installs it)")
    from tensorflow_datasets.core import ReadInstruction
    from tensorflow_datasets.core import splits as tfds_splits

    info = {"train": tfds_splits.SplitInfo(name="train", shard_lengths=[60_000], num_bytes=0,
                                           filename_template=None)}
    for split in ("train", "validation", "train_full"):
        (inst,) = ReadInstruction.from_spec(
            tfds_split(split, validation_size=validation_size)).to_absolute(info)
        _, sl = split_slice(split, 60_000, validation_size=validation_size)
        assert inst.splitname == "train"
        assert range(60_000)[inst.from_:inst.to] == range(60_000)[sl], split


# --------------------------------------------------------------------------
# Through load and load_splits.
# --------------------------------------------------------------------------


def test_load_splits_partition_the_training_file(tmp_path, isolated):
    folder = write_mnist_folder(tmp_path / "d", N_TRAIN, N_TEST)
    train = data.load("mnist", "train", data_dir=folder, validation_size=4)
    val = data.load("mnist", "validation", data_dir=folder, validation_size=4)
    assert len(train.labels) == N_TRAIN - 4 and len(val.labels) == 4
    np.testing.assert_array_equal(train.labels, TRAIN_Y[:-4])
    np.testing.assert_array_equal(val.labels, TRAIN_Y[-4:])
    np.testing.assert_array_equal(val.images * 255, TRAIN_X[-4:])
    # train_full and test do not depend on it.
    full = data.load("mnist", "train_full", data_dir=folder, validation_size=4)
    np.testing.assert_array_equal(full.labels, TRAIN_Y)


def test_load_splits_takes_the_validation_size(tmp_path, isolated):
    folder = write_mnist_folder(tmp_path / "d", N_TRAIN, N_TEST)
    parts, info = data.load_splits("mnist", data_dir=folder, validation_size=5)
    assert info["sizes"] == {"train": N_TRAIN - 5, "validation": 5, "test": N_TEST}
    np.testing.assert_array_equal(parts["validation"].labels, TRAIN_Y[-5:])
    parts, info = data.load_splits("mnist", data_dir=folder, validation_size=5,
                                   train_examples=3)
    assert info["sizes"] == {"train": 3, "validation": 5, "test": N_TEST}


def test_load_train_split_of_a_small_file_is_an_error(tmp_path, isolated):
    """The paper's 5,000 held out of a 12-example training file."""
    folder = write_mnist_folder(tmp_path / "d", N_TRAIN, N_TEST)
    with pytest.raises(ValueError, match="only 12"):
        data.load("mnist", "train", data_dir=folder)
    with pytest.raises(ValueError, match="only 12"):
        data.load_splits("mnist", data_dir=folder)


@pytest.mark.parametrize("fn", ["load", "load_splits"])
@pytest.mark.parametrize("value, err, match", [
    (0, ValueError, "validation_size must be >= 1"),
    (True, TypeError, "validation_size must be an int"),
    ("48", TypeError, "validation_size must be an int"),
])
def test_bad_validation_size(tmp_path, isolated, fn, value, err, match):
    folder = write_mnist_folder(tmp_path / "d", N_TRAIN, N_TEST)
    args = ("mnist", "train") if fn == "load" else ("mnist",)
    with pytest.raises(err, match=f"{fn}: {match}"):
        getattr(data, fn)(*args, data_dir=folder, validation_size=value)
