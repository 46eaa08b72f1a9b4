"""lnjax.datasets.tfds_source: TFDS data sets read without TensorFlow (mocked:
tfds.testing.mock_data serves random examples to data_source), their place in load's order,
and prepare."""

import numpy as np
import pytest

from lnjax import data
from lnjax.datasets import tfds_source
from tests.helpers import isolate_data, write_mnist_folder

N_TRAIN, N_TEST = 12, 5
_TFDS = "tensorflow-datasets is not installed: pip install 'lnjax[data]' (make test installs it)"


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    return isolate_data(monkeypatch, tmp_path)


@pytest.fixture
def tfds():
    return pytest.importorskip("tensorflow_datasets", reason=_TFDS)


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


def test_load_tfds_returns_the_split_or_why_not(tmp_path, tfds):
    with tfds.testing.mock_data(num_examples=3):
        ds = tfds_source.load_tfds("mnist", "test", tmp_path)
    assert len(ds.labels) == 3 and ds.identity == "mnist (TFDS data set, not verified by checksum)"
    note = tfds_source.load_tfds("mnist", "test", tmp_path)
    assert note.startswith(f"tfds:mnist in {tmp_path}: not prepared (")


@pytest.mark.parametrize("validation_size, strings", [
    (None, ("train[:-5000]", "train[-5000:]", "test", "train")),
    (48, ("train[:-48]", "train[-48:]", "test", "train")),
])
def test_tfds_is_asked_for_the_splits_without_download(tmp_path, isolated, tfds, monkeypatch,
                                                       validation_size, strings):
    calls = []
    real = tfds.data_source

    def spy(name, **kwargs):
        calls.append((name, kwargs["split"], kwargs["download"], kwargs["data_dir"]))
        return real(name, **kwargs)

    monkeypatch.setattr(tfds, "data_source", spy)
    kwargs = {} if validation_size is None else {"validation_size": validation_size}
    with tfds.testing.mock_data(num_examples=3):
        for split in data.SPLITS:
            ds = data.load("mnist", split, data_dir=tmp_path, source="tfds", **kwargs)
            assert ds.split == split
    assert calls == [("mnist", s, False, str(tmp_path)) for s in strings]


def test_auto_order_idx_data_dir_then_tfds_then_idx_folders(tmp_path, isolated, tfds):
    given = write_mnist_folder(tmp_path / "given", N_TRAIN, N_TEST)
    write_mnist_folder(isolated / ".cache" / "lnjax" / "mnist", N_TRAIN, N_TEST)
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


def test_tfds_data_is_named_by_tfds_and_not_verified(tmp_path, isolated, tfds):
    with tfds.testing.mock_data(num_examples=3):
        parts, info = data.load_splits("kmnist")
    assert info["identity"] == "kmnist (TFDS data set, not verified by checksum)"
    assert not info["verified"] and info["sha256"] == {}
    assert info["source"].startswith("tfds:kmnist (")
    assert set(parts) == {"train", "validation", "test"}


def test_prepare_asks_tfds_for_array_record_data(monkeypatch, tmp_path, tfds):
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
