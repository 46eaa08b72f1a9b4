"""Helpers shared by the test modules: small MNIST-format IDX files with known values."""

import gzip
import hashlib
from pathlib import Path

import numpy as np


def idx_bytes(array, magic):
    """The bytes of an IDX file holding ``array`` (uint8) under the ``magic`` number."""
    array = np.asarray(array, np.uint8)
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def write(path, payload, gz):
    """Writes ``payload`` to ``path`` (``path.gz``, gzipped, when ``gz``); returns the path."""
    path = Path(str(path) + ".gz") if gz else Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049  # the IDX magic numbers of images and labels


def learnable_images(n, seed):
    """``n`` uint8 images of 28x28 and their labels: class k is a fixed random template plus
    10% flipped pixels, so a small network learns them within a few epochs."""
    rng = np.random.default_rng(seed)
    templates = np.random.default_rng(123).random((10, 28, 28)) < 0.3
    labels = rng.integers(0, 10, n).astype(np.uint8)
    noise = rng.random((n, 28, 28)) < 0.1
    images = (templates[labels] ^ noise).astype(np.uint8) * 200 + 20
    return images.astype(np.uint8), labels


def write_mnist_folder(folder, n_train, n_test, *, gz=True):
    """The four MNIST-format IDX files of ``learnable_images`` in ``folder``: ``n_train``
    training examples (seed 0) and ``n_test`` test examples (seed 1); returns ``folder``."""
    folder = Path(folder)
    for part, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = learnable_images(n, seed)
        write(folder / f"{part}-images-idx3-ubyte", idx_bytes(images, IMAGES_MAGIC), gz)
        write(folder / f"{part}-labels-idx1-ubyte", idx_bytes(labels, LABELS_MAGIC), gz)
    return folder


def known_sha256(folder, name):
    """``lnjax.data.KNOWN_SHA256`` entries that make the IDX files in ``folder`` known as the
    data set ``name``: the sha256 of each file as stored (form ``"gz"`` for a gzipped file,
    ``"raw"`` for a plain one)."""
    entries = {}
    for path in sorted(Path(folder).glob("*-ubyte*")):
        payload = path.read_bytes()
        form = "gz" if payload[:2] == b"\x1f\x8b" else "raw"
        entries[hashlib.sha256(payload).hexdigest()] = (name, path.name.removesuffix(".gz"), form)
    return entries


def small_mnist(root, monkeypatch, n_train, n_val, n_test):
    """``write_mnist_folder`` in ``root/data/mnist`` with ``n_train + n_val`` training examples,
    the last ``n_val`` of them the validation split; returns ``root/data`` (the data_dir)."""
    from lnjax import data

    write_mnist_folder(Path(root) / "data" / "mnist", n_train + n_val, n_test)
    monkeypatch.setattr(data, "_VALIDATION_SIZE", n_val)
    data._read_idx_cached.cache_clear()
    return Path(root) / "data"
