"""Checkpoints under damage (lnjax.checkpoint, and fit's resume and NaN guard above it).

The policy under test: a damaged newest checkpoint is skipped for the newest intact one
(a one-line DamagedCheckpointWarning naming both steps and the folder) and moved aside
to ``<step>.damaged`` when that step is saved again; an explicitly requested damaged
step, or a folder with no intact checkpoint, is refused with one short CheckpointError.
Damaged bytes are never restored, a non-finite state is never saved, and retention
never deletes the last intact checkpoint, nor reads the kept checkpoints' files.
fit saves one checkpoint per epoch with the epoch's number as its step.
"""

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lnjax import checkpoint, checksums, training
from lnjax import linen as lnn

ROOT = Path(__file__).resolve().parent.parent


class Wide(nn.Module):
    """6-64-3 with layer norm: enough parameters that the array data file is the largest."""

    @nn.compact
    def __call__(self, x, *, train):
        return nn.Dense(3)(nn.relu(lnn.LayerNorm()(nn.Dense(64)(x))))


def toy_data(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n).astype(np.int32)
    return (np.eye(3, 6, dtype=np.float32) * 3)[y] + rng.normal(size=(n, 6)).astype(np.float32), y


X, Y = toy_data(48, 0)
XV, YV = toy_data(16, 1)
KW = dict(batch_size=8, seed=1, evals={"validation": (XV, YV)}, progress=False)


def new_state(tx=None):
    return training.create_train_state(Wide(), tx or optax.adam(0.01), X[:1], seed=0)


def leaves(state):
    return [np.asarray(a) for a in jax.tree.leaves((state.params, state.opt_state))]


@pytest.fixture(scope="module")
def uninterrupted():
    """Three epochs without checkpoints: what every resumed run must equal."""
    state, history = training.fit(new_state(), (X, Y), epochs=3, **KW)
    return leaves(state), history


def assert_equal_runs(got, expect):
    (state, history), (expect_leaves, expect_history) = got, expect
    for key in ("epoch", "steps", "train_loss", "step_loss", "validation_loss"):
        assert history[key] == expect_history[key], key
    for a, b in zip(leaves(state), expect_leaves, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def two_epoch_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("two-epochs") / "ckpt"
    training.fit(new_state(), (X, Y), epochs=2, checkpoint_dir=folder, **KW)
    return folder


@pytest.fixture
def two_epochs(two_epoch_run):
    """``two_epochs(folder)``: a copy of a run's epoch 1 and 2 checkpoints in ``folder``;
    returns epoch 2's folder."""
    def copy(folder):
        shutil.copytree(two_epoch_run, folder)
        return folder / "2"
    return copy


def largest_data_file(step_dir):
    """The largest file of array data that a restore reads (the merged OCDBT ``state/d/``)."""
    return max((step_dir / "state" / "d").iterdir(), key=lambda p: p.stat().st_size)


def flip_64_bytes(step_dir):
    path = largest_data_file(step_dir)
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid - 32:mid + 32] = bytes(b ^ 0xFF for b in data[mid - 32:mid + 32])
    path.write_bytes(bytes(data))


def truncate_data_file(step_dir):
    path = largest_data_file(step_dir)
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


def delete_data_file(step_dir):
    largest_data_file(step_dir).unlink()


def delete_metadata(step_dir):
    (step_dir / "state" / "_METADATA").unlink()


def truncate_history(step_dir):
    path = step_dir / "history" / "metadata"
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


def delete_checksums(step_dir):
    """What a process killed after orbax's commit but before the checksum list leaves."""
    (step_dir / checkpoint.CHECKSUMS).unlink()


def add_file(step_dir):
    """A file that was not there when the checkpoint was saved."""
    (step_dir / "state" / "d" / "stray").write_bytes(b"not saved by orbax")


DAMAGE = [flip_64_bytes, truncate_data_file, delete_data_file, delete_metadata,
          truncate_history, delete_checksums, add_file]


@pytest.mark.parametrize("damage", DAMAGE, ids=[d.__name__ for d in DAMAGE])
def test_a_damaged_newest_checkpoint_is_skipped_and_the_resume_is_exact(
        damage, tmp_path, uninterrupted, capfd, two_epochs):
    folder = tmp_path / "ckpt"
    damage(two_epochs(folder))
    capfd.readouterr()
    with pytest.warns(checkpoint.DamagedCheckpointWarning) as caught:
        resumed = training.fit(new_state(), (X, Y), epochs=3, checkpoint_dir=folder, **KW)
    assert_equal_runs(resumed, uninterrupted)  # trained from epoch 1's intact checkpoint
    (message,) = [str(w.message) for w in caught
                  if w.category is checkpoint.DamagedCheckpointWarning]
    assert "step 2" in message and "step 1" in message and str(folder) in message
    assert "\n" not in message and len(message) < 400
    err = capfd.readouterr().err
    assert "Event loop is closed" not in err and len(err.splitlines()) < 10, err
    # The damaged step 2 is kept aside, never trained on or overwritten; 2 and 3 are intact.
    assert sorted(os.listdir(folder)) == ["2", "2.damaged", "3"]
    ckpt = training.Checkpointer(folder)
    assert [ckpt.verify(s) for s in ckpt.steps()] == [None, None]
    ckpt.close()


@pytest.mark.parametrize("damage", DAMAGE, ids=[d.__name__ for d in DAMAGE])
def test_restoring_a_damaged_step_is_one_short_error(damage, tmp_path, capfd, two_epochs):
    folder = tmp_path / "ckpt"
    damage(two_epochs(folder))
    ckpt = training.Checkpointer(folder)
    capfd.readouterr()
    with pytest.raises(checkpoint.CheckpointError) as info:
        ckpt.restore(new_state(), 2)
    ckpt.close()
    message = str(info.value)
    assert message.startswith(f"Checkpoint step 2 in {folder} is damaged: ")
    assert "delete" in message and "\n" not in message and len(message) < 400, message
    assert info.value.step == 2 and info.value.directory == str(folder)
    assert info.value.__cause__ is None and info.value.__context__ is None  # no second traceback
    assert capfd.readouterr().err == ""


def test_a_fresh_process_resumes_next_to_flipped_bytes_in_a_few_lines(tmp_path, uninterrupted,
                                                                      two_epochs):
    """As a user meets it: a fresh process resumes next to 64 flipped bytes."""
    folder = tmp_path / "ckpt"
    flip_64_bytes(two_epochs(folder))
    script = ("import sys, numpy as np\n"
              "from tests import test_checkpoint as t\n"
              "from lnjax import training\n"
              "s, h = training.fit(t.new_state(), (t.X, t.Y), epochs=3, checkpoint_dir=sys.argv[1],"
              " **t.KW)\n"
              "np.savez(sys.argv[2], *t.leaves(s))\n")
    out = tmp_path / "state.npz"
    run = subprocess.run([sys.executable, "-c", script, str(folder), str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=240,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stderr.strip().splitlines()
    assert len(lines) < 10, run.stderr
    assert any("DamagedCheckpointWarning" in line and "step 2" in line and "step 1" in line
               and str(folder) in line for line in lines), run.stderr
    got = np.load(out)
    for k, expect in enumerate(uninterrupted[0]):
        np.testing.assert_array_equal(got[f"arr_{k}"], expect)


def test_no_intact_checkpoint_is_refused_before_training(tmp_path, two_epochs):
    folder = tmp_path / "ckpt"
    two_epochs(folder)
    flip_64_bytes(folder / "2")
    delete_metadata(folder / "1")
    with pytest.raises(checkpoint.CheckpointError) as info:
        training.fit(new_state(), (X, Y), epochs=3, checkpoint_dir=folder, **KW)
    message = str(info.value)
    assert message.startswith(f"No intact checkpoint in {folder} (step 2: file state/")
    assert "step 1: file state/_METADATA is missing" in message and "delete" in message
    assert "\n" not in message
    assert sorted(os.listdir(folder)) == ["1", "2"]  # nothing trained, nothing written


def test_checksums_cover_every_file_of_a_checkpoint(tmp_path, two_epochs):
    folder = tmp_path / "ckpt"
    step = two_epochs(folder)
    recorded = json.loads((step / checkpoint.CHECKSUMS).read_text())["files"]
    on_disk = {str(p.relative_to(step)) for p in step.rglob("*") if p.is_file()}
    assert checkpoint.CHECKSUMS is checksums.CHECKSUMS  # one list, written by lnjax.checksums
    assert set(recorded) == on_disk - {checkpoint.CHECKSUMS}
    assert "state/_METADATA" in recorded and "history/metadata" in recorded
    assert all(len(digest) == 64 for _, digest in recorded.values())


class Deep(nn.Module):
    """20 small layers: many arrays read at once, as orbax's noise needs."""

    @nn.compact
    def __call__(self, x, *, train):
        for _ in range(20):
            x = nn.Dense(16)(x)
        return nn.Dense(3)(x)


def unreadable_but_consistent(folder):
    """Epoch 1 of a Deep state with its largest data file cut in half and the checksum
    list rewritten to match: what orbax cannot read though every checksum agrees."""
    state = training.create_train_state(Deep(), optax.adam(0.01), X[:1], seed=0)
    ckpt = training.Checkpointer(folder)
    ckpt.save(1, state, {"epoch": [1]})
    ckpt.close()
    step = Path(folder) / "1"
    truncate_data_file(step)
    files = {str(p.relative_to(step)): [p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest()]
             for p in step.rglob("*") if p.is_file() and p.name != checkpoint.CHECKSUMS}
    (step / checkpoint.CHECKSUMS).write_text(json.dumps({"files": files}))
    return state


def test_an_unreadable_but_consistent_checkpoint_is_one_short_error(tmp_path):
    """Bytes that match their checksums but that orbax cannot read (as from a faulty writer).

    In a fresh process (pytest would catch them itself): orbax's failure is summarized
    in one line, and the "Event loop is closed" reports that tensorstore sends after
    orbax has closed its event loop (hundreds of lines here without lnjax's filter)
    are contained.
    """
    script = ("import sys, time\n"
              "from tests import test_checkpoint as t\n"
              "from lnjax import checkpoint, training\n"
              "state = t.unreadable_but_consistent(sys.argv[1])\n"
              "ckpt = training.Checkpointer(sys.argv[1])\n"
              "assert ckpt.verify(1) is None\n"
              "try:\n"
              "    ckpt.restore(state)\n"
              "except checkpoint.CheckpointError as e:\n"
              "    assert e.__cause__ is None and e.__suppress_context__\n"
              "    print(e)\n"
              "time.sleep(1.0)  # the other reads complete after orbax's loop is closed\n")
    folder = tmp_path / "ckpt"
    run = subprocess.run([sys.executable, "-c", script, str(folder)], cwd=ROOT,
                         capture_output=True, text=True, timeout=240,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert run.returncode == 0, run.stderr[-3000:]
    message = run.stdout.strip()
    assert message.startswith(f"Checkpoint step 1 in {folder} could not be restored (")
    assert "OUT_OF_RANGE" in message and "state/d/" in message
    assert "\n" not in message and len(message) < 600, message
    assert "Event loop is closed" not in run.stderr and len(run.stderr.splitlines()) < 10


def test_a_checkpoint_of_another_model_is_one_short_error(tmp_path, two_epochs):
    folder = tmp_path / "ckpt"
    two_epochs(folder)

    class Other(nn.Module):
        @nn.compact
        def __call__(self, x, *, train):
            return nn.Dense(3)(x)

    other = training.create_train_state(Other(), optax.adam(0.01), X[:1], seed=0)
    with pytest.raises(checkpoint.CheckpointError, match=r"^Checkpoint step 2 in .* could not "
                       r"be restored .*model and optimizer") as info:
        training.fit(other, (X, Y), epochs=3, checkpoint_dir=folder, **KW)
    assert "\n" not in str(info.value)


def nan_after(count):
    """SGD whose updates turn to NaN from update number ``count`` on (0-based)."""
    return optax.chain(optax.sgd(0.05), optax.scale_by_schedule(
        lambda n: jnp.where(n >= count, jnp.nan, 1.0)))


@pytest.mark.parametrize("count, what", [(12, "the training loss of epoch 3 is not finite "
                                              "(first at its step 2 of 6: nan)"),
                                         (17, "the state after epoch 3 holds a NaN")],
                         ids=["loss", "last-update-only"])
def test_a_non_finite_epoch_stops_before_saving_and_keeps_the_checkpoints(tmp_path, count, what):
    """6 steps an epoch: update 12 is epoch 3's first (its loss at step 2 is NaN), update 17
    its last (every loss of the epoch is finite, the state after it is not)."""
    folder = tmp_path / "ckpt"
    with pytest.raises(FloatingPointError) as info:
        training.fit(new_state(nan_after(count)), (X, Y), epochs=4, checkpoint_dir=folder, **KW)
    message = str(info.value)
    assert message.startswith(f"fit: {what}")
    assert f"the last checkpoint (epoch 2) in {folder} is kept" in message
    ckpt = training.Checkpointer(folder)
    assert ckpt.steps() == [1, 2] and ckpt.verify(1) is None and ckpt.verify(2) is None
    _, history = ckpt.restore(new_state(nan_after(count)))
    ckpt.close()
    assert history["epoch"] == [1, 2] and np.isfinite(history["train_loss"]).all()


def test_a_non_finite_epoch_without_checkpoints_stops_too():
    with pytest.raises(FloatingPointError, match=r"^fit: the training loss of epoch 1 .* "
                                                 r"Lower the learning rate"):
        training.fit(new_state(nan_after(0)), (X, Y), epochs=2, **KW)


def test_save_refuses_a_non_finite_state(tmp_path):
    state = new_state()
    bad = state.replace(params=jax.tree.map(lambda a: a.at[(0,) * a.ndim].set(jnp.inf),
                                            state.params))
    ckpt = training.Checkpointer(tmp_path / "ckpt")
    with pytest.raises(FloatingPointError, match="step 1 holds a NaN or an infinity; nothing"):
        ckpt.save(1, bad, {"epoch": [1]})
    assert ckpt.steps() == []
    ckpt.close()
    assert os.listdir(tmp_path / "ckpt") == []


def test_retention_counts_only_intact_checkpoints(tmp_path):
    """max_to_keep=2 with a damaged step 2: saving step 3 keeps step 1, the other intact one."""
    state = new_state()
    ckpt = training.Checkpointer(tmp_path / "ckpt", max_to_keep=2)
    for step in (1, 2):
        ckpt.save(step, state, {"epoch": [step]})
    flip_64_bytes(tmp_path / "ckpt" / "2")
    ckpt.save(3, state, {"epoch": [3]})
    assert ckpt.steps() == [1, 2, 3]
    assert [ckpt.verify(s) is None for s in ckpt.steps()] == [True, False, True]
    ckpt.save(4, state, {"epoch": [4]})  # now 4 and 3 are the two newest intact ones
    assert ckpt.steps() == [3, 4]
    ckpt.close()


def test_saving_over_an_intact_step_is_refused(tmp_path):
    state = new_state()
    ckpt = training.Checkpointer(tmp_path / "ckpt")
    ckpt.save(2, state, {"epoch": [2]})
    with pytest.raises(ValueError, match="step 2 is already saved"):
        ckpt.save(2, state, {"epoch": [2]})
    with pytest.raises(ValueError, match="step 2 is already saved"):
        ckpt.save(1, state, {"epoch": [1]})
    ckpt.close()


def test_restoring_a_missing_step_names_the_saved_ones(tmp_path):
    ckpt = training.Checkpointer(tmp_path / "ckpt")
    ckpt.save(1, new_state(), {"epoch": [1]})
    with pytest.raises(checkpoint.CheckpointError, match=r"No checkpoint of step 5 .*\[1\]"):
        ckpt.restore(new_state(), 5)
    ckpt.close()


def test_max_to_keep_must_be_positive(tmp_path):
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="max_to_keep"):
            training.Checkpointer(tmp_path, max_to_keep=bad)


def test_an_intact_checkpoint_restores_without_warnings(tmp_path, uninterrupted, two_epochs):
    folder = tmp_path / "ckpt"
    two_epochs(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("error", checkpoint.DamagedCheckpointWarning)
        resumed = training.fit(new_state(), (X, Y), epochs=3, checkpoint_dir=folder, **KW)
    assert_equal_runs(resumed, uninterrupted)


RECORDING: list[list[str]] = []  # the lists that files_opened blocks are filling


def record_opens(event, args):
    if RECORDING and event == "open" and isinstance(args[0], str | bytes | os.PathLike):
        RECORDING[-1].append(os.path.abspath(os.fsdecode(args[0])))


@contextlib.contextmanager
def files_opened():
    """The paths opened from Python (any thread) inside the block. The audit hook behind it
    is installed once and for good (audit hooks cannot be removed); outside a block it
    records nothing."""
    if not getattr(files_opened, "installed", False):
        sys.addaudithook(record_opens)
        files_opened.installed = True
    paths: list[str] = []
    RECORDING.append(paths)
    try:
        yield paths
    finally:
        RECORDING.remove(paths)


def test_retention_reads_no_file_of_the_kept_checkpoints(tmp_path):
    """Saving step 3 with max_to_keep=2 deletes step 1 and opens no file of step 2, the kept
    one, but its checksum list: retention compares names, sizes and modification times
    with the list, it hashes nothing (saving step 3 hashes step 3's files only)."""
    state = new_state()
    folder = tmp_path / "ckpt"
    ckpt = training.Checkpointer(folder, max_to_keep=2)
    for step in (1, 2):
        ckpt.save(step, state, {"epoch": [step]})
    with files_opened() as paths:
        ckpt.save(3, state, {"epoch": [3]})
    assert ckpt.steps() == [2, 3]
    ckpt.close()
    opened = {Path(p) for p in paths}
    written = [p for p in opened if p.is_relative_to(folder / "3" / "state")]
    assert written, paths  # the hook sees the hashing of the new checkpoint's files
    kept = [p for p in opened if p.is_relative_to(folder / "2")]
    assert kept == [folder / "2" / checksums.CHECKSUMS], kept


def test_the_epoch_keyword_works_for_one_release_with_a_deprecation_warning(tmp_path):
    state = new_state()
    ckpt = training.Checkpointer(tmp_path / "ckpt")
    with pytest.warns(DeprecationWarning, match=r"^Checkpointer.save: the keyword epoch= is "
                                                r"now step= ") as caught:
        ckpt.save(epoch=1, state=state, history={"epoch": [1]})
    assert caught[0].filename == __file__  # the warning points at the caller
    assert ckpt.steps() == [1]
    with pytest.warns(DeprecationWarning, match=r"^Checkpointer.restore: the keyword epoch= "
                                                r"is now step= "):
        restored, history = ckpt.restore(state, epoch=1)
    assert history == {"epoch": [1]}
    for a, b in zip(leaves(restored), leaves(state), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(TypeError, match="pass only step="):
        ckpt.restore(state, step=1, epoch=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        assert ckpt.restore(state, step=1)[1] == ckpt.restore(state, 1)[1] == {"epoch": [1]}
        ckpt.save(step=2, state=state, history={"epoch": [1, 2]})
    assert ckpt.steps() == [1, 2]
    ckpt.close()
