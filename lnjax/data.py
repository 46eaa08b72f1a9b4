"""Data sets for the paper's experiments: MNIST, Fashion-MNIST and KMNIST.

Pure NumPy: neither this module nor :mod:`lnjax.datasets`, whose parts it
re-exports, imports jax, and ``tensorflow_datasets`` is imported only when a
TFDS source is tried, so IDX files load without either.

:func:`load` returns a :class:`Dataset` of float32 images in ``[0, 1]`` shaped
``(N, 28, 28)`` and int32 labels. Where it looks:

* **With** ``data_dir`` **given, there and nowhere else**: the IDX files in
  ``data_dir/<name>`` (also spelled with hyphens, as Debian does) or in
  ``data_dir`` itself, then a TFDS data set prepared in ``data_dir``. When
  neither is there, :class:`DataNotFoundError` names the folder: a folder the
  user names is never silently replaced by another copy.
* **Without** ``data_dir``, in this order (``source="auto"``), the first that
  has it:

  1. **TFDS**: ``tfds.data_source(name, split=..., download=False)`` reads a
     data set prepared in the ``array_record`` format (in TFDS's own data
     folder), without TensorFlow. Nothing is ever downloaded.
  2. **IDX folders on disk**: ``$LNJAX_DATA_DIR/<name>``, ``$LNJAX_DATA_DIR``,
     ``~/.cache/lnjax/<name>``, and the Debian/Ubuntu package folders
     ``/usr/share/datasets/fashion-mnist`` (package ``dataset-fashion-mnist``)
     and ``/usr/share/datasets/mnist`` (``$LNJAX_SYSTEM_DATA_DIR``, when set,
     replaces ``/usr/share/datasets``; see :mod:`lnjax.datasets.folders`).

The IDX files are the four MNIST-format files ``train-images-idx3-ubyte``,
``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and
``t10k-labels-idx1-ubyte``, each gzipped (``.gz``) or plain.
``source="tfds"`` tries TFDS only, ``source="idx"`` IDX folders only. When
nothing is found, :class:`DataNotFoundError` (a ``FileNotFoundError``) says
how to get the data and lists every place that was tried.

**Identity.** What an IDX data set *is* is taken from its files, not from the
name asked for or the folder's name: the sha256 of each file (as stored, and
of its decompressed bytes) is compared with the published checksums of MNIST,
Fashion-MNIST and KMNIST (:data:`KNOWN_SHA256`). ``Dataset.identity`` says
``"fashion_mnist (verified by checksum)"`` or ``"unknown IDX data in
<folder>"``; unknown files are read all the same, under the name asked for.
Files that are verified as another data set than the one asked for are an
error (:class:`WrongDataSetError`); :func:`load_splits` with ``"auto"`` names
the run after them instead.

**One source per run.** :func:`load_splits` takes train, validation and test
from one place, or raises ``ValueError`` naming the places.

Splits follow the paper, which holds out 5,000 training examples for
validation: ``"train"`` is the first 55,000 of the 60,000 training examples,
``"validation"`` the last 5,000, ``"train_full"`` all 60,000 and ``"test"``
the 10,000 test examples. In TFDS terms: ``train[:-5000]``, ``train[-5000:]``,
``train`` and ``test``. ``validation_size=`` (default :data:`VALIDATION_SIZE`)
holds out another number, for smaller data sets in the same format.

``python -m lnjax.data [NAME ...] [--data-dir FOLDER]`` prints the first data set
found and exits with status 0, or 1 when none is (:mod:`lnjax.datasets.cli`).

:func:`lnjax.steps.batches` shuffles a whole epoch with a seed and stacks it
into ``(num_batches, batch_size, ...)`` arrays, ready for one ``lax.scan``.
"""

from __future__ import annotations

from typing import Any

from lnjax.datasets import checksums as _checksums
from lnjax.datasets import core as _core
from lnjax.datasets import splits as _splits
from lnjax.datasets.cli import main as main
from lnjax.datasets.core import DataNotFoundError, Dataset, WrongDataSetError
from lnjax.datasets.loading import describe, load, load_splits
from lnjax.datasets.tfds_source import prepare

__all__ = [
    "NAMES",
    "prepare",
    "SPLITS",
    "VALIDATION_SIZE",
    "DataNotFoundError",
    "Dataset",
    "KNOWN_SHA256",
    "WrongDataSetError",
    "describe",
    "load",
    "load_splits",
]

# The constants, with their documentation here (the objects of lnjax.datasets, not copies).
NAMES = _core.NAMES
"""The data sets :func:`load` knows (TFDS names; all share the MNIST format)."""

SPLITS = _splits.SPLITS
"""The splits :func:`load` knows."""

VALIDATION_SIZE = _splits.VALIDATION_SIZE
"""The paper's validation split, the default ``validation_size`` of :func:`load` and
:func:`load_splits`: the last 5,000 examples of the training file."""

KNOWN_SHA256 = _checksums.KNOWN_SHA256
"""The sha256 of known IDX files: ``{digest: (data set, file name without .gz, form)}``.

``form`` is ``"gz"`` for the digest of a gzipped file as stored and ``"raw"``
for the digest of the decompressed bytes. A file is recognised when either
digest of it is here (a recompressed file has other ``.gz`` bytes but the same
raw ones). :func:`load` reads this table at each call: entries added to it
(your own copies' digests) are recognised.
"""


if __name__ == "__main__":
    raise SystemExit(main())


def __getattr__(name: str) -> Any:
    # ``batches`` moved to lnjax.steps (beside the steps that consume it); imported on
    # first use so that this module keeps loading without JAX.
    if name == "batches":
        import warnings

        warnings.warn("lnjax.data.batches is now lnjax.steps.batches; the old name goes in "
                      "the next release.", DeprecationWarning, stacklevel=2)
        from lnjax.steps import batches
        return batches
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
