"""Speed and memory of lnjax against flax, PyTorch and a memory copy.

::

    python -m benchmarks.run [--quick] [--out DIR] [--shapes {full,tiny}] [--cases NAME,...]
    python -m benchmarks.run --device [--quick] [--out DIR] [--max-seconds S]

``--device`` runs :mod:`benchmarks.device` instead: layer/RMS norm passes
on the accelerator JAX sees (its own flags and ``benchmarks/results/device``).

Every case times its functions in one process with the benchmarks' one
harness (:mod:`benchmarks.harness`: round-robin, one timing of each function
per round, so a slow spell on a shared machine hits all of them alike) and
reports the median over rounds of each time and of each ratio. A ratio
``a / b`` (:class:`~benchmarks.harness.TimeRatio`) is time(a) / time(b):
``flax / lnjax`` is lnjax's speed-up over flax, ``lnjax / copy`` lnjax's time
in units of one copy. The reference in each case is a jitted copy of an array of the case's
size (``copy``): a pass that reads and writes those bytes once, checked to
produce a new buffer (XLA cannot elide it).

Cases (f32, CPU):

* ``ln_fb``, ``rms_fb``: layer norm / RMS norm forward + backward (the
  gradient of ``sum(y * dy)`` for x, scale and bias) at (4096, 1024),
  (16384, 256), (1024, 8192): lnjax, ``flax.linen.LayerNorm``/``RMSNorm``,
  ``torch.nn.LayerNorm``/``RMSNorm``, copy.
* ``ln_fwd``: layer norm forward alone.
* ``ln_memory``: temporary memory of the compiled forward + backward
  (``compiled.memory_analysis().temp_size_in_bytes``), lnjax against flax.
* ``norms_fb``, ``norms_fwd``, ``resnet``: batch, group and instance norm, layer norm
  over (H, W, C) and masked layer norm, forward + backward of the Linen modules
  against flax's (and PyTorch's, NCHW) with their compiled temporary memory;
  BatchNorm's forward in training and evaluation; a ResNet-style block
  (:mod:`benchmarks.cases`, which the device suite runs too).
* ``lstm``: LN-LSTM sequence layer forward + backward, T=100, batch 32,
  input 64, hidden 256: ``lnjax.linen.LNLSTM`` with and without layer norm,
  ``flax.linen.RNN(LSTMCell)``, a flax LN-LSTM (``nn.LayerNorm`` in an RNN
  cell, Eqs. 20-22) and ``torch.nn.LSTM`` (:func:`benchmarks.cases.lstm_case`).

The targets are the ratios' own (``TimeRatio(..., target)`` in each case) and
are printed met or not. Writes ``results.json``, ``results.md`` and
``results.png`` in the benchmarks' one format (:func:`benchmarks.report.markdown`:
the machine, a table of the times and ratios, the memory table, the notes;
:func:`benchmarks.report.plot`: a bar per ratio against its target) to
``--out`` (default ``benchmarks/results``). ``--quick`` takes fewer rounds
(under a minute); ``--shapes tiny`` uses toy sizes (for tests).

More cases register with :func:`register` (see ``CASES``). A whole training
epoch as one ``lax.scan`` against a Python loop of jitted steps is
:mod:`benchmarks.training_loop`.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import pathlib
import sys
import warnings
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from tqdm import tqdm

import lnjax.linen as lnn
from benchmarks import report
from benchmarks.cases import (
    DEFAULT_OUT,
    EPSILON,
    Case,
    Config,
    copy_of,
    lstm,
    norm_inputs,
    norms_fb,
    norms_fwd,
    resnet,
    run_case,
    torch,
    torch_forward_backward,
)
from benchmarks.harness import TimeRatio, jax_call

QUICK = dict(rounds=3, min_time=0.005)
TINY = dict(norm_shapes=((64, 128), (256, 32), (16, 512)), lstm=(5, 4, 8, 16),
            image_shapes=((4, 4, 4, 16),), resnet=(4, 4, 8))

# name -> builder(config) -> list of Case. Each builder runs inside the progress
# bar and may return several cases (one per shape).
CASES: dict[str, Callable[[Config], list[Case]]] = {}


def register(name: str):
    """Decorator: add a case builder ``f(config) -> list[Case]`` under ``name``."""
    def deco(builder):
        CASES[name] = builder
        return builder
    return deco


# --------------------------------------------------------------------------
# Layer norm and RMS norm.
# --------------------------------------------------------------------------


_COMPILED: dict[tuple, Any] = {}  # (kind, shape, library) -> compiled fwd+bwd, shared by cases


def _compiled_forward_backward(kind: str, library: str, x, dy, params):
    """``(x, dy, params) -> (y, dx, dparams)`` compiled once per kind, shape and library."""
    key = (kind, x.shape, library)
    if key not in _COMPILED:
        ours, theirs, _ = _norm_modules(kind)
        module = ours if library == "lnjax" else theirs

        def run(x, dy, params):
            y, vjp = jax.vjp(lambda x, p: module.apply({"params": p}, x), x, params)
            return (y,) + vjp(dy)
        _COMPILED[key] = jax.jit(run).lower(x, dy, params).compile()
    return _COMPILED[key]


def _norm_modules(kind: str):
    if kind == "ln":
        return (lnn.LayerNorm(epsilon=EPSILON), nn.LayerNorm(epsilon=EPSILON),
                ("scale", "bias"))
    return lnn.RMSNorm(epsilon=EPSILON), nn.RMSNorm(epsilon=EPSILON), ("scale",)


def _torch_norm(kind: str, width: int, scale, bias):
    if torch is None or (kind == "rms" and not hasattr(torch.nn, "RMSNorm")):
        return None
    layer = (torch.nn.LayerNorm(width, eps=EPSILON) if kind == "ln"
             else torch.nn.RMSNorm(width, eps=EPSILON))
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(scale))
        if kind == "ln":
            layer.bias.copy_(torch.from_numpy(bias))
    return layer


def _norm_fb_cases(config: Config, kind: str) -> list[Case]:
    title = {"ln": "LayerNorm", "rms": "RMSNorm"}[kind]
    cases = []
    for shape in config.norm_shapes:
        x, scale, bias, dy = norm_inputs(shape, config.seed)
        names = _norm_modules(kind)[2]
        params = dict(zip(names, (jnp.asarray(scale), jnp.asarray(bias))))
        xj, dyj = jnp.asarray(x), jnp.asarray(dy)
        case = Case(f"{kind}_fb {shape[0]}x{shape[1]}",
                    f"{title} fwd+bwd {shape[0]}x{shape[1]}")
        case.functions["copy"] = copy_of(xj)
        for library in ("lnjax", "flax"):
            compiled = _compiled_forward_backward(kind, library, xj, dyj, params)
            case.functions[library] = jax_call(compiled, xj, dyj, params)
        layer = _torch_norm(kind, shape[1], scale, bias)
        if layer is not None:
            case.functions["torch"] = torch_forward_backward(layer, x, dy)
        case.note = "copy: one jitted copy of x; fwd+bwd: y and the gradients for x, scale, bias"
        case.ratios = [TimeRatio("flax", "lnjax", 3.0)]
        if layer is not None:
            case.ratios.append(TimeRatio("torch", "lnjax", 1.0))
        case.ratios.append(TimeRatio("lnjax", "copy", 4.0, at_least=False))
        cases.append(case)
    return cases


@register("ln_fb")
def ln_fb(config: Config) -> list[Case]:
    return _norm_fb_cases(config, "ln")


@register("rms_fb")
def rms_fb(config: Config) -> list[Case]:
    return _norm_fb_cases(config, "rms")


@register("ln_fwd")
def ln_fwd(config: Config) -> list[Case]:
    cases = []
    for shape in config.norm_shapes:
        x, scale, bias, _ = norm_inputs(shape, config.seed)
        ours, theirs, _ = _norm_modules("ln")
        params = {"scale": jnp.asarray(scale), "bias": jnp.asarray(bias)}
        xj = jnp.asarray(x)
        case = Case(f"ln_fwd {shape[0]}x{shape[1]}", f"LayerNorm fwd {shape[0]}x{shape[1]}")
        case.functions["copy"] = copy_of(xj)
        for name, module in (("lnjax", ours), ("flax", theirs)):
            fwd = jax.jit(lambda x, p, module=module: module.apply({"params": p}, x))
            case.functions[name] = jax_call(fwd, xj, params)
        layer = _torch_norm("ln", shape[1], scale, bias)
        if layer is not None:
            xt = torch.from_numpy(x)

            def torch_fwd(layer=layer, xt=xt):
                with torch.no_grad():
                    layer(xt)
            case.functions["torch"] = torch_fwd
        case.ratios = [TimeRatio("flax", "lnjax"), TimeRatio("lnjax", "copy", 1.3, at_least=False)]
        if layer is not None:
            case.ratios.insert(1, TimeRatio("torch", "lnjax"))
        cases.append(case)
    return cases


@register("ln_memory")
def ln_memory(config: Config) -> list[Case]:
    """Temporary memory of the compiled forward+backward (no timing)."""
    cases = []
    for kind in ("ln", "rms"):
        for shape in config.norm_shapes:
            x, scale, bias, dy = norm_inputs(shape, config.seed)
            names = _norm_modules(kind)[2]
            params = dict(zip(names, (jnp.asarray(scale), jnp.asarray(bias))))
            args = (jnp.asarray(x), jnp.asarray(dy), params)
            case = Case(f"{kind}_memory {shape[0]}x{shape[1]}",
                        f"{'LayerNorm' if kind == 'ln' else 'RMSNorm'} {shape[0]}x{shape[1]}")
            for library in ("lnjax", "flax"):
                compiled = _compiled_forward_backward(kind, library, *args)
                temp = compiled.memory_analysis().temp_size_in_bytes
                case.values[f"{library} temp MiB"] = temp / 2**20
            case.values["x MiB"] = x.nbytes / 2**20
            cases.append(case)
    return cases


# The cases both suites run (benchmarks.cases), after the CPU suite's own.
CASES.update(norms_fb=norms_fb, norms_fwd=norms_fwd, resnet=resnet, lstm=lstm)


# --------------------------------------------------------------------------
# Running and reporting.
# --------------------------------------------------------------------------


def run(*, quick: bool = False, shapes: str = "full", out: str | os.PathLike = DEFAULT_OUT,
        cases: list[str] | None = None, progress: bool = True) -> dict[str, Any]:
    """Runs the chosen cases, writes the three result files, returns the results."""
    config = Config(**{**(QUICK if quick else {}), **(TINY if shapes == "tiny" else {})})
    names = list(CASES) if cases is None else cases
    unknown = [n for n in names if n not in CASES]
    if unknown:
        raise ValueError(f"unknown case(s) {unknown}; known: {sorted(CASES)}")
    # results.png is drawn last: a missing matplotlib stops the run before any timing.
    report.pyplot()
    results: dict[str, Any] = {"machine": report.machine(), "config": dataclasses.asdict(config),
                               "quick": quick, "shapes": shapes, "cases": []}
    bar = tqdm(names, desc="benchmarks", disable=not progress)
    for name in bar:
        bar.set_postfix_str(name)
        for case in CASES[name](config):
            results["cases"].append(run_case(case, config))
    results["machine"]["load average at end"] = report.load_average()
    report.write(out, "results", results, report.markdown(results))
    report.plot(results, pathlib.Path(out) / "results.png")
    return results


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--device" in argv:
        from benchmarks import device

        device.main([a for a in argv if a != "--device"])
        return
    parser = report.parser(__doc__, "results", out=DEFAULT_OUT,
                           quick="fewer, shorter rounds", cases=CASES)
    parser.add_argument("--device", action="store_true",
                        help="time on the accelerator instead (python -m benchmarks.device "
                             "--help for its flags)")
    parser.add_argument("--shapes", choices=("full", "tiny"), default="full")
    args = parser.parse_args(argv)
    results = run(quick=args.quick, shapes=args.shapes, out=args.out, cases=args.cases)
    print(report.markdown(results))
    print(f"wrote {args.out}/results.json, results.md, results.png")


# Names that moved, by the module that has them now.
_MOVED = {"markdown": "benchmarks.report", "plot": "benchmarks.report",
          "lstm_case": "benchmarks.cases", "FlaxLNLSTMCell": "benchmarks.cases",
          "ResBlock": "benchmarks.cases"}


def __getattr__(name: str) -> Any:
    """The names that moved (``markdown`` and ``plot`` to :mod:`benchmarks.report`, the
    LSTM and ResNet pieces to :mod:`benchmarks.cases`), with a ``DeprecationWarning``."""
    if name in _MOVED:
        warnings.warn(f"benchmarks.run.{name} is deprecated: use {_MOVED[name]}.{name}",
                      DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    main()
