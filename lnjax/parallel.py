"""Data-parallel training on a device mesh, with cross-device batch norm.

Imports :mod:`lnjax.steps` (the step and the epoch scan it runs on every
device) and no other lnjax module; :mod:`lnjax.training` (the fit loop)
imports this one.

Layer norm needs no communication between devices: each case is normalized
over its own summed inputs. Batch norm does, or it silently becomes "ghost"
batch norm over each device's slice of the batch. This module builds on JAX's
own SPMD machinery (a :func:`jax.make_mesh` mesh, ``shard_map``, and global
arrays assembled from each host's own devices' slices):

* :func:`make_mesh` -- a 1-D mesh over the first N devices (axis ``"data"``
  unless named otherwise).
* :func:`replicate`, :func:`shard` -- parameters replicated (each host placing
  its own copy), batches split along the mesh (for :func:`shard`, each host
  passes its own part of the batch); :func:`host_local` -- this host's copy of a
  replicated state.
* :func:`host_shard` -- this host's contiguous share of a data set.
* :func:`pad_for_devices` -- a global batch that does not divide by the device
  count is padded with weight-0 examples, and the batch-norm statistics are
  masked so the padding counts for nothing (exact, however uneven).
* :func:`host_device_flags` -- the ``XLA_FLAGS`` value that gives a CPU
  process N devices (for trying all of this on a laptop, in tests and in
  subprocesses).
* :func:`collectives` -- what a program compiled for sharded inputs sends
  between devices, read from the compiled HLO (exact: no timing involved).
* :func:`train_epoch` -- a whole epoch as one ``lax.scan`` of
  :func:`lnjax.steps.train_step` inside ``shard_map``: every host passes the
  same global batches and places its own devices' share; gradients summed
  over the mesh's axis (once: ``shard_map`` differentiates the replicated
  parameters to the summed gradient), loss sums ``psum``-ed, running
  statistics ``pmean``-ed, the state replicated.

Batch norm is synchronized when the model's batch-norm layers carry
``axis_name`` equal to the mesh's axis name (``AXIS`` for :func:`make_mesh`'s
default; their statistics are then merged across the mesh with Chan's formula,
each device weighted by its number of real examples), and per-device ("ghost")
when they carry ``axis_name=None``; the experiments switch with
``--per-device-bn``. A model that masks its batch norm says so with
``create_train_state(..., takes_mask=True)``.
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lnjax import steps

__all__ = ["AXIS", "COLLECTIVE_KINDS", "Collective", "collectives", "host_device_flags",
           "host_local", "host_shard", "make_mesh", "pad_for_devices", "replicate", "shard",
           "train_epoch"]

AXIS = "data"
"""The default name of the mesh axis the batch is split along (:func:`make_mesh`)."""


COLLECTIVE_KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all",
                    "collective-permute")
"""The HLO operations that move data between devices, as :func:`collectives` names them."""

_ITEM_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
               "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
_ARRAY = re.compile(r"(\w+)\[([\d,]*)\]")
_OP = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.+?)\s+(" + "|".join(COLLECTIVE_KINDS)
                 + r")(-done)?\(")


_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s*\(.*\)\s*->.*\{\s*$")
_WHILE = re.compile(r"\swhile\(.*body=%?([\w.\-]+)")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')


class Collective(NamedTuple):
    """One collective operation of a compiled program.

    ``arrays`` are the ``(dtype, shape)`` of the arrays it produces (an
    all-reduce of several arrays at once lists each); ``runs`` is how many
    times one run of the program executes it (more than 1 inside a loop with a
    known trip count, such as a ``lax.scan``).
    """

    kind: str  # one of COLLECTIVE_KINDS
    arrays: tuple[tuple[str, tuple[int, ...]], ...]  # (HLO dtype, shape) of each result
    runs: int = 1  # executions per run of the program

    @property
    def elements(self) -> int:
        """The number of elements it produces once (summed over its arrays)."""
        return sum(math.prod(shape) for _, shape in self.arrays)

    @property
    def nbytes(self) -> int:
        """The bytes it produces on each device, once (summed over its arrays)."""
        return sum(_ITEM_BYTES.get(dtype, 4) * math.prod(shape) for dtype, shape in self.arrays)

    @property
    def total_bytes(self) -> int:
        """The bytes it produces on each device over one run of the program."""
        return self.nbytes * self.runs


def collectives(program: Any) -> list[Collective]:
    """The collectives of a compiled program, in the order its HLO lists them.

    Args:
      program: a :class:`jax.stages.Compiled` (``jax.jit(f).lower(*args).compile()``)
        or its HLO text (``.as_text()``).

    Returns:
      A :class:`Collective` per all-reduce, all-gather, reduce-scatter,
      all-to-all and collective-permute (asynchronous pairs counted once, by
      their ``-done``), each with the number of times it runs: the product of
      the known trip counts of the loops around it.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from lnjax import parallel
      >>> parallel.collectives(jax.jit(jnp.sin).lower(jnp.ones(4)).compile())
      []
    """
    text = program if isinstance(program, str) else program.as_text()
    found: list[tuple[str, str, tuple]] = []  # (computation, kind, arrays)
    loops: list[tuple[str, str, int]] = []  # (computation holding the loop, its body, trips)
    current = ""
    for line in text.splitlines():
        head = _COMPUTATION.match(line)
        if head is not None:
            current = head.group(1)
            continue
        loop = _WHILE.search(line)
        if loop is not None:
            known = _TRIP.search(line)
            loops.append((current, loop.group(1), int(known.group(1)) if known else 1))
        op = _OP.match(line)
        if op is None:
            continue
        arrays = tuple((dtype, tuple(int(d) for d in dims.split(",") if d))
                       for dtype, dims in _ARRAY.findall(op.group(1)))
        found.append((current, op.group(2), arrays))
    # A loop body runs (trips x the runs of the computation holding the loop).
    runs: dict[str, int] = {}
    for _ in range(len(loops) + 1):
        for parent, body, trips in loops:
            runs[body] = trips * runs.get(parent, 1)
    return [Collective(kind, arrays, runs.get(comp, 1)) for comp, kind, arrays in found]


_HOST_DEVICES = "--xla_force_host_platform_device_count"


def host_device_flags(count: int | None, flags: str | None = None) -> str:
    """``XLA_FLAGS`` with XLA:CPU asked for ``count`` host devices (or for none).

    XLA reads the flag when JAX first uses a backend, so set it in
    ``os.environ["XLA_FLAGS"]`` before the first computation of the process
    (or in a subprocess's environment). Any earlier device count in ``flags``
    is replaced; the other flags are kept in order.

    Args:
      count: the number of CPU devices, ``>= 1``; ``None`` removes the flag
        (one CPU device, XLA's default).
      flags: the flags to start from (default: ``$XLA_FLAGS``, or none).

    Returns:
      The new value for ``XLA_FLAGS``.

    Raises:
      ValueError: if ``count`` is not a positive int (or ``None``).

    Example:
      >>> host_device_flags(8, "--xla_dump_to=/tmp/hlo")
      '--xla_dump_to=/tmp/hlo --xla_force_host_platform_device_count=8'
      >>> host_device_flags(None, "--xla_force_host_platform_device_count=8")
      ''
    """
    if count is not None and (isinstance(count, bool) or not isinstance(count, int)
                              or count < 1):
        raise ValueError(f"host_device_flags: count must be a positive int or None, got "
                         f"{count!r}.")
    current = os.environ.get("XLA_FLAGS", "") if flags is None else flags
    kept = [f for f in current.split() if f.split("=")[0] != _HOST_DEVICES]
    if count is not None:
        kept.append(f"{_HOST_DEVICES}={count}")
    return " ".join(kept)


def make_mesh(num_devices: int | None = None, *, axis_name: str = AXIS) -> jax.sharding.Mesh:
    """A 1-D mesh over the first ``num_devices`` devices (default: all).

    Args:
      num_devices: how many devices; ``None`` for all of ``jax.devices()``.
      axis_name: the mesh axis name.

    Returns:
      A :class:`jax.sharding.Mesh` with one axis.

    Example:
      >>> from lnjax import parallel
      >>> dict(parallel.make_mesh(1).shape)
      {'data': 1}
    """
    devices = jax.devices()
    n = len(devices) if num_devices is None else num_devices
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(devices):
        raise ValueError(f"make_mesh: num_devices must be an int in [1, {len(devices)}] "
                         f"(the devices available), got {num_devices!r}.")
    return jax.make_mesh((n,), (axis_name,), devices=devices[:n],
                         axis_types=(jax.sharding.AxisType.Auto,))


def replicate(tree: Any, mesh: jax.sharding.Mesh) -> Any:
    """``tree`` placed whole on every device of ``mesh``, from this process's own copy.

    Leaves already replicated over ``mesh`` are returned as they are. With one
    process the others are copied with :func:`jax.device_put`. With several
    (``jax.distributed``), every process holds the same values (a freshly
    created or restored state, or numpy arrays) and places them on its own
    devices only (:func:`jax.make_array_from_callback`): a cross-host
    ``device_put`` is not supported by every backend (CPU: "does not support
    cross-host device transfers").
    """
    sharding = NamedSharding(mesh, P())
    if sharding.is_fully_addressable:
        return jax.device_put(tree, sharding)

    def place(a):
        if isinstance(a, jax.Array) and a.sharding.is_equivalent_to(sharding, a.ndim):
            return a
        local = np.asarray(host_local(a))
        return jax.make_array_from_callback(local.shape, sharding, lambda index: local[index])

    return jax.tree.map(place, tree)


def host_local(tree: Any) -> Any:
    """This process's copy of a replicated tree, on its first local device.

    An array replicated over several devices (e.g. the state :func:`train_epoch`
    returns, on one process or several) becomes the single-device array held
    on this process's first device: what a computation outside the mesh, such
    as :func:`lnjax.steps.evaluate`, can use without every device repeating
    it. Other leaves are returned as they are.

    Raises:
      ValueError: a leaf spans other processes' devices and is not replicated.
    """
    def local(a):
        if not isinstance(a, jax.Array) or len(a.sharding.device_set) == 1:
            return a
        if a.is_fully_replicated:
            return a.addressable_data(0)
        if a.is_fully_addressable:
            return a
        raise ValueError(f"host_local: an array of shape {a.shape} is split over several "
                         f"processes ({a.sharding}); only replicated arrays have a local copy.")

    return jax.tree.map(local, tree)


def shard(local: Any, mesh: jax.sharding.Mesh, *, axis: int = 0) -> Any:
    """A global array split along ``axis`` over the mesh, from this host's part.

    With one host, ``local`` is the whole array. With several hosts, each host
    passes its own consecutive part (see :func:`host_shard`) and the global
    array is their concatenation along ``axis``
    (:func:`jax.make_array_from_process_local_data`).
    """
    spec = P(*([None] * axis + [mesh.axis_names[0]]))
    sharding = NamedSharding(mesh, spec)
    return jax.tree.map(lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a)),
                        local)


def host_shard(*arrays: Any, process_index: int | None = None,
               process_count: int | None = None) -> tuple[Any, ...]:
    """This host's contiguous share of each array (the first axis split evenly).

    Every host must see the same number of examples, so the remainder of the
    split is dropped. With one host this returns the arrays unchanged.
    """
    i = jax.process_index() if process_index is None else process_index
    n = jax.process_count() if process_count is None else process_count
    lengths = {len(a) for a in arrays}
    if len(lengths) != 1:
        raise ValueError(f"host_shard: arrays of different lengths {sorted(lengths)}.")
    per = lengths.pop() // n
    return tuple(a[i * per:(i + 1) * per] for a in arrays)


def pad_for_devices(xb: Any, yb: Any, num_devices: int) -> tuple[np.ndarray, ...]:
    """Pads the batch axis (axis 1) of ``(steps, batch, ...)`` arrays to a multiple of the devices.

    Returns:
      ``(xb, yb, wb)`` where ``wb`` is 1 for the real examples and 0 for the
      padding, which goes at the end of each batch (so the last devices hold
      fewer real examples). Losses, gradients and the statistics of
      :class:`lnjax.linen.BatchNorm` given ``mask`` ignore the padding.
    """
    xb, yb = np.asarray(xb), np.asarray(yb)
    n_steps, b = yb.shape[:2]
    padded = -(-b // num_devices) * num_devices
    wb = np.zeros((n_steps, padded), np.float32)
    wb[:, :b] = 1
    if padded == b:
        return xb, yb, wb
    pad = padded - b
    xb = np.concatenate([xb, np.zeros((n_steps, pad) + xb.shape[2:], xb.dtype)], 1)
    yb = np.concatenate([yb, np.zeros((n_steps, pad) + yb.shape[2:], yb.dtype)], 1)
    return xb, yb, wb


def _global_array(tree: Any, mesh: jax.sharding.Mesh, *, axis: int) -> Any:
    """Global arrays split along ``axis`` over ``mesh``, from the whole arrays every host holds.

    Each host places only the slices its own devices hold
    (:func:`jax.make_array_from_callback`), so this host's share is taken
    whatever the order of the mesh's devices.
    """
    spec = P(*([None] * axis + [mesh.axis_names[0]]))
    sharding = NamedSharding(mesh, spec)

    def place(a):
        a = np.asarray(a)
        return jax.make_array_from_callback(a.shape, sharding, lambda index: a[index])

    return jax.tree.map(place, tree)


@functools.lru_cache(maxsize=32)
def _epoch_fn(mesh: jax.sharding.Mesh, report: Callable | None,
              report_every: int) -> Callable[..., Any]:
    axis = mesh.axis_names[0]

    def total(tree):
        # With check_vma, shard_map differentiates the replicated parameters to their
        # gradient already summed over the mesh (a psum would multiply it by the device
        # count); the per-device loss, error and weight sums are summed here.
        grads, *sums = tree
        return (grads, *lax.psum(tuple(sums), axis))

    def local_epoch(state, batches):
        return steps.scan_epoch(
            state, batches, grad_reduce=total, report=report,
            report_every=report_every, report_when=lambda: lax.axis_index(axis) == 0,
            sync=lambda s: s.replace(batch_stats=lax.pmean(s.batch_stats, axis)),
            rng_fold=lax.axis_index(axis))  # each device draws its own dropout masks

    batch_spec = P(None, axis)
    fn = jax.shard_map(local_epoch, mesh=mesh, in_specs=(P(), batch_spec), out_specs=(P(), P()),
                       check_vma=True)
    return jax.jit(fn, donate_argnums=0)


def train_epoch(state: steps.TrainState, xb: Any, yb: Any, mesh: jax.sharding.Mesh, *,
                report: Callable | None = None,
                report_every: int = 1000) -> tuple[steps.TrainState, dict[str, jax.Array]]:
    """:func:`lnjax.steps.train_epoch`, data-parallel over ``mesh``.

    Every host passes the same global batches; each step's global batch (axis 1
    of ``xb``/``yb``) is split over the mesh's devices, and each host places
    only its own devices' share (with one host: all of it). A batch that does
    not divide by the device count is padded with weight-0 examples; if the
    model has batch norm, it must then take ``mask`` (as
    :class:`lnjax.linen.BatchNorm` does) and the state must be created with
    ``takes_mask=True``, or this raises a ``ValueError``. The gradients and loss
    sums are summed and the running statistics averaged over the mesh's axis,
    whatever its name. The result equals the single-device epoch on
    the whole batch, up to the order of floating-point sums.

    Args:
      state: a :class:`~lnjax.steps.TrainState` (replicated here; donated).
      xb: ``(steps, batch, ...)`` inputs: the global batches, the same on every host.
      yb: ``(steps, batch)`` integer labels, likewise global.
      mesh: a 1-D mesh, e.g. from :func:`make_mesh` (any axis name).
      report: optional progress callback (see :func:`lnjax.steps.train_epoch`),
        called from the mesh's first device only.
      report_every: steps between calls of ``report``.

    Returns:
      ``(state, {"loss", "error"})`` with per-step global means.
    """
    steps.check_epoch_shapes(xb, yb)
    n, batch = mesh.devices.size, np.shape(yb)[1]
    xb, yb, wb = pad_for_devices(xb, yb, n)
    if not wb.all() and not state.takes_mask and state.batch_stats:
        raise ValueError(
            f"train_epoch: a batch of {batch} does not divide over {n} devices "
            "and the model has batch norm but its state was created without "
            "`takes_mask=True`: the padding would enter the statistics. Choose a batch size "
            "divisible by the device count, or give the model's __call__ a `mask` that it "
            "passes to BatchNorm and create the state with `takes_mask=True`.")
    # Without a mask and without batch statistics, the weights alone keep the padding out.
    batches = _global_array({"x": xb, "y": yb, "weight": wb}, mesh, axis=1)
    state = replicate(state, mesh)
    fn = _epoch_fn(mesh, report, max(1, int(report_every)))
    return fn(state, batches)
