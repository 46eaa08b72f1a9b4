"""Linen layer-normalized recurrent networks: LN-RNN, LN-GRU and LN-LSTM.

The cells (``LNSimpleCell``, ``LNGRUCell``, ``LNLSTMCell``) are drop-ins for
``flax.linen.RNN`` and ``flax.linen.Bidirectional``; the sequence layers
(``LNSimpleRNN``, ``LNGRU``, ``LNLSTM``) run a whole sequence with the input
path hoisted out of the time loop, with exactly their cell's parameters under
``cell``. The step maths and the masked scan are :mod:`lnjax.recurrent`'s.
"""

from __future__ import annotations

from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen import dtypes
from jax.nn import initializers

from lnjax import _checks as checks
from lnjax import _modules as docs
from lnjax import recurrent as R

__all__ = ["LNGRU", "LNGRUCell", "LNLSTM", "LNLSTMCell", "LNSimpleCell", "LNSimpleRNN"]


def _recurrent_params(mdl: nn.Module, spec: R.CellSpec, in_features: int) -> dict:
    """Create (or fetch) a cell's parameters in ``mdl``'s scope."""
    inits = R.param_initializers(spec, in_features, kernel_init=mdl.kernel_init,
                                 recurrent_kernel_init=mdl.recurrent_kernel_init,
                                 bias_init=mdl.bias_init)
    return {name: mdl.param(name, init, shape, mdl.param_dtype)
            for name, (shape, init) in inits.items()}


def _promote(mdl: nn.Module, params: dict, *arrays: Any) -> tuple[dict, list[Any]]:
    """Cast parameters and arrays to one dtype, as flax's cells do."""
    names = list(params)
    out = dtypes.promote_dtype(*params.values(), *arrays, dtype=mdl.dtype)
    return dict(zip(names, out[:len(names)])), out[len(names):]


class _Params(nn.Module):
    """Creates a recurrent cell's parameters under its own name (``cell``)."""

    spec: Any
    kernel_init: Any
    recurrent_kernel_init: Any
    bias_init: Any
    param_dtype: Any

    @nn.compact
    def __call__(self, in_features: int) -> dict:
        return _recurrent_params(self, self.spec, in_features)


class _RecurrentBase(nn.Module):
    """Fields and carry handling shared by the LN cells and sequence layers."""

    features: int
    layer_norm: bool = True
    norm_per_gate: bool = False
    epsilon: float = 1e-5
    gate_fn: Any = nn.sigmoid
    activation_fn: Any = nn.tanh
    kernel_init: Any = nn.initializers.lecun_normal()
    recurrent_kernel_init: Any = nn.initializers.orthogonal()
    bias_init: Any = initializers.zeros
    dtype: Any = None
    param_dtype: Any = jnp.float32
    carry_init: Any = initializers.zeros

    _spec_type: ClassVar[type[R.CellSpec]] = R.SimpleSpec
    _spec_extra: ClassVar[tuple[str, ...]] = ()  # option names passed on to the spec

    @nn.nowrap
    def spec(self) -> R.CellSpec:
        """The pure description of this cell (see :mod:`lnjax.recurrent`)."""
        extra = {k: getattr(self, k) for k in self._spec_extra}
        return self._spec_type(
            features=self.features, layer_norm=self.layer_norm,
            norm_per_gate=self.norm_per_gate, epsilon=self.epsilon, gate_fn=self.gate_fn,
            activation_fn=self.activation_fn, name=type(self).__name__, **extra)

    @nn.nowrap
    def initialize_carry(self, rng: jax.Array, input_shape: tuple[int, ...]) -> Any:
        """The initial carry for inputs of ``input_shape`` (``(*batch, features)``)."""
        shapes = self.spec().carry_shapes(tuple(input_shape[:-1]))
        if isinstance(shapes, tuple) and shapes and isinstance(shapes[0], tuple):
            keys = jax.random.split(rng, len(shapes))
            return tuple(self.carry_init(k, s, self.param_dtype) for k, s in zip(keys, shapes))
        return self.carry_init(rng, shapes, self.param_dtype)

    @property
    def num_feature_axes(self) -> int:
        return 1


class _CellCall(nn.Module):
    """``__call__(carry, x) -> (carry, y)``: one step, a drop-in for flax's cells."""

    @nn.compact
    def __call__(self, carry, inputs):
        """One time step; ``carry`` from :meth:`initialize_carry`."""
        spec = self.spec()
        inputs = checks.as_inexact_array(inputs, fn=spec.name, name="inputs")
        params = _recurrent_params(self, spec, inputs.shape[-1])
        params, (inputs,) = _promote(self, params, inputs)
        return spec.cell(params, carry, inputs)


class _SequenceCall(nn.Module):
    """A whole sequence with the input path hoisted out of the time loop."""

    time_major: bool = False
    return_carry: bool = False
    reverse: bool = False
    keep_order: bool = False
    unroll: int = 1

    @nn.compact
    def __call__(self, inputs, *, initial_carry=None, init_key=None, seq_lengths=None,
                 return_carry=None, time_major=None, reverse=None, keep_order=None):
        """Runs the cell over ``inputs`` ``(*batch, time, features)``.

        Same keywords as ``flax.linen.RNN.__call__``, so the layer works inside
        ``flax.linen.Bidirectional``. Outputs past ``seq_lengths`` are zero.
        Returns the outputs, or ``(carry, outputs)`` with ``return_carry``.
        """
        spec = self.spec()
        inputs = checks.as_inexact_array(inputs, fn=spec.name, name="inputs")
        R.check_sequence_rank(spec.name, inputs)
        params = _Params(spec=spec, kernel_init=self.kernel_init,
                         recurrent_kernel_init=self.recurrent_kernel_init,
                         bias_init=self.bias_init, param_dtype=self.param_dtype,
                         name="cell")(inputs.shape[-1])
        params, (inputs,) = _promote(self, params, inputs)
        key = jax.random.key(0) if init_key is None else init_key
        return R.run_layer(
            spec, params, inputs, initial_carry=initial_carry,
            make_carry=lambda shape: self.initialize_carry(key, shape),
            defaults=self, seq_lengths=seq_lengths, return_carry=return_carry,
            time_major=time_major, reverse=reverse, keep_order=keep_order)


class _LSTMBase(_RecurrentBase):
    carry_normalized_cell: bool = False
    _spec_type = R.LSTMSpec
    _spec_extra = ("carry_normalized_cell",)


class _GRUBase(_RecurrentBase):
    _spec_type = R.GRUSpec


@docs.attributes(docs.LINEN_SIMPLE)
class LNSimpleCell(_CellCall, _RecurrentBase, nn.RNNCellBase):
    """LN-RNN cell (the paper's equation 4): ``h' = tanh(LN(W_h h + W_x x; scale) + bias)``.

    A drop-in cell for ``flax.linen.RNN``/``Bidirectional``; ``layer_norm=False``
    gives the plain cell. Parameters: ``input_kernel``, ``recurrent_kernel``,
    ``bias`` and (with layer norm) ``scale``.

    Example:
      >>> import jax, jax.numpy as jnp, flax.linen as nn
      >>> from lnjax import linen as lnn
      >>> rnn = nn.RNN(lnn.LNSimpleCell(8))
      >>> variables = rnn.init(jax.random.key(0), jnp.ones((2, 5, 3)))
      >>> rnn.apply(variables, jnp.ones((2, 5, 3))).shape
      (2, 5, 8)
    """


@docs.attributes(docs.LINEN_GRU)
class LNGRUCell(_CellCall, _GRUBase, nn.RNNCellBase):
    """LN-GRU cell (equations 26-28), a drop-in cell for ``flax.linen.RNN``.

    See :class:`lnjax.recurrent.GRUSpec` for the equations. Parameters:
    ``input_kernel`` (in, 3H), ``recurrent_kernel`` (H, 3H), ``bias`` (3H),
    ``recurrent_bias`` (H), and with layer norm ``input_scale``,
    ``recurrent_scale`` (3H). ``norm_per_gate`` normalizes z, r and the
    candidate separately.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from lnjax import linen as lnn
      >>> cell = lnn.LNGRUCell(4)
      >>> carry = cell.initialize_carry(jax.random.key(0), (2, 3))
      >>> variables = cell.init(jax.random.key(1), carry, jnp.ones((2, 3)))
      >>> cell.apply(variables, carry, jnp.ones((2, 3)))[1].shape
      (2, 4)
    """


@docs.attributes(docs.LINEN_LSTM)
class LNLSTMCell(_CellCall, _LSTMBase, nn.RNNCellBase):
    """LN-LSTM cell (equations 20-22), a drop-in cell for ``flax.linen.RNN``.

    ``gates = LN(W_h h) + LN(W_x x) + b`` over the whole 4H vector (gate order
    i, f, g, o); ``c' = σ(f) c + σ(i) tanh(g)``; ``h' = σ(o) tanh(LN(c'))``;
    the carried ``c'`` is un-normalized. Options: ``layer_norm=False`` (the
    plain LSTM, computing what ``flax.linen.LSTMCell`` computes),
    ``norm_per_gate`` (TensorFlow's LayerNormBasicLSTMCell),
    ``carry_normalized_cell`` (TensorFlow Addons). Parameters:
    ``input_kernel`` (in, 4H), ``recurrent_kernel`` (H, 4H), ``bias`` (4H),
    and with layer norm ``input_scale``, ``recurrent_scale`` (4H),
    ``cell_scale``, ``cell_bias`` (H). Gains start at 1, biases at 0.

    Example:
      >>> import jax, jax.numpy as jnp, flax.linen as nn
      >>> from lnjax import linen as lnn
      >>> rnn = nn.RNN(lnn.LNLSTMCell(8))
      >>> variables = rnn.init(jax.random.key(0), jnp.ones((2, 5, 3)))
      >>> sorted(variables["params"]["cell"])[:3]
      ['bias', 'cell_bias', 'cell_scale']
    """


@docs.attributes(docs.LINEN_SIMPLE)
class LNSimpleRNN(_SequenceCall, _RecurrentBase):
    """An LN-RNN over a whole sequence; its parameters are :class:`LNSimpleCell`'s, under ``cell``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from lnjax import linen as lnn
      >>> layer = lnn.LNSimpleRNN(8)
      >>> variables = layer.init(jax.random.key(0), jnp.ones((2, 5, 3)))
      >>> layer.apply(variables, jnp.ones((2, 5, 3))).shape
      (2, 5, 8)
    """


@docs.attributes(docs.LINEN_GRU)
class LNGRU(_SequenceCall, _GRUBase):
    """An LN-GRU over a whole sequence with the input path hoisted.

    Its parameters are exactly :class:`LNGRUCell`'s, under ``cell``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from lnjax import linen as lnn
      >>> layer = lnn.LNGRU(8, return_carry=True)
      >>> variables = layer.init(jax.random.key(0), jnp.ones((2, 5, 3)))
      >>> carry, y = layer.apply(variables, jnp.ones((2, 5, 3)), seq_lengths=jnp.array([5, 2]))
      >>> carry.shape, y.shape
      ((2, 8), (2, 5, 8))
    """


@docs.attributes(docs.LINEN_LSTM)
class LNLSTM(_SequenceCall, _LSTMBase):
    """An LN-LSTM over a whole sequence with the input path hoisted.

    Its parameters are exactly :class:`LNLSTMCell`'s, under ``cell``.

    ``flax.linen.RNN(LNLSTMCell(...))`` and ``LNLSTM(...)`` share one
    parameter tree and compute the same outputs; ``LNLSTM`` computes
    ``LN(W_x x_t) + b`` for all steps in one matmul before the scan.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from lnjax import linen as lnn
      >>> layer = lnn.LNLSTM(8)
      >>> variables = layer.init(jax.random.key(0), jnp.ones((2, 5, 3)))
      >>> layer.apply(variables, jnp.ones((2, 5, 3)), reverse=True, keep_order=True).shape
      (2, 5, 8)
    """
