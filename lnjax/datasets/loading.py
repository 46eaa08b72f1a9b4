"""Loading a split, or a run's three splits, from the first source that has them.

:func:`load` and :func:`load_splits` are documented, with the order of the
sources, in :mod:`lnjax.data`, which re-exports them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lnjax.datasets._checks import check_choice, check_int
from lnjax.datasets.core import (
    NAMES,
    DataNotFoundError,
    Dataset,
    WrongDataSetError,
    verified_identity,
    verified_name,
)
from lnjax.datasets.folders import candidate_folders, load_folder, search_dirs, system_data_dir
from lnjax.datasets.idx import FILES
from lnjax.datasets.splits import SPLITS, VALIDATION_SIZE
from lnjax.datasets.tfds_source import load_tfds

__all__ = ["describe", "load", "load_splits"]

_SOURCES = ("auto", "tfds", "idx")
_AUTO_NAMES = ("mnist", "fashion_mnist")  # what load_splits(dataset="auto") tries, in order


def _not_found_message(name: str, split: str, source: str, tried: list[str],
                       data_dir: str | os.PathLike | None) -> str:
    title = f"load: no data found for {name!r} (split {split!r}, source={source!r})"
    if data_dir is None:
        head = [title + "."]
    else:
        head = [title + f" in data_dir={os.fspath(data_dir)}.",
                "A data_dir given is the only place looked: not TFDS's default folder, "
                f"$LNJAX_DATA_DIR, ~/.cache/lnjax nor {system_data_dir()}."]
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
        *(f"       {stem}.gz" for part in ("train", "test") for stem in FILES[part]),
        "     and pass data_dir=FOLDER (--data-dir FOLDER on the command line), or set",
        f"     LNJAX_DATA_DIR=FOLDER, or copy them to ~/.cache/lnjax/{name}.",
        "  3. Debian/Ubuntu, fashion_mnist only: sudo apt-get install dataset-fashion-mnist",
        "     (installs the IDX files in /usr/share/datasets/fashion-mnist, found when no",
        "     data_dir is given).",
    ]
    return "\n".join(lines)


def _load(name: str, split: str, data_dir: str | os.PathLike | None, source: str,
          validation_size: int) -> Dataset:
    """:func:`load` without the argument checks and without comparing the name asked for with
    the files' identity."""
    tried: list[str] = []

    def from_folders(folders: Sequence[Path | str]) -> Dataset | None:
        for folder in folders:
            if isinstance(folder, str):
                tried.append(folder)
                continue
            ds = load_folder(folder, name, split, validation_size=validation_size)
            if isinstance(ds, str):
                tried.append(f"idx:{folder}: {ds}")
                continue
            return ds
        return None

    def from_tfds(where: str | os.PathLike | None) -> Dataset | None:
        ds = load_tfds(name, split, where, validation_size=validation_size)
        if isinstance(ds, str):
            tried.append(ds)
            return None
        return ds

    if data_dir is not None:  # the only place looked
        if source in ("auto", "idx"):
            ds = from_folders(candidate_folders(Path(data_dir).expanduser(), name))
            if ds is not None:
                return ds
        if source in ("auto", "tfds"):
            ds = from_tfds(data_dir)
            if ds is not None:
                return ds
    else:
        if source in ("auto", "tfds"):
            ds = from_tfds(None)
            if ds is not None:
                return ds
        if source in ("auto", "idx"):
            ds = from_folders(search_dirs(name))
            if ds is not None:
                return ds
    raise DataNotFoundError(_not_found_message(name, split, source, tried, data_dir))


def _wrong_data_set(fn: str, asked: str, found: str, source: str) -> WrongDataSetError:
    where = source.removeprefix("idx:")
    return WrongDataSetError(
        f"{fn}: the IDX files in {where} are {found} (their sha256 checksums are the published "
        f"ones), not {asked!r}; ask for {found!r}, or point data_dir at the {asked} files.")


def load(name: str, split: str, *, data_dir: str | os.PathLike | None = None,
         source: str = "auto", validation_size: int = VALIDATION_SIZE) -> Dataset:
    """One split of MNIST, Fashion-MNIST or KMNIST as NumPy arrays.

    With ``data_dir`` given, looks there only (its IDX files, then a TFDS data
    set prepared in it); without, in TFDS's data folder, then the IDX folders
    on disk (see :mod:`lnjax.data`). Never downloads anything. Parsed IDX
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
      validation_size: how many examples at the end of the training file the
        ``"validation"`` split holds and ``"train"`` leaves out (default
        :data:`VALIDATION_SIZE`, the paper's 5,000).

    Returns:
      A :class:`Dataset`: float32 images in ``[0, 1]`` shaped ``(N, 28, 28)``,
      int32 labels shaped ``(N,)``, a ``source`` saying where they came from and
      an ``identity`` saying what they are.

    Raises:
      DataNotFoundError: no source has the data (a ``FileNotFoundError``); the
        message says how to get it and lists the places tried.
      WrongDataSetError: the files are verified by their checksums as another
        of :data:`NAMES` than ``name`` (a ``ValueError``).
      ValueError: an unknown name, split or source, a ``validation_size`` below 1
        or not below the training file's length, or a malformed IDX file (the
        message names the file).

    Example (needs the data; ``tests/test_datasets_folders.py`` runs it on real files)::

      ds = load("fashion_mnist", "test")
      ds.images.shape, ds.labels.shape  # ((10000, 28, 28), (10000,))
      ds.identity  # 'fashion_mnist (verified by checksum)'
    """
    check_choice(name, NAMES, fn="load", name="name")
    check_choice(split, SPLITS, fn="load", name="split")
    check_choice(source, _SOURCES, fn="load", name="source")
    validation_size = check_int(validation_size, fn="load", name="validation_size", minimum=1)
    ds = _load(name, split, data_dir, source, validation_size)
    found = verified_name(ds.identity)
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
        found = verified_name(ds.identity)
        if found is not None:
            known.setdefault(found, "test" if split == "test" else "training")
    if len(known) > 1:
        where = splits["train"].source.removeprefix("idx:")
        raise ValueError(
            f"load_splits: the IDX files in {where} mix data sets (by their sha256 checksums): "
            + ", ".join(f"the {part} files are {n}'s" for n, part in known.items()) + ".")
    unverified = [i for i in identities if verified_name(i) is None]
    return unverified[0] if unverified else identities[0]


def _first_found(names: Sequence[str], data_dir: str | os.PathLike | None,
                 validation_size: int) -> tuple[str, dict[str, Dataset]]:
    """The first of ``names`` whose three splits load, and the splits."""
    errors: list[FileNotFoundError] = []
    for name in names:
        try:
            return name, {s: _load(name, s, data_dir, "auto", validation_size)
                          for s in ("train", "validation", "test")}
        except FileNotFoundError as e:
            errors.append(e)
    if len(errors) == 1:
        raise errors[0]
    raise DataNotFoundError("No data set found. " + "\n\n".join(str(e) for e in errors))


def _named_after_the_files(dataset: str, name: str, splits: dict[str, Dataset],
                           ) -> tuple[str, dict[str, Dataset]]:
    """The run's name and splits: ``name``, or with ``"auto"`` the data set the files are
    verified as (another ``dataset`` asked for is a :class:`WrongDataSetError`)."""
    found = next(filter(None, (verified_name(ds.identity) for ds in splits.values())), None)
    if found is None or found == name:
        return name, splits
    if dataset != "auto":
        raise _wrong_data_set("load_splits", name, found, splits["train"].source)
    # The files say what they are, not the name that found them.
    return found, {s: ds._replace(name=found) for s, ds in splits.items()}


def load_splits(dataset: str = "auto", *, data_dir: str | os.PathLike | None = None,
                train_examples: int | None = None, validation_size: int = VALIDATION_SIZE,
                ) -> tuple[dict[str, Dataset], dict[str, Any]]:
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
      validation_size: passed to :func:`load`: the examples at the end of the
        training file that make the validation split (default
        :data:`VALIDATION_SIZE`).

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
        unknown ``dataset``, a ``train_examples`` or ``validation_size`` below 1.

    Example (``tests/test_datasets_checksums.py`` runs it on Debian's files)::

      splits, info = load_splits(data_dir="/usr/share/datasets/fashion-mnist")
      info  # {'name': 'fashion_mnist', 'source': 'idx:/usr/share/datasets/fashion-mnist',
            #  'identity': 'fashion_mnist (verified by checksum)', 'verified': True,
            #  'sha256': {'train-images-idx3-ubyte.gz': 'b0564c3e...', ...},
            #  'sizes': {'train': 55000, 'validation': 5000, 'test': 10000}}
    """
    check_choice(dataset, ("auto", *NAMES), fn="load_splits", name="dataset")
    if train_examples is not None:
        train_examples = check_int(train_examples, fn="load_splits", name="train_examples",
                                   minimum=1)
    validation_size = check_int(validation_size, fn="load_splits", name="validation_size",
                                minimum=1)
    name, splits = _first_found(_AUTO_NAMES if dataset == "auto" else (dataset,), data_dir,
                                validation_size)
    _check_one_source(name, splits)
    identity = _run_identity(splits)
    name, splits = _named_after_the_files(dataset, name, splits)
    if train_examples is not None:
        tr = splits["train"]
        splits["train"] = tr._replace(images=tr.images[:train_examples],
                                      labels=tr.labels[:train_examples])
    info = {"name": name, "source": splits["train"].source, "identity": identity,
            "verified": identity == verified_identity(name),
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
