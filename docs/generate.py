"""The docs' build step: the notebooks of colabs/, executed.

``docs/conf.py`` runs :func:`generate` when Sphinx starts (``builder-inited``);
``python docs/generate.py`` runs it alone. It writes (git-ignored, brought up to date
by every build):

* ``docs/notebooks/0N_name.ipynb``: each notebook of colabs/, executed with small
  settings. The settings (``NOTEBOOK_SETTINGS`` in conf.py) go into one cell
  inserted right after the notebook's ``parameters`` cell, tagged
  ``remove-cell`` so that the page shows the notebook as written, with its
  outputs. The notebooks themselves know nothing of the docs.

The guides, ``docs/guides/*.md``, are written by hand and are not generated.

A notebook is executed again only when something it depends on changed: its
source, its settings, the data it reads, this file, or a file of ``lnjax/`` or
``benchmarks/`` (a hash of all of them is kept in ``docs/_generated/stamps``).
"""

from __future__ import annotations

import concurrent.futures
import gzip
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
GENERATED = DOCS / "_generated"  # the notebooks' stamps, synthetic data
NOTEBOOKS = DOCS / "notebooks"  # executed notebooks (git-ignored): docs/notebooks/0N_name.ipynb
COLABS = ROOT / "colabs"


def log(message: str) -> None:
    print(f"[lnjax docs] {message}", flush=True)


# --------------------------------------------------------------------------
# colabs/*.ipynb -> executed notebooks.
# --------------------------------------------------------------------------


def _parameters_cell(nb: Any) -> Any:
    cells = [c for c in nb.cells
             if c.cell_type == "code" and "parameters" in c.metadata.get("tags", ())]
    if len(cells) != 1:
        raise ValueError(f"expected one cell tagged 'parameters', found {len(cells)}")
    return cells[0]


def inject(nb: Any, settings: Mapping[str, Any]) -> None:
    """Inserts after the ``parameters`` cell a hidden cell that assigns ``settings``, and
    a note that tells the reader the outputs come from these settings."""
    import nbformat

    if not settings:
        return
    parameters = _parameters_cell(nb)
    source = "\n".join(f"{key} = {value!r}" for key, value in settings.items())
    cell = nbformat.v4.new_code_cell(
        source, metadata={"tags": ["injected-parameters", "remove-cell"]})
    shown = ", ".join(f"`{key} = {value!r}`" for key, value in settings.items()
                      if key != "DATA_DIR")
    data = (" It read small synthetic data: no MNIST or Fashion-MNIST was installed where "
            "the docs were built." if "DATA_DIR" in settings else "")
    note = nbformat.v4.new_markdown_cell(
        ":::{note}\nThe outputs on this page come from a run made when the documentation "
        f"was built, with smaller settings than the cell above, so that it runs quickly: "
        f"{shown}.{data}\n:::", metadata={"tags": ["docs-settings"]})
    at = nb.cells.index(parameters) + 1
    nb.cells[at:at] = [cell, note]


def _assigns(nb: Any, name: str) -> bool:
    try:
        return re.search(rf"^{name}\s*=", _parameters_cell(nb).source, re.M) is not None
    except ValueError:
        return False


def find_data() -> str | None:
    """The identity of the data set the notebooks' ``load_splits()`` finds, or None."""
    from lnjax import data

    for name in ("mnist", "fashion_mnist"):
        try:
            return data.load(name, "test").identity
        except (data.DataNotFoundError, data.WrongDataSetError):
            continue
    return None


def synthetic_data(folder: Path, n_train: int = 6_000, n_test: int = 1_000) -> Path:
    """Small MNIST-format IDX files that a network can learn: each class a fixed random
    pattern with 10% of its pixels flipped (used when no real data set is installed)."""
    if (folder / "t10k-labels-idx1-ubyte.gz").exists():
        return folder
    import numpy as np

    templates = np.random.default_rng(123).random((10, 28, 28)) < 0.3
    for part, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        rng = np.random.default_rng(seed)
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = ((templates[labels] ^ (rng.random((n, 28, 28)) < 0.1)) * 200 + 20)
        for kind, array, magic in (("images-idx3", images.astype(np.uint8), 2051),
                                   ("labels-idx1", labels, 2049)):
            header = magic.to_bytes(4, "big") + b"".join(
                d.to_bytes(4, "big") for d in array.shape)
            path = folder / f"{part}-{kind}-ubyte.gz"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(gzip.compress(header + array.tobytes()))
    return folder


def _code_hash() -> str:
    """A hash of everything a notebook's outputs depend on besides itself."""
    h = hashlib.sha256()
    paths = [Path(__file__)] + [p for folder in ("lnjax", "benchmarks")
                                for p in sorted((ROOT / folder).rglob("*.py"))]
    for path in paths:
        h.update(str(path.relative_to(ROOT)).encode())
        h.update(path.read_bytes())
    h.update(sys.executable.encode())
    return h.hexdigest()


def _kernel_env() -> dict[str, str]:
    """A user's kernel: one CPU device unless asked otherwise, matplotlib inline."""
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(flags)
    env.pop("MPLBACKEND", None)
    return env


def _final_streams(nb: Any) -> None:
    """Each cell's printed text as Jupyter shows it at the end: consecutive outputs of one
    stream joined, and the text a ``\\r`` went back over gone (a progress bar keeps its
    last state, not every update)."""
    for cell in nb.cells:
        merged: list[Any] = []
        for output in cell.get("outputs", []):
            last = merged[-1] if merged else None
            if (output.get("output_type") == "stream" and last is not None
                    and last.get("output_type") == "stream" and last.name == output.name):
                last.text += output.text
            else:
                merged.append(output)
        for output in merged:
            if output.get("output_type") == "stream" and "\r" in output.text:
                lines = output.text.split("\n")
                output.text = "\n".join(line.rstrip("\r").rsplit("\r", 1)[-1] for line in lines)
        if "outputs" in cell:
            cell.outputs = merged


def _execute(source: Path, target: Path, settings: Mapping[str, Any], kernel: str,
             timeout: int) -> float:
    import nbclient
    import nbformat

    nb = nbformat.read(source, as_version=4)
    nb.metadata.pop("jupytext", None)
    inject(nb, settings)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="lnjax-docs-") as cwd:
        client = nbclient.NotebookClient(
            nb, kernel_name=kernel, timeout=timeout, startup_timeout=120,
            resources={"metadata": {"path": cwd}})
        client.execute(env=_kernel_env())  # raises on a cell's error or a timeout
    _final_streams(nb)
    tmp = target.with_name(target.name + ".tmp")
    nbformat.write(nb, tmp)
    os.replace(tmp, target)
    return time.monotonic() - start


def execute_notebooks(settings: Mapping[str, Mapping[str, Any]], out: Path = GENERATED,
                      folder: Path = NOTEBOOKS, *, workers: int = 2,
                      timeout: int = 300) -> list[str]:
    """Executes each ``colabs/*.ipynb`` with its ``settings`` into ``folder``.

    Notebooks whose inputs did not change since their last execution are kept.
    Returns the names of the notebooks executed now.
    """
    from ipykernel import kernelspec

    names = sorted(p.name for p in COLABS.glob("*.ipynb"))
    missing = sorted(set(names) ^ set(settings))
    if missing:
        raise ValueError(f"docs/conf.py NOTEBOOK_SETTINGS and colabs/*.ipynb differ: {missing}")
    stamps = out / "stamps"
    for f in (folder, stamps):
        f.mkdir(parents=True, exist_ok=True)
    data_identity = find_data()
    data_dir = None
    if data_identity is None:
        data_dir = str(synthetic_data(out / "data"))
        data_identity = "synthetic"
        log("no MNIST or Fashion-MNIST found: the notebooks read small synthetic IDX files")
    code = _code_hash()

    jobs = []
    for name in names:
        source = COLABS / name
        nb_settings = dict(settings[name])
        if data_dir is not None and _assigns(_read(source), "DATA_DIR"):
            nb_settings.setdefault("DATA_DIR", data_dir)
        key = hashlib.sha256(json.dumps(
            [source.read_text(), repr(sorted(nb_settings.items())), data_identity, code]
        ).encode()).hexdigest()
        target, stamp = folder / name, stamps / (name + ".json")
        last = json.loads(stamp.read_text()) if stamp.exists() else {}
        if target.exists() and last.get("key") == key:
            continue
        jobs.append((name, source, target, stamp, key, nb_settings, last.get("seconds", 0)))
    for stale in [*folder.iterdir(), *stamps.iterdir()]:
        if stale.name.removesuffix(".json") not in names:
            stale.unlink()
    if not jobs:
        log("notebooks: up to date")
        return []

    with tempfile.TemporaryDirectory(prefix="lnjax-docs-kernel-") as jupyter:
        kernel = "lnjax-docs"
        kernelspec.write_kernel_spec(Path(jupyter) / "kernels" / kernel)  # this Python
        old = os.environ.get("JUPYTER_PATH")
        os.environ["JUPYTER_PATH"] = jupyter + (os.pathsep + old if old else "")
        try:
            log(f"executing {len(jobs)} notebook(s), {workers} at a time")
            # The longest first (by the last execution; the last notebook first when none
            # ran yet), so that the others share the second worker.
            jobs.sort(key=lambda job: (job[-1], job[0]), reverse=True)
            with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
                futures = {pool.submit(_execute, source, target, nb_settings, kernel,
                                       timeout): (name, stamp, key)
                           for name, source, target, stamp, key, nb_settings, _ in jobs}
                for future in concurrent.futures.as_completed(futures):
                    name, stamp, key = futures[future]
                    seconds = future.result()
                    stamp.write_text(json.dumps({"key": key, "seconds": round(seconds, 1)}))
                    log(f"{name}: executed in {seconds:.0f} s")
        finally:
            if old is None:
                os.environ.pop("JUPYTER_PATH", None)
            else:
                os.environ["JUPYTER_PATH"] = old
    return [job[0] for job in jobs]


def _read(path: Path) -> Any:
    import nbformat

    return nbformat.read(path, as_version=4)


def generate(settings: Mapping[str, Mapping[str, Any]]) -> None:
    """The executed notebooks."""
    start = time.monotonic()
    execute_notebooks(settings)
    log(f"generated in {time.monotonic() - start:.0f} s")


def clean() -> None:
    """Removes everything this module writes."""
    for folder in (GENERATED, NOTEBOOKS):
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.path.insert(0, str(DOCS))
    import conf

    generate(conf.NOTEBOOK_SETTINGS)
