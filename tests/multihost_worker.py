"""One process of a two-process ``training.fit`` run, started by tests/test_training_multihost.py.

    python tests/multihost_worker.py PROCESS_ID PORT CHECKPOINT_DIR OUT_DIR
    python tests/multihost_worker.py PROCESS_ID PORT sharded OUT_DIR

Two of these (process ids 0 and 1, 2 CPU devices each through ``XLA_FLAGS``)
join with ``jax.distributed`` over localhost and train a small MLP with
layer norm and batch norm synchronized over the 4-device mesh, on data drawn
from a seed, with checkpoints every epoch in the shared ``CHECKPOINT_DIR``.
Prints ``ready`` before training and ``epoch N`` after each epoch (flushed, for
the test to time its kills); process 0 writes the final parameters and
history to ``OUT_DIR``. The test imports :func:`model`, :func:`data` and
:data:`FIT` to train the same run in one process.

With ``sharded`` in place of the checkpoint folder, the pair instead trains a
pre-LN Transformer block (lnjax's LayerNorm) under sharded ``jax.jit`` on a
2 x 2 mesh of the four devices (batch over ``"data"``, attention heads and MLP
units over ``"model"``) for :data:`SHARDED_STEPS` SGD steps; each process
places its own shards of the global arrays, and process 0 writes the losses
and the gathered parameters. The test trains :func:`sharded_run` in one
process on four devices and compares.
"""

from __future__ import annotations

import json
import os
import sys

import flax.linen as nn
import jax
import numpy as np
import optax

from lnjax import linen as lnn
from lnjax import parallel, training

EPOCHS = 8
FIT = dict(batch_size=16, seed=0, progress=False)
HEARTBEAT_S = 10  # a killed peer is declared dead after this long without heartbeats
SHUTDOWN_S = 5  # how long an exiting process waits for its peers at shutdown


class MLP(nn.Module):
    """8-16-16-3: a layer-norm layer and a batch-norm layer synchronized over the mesh."""

    @nn.compact
    def __call__(self, x, *, train, mask=None):
        x = nn.relu(lnn.LayerNorm()(nn.Dense(16, use_bias=False)(x)))
        x = nn.Dense(16, use_bias=False)(x)
        x = lnn.BatchNorm(use_running_average=not train, momentum=0.9,
                          axis_name=parallel.AXIS)(x, mask=mask)
        return nn.Dense(3)(nn.relu(x))


def data(seed: int = 0) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """``((x, y), (x_validation, y_validation))``: three noisy clusters in 8 dimensions."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, 8)).astype(np.float32) * 2

    def draw(n):
        y = rng.integers(0, 3, n).astype(np.int32)
        return centres[y] + rng.normal(size=(n, 8)).astype(np.float32), y

    return draw(96), draw(32)


def model_state() -> training.TrainState:
    """The initial state, initialized under ``jit`` (one compile instead of one per operation)."""
    (x, _), _ = data()
    tx = optax.sgd(0.05, momentum=0.9)  # Adam would magnify rounding in near-zero gradients
    return jax.jit(lambda: training.create_train_state(MLP(), tx, x[:1], seed=0,
                                                       takes_mask=True))()


SHARDED_STEPS = 3


def sharded_mesh(devices: list) -> jax.sharding.Mesh:
    """The 2 x 2 ``("data", "model")`` mesh of four devices."""
    return jax.make_mesh((2, 2), ("data", "model"), devices=devices,
                         axis_types=(jax.sharding.AxisType.Auto,) * 2)


def sharded_run(mesh: jax.sharding.Mesh) -> tuple[list[np.ndarray], list[float]]:
    """:data:`SHARDED_STEPS` SGD steps of the Transformer block on ``mesh``: the final
    parameters (whole, as NumPy arrays) and the losses. Each process places only its own
    devices' shards (a cross-host ``device_put`` is not supported on CPU)."""
    from jax.experimental import multihost_utils
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from benchmarks import sharding as bench

    rng = np.random.default_rng(0)
    x = (3 + rng.standard_normal((8, 16, 32))).astype(np.float32)
    y = rng.standard_normal((8, 16, 32)).astype(np.float32)
    model = bench.Block(lnn.LayerNorm)
    with jax.default_device(jax.local_devices()[0]):  # each process its own copy
        params = jax.device_get(jax.jit(model.init)(jax.random.key(0), x))
    specs = bench.param_specs(params, "tensor", {"model": "model"})

    def place(a, spec):
        return jax.make_array_from_callback(a.shape, NamedSharding(mesh, spec),
                                            lambda index: a[index])

    params = jax.tree.map(place, params, specs)
    xs, ys = place(x, P("data")), place(y, P("data"))
    tx = optax.sgd(0.1)
    opt_state = jax.jit(tx.init)(params)
    shardings = jax.tree.map(lambda a: a.sharding, (params, opt_state))
    with jax.set_mesh(mesh):
        step = jax.jit(bench.train_step(model, tx), out_shardings=(*shardings, None))
        losses = []
        for _ in range(SHARDED_STEPS):
            params, opt_state, loss = step(params, opt_state, xs, ys)
            losses.append(float(np.asarray(loss.addressable_data(0))))
    whole = multihost_utils.process_allgather(params, tiled=True)
    return [np.asarray(a) for a in jax.tree.leaves(whole)], losses


def sharded_main(pid: int, out: str) -> None:
    mesh = sharded_mesh(jax.devices())
    assert jax.process_count() == 2 and mesh.devices.size == 4, (jax.process_count(), mesh)
    print("ready", flush=True)
    leaves, losses = sharded_run(mesh)
    if pid == 0:
        np.savez(os.path.join(out, "sharded.npz"), *leaves)
        with open(os.path.join(out, "sharded_losses.json"), "w") as f:
            json.dump(losses, f)
    print("done", flush=True)


def main(pid: int, port: str, checkpoint_dir: str, out: str) -> None:
    jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2,
                               process_id=pid, heartbeat_timeout_seconds=HEARTBEAT_S,
                               shutdown_timeout_seconds=SHUTDOWN_S, initialization_timeout=60)
    if checkpoint_dir == "sharded":
        sharded_main(pid, out)
        return
    mesh = parallel.make_mesh()
    assert jax.process_count() == 2 and mesh.devices.size == 4, (jax.process_count(), mesh)
    train, validation = data()

    def on_epoch(epoch, history):
        print(f"epoch {epoch}", flush=True)

    print("ready", flush=True)
    state, history = training.fit(model_state(), train, epochs=EPOCHS,
                                  evals={"validation": validation},
                                  checkpoint_dir=checkpoint_dir, mesh=mesh, on_epoch=on_epoch,
                                  **FIT)
    local = parallel.host_local((state.params, state.batch_stats, state.opt_state))
    if pid == 0:
        leaves = [np.asarray(a) for a in jax.tree.leaves(local)]
        np.savez(os.path.join(out, "state.npz"), *leaves)
        with open(os.path.join(out, "history.json"), "w") as f:
            json.dump(history, f)
    print("done", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4])
