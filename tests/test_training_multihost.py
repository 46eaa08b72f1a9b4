"""Two real processes (jax.distributed over localhost, 2 CPU devices each, gloo) running
``training.fit`` with a shared checkpoint folder: equal to one process with 4 devices,
a killed process stops its peer, and a restarted pair resumes to the uninterrupted result.
And a Transformer block with lnjax's LayerNorm trained under sharded ``jax.jit`` across
the two processes, equal to one process with 4 devices.

Each process is tests/multihost_worker.py. The workers share a persistent compilation
cache (a test-session folder) so that restarts do not compile again.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import jax
import numpy as np
import pytest

from lnjax import parallel, training
from tests import multihost_worker as worker

ROOT = Path(__file__).resolve().parent.parent
SURVIVOR_LIMIT_S = 120  # what the issue allows a survivor to take to exit


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


class Pair:
    """The two worker processes of one launch, their output lines timed as they arrive."""

    def __init__(self, checkpoint_dir, out, cache):
        env = dict(os.environ, XLA_FLAGS=parallel.host_device_flags(2),
                   JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
                   JAX_COMPILATION_CACHE_DIR=str(cache),
                   JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
        out.mkdir(parents=True, exist_ok=True)
        port = str(free_port())
        self.lines = [[], []]
        self.procs = [subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "multihost_worker.py"), str(i), port,
             str(checkpoint_dir), str(out)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
            for i in range(2)]
        self.readers = [threading.Thread(target=self._read, args=(i,), daemon=True)
                        for i in range(2)]
        for r in self.readers:
            r.start()

    def _read(self, i):
        for line in self.procs[i].stdout:
            self.lines[i].append((time.monotonic(), line.rstrip("\n")))

    def events(self, i):
        """Process ``i``'s ``ready`` / ``epoch N`` lines so far, as ``(time, line)``."""
        return [(t, line) for t, line in list(self.lines[i])
                if line.startswith(("ready", "epoch "))]

    def epochs(self, i):
        return [int(line.split()[1]) for _, line in self.events(i) if line.startswith("epoch ")]

    def log(self, i, tail=3000):
        return "\n".join(line for _, line in self.lines[i])[-tail:]

    def wait(self, i, timeout):
        try:
            return self.procs[i].wait(timeout=timeout)
        finally:
            self.readers[i].join(timeout=5)

    def kill(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def finish(pair, timeout=240):
    """Waits for both processes of ``pair`` to exit 0."""
    try:
        codes = [pair.wait(i, timeout) for i in range(2)]
    finally:
        pair.kill()
    assert codes == [0, 0], "\n---\n".join(pair.log(i) for i in range(2))


def kill_and_time_survivor(pair, victim):
    """SIGKILLs process ``victim``; returns the seconds until the other exits, and its code."""
    pair.procs[victim].send_signal(signal.SIGKILL)
    pair.procs[victim].wait()
    t0 = time.monotonic()
    try:
        code = pair.wait(1 - victim, SURVIVOR_LIMIT_S)
    except subprocess.TimeoutExpired:
        pair.kill()
        pytest.fail(f"process {1 - victim} still ran {SURVIVOR_LIMIT_S} s after its peer "
                    f"was killed:\n{pair.log(1 - victim)}")
    return time.monotonic() - t0, code


def wait_for(pair, i, n_events, timeout=240):
    """Blocks until process ``i`` has printed ``n_events`` ready/epoch lines; their times."""
    deadline = time.monotonic() + timeout
    while len(pair.events(i)) < n_events:
        if pair.procs[i].poll() is not None and len(pair.events(i)) < n_events:
            time.sleep(0.2)  # let the reader drain the pipe
            if len(pair.events(i)) < n_events:
                pytest.fail(f"process {i} exited early:\n{pair.log(i)}")
        if time.monotonic() > deadline:
            pair.kill()
            pytest.fail(f"process {i} printed too little in {timeout} s:\n{pair.log(i)}")
        time.sleep(0.02)
    return [t for t, _ in pair.events(i)]


def result(out):
    got = np.load(out / "state.npz")
    leaves = [got[f"arr_{k}"] for k in range(len(got.files))]
    history = json.loads((out / "history.json").read_text())
    history.pop("seconds")  # wall time: the one entry that differs between runs
    return leaves, history


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("compilation-cache")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cache):
    """One uninterrupted two-process run: its result and its timing."""
    base = tmp_path_factory.mktemp("uninterrupted")
    pair = Pair(base / "checkpoints", base / "out", cache)
    finish(pair)
    times = [t for t, _ in pair.events(0)]  # ready, epoch 1, ..., epoch EPOCHS
    leaves, history = result(base / "out")
    return {"leaves": leaves, "history": history, "first_epoch_s": times[1] - times[0],
            "epoch_s": (times[-1] - times[1]) / (len(times) - 2)}


def assert_same_run(got, expect):
    leaves, history = got
    assert history == expect["history"]
    assert len(leaves) == len(expect["leaves"])
    for a, b in zip(leaves, expect["leaves"], strict=True):
        np.testing.assert_array_equal(a, b)


def test_two_processes_train_equal_to_one_process_with_four_devices(uninterrupted):
    train, validation = worker.data()
    state, history = training.fit(worker.model_state(), train, epochs=worker.EPOCHS,
                                  evals={"validation": validation},
                                  mesh=parallel.make_mesh(4), **worker.FIT)
    expect = jax.tree.leaves((state.params, state.batch_stats, state.opt_state))
    got = uninterrupted["leaves"]
    assert len(got) == len(expect)
    diff = max(float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())
               for a, b in zip(got, expect, strict=True))
    assert diff <= 1e-6, diff
    two = uninterrupted["history"]
    assert two["epoch"] == history["epoch"] == list(range(1, worker.EPOCHS + 1))
    for key in ("train_loss", "validation_loss"):
        np.testing.assert_allclose(two[key], history[key], rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.array(two["step_loss"]), np.array(history["step_loss"]),
                               rtol=0, atol=1e-6)


def test_a_killed_coordinator_stops_its_peer_and_both_restarted_resume(
        uninterrupted, cache, tmp_path):
    """SIGKILL process 0 (it also runs the coordination service) after epoch 3's checkpoint."""
    pair = Pair(tmp_path / "checkpoints", tmp_path / "out", cache)
    wait_for(pair, 0, 1 + 3)  # ready, epoch 1..3
    survivor_s, code = kill_and_time_survivor(pair, victim=0)
    print(f"survivor exited {survivor_s:.1f} s after its peer was killed (code {code})")
    assert code != 0 and survivor_s < SURVIVOR_LIMIT_S
    restarted = Pair(tmp_path / "checkpoints", tmp_path / "out", cache)
    finish(restarted)
    assert restarted.epochs(0)[0] >= 4  # resumed after epoch 3, not from scratch
    assert_same_run(result(tmp_path / "out"), uninterrupted)


def test_random_kills_each_resume_to_the_uninterrupted_result(uninterrupted, cache, tmp_path):
    """Three SIGKILLs at random moments (seeded), each followed by a restart of both.

    A kill lands after a random number (0 or 1) of this launch's epochs, plus a random
    delay up to one epoch's (or, before the first epoch, the start-up's) duration: in
    the restore, the compilation, an epoch or a checkpoint write. Every epoch of the
    final history was trained by one of the launches, each resuming from the
    checkpoints the previous one left: equal histories and states mean every resume
    continued exactly.
    """
    rng = np.random.default_rng(14)
    folder, out = tmp_path / "checkpoints", tmp_path / "out"
    survivors, resumed = [], []

    def launch():
        with warnings.catch_warnings():  # a kill between a save and its checksums
            warnings.simplefilter("ignore", training.DamagedCheckpointWarning)
            ckpt = training.Checkpointer(folder)
            intact = ckpt.latest_intact() or 0
            ckpt.close()
        return Pair(folder, out, cache), intact

    for kill in range(3):
        pair, intact = launch()
        victim = kill % 2
        after = int(rng.integers(0, 2))
        times = wait_for(pair, victim, 1 + after)
        span = uninterrupted["first_epoch_s"] if after == 0 else uninterrupted["epoch_s"]
        time.sleep(max(0.0, times[-1] + rng.uniform(0, span) - time.monotonic()))
        assert pair.procs[victim].poll() is None, pair.log(victim)
        survivor_s, code = kill_and_time_survivor(pair, victim)
        survivors.append(survivor_s)
        assert code != 0
        resumed.append((intact, pair.epochs(victim)))
    final, intact = launch()
    finish(final)
    resumed.append((intact, final.epochs(0)))
    print("survivors exited after", [f"{s:.1f} s" for s in survivors],
          "; (newest intact checkpoint, epochs trained) per launch:", resumed)
    assert max(survivors) < SURVIVOR_LIMIT_S
    for intact, epochs in resumed:  # each launch went on from the newest intact checkpoint
        assert epochs[:1] in ([], [intact + 1])
    assert resumed[-1][1] == list(range(resumed[-1][0] + 1, worker.EPOCHS + 1))
    assert_same_run(result(out), uninterrupted)


def test_sharded_jit_across_two_processes_equals_one_process_with_four_devices(cache,
                                                                                tmp_path):
    """The Transformer block (lnjax.linen.LayerNorm) on a 2 x 2 ("data", "model") mesh that
    spans both processes: the same losses and final parameters as on four devices of one."""
    pair = Pair("sharded", tmp_path, cache)
    finish(pair)
    got = np.load(tmp_path / "sharded.npz")
    leaves = [got[f"arr_{k}"] for k in range(len(got.files))]
    losses = json.loads((tmp_path / "sharded_losses.json").read_text())
    expect_leaves, expect_losses = worker.sharded_run(worker.sharded_mesh(jax.devices()[:4]))
    np.testing.assert_allclose(losses, expect_losses, rtol=1e-6)
    assert len(leaves) == len(expect_leaves)
    for a, b in zip(leaves, expect_leaves, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
