"""The command line ``python -m lnjax.data [NAME ...]`` (also ``python -m lnjax.datasets``):
which data set :func:`lnjax.data.load` finds, from where, and what it is.

Exits with status 0 when one of the names loads and 1 when none does, so that a
script installs data only when none is found (the Makefile runs ``python -m
lnjax.data || make data``).
"""

from __future__ import annotations

import argparse

from lnjax.datasets.core import NAMES, DataNotFoundError, WrongDataSetError
from lnjax.datasets.loading import describe, load

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """``python -m lnjax.data [NAME ...] [--data-dir FOLDER]``: prints the first data set
    found, its source and identity.

    Args:
      argv: the arguments (default: ``sys.argv[1:]``): data set names (default:
        mnist, fashion_mnist), tried in order, and ``--data-dir``.

    Returns:
      0 when one of the names loads (its test split), 1 otherwise. Files verified as
      another data set than the name asked for are reported and the next name tried.
    """
    p = argparse.ArgumentParser(prog="python -m lnjax.data",
                                description="Find a data set that lnjax.data.load can read.")
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
