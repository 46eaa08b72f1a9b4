"""The passes the device suite times, for each library: JAX programs lowered and compiled,
PyTorch's calls.

Four passes (:data:`benchmarks.byte_model.PASSES`) of a normalization ``f(x, *params)``
(:func:`jax_norm`: lnjax ``"xla"`` and ``"pallas"``, flax):

* ``forward``: ``y = f(x, params)``;
* ``forward_stats``: the forward of ``jax.vjp`` (what training's forward
  costs): y and the residuals the backward needs. Residuals equal to an input
  (x or scale kept for the backward) are the input kept alive, not new data,
  and are left out of the timed program;
* ``backward``: the VJP of one saved forward applied to a fixed ``dy``;
* ``forward_backward``: both in one program (``y``, dx, dscale, dbias).

Every JAX pass is lowered once (:func:`lower_passes`) and compiled in parallel
threads (:func:`compile_all`); each program is named after its library and pass
(:func:`program_name`), which the profiler's events carry. PyTorch's passes
(:func:`torch_passes`) are ``torch.nn.functional.layer_norm`` / ``rms_norm``:
the forward under ``no_grad``, the forward with ``requires_grad``,
``torch.autograd.grad`` of one saved graph, and both.
"""

from __future__ import annotations

import concurrent.futures
import inspect
import os
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import lnjax
from benchmarks.cases import EPSILON, torch
from benchmarks.harness import TorchSync, rotating
from benchmarks.targets import LNJAX

LIBRARIES = (*LNJAX, "flax", "torch")
"""The libraries timed, in the reports' order."""
DTYPES = {"f32": jnp.float32, "bf16": jnp.bfloat16}
"""The dtypes timed, by the names the byte model and the reports use."""


def accepts_implementation() -> bool:
    """Whether lnjax's functions take ``implementation=`` (else lnjax is reported as failing)."""
    return "implementation" in inspect.signature(lnjax.layer_norm).parameters


def jax_norm(case: str, library: str) -> Callable[..., jax.Array]:
    """``f(x, *params)`` of one JAX library (params: scale, bias for layer norm; scale)."""
    names = ("scale", "bias") if case == "layer_norm" else ("scale",)
    if library == "flax":
        module = (nn.LayerNorm if case == "layer_norm" else nn.RMSNorm)(epsilon=EPSILON)
        return lambda x, *params: module.apply({"params": dict(zip(names, params))}, x)
    fn = lnjax.layer_norm if case == "layer_norm" else lnjax.rms_norm
    implementation = library.split()[1] if library in LNJAX else None
    keyword = {} if implementation is None else {"implementation": implementation}
    return lambda x, *params: fn(x, *params, epsilon=EPSILON, **keyword)


def lower_passes(f: Callable, args: tuple, dy: jax.Array, pullback: Any, *,
                 name: str) -> dict[str, Any]:
    """The four passes of ``f``, lowered: ``{pass: lowered}``.

    ``pullback`` is the VJP of one run of ``jax.jit(lambda *a: jax.vjp(f, *a))``:
    the backward's residuals; those equal to an input are left out of the
    timed "forward saving stats". Each program is named ``jit_{name}_{pass}``
    (:func:`program_name`), which the profiler's events carry.
    """
    kept = [not any(r.shape == a.shape and r.dtype == a.dtype and bool(jnp.array_equal(r, a))
                    for a in args) for r in jax.tree_util.tree_leaves(pullback)]

    def forward(*a):
        return f(*a)

    def forward_stats(*a):
        y, pullback = jax.vjp(f, *a)
        return y, [r for r, k in zip(jax.tree_util.tree_leaves(pullback), kept) if k]

    def backward(pullback, dy):
        return pullback(dy)

    def forward_backward(*a):
        y, pullback = jax.vjp(f, *a[:-1])
        return (y, *pullback(a[-1]))

    programs = {"forward": forward, "forward_stats": forward_stats, "backward": backward,
                "forward_backward": forward_backward}
    lowered = {}
    for pass_, call_args in pass_arguments(args, dy, pullback).items():
        fn = programs[pass_]
        fn.__name__ = fn.__qualname__ = program_name(name, pass_)[len("jit_"):]
        lowered[pass_] = jax.jit(fn).lower(*call_args)
    return lowered


def pass_arguments(args: tuple, dy: Any, pullback: Any) -> dict[str, tuple]:
    """What each pass is called with: ``args`` = (x, *params), the VJP and dy."""
    return {"forward": args, "forward_stats": args, "backward": (pullback, dy),
            "forward_backward": (*args, dy)}


def program_name(library: str, pass_: str) -> str:
    """The XLA module name of a library's pass: ``jit_lnjax_xla_forward``."""
    return f"jit_{library.replace(' ', '_')}_{pass_}"


class FailedLowering:
    """A lowering that raised: compiling it raises the same error."""

    def __init__(self, error: Exception):
        self.error = error

    def compile(self):
        raise self.error


def lower(f: Callable, args: tuple) -> Any:
    """``jax.jit(f).lower(*args)``, or a :class:`FailedLowering` of the error it raised (so
    that a failing library is reported when it is compiled, not when it is lowered)."""
    try:
        return jax.jit(f).lower(*args)
    except Exception as e:  # noqa: BLE001 - reported by the caller
        return FailedLowering(e)


def compile_all(lowered: dict[Any, Any]) -> dict[Any, Any]:
    """``{key: lowered.compile()}``, compiled in parallel threads (XLA lets go of the GIL);
    a compilation that fails gives its exception."""
    def compile_one(item):
        try:
            return item.compile()
        except Exception as e:  # noqa: BLE001 - reported by the caller
            return e
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        return dict(zip(lowered, pool.map(compile_one, lowered.values())))


def jax_outputs(functions: dict[str, Callable[[], Any]]) -> dict[str, tuple]:
    """One call of each pass, its outputs as ``(y, dx, dparams...)`` (None where absent)."""
    out = {k: fn() for k, fn in functions.items()}
    return {"forward": (out["forward"],), "forward_stats": (out["forward_stats"][0],),
            "backward": (None, *out["backward"]), "forward_backward": out["forward_backward"]}


def torch_passes(case: str, x: np.ndarray, params: tuple[np.ndarray, ...], dy: np.ndarray,
                 dtype: str, device: str, *, sets: int = 1):
    """The four passes in PyTorch on ``device``: ``(functions, outputs)``.

    ``functions[pass]()`` starts the pass on the next of ``sets`` copies of x
    and dy and returns its outputs and a :class:`TorchSync`; ``outputs`` (of
    the first copy) as :func:`jax_outputs` gives them.
    """
    tdtype = {"f32": torch.float32, "bf16": torch.bfloat16}[dtype]
    F = torch.nn.functional
    width = x.shape[1]

    def f(x, *params):
        if case == "layer_norm":
            return F.layer_norm(x, (width,), *params, eps=EPSILON)
        return F.rms_norm(x, (width,), *params, eps=EPSILON)

    def tensor(a, grad=False):
        return torch.from_numpy(a).to(device=device, dtype=tdtype).requires_grad_(grad)

    pt, pg = tuple(map(tensor, params)), tuple(tensor(p, True) for p in params)
    copies = []
    for _ in range(sets):
        xg = tensor(x, True)
        copies.append((tensor(x), xg, tensor(dy), f(xg, *pg)))  # x, x with grad, dy, saved y

    def forward(xt, xg, dyt, saved):
        with torch.no_grad():
            return f(xt, *pt), TorchSync()

    def forward_stats(xt, xg, dyt, saved):
        return f(xg, *pg), TorchSync()

    def backward(xt, xg, dyt, saved):
        return torch.autograd.grad(saved, (xg, *pg), dyt, retain_graph=True), TorchSync()

    def forward_backward(xt, xg, dyt, saved):
        y = f(xg, *pg)
        return (y, *torch.autograd.grad(y, (xg, *pg), dyt)), TorchSync()

    passes = {"forward": forward, "forward_stats": forward_stats, "backward": backward,
              "forward_backward": forward_backward}
    functions = {k: rotating(fn, copies) for k, fn in passes.items()}
    first = {k: fn(*copies[0])[0] for k, fn in passes.items()}
    outputs = {"forward": (first["forward"],), "forward_stats": (first["forward_stats"],),
               "backward": (None, *first["backward"]),
               "forward_backward": first["forward_backward"]}
    as_jax = (lambda t: None if t is None
              else jnp.asarray(t.detach().float().cpu().numpy()))
    return functions, {k: tuple(map(as_jax, v)) for k, v in outputs.items()}
