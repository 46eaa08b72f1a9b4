"""The command line every training experiment shares, written once.

An experiment describes itself with an :class:`Experiment` (its methods, its
``run`` function, its defaults and extra flags, its table columns, its plot
and its figure's file name); :func:`main` does the rest, the same way for
each: parse and check the flags, build the device mesh, load the data, train
every (batch size, method, seed) with resume from checkpoints, rewrite
``results.json`` after each run, draw the figure (PNG and PDF), write
``summary.md`` and print the table.

``results.json`` keeps every seed's history, ``runs[method][batch size][seed]``
(read older files, one history per (method, batch size), with
:func:`common.seed_histories`).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax

from lnjax import data
from lnjax._optional import MissingExtraError, require
from lnjax.experiments import common

DATASETS = ("auto", *data.NAMES)


@dataclasses.dataclass(frozen=True)
class Experiment:
    """What one command-line experiment is; :func:`main` runs it.

    Attributes:
      name: the name written to ``results.json`` (``"experiment"``).
      description: the ``--help`` description.
      title: the table's heading, followed by the data set's name.
      methods: the ``--methods`` that exist (and the default: all of them).
      run: ``run(method, batch_size, splits, *, epochs, lr, seed, out, resume,
        progress, mesh, eval_examples, evals_per_epoch, tensorboard, **extra) ->
        history``, one training run (the curves' settings and TensorBoard go to
        :func:`common.fit_run`).
      plot: ``plot(results, path)``, the figure of a ``results.json`` (written as
        ``path`` and a PDF of the same stem).
      figure: the figure's file name in ``--out``.
      columns: the summary table's ``(header, history key, format)`` columns
        (see :func:`common.summary_table`).
      batch_sizes: the default of ``--batch-sizes``.
      epochs: the default of ``--epochs``.
      lr: the default of ``--lr``.
      out: the default of ``--out``.
      train_examples: the default of ``--train-examples`` (``None``: all).
      add_flags: adds the experiment's own flags to the parser.
      run_flags: the destinations of those flags that ``run`` takes as keywords.
      check: ``check(parser, args)`` rejects bad values of the experiment's own
        flags (with ``parser.error``).
    """

    name: str
    description: str
    title: str
    methods: tuple[str, ...]
    run: Callable[..., dict]
    plot: Callable[[dict, str], None]
    figure: str
    columns: tuple[tuple[str, str, str], ...]
    batch_sizes: tuple[int, ...]
    epochs: int
    lr: float
    out: str
    train_examples: int | None = None
    add_flags: Callable[[argparse.ArgumentParser], None] = lambda p: None
    run_flags: tuple[str, ...] = ()
    check: Callable[[argparse.ArgumentParser, argparse.Namespace], None] = lambda p, a: None


def parser(description: str, *, methods: Sequence[str], default_methods: Sequence[str],
           batch_sizes: Sequence[int], epochs: int, lr: float, out: str,
           train_examples: int | None = None) -> argparse.ArgumentParser:
    """The flags every experiment takes."""
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", default="auto", choices=DATASETS,
                   help="data set; 'auto' takes the first of mnist, fashion_mnist found")
    p.add_argument("--data-dir", default=None,
                   help="a folder of MNIST-format IDX files or a TFDS data_dir")
    p.add_argument("--methods", type=common.comma_list(str), default=list(default_methods),
                   help=f"comma-separated, from {','.join(methods)}")
    p.add_argument("--batch-sizes", type=common.comma_list(int), default=list(batch_sizes),
                   help="comma-separated batch sizes")
    p.add_argument("--epochs", type=int, default=epochs, help="epochs per run")
    p.add_argument("--lr", type=float, default=lr, help="Adam learning rate")
    p.add_argument("--seed", type=int, default=0, help="seed of the parameters and batch order")
    p.add_argument("--seeds", type=int, default=1,
                   help="run each setting with N seeds: --seed, --seed + 1, ...; the table "
                        "shows mean ± standard deviation, the figures the mean and min-max")
    p.add_argument("--eval-examples", type=int, default=common.EVAL_EXAMPLES,
                   help="the curves' fixed subset of the validation and test splits (the "
                        "table's numbers are on the whole splits)")
    p.add_argument("--evals-per-epoch", type=int, default=common.EVALS_PER_EPOCH,
                   help="evaluations of the curves' subsets per epoch")
    p.add_argument("--tensorboard", action="store_true",
                   help="write TensorBoard event files to OUT/tensorboard/<run> (needs "
                        "tensorboardX: pip install \"lnjax[tensorboard]\")")
    p.add_argument("--train-examples", type=int, default=train_examples,
                   help="train on the first N of the 55,000 training examples (None: all)")
    p.add_argument("--out", default=out, help="folder for results.json, the figure, checkpoints")
    p.add_argument("--no-resume", action="store_true",
                   help="start every run afresh instead of resuming from its checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--devices", type=int, default=None,
                   help="train data-parallel over the first N devices (default: all)")
    return p


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace, *,
               methods: Sequence[str]) -> None:
    """Rejects values argparse cannot check by itself (``methods``: the ones that exist)."""
    bad = [m for m in args.methods if m not in methods]
    if bad:
        p.error(f"--methods: unknown {bad}; choose from {list(methods)}")
    if any(b < 1 for b in args.batch_sizes):
        p.error(f"--batch-sizes must be positive, got {args.batch_sizes}")
    if args.epochs < 1:
        p.error(f"--epochs must be at least 1, got {args.epochs}")
    if not args.lr > 0:
        p.error(f"--lr must be positive, got {args.lr}")
    for flag in ("seeds", "eval_examples", "evals_per_epoch"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be positive, got {getattr(args, flag)}")
    if args.train_examples is not None and args.train_examples < 1:
        p.error(f"--train-examples must be positive, got {args.train_examples}")
    if args.devices is not None and not 1 <= args.devices <= jax.device_count():
        p.error(f"--devices must be between 1 and {jax.device_count()} (the devices "
                f"available), got {args.devices}")


def mesh(devices: int | None) -> jax.sharding.Mesh:
    """The data-parallel mesh of ``--devices`` (``None``: all devices); printed."""
    from lnjax import parallel

    m = parallel.make_mesh(devices)
    n = m.devices.size
    print(f"Devices: {n} x {jax.devices()[0].device_kind}"
          + (" (data-parallel)" if n > 1 else ""))
    return m


def load_splits(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """:func:`lnjax.data.load_splits` of the flags; prints each split, its source and what the
    files are (``info["identity"]``: verified by checksum, or unknown)."""
    splits, info = data.load_splits(args.dataset, data_dir=args.data_dir,
                                    train_examples=args.train_examples)
    for ds in splits.values():
        print("Data:", data.describe(ds))
    print("Data set:", info["identity"])
    return splits, info


def main(experiment: Experiment, argv: list[str] | None = None) -> dict:
    """Runs ``experiment`` from its command line ``argv``; returns what ``results.json`` holds."""
    e = experiment
    p = parser(e.description, methods=e.methods, default_methods=e.methods,
               batch_sizes=e.batch_sizes, epochs=e.epochs, lr=e.lr, out=e.out,
               train_examples=e.train_examples)
    e.add_flags(p)
    args = p.parse_args(argv)
    check_args(p, args, methods=e.methods)
    e.check(p, args)
    try:  # the figure is drawn after training: a missing matplotlib stops the run before it
        common.pyplot()
        if args.tensorboard:
            require("tensorboardX", "--tensorboard")
    except MissingExtraError as err:
        p.exit(1, f"{p.prog}: {err}\n")
    timer = common.Timer()
    devices = mesh(args.devices)
    splits, data_info = load_splits(args)
    results: dict[str, Any]
    results = {"experiment": e.name, "dataset": data_info,
               "config": {k: v for k, v in vars(args).items() if k not in ("no_progress",)},
               "versions": common.versions(), "command": " ".join(sys.argv), "runs": {}}
    os.makedirs(args.out, exist_ok=True)
    json_path = os.path.join(args.out, "results.json")
    extra = {k: getattr(args, k) for k in e.run_flags}
    seeds = list(range(args.seed, args.seed + args.seeds))
    for bs in args.batch_sizes:
        for method in args.methods:
            for seed in seeds:
                h = e.run(method, bs, splits, epochs=args.epochs, lr=args.lr, seed=seed,
                          out=args.out, resume=not args.no_resume,
                          progress=not args.no_progress, mesh=devices,
                          eval_examples=args.eval_examples,
                          evals_per_epoch=args.evals_per_epoch, tensorboard=args.tensorboard,
                          **extra)
                results["runs"].setdefault(method, {}).setdefault(str(bs), {})[str(seed)] = h
                results["wall_seconds"] = timer()
                common.write_json(json_path, results)
    fig_path = os.path.join(args.out, e.figure)
    e.plot(results, fig_path)
    table = common.summary_table(results["runs"], columns=e.columns)
    if len(seeds) > 1:
        table += (f"\n\nEach cell: mean ± standard deviation over {len(seeds)} seeds "
                  f"({', '.join(map(str, seeds))}).")
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(table + "\n")
    print(f"\n{e.title} {data_info['name']} ({data_info['identity']}; {data_info['source']}), "
          f"{args.epochs} epochs, {data_info['sizes']['train']} training examples:\n")
    print(table)
    pdf = os.path.splitext(fig_path)[0] + ".pdf"
    print(f"\nWrote {json_path}, {fig_path}, {pdf}; {timer():.0f} s in all.")
    return results
