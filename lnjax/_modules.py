"""What the Linen and NNX front ends share: their dtype policy and their attributes' texts.

:func:`stats_dtype` is the one policy for the dtype a module computes its
statistics in. :func:`attributes` completes a module's ``Attributes:``
section from the descriptions below, so each attribute is described once for
every module that has it (both front ends, a class and its subclasses) while
``help()`` and the API pages still show each module's whole list. The names
here are public to the package (this module is private to it).
"""

from __future__ import annotations

import dataclasses
import inspect
import textwrap
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import jax.numpy as jnp

from lnjax import _checks as checks

T = TypeVar("T", bound=type)


def stats_dtype(x: Any, dtype: Any = None, *, force_float32: bool = True) -> Any:
    """The dtype a module computes its statistics in (flax's policy).

    ``dtype`` (the module's; ``None``: the input's) promoted to at least
    float32, or left as it is with ``force_float32=False`` (a Linen module's
    ``force_float32_reductions=False``; the NNX modules always promote).

    Example:
      >>> import jax.numpy as jnp
      >>> x = jnp.ones(3, jnp.bfloat16)
      >>> stats_dtype(x), stats_dtype(x, force_float32=False), stats_dtype(x, jnp.float16)
      (dtype('float32'), dtype(bfloat16), dtype('float32'))
    """
    dtype = jnp.result_type(x) if dtype is None else dtype
    return checks.stats_dtype(dtype) if force_float32 else dtype


# --------------------------------------------------------------------------
# Docstrings: the attributes' descriptions, each written once.
# --------------------------------------------------------------------------

Glossary = Mapping[str, str]
WIDTH = 80  # composed entries are wrapped to this width, as the docstrings are


def _parse(doc: str | None) -> tuple[list[str], dict[str, list[str]], list[str]]:
    """``(head, entries, tail)``: a docstring's lines before its ``Attributes:`` section,
    the section's entries by name (their lines as written) and the lines after it.

    Without the section, ``head`` ends before the first ``Example:`` (where one goes).
    """
    lines = inspect.cleandoc(doc or "").splitlines()
    if "Attributes:" not in lines:
        end = next((i for i, line in enumerate(lines) if line in ("Example:", "Examples:")),
                   len(lines))
        return lines[:end], {}, lines[end:]
    start = lines.index("Attributes:")
    end = start + 1
    while end < len(lines) and (not lines[end] or lines[end].startswith(" ")):
        end += 1
    entries: dict[str, list[str]] = {}
    for line in lines[start + 1:end]:
        if line.startswith("  ") and not line.startswith("   "):
            entries[line.strip().split(":", 1)[0]] = [line]
        elif line.strip():
            entries[list(entries)[-1]].append(line)
    return lines[:start], entries, lines[end:]


def _entry(name: str, text: str) -> list[str]:
    return textwrap.wrap(f"{name}: {text}", WIDTH, initial_indent="  ",
                         subsequent_indent="    ", break_long_words=False,
                         break_on_hyphens=False)


def attributes(*glossaries: Glossary, names: Sequence[str] | None = None) -> Callable[[T], T]:
    """A class decorator that completes the docstring's ``Attributes:`` section.

    The section lists ``names`` (a Linen module: its dataclass fields, without
    flax's ``parent`` and ``name``), each described by the class's own entry
    if it has one, else by the entry of an lnjax base class (``BatchReNorm``
    takes ``BatchNorm``'s), else by the first glossary that has the name.

    Raises:
      ValueError: an attribute that nothing describes, or an entry of the
        class's own docstring that names no attribute of it.
    """

    def decorate(cls: T) -> T:
        head, own, tail = _parse(cls.__doc__)
        listed = list(names) if names is not None else [
            f.name for f in dataclasses.fields(cls) if f.name not in ("parent", "name")]
        stray = set(own) - set(listed)
        if stray:
            raise ValueError(f"{cls.__name__} documents {sorted(stray)}, which it does not have.")
        inherited: dict[str, list[str]] = {}
        for base in reversed(cls.__mro__[1:]):
            if base.__module__.startswith("lnjax."):
                inherited.update(_parse(base.__doc__)[1])
        section = ["Attributes:"]
        for name in listed:
            if name in own or name in inherited:
                section += own.get(name) or inherited[name]
                continue
            text = next((g[name] for g in glossaries if name in g), None)
            if text is None:
                raise ValueError(f"{cls.__name__}: no description of its attribute {name!r}.")
            section += _entry(name, text)
        while head and not head[-1]:
            head.pop()
        cls.__doc__ = "\n".join(head + [""] + section + ([""] + tail if tail else [])) + "\n"
        return cls

    return decorate


# The normalization layers (Linen and NNX).
NORMALIZATION: Glossary = {
    "epsilon": "added to the variance inside the square root (default ``1e-6``).",
    "dtype": "the dtype of the result (default ``None``: inferred from the input and the "
             "parameters).",
    "param_dtype": "the dtype of the parameters (default ``jnp.float32``).",
    "use_bias": "add the learned bias ``bias`` (default ``True``).",
    "use_scale": "multiply by the learned gain ``scale`` (default ``True``).",
    "reduction_axes": "the axes the statistics are computed over (default ``-1``).",
    "feature_axes": "the axes of the learned ``scale`` and ``bias`` (default ``-1``).",
    "axis_name": "a mapped axis name (``shard_map``, ``pmap``) over which the statistics are "
                 "merged across devices (default ``None``: each device's own).",
    "axis_index_groups": "groups of device indices within ``axis_name``, each merged "
                         "separately (default ``None``: all devices together).",
    "use_fast_variance": "``True`` computes flax's one-pass ``E[x^2] - E[x]^2`` (fast, "
                         "inexact far from zero) instead of lnjax's mean-shifted statistics "
                         "(default ``False``; flax's default is ``True``).",
    "implementation": "beyond flax's attributes: the row kernel, ``None`` (the platform's "
                      "default), ``\"xla\"`` or ``\"pallas\"`` (see :mod:`lnjax.kernels`); it "
                      "changes no parameter (default ``None``).",
}
LAYER_NORM = NORMALIZATION
RMS_NORM: Glossary = {
    **NORMALIZATION,
    "epsilon": "added to the mean square inside the square root (default ``1e-6``).",
    "reduction_axes": "the axes the mean square is computed over (default ``-1``).",
    "feature_axes": "the axes of the learned ``scale`` (default ``-1``).",
    "use_fast_variance": "kept for flax's signature; RMS norm takes no variance (default "
                         "``False``).",
}
GROUP_NORM: Glossary = {
    **NORMALIZATION,
    "num_groups": "the number of groups of channels (default ``32``); ``None`` when "
                  "``group_size`` is given.",
    "group_size": "the number of channels in a group (default ``None``: from "
                  "``num_groups``); to give it instead, pass ``num_groups=None``.",
    "reduction_axes": "the axes the statistics are computed over (default ``None``: all but "
                      "the first, the batch axis).",
}
INSTANCE_NORM: Glossary = {
    **NORMALIZATION,
    "feature_axes": "the axes of the features, each normalized on its own and holding the "
                    "learned ``scale`` and ``bias`` (default ``-1``).",
}
BATCH_NORM: Glossary = {
    **NORMALIZATION,
    "epsilon": "added to the variance inside the square root (default ``1e-5``).",
    "axis": "the feature axis or axes, as in flax; the statistics are taken over all others "
            "(default ``-1``). The function :func:`lnjax.batch_norm` names the axes reduced "
            "over instead, as ``reduction_axes``.",
    "momentum": "the decay of the running averages (default ``0.99``).",
    "unbiased": "normalize with the unbiased variance ``n/(n-1) * var`` (default ``False``).",
    "r_max": "the largest scale correction, ``>= 1`` (default ``3.0``); a value given at call "
             "time overrides it.",
    "d_max": "the largest shift correction, in running standard deviations, ``>= 0`` "
             "(default ``5.0``); a value given at call time overrides it.",
}
LINEN_NORMALIZATION: Glossary = {
    "bias_init": "the initializer of ``bias`` (default zeros).",
    "scale_init": "the initializer of ``scale`` (default ones).",
    "force_float32_reductions": "compute the statistics in at least float32 (default "
                                "``True``); ``False`` computes them in ``dtype`` (or else "
                                "the input's).",
    "use_running_average": "normalize with the running averages in ``batch_stats`` instead "
                           "of the batch's statistics (default ``None``: given at call time).",
}
NNX_NORMALIZATION: Glossary = {
    "num_features": "the number of features (required).",
    "scale": "the learned gain, an ``nnx.Param`` of ``num_features`` (None without "
             "``use_scale``).",
    "bias": "the learned bias, an ``nnx.Param`` of ``num_features`` (None without "
            "``use_bias``).",
    "mean": "the running mean, an ``nnx.BatchStat`` of ``num_features`` (starts at 0).",
    "var": "the running variance, an ``nnx.BatchStat`` of ``num_features`` (starts at 1).",
    "use_running_average": "normalize with ``mean`` and ``var`` instead of the batch's "
                           "statistics (default ``False``); the call's argument overrides it.",
    "feature_axis": "the channel axis, the last (``-1``).",
    "promote_dtype": "flax's function that casts the input and the parameters to ``dtype`` "
                     "(default flax's ``promote_dtype``).",
}

# The weight-normalized dense layers (Linen's WeightNormDense, NNX's WeightNormLinear).
_COMPUTATION_DTYPE = ("the dtype of the computation (default ``None``: inferred from the "
                      "inputs and the parameters).")
WEIGHT_NORM: Glossary = {
    "use_bias": NORMALIZATION["use_bias"],
    "dtype": _COMPUTATION_DTYPE,
    "param_dtype": NORMALIZATION["param_dtype"],
    "precision": "the matmul's precision (default ``None``).",
    "epsilon": "added to each column's squared norm (default ``1e-12``).",
    # Linen's
    "features": "the number of output units.",
    "kernel_init": "the initializer of ``kernel`` (default ``lecun_normal()``).",
    "bias_init": LINEN_NORMALIZATION["bias_init"],
    "scale_init": LINEN_NORMALIZATION["scale_init"],
    # NNX's
    "in_features": "the number of input features (required).",
    "out_features": "the number of output units (required).",
    "kernel": "``v``, an ``nnx.Param`` of ``(in_features, out_features)`` (initialized by "
              "``kernel_init``, default ``lecun_normal()``).",
    "scale": "``g``, an ``nnx.Param`` of ``out_features`` (``scale_init``, default ones).",
    "bias": "an ``nnx.Param`` of ``out_features`` (``bias_init``, default zeros), or None "
            "with ``use_bias=False`` (default ``True``).",
}

# The layer-normalized recurrent cells and sequence layers.
RECURRENT: Glossary = {
    "dtype": _COMPUTATION_DTYPE,
    "param_dtype": NORMALIZATION["param_dtype"],
    "carry_init": "the initializer of :meth:`initialize_carry`'s carry (default zeros).",
    "time_major": "inputs and outputs are ``(time, *batch, features)`` instead of ``(*batch, "
                  "time, features)`` (default ``False``).",
    "return_carry": "return ``(carry, outputs)`` instead of the outputs (default ``False``).",
    "reverse": "run from each sequence's last valid step to its first (default ``False``).",
    "keep_order": "with ``reverse``, return the outputs in time order instead of processing "
                  "order (default ``False``, as flax's ``RNN``).",
    "unroll": "the time steps unrolled in each iteration of the scan (default ``1``).",
}
# A Linen cell's options (an NNX cell holds them in its ``spec``).
LINEN_CELL: Glossary = {
    **RECURRENT,
    "features": "the number of hidden units H.",
    "layer_norm": "the layer-normalized cell; ``False`` gives the plain cell (default "
                  "``True``).",
    "epsilon": "added to the variance inside the square root of every layer norm (default "
               "``1e-5``, as the authors' code).",
    "gate_fn": "the gates' nonlinearity (default ``sigmoid``).",
    "kernel_init": "the initializer of ``input_kernel`` (default ``lecun_normal()``).",
    "recurrent_kernel_init": "the initializer of ``recurrent_kernel`` (default "
                             "``orthogonal()``).",
    "bias_init": "the initializer of the biases (default zeros); the gains start at one.",
}
LINEN_SIMPLE: Glossary = {
    **LINEN_CELL,
    "norm_per_gate": "no effect: the cell has one block of H (default ``False``).",
    "gate_fn": "unused by this cell, which has no gate (default ``sigmoid``).",
    "activation_fn": "the output's nonlinearity (default ``tanh``).",
}
LINEN_GRU: Glossary = {
    **LINEN_CELL,
    "norm_per_gate": "normalize z, r and the candidate separately instead of the gates (2H) "
                     "and the candidate (H) (default ``False``).",
    "activation_fn": "the candidate's nonlinearity (default ``tanh``).",
}
LINEN_LSTM: Glossary = {
    **LINEN_CELL,
    "norm_per_gate": "normalize each gate's H summed inputs separately, as TensorFlow's "
                     "LayerNormBasicLSTMCell, instead of the whole 4H vector (default "
                     "``False``).",
    "activation_fn": "the nonlinearity of the candidate and the output (default ``tanh``).",
    "carry_normalized_cell": "carry ``LN(c_t)`` instead of ``c_t``, as TensorFlow Addons "
                             "(default ``False``, the paper's).",
}


def _nnx_cell(spec: str, gates: str, options: str = "") -> Glossary:
    """An NNX cell's attributes: its ``spec`` (a ``spec`` of lnjax.recurrent) and parameters
    (``gates`` blocks of H: ``"4"`` for the LSTM, ``"3"`` for the GRU, ``""`` for one)."""
    return {
        **RECURRENT,
        "in_features": "the number of input features.",
        "hidden_features": "the number of hidden units H.",
        "spec": f"the cell's options and equations, a :class:`~lnjax.recurrent.{spec}` "
                f"(``layer_norm``, ``norm_per_gate``, ``epsilon``, ``gate_fn``, "
                f"``activation_fn``{options}).",
        "input_kernel": f"``W_x``, an ``nnx.Param`` of ``(in_features, {gates}H)``.",
        "recurrent_kernel": f"``W_h``, an ``nnx.Param`` of ``(H, {gates}H)``.",
        "bias": f"``b``, an ``nnx.Param`` of ``({gates}H,)``.",
        "scale": "the layer norm's gain, an ``nnx.Param`` of ``(H,)`` (with ``layer_norm``).",
        "recurrent_bias": "the candidate's recurrent bias, an ``nnx.Param`` of ``(H,)``.",
        "input_scale": f"the input path's layer-norm gain, an ``nnx.Param`` of "
                       f"``({gates}H,)`` (with ``layer_norm``).",
        "recurrent_scale": f"the recurrent path's layer-norm gain, an ``nnx.Param`` of "
                           f"``({gates}H,)`` (with ``layer_norm``).",
        "cell_scale": "the gain of ``LN(c_t)``, an ``nnx.Param`` of ``(H,)`` (with "
                      "``layer_norm``).",
        "cell_bias": "the bias of ``LN(c_t)``, an ``nnx.Param`` of ``(H,)`` (with "
                     "``layer_norm``).",
    }


NNX_SIMPLE = _nnx_cell("SimpleSpec", "")
NNX_GRU = _nnx_cell("GRUSpec", "3")
NNX_LSTM = _nnx_cell("LSTMSpec", "4", ", ``carry_normalized_cell``")
