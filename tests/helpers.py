"""Helpers shared by the test modules: small MNIST-format IDX files with known values, the
environment of lnjax.data's search for them, and the docs' configuration."""

import gzip
import hashlib
from pathlib import Path
from typing import NamedTuple

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


def add_known_sha256(monkeypatch, entries):
    """Adds ``entries`` (such as ``known_sha256(folder, name)``) to ``lnjax.data.KNOWN_SHA256``,
    which load reads at each call, for one test: ``monkeypatch`` takes them out afterwards."""
    from lnjax import data

    for digest, entry in entries.items():
        monkeypatch.setitem(data.KNOWN_SHA256, digest, entry)


def isolate_data(monkeypatch, tmp_path):
    """No IDX data anywhere by default: an empty HOME (so ``~/.cache/lnjax``), no
    ``$LNJAX_DATA_DIR``, and ``$LNJAX_SYSTEM_DATA_DIR`` at ``tmp_path/debian`` (empty, in place
    of /usr/share/datasets); returns the HOME folder."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("LNJAX_DATA_DIR", raising=False)
    monkeypatch.setenv("LNJAX_SYSTEM_DATA_DIR", str(tmp_path / "debian"))
    return home


class SmallMnist(NamedTuple):
    """A small MNIST-format data set written by :func:`small_mnist`."""

    data_dir: Path  # the folder to pass as data_dir / --data-dir (the files are in mnist/)
    validation_size: int  # the last examples of the training file: the validation split

    @property
    def flags(self):
        """The experiments' command-line flags that load it: ``--data-dir``,
        ``--validation-size``."""
        return ["--data-dir", str(self.data_dir), "--validation-size", str(self.validation_size)]

    def load_splits(self, **kwargs):
        """``lnjax.data.load_splits("mnist", ...)`` of this data set."""
        from lnjax import data

        return data.load_splits("mnist", data_dir=self.data_dir,
                                validation_size=self.validation_size, **kwargs)


def small_mnist(root, n_train, n_val, n_test):
    """``write_mnist_folder`` in ``root/data/mnist`` with ``n_train + n_val`` training examples
    (the last ``n_val`` of them the validation split) and ``n_test`` test examples; returns a
    :class:`SmallMnist` (its ``data_dir`` is ``root/data``)."""
    write_mnist_folder(Path(root) / "data" / "mnist", n_train + n_val, n_test)
    return SmallMnist(Path(root) / "data", n_val)


def docs_conf():
    """docs/conf.py as a module (it puts docs/ on ``sys.path``, so ``import generate``
    then finds docs/generate.py): ``NOTEBOOK_SETTINGS`` and the build's other settings."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "docs" / "conf.py"
    spec = importlib.util.spec_from_file_location("lnjax_docs_conf", path)
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)
    return conf
