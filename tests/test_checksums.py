"""Checksum lists (lnjax.checksums) on plain folders: what check finds, with and without
reading the files' contents."""

import hashlib
import json
import os
from pathlib import Path

import pytest

from lnjax import checksums

FILES = {"a.bin": b"\x00\x01" * 500, "sub/b.json": b'{"x": 1}', "sub/deeper/c": b""}


@pytest.fixture
def folder(tmp_path):
    """A folder of three files (one empty, two in subfolders) and its checksum list."""
    root = tmp_path / "saved"
    for rel, data in FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    checksums.write(root)
    return root


def shift_time(path, seconds):
    """Sets the file's modification time ``seconds`` away from what it is."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + int(seconds * 1e9)))


def rewrite_keeping_time(path, data):
    """Writes ``data`` and puts the old modification time back (as bytes changed in place)."""
    st = path.stat()
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_the_list_records_every_file_but_itself(folder):
    record = json.loads((folder / checksums.CHECKSUMS).read_text())
    assert record["algorithm"] == "sha256"
    assert record["files"] == {rel: [len(data), hashlib.sha256(data).hexdigest()]
                               for rel, data in FILES.items()}
    assert record["modified_ns"] == {rel: (folder / rel).stat().st_mtime_ns for rel in FILES}
    assert sorted(p.name for p in folder.iterdir()) == sorted([checksums.CHECKSUMS, "a.bin", "sub"])
    assert checksums.check(folder) is None
    assert checksums.check(folder, contents=False) is None


def test_a_changed_byte_is_found_by_its_digest(folder):
    data = bytearray(FILES["a.bin"])
    data[700] ^= 1
    rewrite_keeping_time(folder / "a.bin", bytes(data))
    assert checksums.check(folder) == "file a.bin has changed since it was saved (SHA-256 differs)"
    # Without the contents, bytes changed under the same size and time are not seen.
    assert checksums.check(folder, contents=False) is None


def test_a_rewritten_file_is_found_by_its_time_without_reading_it(folder):
    shift_time(folder / "sub" / "b.json", 2.0)
    assert checksums.check(folder, contents=False) == (
        "file sub/b.json was modified after it was saved (its time differs)")
    assert checksums.check(folder) is None  # the same bytes: intact by their digest


@pytest.mark.parametrize("contents", [True, False])
def test_a_missing_file_is_found(folder, contents):
    (folder / "sub" / "deeper" / "c").unlink()
    assert checksums.check(folder, contents=contents) == "file sub/deeper/c is missing"


@pytest.mark.parametrize("contents", [True, False])
def test_an_extra_file_is_found(folder, contents):
    (folder / "sub" / "new").write_bytes(b"")
    assert checksums.check(folder, contents=contents) == (
        f"file sub/new is not in its {checksums.CHECKSUMS} (it was added after the save)")


@pytest.mark.parametrize("contents", [True, False])
def test_a_truncated_file_is_found_by_its_size(folder, contents):
    rewrite_keeping_time(folder / "a.bin", FILES["a.bin"][:10])
    assert checksums.check(folder, contents=contents) == "file a.bin is 10 bytes, 1000 were saved"


def test_no_list_an_unreadable_list_and_no_folder(folder, tmp_path):
    listing = folder / checksums.CHECKSUMS
    listing.write_text('{"files": ')
    assert checksums.check(folder) == f"its {checksums.CHECKSUMS} is unreadable (JSONDecodeError)"
    listing.write_text('{"files": {"a.bin": 1000}}')
    assert checksums.check(folder) == f"its {checksums.CHECKSUMS} is unreadable (TypeError)"
    listing.write_text('{"algorithm": "md5", "files": {}}')
    assert checksums.check(folder) == f"its {checksums.CHECKSUMS} uses the hash 'md5', not 'sha256'"
    listing.unlink()
    assert checksums.check(folder).startswith(f"it has no {checksums.CHECKSUMS} (")
    assert checksums.check(tmp_path / "elsewhere") == "its folder is missing"


def test_a_list_without_times_is_checked_on_names_and_sizes(folder):
    """Lists written before the times were recorded: ``contents=False`` compares the rest."""
    listing = folder / checksums.CHECKSUMS
    record = json.loads(listing.read_text())
    del record["modified_ns"]
    listing.write_text(json.dumps(record))
    shift_time(folder / "a.bin", 2.0)
    assert checksums.check(folder, contents=False) is None
    (folder / "a.bin").write_bytes(b"")
    assert checksums.check(folder, contents=False) == "file a.bin is 0 bytes, 1000 were saved"


def test_writing_again_replaces_the_list(folder):
    (folder / "sub" / "new").write_bytes(b"later")
    checksums.write(folder)
    assert checksums.check(folder) is None
    assert not Path(str(folder / checksums.CHECKSUMS) + ".tmp").exists()
    assert "sub/new" in json.loads((folder / checksums.CHECKSUMS).read_text())["files"]
