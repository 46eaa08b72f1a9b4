"""LN-RNN, LN-GRU and LN-LSTM: cells, hoisted sequence layers, the masked scan."""

from __future__ import annotations

import functools

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.experimental import checkify
from jax.test_util import check_grads

from lnjax import linen as lnn
from lnjax import nnx as lnnx
from lnjax import recurrent as R
from tests import reference as ref

B, T, IN, H = 3, 6, 5, 4
LENGTHS = np.array([6, 2, 4])
TOL = dict(rtol=1e-5, atol=1e-5)

KINDS = {
    "lstm": (lnn.LNLSTMCell, lnn.LNLSTM, lnnx.LNLSTMCell, lnnx.LNLSTM),
    "gru": (lnn.LNGRUCell, lnn.LNGRU, lnnx.LNGRUCell, lnnx.LNGRU),
    "simple": (lnn.LNSimpleCell, lnn.LNSimpleRNN, lnnx.LNSimpleCell, lnnx.LNSimpleRNN),
}
# (kind, options) pairs covering every option of every cell.
VARIANTS = [
    ("lstm", {}), ("lstm", {"layer_norm": False}), ("lstm", {"norm_per_gate": True}),
    ("lstm", {"carry_normalized_cell": True}),
    ("gru", {}), ("gru", {"layer_norm": False}), ("gru", {"norm_per_gate": True}),
    ("simple", {}), ("simple", {"layer_norm": False}),
]
VARIANT_IDS = [k + "".join(f"-{o}" for o in opts) for k, opts in VARIANTS]


def _xs(seed=0, shape=(B, T, IN)):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _random_params(params, seed=1):
    """Random values for every parameter, so gains and biases matter too."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return treedef.unflatten([0.7 * jax.random.normal(k, leaf.shape) + (leaf == 1) * 1.0
                              for leaf, k in zip(leaves, keys)])


def _reference_step(kind, opts, params):
    p = {k: np.asarray(v) for k, v in params.items()}
    ln = opts.get("layer_norm", True)
    if kind == "lstm":
        return functools.partial(ref.lstm_step, p, layer_norm_on=ln,
                                 per_gate=opts.get("norm_per_gate", False),
                                 carry_normalized=opts.get("carry_normalized_cell", False))
    if kind == "gru":
        return functools.partial(ref.gru_step, p, layer_norm_on=ln,
                                 per_gate=opts.get("norm_per_gate", False))
    return functools.partial(ref.simple_step, p, layer_norm_on=ln)


def _initial_carry(kind, seed=2):
    rng = np.random.default_rng(seed)
    if kind == "lstm":
        return tuple(jnp.asarray(rng.standard_normal((B, H)) * 0.5, jnp.float32)
                     for _ in range(2))
    return jnp.asarray(rng.standard_normal((B, H)) * 0.5, jnp.float32)


def _setup(kind, opts):
    cell_cls, seq_cls = KINDS[kind][:2]
    seq = seq_cls(H, **opts)
    params = _random_params(seq.init(jax.random.key(0), _xs())["params"])
    return cell_cls(H, **opts), seq, params


def _valid(lengths):
    return (np.arange(T)[None, :] < np.asarray(lengths)[:, None])[..., None]


# ----------------------------------------------------------- the equations


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("kind,opts", VARIANTS, ids=VARIANT_IDS)
def test_sequence_layer_matches_float64_reference(kind, opts, reverse):
    _, seq, params = _setup(kind, opts)
    carry0 = _initial_carry(kind)
    xs = _xs()
    carry, ys = jax.jit(lambda p, x, c: seq.apply(
        {"params": p}, x, initial_carry=c, seq_lengths=LENGTHS, reverse=reverse,
        keep_order=True, return_carry=True))(params, xs, carry0)
    ref_carry, ref_ys = ref.run_sequence(_reference_step(kind, opts, params["cell"]), carry0,
                                         xs, LENGTHS, reverse=reverse)
    np.testing.assert_allclose(ys, ref_ys, **TOL)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), carry, ref_carry)


@pytest.mark.parametrize("kind,opts", VARIANTS, ids=VARIANT_IDS)
def test_cell_step_matches_float64_reference(kind, opts):
    cell, _, params = _setup(kind, opts)
    carry0, x = _initial_carry(kind), _xs()[:, 0]
    carry, y = cell.apply({"params": params["cell"]}, carry0, x)
    ref_carry, ref_y = _reference_step(kind, opts, params["cell"])(carry0, x)
    np.testing.assert_allclose(y, ref_y, **TOL)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), carry, ref_carry)


def test_lstm_layer_norm_is_over_the_whole_gate_vector_by_default():
    """The paper's LN-LSTM and the per-gate variant are different functions."""
    _, seq, params = _setup("lstm", {})
    y_whole = seq.apply({"params": params}, _xs())
    y_gate = lnn.LNLSTM(H, norm_per_gate=True).apply({"params": params}, _xs())
    assert np.abs(np.asarray(y_whole - y_gate)).max() > 1e-2


def test_gains_start_at_one_and_biases_at_zero():
    params = lnn.LNLSTM(H).init(jax.random.key(0), _xs())["params"]["cell"]
    for name in ("input_scale", "recurrent_scale", "cell_scale"):
        np.testing.assert_array_equal(params[name], 1.0)
    for name in ("bias", "cell_bias"):
        np.testing.assert_array_equal(params[name], 0.0)


def test_plain_lstm_computes_what_flax_lstm_cell_computes():
    """layer_norm=False with flax.linen.LSTMCell's weights gives its outputs."""
    flax_cell = fnn.LSTMCell(H)
    carry0 = _initial_carry("lstm")
    x = _xs()[:, 0]
    fp = _random_params(flax_cell.init(jax.random.key(0), carry0, x)["params"])
    gates = "ifgo"
    params = {
        "input_kernel": jnp.concatenate([fp[f"i{g}"]["kernel"] for g in gates], -1),
        "recurrent_kernel": jnp.concatenate([fp[f"h{g}"]["kernel"] for g in gates], -1),
        "bias": jnp.concatenate([fp[f"h{g}"]["bias"] for g in gates], -1),
    }
    ours = lnn.LNLSTMCell(H, layer_norm=False)
    np.testing.assert_allclose(ours.apply({"params": params}, carry0, x)[1],
                               flax_cell.apply({"params": fp}, carry0, x)[1], **TOL)
    rnn_ours = lnn.LNLSTM(H, layer_norm=False).apply({"params": {"cell": params}}, _xs())
    rnn_flax = fnn.RNN(flax_cell).apply({"params": {"cell": fp}}, _xs())
    np.testing.assert_allclose(rnn_ours, rnn_flax, **TOL)


# ------------------------------------------------ hoisted layer vs flax.linen.RNN


@pytest.mark.parametrize("reverse,keep_order", [(False, False), (True, False), (True, True)],
                         ids=["forward", "reverse", "reverse-keep-order"])
@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "seq_lengths"])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_hoisted_layer_equals_flax_rnn_over_the_cell(kind, lengths, reverse, keep_order):
    cell, seq, params = _setup(kind, {})
    xs = _xs()
    rnn = fnn.RNN(cell)
    assert jax.tree.structure(rnn.init(jax.random.key(0), xs)) == jax.tree.structure(
        seq.init(jax.random.key(0), xs))
    kwargs = dict(seq_lengths=lengths, reverse=reverse, keep_order=keep_order,
                  return_carry=True)
    carry_a, ys_a = jax.jit(lambda p: seq.apply({"params": p}, xs, **kwargs))(params)
    carry_b, ys_b = jax.jit(lambda p: rnn.apply({"params": p}, xs, **kwargs))(params)
    valid = _valid(LENGTHS if lengths is not None else [T] * B)
    np.testing.assert_allclose(np.where(valid, ys_a, 0), np.where(valid, ys_b, 0), **TOL)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), carry_a, carry_b)
    if lengths is not None:
        np.testing.assert_array_equal(np.where(valid, 0, ys_a), 0)  # zero past the length


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_nnx_hoisted_layer_equals_nnx_rnn(kind):
    cell_cls, seq_cls = KINDS[kind][2:]
    rnn = nnx.RNN(cell_cls(IN, H, rngs=nnx.Rngs(0)))
    seq = seq_cls(IN, H, rngs=nnx.Rngs(1))
    state = nnx.state(rnn, nnx.Param)
    nnx.update(rnn, _random_params(state))
    nnx.update(seq, nnx.state(rnn, nnx.Param))
    xs = _xs()
    for reverse in (False, True):
        ca, ya = rnn(xs, seq_lengths=LENGTHS, return_carry=True, reverse=reverse,
                     keep_order=True)
        cb, yb = seq(xs, seq_lengths=LENGTHS, return_carry=True, reverse=reverse,
                     keep_order=True)
        valid = _valid(LENGTHS)
        np.testing.assert_allclose(np.where(valid, ya, 0), yb, **TOL)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), ca, cb)


def test_linen_and_nnx_agree():
    _, seq, params = _setup("lstm", {})
    layer = lnnx.LNLSTM(IN, H, rngs=nnx.Rngs(0))
    for name, value in params["cell"].items():
        getattr(layer.cell, name)[...] = value
    np.testing.assert_allclose(layer(_xs()), seq.apply({"params": params}, _xs()), **TOL)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_layers_work_inside_bidirectional(kind):
    _, seq_cls, _, nnx_seq_cls = KINDS[kind]
    xs = _xs()
    bi = fnn.Bidirectional(seq_cls(H), seq_cls(H))
    variables = bi.init(jax.random.key(0), xs)
    out = bi.apply(variables, xs, seq_lengths=LENGTHS)
    fwd = seq_cls(H).apply({"params": variables["params"]["forward_rnn"]}, xs,
                           seq_lengths=LENGTHS)
    bwd = seq_cls(H).apply({"params": variables["params"]["backward_rnn"]}, xs,
                           seq_lengths=LENGTHS, reverse=True, keep_order=True)
    np.testing.assert_allclose(out, jnp.concatenate([fwd, bwd], -1), **TOL)
    nbi = nnx.Bidirectional(nnx_seq_cls(IN, H, rngs=nnx.Rngs(0)),
                            nnx_seq_cls(IN, H, rngs=nnx.Rngs(1)))
    assert nbi(xs, seq_lengths=LENGTHS).shape == (B, T, 2 * H)


def test_time_major_and_unroll_give_the_same_outputs():
    _, seq, params = _setup("lstm", {})
    xs = _xs()
    base = seq.apply({"params": params}, xs, seq_lengths=LENGTHS)
    tm = lnn.LNLSTM(H, time_major=True).apply({"params": params}, jnp.swapaxes(xs, 0, 1),
                                               seq_lengths=LENGTHS)
    unrolled = lnn.LNLSTM(H, unroll=3).apply({"params": params}, xs, seq_lengths=LENGTHS)
    np.testing.assert_allclose(jnp.swapaxes(tm, 0, 1), base, **TOL)
    np.testing.assert_allclose(unrolled, base, **TOL)


def test_extra_batch_axes():
    _, seq, params = _setup("gru", {})
    xs = _xs(shape=(2, B, T, IN))
    lengths = np.stack([LENGTHS, LENGTHS[::-1]])
    ys = seq.apply({"params": params}, xs, seq_lengths=lengths)
    for i in range(2):
        np.testing.assert_allclose(ys[i], seq.apply({"params": params}, xs[i],
                                                    seq_lengths=lengths[i]), **TOL)


# --------------------------------------------------------------- padding


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_junk_past_the_lengths_changes_nothing(kind):
    """Outputs, final carries and gradients ignore whatever follows each length."""
    _, seq, params = _setup(kind, {})
    xs = _xs()
    junk = np.asarray(xs).copy()
    junk[~_valid(LENGTHS)[..., 0]] = 1e3 * np.random.default_rng(7).standard_normal(
        (int((~_valid(LENGTHS)).sum()), IN))
    longer = np.concatenate([junk, 50.0 + np.zeros((B, 3, IN))], axis=1)
    w = jnp.asarray(np.random.default_rng(8).standard_normal((B, T, H)), jnp.float32)

    def loss(p, x):
        carry, ys = seq.apply({"params": p}, x, seq_lengths=LENGTHS, return_carry=True)
        return jnp.sum(w * ys[:, :T]) + sum(jnp.sum(c) for c in jax.tree.leaves(carry))

    results = [jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, x)
               for x in (xs, junk, longer)]
    for value, (gp, gx) in results[1:]:
        np.testing.assert_allclose(value, results[0][0], rtol=1e-6)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                     gp, results[0][1][0])
        np.testing.assert_allclose(np.where(_valid(LENGTHS), gx[:, :T], 0),
                                   np.where(_valid(LENGTHS), results[0][1][1], 0),
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(np.where(_valid(LENGTHS), 0, gx[:, :T]), 0)


# ------------------------------------------------------------ invariance


def _scaled(params, name, factor):
    cell = dict(params["cell"])
    cell[name] = cell[name] * factor
    return {"cell": cell}


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("name", ["input_kernel", "recurrent_kernel"])
def test_scaling_a_weight_matrix_leaves_every_output_unchanged(kind, name):
    """LN removes a positive scale of W_x or W_h; without LN the outputs move."""
    _, _, params = _setup(kind, {})
    seq_cls = KINDS[kind][1]
    xs = _xs()
    for layer_norm, invariant in [(True, True), (False, False)]:
        layer = seq_cls(H, epsilon=0.0, layer_norm=layer_norm)
        p = params if layer_norm else {"cell": {
            k: v for k, v in params["cell"].items() if "scale" not in k and "cell_bias" not in k}}
        # A random start: with epsilon 0 the layer norm of W_h h needs h != 0.
        carry = _initial_carry(kind)
        base = layer.apply({"params": p}, xs, seq_lengths=LENGTHS, initial_carry=carry)
        moved = layer.apply({"params": _scaled(p, name, 3.7)}, xs, seq_lengths=LENGTHS,
                            initial_carry=carry)
        change = float(np.abs(np.asarray(moved - base)).max())
        assert (change < 1e-5) if invariant else (change > 1e-2), (layer_norm, change)


def test_simple_rnn_invariant_to_scaling_both_matrices_together():
    _, seq, params = _setup("simple", {})
    layer = lnn.LNSimpleRNN(H, epsilon=0.0)
    both = _scaled(_scaled(params, "input_kernel", 2.5), "recurrent_kernel", 2.5)
    np.testing.assert_allclose(layer.apply({"params": both}, _xs()),
                               layer.apply({"params": params}, _xs()), rtol=1e-5, atol=1e-5)
    one = _scaled(params, "input_kernel", 2.5)  # the layer norm is over the sum: not invariant
    assert np.abs(np.asarray(layer.apply({"params": one}, _xs())
                             - layer.apply({"params": params}, _xs()))).max() > 1e-2


# ---------------------------------------------------------- online regime


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_one_step_at_a_time_with_batch_size_one(kind):
    cell, seq, params = _setup(kind, {})
    xs = _xs()[:1]
    ys = seq.apply({"params": params}, xs)
    step = jax.jit(lambda c, x: cell.apply({"params": params["cell"]}, c, x))
    carry = cell.initialize_carry(jax.random.key(0), (1, IN))
    for t in range(T):
        carry, y = step(carry, xs[:, t])
        np.testing.assert_allclose(y, ys[:, t], **TOL)


# ----------------------------------------------------------- gradients


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_gradients_forward_and_reverse_mode(kind):
    spec = {"lstm": R.LSTMSpec, "gru": R.GRUSpec, "simple": R.SimpleSpec}[kind](features=3)
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        inits = R.param_initializers(spec, 2, kernel_init=jax.nn.initializers.lecun_normal(),
                                     recurrent_kernel_init=jax.nn.initializers.orthogonal(),
                                     bias_init=jax.nn.initializers.zeros)
        params = {n: jnp.asarray(rng.standard_normal(shape) * 0.5 + (n.endswith("scale")))
                  for n, (shape, _) in inits.items()}
        xs = rng.standard_normal((2, 4, 2))
        # A random start keeps away from h = 0, where LN(W_h h) has a variance of
        # zero and a curvature of order 1/epsilon that finite differences cannot follow.
        carry0 = spec.carry_shapes((2,))
        carry0 = (tuple(rng.standard_normal(s) for s in carry0) if isinstance(carry0[0], tuple)
                  else rng.standard_normal(carry0))

        def f(p, x):
            return R.sequence(spec, p, x, carry0, seq_lengths=np.array([4, 2]))[1]

        check_grads(jax.jit(f), (params, xs), order=1, modes=("fwd", "rev"), atol=1e-6,
                    rtol=1e-6, eps=1e-6)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_two_thousand_steps_from_a_random_start_stay_finite(kind):
    cell_cls, seq_cls = KINDS[kind][:2]
    xs = _xs(shape=(2, 2000, IN))
    seq = seq_cls(8)
    params = seq.init(jax.random.key(0), xs[:, :3])["params"]
    carry0 = jax.tree.map(lambda c: 3 * jax.random.normal(jax.random.key(1), c.shape),
                          cell_cls(8).initialize_carry(jax.random.key(0), (2, IN)))

    def loss(p):
        return jnp.mean(seq.apply({"params": p}, xs, initial_carry=carry0) ** 2)

    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    assert np.isfinite(value)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


# ----------------------------------------------------------- bad input


def test_feature_size_different_from_the_parameters():
    _, seq, params = _setup("lstm", {})
    # Linen checks a parameter's shape when it is fetched, before lnjax sees it.
    with pytest.raises(Exception, match=r'"input_kernel" .* shape \(7, 16\), but the existing '
                                        r'parameter it received has shape \(5, 16\)'):
        seq.apply({"params": params}, _xs(shape=(B, T, 7)))
    spec = R.LSTMSpec(features=H, name="LNLSTM")
    with pytest.raises(ValueError, match=r"LNLSTM: the inputs have shape .* so 7 features, but "
                                         r"the parameters were made for 5 input features"):
        R.sequence(spec, params["cell"], _xs(shape=(B, T, 7)), _initial_carry("lstm"))
    cell = lnnx.LNGRUCell(IN, H, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="LNGRUCell: the inputs have shape"):
        cell(cell.initialize_carry((B, 7)), jnp.ones((B, 7)))


@pytest.mark.parametrize("lengths,pattern", [
    (np.array([6, -1, 2]), r"seq_lengths must lie in \[0, 6\].*min -1"),
    (np.array([6, 7, 2]), r"seq_lengths must lie in \[0, 6\].*max 7"),
])
def test_bad_seq_lengths(lengths, pattern):
    _, seq, params = _setup("gru", {})
    with pytest.raises(ValueError, match=pattern):
        seq.apply({"params": params}, _xs(), seq_lengths=lengths)
    # Concrete lengths inside a jitted function: the same error, at trace time.
    with pytest.raises(ValueError, match=pattern):
        jax.jit(lambda x: seq.apply({"params": params}, x, seq_lengths=lengths))(_xs())
    # Traced lengths: checkify reports the same message when the computation runs.
    run = jax.jit(lambda n: seq.apply({"params": params}, _xs(), seq_lengths=n))
    err, _ = checkify.checkify(run, errors=checkify.user_checks)(lengths)
    with pytest.raises(checkify.JaxRuntimeError, match=pattern):
        err.throw()
    err, _ = checkify.checkify(run, errors=checkify.user_checks)(np.clip(lengths, 0, T))
    assert err.get() is None


@pytest.mark.parametrize("kind", ["lstm", "gru", "simple"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_traced_seq_lengths_out_of_range_are_clamped(kind, reverse):
    """Under jit (without checkify) out-of-range lengths act as the nearest valid ones."""
    _, seq, params = _setup(kind, {})
    run = jax.jit(lambda n: seq.apply({"params": params}, _xs(), seq_lengths=n,
                                      reverse=reverse, return_carry=True))
    carry, ys = run(np.array([T + 3, -2, 4]))
    expected_carry, expected = run(np.array([T, 0, 4]))
    assert np.isfinite(ys).all()
    np.testing.assert_array_equal(ys, expected)
    jax.tree.map(np.testing.assert_array_equal, carry, expected_carry)
    np.testing.assert_array_equal(ys[1], 0)  # length 0: no valid step


def test_checkify_reports_traced_seq_lengths_in_every_layer():
    """Linen and NNX layers, through grad and vmap, report the message under checkify."""
    _, seq, params = _setup("lstm", {})
    loss = lambda x, n: seq.apply({"params": params}, x, seq_lengths=n).sum()
    checked = checkify.checkify(jax.jit(jax.grad(loss)), errors=checkify.user_checks)
    err, _ = checked(_xs(), jnp.array([1, 2, T + 1]))
    assert err.get().startswith(f"LNLSTM: seq_lengths must lie in [0, {T}] (the sequence has "
                                f"{T} steps); got min 1, max {T + 1}.")
    layer = lnnx.LNSimpleRNN(IN, H, rngs=nnx.Rngs(0))
    batched = jax.vmap(lambda n: layer(_xs(), seq_lengths=n))
    err, _ = checkify.checkify(jax.jit(batched), errors=checkify.user_checks)(
        jnp.array([[1, 2, 3], [1, -4, 3]]))
    assert "LNSimpleRNN: seq_lengths must lie in [0, 6]" in err.get()
    assert "got min -4, max 3." in err.get()


def test_seq_lengths_of_the_wrong_shape_or_dtype():
    _, seq, params = _setup("lstm", {})
    with pytest.raises(ValueError, match=r"seq_lengths of shape \(2,\) must have the batch shape"):
        seq.apply({"params": params}, _xs(), seq_lengths=np.array([1, 2]))
    with pytest.raises(TypeError, match="seq_lengths must be integers"):
        seq.apply({"params": params}, _xs(), seq_lengths=np.array([1.0, 2.0, 3.0]))


def test_wrong_rank_and_wrong_carry():
    _, seq, params = _setup("simple", {})
    with pytest.raises(ValueError, match=r"LNSimpleRNN: a sequence needs shape \(\*batch, time, "
                                         r"features\)"):
        seq.apply({"params": params}, jnp.ones((IN,)))
    cell, _, lstm_params = _setup("lstm", {})
    bad_carry = (jnp.zeros((B, H + 1)), jnp.zeros((B, H + 1)))
    with pytest.raises(ValueError, match=r"LNLSTMCell: a carry of shape \(3, 5\) does not fit"):
        cell.apply({"params": lstm_params["cell"]}, bad_carry, jnp.ones((B, IN)))
