"""TensorFlow Datasets: reading a prepared data set without TensorFlow, and preparing one.

:func:`load_tfds` reads with ``tfds.data_source(name, split=..., download=False)``,
which serves a data set prepared in the ``array_record`` format one example at
a time, without TensorFlow; it never downloads. :func:`prepare` is the one
function of :mod:`lnjax.datasets` that uses the network. ``tensorflow_datasets``
is imported only when one of them is called.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from lnjax._optional import require
from lnjax.datasets._checks import check_choice, check_labels
from lnjax.datasets.core import IMAGE_SHAPE, NAMES, Dataset
from lnjax.datasets.splits import VALIDATION_SIZE, tfds_split

__all__ = ["load_tfds", "prepare"]


def _default_data_dir() -> str:
    """TFDS's default folder, fixed when it was imported: $TFDS_DATA_DIR or
    ~/tensorflow_datasets."""
    try:
        from tensorflow_datasets.core.constants import DATA_DIR
    except ImportError:
        return "the default TFDS data_dir"
    return str(DATA_DIR)


def load_tfds(name: str, split: str, data_dir: str | os.PathLike | None = None, *,
              validation_size: int = VALIDATION_SIZE) -> Dataset | str:
    """The split from ``tfds.data_source`` (never downloading), or why it is not there.

    Args:
      name: one of :data:`~lnjax.data.NAMES`.
      split: one of :data:`~lnjax.datasets.splits.SPLITS` (asked of TFDS as
        :func:`~lnjax.datasets.splits.tfds_split` says).
      data_dir: the TFDS data directory (None: TFDS's own).
      validation_size: how many training examples the validation split holds out.

    Returns:
      A :class:`~lnjax.data.Dataset` with ``source="tfds:<name> (<folder>)"`` and an
      identity saying it is not verified by checksum, or a note such as
      ``"tfds:mnist: tensorflow_datasets is not installed (...)"`` or
      ``"tfds:mnist in <folder>: not prepared (...)"``.

    Raises:
      ValueError: an example's image is not 28x28 or its label is outside ``[0, 10)``.
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        return f"tfds:{name}: tensorflow_datasets is not installed ({e})"
    where = os.fspath(data_dir) if data_dir is not None else _default_data_dir()
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)  # "not prepared" is an expected outcome, not a warning
    try:
        source = tfds.data_source(
            name, split=tfds_split(split, validation_size=validation_size),
            data_dir=None if data_dir is None else os.fspath(data_dir), download=False)
    except Exception as e:  # TFDS raises many types for "not prepared"; all mean: not here.
        reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return f"tfds:{name} in {where}: not prepared ({type(e).__name__}: {reason})"
    finally:
        absl_logger.setLevel(level)
    n = len(source)
    images = np.empty((n, *IMAGE_SHAPE), np.uint8)
    labels = np.empty((n,), np.int64)
    for i in range(n):  # one by one: random access, no TensorFlow
        example = source[i]
        image = np.asarray(example["image"])
        if image.shape not in (IMAGE_SHAPE, (*IMAGE_SHAPE, 1)):
            raise ValueError(f"load: tfds:{name} example {i} has an image of shape "
                             f"{image.shape}, expected {IMAGE_SHAPE} or {(*IMAGE_SHAPE, 1)}.")
        images[i] = image.reshape(IMAGE_SHAPE)
        labels[i] = int(example["label"])
    info = getattr(source, "dataset_info", None)
    path = getattr(info, "data_dir", None) or where
    check_labels(labels, where=f"tfds:{name}")
    return Dataset.from_uint8(images, labels, name=name, split=split,
                              source=f"tfds:{name} ({path})",
                              identity=f"{name} (TFDS data set, not verified by checksum)")


def prepare(name: str, *, data_dir: str | os.PathLike | None = None) -> None:
    """Downloads and prepares ``name`` with TFDS so that :func:`lnjax.data.load` can read it.

    The one function of :mod:`lnjax.datasets` that uses the network: it runs
    ``tfds.builder(name, data_dir=...).download_and_prepare(file_format="array_record")``,
    which needs ``tensorflow-datasets``, TensorFlow and internet access (as in
    Colab). :func:`lnjax.data.load` itself never downloads.

    Args:
      name: one of :data:`~lnjax.data.NAMES`.
      data_dir: the TFDS data directory (default: TFDS's own).

    Raises:
      ValueError: an unknown name.
      ImportError: ``tensorflow-datasets`` is not installed (the message names
        ``pip install "lnjax[data]"``).
    """
    check_choice(name, NAMES, fn="prepare", name="name")
    tfds = require("tensorflow_datasets", "lnjax.data.prepare (it also needs tensorflow "
                   "to download)")
    builder = tfds.builder(name, data_dir=None if data_dir is None else os.fspath(data_dir))
    builder.download_and_prepare(file_format="array_record")
