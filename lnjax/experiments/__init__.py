"""Command-line reproductions of the paper's results (``python -m lnjax.experiments.X``)."""
