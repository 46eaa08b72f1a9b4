"""The summary table of an experiment's runs (``summary.md`` and what the command prints)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lnjax.experiments.results import seed_histories, seeds_of

__all__ = ["columns", "seeds_note", "summary", "summary_table"]


def _cell(values: Sequence[Any], fmt: str) -> str:
    def one(v):
        if fmt == "pct":
            return f"{100 * v:.2f}"
        if fmt == "s":
            return f"{v:.0f}"
        return format(v, fmt)

    values = [v for v in values if v is not None and v != []]
    if not values:
        return "-"
    if len(values) == 1 or all(v == values[0] for v in values):
        return one(values[0])
    spread = float(np.std(values, ddof=1))
    return f"{one(float(np.mean(values)))} ± {one(spread)}"


def summary_table(runs: Mapping[str, Mapping[str, Mapping[str, Any]]], *,
                  columns: Sequence[tuple[str, str, str]]) -> str:
    """A markdown table with one row per (method, batch size): the last epoch's values.

    With several seeds a cell reads ``mean ± standard deviation`` over the
    seeds (sample standard deviation; a value all seeds share is printed once)
    and a ``seeds`` column says how many.

    Args:
      runs: ``{method: {batch_size: {seed: history}}}`` (or ``{method:
        {batch_size: history}}``, one seed; see
        :func:`~lnjax.experiments.results.seed_histories`).
      columns: ``(header, history key, format)`` triples, e.g.
        ``("test error %", "test_error", "pct")``; format ``pct`` prints a
        fraction as a percentage, ``s`` seconds, otherwise a format spec.

    Example:
      >>> runs = {"ln": {"4": {"0": {"test_error": [0.5, 0.2]},
      ...                      "1": {"test_error": [0.5, 0.3]}}}}
      >>> print(summary_table(runs, columns=[("test error %", "test_error", "pct")]))
      | method | batch size | seeds | test error % |
      |---|---:|---:|---:|
      | ln | 4 | 2 | 25.00 ± 7.07 |
    """
    seeded = {m: {bs: seed_histories(e) for bs, e in by.items()} for m, by in runs.items()}
    many = any(len(hs) > 1 for by in seeded.values() for hs in by.values())
    head = "| method | batch size | " + ("seeds | " if many else "") \
        + " | ".join(c[0] for c in columns) + " |"
    lines = [head, "|---|---:|" + "---:|" * (len(columns) + many)]
    for method, by_bs in seeded.items():
        for bs, hs in by_bs.items():
            cells = [str(len(hs))] if many else []
            for _, key, fmt in columns:
                values = []
                for h in hs.values():
                    v = h.get(key)
                    values.append(v[-1] if isinstance(v, list) and v else v)
                cells.append(_cell(values, fmt))
            lines.append(f"| {method} | {bs} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def columns(progress: tuple[str, str, str]) -> tuple[tuple[str, str, str], ...]:
    """The summary table's columns: train NLL, validation and test error, ``progress``
    (``("epochs", "epoch", "d")`` or ``("steps", "steps", "d")``), train seconds."""
    return (("train NLL", "train_loss", ".4f"),
            ("validation error %", "validation_error", "pct"),
            ("test error %", "test_error", "pct"), progress, ("train seconds", "seconds", "s"))


def seeds_note(runs: Mapping[str, Mapping[str, Any]]) -> str:
    """What a table's cells are when the runs have several seeds, else ``""``.

    Example:
      >>> seeds_note({"ln": {"4": {"5": {}, "6": {}}}})
      'Each cell: mean ± standard deviation over 2 seeds (5, 6).'
    """
    seeds = seeds_of(runs)
    if len(seeds) < 2:
        return ""
    return (f"Each cell: mean ± standard deviation over {len(seeds)} seeds "
            f"({', '.join(seeds)}).")


def summary(results: Mapping[str, Any], table_columns: Sequence[tuple[str, str, str]]) -> str:
    """``summary.md`` of an experiment that adds nothing to it: the table of its runs and,
    with several seeds, :func:`seeds_note`."""
    note = seeds_note(results["runs"])
    text = summary_table(results["runs"], columns=table_columns)
    return text + (f"\n\n{note}" if note else "") + "\n"
