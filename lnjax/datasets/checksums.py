"""The published checksums of MNIST, Fashion-MNIST and KMNIST, and what IDX files are by them.

What an IDX data set *is* is taken from its files, not from the name asked for
or the folder's name: the sha256 of each file (as stored, and of its
decompressed bytes) is compared with :data:`KNOWN_SHA256`. :func:`identify`
says ``"fashion_mnist (verified by checksum)"`` when every file is one of
Fashion-MNIST's, else ``"unknown IDX data in <folder>"``.

To recognise another copy (your own recompressed files, say), add its digests
to :data:`KNOWN_SHA256`, which :func:`lnjax.data.load` reads at each call.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from lnjax.datasets.core import verified_identity
from lnjax.datasets.idx import IdxFile

__all__ = ["KNOWN_SHA256", "identify", "known_as"]

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


def known_as(path: str | os.PathLike, file: IdxFile) -> str | None:
    """The data set whose file ``path`` is, by its checksums, or None.

    The file must be the one of that name: a known test file found under a
    training file's name is not recognised.

    Args:
      path: the file's path (its name, less ``.gz``, is compared with the table's).
      file: the file as :func:`lnjax.datasets.idx.read_idx` read it.

    Returns:
      A name of :data:`lnjax.data.NAMES`, or None.
    """
    stem = Path(path).name.removesuffix(".gz")
    for digest in (file.sha256, file.raw_sha256):
        known = KNOWN_SHA256.get(digest)
        if known is not None and known[1] == stem:
            return known[0]
    return None


def identify(folder: str | os.PathLike, files: Mapping[Path, IdxFile]) -> str:
    """What the IDX files read from ``folder`` are, by their checksums.

    Args:
      folder: the folder they came from (named in an unknown identity).
      files: each file's path and the file as read.

    Returns:
      ``"<name> (verified by checksum)"`` when every file is one of ``name``'s,
      else ``"unknown IDX data in <folder>"``.
    """
    names = {known_as(path, f) for path, f in files.items()}
    name = names.pop() if len(names) == 1 else None
    if name is not None:
        return verified_identity(name)
    return f"unknown IDX data in {os.fspath(folder)}"
