"""NNX layer-normalized recurrent networks: the modules of :mod:`lnjax.linen.recurrent`.

Each cell is a drop-in for ``flax.nnx.RNN`` and ``flax.nnx.Bidirectional``,
with the equations, options and parameter names of its Linen twin. A sequence
layer's constructor takes its own options as keywords and passes every other
argument to its cell, which it holds under ``cell``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import dtypes

from lnjax import _checks as checks
from lnjax import _modules as docs
from lnjax import recurrent as R

__all__ = ["LNGRU", "LNGRUCell", "LNLSTM", "LNLSTMCell", "LNSimpleCell", "LNSimpleRNN"]

_DEFAULT_KERNEL_INIT = nnx.initializers.lecun_normal()
_ZEROS = nnx.initializers.zeros_init()
_ORTHOGONAL = nnx.initializers.orthogonal()

# Each module's attributes, in the order its Attributes section lists them.
_CELL = ("in_features", "hidden_features", "spec", "input_kernel", "recurrent_kernel", "bias")
_CELL_OPTIONS = ("dtype", "param_dtype", "carry_init")
_SIMPLE_CELL = (*_CELL, "scale", *_CELL_OPTIONS)
_GRU_CELL = (*_CELL, "recurrent_bias", "input_scale", "recurrent_scale", *_CELL_OPTIONS)
_LSTM_CELL = (*_CELL, "input_scale", "recurrent_scale", "cell_scale", "cell_bias",
              *_CELL_OPTIONS)
_SEQUENCE = ("cell", "time_major", "return_carry", "reverse", "keep_order", "unroll")


class _RecurrentBase(nnx.Module):
    """Parameters, options and carry of an LN cell (shared by cell and sequence layer)."""

    _spec_type: ClassVar[type[R.CellSpec]] = R.SimpleSpec

    def __init__(self, in_features: int, hidden_features: int, *, layer_norm: bool = True,
                 norm_per_gate: bool = False, epsilon: float = 1e-5,
                 gate_fn: Any = jax.nn.sigmoid, activation_fn: Any = jnp.tanh,
                 kernel_init: Any = _DEFAULT_KERNEL_INIT,
                 recurrent_kernel_init: Any = _ORTHOGONAL, bias_init: Any = _ZEROS,
                 dtype: Any = None, param_dtype: Any = jnp.float32,
                 carry_init: Any = _ZEROS, rngs: nnx.Rngs, **spec_extra: Any):
        self.in_features, self.hidden_features = in_features, hidden_features
        self.spec = self._spec_type(
            features=hidden_features, layer_norm=layer_norm, norm_per_gate=norm_per_gate,
            epsilon=epsilon, gate_fn=gate_fn, activation_fn=activation_fn,
            name=type(self).__name__, **spec_extra)
        self.dtype, self.param_dtype, self.carry_init = dtype, param_dtype, carry_init
        inits = R.param_initializers(self.spec, in_features, kernel_init=kernel_init,
                                     recurrent_kernel_init=recurrent_kernel_init,
                                     bias_init=bias_init)
        for name, (shape, init) in inits.items():
            setattr(self, name, nnx.Param(init(rngs.params(), shape, param_dtype)))
        self._param_names = tuple(inits)

    def _params(self, *arrays):
        values = [getattr(self, n)[...] for n in self._param_names]
        out = dtypes.promote_dtype((*values, *arrays), dtype=self.dtype)
        return dict(zip(self._param_names, out[:len(values)])), out[len(values):]

    def initialize_carry(self, input_shape: tuple[int, ...], rngs: Any = None,
                         carry_init: Any = None) -> Any:
        """The initial carry for inputs of ``input_shape`` (``(*batch, features)``)."""
        init = self.carry_init if carry_init is None else carry_init
        key = jax.random.key(0)
        if rngs is not None:
            key = (rngs.carry if isinstance(rngs, nnx.Rngs) else rngs)()
        shapes = self.spec.carry_shapes(tuple(input_shape[:-1]))
        if isinstance(shapes[0], tuple):
            keys = jax.random.split(key, len(shapes))
            return tuple(init(k, s, self.param_dtype) for k, s in zip(keys, shapes))
        return init(key, shapes, self.param_dtype)

    @property
    def num_feature_axes(self) -> int:
        return 1


class _Cell(_RecurrentBase, nnx.RNNCellBase):
    def __call__(self, carry, inputs):
        """One time step: ``(carry, x) -> (carry, y)``."""
        inputs = checks.as_inexact_array(inputs, fn=self.spec.name, name="inputs")
        params, (inputs,) = self._params(inputs)
        return self.spec.cell(params, carry, inputs)


@docs.attributes(docs.NNX_SIMPLE, names=_SIMPLE_CELL)
class LNSimpleCell(_Cell):
    """LN-RNN cell (equation 4), a drop-in cell for ``flax.nnx.RNN``.

    Same equations, options (the constructor's keywords, with the same
    defaults) and parameter names as :class:`lnjax.linen.LNSimpleCell`.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from lnjax import nnx as lnnx
      >>> rnn = nnx.RNN(lnnx.LNSimpleCell(3, 8, rngs=nnx.Rngs(0)))
      >>> rnn(jnp.ones((2, 5, 3))).shape
      (2, 5, 8)
    """


@docs.attributes(docs.NNX_GRU, names=_GRU_CELL)
class LNGRUCell(_Cell):
    """LN-GRU cell (equations 26-28), a drop-in cell for ``flax.nnx.RNN``.

    Same equations, options (the constructor's keywords) and parameter names
    as :class:`lnjax.linen.LNGRUCell`.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from lnjax import nnx as lnnx
      >>> cell = lnnx.LNGRUCell(3, 4, rngs=nnx.Rngs(0))
      >>> cell(cell.initialize_carry((2, 3)), jnp.ones((2, 3)))[1].shape
      (2, 4)
    """

    _spec_type = R.GRUSpec


@docs.attributes(docs.NNX_LSTM, names=_LSTM_CELL)
class LNLSTMCell(_Cell):
    """LN-LSTM cell (equations 20-22), a drop-in cell for ``flax.nnx.RNN``.

    The equations, options (the constructor's keywords) and parameter names of
    :class:`lnjax.linen.LNLSTMCell`.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from lnjax import nnx as lnnx
      >>> rnn = nnx.RNN(lnnx.LNLSTMCell(3, 8, rngs=nnx.Rngs(0)))
      >>> rnn(jnp.ones((2, 5, 3))).shape
      (2, 5, 8)
    """

    _spec_type = R.LSTMSpec

    def __init__(self, in_features: int, hidden_features: int, *,
                 carry_normalized_cell: bool = False, **kwargs: Any):
        super().__init__(in_features, hidden_features,
                         carry_normalized_cell=carry_normalized_cell, **kwargs)


class _Sequence(nnx.Module):
    """A cell over a whole sequence with the input path hoisted; state under ``cell``."""

    _cell_type: type = LNSimpleCell

    def __init__(self, in_features: int, hidden_features: int, *, time_major: bool = False,
                 return_carry: bool = False, reverse: bool = False, keep_order: bool = False,
                 unroll: int = 1, **cell_kwargs: Any):
        self.cell = self._cell_type(in_features, hidden_features, **cell_kwargs)
        self.time_major, self.return_carry = time_major, return_carry
        self.reverse, self.keep_order, self.unroll = reverse, keep_order, unroll

    def __call__(self, inputs, *, initial_carry=None, rngs=None, seq_lengths=None,
                 return_carry=None, time_major=None, reverse=None, keep_order=None):
        """Same keywords as ``flax.nnx.RNN.__call__`` (so it works in ``nnx.Bidirectional``)."""
        cell = self.cell
        spec = dataclasses.replace(cell.spec, name=type(self).__name__)
        inputs = checks.as_inexact_array(inputs, fn=spec.name, name="inputs")
        R.check_sequence_rank(spec.name, inputs)
        params, (inputs,) = cell._params(inputs)  # noqa: SLF001 (the cell of this module)
        return R.run_layer(
            spec, params, inputs, initial_carry=initial_carry,
            make_carry=lambda shape: cell.initialize_carry(shape, rngs),
            defaults=self, seq_lengths=seq_lengths, return_carry=return_carry,
            time_major=time_major, reverse=reverse, keep_order=keep_order)


@docs.attributes(docs.RECURRENT, names=_SEQUENCE)
class LNSimpleRNN(_Sequence):
    """An LN-RNN over a sequence; its state is :class:`LNSimpleCell`'s under ``cell``.

    Attributes:
      cell: the :class:`LNSimpleCell` that holds the parameters and the options.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from lnjax import nnx as lnnx
      >>> lnnx.LNSimpleRNN(3, 8, rngs=nnx.Rngs(0))(jnp.ones((2, 5, 3))).shape
      (2, 5, 8)
    """


@docs.attributes(docs.RECURRENT, names=_SEQUENCE)
class LNGRU(_Sequence):
    """An LN-GRU over a sequence, input path hoisted; state :class:`LNGRUCell`'s under ``cell``.

    Attributes:
      cell: the :class:`LNGRUCell` that holds the parameters and the options.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from lnjax import nnx as lnnx
      >>> lnnx.LNGRU(3, 8, rngs=nnx.Rngs(0))(jnp.ones((2, 5, 3))).shape
      (2, 5, 8)
    """

    _cell_type = LNGRUCell


@docs.attributes(docs.RECURRENT, names=_SEQUENCE)
class LNLSTM(_Sequence):
    """An LN-LSTM over a sequence, input path hoisted; state :class:`LNLSTMCell`'s under ``cell``.

    Attributes:
      cell: the :class:`LNLSTMCell` that holds the parameters and the options.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from lnjax import nnx as lnnx
      >>> layer = lnnx.LNLSTM(3, 8, return_carry=True, rngs=nnx.Rngs(0))
      >>> (c, h), y = layer(jnp.ones((2, 5, 3)), seq_lengths=jnp.array([5, 1]))
      >>> y.shape, h.shape
      ((2, 5, 8), (2, 8))
    """

    _cell_type = LNLSTMCell
