"""Layer-normalized recurrent networks: the step maths and the masked scan.

Pure ``jax.numpy``: the Linen and NNX modules create the parameters and call
the functions here. Each cell is described by a frozen *spec*
(:class:`LSTMSpec`, :class:`GRUSpec`, :class:`SimpleSpec`) whose methods are
pure functions of a parameter dict:

* ``input_path(params, x)``: the part of a step that depends on ``x_t``
  alone (``W_x x_t``, its layer norm and the bias). Because it does not
  depend on the carry, the sequence layers compute it for all time steps in
  one batched matmul before the scan: the *hoisted input path*.
* ``step(params, carry, xp)``: one time step given the input path ``xp``.
* ``cell(params, carry, x) = step(params, carry, input_path(params, x))``.

Equations (Ba, Kiros & Hinton 2016; ``LN(v; a)`` is layer norm with gain
``a`` and no bias, gate order ``i, f, g, o`` as in PyTorch and flax):

* LN-LSTM (Eqs. 20-22)::

      (i, f, g, o) = LN(W_h h_{t-1}; a_h) + LN(W_x x_t; a_x) + b
      c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
      h_t = sigmoid(o) * tanh(LN(c_t; a_c, b_c))

  each LN over the whole 4H gate vector, the carried ``c_t`` un-normalized.
  The paper writes a bias in each of the two gate layer norms and a third,
  ``b``; their sum is one bias, so lnjax keeps ``b`` alone.
* LN-GRU (Eqs. 26-28)::

      (z, r) = LN(W_h h_{t-1}; a_h) + LN(W_x x_t; a_x) + b_zr
      n      = tanh(LN(W x_t; a_x') + b_n + sigmoid(r) * (LN(U h_{t-1}; a_h') + b_u))
      h_t    = (1 - sigmoid(z)) * h_{t-1} + sigmoid(z) * n

  The gate and candidate parts are normalized separately; the kernels hold
  ``[W_x | W]`` and ``[W_h | U]`` side by side.
* LN-RNN (Eq. 4)::

      h_t = tanh(LN(W_h h_{t-1} + W_x x_t; a) + b)

  Here the layer norm is over the sum, so only the matmul ``W_x x_t`` is
  hoisted.

``layer_norm=False`` removes every layer norm and gives the plain cell; the
plain LSTM computes exactly what ``flax.linen.LSTMCell`` computes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import checkify

from lnjax import _sharding
from lnjax.normalization import layer_norm

Array = jax.Array
Params = dict[str, Array]

__all__ = [
    "CellSpec",
    "GRUSpec",
    "param_initializers",
    "LSTMSpec",
    "SimpleSpec",
    "hoisted_inputs",
    "masked_scan",
    "segment_layer_norm",
    "sequence",
]


def input_matmul(x: Array, kernel: Array, *, merge_leading: bool = True) -> Array:
    """``x @ kernel`` for the input path, arranged for a fast kernel gradient.

    The kernel's gradient is ``x^T @ dz`` summed over every leading axis.
    Written plainly, XLA:CPU gives that matmul a transposed copy of ``dz``
    (the large operand) and fuses the copy into the producer of ``dz`` as a
    strided write, which costs more than the whole layer norm. Multiplying
    ``x^T`` (the small operand, transposed once and held by a barrier so the
    transpose is not folded back) keeps ``dz`` row-major.

    The leading axes are merged into one (XLA:CPU's matmuls are fastest in
    two dimensions) only where that keeps any sharding: ``merge_leading`` and
    no leading axis but the first sharded in an Explicit mesh. Otherwise the
    same product runs over the leading axes as they are.
    """
    lead = x.shape[:-1]
    if len(lead) == 0:
        return x @ kernel
    dtype = jnp.result_type(x, kernel)
    spec = _sharding.explicit_spec(x)
    if merge_leading and (spec is None or not any(spec[1:])):
        x_t = lax.optimization_barrier(x.reshape(-1, x.shape[-1]).T.astype(dtype))
        z = lax.dot_general(x_t, kernel.astype(dtype), (((0,), (0,)), ((), ())))
        return z.reshape(lead + kernel.shape[-1:])
    x_t = lax.optimization_barrier(jnp.moveaxis(x, -1, 0).astype(dtype))
    return lax.dot_general(x_t, kernel.astype(dtype), (((0,), (0,)), ((), ())))


def segment_layer_norm(v: Array, scale: Array | None, segments: tuple[int, ...], *,
                       epsilon: float) -> Array:
    """Layer norm over consecutive segments of the last axis, then a gain.

    ``segments`` are the segment sizes (summing to ``v.shape[-1]``); each is
    normalized with its own mean and variance. ``scale`` has the full length.
    """
    if len(segments) == 1:
        return layer_norm(v, scale, epsilon=epsilon)
    if len(set(segments)) == 1:
        shape = v.shape[:-1] + (len(segments), segments[0])
        y = layer_norm(v.reshape(shape), epsilon=epsilon).reshape(v.shape)
    else:
        parts = jnp.split(v, np.cumsum(segments)[:-1], axis=-1)
        y = jnp.concatenate([layer_norm(p, epsilon=epsilon) for p in parts], axis=-1)
    return y if scale is None else y * scale


# --------------------------------------------------------------------------
# Cell specs.
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CellSpec:
    """What every LN cell spec holds (the base of :class:`LSTMSpec`, :class:`GRUSpec`,
    :class:`SimpleSpec`); ``gates`` is the number of H-blocks.

    Attributes:
      features: the number of hidden units H (required).
      layer_norm: the layer-normalized cell; ``False`` removes every layer norm
        and gives the plain cell (default ``True``).
      norm_per_gate: normalize each of the ``gates`` blocks of H summed inputs
        separately instead of all of them together (default ``False``).
      epsilon: added to the variance inside the square root of every layer norm
        (default ``1e-5``, as the authors' code).
      gate_fn: the gates' nonlinearity (default ``jax.nn.sigmoid``).
      activation_fn: the cell's other nonlinearity (default ``jnp.tanh``).
      name: the name in error messages (default ``"cell"``; the modules pass
        their class name).
    """

    features: int
    layer_norm: bool = True
    norm_per_gate: bool = False
    epsilon: float = 1e-5
    gate_fn: Callable[[Array], Array] = jax.nn.sigmoid
    activation_fn: Callable[[Array], Array] = jnp.tanh
    name: str = "cell"

    gates = 1

    def param_shapes(self, in_features: int) -> dict[str, tuple[tuple[int, ...], str]]:
        """``{name: (shape, role)}``; roles: kernel, recurrent_kernel, bias, scale, zeros."""
        h, g = self.features, self.gates
        shapes = {
            "input_kernel": ((in_features, g * h), "kernel"),
            "recurrent_kernel": ((h, g * h), "recurrent_kernel"),
            "bias": ((g * h,), "bias"),
        }
        if self.layer_norm:
            shapes.update(self._norm_shapes())
        return shapes

    def _norm_shapes(self):
        gh = self.gates * self.features
        return {"input_scale": ((gh,), "scale"), "recurrent_scale": ((gh,), "scale")}

    def check(self, params: Params, x: Any, carry: Any = None) -> None:
        """Clear errors for inputs that do not fit the parameters.

        ``x``: one step's input, or anything with its ``shape`` and ``ndim``.
        """
        expected = params["input_kernel"].shape[0]
        if x.ndim < 1 or x.shape[-1] != expected:
            raise ValueError(
                f"{self.name}: the inputs have shape {x.shape}, so {x.shape[-1] if x.ndim else 0} "
                f"features, but the parameters were made for {expected} input features "
                f"(input_kernel of shape {params['input_kernel'].shape}).")
        if carry is not None:
            for leaf in jax.tree.leaves(carry):
                if leaf.shape[-1:] != (self.features,) or leaf.shape[:-1] != x.shape[:-1]:
                    raise ValueError(
                        f"{self.name}: a carry of shape {leaf.shape} does not fit inputs of "
                        f"shape {x.shape} and {self.features} hidden features (expected "
                        f"{x.shape[:-1] + (self.features,)}).")

    def segments(self) -> tuple[int, ...]:
        h = self.features
        return (h,) * self.gates if self.norm_per_gate else (self.gates * h,)

    def carry_shapes(self, batch_shape: tuple[int, ...]) -> Any:
        return batch_shape + (self.features,)

    def input_path(self, params: Params, x: Array, *, merge_leading: bool = True) -> Array:
        """``LN(W_x x) + b`` for every position of ``x`` (the hoistable part).

        ``merge_leading``: whether the input matmul may merge ``x``'s leading
        axes (see :func:`input_matmul`).
        """
        z = input_matmul(x, params["input_kernel"], merge_leading=merge_leading)
        if self.layer_norm:
            z = segment_layer_norm(z, params["input_scale"], self.segments(),
                                   epsilon=self.epsilon)
        return z + params["bias"]

    def _recurrent_path(self, params: Params, h: Array) -> Array:
        z = h @ params["recurrent_kernel"]
        if self.layer_norm:
            z = segment_layer_norm(z, params["recurrent_scale"], self.segments(),
                                   epsilon=self.epsilon)
        return z

    def step(self, params: Params, carry: Any, xp: Array) -> tuple[Any, Array]:
        """One time step from the hoisted input ``xp``: each cell's own equations."""
        raise NotImplementedError

    def cell(self, params: Params, carry: Any, x: Array) -> tuple[Any, Array]:
        """One time step from the raw input ``x``."""
        self.check(params, x, carry)
        params = _sharding.gathered(params)  # an FSDP-sharded parameter, gathered before use
        return self.step(params, carry, self.input_path(params, x))


@dataclasses.dataclass(frozen=True)
class LSTMSpec(CellSpec):
    """LN-LSTM (equations 20-22), carry ``(c, h)``.

    Attributes:
      features: the number of hidden units H (required).
      layer_norm: the layer-normalized cell; ``False`` removes every layer norm
        and gives the plain cell (default ``True``).
      norm_per_gate: normalize each gate's H summed inputs separately (as
        TensorFlow's LayerNormBasicLSTMCell) instead of the whole 4H vector (default
        ``False``).
      epsilon: added to the variance inside the square root of every layer norm
        (default ``1e-5``, as the authors' code).
      gate_fn: the nonlinearity of the gates i, f, o (default ``jax.nn.sigmoid``).
      activation_fn: the nonlinearity of the candidate g and of the output
        (default ``jnp.tanh``).
      name: the name in error messages (default ``"cell"``; the modules pass
        their class name).
      carry_normalized_cell: carry ``LN(c_t)`` instead of ``c_t`` (as
        TensorFlow Addons' LayerNormLSTMCell; default ``False``: the paper carries
        ``c_t``).
    """

    carry_normalized_cell: bool = False
    gates = 4

    def _norm_shapes(self):
        h = self.features
        return {**super()._norm_shapes(), "cell_scale": ((h,), "scale"),
                "cell_bias": ((h,), "zeros")}

    def carry_shapes(self, batch_shape):
        shape = batch_shape + (self.features,)
        return (shape, shape)

    def step(self, params, carry, xp):
        c, h = carry
        gates = xp + self._recurrent_path(params, h)
        i, f, g, o = jnp.split(gates, 4, axis=-1)
        new_c = self.gate_fn(f) * c + self.gate_fn(i) * self.activation_fn(g)
        if self.layer_norm:
            normed_c = layer_norm(new_c, params["cell_scale"], params["cell_bias"],
                                  epsilon=self.epsilon)
        else:
            normed_c = new_c
        new_h = self.gate_fn(o) * self.activation_fn(normed_c)
        return (normed_c if self.carry_normalized_cell else new_c, new_h), new_h


@dataclasses.dataclass(frozen=True)
class GRUSpec(CellSpec):
    """LN-GRU (equations 26-28), carry ``h``.

    The kernels hold the gate part (z, r: 2H) and the candidate part (H) side
    by side; ``recurrent_bias`` is added to the candidate's recurrent path
    inside the reset gate.

    Attributes:
      features: the number of hidden units H (required).
      layer_norm: the layer-normalized cell; ``False`` removes every layer norm
        and gives the plain cell (default ``True``).
      norm_per_gate: normalize z, r and the candidate separately instead of the
        gates (2H) and the candidate (H) (default ``False``).
      epsilon: added to the variance inside the square root of every layer norm
        (default ``1e-5``, as the authors' code).
      gate_fn: the nonlinearity of the gates z, r (default ``jax.nn.sigmoid``).
      activation_fn: the candidate's nonlinearity (default ``jnp.tanh``).
      name: the name in error messages (default ``"cell"``; the modules pass
        their class name).
    """

    gates = 3

    def param_shapes(self, in_features):
        return {**super().param_shapes(in_features),
                "recurrent_bias": ((self.features,), "bias")}

    def segments(self):
        h = self.features
        return (h, h, h) if self.norm_per_gate else (2 * h, h)

    def step(self, params, carry, xp):
        h = carry
        hp = self._recurrent_path(params, h)
        n_feat = self.features
        z, r = jnp.split(xp[..., :2 * n_feat] + hp[..., :2 * n_feat], 2, axis=-1)
        candidate = self.activation_fn(
            xp[..., 2 * n_feat:]
            + self.gate_fn(r) * (hp[..., 2 * n_feat:] + params["recurrent_bias"]))
        u = self.gate_fn(z)
        new_h = (1 - u) * h + u * candidate
        return new_h, new_h


@dataclasses.dataclass(frozen=True)
class SimpleSpec(CellSpec):
    """LN-RNN (equation 4): ``h_t = tanh(LN(W_h h + W_x x; a) + b)``, carry ``h``.

    The layer norm is over the sum of both paths, so only ``W_x x`` is
    hoisted; the bias is the layer norm's bias.

    Attributes:
      features: the number of hidden units H (required).
      layer_norm: the layer-normalized cell; ``False`` removes every layer norm
        and gives the plain cell (default ``True``).
      norm_per_gate: no effect: the cell has one block of H (default ``False``).
      epsilon: added to the variance inside the square root of every layer norm
        (default ``1e-5``, as the authors' code).
      gate_fn: unused: the cell has no gate (default ``jax.nn.sigmoid``).
      activation_fn: the output's nonlinearity (default ``jnp.tanh``).
      name: the name in error messages (default ``"cell"``; the modules pass
        their class name).
    """

    def _norm_shapes(self):
        return {"scale": ((self.features,), "scale")}

    def input_path(self, params, x, *, merge_leading=True):
        return input_matmul(x, params["input_kernel"], merge_leading=merge_leading)

    def step(self, params, carry, xp):
        a = xp + carry @ params["recurrent_kernel"]
        if self.layer_norm:
            a = layer_norm(a, params["scale"], epsilon=self.epsilon)
        new_h = self.activation_fn(a + params["bias"])
        return new_h, new_h


def param_initializers(spec: CellSpec, in_features: int, *, kernel_init: Callable,
                       recurrent_kernel_init: Callable, bias_init: Callable
                       ) -> dict[str, tuple[tuple[int, ...], Callable]]:
    """``{name: (shape, init(key, shape, dtype))}`` for a cell's parameters.

    Kernels are initialized one H-block (gate) at a time, as flax's cells
    initialize one ``Dense`` per gate (so an orthogonal recurrent init is
    orthogonal per gate); gains start at 1 and the cell-norm bias at 0.
    """
    def blocks(init):
        def init_blocks(key, shape, dtype=jnp.float32):
            keys = jax.random.split(key, spec.gates)
            block = (shape[0], shape[1] // spec.gates)
            return jnp.concatenate([init(k, block, dtype) for k in keys], axis=-1)
        return init_blocks

    def ones(key, shape, dtype=jnp.float32):
        return jnp.ones(shape, dtype)

    def zeros(key, shape, dtype=jnp.float32):
        return jnp.zeros(shape, dtype)

    inits = {"kernel": blocks(kernel_init), "recurrent_kernel": blocks(recurrent_kernel_init),
             "bias": bias_init, "scale": ones, "zeros": zeros}
    return {name: (shape, inits[role])
            for name, (shape, role) in spec.param_shapes(in_features).items()}


# --------------------------------------------------------------------------
# Sequences.
# --------------------------------------------------------------------------


def hoisted_inputs(spec: CellSpec, params: Params, xs: Array, *,
                   merge_leading: bool = True) -> Array:
    """The input path for every time step at once: one ``(B*T, in) @ (in, G*H)`` matmul.

    ``merge_leading``: whether the leading axes of ``xs`` may be merged into
    one (see :func:`input_matmul`).
    """
    return spec.input_path(params, xs, merge_leading=merge_leading)


def masked_scan(step: Callable, carry: Any, xps: Array, *, valid: Array | None = None,
                reverse: bool = False, unroll: int = 1) -> tuple[Any, Array]:
    """Scan ``step`` over the leading (time) axis of ``xps``.

    Where ``valid[t]`` (shape ``(T, *batch)``) is False the carry passes
    through unchanged and the output is zero, so the final carry of a
    right-padded sequence is its carry at its last valid step. With
    ``reverse`` the scan runs from the last step to the first and the outputs
    stay in time order.
    """
    if valid is None:
        return lax.scan(step, carry, xps, reverse=reverse, unroll=unroll)

    def body(carry, inputs):
        xp, ok = inputs
        new_carry, y = step(carry, xp)
        keep = ok[..., None]
        new_carry = jax.tree.map(lambda n, o: jnp.where(keep, n, o), new_carry, carry)
        return new_carry, jnp.where(keep, y, jnp.zeros_like(y))

    return lax.scan(body, carry, (xps, valid), reverse=reverse, unroll=unroll)


def _check_lengths(seq_lengths: Any, batch_shape: tuple[int, ...], steps: int,
                   name: str) -> Array:
    """``seq_lengths`` as an array, checked against the batch shape and ``[0, steps]``.

    Concrete lengths out of range raise ``ValueError`` at trace time. Traced
    lengths (``jit`` arguments) cannot raise without a transformation that
    carries errors out, so they are clamped to ``[0, steps]`` (as JAX clamps
    out-of-range indices) and checked with :func:`jax.experimental.checkify.debug_check`:
    ``checkify.checkify(f, errors=checkify.user_checks)`` reports the same
    message; without ``checkify`` the check costs nothing.
    """
    lengths = jnp.asarray(seq_lengths)
    if not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise TypeError(f"{name}: seq_lengths must be integers, got {lengths.dtype}.")
    if lengths.shape != tuple(batch_shape):
        raise ValueError(f"{name}: seq_lengths of shape {lengths.shape} must have the batch "
                         f"shape {tuple(batch_shape)} of the inputs.")
    message = (f"{name}: seq_lengths must lie in [0, {steps}] (the sequence has {steps} "
               "steps)")
    if not isinstance(seq_lengths, jax.core.Tracer):
        concrete = np.asarray(seq_lengths)
        if concrete.size and (concrete.min() < 0 or concrete.max() > steps):
            raise ValueError(f"{message}; got min {concrete.min()}, max {concrete.max()}.")
    elif lengths.size:
        low, high = jnp.min(lengths), jnp.max(lengths)
        escaped = message.replace("{", "{{").replace("}", "}}")
        checkify.debug_check((low >= 0) & (high <= steps), escaped + "; got min {}, max {}.",
                             low, high)
        lengths = jnp.clip(lengths, 0, steps)
    return lengths


def flip_within_lengths(ys: Array, lengths: Array | None) -> Array:
    """Reverse each time-major sequence within its length; padding stays at the end."""
    steps = ys.shape[0]
    if lengths is None:
        return ys[::-1]
    t = jnp.arange(steps).reshape((steps,) + (1,) * lengths.ndim)
    idx = jnp.where(t < lengths, lengths - 1 - t, t)
    idx = idx.reshape(idx.shape + (1,) * (ys.ndim - idx.ndim))
    return jnp.take_along_axis(ys, jnp.broadcast_to(idx, ys.shape), axis=0)


def check_sequence_rank(name: str, xs: Array) -> None:
    """A sequence needs at least a time and a feature axis."""
    if xs.ndim < 2:
        raise ValueError(f"{name}: a sequence needs shape (*batch, time, features) "
                         f"(or (time, *batch, features) with time_major), got {xs.shape}.")


def run_layer(spec: CellSpec, params: Params, xs: Array, *, initial_carry: Any,
              make_carry: Callable[[tuple[int, ...]], Any], defaults: Any,
              seq_lengths: Array | None = None, **overrides: Any) -> Any:
    """The sequence layers' call: resolve options, make a carry if none is given, run.

    Args:
      spec, params, xs: as for :func:`sequence`.
      initial_carry: the carry to start from, or None.
      make_carry: ``make_carry(step_shape)`` builds the initial carry for one
        time step's input shape.
      defaults: the layer, whose attributes ``time_major``, ``return_carry``,
        ``reverse``, ``keep_order`` and ``unroll`` apply where ``overrides``
        (the call's keywords of the same names) are None.
      seq_lengths: as for :func:`sequence`.

    Returns:
      The outputs, or ``(carry, outputs)`` when ``return_carry``.
    """
    names = ("time_major", "return_carry", "reverse", "keep_order", "unroll")
    opt = {n: getattr(defaults, n) if overrides.get(n) is None else overrides[n] for n in names}
    if initial_carry is None:
        step_shape = xs.shape[1:] if opt["time_major"] else xs.shape[:-2] + xs.shape[-1:]
        initial_carry = make_carry(step_shape)
    carry, outputs = sequence(spec, params, xs, initial_carry, seq_lengths=seq_lengths,
                              time_major=opt["time_major"], reverse=opt["reverse"],
                              keep_order=opt["keep_order"], unroll=opt["unroll"])
    return (carry, outputs) if opt["return_carry"] else outputs


def _varying_axes(v: Any) -> frozenset:
    """The manual mesh axes ``v`` varies over (empty outside ``shard_map``)."""
    aval = jax.typeof(v)
    manual = getattr(aval, "manual_axis_type", None)  # jax >= 0.9
    if manual is not None:
        return frozenset(manual.varying)
    return frozenset(getattr(aval, "vma", frozenset()))


def _varying_like(carry: Any, like: Any) -> Any:
    """``carry`` marked as varying over every manual mesh axis that ``like`` varies over.

    Inside ``shard_map`` a carry made of constants (zeros) is the same on every
    device, while the step's result varies with each device's inputs; ``scan``
    needs both to have the same type.
    """
    axes = frozenset().union(*(_varying_axes(v) for v in jax.tree.leaves(like)))
    if not axes:
        return carry

    def cast(c):
        missing = tuple(sorted(axes - _varying_axes(c)))
        return lax.pcast(c, missing, to="varying") if missing else c

    return jax.tree.map(cast, carry)


def sequence(spec: CellSpec, params: Params, xs: Array, carry: Any, *,
             seq_lengths: Array | None = None, time_major: bool = False,
             reverse: bool = False, keep_order: bool = False,
             unroll: int = 1) -> tuple[Any, Array]:
    """Run a cell over a whole sequence with the hoisted input path.

    Args:
      spec: the cell.
      params: its parameters.
      xs: inputs ``(*batch, time, features)``, or ``(time, *batch, features)``
        with ``time_major``.
      carry: the initial carry (batch shape of ``xs``).
      seq_lengths: optional integer array of the batch shape: right-padded
        sequences. Outputs past a sequence's length are zero; the returned
        carry is the carry at its last valid step; padding never reaches a
        valid output or a gradient. Lengths must lie in ``[0, time]``: known
        (concrete) lengths outside raise ``ValueError``; traced ones (under
        ``jit``) are clamped to ``[0, time]``, and
        ``jax.experimental.checkify.checkify(f, errors=checkify.user_checks)``
        of the jitted function reports them with the same message.
      time_major: whether time is the leading axis of ``xs`` and the outputs.
      reverse: run from the last valid step to the first.
      keep_order: with ``reverse``, return the outputs in time order;
        otherwise in processing order (reversed within each length), as
        ``flax.linen.RNN`` does.
      unroll: scan unrolling.

    Returns:
      ``(final_carry, outputs)`` with outputs shaped like ``xs`` but with
      ``features`` hidden units.
    """
    check_sequence_rank(spec.name, xs)
    time_axis = 0 if time_major else xs.ndim - 2
    # The recurrence runs along time: under sharded jit the time axis is made
    # whole on every device first (the batch axes keep their sharding), and the
    # parameters too (an FSDP-sharded kernel is gathered once, not every step).
    xs = _sharding.gather_axis(xs, time_axis)
    params = _sharding.gathered(params)
    batch_shape = xs.shape[1:-1] if time_major else xs.shape[:-2]
    steps = xs.shape[time_axis]
    spec.check(params, jax.ShapeDtypeStruct(batch_shape + xs.shape[-1:], xs.dtype), carry)
    valid = None
    lengths = None
    if seq_lengths is not None:
        lengths = _check_lengths(seq_lengths, batch_shape, steps, spec.name)
        valid = jnp.arange(steps).reshape((steps,) + (1,) * len(batch_shape)) < lengths
        ok = valid if time_major else jnp.moveaxis(valid, 0, -1)
        xs = jnp.where(ok[..., None], xs, jnp.zeros((), xs.dtype))  # padding never enters
    if time_major:
        xps = hoisted_inputs(spec, params, xs, merge_leading=False)
    else:
        # Batch-major (*batch, T): merging the leading axes keeps a sharded batch
        # axis whole per device where there is one batch axis.
        xps = jnp.moveaxis(hoisted_inputs(spec, params, xs,
                                          merge_leading=len(batch_shape) == 1), -2, 0)
    carry = _varying_like(carry, (xps, params))
    carry = jax.tree.map(lambda c: _sharding.like_leading(c, xps[0], len(batch_shape)), carry)
    carry, ys = masked_scan(lambda c, xp: spec.step(params, c, xp), carry, xps,
                            valid=valid, reverse=reverse, unroll=unroll)
    if reverse and not keep_order:
        ys = flip_within_lengths(ys, lengths)
    if not time_major:
        ys = jnp.moveaxis(ys, 0, -2)
    return carry, ys
