"""lnjax.datasets.checksums: what IDX files are, by their sha256 checksums; the identity load
and load_splits record, and the errors when the files are another data set."""

import gzip
import hashlib
import sys
from pathlib import Path

import pytest

from lnjax import data
from lnjax.datasets import checksums, idx
from tests.helpers import (
    add_known_sha256,
    isolate_data,
    known_sha256,
    write,
    write_mnist_folder,
)

N_TRAIN, N_TEST = 12, 5
TRAIN_FILES, TEST_FILES = idx.FILES["train"], idx.FILES["test"]
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    return isolate_data(monkeypatch, tmp_path)


def sha256_of(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def idx_paths(folder):
    """The four IDX files in ``folder``, train first, as ``load_splits`` records them."""
    return [next(Path(folder).glob(stem + "*")) for stem in TRAIN_FILES + TEST_FILES]


def read_test_files(folder):
    return {p: idx.read_idx(p, magic=m)
            for p, m in zip(idx.find_files(folder, "test"), (idx.IMAGES_MAGIC, idx.LABELS_MAGIC))}


def test_known_checksums_table_is_well_formed():
    assert data.KNOWN_SHA256 is checksums.KNOWN_SHA256
    assert len(data.KNOWN_SHA256) == 20
    for digest, (name, stem, form) in data.KNOWN_SHA256.items():
        assert len(digest) == 64 and int(digest, 16) >= 0
        assert name in data.NAMES and form in ("gz", "raw")
        assert stem in TRAIN_FILES + TEST_FILES
    for name in data.NAMES:  # the four published .gz files of each
        stems = sorted(s for n, s, f in data.KNOWN_SHA256.values() if n == name and f == "gz")
        assert set(stems) == set(TRAIN_FILES + TEST_FILES), name


def test_identify_and_known_as(tmp_path, monkeypatch):
    folder = write_mnist_folder(tmp_path / "d", N_TRAIN, N_TEST, gz=False)
    files = read_test_files(folder)
    assert checksums.identify(folder, files) == f"unknown IDX data in {folder}"
    add_known_sha256(monkeypatch, known_sha256(folder, "kmnist"))
    assert checksums.identify(folder, files) == "kmnist (verified by checksum)"
    images_path, labels_path = files
    assert checksums.known_as(labels_path, files[labels_path]) == "kmnist"
    # The same bytes under another file's name are not that file.
    assert checksums.known_as(folder / TRAIN_FILES[1], files[labels_path]) is None


def test_unknown_files_are_read_and_recorded_as_unknown(tmp_path, isolated):
    folder = write_mnist_folder(tmp_path / "d", N_TRAIN, N_TEST, gz=False)
    ds = data.load("kmnist", "test", data_dir=folder)
    assert ds.name == "kmnist" and ds.identity == f"unknown IDX data in {folder}"
    assert not ds.verified
    assert ds.sha256 == tuple((f, sha256_of(folder / f)) for f in TEST_FILES)


def test_files_with_known_checksums_are_verified(tmp_path, isolated, monkeypatch):
    gz = write_mnist_folder(tmp_path / "gz", N_TRAIN, N_TEST)
    plain = write_mnist_folder(tmp_path / "plain", N_TRAIN, N_TEST, gz=False)
    regz = tmp_path / "regz"  # a gzipped copy with other .gz bytes than gz's
    for f in TEST_FILES:
        write(regz / (f + ".gz"), gzip.compress((plain / f).read_bytes(), compresslevel=1,
                                                mtime=0), gz=False)
    assert sha256_of(regz / (TEST_FILES[0] + ".gz")) != sha256_of(gz / (TEST_FILES[0] + ".gz"))
    with monkeypatch.context() as m:
        add_known_sha256(m, known_sha256(gz, "fashion_mnist"))
        ds = data.load("fashion_mnist", "test", data_dir=gz)
        assert ds.identity == "fashion_mnist (verified by checksum)" and ds.verified
        # A plain copy of known .gz files is unknown unless its raw digests are known too,
        assert data.load("fashion_mnist", "test", data_dir=plain).identity.startswith("unknown")
        # ... and so is a gzipped copy with other .gz bytes.
        assert not data.load("fashion_mnist", "test", data_dir=regz).verified
    # The raw digests alone: the plain copy, and the recompressed one by its decompressed bytes.
    add_known_sha256(monkeypatch, known_sha256(plain, "fashion_mnist"))
    assert data.load("fashion_mnist", "test", data_dir=plain).verified
    assert data.load("fashion_mnist", "test", data_dir=regz).verified


def test_a_known_file_under_another_files_name_is_not_verified(tmp_path, isolated,
                                                               monkeypatch):
    folder = write_mnist_folder(tmp_path / "d", N_TRAIN, N_TEST, gz=False)
    known = known_sha256(folder, "mnist")
    # The test labels' digest registered as the training labels' file: not that file.
    swapped = {k: (n, TRAIN_FILES[1] if stem == TEST_FILES[1] else stem, form)
               for k, (n, stem, form) in known.items()}
    with monkeypatch.context() as m:
        add_known_sha256(m, swapped)
        assert data.load("mnist", "test", data_dir=folder).identity.startswith(
            "unknown IDX data")
    # Only one of the two files known: unknown too.
    add_known_sha256(monkeypatch, {k: v for k, v in known.items() if v[1] != TEST_FILES[1]})
    assert not data.load("mnist", "test", data_dir=folder).verified


def test_verified_files_of_another_data_set_are_an_error(tmp_path, isolated, monkeypatch,
                                                         capsys):
    folder = write_mnist_folder(tmp_path / "fashion", N_TRAIN, N_TEST)  # files in the folder
    add_known_sha256(monkeypatch, known_sha256(folder, "fashion_mnist"))
    with pytest.raises(data.WrongDataSetError,
                       match=f"in {folder} are fashion_mnist .* not 'mnist'; ask for "
                             "'fashion_mnist'") as e:
        data.load("mnist", "test", data_dir=folder)
    assert isinstance(e.value, ValueError)
    with pytest.raises(data.WrongDataSetError, match="not 'kmnist'"):
        data.load_splits("kmnist", data_dir=folder, validation_size=4)
    # The command line goes on to the next name.
    assert data.main(["mnist", "fashion_mnist", "--data-dir", str(folder)]) == 0
    printed = capsys.readouterr().out
    assert "are fashion_mnist" in printed
    assert f"fashion_mnist/test: {N_TEST} examples" in printed
    assert "identity: fashion_mnist (verified by checksum)" in printed


def test_auto_names_the_run_after_the_files(tmp_path, isolated, monkeypatch):
    """'auto' tries mnist first, which finds the files in the folder itself; their checksums
    say fashion_mnist, so that is the run's name."""
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # IDX files only
    folder = write_mnist_folder(tmp_path / "fashion", N_TRAIN, N_TEST)
    add_known_sha256(monkeypatch, known_sha256(folder, "fashion_mnist"))
    parts, info = data.load_splits("auto", data_dir=folder, validation_size=4)
    assert info == {"name": "fashion_mnist", "source": f"idx:{folder}",
                    "identity": "fashion_mnist (verified by checksum)", "verified": True,
                    "sha256": {f.name: sha256_of(f) for f in idx_paths(folder)},
                    "sizes": {"train": N_TRAIN - 4, "validation": 4, "test": N_TEST}}
    assert all(ds.name == "fashion_mnist" and ds.verified for ds in parts.values())
    parts, info = data.load_splits("fashion_mnist", data_dir=folder, validation_size=4)
    assert info["name"] == "fashion_mnist" and info["verified"]


def test_splits_that_mix_data_sets_stop_the_run(tmp_path, isolated, monkeypatch):
    folder = write_mnist_folder(tmp_path / "d", N_TRAIN, N_TEST)
    known = known_sha256(folder, "mnist")
    with monkeypatch.context() as m:
        add_known_sha256(m, {k: ("kmnist" if stem.startswith("t10k") else n, stem, form)
                             for k, (n, stem, form) in known.items()})
        with pytest.raises(ValueError, match=f"in {folder} mix data sets .* the training files "
                                             "are mnist's, the test files are kmnist's"):
            data.load_splits("auto", data_dir=folder, validation_size=4)
    # Known training files with unknown test files: read, and recorded as unknown.
    add_known_sha256(monkeypatch, {k: v for k, v in known.items()
                                   if not v[1].startswith("t10k")})
    parts, info = data.load_splits("mnist", data_dir=folder, validation_size=4)
    assert parts["train"].verified and not parts["test"].verified
    assert info["identity"] == f"unknown IDX data in {folder}" and not info["verified"]


# --------------------------------------------------------------------------
# The real Fashion-MNIST, where the Debian package installed it.
# --------------------------------------------------------------------------


def test_real_fashion_mnist_files_are_verified_and_auto_names_them(isolated):
    """Debian's Fashion-MNIST with --dataset auto: 'mnist' finds the files first (they are in
    the folder itself); their checksums make the run fashion_mnist."""
    if not DEBIAN_FASHION.is_dir():
        pytest.skip(f"{DEBIAN_FASHION} is absent (apt-get install dataset-fashion-mnist)")
    for path in sorted(DEBIAN_FASHION.iterdir()):
        stem = path.name.removesuffix(".gz")
        assert data.KNOWN_SHA256[sha256_of(path)] == ("fashion_mnist", stem, "gz")
        raw = hashlib.sha256(gzip.decompress(path.read_bytes())).hexdigest()
        assert data.KNOWN_SHA256[raw] == ("fashion_mnist", stem, "raw")
    parts, info = data.load_splits("auto", data_dir=DEBIAN_FASHION, train_examples=10)
    assert info["name"] == "fashion_mnist" and info["source"] == f"idx:{DEBIAN_FASHION}"
    assert info["identity"] == "fashion_mnist (verified by checksum)" and info["verified"]
    assert info["sha256"] == {p.name: sha256_of(p) for p in idx_paths(DEBIAN_FASHION)}
    assert info["sizes"] == {"train": 10, "validation": 5_000, "test": 10_000}
    assert all(ds.name == "fashion_mnist" for ds in parts.values())
    with pytest.raises(data.WrongDataSetError, match="are fashion_mnist"):
        data.load("mnist", "test", data_dir=DEBIAN_FASHION)
