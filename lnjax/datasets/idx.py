"""The IDX files of MNIST, Fashion-MNIST and KMNIST: finding and reading them.

An IDX file is a big-endian header (a magic number, then one 4-byte size per
dimension) followed by the unsigned bytes of the array. A data set is four
files, each gzipped (``.gz``) or plain (:data:`FILES`). :func:`read_idx`
parses one file, gzipped or not whatever its name says, checks its header
against its length, and keeps it in a process-wide cache (:func:`cache_info`,
:func:`cache_clear`) so that loading ``"train"`` and then ``"validation"``
reads the training file once.

Pure NumPy and the standard library.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = [
    "FILES",
    "IMAGES_MAGIC",
    "LABELS_MAGIC",
    "IdxFile",
    "cache_clear",
    "cache_info",
    "find_files",
    "read_idx",
]

IMAGES_MAGIC = 2051
"""The magic number of an IDX images file: ``0x00000803``, unsigned bytes in 3 dimensions."""

LABELS_MAGIC = 2049
"""The magic number of an IDX labels file: ``0x00000801``, unsigned bytes in 1 dimension."""

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
"""The (images, labels) IDX files of each part of a data set, without the optional ``.gz``."""

_CACHE_SIZE = 16  # parsed files kept: the four files of a few data sets


class IdxFile(NamedTuple):
    """One parsed IDX file and its checksums."""

    array: np.ndarray  # the uint8 contents, read-only (shared by every reader of the cache)
    sha256: str  # of the file's bytes as stored
    raw_sha256: str  # of the decompressed bytes (the same as sha256 for a plain file)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _parse(path: str, mtime_ns: int, size: int, magic: int) -> IdxFile:
    del mtime_ns, size  # in the key only: a file rewritten in place is read again
    with open(path, "rb") as f:
        raw = f.read()
    stored_sha256 = hashlib.sha256(raw).hexdigest()
    if raw[:2] == b"\x1f\x8b":  # gzip, whatever the name says
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"load: {path} is not a valid gzip file ({e}).") from e
    kind = "images" if magic == IMAGES_MAGIC else "labels"
    ndim = 3 if magic == IMAGES_MAGIC else 1
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
    return IdxFile(array, stored_sha256, hashlib.sha256(raw).hexdigest())


def read_idx(path: str | os.PathLike, *, magic: int) -> IdxFile:
    """The IDX file ``path`` (gzipped or plain), parsed and cached, with its checksums.

    A file is gzipped when its first bytes say so, whatever its name. The cache
    is keyed by the resolved path, the modification time and the size, so a file
    rewritten in place is read again; the array is read-only, since every caller
    shares it.

    Args:
      path: the file.
      magic: :data:`IMAGES_MAGIC` (an ``(N, rows, columns)`` array) or
        :data:`LABELS_MAGIC` (an ``(N,)`` array).

    Returns:
      An :class:`IdxFile`: the uint8 array, the sha256 of the file as stored and of
      its decompressed bytes.

    Raises:
      FileNotFoundError: no such file.
      ValueError: ``magic`` is neither magic number, or the file is not valid gzip,
        has another magic number, or is longer or shorter than its header says (the
        message names the file).

    Example:
      >>> import pathlib, tempfile
      >>> path = pathlib.Path(tempfile.mkdtemp()) / "t10k-labels-idx1-ubyte"
      >>> header = LABELS_MAGIC.to_bytes(4, "big") + (3).to_bytes(4, "big")
      >>> _ = path.write_bytes(header + bytes([7, 2, 1]))
      >>> read_idx(path, magic=LABELS_MAGIC).array
      array([7, 2, 1], dtype=uint8)
    """
    if magic not in (IMAGES_MAGIC, LABELS_MAGIC):
        raise ValueError(f"read_idx: magic must be IMAGES_MAGIC ({IMAGES_MAGIC}) or "
                         f"LABELS_MAGIC ({LABELS_MAGIC}), got {magic!r}.")
    resolved = Path(path).resolve()
    st = resolved.stat()
    return _parse(os.fspath(resolved), st.st_mtime_ns, st.st_size, magic)


def cache_info() -> functools._CacheInfo:
    """The statistics of :func:`read_idx`'s cache: ``(hits, misses, maxsize, currsize)``.

    Returns:
      :func:`functools.lru_cache`'s ``CacheInfo``; ``misses`` counts the files parsed.
    """
    return _parse.cache_info()


def cache_clear() -> None:
    """Empties :func:`read_idx`'s cache (its statistics too): the next reads parse the files."""
    _parse.cache_clear()


def find_files(folder: str | os.PathLike, part: str) -> tuple[Path, Path] | str:
    """The (images, labels) IDX files of ``part`` in ``folder``, or why they are not there.

    Each file is looked for plain, then gzipped (``.gz``).

    Args:
      folder: the folder.
      part: ``"train"`` or ``"test"`` (a key of :data:`FILES`).

    Returns:
      ``(images_path, labels_path)``, or a note: ``"no such folder"`` or
      ``"missing <file>[.gz], ..."``.

    Example:
      >>> find_files("/nonexistent", "test")
      'no such folder'
    """
    folder = Path(folder)
    if not folder.is_dir():
        return "no such folder"
    found, missing = [], []
    for stem in FILES[part]:
        for candidate in (folder / stem, folder / (stem + ".gz")):
            if candidate.is_file():
                found.append(candidate)
                break
        else:
            missing.append(stem + "[.gz]")
    if missing:
        return "missing " + ", ".join(missing)
    return found[0], found[1]
