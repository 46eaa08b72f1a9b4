"""What the parts of :mod:`lnjax.datasets` share: the data sets' names, the
:class:`~lnjax.data.Dataset` one split is loaded into, and the errors.

:mod:`lnjax.data` re-exports these names; this module is their home.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = [
    "IMAGE_SHAPE",
    "NAMES",
    "NUM_CLASSES",
    "DataNotFoundError",
    "Dataset",
    "WrongDataSetError",
    "verified_identity",
    "verified_name",
]

NAMES = ("mnist", "fashion_mnist", "kmnist")
"""The data sets :func:`lnjax.data.load` knows (TFDS names; all share the MNIST format)."""

IMAGE_SHAPE = (28, 28)
"""The shape of one image of every data set in :data:`NAMES`."""

NUM_CLASSES = 10
"""The number of classes of every data set in :data:`NAMES`: labels are in ``[0, 10)``."""


def verified_identity(name: str) -> str:
    """The identity of files whose checksums say they are the data set ``name``.

    Args:
      name: one of :data:`NAMES`.

    Returns:
      ``"<name> (verified by checksum)"``, as :attr:`Dataset.identity` says it.

    Example:
      >>> verified_identity("fashion_mnist")
      'fashion_mnist (verified by checksum)'
    """
    return f"{name} (verified by checksum)"


def verified_name(identity: str) -> str | None:
    """The data set a verified identity names, or None when the identity is not a verified one.

    Args:
      identity: a :attr:`Dataset.identity`.

    Returns:
      The name of :data:`NAMES` in ``"<name> (verified by checksum)"``, else None
      (unknown IDX data, or a TFDS data set, which is not verified by checksum).

    Example:
      >>> verified_name("kmnist (verified by checksum)")
      'kmnist'
      >>> verified_name("unknown IDX data in /data") is None
      True
    """
    return next((n for n in NAMES if identity == verified_identity(n)), None)


class Dataset(NamedTuple):
    """One split of a data set, in memory."""

    images: np.ndarray  # (N, 28, 28) float32 in [0, 1]
    labels: np.ndarray  # (N,) int32 in [0, 10)
    name: str  # "mnist", "fashion_mnist" or "kmnist"
    split: str  # "train", "validation", "test" or "train_full"
    source: str  # where it came from: "idx:<folder>" or "tfds:<name> (<folder>)"
    # What the files are: "<name> (verified by checksum)", "unknown IDX data in <folder>",
    # or "<name> (TFDS data set, not verified by checksum)".
    identity: str = "not checked"
    sha256: tuple[tuple[str, str], ...] = ()  # (file name, sha256 of its bytes as stored)

    @property
    def verified(self) -> bool:
        """Whether the checksums of the files say they are the data set ``name``."""
        return self.identity == verified_identity(self.name)

    @classmethod
    def from_uint8(cls, images: np.ndarray, labels: np.ndarray, *, name: str, split: str,
                   source: str, identity: str,
                   sha256: tuple[tuple[str, str], ...] = ()) -> Dataset:
        """A :class:`Dataset` of fresh float32 images in ``[0, 1]`` and int32 labels.

        The arrays are copies, never views of ``images`` or ``labels`` (which may be
        read-only and shared, as the cached arrays of :func:`lnjax.datasets.idx.read_idx`).

        Args:
          images: uint8 pixels in ``[0, 255]``, shaped ``(N, 28, 28)``.
          labels: integer labels shaped ``(N,)``.
          name: the data set's name.
          split: the split's name.
          source: where the arrays came from.
          identity: what they are (see :attr:`identity`).
          sha256: ``(file name, sha256)`` of each file read.

        Returns:
          The :class:`Dataset`.

        Example:
          >>> import numpy as np
          >>> ds = Dataset.from_uint8(np.full((2, 28, 28), 255, np.uint8), np.array([3, 1]),
          ...                         name="mnist", split="test", source="idx:/data",
          ...                         identity="unknown IDX data in /data")
          >>> ds.images.dtype, float(ds.images.max()), ds.labels.dtype
          (dtype('float32'), 1.0, dtype('int32'))
        """
        scaled = np.asarray(images).astype(np.float32)
        scaled /= np.float32(255.0)
        return cls(images=scaled, labels=np.asarray(labels).astype(np.int32, copy=True),
                   name=name, split=split, source=source, identity=identity, sha256=sha256)


class DataNotFoundError(FileNotFoundError):
    """No source had the data; the message says how to get it."""


class WrongDataSetError(ValueError):
    """The files are verified, by their checksums, as another data set than the one asked for."""
