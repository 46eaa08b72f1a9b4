"""The one report format of the benchmarks: markdown tables and charts, and NAME.json +
NAME.md files.

Every script takes its flags from :func:`parser` (``--out DIR`` among them),
builds its table with :func:`table`, and hands its record and table to
:func:`publish`, which prints the table and, with ``--out``, writes both with
:func:`write`. Ratios print as :func:`ratio_cells` says: the label
``numerator / denominator`` (a ratio of times), the value, its target and
whether it is met.

The timing suites (:mod:`benchmarks.run` on the CPU, :mod:`benchmarks.device`
on an accelerator) report in one layout: :func:`markdown` (who ran it, the
suite's own tables, the table of timed cases, their memory, the notes) and
one chart, :func:`plot` (a bar per measured value, coloured by its target).

Example:
  >>> print(table(["case", "ms"], [["a", "1.00"], ["b", "2.00"]], align="lr"))
  | case | ms |
  |---|---:|
  | a | 1.00 |
  | b | 2.00 |
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

RATIOS_READ = ("Each ratio `a / b` is time(a) / time(b): above 1, b is the faster "
               "(`flax / lnjax` is lnjax's speed-up over flax); `x / copy` is x's time in "
               "units of one copy of the array.")
RATIO_AXIS = ("time ratio a / b (above 1: b is faster; x / copy: x in copies); "
              "black ticks: targets")
PLOT_FEATURE = "the benchmarks' results.png"


def table(header: Sequence[Any], rows: Sequence[Sequence[Any]], *,
          align: str | None = None) -> str:
    """A markdown table.

    Args:
      header: the column headers.
      rows: the cells of each row (anything ``str`` can print), as many as headers.
      align: one letter per column, ``l`` (left, the default) or ``r`` (right).
    """
    align = align or "l" * len(header)
    if len(align) != len(header) or any(len(r) != len(header) for r in rows):
        raise ValueError(f"table: {len(header)} headers, align {align!r} and rows of "
                         f"{sorted({len(r) for r in rows})} cells must agree")
    rule = "|" + "".join("---:|" if a == "r" else "---|" for a in align)
    lines = ["| " + " | ".join(map(str, header)) + " |", rule]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines)


def ratio_cells(record: Mapping[str, Any]) -> tuple[str, str, str, str]:
    """``(label, value, target, met)`` of a ratio record from ``TimeRatio.measure``."""
    target = "" if record["target"] is None else (
        ("≥ " if record["at_least"] else "≤ ") + f"{record['target']:g}")
    met = "" if record["met"] is None else ("yes" if record["met"] else "**no**")
    return record["label"], f"{record['value']:.2f}", target, met


def write(out: str | os.PathLike, name: str, record: Any, markdown: str) -> list[pathlib.Path]:
    """Writes ``out/name.json`` (``record``) and ``out/name.md`` (``markdown``); returns them."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.json", out / f"{name}.md"]
    paths[0].write_text(json.dumps(record, indent=2))
    paths[1].write_text(markdown.rstrip("\n") + "\n")
    return paths


def parser(doc: str, name: str, *, out: str | os.PathLike | None = None,
           quick: str | None = None,
           cases: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """A script's parser: the first paragraph of its docstring and ``--out`` (default ``out``);
    with ``quick`` (its help) a ``--quick`` flag, with ``cases`` a ``--cases A,B`` option
    (a list of those names, None when not given)."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--out", type=pathlib.Path, default=out,
                   help=f"write {name}.json and {name}.md here")
    if quick is not None:
        p.add_argument("--quick", action="store_true", help=quick)
    if cases is not None:
        p.add_argument("--cases", type=lambda text: text.split(","), default=None,
                       help=f"comma-separated subset of {','.join(cases)}")
    return p


def publish(out: str | os.PathLike | None, name: str, record: Any, markdown: str, *,
            heading: str = "") -> None:
    """Prints ``heading`` and ``markdown``; with an ``out`` folder, :func:`write` s them there."""
    if heading:
        print(heading + "\n")
    print(markdown)
    if out is not None:
        write(out, name, record, markdown)


def quick_main(doc: str, name: str, measure: Callable[..., Any],
               markdown: Callable[[Any], str], argv: list[str] | None) -> Any:
    """The command line of a script whose one option is ``--quick`` (and ``--out``):
    ``measure(quick=...)``, then :func:`publish` its ``markdown``; returns the record."""
    p = parser(doc, name, quick="a small network, fewer steps")
    args = p.parse_args(argv)
    record = measure(quick=args.quick)
    publish(args.out, name, record, markdown(record))
    return record


def machine() -> dict[str, Any]:
    """CPU model, cores, load and library versions."""
    import flax
    import jax

    try:
        import torch
    except ImportError:  # pragma: no cover - depends on the environment
        torch = None
    cpu = platform.processor() or platform.machine()
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "jax": jax.__version__,
            "jaxlib": jax.lib.__version__ if hasattr(jax.lib, "__version__") else "",
            "flax": flax.__version__, "torch": torch.__version__ if torch else None,
            "backend": jax.default_backend()}
    info["load average"] = load_average()
    return info


def load_average() -> list[float] | None:
    """The 1, 5 and 15-minute load averages (None where the OS has none)."""
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None


# --------------------------------------------------------------------------
# The timing suites' report and chart.
# --------------------------------------------------------------------------


def header(results: Mapping[str, Any]) -> str:
    """Who ran the suite: the device (where ``results`` has one), the machine, the library
    versions, the load and the rounds.

    Example:
      >>> m = {"cpu": "x86", "cores": 2, "platform": "Linux", "jax": "1", "flax": "2",
      ...      "torch": None, "load average": [1.0, 1.0, 1.0]}
      >>> header({"machine": m, "config": {"rounds": 3}})  # doctest: +NORMALIZE_WHITESPACE
      'Machine: x86, 2 cores, Linux; jax 1, flax 2, torch not installed; load average at
       start [1.0, 1.0, 1.0]. 3 interleaved rounds, medians.'
    """
    m, d = results["machine"], results.get("device")
    text = (f"Machine: {m['cpu']}, {m['cores']} cores, {m['platform']}; jax {m['jax']}, "
            f"flax {m['flax']}, torch {m['torch'] or 'not installed'}; load average at start "
            f"{m.get('load average')}. {results['config']['rounds']} interleaved rounds, "
            "medians.")
    if d:
        text = (f"Device: **{d['device_kind']}** (platform {d['platform']}, "
                f"{d['device_count']} device(s)); {d['torch_note']}. " + text)
    return text


def cases_table(records: Iterable[Mapping[str, Any]]) -> str | None:
    """The timed cases (records of :func:`benchmarks.cases.run_case`): one row per ratio
    (the case's title and median ms on its first), a case without ratios on one row;
    None when no case was timed."""
    rows: list[tuple[str, ...]] = []
    for rec in records:
        if "median_ms" not in rec:
            continue
        times = ", ".join(f"{n} {t:.3g}" for n, t in rec["median_ms"].items())
        cells = [ratio_cells(r) for r in rec["ratios"]] or [("", "", "", "")]
        for i, c in enumerate(cells):
            rows.append(((rec["title"], times) if i == 0 else ("", "")) + c)
    if not rows:
        return None
    return table(["case", "median ms", "ratio", "value", "target", "met"], rows)


def memory_table(records: Iterable[Mapping[str, Any]]) -> str | None:
    """The compiled temporary memory of the cases that measured it (``values``: ``x MiB``,
    ``lnjax temp MiB``, ``flax temp MiB``); None when none did."""
    keys = ("x MiB", "lnjax temp MiB", "flax temp MiB")
    rows = [(rec["title"], *(f"{rec['values'][k]:.1f} MiB" for k in keys))
            for rec in records if all(k in rec.get("values", {}) for k in keys)]
    if not rows:
        return None
    return table(["compiled fwd+bwd temp memory", "x", "lnjax", "flax"], rows)


def markdown(results: Mapping[str, Any], *, cases: Sequence[Mapping[str, Any]] | None = None,
             intro: Sequence[str] = (), tables: Sequence[str | None] = (),
             notes: Sequence[str] = ()) -> str:
    """The report of a timing suite, in the layout every suite prints.

    Args:
      results: the suite's results: ``machine`` (:func:`machine`), ``config`` (with
        ``rounds``), optionally ``device``, ``cases`` and ``notes``.
      cases: the timed case records (default ``results["cases"]``).
      intro: paragraphs on how to read the suite's own ``tables``.
      tables: the suite's own markdown tables, in order (None: left out).
      notes: notes after those of ``results``.

    Returns:
      :func:`header`; ``intro`` and ``tables``; how a ratio reads, :func:`cases_table`
      and :func:`memory_table` of the cases; then the notes (``results["notes"]``,
      ``notes`` and each kind of case's note), one paragraph each, ending in a newline.
    """
    cases = results.get("cases", []) if cases is None else cases
    blocks = [header(results), *intro, *(t for t in tables if t is not None)]
    timed = cases_table(cases)
    if timed is not None:
        blocks += [RATIOS_READ, timed]
    memory = memory_table(cases)
    if memory is not None:
        blocks.append(memory)
    case_notes = dict.fromkeys(f"{rec['name'].split()[0]}: {rec['note']}"
                               for rec in cases if rec.get("note"))
    every_note = [*results.get("notes", ()), *notes, *case_notes]
    if every_note:
        blocks.append("Notes:\n\n" + "\n".join(f"- {n}" for n in every_note))
    return "\n\n".join(blocks) + "\n"


class Bar(NamedTuple):
    """One bar of :func:`plot`: a measured value and its target (None: none)."""

    label: str
    value: float
    target: float | None = None
    met: bool | None = None


def ratio_bars(records: Iterable[Mapping[str, Any]]) -> list[Bar]:
    """A :class:`Bar` per ratio of the case records, labelled ``"title: a / b"``."""
    return [Bar(f"{rec['title']}: {r['label']}", r["value"], r["target"], r["met"])
            for rec in records for r in rec.get("ratios", [])]


def pyplot() -> Any:
    """matplotlib's pyplot, for :func:`plot`.

    Raises:
      ImportError: matplotlib is not installed (one line naming the results.png and
        ``pip install "lnjax[plots]"``).
    """
    from lnjax.experiments import plots

    return plots.pyplot(feature=PLOT_FEATURE)


def plot(results: Mapping[str, Any], path: str | os.PathLike, *,
         panels: Mapping[str, Sequence[Bar]] | None = None, columns: int = 1,
         xlabel: str = RATIO_AXIS) -> None:
    """The chart of a timing suite: horizontal bars, green where the target is met, red
    where not, gray without one; each target a black tick, 1 a dotted line.

    Args:
      results: the suite's results (its ``machine``, and ``device`` where it has one,
        title the chart).
      path: the PNG to write.
      panels: ``{title: bars}``, one panel each, filled row by row (default: one
        panel of every ratio of ``results["cases"]``, :func:`ratio_bars`).
      columns: panels per row.
      xlabel: what the values are.
    """
    plt = pyplot()
    panels = {"": ratio_bars(results.get("cases", []))} if panels is None else panels
    panels = dict(panels) or {"": []}
    grid = [list(panels)[i:i + columns] for i in range(0, len(panels), columns)]
    heights = [0.6 + 0.25 * max(1, *(len(panels[t]) for t in row)) for row in grid]
    fig, axes = plt.subplots(len(grid), columns, squeeze=False, height_ratios=heights,
                             figsize=(10 if columns == 1 else 7 * columns, sum(heights) + 1))
    for row, titles in zip(axes, grid):
        for ax, title in zip(row, titles):
            _bars(ax, panels[title], title, xlabel)
        for ax in row[len(titles):]:
            ax.set_axis_off()
    m, d = results["machine"], results.get("device")
    fig.suptitle(f"lnjax on {d['device_kind']} ({d['platform']})" if d else
                 f"lnjax benchmarks ({m['cpu']}, {m['cores']} cores)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _bars(ax: Any, bars: Sequence[Bar], title: str, xlabel: str) -> None:
    if not bars:
        ax.text(0.5, 0.5, "nothing timed", ha="center", va="center", transform=ax.transAxes)
    ys = list(range(len(bars)))[::-1]
    colors = ["tab:gray" if b.met is None else ("tab:green" if b.met else "tab:red")
              for b in bars]
    ax.barh(ys, [b.value for b in bars], color=colors)
    for y, b in zip(ys, bars):
        if b.target is not None:
            ax.plot([b.target, b.target], [y - 0.4, y + 0.4], color="black", lw=2)
    ax.axvline(1.0, color="gray", lw=0.8, ls=":")
    ax.set_yticks(ys, [b.label for b in bars], fontsize=7)
    ax.set_xlabel(xlabel, fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
