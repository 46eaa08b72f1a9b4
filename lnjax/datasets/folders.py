"""The folders of IDX files: where :func:`lnjax.data.load` looks, and reading one.

With a ``data_dir`` given, :func:`candidate_folders` of it are the only IDX
folders looked in. Without, :func:`search_dirs`, in this order:

1. ``$LNJAX_DATA_DIR/<name>`` (also spelled with hyphens), then
   ``$LNJAX_DATA_DIR``, when that environment variable is set;
2. ``~/.cache/lnjax/<name>``;
3. the folder a system package installs the data set in: ``<dir>/fashion-mnist``
   (Debian/Ubuntu's ``dataset-fashion-mnist``) or ``<dir>/mnist``, where
   ``<dir>`` is ``$LNJAX_SYSTEM_DATA_DIR``, by default :data:`SYSTEM_DATA_DIR`
   (``/usr/share/datasets``).

The environment is read at each call, so a change of ``$LNJAX_DATA_DIR``,
``$LNJAX_SYSTEM_DATA_DIR`` or ``$HOME`` takes effect at the next load.
"""

from __future__ import annotations

import os
from pathlib import Path

from lnjax.datasets._checks import check_labels
from lnjax.datasets.checksums import identify
from lnjax.datasets.core import IMAGE_SHAPE, Dataset
from lnjax.datasets.idx import IMAGES_MAGIC, LABELS_MAGIC, find_files, read_idx
from lnjax.datasets.splits import VALIDATION_SIZE, split_slice

__all__ = [
    "SYSTEM_DATA_DIR",
    "SYSTEM_FOLDERS",
    "candidate_folders",
    "load_folder",
    "search_dirs",
    "system_data_dir",
]

SYSTEM_DATA_DIR = "/usr/share/datasets"
"""Where Debian/Ubuntu packages install data sets: the default of ``$LNJAX_SYSTEM_DATA_DIR``."""

SYSTEM_FOLDERS = {"mnist": "mnist", "fashion_mnist": "fashion-mnist"}
"""The data sets a system package installs, and their folder in :func:`system_data_dir`."""


def system_data_dir() -> Path:
    """The folder of system-installed data sets: ``$LNJAX_SYSTEM_DATA_DIR`` when set and not
    empty, else :data:`SYSTEM_DATA_DIR`.

    Returns:
      The folder (read from the environment at each call).
    """
    return Path(os.environ.get("LNJAX_SYSTEM_DATA_DIR") or SYSTEM_DATA_DIR).expanduser()


def candidate_folders(base: str | os.PathLike, name: str) -> list[Path]:
    """The IDX folders of ``name`` under ``base``, in the order they are looked in.

    Args:
      base: a folder, such as a ``data_dir``.
      name: the data set's name.

    Returns:
      ``base/<name>`` (also with hyphens, as Debian spells it), then ``base``.

    Example:
      >>> [str(p) for p in candidate_folders("/data", "fashion_mnist")]
      ['/data/fashion_mnist', '/data/fashion-mnist', '/data']
    """
    base = Path(base)
    subs = dict.fromkeys([name, name.replace("_", "-")])
    return [base / sub for sub in subs] + [base]


def search_dirs(name: str) -> list[Path | str]:
    """The IDX folders looked in, in order, when no ``data_dir`` is given.

    Args:
      name: the data set's name.

    Returns:
      The folders of the module's list, each a :class:`~pathlib.Path`; a string is a
      note on a place not searched (``"$LNJAX_DATA_DIR: not set"``), for the
      message of :class:`~lnjax.data.DataNotFoundError`.
    """
    dirs: list[Path | str] = []
    env = os.environ.get("LNJAX_DATA_DIR")
    if env:
        dirs += candidate_folders(Path(env).expanduser(), name)
    else:
        dirs.append("$LNJAX_DATA_DIR: not set")
    dirs.append(Path.home() / ".cache" / "lnjax" / name)
    if name in SYSTEM_FOLDERS:
        dirs.append(system_data_dir() / SYSTEM_FOLDERS[name])
    return dirs


def load_folder(folder: str | os.PathLike, name: str, split: str, *,
                validation_size: int = VALIDATION_SIZE) -> Dataset | str:
    """The split ``split`` of the IDX files in ``folder``, or why they are not there.

    Only the files of the split's part are needed (the training files for
    ``"train"``, ``"validation"`` and ``"train_full"``, the test files for
    ``"test"``). Their checksums say what they are (:func:`~lnjax.datasets.checksums.identify`).

    Args:
      folder: the folder of the IDX files.
      name: the name the data set is loaded under.
      split: one of :data:`~lnjax.datasets.splits.SPLITS`.
      validation_size: how many training examples the validation split holds out.

    Returns:
      A :class:`~lnjax.data.Dataset` with ``source="idx:<folder>"``, or a note such as
      ``"no such folder"`` or ``"missing t10k-images-idx3-ubyte[.gz]"``.

    Raises:
      ValueError: a malformed file, images that are not 28x28, not as many images as
        labels, labels outside ``[0, 10)`` (the message names the file), or a
        training file too short for ``validation_size``.
    """
    folder = Path(folder)
    found = find_files(folder, "test" if split == "test" else "train")
    if isinstance(found, str):
        return found
    images_path, labels_path = found
    images_file = read_idx(images_path, magic=IMAGES_MAGIC)
    labels_file = read_idx(labels_path, magic=LABELS_MAGIC)
    images, labels = images_file.array, labels_file.array
    if images.shape[1:] != IMAGE_SHAPE:
        raise ValueError(f"load: {images_path} holds images of shape {images.shape[1:]}, "
                         f"expected {IMAGE_SHAPE}.")
    if len(images) != len(labels):
        raise ValueError(f"load: {images_path} holds {len(images)} images but {labels_path} "
                         f"holds {len(labels)} labels; they must be equal.")
    check_labels(labels, where=os.fspath(labels_path))
    _, sl = split_slice(split, len(images), validation_size=validation_size)
    checked = {images_path: images_file, labels_path: labels_file}
    return Dataset.from_uint8(images[sl], labels[sl], name=name, split=split,
                              source=f"idx:{folder}", identity=identify(folder, checked),
                              sha256=tuple((p.name, f.sha256) for p, f in checked.items()))
