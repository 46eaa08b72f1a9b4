"""The device suite's targets, and which of them a run met.

The targets hold lnjax's implementations (:data:`LNJAX`), each pass on every
group (a normalization, a shape, a dtype) that was timed:

* a pass's fraction of a copy's bandwidth (:data:`COPY_TARGETS`: the least
  fraction for the forward and for the backward);
* forward+backward faster than flax by :data:`FLAX_SPEEDUP` (the least
  ``time(flax) / time(lnjax)``, on the wall clock; the ratio records carry it);
* on tokamax's shape and dtype (:data:`TOKAMAX`), a pass no slower than
  tokamax's Pallas-Triton layer norm on an H100 (its autotuning data), compared
  with the device time where there is one.

Pure functions of the groups' records (:func:`benchmarks.device.run_group`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from benchmarks import report
from benchmarks.byte_model import PASSES

LNJAX = ("lnjax xla", "lnjax pallas")
"""The libraries the targets hold: lnjax's implementations."""
COPY_TARGETS = {"forward": 0.85, "backward": 0.75}
"""Least fraction of a copy's bandwidth, by pass."""
FLAX_SPEEDUP = 1.5
"""Least ``time(flax) / time(lnjax)`` of the forward+backward."""
TOKAMAX = {"case": "layer_norm", "shape": (589824, 128), "dtype": "bf16",
           "ms": {"forward": 0.100, "forward_stats": 0.103, "backward": 0.179}}
"""tokamax's Pallas-Triton layer norm on an H100, bf16 768·768 x 128 (its autotuning data)."""


def group_label(record: Mapping[str, Any]) -> str:
    """``"case RxH dtype"`` of a group or target record.

    Example:
      >>> group_label({"case": "rms_norm", "shape": [16, 1000], "dtype": "bf16"})
      'rms_norm 16x1000 bf16'
    """
    return f"{record['case']} {record['shape'][0]}x{record['shape'][1]} {record['dtype']}"


def copy_target(library: str, pass_: str) -> float | None:
    """The least fraction of a copy's bandwidth ``library``'s ``pass_`` must reach (None:
    no such target).

    Example:
      >>> copy_target("lnjax xla", "forward"), copy_target("flax", "forward")
      (0.85, None)
    """
    return COPY_TARGETS.get(pass_) if library in LNJAX else None


def tokamax_ms(case: str, shape: Sequence[int], dtype: str, pass_: str) -> float | None:
    """tokamax's time of ``pass_`` where the group is tokamax's (None elsewhere)."""
    if (case, tuple(shape), dtype) != (TOKAMAX["case"], TOKAMAX["shape"], TOKAMAX["dtype"]):
        return None
    return TOKAMAX["ms"].get(pass_)


def targets(groups: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Every target the groups' measurements can say something about, met or not.

    Args:
      groups: group records: ``case``, ``shape``, ``dtype``, ``rows`` (each with
        ``library``, ``pass``, ``ms``, ``device_ms``, ``copy_fraction`` and ``basis``:
        ``"device"`` or ``"wall"``) and ``ratios`` (ratio records, whose ``target`` is
        the speed-up over flax where there is one).

    Returns:
      One record per target and library: ``target`` (its label), ``library``, the
      group's ``case``, ``shape`` and ``dtype``, ``value``, ``goal``, ``at_least``
      (whether the value must reach the goal, else stay under it), ``met`` and the clock
      (``basis``).
    """
    out = []
    for group in groups:
        where = {k: group[k] for k in ("case", "shape", "dtype")}
        for row in group["rows"]:
            goal = copy_target(row["library"], row["pass"])
            if goal is not None:
                out.append({"target": f"{PASSES[row['pass']]} ≥ {goal:g} × copy bandwidth",
                            "library": row["library"], **where, "value": row["copy_fraction"],
                            "goal": goal, "at_least": True,
                            "met": row["copy_fraction"] >= goal, "basis": row["basis"]})
            ms_goal = tokamax_ms(group["case"], group["shape"], group["dtype"], row["pass"])
            if ms_goal is not None and row["library"] in LNJAX:
                ms = row["device_ms"] if row["basis"] == "device" else row["ms"]
                out.append({"target": f"tokamax {PASSES[row['pass']]} ≤ {ms_goal:g} ms",
                            "library": row["library"], **where, "value": ms, "goal": ms_goal,
                            "at_least": False, "met": ms <= ms_goal, "basis": row["basis"]})
        for r in group["ratios"]:
            if r["target"] is not None:
                out.append({"target": f"forward+backward ≥ {r['target']:g}× flax "
                                      "(flax / lnjax time)",
                            "library": r["denominator"].split(": ")[0], **where,
                            "value": r["value"], "goal": r["target"],
                            "at_least": r["at_least"], "met": r["met"], "basis": "wall"})
    return out


def summary(records: Sequence[Mapping[str, Any]], library: str) -> str:
    """One cell: how ``library`` fared on one target over the groups (``records`` of
    :func:`targets`, those of other libraries ignored): its value and whether it is met
    where there is one group, else how many were met and the worst.

    Example:
      >>> row = {"library": "lnjax xla", "value": 0.8, "goal": 0.85, "met": False}
      >>> summary([row], "lnjax xla")
      '0.8: **not met**'
    """
    mine = [t for t in records if t["library"] == library]
    if not mine:
        return "not measured"
    if len(mine) == 1:
        return f"{mine[0]['value']:.3g}: " + ("met" if mine[0]["met"] else "**not met**")
    # The worst is the furthest short of its goal: below it, or above it for a time.
    worst = min(mine, key=lambda t: (t["value"] / t["goal"] if t["at_least"]
                                     else t["goal"] / t["value"]))
    met = sum(bool(t["met"]) for t in mine)
    return (f"{met} of {len(mine)} met" + ("" if met == len(mine) else "; **not met**")
            + f"; worst {worst['value']:.3g} ({group_label(worst)})")


def table(records: Sequence[Mapping[str, Any]]) -> str | None:
    """The targets' markdown table: one row per target, one column per lnjax implementation
    (:func:`summary`); None when there is no target record."""
    if not records:
        return None
    labels = list(dict.fromkeys(t["target"] for t in records))
    return report.table(["target", *LNJAX],
                        [[label, *(summary([t for t in records if t["target"] == label], lib)
                                   for lib in LNJAX)] for label in labels])
