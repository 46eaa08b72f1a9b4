"""What lnjax reads of an array's sharding inside ``jax.jit``, in one place.

Under sharded ``jit`` the partitioner decides where work runs. In a mesh of
``AxisType.Explicit`` axes the sharding is part of each array's type, so
code traced there sees it, and every array it creates from a shape alone
(``jnp.ones``) is replicated unless told otherwise; in ``AxisType.Auto``
meshes the types say nothing and the partitioner propagates the inputs'
shardings after tracing. The helpers below let the normalizations keep an
input's sharding in both: constants take the sharding of the axes they
stand for, and parameters meet the input with the sharding of its feature
axes (what FSDP needs: the gather of a sharded parameter at its use).

The names here are public to the package (this module is private to it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, overload

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

Array = jax.Array

MeshAxes = tuple[str, ...]
"""The mesh axes that shard one array axis (empty: not sharded)."""


def explicit_spec(x: Any) -> tuple[MeshAxes, ...] | None:
    """Per axis of ``x``, the ``Explicit`` mesh axes sharding it; None where none do.

    Auto mesh axes are left out: their sharding is not in the type.

    Example:
      >>> import jax.numpy as jnp
      >>> explicit_spec(jnp.ones((2, 3))) is None
      True
    """
    try:
        sharding = jax.typeof(x).sharding
    except (TypeError, AttributeError):
        return None
    mesh = getattr(sharding, "mesh", None)
    spec = getattr(sharding, "spec", None)
    if mesh is None or spec is None or getattr(mesh, "empty", True):
        return None
    explicit = {name for name, kind in zip(mesh.axis_names, mesh.axis_types)
                if kind == AxisType.Explicit}
    out = []
    for i in range(jnp.ndim(x)):
        entry = spec[i] if i < len(spec) else None
        names = () if entry is None else (entry if isinstance(entry, tuple) else (entry,))
        out.append(tuple(n for n in names if n in explicit))
    return tuple(out) if any(out) else None


def _entry(axes: MeshAxes) -> Any:
    """A ``PartitionSpec`` entry for one array axis."""
    if not axes:
        return None
    return axes[0] if len(axes) == 1 else axes


def spec_of(axes: Sequence[MeshAxes]) -> P:
    """A ``PartitionSpec`` from per-axis mesh axes."""
    return P(*(_entry(a) for a in axes))


def full_like_axes(x: Array, dims: Sequence[int], value: Any, dtype: Any = None) -> Array:
    """An array of ``x.shape[dims]`` filled with ``value``, sharded as ``x`` along ``dims``.

    In an Explicit mesh a constant built from a shape is replicated; combined
    with a sharded array in a contraction, that can make the partitioner
    gather the sharded one. Built here, the constant carries the sharding of
    the axes it stands for.
    """
    shape = tuple(x.shape[d] for d in dims)
    dtype = x.dtype if dtype is None else dtype
    spec = explicit_spec(x)
    if spec is None or not any(spec[d] for d in dims):
        return jnp.full(shape, value, dtype)
    return jnp.full(shape, value, dtype, out_sharding=spec_of([spec[d] for d in dims]))


def match_feature_axes(p: Array | None, x: Array, dims: Sequence[int]) -> Array | None:
    """Parameter ``p`` (of ``x.shape[dims]``) resharded as ``x`` is along ``dims``.

    Only in Explicit meshes, where a parameter sharded otherwise (FSDP: over
    the data axis) cannot meet ``x`` in an elementwise product; there this is
    the all-gather (or slice) of ``p`` that plain code would have to write.
    Elsewhere ``p`` is returned as it is.
    """
    if p is None:
        return None
    pspec, xspec = explicit_spec(p), explicit_spec(x)
    want = tuple(xspec[d] if xspec else () for d in dims)
    have = pspec if pspec is not None else ((),) * len(dims)
    if tuple(have) == want or (pspec is None and xspec is None):
        return p
    return jax.sharding.reshard(p, spec_of(want))


def check_axis_name(axis_name: Any, *, fn: str, name: str = "axis_name") -> None:
    """An ``axis_name`` must be bound by ``shard_map``/``pmap``/``vmap``, or a ``ValueError``.

    Under ``jax.jit`` with sharded inputs the statistics are already taken
    over every device: no axis name is needed there.
    """
    if axis_name is None:
        return
    try:
        lax.axis_size(axis_name)
    except NameError:
        raise ValueError(
            f"{fn}: {name}={axis_name!r} is not bound here: {name} names an axis of "
            "jax.shard_map, jax.pmap or jax.vmap. Under jax.jit with sharded inputs leave "
            f"{name}=None: the statistics over a sharded axis already cover every "
            "device.") from None


def gather_axis(x: Array, axis: int) -> Array:
    """``x`` with ``axis`` whole on every device; its other axes keep their sharding.

    For a computation that runs along ``axis`` (a recurrence over time). In an
    Explicit mesh this is a ``reshard``; in an Auto mesh set with
    :func:`jax.set_mesh` a sharding constraint that leaves the other axes to
    the partitioner.
    """
    spec = explicit_spec(x)
    if spec is not None:
        if not spec[axis]:
            return x
        new: list[MeshAxes] = list(spec)
        new[axis] = ()
        return jax.sharding.reshard(x, spec_of(new))
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not any(kind == AxisType.Auto for kind in mesh.axis_types):
        return x
    entries: list[Any] = [P.UNCONSTRAINED] * x.ndim
    entries[axis] = None
    return lax.with_sharding_constraint(x, P(*entries))


def like_leading(v: Array, x: Array, ndims: int) -> Array:
    """``v`` resharded so its first ``ndims`` axes are sharded as ``x``'s (Explicit meshes).

    For a value made from a shape (a recurrent layer's initial carry) that
    must meet ``x``'s sharded batch axes with the same type.
    """
    xspec = explicit_spec(x)
    if xspec is None:
        return v
    want = tuple(xspec[:ndims]) + ((),) * (v.ndim - ndims)
    have = explicit_spec(v) or ((),) * v.ndim
    return v if tuple(have) == want else jax.sharding.reshard(v, spec_of(want))


@overload
def match_broadcast(p: None, x: Array) -> None: ...
@overload
def match_broadcast(p: Array, x: Array) -> Array: ...
def match_broadcast(p: Array | None, x: Array) -> Array | None:
    """``p`` (of ``x``'s rank, broadcasting against it) resharded as ``x`` (Explicit meshes).

    Each axis of ``p`` of ``x``'s size takes ``x``'s sharding of that axis;
    each broadcast axis (size 1) is unsharded. Elsewhere ``p`` is returned as
    it is. Used on parameters and statistics before they meet ``x``.
    """
    if p is None:
        return None
    xspec, pspec = explicit_spec(x), explicit_spec(p)
    if xspec is None and pspec is None:
        return p
    xspec = xspec or ((),) * x.ndim
    want = tuple(xspec[i] if p.shape[i] == x.shape[i] and p.shape[i] != 1 else ()
                 for i in range(p.ndim))
    have = pspec or ((),) * p.ndim
    return p if tuple(have) == want else jax.sharding.reshard(p, spec_of(want))


def dense_operands(x: Array, w: Array) -> tuple[Array, Array]:
    """``x`` and a ``(in, out)`` kernel resharded for ``x @ w`` (Explicit meshes; else as they are).

    The kernel's output axis keeps the mesh axes ``x`` does not use; an FSDP
    kernel is gathered along its input axis, as plain code gathers it before
    use. Where ``x``'s features are sharded, the product either contracts them
    sharded and all-reduces the output (row-parallel), or gathers ``x``'s
    features and the kernel first: whichever moves fewer bytes (an all-reduce
    moves about twice its array).
    """
    xspec, wspec = explicit_spec(x), explicit_spec(w)
    if xspec is None and wspec is None:
        return x, w
    xspec = xspec or ((),) * x.ndim
    wspec = wspec or ((),) * w.ndim
    used = {name for axes in xspec for name in axes}
    w_out = tuple(n for n in wspec[-1] if n not in used)
    w_in = xspec[-1]
    if w_in:
        rows = math.prod(x.shape[:-1])
        if x.size + w.size <= 2 * rows * w.shape[-1]:
            x = jax.sharding.reshard(x, spec_of(list(xspec[:-1]) + [()]))
            w_in = ()
    want = (w_in, w_out)
    return x, (w if tuple(wspec) == want else jax.sharding.reshard(w, spec_of(want)))


def matmul(x: Array, w: Array, *, precision: Any = None) -> Array:
    """``x @ w`` for operands from :func:`dense_operands`: in an Explicit mesh the output is
    sharded as ``x``'s leading axes and ``w``'s output axis (a sharded contraction is
    all-reduced)."""
    xspec, wspec = explicit_spec(x), explicit_spec(w)
    if xspec is None and wspec is None:
        return jnp.matmul(x, w, precision=precision)
    xspec = xspec or ((),) * x.ndim
    w_out = (wspec or ((),) * w.ndim)[-1]
    out = spec_of(list(xspec[:-1]) + [w_out])
    return jnp.matmul(x, w, precision=precision, out_sharding=out)


def gathered(tree: Any) -> Any:
    """Every array of ``tree`` whole on every device (Explicit meshes; else as it is).

    For parameters used where no axis of theirs lines up with the input's (a
    recurrent cell's kernels, scanned over time): an FSDP-sharded parameter is
    gathered once, before use, as plain code gathers it.
    """
    def one(v: Any) -> Any:
        spec = explicit_spec(v)
        return v if spec is None else jax.sharding.reshard(v, P())
    return jax.tree.map(one, tree)
