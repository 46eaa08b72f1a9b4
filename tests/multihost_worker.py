"""One process of a two-process ``training.fit`` run, started by tests/test_multihost.py.

    python tests/multihost_worker.py PROCESS_ID PORT CHECKPOINT_DIR OUT_DIR

Two of these (process ids 0 and 1, 2 CPU devices each through ``XLA_FLAGS``)
join with ``jax.distributed`` over localhost and train a small MLP with
layer norm and batch norm synchronized over the 4-device mesh, on data drawn
from a seed, with checkpoints every epoch in the shared ``CHECKPOINT_DIR``.
Prints ``ready`` before training and ``epoch N`` after each epoch (flushed, for
the test to time its kills); process 0 writes the final parameters and
history to ``OUT_DIR``. The test imports :func:`model`, :func:`data` and
:data:`FIT` to train the same run in one process.
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


def main(pid: int, port: str, checkpoint_dir: str, out: str) -> None:
    jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2,
                               process_id=pid, heartbeat_timeout_seconds=HEARTBEAT_S,
                               shutdown_timeout_seconds=SHUTDOWN_S, initialization_timeout=60)
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
