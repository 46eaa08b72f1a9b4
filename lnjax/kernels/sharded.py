"""Per-shard calls: a row kernel that runs on each device's own block under sharded ``jit``.

A Pallas kernel is a custom call the partitioner cannot look into: left
alone, sharded ``jit`` gathers its operands and runs it whole on every
device. :func:`per_shard` wraps such a kernel so that each device runs it on
its own block instead, and the function it runs there completes the result
with collectives over the mesh axes that shard the block:

* **Auto meshes** (and inputs sharded with no mesh in context): the call is a
  :func:`jax.experimental.custom_partitioning` whose partition rule reads the
  operands' shardings when the program is partitioned.
* **Explicit meshes**: the shardings are part of the operands' types when the
  program is traced, so the call is a :func:`jax.shard_map` over the mesh axes
  that shard them (custom partitioning would trace the kernel on sharded
  types, which Pallas refuses).

On one device, and inside a ``shard_map`` whose every mesh axis is manual,
the kernel is simply called.

Operands and results are described by their *kind*, relative to ``x``
(operand 0) of shape ``L + F``: leading axes ``L`` (the rows: batch,
sequence, ...), then the ``num_axes`` normalized axes ``F``:

* ``"rows"``: shape ``L + F``, sharded like ``x`` (``x``, ``y``, ``dy``, ``dx``);
* ``"stats"``: shape ``L``, one number per row (the statistics);
* ``"params"``: shape ``F``, sharded like ``x``'s normalized axes (``scale``,
  ``bias``; as results, their gradients, which the per-shard function sums
  over the row axes itself).

Under ``vmap`` (custom partitioning has no batching rule) a call with no
``"params"`` result and no mapped parameter maps its mapped axis into one
more leading axis; any other call maps ``unbatched``, a plain JAX function of
the same maths (the partitioner then shards it like any other code).

Uneven shards (an axis whose size the number of its shards does not divide,
which only an Auto mesh makes) would give the kernel padded blocks whose
padding enters its sums: such an axis is taken whole for the kernel, with a
warning that names it. (An Explicit mesh refuses uneven shards itself.)

What ``jax.export`` gets: a program for one device (the usual export) holds
the kernel itself and serializes. With inputs sharded in an Auto mesh it
holds a custom-partitioning call, which has no serialized form, so export
refuses it; in an Explicit mesh it holds a ``shard_map`` and exports.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.custom_batching import custom_vmap
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lnjax import _sharding

Array = jax.Array

KINDS = ("rows", "stats", "params")
"""The kinds of operands and results (see the module's docstring)."""


@dataclasses.dataclass(frozen=True)
class Call:
    """One per-shard call, described statically (hashable: one partition rule per call).

    ``local(*operands, row_axes, feature_axes, **static)`` computes one
    device's block of the results: ``row_axes`` and ``feature_axes`` are the
    mesh-axis names (tuples, empty when not sharded) over which its
    collectives complete the parameter sums and the row sums.
    ``unbatched(*operands, **static)`` computes the same results in plain JAX,
    for ``vmap``.
    """

    name: str  # for errors: what ran ("the Pallas row kernel")
    local: Callable[..., tuple[Array, ...]]
    unbatched: Callable[..., tuple[Array, ...]]
    static: tuple[tuple[str, Any], ...]  # keyword arguments of local and unbatched
    num_axes: int  # how many trailing axes of x are normalized
    in_kinds: tuple[str, ...]  # a kind per operand; operand 0 is x, of kind "rows"
    out_kinds: tuple[str, ...]  # a kind per result

    def run_local(self, *operands: Array, row_axes: tuple[str, ...] = (),
                  feature_axes: tuple[str, ...] = ()) -> tuple[Array, ...]:
        """``local`` on one block (or, with no axes, on the whole array)."""
        return tuple(self.local(*operands, row_axes=row_axes, feature_axes=feature_axes,
                                **dict(self.static)))

    def run_unbatched(self, *operands: Array) -> tuple[Array, ...]:
        return tuple(self.unbatched(*operands, **dict(self.static)))


def per_shard(call: Call, *operands: Array) -> tuple[Array, ...]:
    """``call.local`` run on each device's block of ``operands``, as one call.

    Args:
      call: the call (:class:`Call`).
      *operands: arrays of ``call.in_kinds``.

    Returns:
      The tuple of results, of ``call.out_kinds``.
    """
    return _batched(call)(*operands)


@functools.cache
def _batched(call: Call) -> Callable[..., tuple[Array, ...]]:
    def run(*operands: Array) -> tuple[Array, ...]:
        layout = _explicit_layout(call, operands)
        if layout is not None:
            return _shard_mapped(call, layout, operands)
        lead = operands[0].ndim - call.num_axes
        return tuple(_partitioned(call, lead)(*operands))

    batched = custom_vmap(run)

    @batched.def_vmap
    def rule(axis_size: int, in_batched: Any, *operands: Array) -> tuple:
        mapped_param = any(b and k == "params" for b, k in zip(in_batched, call.in_kinds))
        if mapped_param or "params" in call.out_kinds:
            out = jax.vmap(call.run_unbatched, in_axes=[0 if b else None for b in in_batched],
                           axis_size=axis_size)(*operands)
            return tuple(out), (True,) * len(call.out_kinds)
        lifted = [v if b or k == "params" else jnp.broadcast_to(v, (axis_size,) + v.shape)
                  for v, b, k in zip(operands, in_batched, call.in_kinds)]
        return per_shard(call, *lifted), (True,) * len(call.out_kinds)

    return batched


# --------------------------------------------------------------------------- layouts


@dataclasses.dataclass(frozen=True)
class _Layout:
    """Which mesh axes shard ``x``'s leading and normalized axes."""

    lead: tuple[_sharding.MeshAxes, ...]  # per leading axis
    feat: tuple[_sharding.MeshAxes, ...]  # per normalized axis

    @property
    def row_axes(self) -> tuple[str, ...]:
        return tuple(n for axes in self.lead for n in axes)

    @property
    def feature_axes(self) -> tuple[str, ...]:
        return tuple(n for axes in self.feat for n in axes)

    def spec(self, kind: str) -> P:
        per_axis = {"rows": self.lead + self.feat, "stats": self.lead, "params": self.feat}[kind]
        return _sharding.spec_of(per_axis)


def _check_even(call: Call, shape: tuple[int, ...], per_axis: tuple[_sharding.MeshAxes, ...],
                sizes: dict[str, int]) -> None:
    """Every sharded axis of ``x`` splits evenly over its shards, or a ``ValueError``."""
    for i, (n, axes) in enumerate(zip(shape, per_axis)):
        shards = math.prod(sizes[a] for a in axes)
        if axes and n % shards:
            where = "normalized" if i >= len(shape) - call.num_axes else "leading"
            raise ValueError(
                f"{call.name}: axis {i} of x (shape {shape}, a {where} axis) is sharded over "
                f"{list(axes)} ({shards} shards), which does not divide its size {n}; shard "
                "it evenly (a size divisible by the number of shards), or use "
                "implementation='xla'.")


def _even(call: Call, shape: tuple[int, ...], layout: _Layout, sizes: dict[str, int]) -> _Layout:
    """``layout`` with every unevenly sharded axis taken whole (and a warning naming it).

    An Auto mesh may split an axis into uneven blocks (the partitioner pads the
    last); a kernel run on a padded block would count the padding in its sums,
    so the axis is gathered for the kernel instead.
    """
    per_axis = list(layout.lead + layout.feat)
    for i, axes in enumerate(per_axis):
        shards = math.prod(sizes[a] for a in axes)
        if axes and shape[i] % shards:
            where = "normalized" if i >= len(shape) - call.num_axes else "leading"
            warnings.warn(
                f"{call.name}: axis {i} of x (shape {shape}, a {where} axis) is sharded over "
                f"{list(axes)} ({shards} shards), which does not divide its size {shape[i]}: "
                "the kernel takes it whole (an all-gather). Shard it evenly, or use "
                "implementation='xla', to keep it sharded.", UserWarning, stacklevel=2)
            per_axis[i] = ()
    lead = len(layout.lead)
    return _Layout(tuple(per_axis[:lead]), tuple(per_axis[lead:]))


def _explicit_layout(call: Call, operands: tuple[Array, ...]) -> _Layout | None:
    """The layout of ``x`` when an Explicit mesh shards it (or a parameter), else None."""
    x = operands[0]
    specs = [_sharding.explicit_spec(v) for v in operands]
    if all(s is None for s in specs):
        return None
    xspec = specs[0] if specs[0] is not None else ((),) * x.ndim
    lead = x.ndim - call.num_axes
    return _Layout(tuple(xspec[:lead]), tuple(xspec[lead:]))


def _shard_mapped(call: Call, layout: _Layout, operands: tuple[Array, ...]) -> tuple[Array, ...]:
    """The call as a ``shard_map`` over the Explicit mesh axes that shard ``x``."""
    x = operands[0]
    mesh = jax.typeof(x).sharding.mesh
    _check_even(call, x.shape, layout.lead + layout.feat, dict(mesh.shape))
    in_specs = tuple(layout.spec(k) for k in call.in_kinds)
    # Operands sharded otherwise than x's layout asks (FSDP parameters) are
    # resharded first: the gather of a parameter at its use.
    operands = tuple(v if _sharding.explicit_spec(v) == _spec_axes(s, v.ndim) else
                     jax.sharding.reshard(v, s) for v, s in zip(operands, in_specs))
    names = frozenset(layout.row_axes + layout.feature_axes)
    if not names:  # sharded only in a parameter: now gathered, nothing is per shard
        return call.run_local(*operands)
    body = functools.partial(call.run_local, row_axes=layout.row_axes,
                             feature_axes=layout.feature_axes)
    # check_vma=False: a Pallas kernel's outputs carry no record of how they vary
    # across devices. Nothing differentiates this shard_map (the derivative rules
    # sit outside it), and the body states its own collectives.
    out = jax.shard_map(body, mesh=mesh, in_specs=in_specs,
                        out_specs=tuple(layout.spec(k) for k in call.out_kinds),
                        axis_names=names, check_vma=False)(*operands)
    return tuple(out)


def _spec_axes(spec: P, ndim: int) -> tuple[_sharding.MeshAxes, ...] | None:
    """``spec`` in :func:`lnjax._sharding.explicit_spec`'s form (None when it shards nothing)."""
    out = []
    for i in range(ndim):
        entry = spec[i] if i < len(spec) else None
        out.append(() if entry is None else (entry if isinstance(entry, tuple) else (entry,)))
    return tuple(out) if any(out) else None


# --------------------------------------------------------------------------- custom partitioning


def _factors(call: Call, lead: int) -> dict[str, str]:
    """Shardy factor names per kind: ``l0 l1 ...`` for the leading axes, ``f0 ...`` for F."""
    lead_f = " ".join(f"l{i}" for i in range(lead))
    feat_f = " ".join(f"f{i}" for i in range(call.num_axes))
    return {"rows": f"{lead_f} {feat_f}".strip(), "stats": lead_f, "params": feat_f}


@functools.cache
def _partitioned(call: Call, lead: int) -> Any:
    """The call as a ``custom_partitioning`` for an ``x`` with ``lead`` leading axes."""
    factors = _factors(call, lead)

    def side(kinds: tuple[str, ...]) -> str:
        return ", ".join(factors[k] if factors[k] else "" for k in kinds)

    rule = f"{side(call.in_kinds)} -> {side(call.out_kinds)}"

    def layout_of(arg_shapes: Any) -> _Layout:
        sharding = arg_shapes[0].sharding
        spec = sharding.spec if isinstance(sharding, NamedSharding) else P()
        per_axis = _spec_axes(spec, len(arg_shapes[0].shape)) or ((),) * len(arg_shapes[0].shape)
        return _Layout(per_axis[:lead], per_axis[lead:])

    def shardings(mesh: Any, layout: _Layout, kinds: tuple[str, ...]) -> tuple:
        return tuple(NamedSharding(mesh, layout.spec(k)) for k in kinds)

    def partition(mesh: Any, arg_shapes: Any, result_shape: Any) -> tuple:
        layout = _even(call, tuple(arg_shapes[0].shape), layout_of(arg_shapes),
                       dict(mesh.shape))
        lower = functools.partial(call.run_local, row_axes=layout.row_axes,
                                  feature_axes=layout.feature_axes)
        return (mesh, lower, shardings(mesh, layout, call.out_kinds),
                shardings(mesh, layout, call.in_kinds))

    def infer(mesh: Any, arg_shapes: Any, result_shape: Any) -> tuple:
        return shardings(mesh, layout_of(arg_shapes), call.out_kinds)

    def whole(*operands: Array) -> tuple[Array, ...]:
        return call.run_local(*operands)

    fn = custom_partitioning(whole)
    fn.def_partition(partition=partition, infer_sharding_from_operands=infer,
                     sharding_rule=rule)
    return fn
