"""The one report format of the benchmarks: markdown tables, and NAME.json + NAME.md files.

Every script takes its flags from :func:`parser` (``--out DIR`` among them),
builds its table with :func:`table`, and hands its record and table to
:func:`publish`, which prints the table and, with ``--out``, writes both with
:func:`write`. Ratios
print as :func:`ratio_cells` says: the label ``numerator / denominator`` (a
ratio of times), the value, its target and whether it is met.

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
from collections.abc import Callable, Mapping, Sequence
from typing import Any

RATIOS_READ = ("Each ratio `a / b` is time(a) / time(b): above 1, b is the faster "
               "(`flax / lnjax` is lnjax's speed-up over flax); `x / copy` is x's time in "
               "units of one copy of the array.")


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
