"""Data-parallel training on 8 CPU devices (tests/conftest.py forces them) against one device."""

import jax
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from lnjax import linen as lnn
from lnjax import parallel, training
from lnjax.experiments.pi_mnist import MLP
from tests import reference

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices")

RNG = np.random.default_rng(0)
XB = RNG.random((4, 16, 20)).astype(np.float32)
YB = RNG.integers(0, 10, (4, 16)).astype(np.int32)
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")


def states(method, *, sync=True, lr=1e-3):
    one = training.create_train_state(MLP(method, hidden=(12, 12)), optax.adam(lr), XB[0], seed=0)
    many = training.create_train_state(
        MLP(method, hidden=(12, 12), axis_name=parallel.AXIS if sync else None),
        optax.adam(lr), XB[0], seed=0)
    return one, many


def max_diff(a, b):
    return max(float(np.abs(np.asarray(u) - np.asarray(v)).max())
               for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def test_make_mesh_sizes_and_errors():
    assert parallel.make_mesh().devices.size == 8
    assert parallel.make_mesh(2).devices.size == 2
    for bad in (0, 9, 2.0, True):
        with pytest.raises(ValueError, match="num_devices"):
            parallel.make_mesh(bad)


@pytest.mark.parametrize("method", ["layernorm", "batchnorm"])
def test_eight_devices_equal_one_device(method):
    one, many = states(method)
    s1, m1 = training.train_epoch(one, XB, YB)
    s8, m8 = parallel.train_epoch(many, XB, YB, parallel.make_mesh(8))
    assert max_diff((s1.params, s1.batch_stats), (s8.params, s8.batch_stats)) < 1e-5
    np.testing.assert_allclose(m1["loss"], m8["loss"], rtol=1e-6)
    assert int(s8.step) == 4
    # The parameters stay replicated: every device holds the same values.
    kernel = s8.params["Dense_0"]["kernel"]
    shards = [np.asarray(s.data) for s in kernel.addressable_shards]
    assert len(shards) == 8 and all((s == shards[0]).all() for s in shards)


def test_uneven_batch_is_padded_and_masked_exactly():
    """13 real examples on 8 devices (2,2,2,2,2,2,1,0 after padding): the single-device result."""
    xb, yb = XB[:, :13], YB[:, :13]
    one, many = states("batchnorm")
    s1, m1 = training.train_epoch(one, xb, yb)
    s8, m8 = parallel.train_epoch(many, xb, yb, parallel.make_mesh(8))
    assert max_diff((s1.params, s1.batch_stats), (s8.params, s8.batch_stats)) < 1e-5
    np.testing.assert_allclose(m1["loss"], m8["loss"], rtol=1e-6)


def test_pad_for_devices_layout():
    xb, yb, wb = parallel.pad_for_devices(XB[:, :13], YB[:, :13], 8)
    assert xb.shape == (4, 16, 20) and yb.shape == (4, 16)
    assert wb.sum(1).tolist() == [13] * 4 and (wb[:, 13:] == 0).all()
    assert (xb[:, 13:] == 0).all()


def test_uneven_batch_with_a_model_that_cannot_mask_is_an_error():
    class NoMask(MLP):
        def __call__(self, x, *, train):
            return super().__call__(x, train=train)

    state = training.create_train_state(NoMask("batchnorm", hidden=(4,)), optax.sgd(0.1),
                                        XB[0], seed=0)
    with pytest.raises(ValueError, match="does not divide over 8 devices"):
        parallel.train_epoch(state, XB[:, :13], YB[:, :13], parallel.make_mesh(8))


def _bn_forward(sync, x):
    bn = lnn.BatchNorm(use_running_average=False, epsilon=1e-5,
                       axis_name=parallel.AXIS if sync else None)
    variables = bn.init(jax.random.key(0), x)
    mesh = parallel.make_mesh(8)

    def local(v, x):
        y, _ = bn.apply(v, x, mutable=["batch_stats"])
        return y

    fn = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(), P(parallel.AXIS)),
                               out_specs=P(parallel.AXIS)))
    return np.asarray(fn(variables, x))


def test_per_device_batch_norm_differs_by_what_per_device_statistics_predict():
    x = RNG.normal(size=(32, 6)).astype(np.float32) * 2 + np.arange(32)[:, None] / 8
    synced = _bn_forward(True, x)
    ghost = _bn_forward(False, x)
    ref_sync = reference.batch_norm(x, axis=0)[0]
    ref_ghost = np.concatenate([reference.batch_norm(part, axis=0)[0]
                                for part in np.split(x, 8)])
    np.testing.assert_allclose(synced, ref_sync, atol=2e-5)
    np.testing.assert_allclose(ghost, ref_ghost, atol=2e-5)
    # The gap between the two is the one the per-device statistics predict, and it is large.
    np.testing.assert_allclose(ghost - synced, ref_ghost - ref_sync, atol=4e-5)
    assert np.abs(ref_ghost - ref_sync).max() > 0.5


def _forward_hlo(method, sync=True):
    model = MLP(method, hidden=(12, 12), axis_name=parallel.AXIS if sync else None)
    variables = model.init(jax.random.key(0), XB[0], train=False)
    mesh = parallel.make_mesh(8)

    def local(v, x):
        out = model.apply(v, x, train=True, mutable=["batch_stats"])
        return out[0]

    fn = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(), P(parallel.AXIS)),
                               out_specs=P(parallel.AXIS)))
    return fn.lower(variables, XB[0]).compile().as_text()


def test_layer_norm_forward_sends_nothing_between_devices():
    assert not [c for c in COLLECTIVES if c in _forward_hlo("layernorm")]
    # The check can fail: synchronized batch norm's forward does communicate.
    assert "all-reduce" in _forward_hlo("batchnorm", sync=True)
    assert not [c for c in COLLECTIVES if c in _forward_hlo("batchnorm", sync=False)]


def test_host_shard_splits_evenly_and_one_host_is_the_identity():
    a, b = np.arange(10), np.arange(10) * 2
    assert [x.tolist() for x in parallel.host_shard(a, b)] == [a.tolist(), b.tolist()]
    parts = [parallel.host_shard(a, process_index=i, process_count=3)[0] for i in range(3)]
    assert [p.tolist() for p in parts] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    with pytest.raises(ValueError, match="different lengths"):
        parallel.host_shard(a, b[:3])


def test_fit_with_a_mesh_equals_fit_on_one_device():
    x, y = XB.reshape(-1, 20), YB.reshape(-1)
    one, many = states("batchnorm")
    kw = dict(epochs=2, batch_size=12, seed=0, progress=False)
    s1, h1 = training.fit(one, (x, y), **kw)
    s8, h8 = training.fit(many, (x, y), mesh=parallel.make_mesh(8), **kw)
    np.testing.assert_allclose(h1["train_loss"], h8["train_loss"], rtol=1e-5)
    assert max_diff(s1.params, s8.params) < 1e-5


def test_scaling_benchmark_measures_each_device_count():
    from benchmarks import scaling

    rows = scaling.measure(quick=True, methods=("layernorm",), device_counts=(1, 2))
    assert [r["devices"] for r in rows] == [1, 2]
    assert all(r["steps_per_second"] > 0 for r in rows)
    assert "| layernorm (steps/s) |" in scaling.markdown(rows)
