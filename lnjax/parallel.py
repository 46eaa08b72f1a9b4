"""Data-parallel training on a device mesh, with cross-device batch norm.

Layer norm needs no communication between devices: each case is normalized
over its own summed inputs. Batch norm does, or it silently becomes "ghost"
batch norm over each device's slice of the batch. This module builds on JAX's
own SPMD machinery (a :func:`jax.make_mesh` mesh, ``shard_map``, and
:func:`jax.make_array_from_process_local_data` for multi-host input):

* :func:`make_mesh` -- a 1-D ``"data"`` mesh over the first N devices.
* :func:`replicate`, :func:`shard` -- parameters replicated, batches split along
  the mesh (each host passes its own part of the batch).
* :func:`host_shard` -- this host's contiguous share of a data set.
* :func:`pad_for_devices` -- a global batch that does not divide by the device
  count is padded with weight-0 examples, and the batch-norm statistics are
  masked so the padding counts for nothing (exact, however uneven).
* :func:`train_epoch` -- a whole epoch as one ``lax.scan`` of
  :func:`lnjax.training.train_step` inside ``shard_map``: gradients and loss
  sums ``psum``-ed over the mesh, running statistics ``pmean``-ed, the state
  replicated.

Batch norm is synchronized when the model's batch-norm layers carry
``axis_name=AXIS`` (their statistics are then merged across the mesh with
Chan's formula, each device weighted by its number of real examples), and
per-device ("ghost") when they carry ``axis_name=None``; the experiments
switch with ``--per-device-bn``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lnjax import training

AXIS = "data"
"""The name of the mesh axis the batch is split along."""


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
    """``tree`` placed whole on every device of ``mesh``."""
    return jax.device_put(tree, NamedSharding(mesh, P()))


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
    steps, b = yb.shape[:2]
    padded = -(-b // num_devices) * num_devices
    wb = np.zeros((steps, padded), np.float32)
    wb[:, :b] = 1
    if padded == b:
        return xb, yb, wb
    pad = padded - b
    xb = np.concatenate([xb, np.zeros((steps, pad) + xb.shape[2:], xb.dtype)], 1)
    yb = np.concatenate([yb, np.zeros((steps, pad) + yb.shape[2:], yb.dtype)], 1)
    return xb, yb, wb


def accepts_mask(state: training.TrainState) -> bool:
    """Whether the model's ``__call__`` takes a ``mask`` keyword (for masked batch norm)."""
    module = getattr(state.apply_fn, "__self__", None)
    if module is None:
        return False
    return "mask" in inspect.signature(type(module).__call__).parameters


def _psum(tree):
    return lax.psum(tree, AXIS)


@functools.lru_cache(maxsize=32)
def _epoch_fn(mesh: jax.sharding.Mesh, masked: bool, report: Callable | None,
              report_every: int):
    def local_epoch(state, batches):
        state, metrics = training.scan_epoch(
            state, batches, grad_reduce=_psum, pass_mask=masked, report=report,
            report_every=report_every, report_when=lambda: lax.axis_index(AXIS) == 0,
            sync=lambda s: s.replace(batch_stats=lax.pmean(s.batch_stats, AXIS)))
        return state, metrics

    batch_spec = P(None, mesh.axis_names[0])
    fn = jax.shard_map(local_epoch, mesh=mesh, in_specs=(P(), batch_spec), out_specs=(P(), P()))
    return jax.jit(fn, donate_argnums=0)


def train_epoch(state: training.TrainState, xb: Any, yb: Any, mesh: jax.sharding.Mesh, *,
                report: Callable | None = None,
                report_every: int = 1000) -> tuple[training.TrainState, dict[str, jax.Array]]:
    """:func:`lnjax.training.train_epoch`, data-parallel over ``mesh``.

    Each step's global batch (axis 1 of ``xb``/``yb``) is split over the
    devices; a batch that does not divide by the device count is padded and
    masked (the model must then take ``mask``, as :class:`lnjax.linen.BatchNorm`
    does, if it has batch norm). The result equals the single-device epoch on
    the whole batch, up to the order of floating-point sums.

    Args:
      state: a :class:`~lnjax.training.TrainState` (replicated here; donated).
      xb, yb: ``(steps, batch, ...)`` inputs and ``(steps, batch)`` labels: the
        global batches (one host) or this host's part of them (several hosts).
      mesh: from :func:`make_mesh`.
      report, report_every: progress callback, called from device 0 only.

    Returns:
      ``(state, {"loss", "error"})`` with per-step global means.
    """
    training._check_epoch(xb, yb)
    n = len(mesh.local_devices)  # this host's devices: xb holds this host's part
    xb, yb, wb = pad_for_devices(xb, yb, n)
    masked = not bool(wb.all())
    if masked and not accepts_mask(state):
        if state.batch_stats:
            raise ValueError(
                f"train_epoch: a batch of {np.shape(yb)[1]} does not divide over {n} devices "
                "and the model has batch norm but its __call__ takes no `mask`: the padding "
                "would enter the statistics. Choose a batch size divisible by the device "
                "count, or accept `mask` and pass it to BatchNorm.")
        masked = False  # no batch statistics: the weights alone keep the padding out
    batches = {"x": xb, "y": yb, "weight": wb}
    batches = shard(batches, mesh, axis=1)
    state = replicate(state, mesh)
    fn = _epoch_fn(mesh, masked, report, max(1, int(report_every)))
    return fn(state, batches)
