"""The device suite's check before timing: every library's outputs against a reference.

Each library's outputs (y from every pass, the gradients of the backward
passes) are compared with the reference, lnjax ``"xla"`` in f32 on the same
inputs (:func:`reference`; no float64, which accelerators lack). The error is
``max |out - ref| / max |ref|`` (:func:`check_error`), at most
:data:`TOLERANCE` of the dtype; a library that fails the check, or raises, is
reported and not timed (:func:`checked_passes`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import lnjax
from benchmarks.byte_model import PASSES, copies
from benchmarks.cases import EPSILON, copy_of
from benchmarks.device_passes import (
    DTYPES,
    LIBRARIES,
    accepts_implementation,
    compile_all,
    jax_norm,
    jax_outputs,
    lower,
    lower_passes,
    pass_arguments,
    torch_passes,
)
from benchmarks.harness import rotating

TOLERANCE = {"f32": 1e-3, "bf16": 5e-2}
"""The largest ``max |out - ref| / max |ref|`` a library may show, by dtype (bf16: a few
of its steps)."""


def reference(case: str) -> Callable[..., tuple[jax.Array, ...]]:
    """``(dy, x, *params) -> (y, dx, dparams...)`` from lnjax "xla", to run in f32 (lnjax's
    default path where lnjax takes no ``implementation=``)."""
    keyword = {"implementation": "xla"} if accepts_implementation() else {}
    fn = lnjax.layer_norm if case == "layer_norm" else lnjax.rms_norm

    def forward_backward(dy, *a):
        y, pullback = jax.vjp(lambda x, *p: fn(x, *p, epsilon=EPSILON, **keyword), *a)
        return (y, *pullback(dy))
    return forward_backward


def check_error(outputs: dict[str, tuple], ref: tuple) -> float:
    """The largest ``max |out - ref| / max |ref|`` over every output of every pass
    (infinite where an output is not finite).

    Example:
      >>> ref = (jnp.array([1.0, -2.0]),)
      >>> round(check_error({"forward": (jnp.array([1.0, -1.5]),)}, ref), 6)
      0.25
    """
    worst = 0.0
    for outs in outputs.values():
        for out, r in zip(outs, ref):
            if out is None:
                continue
            err, scale = map(float, _error_terms(jnp.asarray(out).reshape(r.shape), r))
            worst = max(worst, err / max(scale, 1e-30) if np.isfinite(err) else float("inf"))
    return worst


@jax.jit
def _error_terms(out: jax.Array, ref: jax.Array) -> tuple[jax.Array, jax.Array]:
    return jnp.max(jnp.abs(out.astype(jnp.float32) - ref)), jnp.max(jnp.abs(ref))


def describe(error: BaseException) -> str:
    """An error in one line of at most 300 characters: ``"Type: message"``.

    Example:
      >>> describe(NotImplementedError("no such kernel\\non this device"))
      'NotImplementedError: no such kernel'
    """
    text = f"{type(error).__name__}: {error}".splitlines()[0]
    return text if len(text) <= 300 else text[:297] + "..."


def checked_passes(case: str, dtype: str, inputs, torch_device: str | None,
                   record: dict[str, Any], *,
                   norm: Callable[[str, str], Callable] = jax_norm
                   ) -> dict[str, Callable[[], Any]]:
    """The copy and every library's passes that compiled and match the reference.

    Args:
      case: ``"layer_norm"`` or ``"rms_norm"``.
      dtype: a key of :data:`~benchmarks.device_passes.DTYPES`.
      inputs: ``(x, scale, bias, dy)``, float32 NumPy (:func:`benchmarks.cases.norm_inputs`).
      torch_device: where PyTorch runs (None: not at all).
      record: the group's record: each library's error (``errors``), each check's
        error (``checks``) and the copies of x rotated among (``copies``) go there.
      norm: ``norm(case, library) -> f(x, *params)`` of each JAX library.

    Returns:
      No-argument functions that start a pass on the next copy of the inputs, named
      ``"library: pass"``, and ``"copy"``: a jitted copy of x.
    """
    x, scale, bias, dy = inputs
    params_np = (scale, bias) if case == "layer_norm" else (scale,)
    jdtype = DTYPES[dtype]
    args = tuple(jnp.asarray(a, jdtype) for a in (x, *params_np))
    dyj = jnp.asarray(dy, jdtype)
    sets = copies(x.shape, dtype)
    record["copies"] = sets
    arg_sets = [args] + [(jnp.copy(args[0]), *args[1:]) for _ in range(sets - 1)]
    dys = [dyj] + [jnp.copy(dyj) for _ in range(sets - 1)]
    copy_of(args[0])  # checks that XLA does not elide the copy
    functions: dict[str, Callable[[], Any]] = {
        "copy": rotating(jax.jit(jnp.copy), [a[:1] for a in arg_sets])}
    norms = {lib: norm(case, lib) for lib in LIBRARIES if lib != "torch"}
    ref, compiled, call_sets = _compiled(case, norms, arg_sets, dys, record)
    for library in [lib for lib in LIBRARIES if lib != "torch" or torch_device is not None]:
        if library in record["errors"]:
            continue
        try:
            if library == "torch":
                # Round through the dtype so that PyTorch sees JAX's very inputs.
                as_np = [np.array(jnp.asarray(a, jdtype).astype(jnp.float32))
                         for a in (x, *params_np, dy)]
                lib_functions, outputs = torch_passes(case, as_np[0], tuple(as_np[1:-1]),
                                                      as_np[-1], dtype, torch_device,
                                                      sets=sets)
            else:
                lib_functions = {p: rotating(compiled[library, p], call_sets[library, p])
                                 for p in PASSES}
                outputs = jax_outputs(lib_functions)
            error = check_error(outputs, ref)
        except Exception as e:  # noqa: BLE001 - a failing library is reported, not fatal
            record["errors"][library] = describe(e)
            continue
        record["checks"][library] = error
        if not error <= TOLERANCE[dtype]:
            record["errors"][library] = (f"check failed: max |out - ref| / max |ref| = "
                                         f"{error:.3g} > {TOLERANCE[dtype]:g}")
            continue
        functions.update({f"{library}: {p}": fn for p, fn in lib_functions.items()})
    return functions


def _compiled(case: str, norms: dict[str, Callable], arg_sets: list[tuple], dys: list,
              record: dict[str, Any]) -> tuple[tuple, dict, dict]:
    """The reference's outputs, every JAX library's compiled passes and each pass's
    arguments (one set per copy of the inputs); a library that fails to lower or compile
    goes into ``record["errors"]``.

    Compiles in two parallel batches: each library's forward of ``jax.vjp`` (to learn
    its residuals) with the reference, then every pass of every library.
    """
    args, dyj = arg_sets[0], dys[0]
    ref_args = tuple(a.astype(jnp.float32) for a in (dyj, *args))
    saved = compile_all({"reference": lower(reference(case), ref_args),
                         **{lib: lower(lambda *a, f=f: jax.vjp(f, *a), args)
                            for lib, f in norms.items()}})
    if isinstance(saved["reference"], Exception):
        raise saved["reference"]
    ref = saved["reference"](*ref_args)
    lowered, call_sets = {}, {}
    for library, f in norms.items():
        try:
            if isinstance(saved[library], Exception):
                raise saved[library]
            pullbacks = [saved[library](*a)[1] for a in arg_sets]
            for pass_, low in lower_passes(f, args, dyj, pullbacks[0], name=library).items():
                lowered[library, pass_] = low
            for a, d, pullback in zip(arg_sets, dys, pullbacks):
                for pass_, call_args in pass_arguments(a, d, pullback).items():
                    call_sets.setdefault((library, pass_), []).append(call_args)
        except Exception as e:  # noqa: BLE001 - a failing library is reported, not fatal
            record["errors"][library] = describe(e)
    compiled = compile_all(lowered)
    for library in norms:
        failed = [compiled[library, p] for p in PASSES
                  if isinstance(compiled.get((library, p)), Exception)]
        if failed and library not in record["errors"]:
            record["errors"][library] = describe(failed[0])
    return ref, compiled, call_sets
