"""Argument and label checks shared by the modules of :mod:`lnjax.datasets` (pure NumPy)."""

from __future__ import annotations

from typing import Any

import numpy as np

from lnjax.datasets.core import NUM_CLASSES


def check_choice(value: Any, choices: tuple[str, ...], *, fn: str, name: str) -> str:
    """``value`` when it is one of ``choices``; a TypeError or ValueError naming ``fn`` else."""
    if not isinstance(value, str):
        raise TypeError(f"{fn}: {name} must be a string, one of {choices}; got {value!r}.")
    if value not in choices:
        raise ValueError(f"{fn}: unknown {name} {value!r}; the known ones are {choices}.")
    return value


def check_int(value: Any, *, fn: str, name: str, minimum: int) -> int:
    """``value`` as an int when it is one (not a bool) and at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{fn}: {name} must be an int, got {value!r}.")
    if value < minimum:
        raise ValueError(f"{fn}: {name} must be >= {minimum}, got {value}.")
    return int(value)


def check_labels(labels: np.ndarray, *, where: str) -> None:
    """Raises ValueError naming ``where`` when a label is outside ``[0, NUM_CLASSES)``."""
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise ValueError(f"load: {where} has labels in [{labels.min()}, {labels.max()}], "
                         f"expected [0, {NUM_CLASSES - 1}].")
