"""Optional dependencies: import one, or say in one line which extra brings it.

lnjax's core (normalization, modules, recurrent cells, training with
checkpoints and progress bars) needs only its required dependencies. Data
through TFDS, figures and TensorBoard files come with extras; each place that
needs one imports it through :func:`require`, so a missing extra is one
``ImportError`` line naming the ``pip install`` that fixes it.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

# module -> (distribution on PyPI, the lnjax extra that installs it)
EXTRAS: dict[str, tuple[str, str]] = {
    "matplotlib": ("matplotlib", "plots"),
    "tensorflow_datasets": ("tensorflow-datasets", "data"),
    "tensorboardX": ("tensorboardX", "tensorboard"),
}


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the extra.

    Raised by the lnjax function that needs it, with a message such as
    ``figures need matplotlib, which is not installed: pip install "lnjax[plots]"``.
    Public as ``lnjax.MissingExtraError``.
    """
    __module__ = "lnjax"


def require(module: str, feature: str) -> ModuleType:
    """Imports ``module`` (a key of :data:`EXTRAS` or a submodule of one) for ``feature``.

    Raises:
      MissingExtraError: ``module`` is not installed; the message reads
        ``<feature> needs <dist>: pip install "lnjax[<extra>]"``.
    """
    top = module.split(".")[0]
    dist, extra = EXTRAS[top]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is None or e.name.split(".")[0] != top:
            raise  # the package is there but something it imports is not: not ours to rename
        raise MissingExtraError(f'{feature} needs {dist}, which is not installed: '
                                f'pip install "lnjax[{extra}]"') from None


def available(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it)."""
    return importlib.util.find_spec(module.split(".")[0]) is not None
