"""The command line every training experiment shares, written once.

An experiment describes itself with an :class:`Experiment`: its settings class
(a :class:`~lnjax.experiments.settings.Settings` subclass: its flags and their
defaults), its ``run`` function, its figure and the hooks that fill what only
it knows (which runs apply, the text of ``summary.md``, what it adds to
``results.json``). :func:`main` does the rest, the same way for each: build the
settings from the flags once, check them, build the device mesh, load the data,
train every (batch size, method, seed) with resume from checkpoints, rewrite
``results.json`` after each run, draw the figure (PNG and PDF), write
``summary.md`` and print it.

``results.json`` keeps every seed's history, ``runs[method][batch size][seed]``
(see :mod:`lnjax.experiments.results`).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Annotated, Any

import jax

from lnjax import data
from lnjax._optional import MissingExtraError, require
from lnjax.experiments import plots, tables
from lnjax.experiments import results as results_format
from lnjax.experiments import settings as flags
from lnjax.experiments.settings import Settings, SettingsError

__all__ = ["Experiment", "Timer", "check_devices", "load_splits", "main", "mesh"]

DATASETS = flags.DATASETS  # kept here for callers of the driver's earlier name


def _all_apply(settings: Settings) -> tuple[Settings, list[str]]:
    return settings, []


def _nothing(results: Mapping[str, Any]) -> dict[str, Any]:
    return {}


@dataclasses.dataclass(frozen=True)
class Experiment:
    """What one command-line experiment is; :func:`main` runs it.

    Attributes:
      name: the name written to ``results.json`` (``"experiment"``).
      description: the ``--help`` description.
      title: the printed summary's heading, followed by the data set's name.
      settings: its :class:`~lnjax.experiments.settings.Settings` subclass: the
        flags, their defaults and checks (``methods``' choices are the methods
        that exist).
      run: ``run(method, batch_size, splits, settings, *, seed, mesh) ->
        history``, one training run.
      plot: ``plot(results, path)``, the figure of a ``results.json`` (written as
        ``path`` and a PDF of the same stem).
      figure: the figure's file name in ``settings.out``.
      columns: the summary table's ``(header, history key, format)`` columns
        (see :func:`~lnjax.experiments.tables.summary_table`).
      plan: ``plan(settings) -> (settings, skipped)``: the settings with what
        cannot run left out, and a note on each part left out (printed on one
        line, kept in ``results.json``'s ``"skipped"``); raises
        :class:`~lnjax.experiments.settings.SettingsError` when nothing would
        run or a value does not fit the machine. Default: everything applies.
      summary: ``summary(results) -> text`` of ``summary.md`` (also printed);
        ``None``: the table and the seeds' note
        (:func:`~lnjax.experiments.tables.summary`).
      conclude: ``conclude(results) -> entries`` added to ``results.json`` after
        the runs (e.g. a verdict computed from them). Default: none.
    """

    name: str
    description: str
    title: str
    settings: type[Settings]
    run: Callable[..., dict]
    plot: Callable[[dict, str], Any]
    figure: str
    columns: tuple[tuple[str, str, str], ...]
    plan: Callable[[Any], tuple[Any, list[str]]] = _all_apply
    summary: Callable[[dict], str] | None = None
    conclude: Callable[[dict], Mapping[str, Any]] = _nothing


class Timer:
    """Wall time since construction, in seconds."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.t0


def check_devices(settings: Settings, available: int | None = None) -> None:
    """Raises :class:`~lnjax.experiments.settings.SettingsError` when ``settings.devices``
    is more than the ``available`` devices (``None``: ``jax.device_count()``)."""
    n = jax.device_count() if available is None else available
    if settings.devices is not None and not 1 <= settings.devices <= n:
        raise SettingsError(f"--devices must be between 1 and {n} (the devices available), "
                            f"got {settings.devices}")


def mesh(devices: int | None) -> jax.sharding.Mesh:
    """The data-parallel mesh of ``--devices`` (``None``: all devices); printed."""
    from lnjax import parallel

    m = parallel.make_mesh(devices)
    n = m.devices.size
    print(f"Devices: {n} x {jax.devices()[0].device_kind}"
          + (" (data-parallel)" if n > 1 else ""))
    return m


def load_splits(settings: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """:func:`lnjax.data.load_splits` of ``settings``' ``dataset``, ``data_dir``,
    ``train_examples`` and ``validation_size`` (when it has one); prints each split, its
    source and what the files are (``info["identity"]``: verified by checksum, or unknown)."""
    size = getattr(settings, "validation_size", data.VALIDATION_SIZE)
    splits, info = data.load_splits(settings.dataset, data_dir=settings.data_dir,
                                    train_examples=settings.train_examples,
                                    validation_size=size)
    for ds in splits.values():
        print("Data:", data.describe(ds))
    print("Data set:", info["identity"])
    return splits, info


def _settings(e: Experiment, argv: list[str] | None) -> tuple[Settings, list[str]]:
    """The settings of the command line, checked and planned; a bad value exits with the
    parser's usage and one line."""
    p = flags.parser(e.settings, e.description)
    args = p.parse_args(argv)
    try:
        settings = flags.from_args(e.settings, args)
        check_devices(settings)
        settings, skipped = e.plan(settings)
    except SettingsError as err:
        p.error(str(err))
    try:  # the figure is drawn after training: a missing matplotlib stops the run before it
        plots.pyplot()
        if settings.tensorboard:
            require("tensorboardX", "--tensorboard")
    except MissingExtraError as err:
        p.exit(1, f"{p.prog}: {err}\n")
    return settings, skipped


def main(experiment: Experiment, argv: list[str] | None = None) -> dict:
    """Runs ``experiment`` from its command line ``argv``; returns what ``results.json`` holds."""
    e = experiment
    settings, skipped = _settings(e, argv)
    timer = Timer()
    if skipped:
        print("Skipped: " + "; ".join(skipped) + ".")
    devices = mesh(settings.devices)
    splits, data_info = load_splits(settings)
    results: dict[str, Any] = {
        "experiment": e.name, "dataset": data_info, "config": settings.record(),
        "versions": results_format.versions(), "command": " ".join(sys.argv), "runs": {}}
    if skipped:
        results["skipped"] = skipped
    os.makedirs(settings.out, exist_ok=True)
    json_path = os.path.join(settings.out, "results.json")
    for bs in settings.batch_sizes:
        for method in settings.methods:
            for seed in range(settings.seed, settings.seed + settings.seeds):
                h = e.run(method, bs, splits, settings, seed=seed, mesh=devices)
                results["runs"].setdefault(method, {}).setdefault(str(bs), {})[str(seed)] = h
                results["wall_seconds"] = timer()
                results_format.write_json(json_path, results)
    fig_path = os.path.join(settings.out, e.figure)
    e.plot(results, fig_path)
    results.update(e.conclude(results))
    results_format.write_json(json_path, results)
    text = e.summary(results) if e.summary else tables.summary(results, e.columns)
    if skipped:
        text += "\nSkipped: " + "; ".join(skipped) + ".\n"
    with open(os.path.join(settings.out, "summary.md"), "w") as f:
        f.write(text)
    print(f"\n{e.title} {data_info['name']} ({data_info['identity']}; {data_info['source']}), "
          f"{settings.epochs} epochs, {data_info['sizes']['train']} training examples:\n")
    print(text.rstrip("\n"))
    pdf = os.path.splitext(fig_path)[0] + ".pdf"
    print(f"\nWrote {json_path}, {fig_path}, {pdf}; {timer():.0f} s in all.")
    return results


def _parser(description: str, *, methods: Any, default_methods: Any, batch_sizes: Any,
            epochs: int, lr: float, out: str, train_examples: int | None = None) -> Any:
    """The flags of a :class:`~lnjax.experiments.settings.Settings` subclass with these
    defaults; the namespace holds every setting (the flags given, the defaults)."""
    fields = [("methods", Annotated[tuple, flags.Flag(choices=tuple(methods))],
               dataclasses.field(default=tuple(default_methods))),
              ("batch_sizes", tuple, dataclasses.field(default=tuple(batch_sizes))),
              ("epochs", int, dataclasses.field(default=epochs)),
              ("lr", float, dataclasses.field(default=lr)),
              ("out", str, dataclasses.field(default=out)),
              ("train_examples", Any, dataclasses.field(default=train_examples))]
    cls = dataclasses.make_dataclass("ExperimentSettings", fields, bases=(Settings,),
                                     frozen=True)
    p = flags.parser(cls, description)
    p.set_defaults(**{f.name: f.default for f in dataclasses.fields(cls)})
    return p


def _check_args(p: Any, args: Any, *, methods: Any) -> None:
    """Exits through ``p.error`` when the parsed ``args`` are not valid settings."""
    try:
        check_devices(Settings(**{**vars(args), "methods": ()}))
        bad = [m for m in args.methods if m not in methods]
        if bad:
            raise SettingsError(f"--methods: unknown {bad}; choose from {list(methods)}")
    except SettingsError as err:
        p.error(str(err))


_DEPRECATED = {"parser": (_parser, "lnjax.experiments.settings.parser(a Settings subclass)"),
               "check_args": (_check_args, "lnjax.experiments.settings.from_args")}


def __getattr__(name: str) -> Any:
    # The flags are generated from the settings classes now: the old builders keep
    # working for one release.
    if name in _DEPRECATED:
        fn, new = _DEPRECATED[name]
        warnings.warn(f"lnjax.experiments.driver.{name} is deprecated: use {new}; the old "
                      "name goes in the next release.", DeprecationWarning, stacklevel=2)
        return fn
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
