"""The results of an experiment: ``results.json``'s format, written and read back.

``results.json`` holds ``{"experiment", "dataset", "config", "versions",
"command", "runs", "wall_seconds", ...}``, with every run's history under
``runs[method][batch size][seed]`` (the history of :func:`lnjax.training.fit`,
or ``{"skipped": why}`` for a run that was not made). The readers here also
take the older form, one history per (method, batch size), which files from
before ``--seeds`` and the notebooks' own results hold
(:func:`seed_histories`).
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["batch_sizes", "first_seed", "is_history", "mean_history", "mean_runs",
           "seed_histories", "seeds_of", "versions", "write_json"]


def versions() -> dict[str, str]:
    """Versions of Python and the libraries the run used, and the machine."""
    import flax
    import jax
    import optax

    import lnjax

    return {"python": platform.python_version(), "jax": jax.__version__,
            "flax": flax.__version__, "optax": optax.__version__, "numpy": np.__version__,
            "lnjax": lnjax.__version__, "backend": jax.default_backend(),
            "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip()}


def write_json(path: str, payload: Mapping[str, Any]) -> None:
    """Writes ``payload`` atomically (a crash never leaves half a file)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1)
    os.replace(tmp, path)


def batch_sizes(results: Mapping[str, Any]) -> list[int]:
    """The batch sizes in a ``results.json``'s runs, largest first (one figure column each).

    Example:
      >>> batch_sizes({"runs": {"ln": {"4": {}, "128": {}}, "bn": {"16": {}}}})
      [128, 16, 4]
    """
    return sorted({int(b) for by in results["runs"].values() for b in by}, reverse=True)


def is_history(entry: Mapping[str, Any]) -> bool:
    """Whether ``entry`` is one run's history (or a skipped run's note) rather than
    ``{seed: history}`` (whose keys are all integers and values all dicts)."""
    return not entry or not all(str(k).lstrip("-").isdigit() and isinstance(v, Mapping)
                                for k, v in entry.items())


def seed_histories(entry: Mapping[str, Any]) -> dict[str, dict]:
    """``{seed: history}`` of one (method, batch size) of ``results["runs"]``.

    ``results.json`` keeps ``runs[method][batch size][seed]``; a history in the
    place of that dict (a ``results.json`` of one seed from before ``--seeds``, or
    a notebook's ``runs[method][batch size] = history``) is read as one seed, ``"0"``.

    Example:
      >>> sorted(seed_histories({"1": {"epoch": [1]}, "0": {"epoch": [1]}}))
      ['0', '1']
      >>> seed_histories({"epoch": [1, 2]})
      {'0': {'epoch': [1, 2]}}
    """
    if is_history(entry):
        return {"0": dict(entry)}
    return {str(k): dict(v) for k, v in sorted(entry.items(), key=lambda kv: int(kv[0]))}


def first_seed(runs: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, dict]]:
    """``{method: {batch size: history}}`` of the first seed of every run."""
    return {m: {bs: next(iter(seed_histories(e).values())) for bs, e in by.items()}
            for m, by in runs.items()}


def mean_history(histories: Sequence[Mapping[str, Any]]) -> dict:
    """The mean over seeds of histories of one setting: each list of numbers averaged
    element-wise (over the length all share), other values taken from the first.

    Example:
      >>> mean_history([{"test_error": [0.2, 0.1], "devices": 8},
      ...               {"test_error": [0.4, 0.3], "devices": 8}])
      {'test_error': [0.30000000000000004, 0.2], 'devices': 8}
    """
    first = dict(histories[0])
    if len(histories) == 1:
        return first
    out = {}
    for key, v in first.items():
        values = [h.get(key) for h in histories]
        lists = [u for u in values if isinstance(u, list)]
        if isinstance(v, list) and len(lists) == len(values):
            n = min(len(u) for u in lists)
            try:
                out[key] = np.mean(np.asarray([u[:n] for u in lists], dtype=np.float64),
                                   axis=0).tolist()
            except (TypeError, ValueError):
                out[key] = v
        else:
            out[key] = v
    return out


def mean_runs(runs: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, dict]]:
    """``{method: {batch size: mean history}}``: :func:`mean_history` over each run's seeds."""
    return {m: {bs: mean_history(list(seed_histories(e).values())) for bs, e in by.items()}
            for m, by in runs.items()}


def seeds_of(runs: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The seeds found in ``runs``, in order.

    Example:
      >>> seeds_of({"ln": {"4": {"1": {}, "0": {}}}, "bn": {"4": {"epoch": [1]}}})
      ['0', '1']
    """
    found = {s for by in runs.values() for e in by.values() for s in seed_histories(e)}
    return sorted(found, key=int)
