"""Helpers shared by the test modules: small MNIST-format IDX files with known values."""

import gzip
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
