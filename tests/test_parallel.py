"""Data-parallel training on 8 CPU devices (tests/conftest.py forces them) against one device."""

import inspect

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

import lnjax
from lnjax import linen as lnn
from lnjax import parallel, steps, training
from tests import reference as ref

pytestmark = pytest.mark.skipif(
    jax.device_count() < 8,
    reason="needs 8 JAX devices (conftest.py sets --xla_force_host_platform_device_count=8)")

RNG = np.random.default_rng(0)
XB = RNG.random((4, 16, 20)).astype(np.float32)
YB = RNG.integers(0, 10, (4, 16)).astype(np.int32)
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")
F32_TOL = dict(rtol=2e-5, atol=2e-5)


class MLP(nn.Module):
    """Dense layers of ``hidden`` widths, each followed by the ``method``'s normalization
    (``"layernorm"``, ``"batchnorm"``) and ReLU, then a 10-way output layer (batch-normalized
    too for ``"batchnorm"``). ``mask``: the real examples of a padded batch (one value per
    example), kept out of batch norm's statistics."""

    method: str = "layernorm"
    hidden: tuple = (12, 12)
    unbiased: bool = False
    axis_name: str | None = None

    def norm(self, x, train, mask):
        if self.method == "batchnorm":
            return lnn.BatchNorm(use_running_average=not train, momentum=0.99,
                                 unbiased=self.unbiased, axis_name=self.axis_name)(x, mask=mask)
        return lnn.LayerNorm()(x)

    @nn.compact
    def __call__(self, x, *, train, mask=None):
        if mask is not None:
            mask = jnp.asarray(mask).reshape((x.shape[0], 1))
        x = x.reshape((x.shape[0], -1))
        for width in self.hidden:
            x = nn.relu(self.norm(nn.Dense(width, use_bias=False)(x), train, mask))
        x = nn.Dense(10, use_bias=self.method != "batchnorm")(x)
        return self.norm(x, train, mask) if self.method == "batchnorm" else x


def states(method, *, sync=True, lr=1e-3, takes_mask=False, axis_name=parallel.AXIS, tx=None):
    """The same MLP on one device and on a mesh (batch norm synchronized over ``axis_name``)."""
    tx = optax.adam(lr) if tx is None else tx
    one = training.create_train_state(MLP(method, hidden=(12, 12)), tx, XB[0], seed=0,
                                      takes_mask=takes_mask)
    many = training.create_train_state(
        MLP(method, hidden=(12, 12), axis_name=axis_name if sync else None),
        tx, XB[0], seed=0, takes_mask=takes_mask)
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


@pytest.mark.parametrize("method", ["layernorm", "batchnorm"])
def test_gradients_are_summed_over_the_mesh_once(method):
    """With SGD the update is proportional to the gradient: 8 devices step exactly as one.

    (Adam's update hardly changes when every gradient is scaled by the same factor, so
    the test above cannot see a gradient summed twice, i.e. multiplied by 8.)
    """
    one, many = states(method, tx=optax.sgd(0.1))
    s1, m1 = training.train_epoch(one, XB, YB)
    s8, m8 = parallel.train_epoch(many, XB, YB, parallel.make_mesh(8))
    assert max_diff((s1.params, s1.batch_stats), (s8.params, s8.batch_stats)) < 1e-5
    np.testing.assert_allclose(m1["loss"], m8["loss"], rtol=1e-6)


@pytest.mark.parametrize("method, takes_mask", [("batchnorm", True), ("layernorm", False)])
def test_uneven_batch_is_padded_and_masked_exactly(method, takes_mask):
    """13 real examples on 8 devices (2,2,2,2,2,2,1,0 after padding): the single-device result.

    Batch norm needs the mask (``takes_mask=True``); without batch statistics the
    weights alone keep the padding out.
    """
    xb, yb = XB[:, :13], YB[:, :13]
    one, many = states(method, takes_mask=takes_mask)
    s1, m1 = training.train_epoch(one, xb, yb)
    s8, m8 = parallel.train_epoch(many, xb, yb, parallel.make_mesh(8))
    assert max_diff((s1.params, s1.batch_stats), (s8.params, s8.batch_stats)) < 1e-5
    np.testing.assert_allclose(m1["loss"], m8["loss"], rtol=1e-6)


def test_a_mesh_axis_of_any_name_trains_like_one_device():
    """make_mesh(axis_name="batch"): the epoch's collectives use the mesh's own axis name."""
    xb, yb = XB[:, :13], YB[:, :13]
    one, many = states("batchnorm", takes_mask=True, axis_name="batch")
    mesh = parallel.make_mesh(8, axis_name="batch")
    assert mesh.axis_names == ("batch",)
    calls = []
    s1, m1 = training.train_epoch(one, xb, yb)
    s8, m8 = parallel.train_epoch(many, xb, yb, mesh, report=calls.append, report_every=2)
    jax.block_until_ready(s8.params)
    jax.effects_barrier()
    assert max_diff((s1.params, s1.batch_stats), (s8.params, s8.batch_stats)) < 1e-5
    np.testing.assert_allclose(m1["loss"], m8["loss"], rtol=1e-6)
    assert sorted(int(c) for c in calls) == [2, 4]  # from the mesh's first device only


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


def test_whether_a_model_takes_a_mask_is_the_states_flag_not_a_guess():
    """MLP's __call__ has a `mask` keyword, but only takes_mask=True makes the epoch pass it."""
    state = training.create_train_state(MLP("batchnorm", hidden=(4,)), optax.sgd(0.1), XB[0],
                                        seed=0)
    with pytest.raises(ValueError, match=r"a batch of 13 does not divide over 8 devices.*"
                                         r"takes_mask=True"):
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
    ref_sync = ref.batch_norm(x, axis=0)[0]
    ref_ghost = np.concatenate([ref.batch_norm(part, axis=0)[0]
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
    one, many = states("batchnorm", takes_mask=True)  # 12 examples pad to 16 on 8 devices
    kw = dict(epochs=2, batch_size=12, seed=0, progress=False)
    s1, h1 = training.fit(one, (x, y), **kw)
    s8, h8 = training.fit(many, (x, y), mesh=parallel.make_mesh(8), **kw)
    np.testing.assert_allclose(h1["train_loss"], h8["train_loss"], rtol=1e-5)
    assert max_diff(s1.params, s8.params) < 1e-5


# ------------------------------------------- cross-device batch norm (functional)


def _shard_map(f, mesh, in_specs, out_specs):
    """jit(shard_map(f)) that first places its inputs along the mesh."""
    from jax.sharding import NamedSharding
    mapped = jax.jit(jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs))
    specs = in_specs if isinstance(in_specs, tuple) else (in_specs,)

    def run(*args):
        return mapped(*(jax.device_put(a, NamedSharding(mesh, s)) for a, s in zip(args, specs)))
    return run


@pytest.fixture(scope="module")
def mesh():
    if jax.device_count() < 8:
        pytest.fail("the cross-device tests need 8 devices: XLA_FLAGS="
                    "--xla_force_host_platform_device_count=8 (tests/conftest.py sets it)")
    return jax.make_mesh((8,), ("data",))


def test_synchronized_batch_norm_equals_whole_batch(mesh):
    from jax.sharding import PartitionSpec as P
    x = (1e4 + np.random.default_rng(0).standard_normal((32, 5))).astype(np.float32)

    def per_device(xs):
        y, mean, var = lnjax.batch_norm(xs, axis_name="data")
        return y, mean, var

    y, mean, var = _shard_map(per_device, mesh, P("data"), (P("data"), P(), P()))(x)
    ry, rmean, rvar = ref.batch_norm(x)
    np.testing.assert_allclose(y, ry, **F32_TOL)
    np.testing.assert_allclose(mean, rmean, rtol=1e-7)
    np.testing.assert_allclose(var, rvar, rtol=1e-5)


def test_synchronized_batch_norm_with_uneven_masks(mesh):
    """Devices counting different numbers of examples give the whole batch's statistics."""
    from jax.sharding import PartitionSpec as P
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((32, 3)) * 2 + 5).astype(np.float32)
    mask = np.zeros((32, 1), bool)
    for d, n in enumerate([4, 1, 0, 3, 2, 4, 4, 1]):  # real examples per device of 4
        mask[4 * d:4 * d + n] = True

    def per_device(xs, ms):
        return lnjax.batch_norm(xs, mask=ms, axis_name="data")

    y, mean, var = _shard_map(per_device, mesh, (P("data"), P("data")),
                              (P("data"), P(), P()))(x, mask)
    ry, rmean, rvar = ref.batch_norm(x, mask=mask)
    np.testing.assert_allclose(mean, rmean, rtol=1e-6)
    np.testing.assert_allclose(var, rvar, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(y)[mask[:, 0]], ry[mask[:, 0]], **F32_TOL)


def test_per_device_batch_norm_uses_each_slice(mesh):
    """Without axis_name each device normalizes its own slice ("ghost" batch norm)."""
    from jax.sharding import PartitionSpec as P
    x = np.random.default_rng(2).standard_normal((32, 3)).astype(np.float32)
    y = _shard_map(lambda xs: lnjax.batch_norm(xs)[0], mesh, P("data"), P("data"))(x)
    expect = np.concatenate([ref.batch_norm(x[4 * d:4 * d + 4])[0] for d in range(8)])
    np.testing.assert_allclose(y, expect, **F32_TOL)
    assert np.max(np.abs(np.asarray(y) - ref.batch_norm(x)[0])) > 0.1


# ------------------------------------------------------------------ several hosts

_HOST = """
import os, sys
pid, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
import jax
import jax.numpy as jnp
jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2,
                           process_id=pid)
import numpy as np, optax
import flax.linen as nn
from jax.experimental import multihost_utils
from lnjax import linen as lnn
from lnjax import parallel, training
{mlp}
data = np.load(out + "/data.npz")
model = MLP("batchnorm", hidden=(12, 12), unbiased=True, axis_name=parallel.AXIS)
state = training.create_train_state(model, optax.sgd(0.1), data["xb"][0], seed=0,
                                    takes_mask=True)
mesh = parallel.make_mesh()
assert jax.process_count() == 2 and mesh.devices.size == 4 and len(mesh.local_devices) == 2
state, metrics = parallel.train_epoch(state, data["xb"], data["yb"], mesh)
leaves = jax.tree.leaves((state.params, state.batch_stats, metrics["loss"]))
leaves = [np.asarray(multihost_utils.process_allgather(a, tiled=True)) for a in leaves]
np.savez(f"{out}/host{pid}.npz", *leaves)
"""


def test_two_hosts_given_the_global_batches_equal_one_device(tmp_path):
    """Two processes of 2 CPU devices each, every one passing the same global (uneven) batches.

    Each host places only its own devices' share: were the two hosts' batches
    concatenated instead, batch norm's unbiased variance (n / (n - 1)) would see
    26 examples, not 13.
    """
    import os
    import socket
    import subprocess
    import sys

    xb, yb = XB[:, :13], YB[:, :13]
    np.savez(tmp_path / "data.npz", xb=xb, yb=yb)
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, XLA_FLAGS=parallel.host_device_flags(2),
               JAX_PLATFORMS="cpu", PYTHONPATH=os.path.dirname(os.path.dirname(lnjax.__file__)))
    script = _HOST.replace("{mlp}", inspect.getsource(MLP))  # the model compared with below
    hosts = [subprocess.Popen([sys.executable, "-c", script, str(i), str(port), str(tmp_path)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    try:
        logs = [h.communicate(timeout=240)[0] for h in hosts]
    finally:
        for h in hosts:
            h.kill()
    assert [h.returncode for h in hosts] == [0, 0], "\n".join(log[-3000:] for log in logs)
    # SGD: the update is proportional to the gradient, so a wrongly scaled gradient shows.
    one = training.create_train_state(MLP("batchnorm", hidden=(12, 12), unbiased=True),
                                      optax.sgd(0.1), xb[0], seed=0, takes_mask=True)
    s1, m1 = training.train_epoch(one, xb, yb)
    expect = jax.tree.leaves((s1.params, s1.batch_stats, m1["loss"]))
    for i in range(2):
        got = np.load(tmp_path / f"host{i}.npz")
        got = [got[f"arr_{k}"] for k in range(len(got.files))]
        assert max_diff(expect, got) < 1e-5


def test_host_local_gives_one_copy_of_a_state_replicated_over_local_devices():
    """fit evaluates this copy after a data-parallel epoch, not one per device."""
    state = {"w": parallel.replicate(jnp.arange(6.0), parallel.make_mesh(8)), "n": 3,
             "one": jnp.ones(2)}
    local = parallel.host_local(state)
    assert len(state["w"].devices()) == 8 and len(local["w"].devices()) == 1
    np.testing.assert_array_equal(local["w"], np.arange(6.0))
    assert local["n"] == 3 and local["one"] is state["one"]
    split = parallel.shard(np.arange(16.0), parallel.make_mesh(8))
    assert parallel.host_local(split) is split  # split over this process's devices: kept


class KeptUnits(nn.Module):
    """``w`` times the number of 64 units a 0.5 dropout keeps (scaled by 2), per example: the
    gradient for ``w`` is the mean kept count, so it tells which masks a step drew."""

    @nn.compact
    def __call__(self, x, *, train):
        w = self.param("w", nn.initializers.ones, ())
        kept = nn.Dropout(0.5, deterministic=not train)(jnp.ones((x.shape[0], 64)))
        return w * kept.sum(-1)


def test_each_device_draws_its_own_dropout_masks():
    """On a 2-device mesh, the step equals the mean of the two devices' steps with the
    device index folded into the keys (steps.train_step(rng_fold=i)), not a step in which
    both devices drew the same masks."""
    state = training.create_train_state(KeptUnits(), optax.sgd(1.0), np.zeros((1, 3)), seed=0,
                                        loss_fn=lambda out, y: out)
    xb, yb = np.zeros((1, 4, 3), np.float32), np.zeros((1, 4), np.float32)

    def grad(half, fold):
        batch = {"x": xb[0, 2 * half:2 * half + 2], "y": yb[0, 2 * half:2 * half + 2]}
        new, _ = steps.train_step(state, batch, rng_fold=fold)
        return 1.0 - float(new.params["w"])

    g0, g1, same = grad(0, 0), grad(1, 1), grad(0, None)
    mesh_state, _ = parallel.train_epoch(state, xb, yb, parallel.make_mesh(2))  # donates state
    assert g0 != g1  # the two devices' masks differ
    np.testing.assert_allclose(1.0 - float(mesh_state.params["w"]), (g0 + g1) / 2, rtol=1e-6)
    assert abs((1.0 - float(mesh_state.params["w"])) - same) > 1e-3


def test_host_device_flags():
    flags = "--xla_dump_to=/tmp/a --xla_force_host_platform_device_count=8 --xla_cpu_x=1"
    assert parallel.host_device_flags(2, flags) == (
        "--xla_dump_to=/tmp/a --xla_cpu_x=1 --xla_force_host_platform_device_count=2")
    assert parallel.host_device_flags(None, flags) == "--xla_dump_to=/tmp/a --xla_cpu_x=1"
    assert parallel.host_device_flags(3, "") == "--xla_force_host_platform_device_count=3"
    for bad in (0, -1, 2.0, True, "2"):
        with pytest.raises(ValueError, match="count must be a positive int"):
            parallel.host_device_flags(bad, "")
