"""Deprecated: what this module held now lives in modules named for their jobs.

- :mod:`lnjax.experiments.settings`: ``comma_list``, ``EVAL_EXAMPLES``,
  ``EVALS_PER_EPOCH`` (and the settings dataclass the flags come from);
- :mod:`lnjax.experiments.results`: ``results.json`` and its readers
  (``versions``, ``write_json``, ``batch_sizes``, ``is_history``,
  ``seed_histories``, ``first_seed``, ``mean_history``, ``mean_runs``,
  ``seeds_of``);
- :mod:`lnjax.experiments.runs`: the training run (``fit_run``, which now
  takes a :class:`~lnjax.experiments.runs.Run` and the settings,
  ``eval_subset``, ``run_name``, ``config_key``, ``SUBSET_SEED``);
- :mod:`lnjax.experiments.tables`: ``summary_table``, ``columns``;
- :mod:`lnjax.experiments.plots`: the figures (``pyplot``, ``save_figure``,
  ``figure``, ``set_scale``, ``curve``, ``first_curve``, ``band``, ...);
- :mod:`lnjax.experiments.driver`: ``Timer``.

Each old name keeps working for one release with a ``DeprecationWarning`` that
names its new place; ``common.fit_run`` keeps its keywords (``hidden`` is the
new ``model_config``).
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

_MOVED = {
    **dict.fromkeys(("comma_list", "EVAL_EXAMPLES", "EVALS_PER_EPOCH"), "settings"),
    **dict.fromkeys(("versions", "write_json", "batch_sizes", "is_history", "seed_histories",
                     "first_seed", "mean_history", "mean_runs", "seeds_of"), "results"),
    **dict.fromkeys(("eval_subset", "run_name", "config_key", "SUBSET_SEED"), "runs"),
    **dict.fromkeys(("summary_table", "columns"), "tables"),
    **dict.fromkeys(("pyplot", "save_figure", "figure", "DECADE", "set_scale", "curve",
                     "first_curve", "smoothed_step_loss", "error_curve", "running_mean", "band",
                     "seeds_caption", "eval_caption", "legend_below"), "plots"),
    "Timer": "driver",
}


def _fit_run(model: Any, tx: Any, splits: Any, *, method: str, batch_size: int, seed: int,
             hidden: Any, desc: str, mesh: Any = None, takes_mask: bool = False,
             **settings: Any) -> dict:
    """``runs.fit_run`` with the old keywords: ``lr``, ``epochs``, ``out``, ``resume``,
    ``progress``, ``eval_examples``, ``evals_per_epoch`` and ``tensorboard`` are settings."""
    from lnjax.experiments.runs import Run, fit_run
    from lnjax.experiments.settings import Settings

    run = Run(method, batch_size, seed, model_config=hidden, label=desc)
    return fit_run(model, tx, splits, run, Settings(**settings), mesh=mesh,
                   takes_mask=takes_mask)


def __getattr__(name: str) -> Any:
    if name == "fit_run":
        warnings.warn("lnjax.experiments.common.fit_run is now lnjax.experiments.runs.fit_run "
                      "(a Run and the settings in place of its keywords); the old name goes in "
                      "the next release.", DeprecationWarning, stacklevel=2)
        return _fit_run
    module = _MOVED.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(f"lnjax.experiments.common.{name} is now lnjax.experiments.{module}.{name}; "
                  "the old name goes in the next release.", DeprecationWarning, stacklevel=2)
    return getattr(importlib.import_module(f"lnjax.experiments.{module}"), name)
