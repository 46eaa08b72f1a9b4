"""``python -m lnjax.datasets``: the same command as ``python -m lnjax.data``."""

from lnjax.datasets.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
