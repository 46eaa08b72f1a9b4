"""Data sets for the paper's experiments: MNIST, Fashion-MNIST and KMNIST.

Pure NumPy: nothing here imports jax, and ``tensorflow_datasets`` is imported
only when a TFDS source is tried, so this module works without it.

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
     and ``/usr/share/datasets/mnist``.

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
``train`` and ``test``.

:func:`lnjax.steps.batches` shuffles a whole epoch with a seed and stacks it
into ``(num_batches, batch_size, ...)`` arrays, ready for one ``lax.scan``.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "NAMES",
    "prepare",
    "SPLITS",
    "DataNotFoundError",
    "Dataset",
    "KNOWN_SHA256",
    "WrongDataSetError",
    "describe",
    "load",
    "load_splits",
]

NAMES = ("mnist", "fashion_mnist", "kmnist")
"""The data sets :func:`load` knows (TFDS names; all share the MNIST format)."""

SPLITS = ("train", "validation", "test", "train_full")
"""The splits :func:`load` knows."""

_SOURCES = ("auto", "tfds", "idx")
_AUTO_NAMES = ("mnist", "fashion_mnist")  # what load_splits(dataset="auto") tries, in order
_VALIDATION_SIZE = 5_000  # the last examples of the training file
_IMAGE_SHAPE = (28, 28)
_NUM_CLASSES = 10
_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension

# The IDX files of each part of the data, without the optional ".gz".
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# Folders installed by Debian/Ubuntu packages (``dataset-fashion-mnist``).
_DEBIAN_DIRS = {
    "mnist": "/usr/share/datasets/mnist",
    "fashion_mnist": "/usr/share/datasets/fashion-mnist",
}

KNOWN_SHA256: dict[str, tuple[str, str, str]] = {
    # MNIST: the .gz files as published (storage.googleapis.com/cvdf-datasets/mnist, byte
    # copies of yann.lecun.com's); tensorflow-datasets 4.9.10, url_checksums/mnist.txt.
    "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609":
        ("mnist", "train-images-idx3-ubyte", "gz"),
    "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c":
        ("mnist", "train-labels-idx1-ubyte", "gz"),
    "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6":
        ("mnist", "t10k-images-idx3-ubyte", "gz"),
    "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6":
        ("mnist", "t10k-labels-idx1-ubyte", "gz"),
    # Fashion-MNIST: the .gz files as published (fashion-mnist.s3-website.eu-central-1.
    # amazonaws.com, the same bytes as github.com/zalandoresearch/fashion-mnist data/fashion);
    # tensorflow-datasets 4.9.10, url_checksums/fashion_mnist.txt.
    "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84":
        ("fashion_mnist", "train-images-idx3-ubyte", "gz"),
    "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845":
        ("fashion_mnist", "train-labels-idx1-ubyte", "gz"),
    "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073":
        ("fashion_mnist", "t10k-images-idx3-ubyte", "gz"),
    "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5":
        ("fashion_mnist", "t10k-labels-idx1-ubyte", "gz"),
    # Fashion-MNIST: the .gz files of Debian's dataset-fashion-mnist 0.0~git20200523.55506a9-1
    # (/usr/share/datasets/fashion-mnist; recompressed, so other bytes than the published ones).
    "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7":
        ("fashion_mnist", "train-images-idx3-ubyte", "gz"),
    "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056":
        ("fashion_mnist", "train-labels-idx1-ubyte", "gz"),
    "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa":
        ("fashion_mnist", "t10k-images-idx3-ubyte", "gz"),
    "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05":
        ("fashion_mnist", "t10k-labels-idx1-ubyte", "gz"),
    # Fashion-MNIST: the decompressed (raw) IDX files, whatever the compression; computed from
    # Debian's files (the labels' also from the published .gz files, which give the same).
    "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888":
        ("fashion_mnist", "train-images-idx3-ubyte", "raw"),
    "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9":
        ("fashion_mnist", "train-labels-idx1-ubyte", "raw"),
    "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b":
        ("fashion_mnist", "t10k-images-idx3-ubyte", "raw"),
    "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34":
        ("fashion_mnist", "t10k-labels-idx1-ubyte", "raw"),
    # KMNIST: the .gz files as published (codh.rois.ac.jp/kmnist/dataset/kmnist);
    # tensorflow-datasets 4.9.10, url_checksums/kmnist.txt.
    "51467d22d8cc72929e2a028a0428f2086b092bb31cfb79c69cc0a90ce135fde4":
        ("kmnist", "train-images-idx3-ubyte", "gz"),
    "e38f9ebcd0f3ebcdec7fc8eabdcdaef93bb0df8ea12bee65224341c8183d8e17":
        ("kmnist", "train-labels-idx1-ubyte", "gz"),
    "edd7a857845ad6bb1d0ba43fe7e794d164fe2dce499a1694695a792adfac43c5":
        ("kmnist", "t10k-images-idx3-ubyte", "gz"),
    "20bb9a0ef54c7db3efc55a92eef5582c109615df22683c380526788f98e42a1c":
        ("kmnist", "t10k-labels-idx1-ubyte", "gz"),
}
"""The sha256 of known IDX files: ``{digest: (data set, file name without .gz, form)}``.

``form`` is ``"gz"`` for the digest of a gzipped file as stored and ``"raw"``
for the digest of the decompressed bytes. A file is recognised when either
digest of it is here (a recompressed file has other ``.gz`` bytes but the same
raw ones).
"""


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
        return self.identity == _verified(self.name)


class DataNotFoundError(FileNotFoundError):
    """No source had the data; the message says how to get it."""


class WrongDataSetError(ValueError):
    """The files are verified, by their checksums, as another data set than the one asked for."""


def _verified(name: str) -> str:
    return f"{name} (verified by checksum)"


# --------------------------------------------------------------------------
# Argument checks.
# --------------------------------------------------------------------------


def _check_choice(value: Any, choices: tuple[str, ...], *, fn: str, name: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{fn}: {name} must be a string, one of {choices}; got {value!r}.")
    if value not in choices:
        raise ValueError(f"{fn}: unknown {name} {value!r}; the known ones are {choices}.")
    return value


def _check_int(value: Any, *, fn: str, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{fn}: {name} must be an int, got {value!r}.")
    if value < minimum:
        raise ValueError(f"{fn}: {name} must be >= {minimum}, got {value}.")
    return int(value)


# --------------------------------------------------------------------------
# Splits.
# --------------------------------------------------------------------------


def _split_slice(split: str, n_train: int, *,
                 validation_size: int | None = None) -> tuple[str, slice]:
    """The file part (``"train"`` or ``"test"``) and the slice of it that ``split`` takes.

    ``validation_size`` (default 5,000) examples at the end of the training
    file are held out: with the 60,000 training examples of MNIST,
    ``"train"`` is ``[0, 55000)`` and ``"validation"`` is ``[55000, 60000)``.

    Args:
      split: one of :data:`SPLITS`.
      n_train: the number of examples in the training file.
      validation_size: how many training examples are held out.

    Returns:
      ``(part, slice)``.
    """
    v = _VALIDATION_SIZE if validation_size is None else validation_size
    if split == "test":
        return "test", slice(None)
    if split == "train_full":
        return "train", slice(None)
    if n_train <= v:
        raise ValueError(
            f"load: split={split!r} holds out the last {v} training examples for validation, "
            f"but the training file has only {n_train}; use split='train_full'.")
    if split == "train":
        return "train", slice(0, n_train - v)
    if split == "validation":
        return "train", slice(n_train - v, n_train)
    raise ValueError(f"load: unknown split {split!r}; the known ones are {SPLITS}.")


def _tfds_split(split: str) -> str:
    """The TFDS split string for ``split`` (``train[:-5000]`` = ``train[:55000]`` for MNIST)."""
    v = _VALIDATION_SIZE
    return {"train": f"train[:-{v}]", "validation": f"train[-{v}:]",
            "test": "test", "train_full": "train"}[split]


# --------------------------------------------------------------------------
# IDX files.
# --------------------------------------------------------------------------


class _IdxFile(NamedTuple):
    array: np.ndarray  # the uint8 contents, read-only
    sha256: str  # of the file's bytes as stored
    raw_sha256: str  # of the decompressed bytes (the same as sha256 for a plain file)


@functools.lru_cache(maxsize=16)
def _read_idx_cached(path: str, mtime_ns: int, size: int, magic: int) -> _IdxFile:
    del mtime_ns, size  # in the key only: a file rewritten in place is read again
    with open(path, "rb") as f:
        raw = f.read()
    stored_sha256 = hashlib.sha256(raw).hexdigest()
    if raw[:2] == b"\x1f\x8b":  # gzip, whatever the name says
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"load: {path} is not a valid gzip file ({e}).") from e
    kind = "images" if magic == _IMAGES_MAGIC else "labels"
    ndim = 3 if magic == _IMAGES_MAGIC else 1
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"load: {path} is not an IDX {kind} file: it has only {len(raw)} bytes, "
                         f"fewer than the {header}-byte header.")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise ValueError(f"load: {path} is not an IDX {kind} file: its magic number is {found}, "
                         f"expected {magic}.")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise ValueError(f"load: {path} is truncated or padded: its header says {kind} of shape "
                         f"{shape} ({expected} bytes with the header), but it holds "
                         f"{len(raw)} bytes.")
    array = np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)
    array.flags.writeable = False  # shared by every caller of the cache
    return _IdxFile(array, stored_sha256, hashlib.sha256(raw).hexdigest())


def _read_idx_file(path: Path, *, magic: int) -> _IdxFile:
    """The IDX file ``path`` (gzipped or plain), parsed and cached, with its checksums.

    Raises ``ValueError`` naming the file when its magic number is not
    ``magic`` or its length does not match the sizes in its header.
    """
    st = path.stat()
    return _read_idx_cached(os.fspath(path.resolve()), st.st_mtime_ns, st.st_size, magic)


def _read_idx(path: Path, *, magic: int) -> np.ndarray:
    """The uint8 array in the IDX file ``path`` (gzipped or plain), read-only and cached."""
    return _read_idx_file(path, magic=magic).array


def _known_as(path: Path, file: _IdxFile) -> str | None:
    """The data set whose file ``path`` is, by its checksums, or None.

    The file must be the one of that name: a known test file found under a
    training file's name is not recognised.
    """
    stem = path.name.removesuffix(".gz")
    for digest in (file.sha256, file.raw_sha256):
        known = KNOWN_SHA256.get(digest)
        if known is not None and known[1] == stem:
            return known[0]
    return None


def _identity(folder: Path, files: dict[Path, _IdxFile]) -> str:
    """``"<name> (verified by checksum)"`` when every file is one of ``name``'s, else
    ``"unknown IDX data in <folder>"``."""
    names = {_known_as(path, f) for path, f in files.items()}
    name = names.pop() if len(names) == 1 else None
    if name is not None:
        return _verified(name)
    return f"unknown IDX data in {folder}"


def _verified_name(identity: str) -> str | None:
    """The name in a ``"<name> (verified by checksum)"`` identity, or None."""
    return next((n for n in NAMES if identity == _verified(n)), None)


def _find_idx_pair(folder: Path, part: str) -> tuple[Path, Path] | str:
    """The (images, labels) files of ``part`` in ``folder``, or why they are not there."""
    if not folder.is_dir():
        return "no such folder"
    found, missing = [], []
    for stem in _IDX_FILES[part]:
        for candidate in (folder / stem, folder / (stem + ".gz")):
            if candidate.is_file():
                found.append(candidate)
                break
        else:
            missing.append(stem + "[.gz]")
    if missing:
        return "missing " + ", ".join(missing)
    return found[0], found[1]


def _load_idx(folder: Path, name: str, split: str, files: tuple[Path, Path]) -> Dataset:
    images_path, labels_path = files
    images_file = _read_idx_file(images_path, magic=_IMAGES_MAGIC)
    labels_file = _read_idx_file(labels_path, magic=_LABELS_MAGIC)
    images, labels = images_file.array, labels_file.array
    if images.shape[1:] != _IMAGE_SHAPE:
        raise ValueError(f"load: {images_path} holds images of shape {images.shape[1:]}, "
                         f"expected {_IMAGE_SHAPE}.")
    if len(images) != len(labels):
        raise ValueError(f"load: {images_path} holds {len(images)} images but {labels_path} "
                         f"holds {len(labels)} labels; they must be equal.")
    _check_labels(labels, where=os.fspath(labels_path))
    _, sl = _split_slice(split, len(images))
    checked = {images_path: images_file, labels_path: labels_file}
    return _make_dataset(images[sl], labels[sl], name, split, f"idx:{folder}",
                         identity=_identity(folder, checked),
                         sha256=tuple((p.name, f.sha256) for p, f in checked.items()))


def _candidate_folders(base: Path, name: str) -> list[Path]:
    """``base/<name>`` (also with hyphens, as Debian spells it), then ``base``."""
    subs = dict.fromkeys([name, name.replace("_", "-")])
    return [base / sub for sub in subs] + [base]


def _idx_search_dirs(name: str) -> list[Path | str]:
    """The IDX folders of step 3, in order; a string is a note on a place not searched.

    Read at call time, so ``$LNJAX_DATA_DIR`` and ``$HOME`` can change.
    """
    dirs: list[Path | str] = []
    env = os.environ.get("LNJAX_DATA_DIR")
    if env:
        dirs += _candidate_folders(Path(env).expanduser(), name)
    else:
        dirs.append("$LNJAX_DATA_DIR: not set")
    dirs.append(Path.home() / ".cache" / "lnjax" / name)
    if name in _DEBIAN_DIRS:
        dirs.append(Path(_DEBIAN_DIRS[name]))
    return dirs


# --------------------------------------------------------------------------
# TFDS.
# --------------------------------------------------------------------------


def _load_tfds(name: str, split: str, data_dir: str | os.PathLike | None,
               tried: list[str]) -> Dataset | None:
    """The split from ``tfds.data_source`` (never downloading), or None with a note in ``tried``."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        tried.append(f"tfds:{name}: tensorflow_datasets is not installed ({e})")
        return None
    if data_dir is not None:
        where = os.fspath(data_dir)
    else:  # TFDS's default, fixed when it was imported: $TFDS_DATA_DIR or ~/tensorflow_datasets
        try:
            from tensorflow_datasets.core.constants import DATA_DIR

            where = DATA_DIR
        except ImportError:
            where = "the default TFDS data_dir"
    import logging

    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)  # "not prepared" is an expected outcome, not a warning
    try:
        source = tfds.data_source(
            name, split=_tfds_split(split),
            data_dir=None if data_dir is None else os.fspath(data_dir), download=False)
    except Exception as e:  # TFDS raises many types for "not prepared"; all mean: not here.
        reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
        tried.append(f"tfds:{name} in {where}: not prepared ({type(e).__name__}: {reason})")
        return None
    finally:
        absl_logger.setLevel(level)
    n = len(source)
    images = np.empty((n, *_IMAGE_SHAPE), np.uint8)
    labels = np.empty((n,), np.int64)
    for i in range(n):  # one by one: random access, no TensorFlow
        example = source[i]
        image = np.asarray(example["image"])
        if image.shape not in (_IMAGE_SHAPE, (*_IMAGE_SHAPE, 1)):
            raise ValueError(f"load: tfds:{name} example {i} has an image of shape "
                             f"{image.shape}, expected {_IMAGE_SHAPE} or {(*_IMAGE_SHAPE, 1)}.")
        images[i] = image.reshape(_IMAGE_SHAPE)
        labels[i] = int(example["label"])
    info = getattr(source, "dataset_info", None)
    path = getattr(info, "data_dir", None) or where
    _check_labels(labels, where=f"tfds:{name}")
    return _make_dataset(images, labels, name, split, f"tfds:{name} ({path})",
                         identity=f"{name} (TFDS data set, not verified by checksum)")


# --------------------------------------------------------------------------
# Putting it together.
# --------------------------------------------------------------------------


def _check_labels(labels: np.ndarray, *, where: str) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= _NUM_CLASSES):
        raise ValueError(f"load: {where} has labels in [{labels.min()}, {labels.max()}], "
                         f"expected [0, {_NUM_CLASSES - 1}].")


def _make_dataset(images: np.ndarray, labels: np.ndarray, name: str, split: str,
                  source: str, *, identity: str,
                  sha256: tuple[tuple[str, str], ...] = ()) -> Dataset:
    """Fresh float32 images in [0, 1] and int32 labels (never views of a cached array)."""
    scaled = images.astype(np.float32)
    scaled /= np.float32(255.0)
    return Dataset(images=scaled,
                   labels=labels.astype(np.int32, copy=True),
                   name=name, split=split, source=source, identity=identity, sha256=sha256)


def _not_found_message(name: str, split: str, source: str, tried: list[str],
                       data_dir: str | os.PathLike | None) -> str:
    title = f"load: no data found for {name!r} (split {split!r}, source={source!r})"
    if data_dir is None:
        head = [title + "."]
    else:
        head = [title + f" in data_dir={os.fspath(data_dir)}.",
                "A data_dir given is the only place looked: not TFDS's default folder, "
                "$LNJAX_DATA_DIR, ~/.cache/lnjax nor /usr/share/datasets."]
    lines = [
        *head,
        "Tried, in order:",
        *(f"  - {t}" for t in tried),
        "To get the data, do one of:",
        "  1. With internet: pip install tensorflow-datasets tensorflow, then in Python:",
        "       import tensorflow_datasets as tfds",
        f"       tfds.builder({name!r}).download_and_prepare(file_format='array_record')",
        "     (pass data_dir=... to tfds.builder and to load() to keep it elsewhere than",
        "     ~/tensorflow_datasets).",
        "  2. Put the four MNIST-format IDX files in a folder, gzipped or plain:",
        *(f"       {stem}.gz" for part in ("train", "test") for stem in _IDX_FILES[part]),
        "     and pass data_dir=FOLDER (--data-dir FOLDER on the command line), or set",
        f"     LNJAX_DATA_DIR=FOLDER, or copy them to ~/.cache/lnjax/{name}.",
        "  3. Debian/Ubuntu, fashion_mnist only: sudo apt-get install dataset-fashion-mnist",
        "     (installs the IDX files in /usr/share/datasets/fashion-mnist, found when no",
        "     data_dir is given).",
    ]
    return "\n".join(lines)


def _load(name: str, split: str, data_dir: str | os.PathLike | None, source: str) -> Dataset:
    """:func:`load` without the argument checks and without comparing the name asked for with
    the files' identity."""
    part = "test" if split == "test" else "train"
    tried: list[str] = []

    def from_folders(folders: Sequence[Path | str]) -> Dataset | None:
        for folder in folders:
            if isinstance(folder, str):
                tried.append(folder)
                continue
            found = _find_idx_pair(folder, part)
            if isinstance(found, str):
                tried.append(f"idx:{folder}: {found}")
                continue
            return _load_idx(folder, name, split, found)
        return None

    if data_dir is not None:  # the only place looked
        if source in ("auto", "idx"):
            ds = from_folders(_candidate_folders(Path(data_dir).expanduser(), name))
            if ds is not None:
                return ds
        if source in ("auto", "tfds"):
            ds = _load_tfds(name, split, data_dir, tried)
            if ds is not None:
                return ds
    else:
        if source in ("auto", "tfds"):
            ds = _load_tfds(name, split, None, tried)
            if ds is not None:
                return ds
        if source in ("auto", "idx"):
            ds = from_folders(_idx_search_dirs(name))
            if ds is not None:
                return ds
    raise DataNotFoundError(_not_found_message(name, split, source, tried, data_dir))


def _wrong_data_set(fn: str, asked: str, found: str, source: str) -> WrongDataSetError:
    where = source.removeprefix("idx:")
    return WrongDataSetError(
        f"{fn}: the IDX files in {where} are {found} (their sha256 checksums are the published "
        f"ones), not {asked!r}; ask for {found!r}, or point data_dir at the {asked} files.")


def load(name: str, split: str, *, data_dir: str | os.PathLike | None = None,
         source: str = "auto") -> Dataset:
    """One split of MNIST, Fashion-MNIST or KMNIST as NumPy arrays.

    With ``data_dir`` given, looks there only (its IDX files, then a TFDS data
    set prepared in it); without, in TFDS's data folder, then the IDX folders
    on disk (see the module docstring). Never downloads anything. Parsed IDX
    files are cached in-process, so loading ``"train"`` and then
    ``"validation"`` reads the training file once; every call returns fresh
    arrays.

    The IDX files' sha256 checksums say what they are
    (:attr:`Dataset.identity`): ``"fashion_mnist (verified by checksum)"``,
    or ``"unknown IDX data in <folder>"`` for files that are not the published
    ones (read all the same, under ``name``).

    Args:
      name: ``"mnist"``, ``"fashion_mnist"`` or ``"kmnist"``.
      split: ``"train"`` (the first 55,000 training examples), ``"validation"``
        (the last 5,000), ``"test"`` (10,000) or ``"train_full"`` (60,000).
      data_dir: a folder with the IDX files (directly or in a subfolder named
        after the data set), or a TFDS data directory: the only place looked.
      source: ``"auto"`` (every source, in order), ``"idx"`` or ``"tfds"``.

    Returns:
      A :class:`Dataset`: float32 images in ``[0, 1]`` shaped ``(N, 28, 28)``,
      int32 labels shaped ``(N,)``, a ``source`` saying where they came from and
      an ``identity`` saying what they are.

    Raises:
      DataNotFoundError: no source has the data (a ``FileNotFoundError``); the
        message says how to get it and lists the places tried.
      WrongDataSetError: the files are verified by their checksums as another
        of :data:`NAMES` than ``name`` (a ``ValueError``).
      ValueError: an unknown name, split or source, or a malformed IDX file
        (the message names the file).

    Example (needs the data; ``tests/test_data.py`` runs it on real files)::

      ds = load("fashion_mnist", "test")
      ds.images.shape, ds.labels.shape  # ((10000, 28, 28), (10000,))
      ds.identity  # 'fashion_mnist (verified by checksum)'
    """
    _check_choice(name, NAMES, fn="load", name="name")
    _check_choice(split, SPLITS, fn="load", name="split")
    _check_choice(source, _SOURCES, fn="load", name="source")
    ds = _load(name, split, data_dir, source)
    found = _verified_name(ds.identity)
    if found is not None and found != name:
        raise _wrong_data_set("load", name, found, ds.source)
    return ds


def _check_one_source(name: str, splits: dict[str, Dataset]) -> None:
    """Raises ``ValueError`` naming the places when the splits come from more than one."""
    by_source: dict[str, list[str]] = {}
    for split, ds in splits.items():
        by_source.setdefault(ds.source, []).append(split)
    if len(by_source) > 1:
        places = "; ".join(f"{' and '.join(s)} from {src}" for src, s in by_source.items())
        raise ValueError(
            f"load_splits: the splits of {name!r} come from different places ({places}); a run "
            "takes all of them from one. Put the four IDX files in one folder and pass it as "
            "data_dir (--data-dir), or complete or remove the partial copy.")


def _run_identity(splits: dict[str, Dataset]) -> str:
    """The identity of the splits together: verified only when every split's files are."""
    identities = [ds.identity for ds in splits.values()]
    known: dict[str, str] = {}  # verified name -> "training" or "test" (the files)
    for split, ds in splits.items():
        found = _verified_name(ds.identity)
        if found is not None:
            known.setdefault(found, "test" if split == "test" else "training")
    if len(known) > 1:
        where = splits["train"].source.removeprefix("idx:")
        raise ValueError(
            f"load_splits: the IDX files in {where} mix data sets (by their sha256 checksums): "
            + ", ".join(f"the {part} files are {n}'s" for n, part in known.items()) + ".")
    unverified = [i for i in identities if _verified_name(i) is None]
    return unverified[0] if unverified else identities[0]


def load_splits(dataset: str = "auto", *, data_dir: str | os.PathLike | None = None,
                train_examples: int | None = None) -> tuple[dict[str, Dataset], dict[str, Any]]:
    """The train, validation and test splits of one data set, and a record of what and where
    they are.

    All three splits come from one place (one IDX folder or one TFDS data
    set), or a ``ValueError`` names the places. ``dataset="auto"`` takes the
    first of ``mnist`` and ``fashion_mnist`` that :func:`load` finds, and names
    the run after the files' checksums when they are a known data set (the
    Fashion-MNIST files in a ``data_dir`` are ``fashion_mnist``, whatever name
    found them); that is what the experiments and notebooks do when no data set
    is named.

    Args:
      dataset: ``"auto"`` or one of :data:`NAMES`.
      data_dir: passed to :func:`load`: the only place looked.
      train_examples: keep only the first ``train_examples`` of the ``"train"``
        split (``None``: all of it); validation and test are never cut.

    Returns:
      ``(splits, info)``: ``splits`` maps ``"train"``, ``"validation"`` and
      ``"test"`` to a :class:`Dataset`; ``info`` is ``{"name": ...,
      "source": ..., "identity": ..., "verified": ..., "sha256": {file:
      digest}, "sizes": {split: number of examples}}``, ready for a results
      file: ``identity`` is ``"<name> (verified by checksum)"`` when every
      file is the published one, else ``"unknown IDX data in <folder>"`` (or,
      for TFDS, ``"<name> (TFDS data set, not verified by checksum)"``).

    Raises:
      DataNotFoundError: no candidate was found; with ``"auto"`` the message
        holds every candidate's own message.
      WrongDataSetError: ``dataset`` names one data set and the files are
        verified as another.
      ValueError: the splits come from different places or mix data sets; an
        unknown ``dataset`` or a ``train_examples`` below 1.

    Example (``tests/test_data.py`` runs it on IDX files)::

      splits, info = load_splits(data_dir="/usr/share/datasets/fashion-mnist")
      info  # {'name': 'fashion_mnist', 'source': 'idx:/usr/share/datasets/fashion-mnist',
            #  'identity': 'fashion_mnist (verified by checksum)', 'verified': True,
            #  'sha256': {'train-images-idx3-ubyte.gz': 'b0564c3e...', ...},
            #  'sizes': {'train': 55000, 'validation': 5000, 'test': 10000}}
    """
    _check_choice(dataset, ("auto", *NAMES), fn="load_splits", name="dataset")
    if train_examples is not None:
        train_examples = _check_int(train_examples, fn="load_splits", name="train_examples",
                                    minimum=1)
    names = _AUTO_NAMES if dataset == "auto" else (dataset,)
    errors: list[FileNotFoundError] = []
    for name in names:
        try:
            splits = {s: _load(name, s, data_dir, "auto")
                      for s in ("train", "validation", "test")}
            break
        except FileNotFoundError as e:
            errors.append(e)
    else:
        if len(errors) == 1:
            raise errors[0]
        raise DataNotFoundError("No data set found. " + "\n\n".join(str(e) for e in errors))
    _check_one_source(name, splits)
    identity = _run_identity(splits)
    found = next(filter(None, (_verified_name(ds.identity) for ds in splits.values())), None)
    if found is not None and found != name:
        if dataset != "auto":
            raise _wrong_data_set("load_splits", name, found, splits["train"].source)
        name = found  # the files say what they are, not the name that found them
        splits = {s: ds._replace(name=name) for s, ds in splits.items()}
    if train_examples is not None:
        tr = splits["train"]
        splits["train"] = tr._replace(images=tr.images[:train_examples],
                                      labels=tr.labels[:train_examples])
    info = {"name": name, "source": splits["train"].source, "identity": identity,
            "verified": identity == _verified(name),
            "sha256": dict(pair for ds in splits.values() for pair in ds.sha256),
            "sizes": {k: len(v.labels) for k, v in splits.items()}}
    return splits, info


def describe(ds: Dataset) -> str:
    """A one-line summary of a :class:`Dataset`: name, split, size and source.

    Args:
      ds: a :class:`Dataset` from :func:`load`.

    Returns:
      A string such as ``"fashion_mnist/test: 10000 examples from idx:/data"``.

    Example:
      >>> import numpy as np
      >>> ds = Dataset(np.zeros((3, 28, 28), np.float32), np.zeros(3, np.int32),
      ...              "mnist", "test", "idx:/data/mnist")
      >>> describe(ds)
      'mnist/test: 3 examples from idx:/data/mnist'
    """
    return f"{ds.name}/{ds.split}: {len(ds.labels)} examples from {ds.source}"


def prepare(name: str, *, data_dir: str | os.PathLike | None = None) -> None:
    """Downloads and prepares ``name`` with TFDS so that :func:`load` can read it.

    The one function of this module that uses the network: it runs
    ``tfds.builder(name, data_dir=...).download_and_prepare(file_format="array_record")``,
    which needs ``tensorflow-datasets``, TensorFlow and internet access (as in
    Colab). :func:`load` itself never downloads.

    Args:
      name: one of :data:`NAMES`.
      data_dir: the TFDS data directory (default: TFDS's own).
    """
    _check_choice(name, NAMES, fn="prepare", name="name")
    from lnjax._optional import require  # here: importing this module needs no jax

    tfds = require("tensorflow_datasets", "lnjax.data.prepare (it also needs tensorflow "
                   "to download)")
    builder = tfds.builder(name, data_dir=None if data_dir is None else os.fspath(data_dir))
    builder.download_and_prepare(file_format="array_record")


def main(argv: list[str] | None = None) -> int:
    """``python -m lnjax.data [NAME ...]``: print the first data set found, its source and
    identity.

    Exits with status 0 when one of the names (default: mnist, fashion_mnist)
    loads, 1 otherwise, so scripts can install data only when none is found.
    """
    import argparse

    p = argparse.ArgumentParser(description="Find a data set that lnjax.data.load can read.")
    p.add_argument("names", nargs="*", default=["mnist", "fashion_mnist"],
                   help=f"data set names, from {', '.join(NAMES)}")
    p.add_argument("--data-dir", default=None)
    args = p.parse_args(argv)
    unknown = [n for n in args.names if n not in NAMES]
    if unknown:
        p.error(f"unknown data set(s) {unknown}; choose from {list(NAMES)}")
    for name in args.names:
        try:
            ds = load(name, "test", data_dir=args.data_dir)
        except DataNotFoundError:
            continue
        except WrongDataSetError as e:
            print(e)
            continue
        print(describe(ds))
        print(f"identity: {ds.identity}")
        return 0
    print(f"none of {', '.join(args.names)} found; see lnjax.data.load's error for how to "
          "get one")
    return 1


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
