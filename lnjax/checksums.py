"""Checksum lists: the size and SHA-256 of every file of a folder, written once, checked later.

A checksum list is the JSON file :data:`CHECKSUMS` inside the folder it covers::

    {"algorithm": "sha256",
     "files": {"<relative path>": [<size in bytes>, "<hex SHA-256>"], ...},
     "modified_ns": {"<relative path>": <modification time in ns>, ...}}

:func:`write` records every file of the folder (the list itself excepted) once
the folder is complete; :func:`check` says what differs from that record: a
missing file, a file that was not there, a file of another size, or (reading
the contents) a file whose SHA-256 differs.

``check(folder, contents=False)`` reads no file but the list: each file's size
and modification time stand in for its contents. That detects a file that was
rewritten after the list was written, and costs one ``stat`` per file instead
of reading the whole folder; it does not detect bytes that changed without a
new modification time (a failing disk), and it takes a folder copied without
its times (``cp -r`` without ``-p``) for a changed one. A list without
``modified_ns`` (as :mod:`lnjax.checkpoint` wrote before it recorded the
times) is checked on names and sizes only.

Nothing here knows of orbax or JAX: :class:`lnjax.checkpoint.Checkpointer`
writes a list into each step's folder after orbax has committed it, checks it
with the contents before restoring, and without them for retention.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

__all__ = ["CHECKSUMS", "check", "write"]

CHECKSUMS = "lnjax_checksums.json"
"""The name of the checksum list inside the folder it covers."""

_ALGORITHM = "sha256"


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files(folder: str) -> list[str]:
    """Every file under ``folder`` but the checksum list, as sorted relative paths."""
    out = []
    for root, _, names in os.walk(folder):
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), folder)
            if rel != CHECKSUMS:
                out.append(rel)
    return sorted(out)


def write(folder: str | os.PathLike) -> None:
    """Writes the checksum list of every file under ``folder`` into ``folder/CHECKSUMS``.

    Reads every file once. The list is written to a temporary file, flushed to
    disk and renamed into place, so a folder holds either no list or a complete
    one.

    Args:
      folder: a folder whose files will not change any more.

    Example:
      >>> import pathlib, tempfile
      >>> from lnjax import checksums
      >>> with tempfile.TemporaryDirectory() as d:
      ...     _ = (pathlib.Path(d) / "a.bin").write_bytes(b"abc")
      ...     checksums.write(d)
      ...     intact = checksums.check(d)
      ...     _ = (pathlib.Path(d) / "a.bin").write_bytes(b"abd")
      ...     changed = checksums.check(d)
      >>> intact is None, changed
      (True, 'file a.bin has changed since it was saved (SHA-256 differs)')
    """
    folder = os.fspath(folder)
    files: dict[str, list[Any]] = {}
    modified: dict[str, int] = {}
    for rel in _files(folder):
        path = os.path.join(folder, rel)
        files[rel] = [os.path.getsize(path), _sha256(path)]
        modified[rel] = os.stat(path).st_mtime_ns
    tmp = os.path.join(folder, CHECKSUMS + ".tmp")
    with open(tmp, "w") as f:
        json.dump({"algorithm": _ALGORITHM, "files": files, "modified_ns": modified}, f, indent=0)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(folder, CHECKSUMS))


def _read(folder: str) -> tuple[dict[str, Any] | None, str | None]:
    """``(record, None)``, or ``(None, what is wrong with the list)``."""
    try:
        with open(os.path.join(folder, CHECKSUMS)) as f:
            record = json.load(f)
        files = record["files"]
        if not isinstance(files, dict):
            raise TypeError("files")
    except FileNotFoundError:
        return None, (f"it has no {CHECKSUMS} (the list is written last: its save was "
                      "interrupted, or it was saved without checksums)")
    except (OSError, ValueError, KeyError, TypeError) as e:
        return None, f"its {CHECKSUMS} is unreadable ({type(e).__name__})"
    algorithm = record.get("algorithm", _ALGORITHM)
    if algorithm != _ALGORITHM:
        return None, f"its {CHECKSUMS} uses the hash {algorithm!r}, not {_ALGORITHM!r}"
    return record, None


def check(folder: str | os.PathLike, *, contents: bool = True) -> str | None:
    """What differs in ``folder`` from its checksum list, or ``None`` if nothing does.

    Args:
      folder: a folder holding a list made by :func:`write`.
      contents: hash every file and compare the digests (the default), or read
        no file but the list and compare the recorded modification times
        instead (see the module docstring for what that does not detect).

    Returns:
      ``None`` when every file has the recorded name, size and digest (or
      modification time), and no other file is there; otherwise one short
      phrase naming what is wrong, e.g. ``"file a.bin is missing"``. Names and
      sizes are compared before any file is read.
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        return "its folder is missing"
    record, problem = _read(folder)
    if record is None:
        return problem
    recorded = record["files"]
    modified = record.get("modified_ns", {})
    try:
        for rel, (size, _) in sorted(recorded.items()):
            path = os.path.join(folder, rel)
            if not os.path.isfile(path):
                return f"file {rel} is missing"
            actual = os.path.getsize(path)
            if actual != size:
                return f"file {rel} is {actual} bytes, {size} were saved"
        extra = sorted(set(_files(folder)) - set(recorded))
        if extra:
            return f"file {extra[0]} is not in its {CHECKSUMS} (it was added after the save)"
        for rel, (_, digest) in sorted(recorded.items()):
            path = os.path.join(folder, rel)
            if contents and _sha256(path) != digest:
                return f"file {rel} has changed since it was saved (SHA-256 differs)"
            if not contents and rel in modified and os.stat(path).st_mtime_ns != modified[rel]:
                return f"file {rel} was modified after it was saved (its time differs)"
    except (ValueError, TypeError) as e:  # an entry that is not [size, digest]
        return f"its {CHECKSUMS} is unreadable ({type(e).__name__})"
    return None
