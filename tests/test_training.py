"""Tests for lnjax.training (and lnjax.steps and lnjax.checkpoint beneath it): steps, the
epoch scan, evaluation, checkpoints and resuming."""

import io

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from lnjax import checkpoint, checksums, steps, training
from lnjax import linen as lnn
from lnjax import nnx as lnnx


class Net(nn.Module):
    """A small classifier with batch norm (so batch_stats is exercised) and layer norm."""

    bn: bool = True

    @nn.compact
    def __call__(self, x, *, train, mask=None):
        x = x.reshape((x.shape[0], -1))
        x = nn.Dense(16, use_bias=False)(x)
        if self.bn:
            x = lnn.BatchNorm(use_running_average=not train, momentum=0.9)(x, mask=mask)
        else:
            x = lnn.LayerNorm()(x)
        return nn.Dense(3)(nn.relu(x))


def toy_data(n, seed=0):
    """Three linearly separable-ish classes in 6 dimensions."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n).astype(np.int32)
    centres = np.eye(3, 6, dtype=np.float32) * 3
    x = centres[y] + rng.normal(size=(n, 6)).astype(np.float32)
    return x, y


X, Y = toy_data(96)
XV, YV = toy_data(40, seed=1)


def new_state(seed=0, bn=True, lr=0.05, takes_mask=False):
    return training.create_train_state(Net(bn=bn), optax.adam(lr), X[:1], seed=seed,
                                       takes_mask=takes_mask)


def assert_trees_equal(a, b, atol=0.0):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), atol=atol, rtol=0)


def assert_padding_equals_dropping(state, x, y, w):
    """One step on ``(x, y)`` with weights ``w`` equals one on the examples with ``w > 0``.

    Returns the state after the step on the kept examples.
    """
    step = jax.jit(training.train_step)
    s_w, m_w = step(state, {"x": x, "y": y, "weight": w})
    keep = w > 0
    s_d, m_d = step(state, {"x": x[keep], "y": y[keep]})
    np.testing.assert_allclose(m_w["loss"], m_d["loss"], rtol=1e-6)
    assert_trees_equal(s_w.params, s_d.params, atol=1e-6)
    assert_trees_equal(s_w.batch_stats, s_d.batch_stats, atol=1e-6)
    return s_d


def test_create_train_state_has_batch_stats():
    s = new_state()
    assert int(s.step) == 0
    assert set(s.batch_stats["BatchNorm_0"]) == {"mean", "var"}
    assert new_state(bn=False).batch_stats == {}


def test_train_step_updates_params_and_batch_stats():
    s = new_state()
    s2, m = jax.jit(training.train_step)(s, {"x": X[:8], "y": Y[:8]})
    assert int(s2.step) == 1
    assert m["loss"].shape == () and 0 <= float(m["error"]) <= 1
    mean = s2.batch_stats["BatchNorm_0"]["mean"]
    assert not np.allclose(mean, 0)  # momentum 0.9: 10% of the batch mean
    assert not np.allclose(s2.params["Dense_0"]["kernel"], s.params["Dense_0"]["kernel"])


def test_training_re_exports_the_step_level_names():
    """lnjax.training keeps its whole public API; the objects live in steps and checkpoint."""
    for name in ("TrainState", "create_train_state", "train_step", "eval_step", "scan_epoch",
                 "train_epoch", "evaluate", "classification_loss", "metric_names", "step_rngs",
                 "NNXModel", "nnx_module", "LossFn", "Batch"):
        assert getattr(training, name) is getattr(steps, name), name
    assert training.Checkpointer is checkpoint.Checkpointer
    assert callable(training.fit)


def test_takes_mask_is_a_static_flag_outside_the_pytree():
    plain, masked = new_state(), new_state(takes_mask=True)
    assert plain.takes_mask is False and masked.takes_mask is True
    # Not a leaf: the arrays, and so the checkpoint tree, are the same with and without it.
    assert len(jax.tree.leaves(plain)) == len(jax.tree.leaves(masked))
    assert_trees_equal(jax.tree.leaves(plain), jax.tree.leaves(masked))
    assert jax.tree.structure(plain) != jax.tree.structure(masked)  # static: part of the treedef
    with pytest.raises(TypeError, match="takes_mask"):
        new_state(takes_mask=1)


def test_train_step_passes_mask_exactly_when_the_state_says_so():
    seen = []

    class Probe(nn.Module):
        @nn.compact
        def __call__(self, x, *, train, mask=None):
            seen.append(None if mask is None else (mask.shape, mask.dtype))
            return nn.Dense(3)(x)

    w = np.array([1, 1, 0, 1], np.float32)
    for takes_mask in (False, True):
        s = training.create_train_state(Probe(), optax.sgd(0.1), X[:1], seed=0,
                                        takes_mask=takes_mask)
        seen.clear()
        training.train_step(s, {"x": X[:4], "y": Y[:4], "weight": w})
        assert seen == ([((4, 1), jnp.bool_)] if takes_mask else [None])


def test_masked_padding_equals_dropping_examples_with_batch_norm():
    """With takes_mask, padded examples enter neither the loss nor batch norm's statistics."""
    w = np.array([1, 1, 1, 1, 1, 0, 0, 0], np.float32)
    s_d = assert_padding_equals_dropping(new_state(takes_mask=True), X[:8], Y[:8], w)
    # Without the flag the padding does enter the statistics: the check can fail.
    s_u, _ = jax.jit(training.train_step)(new_state(), {"x": X[:8], "y": Y[:8], "weight": w})
    assert not np.allclose(s_u.batch_stats["BatchNorm_0"]["mean"],
                           s_d.batch_stats["BatchNorm_0"]["mean"], atol=1e-6)


class FeatureMapNet(nn.Module):
    """Batch norm over every axis but the channels of an image or a sequence, with a mask."""

    @nn.compact
    def __call__(self, x, *, train, mask=None):
        x = nn.Dense(4, use_bias=False)(x)
        x = lnn.BatchNorm(use_running_average=not train, momentum=0.9)(x, mask=mask)
        x = nn.relu(x).mean(axis=tuple(range(1, x.ndim - 1)))
        return nn.Dense(3)(x)


@pytest.mark.parametrize("shape", [(5, 4, 2), (7, 3)], ids=["image", "sequence"])
def test_example_mask_broadcasts_over_images_and_sequences(shape):
    """The mask is (batch,) + (1,) * (x.ndim - 1): padded images/sequences are left out."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(8,) + shape).astype(np.float32) + 2
    y = rng.integers(0, 3, 8).astype(np.int32)
    w = np.array([1, 1, 1, 0, 1, 1, 0, 0], np.float32)
    s = training.create_train_state(FeatureMapNet(), optax.adam(0.05), x[:1], seed=0,
                                    takes_mask=True)
    assert_padding_equals_dropping(s, x, y, w)
    mask = steps.example_mask({"x": x, "y": y, "weight": w})
    assert mask.shape == (8,) + (1,) * len(shape)
    assert mask.ravel().tolist() == (w > 0).tolist()


def test_train_step_weights_equal_dropping_examples():
    """Padding with weight 0 changes neither the loss nor the gradient (no batch norm)."""
    w = np.array([1, 1, 1, 1, 1, 0, 0, 0], np.float32)
    assert_padding_equals_dropping(new_state(bn=False), X[:8], Y[:8], w)


def test_epoch_scan_equals_python_loop_of_steps():
    xb, yb = X.reshape(12, 8, 6), Y.reshape(12, 8)
    s_scan, metrics = training.train_epoch(new_state(), jnp.asarray(xb), jnp.asarray(yb))
    s_loop = new_state()
    step = jax.jit(training.train_step)
    losses = []
    for i in range(12):
        s_loop, m = step(s_loop, {"x": xb[i], "y": yb[i]})
        losses.append(float(m["loss"]))
    np.testing.assert_allclose(np.asarray(metrics["loss"]), losses, rtol=1e-5, atol=1e-6)
    assert_trees_equal(s_scan.params, s_loop.params, atol=1e-5)
    assert_trees_equal(s_scan.batch_stats, s_loop.batch_stats, atol=1e-5)
    assert int(s_scan.step) == 12


def test_epoch_scan_reports_progress_from_inside_the_scan():
    calls = []
    report = calls.append
    xb, yb = X.reshape(12, 8, 6), Y.reshape(12, 8)
    out, _ = training.train_epoch(new_state(), xb, yb, report=report, report_every=5)
    jax.block_until_ready(out.params)
    jax.effects_barrier()
    assert sorted(int(c) for c in calls) == [5, 10]


def test_train_epoch_rejects_mismatched_batches():
    with pytest.raises(ValueError, match="xb must be"):
        training.train_epoch(new_state(), X.reshape(12, 8, 6), Y.reshape(8, 12))


def test_evaluate_pads_the_last_batch_exactly():
    s = new_state()
    whole = training.evaluate(s, XV, YV, batch_size=40)
    padded = training.evaluate(s, XV, YV, batch_size=7)
    assert whole["loss"] == pytest.approx(padded["loss"], rel=1e-6)
    assert whole["error"] == pytest.approx(padded["error"], abs=1e-7)
    logits = s.apply_fn({"params": s.params, "batch_stats": s.batch_stats}, XV, train=False)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, YV).mean()
    assert whole["loss"] == pytest.approx(float(nll), rel=1e-5)
    assert whole["error"] == pytest.approx(float(np.mean(np.argmax(logits, -1) != YV)))


def test_evaluate_rejects_bad_shapes():
    with pytest.raises(ValueError, match="evaluate"):
        training.evaluate(new_state(), XV, YV[:3])


def test_fit_learns_and_is_deterministic():
    _, h1 = training.fit(new_state(), (X, Y), epochs=4, batch_size=8, seed=3,
                         evals={"validation": (XV, YV)}, progress=False)
    _, h2 = training.fit(new_state(), (X, Y), epochs=4, batch_size=8, seed=3,
                         evals={"validation": (XV, YV)}, progress=False)
    _, h3 = training.fit(new_state(), (X, Y), epochs=4, batch_size=8, seed=4,
                         evals={"validation": (XV, YV)}, progress=False)
    assert h1["train_loss"][-1] < 0.7 * h1["train_loss"][0]
    assert h1["validation_error"][-1] < 0.2
    assert h1["step_loss"] == h2["step_loss"] and h1["validation_loss"] == h2["validation_loss"]
    assert h1["step_loss"] != h3["step_loss"]
    assert h1["steps"] == [12, 24, 36, 48]


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    kw = dict(batch_size=8, seed=1, evals={"validation": (XV, YV)}, progress=False)
    full_state, full = training.fit(new_state(), (X, Y), epochs=3, **kw)
    # Interrupted after one epoch, then resumed from the checkpoint by a fresh process-like call.
    training.fit(new_state(), (X, Y), epochs=1, checkpoint_dir=tmp_path, **kw)
    ckpt = training.Checkpointer(tmp_path)
    assert ckpt.latest() == 1
    ckpt.close()
    resumed_state, resumed = training.fit(new_state(), (X, Y), epochs=3,
                                          checkpoint_dir=tmp_path, **kw)
    for key in ("epoch", "steps", "step_loss", "train_loss", "train_error",
                "validation_loss", "validation_error"):
        assert resumed[key] == full[key], key
    assert_trees_equal(resumed_state.params, full_state.params)
    assert_trees_equal(resumed_state.batch_stats, full_state.batch_stats)
    assert_trees_equal(resumed_state.opt_state, full_state.opt_state)
    assert int(resumed_state.step) == int(full_state.step) == 36


def test_checkpointer_roundtrip_and_errors(tmp_path):
    s, _ = training.train_epoch(new_state(), X.reshape(12, 8, 6), Y.reshape(12, 8))
    ckpt = training.Checkpointer(tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        ckpt.restore(new_state())
    ckpt.save(5, s, {"epoch": [5], "note": "x"})
    restored, history = ckpt.restore(new_state())
    ckpt.close()
    assert history == {"epoch": [5], "note": "x"}
    assert int(restored.step) == 12
    assert_trees_equal(restored.params, s.params)
    assert_trees_equal(restored.opt_state, s.opt_state)


def test_checkpoint_tree_is_unchanged_by_takes_mask(tmp_path):
    """A checkpoint saved without the flag restores into a state with it, and back."""
    s, _ = training.train_epoch(new_state(), X.reshape(12, 8, 6), Y.reshape(12, 8))
    ckpt = training.Checkpointer(tmp_path)
    ckpt.save(1, s, {"epoch": [1]})
    restored, _ = ckpt.restore(new_state(takes_mask=True))
    ckpt.close()
    assert restored.takes_mask is True  # from the template: the flag is not saved
    assert int(restored.step) == 12
    assert_trees_equal((restored.params, restored.batch_stats, restored.opt_state),
                       (s.params, s.batch_stats, s.opt_state))


@pytest.mark.parametrize("name, clash", [("train", "train_loss and train_error"),
                                         ("step", "step_loss")])
def test_fit_refuses_eval_names_that_collide_with_its_own_history(name, clash, tmp_path):
    """An evaluation named "train" would interleave its values with fit's own train_loss."""
    epochs_run = []
    with pytest.raises(ValueError, match=rf"fit: evals name '{name}' would be recorded as "
                                         rf"{clash}, which fit records itself"):
        training.fit(new_state(), (X, Y), epochs=1, batch_size=8, seed=0, progress=False,
                     evals={"validation": (XV, YV), name: (X, Y)},
                     checkpoint_dir=tmp_path / "ckpt", on_epoch=lambda e, h: epochs_run.append(e))
    assert epochs_run == [] and not (tmp_path / "ckpt").exists()  # refused before anything
    with pytest.raises(TypeError, match="evals names must be strings"):
        training.fit(new_state(), (X, Y), epochs=1, batch_size=8, seed=0, progress=False,
                     evals={1: (X, Y)})


def test_an_eval_of_the_training_split_under_another_name_is_recorded_apart():
    _, history = training.fit(new_state(), (X, Y), epochs=2, batch_size=8, seed=0,
                              progress=False, evals={"train_eval": (X, Y)})
    assert len(history["train_loss"]) == len(history["train_eval_loss"]) == 2
    # Inference mode after the epoch versus the mean over the epoch's steps: not the same.
    assert history["train_eval_loss"] != history["train_loss"]


# ------------------------------------------------ curves within epochs, TensorBoard


def test_fit_evaluates_curves_at_the_chunk_ends_of_every_epoch():
    """12 steps an epoch, 4 evaluations: after steps 3, 6, 9, 12 of each epoch; the last of
    an epoch is its end, so a curve of the evaluated split itself meets the epoch's value."""
    kw = dict(epochs=2, batch_size=8, seed=2, evals={"validation": (XV, YV)}, progress=False)
    _, h = training.fit(new_state(), (X, Y), curves={"validation": (XV, YV)},
                        evals_per_epoch=4, **kw)
    assert h["eval_steps"] == [3, 6, 9, 12, 15, 18, 21, 24]
    for key in ("eval_seconds", "train_curve_loss", "train_curve_error",
                "validation_curve_loss", "validation_curve_error"):
        assert len(h[key]) == 8, key
    assert h["validation_curve_error"][3::4] == h["validation_error"]
    assert h["validation_curve_loss"][3::4] == h["validation_loss"]
    # Equal chunks: the epoch's mean training loss is the mean of its chunks' means.
    np.testing.assert_allclose(np.mean(np.reshape(h["train_curve_loss"], (2, 4)), axis=1),
                               h["train_loss"], rtol=1e-6)
    assert h["eval_seconds"] == sorted(h["eval_seconds"]) and h["eval_seconds"][-1] > 0
    assert h["eval_seconds"][3::4] <= h["seconds"]
    # The same steps as one scan per epoch, whose history has no curve keys.
    _, whole = training.fit(new_state(), (X, Y), **kw)
    assert "eval_steps" not in whole and "validation_curve_error" not in whole
    np.testing.assert_allclose(np.asarray(h["step_loss"]), np.asarray(whole["step_loss"]),
                               rtol=1e-5, atol=1e-6)
    assert h["validation_error"] == whole["validation_error"]


def test_fit_chunks_an_epoch_that_does_not_divide_evenly():
    _, h = training.fit(new_state(), (X, Y), epochs=1, batch_size=8, seed=0, progress=False,
                        curves={"test": (XV, YV)}, evals_per_epoch=5)
    assert h["eval_steps"] == [2, 5, 7, 10, 12]
    _, h = training.fit(new_state(), (X, Y), epochs=1, batch_size=32, seed=0, progress=False,
                        curves={"test": (XV, YV)}, evals_per_epoch=10)
    assert h["eval_steps"] == [1, 2, 3]  # at most once per step
    assert len(h["test_curve_error"]) == 3


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(evals_per_epoch=0, curves={"test": (XV, YV)}), ValueError,
     "evals_per_epoch must be a positive int, got 0"),
    (dict(evals_per_epoch=2.0, curves={"test": (XV, YV)}), ValueError,
     "evals_per_epoch must be a positive int, got 2.0"),
    (dict(evals_per_epoch=2), ValueError, "no curves were given"),
    (dict(curves={"train": (XV, YV)}), ValueError,
     "curves name 'train' would be recorded as train_curve_loss and train_curve_error"),
    (dict(evals={"a_curve": (XV, YV)}, curves={"a": (XV, YV)}), ValueError,
     "curves name 'a' would be recorded as a_curve_loss, which evals name 'a_curve' records"),
    (dict(curves={2: (XV, YV)}), TypeError, "curves names must be strings"),
])
def test_fit_refuses_bad_curves(kwargs, error, message, tmp_path):
    with pytest.raises(error, match=message):
        training.fit(new_state(), (X, Y), epochs=1, batch_size=8, seed=0, progress=False,
                     checkpoint_dir=tmp_path / "ckpt", **kwargs)
    assert not (tmp_path / "ckpt").exists()  # refused before anything


def test_resumed_run_with_curves_equals_uninterrupted_run(tmp_path):
    kw = dict(batch_size=8, seed=1, evals={"validation": (XV, YV)}, progress=False,
              curves={"validation": (XV[:20], YV[:20])}, evals_per_epoch=3)
    full_state, full = training.fit(new_state(), (X, Y), epochs=3, **kw)
    training.fit(new_state(), (X, Y), epochs=1, checkpoint_dir=tmp_path, **kw)
    resumed_state, resumed = training.fit(new_state(), (X, Y), epochs=3,
                                          checkpoint_dir=tmp_path, **kw)
    assert resumed["eval_steps"] == full["eval_steps"] == [4, 8, 12, 16, 20, 24, 28, 32, 36]
    for key in ("step_loss", "train_loss", "validation_error", "train_curve_loss",
                "validation_curve_loss", "validation_curve_error"):
        assert resumed[key] == full[key], key
    assert_trees_equal(resumed_state.params, full_state.params)


def read_events(folder):
    """``{tag: [(step, value), ...]}`` of the scalars in the TensorBoard event files in
    ``folder``: TFRecords (length, its CRC, the serialized ``Event``, its CRC)."""
    import struct

    from tensorboardX.proto import event_pb2

    scalars = {}
    files = sorted(p for p in folder.iterdir() if p.name.startswith("events.out.tfevents"))
    assert files
    for path in files:
        raw = path.read_bytes()
        at = 0
        while at < len(raw):
            (length,) = struct.unpack("<Q", raw[at:at + 8])
            event = event_pb2.Event.FromString(raw[at + 12:at + 12 + length])
            at += 12 + length + 4
            for v in event.summary.value:
                scalars.setdefault(v.tag, []).append((event.step, v.simple_value))
    return scalars


def test_tensorboard_events_hold_the_history(tmp_path):
    """The event files fit writes, read back, are its history (as float32)."""
    _, h = training.fit(new_state(), (X, Y), epochs=2, batch_size=8, seed=0, progress=False,
                        evals={"validation": (XV, YV)}, curves={"test": (XV[:16], YV[:16])},
                        evals_per_epoch=2, loss_points=4, tensorboard_dir=tmp_path / "tb")
    events = read_events(tmp_path / "tb")

    def f32(steps, values):
        return [(int(s), float(np.float32(v))) for s, v in zip(steps, values, strict=True)]

    assert events["train/step_loss"] == [(int(s), float(np.float32(v)))
                                         for s, v in h["step_loss"]]
    assert events["train/loss"] == f32(h["eval_steps"], h["train_curve_loss"])
    assert events["train/error"] == f32(h["eval_steps"], h["train_curve_error"])
    assert events["test_curve/loss"] == f32(h["eval_steps"], h["test_curve_loss"])
    assert events["test_curve/error"] == f32(h["eval_steps"], h["test_curve_error"])
    assert events["validation/loss"] == f32(h["steps"], h["validation_loss"])
    assert events["validation/error"] == f32(h["steps"], h["validation_error"])
    assert h["eval_steps"] == [6, 12, 18, 24]


def test_tensorboard_without_tensorboardx_stops_before_training(tmp_path, monkeypatch):
    import sys

    from lnjax import MissingExtraError

    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # as if not installed
    epochs_run = []
    with pytest.raises(MissingExtraError, match=r'pip install "lnjax\[tensorboard\]"'):
        training.fit(new_state(), (X, Y), epochs=1, batch_size=8, seed=0, progress=False,
                     checkpoint_dir=tmp_path / "ckpt", tensorboard_dir=tmp_path / "tb",
                     on_epoch=lambda e, h: epochs_run.append(e))
    assert epochs_run == [] and not (tmp_path / "ckpt").exists()
    assert not (tmp_path / "tb").exists()


# ------------------------------------------------ what fit trains: losses, dropout, NNX


def regression_data(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    return x, np.stack([x[:, :3].sum(1), x[:, 3:].sum(1) - x[:, 0]], 1).astype(np.float32)


class Regressor(nn.Module):
    @nn.compact
    def __call__(self, x, *, train):
        return nn.Dense(2)(nn.relu(lnn.LayerNorm()(nn.Dense(16)(x))))


def mse(outputs, targets):
    return jnp.mean((outputs - targets) ** 2, axis=-1)


def test_fit_trains_a_regression_on_float_targets_with_any_split_names():
    """A loss of one's own without errors: the history records the losses and no error, under
    keys named after the given splits (none of fit's own naming of splits)."""
    x, y = regression_data(96, 0)
    state = training.create_train_state(Regressor(), optax.adam(0.02), x[:1], seed=0,
                                        loss_fn=mse)
    _, h = training.fit(state, (x, y), epochs=3, batch_size=8, seed=0, progress=False,
                        evals={"holdout": regression_data(24, 1)},
                        curves={"probe": regression_data(8, 2)}, evals_per_epoch=2)
    assert set(h) == {"epoch", "steps", "train_loss", "holdout_loss", "seconds", "step_loss",
                      "eval_steps", "eval_seconds", "train_curve_loss", "probe_curve_loss"}
    assert h["train_loss"][-1] < 0.5 * h["train_loss"][0]
    assert h["holdout_loss"][-1] < h["holdout_loss"][0]
    assert h["eval_steps"] == [6, 12, 18, 24, 30, 36] and len(h["probe_curve_loss"]) == 6


class DropoutNet(nn.Module):
    rate: float = 0.5

    @nn.compact
    def __call__(self, x, *, train):
        x = nn.relu(nn.Dense(16)(x))
        return nn.Dense(3)(nn.Dropout(self.rate, deterministic=not train)(x))


def test_a_resumed_run_with_dropout_equals_an_uninterrupted_one(tmp_path):
    """The dropout masks come from the seed and the step, not from how the run was split."""
    def state():
        return training.create_train_state(DropoutNet(), optax.adam(0.02), X[:1], seed=0)

    kw = dict(batch_size=8, seed=1, evals={"validation": (XV, YV)}, progress=False)
    full_state, full = training.fit(state(), (X, Y), epochs=2, **kw)
    training.fit(state(), (X, Y), epochs=1, checkpoint_dir=tmp_path, **kw)
    resumed_state, resumed = training.fit(state(), (X, Y), epochs=2, checkpoint_dir=tmp_path,
                                          **kw)
    assert resumed["step_loss"] == full["step_loss"]
    assert resumed["validation_loss"] == full["validation_loss"]
    assert_trees_equal(resumed_state.params, full_state.params)
    # The masks do act: without dropout the same steps give other losses.
    plain = training.create_train_state(DropoutNet(rate=0.0), optax.adam(0.02), X[:1], seed=0)
    _, without = training.fit(plain, (X, Y), epochs=1, **kw)
    assert without["step_loss"] != full["step_loss"][:len(without["step_loss"])]


class NNXNet(nnx.Module):
    """An NNX classifier with lnjax's NNX batch norm and a list of layers."""

    def __init__(self, rngs):
        self.layers = nnx.List([nnx.Linear(6, 16, rngs=rngs), nnx.Linear(16, 3, rngs=rngs)])
        self.norm = lnnx.BatchNorm(16, momentum=0.9, rngs=rngs)

    def __call__(self, x):
        return self.layers[1](nnx.relu(self.norm(self.layers[0](x))))


def test_fit_trains_an_nnx_model_and_its_batch_statistics(tmp_path):
    def state():
        return training.create_train_state(NNXNet(nnx.Rngs(0)), optax.adam(0.05), X[:1],
                                           seed=0)

    initial = state()
    kw = dict(batch_size=8, seed=0, evals={"validation": (XV, YV)}, progress=False)
    full_state, h = training.fit(state(), (X, Y), epochs=2, **kw)
    assert h["validation_error"][-1] < 0.2 and h["train_loss"][-1] < h["train_loss"][0]
    assert not np.allclose(full_state.batch_stats["norm"]["mean"],
                           initial.batch_stats["norm"]["mean"])
    module = training.nnx_module(full_state)
    np.testing.assert_array_equal(module.norm.var[...], full_state.batch_stats["norm"]["var"])
    # Checkpoints of NNX variables (integer keys for the list) resume exactly.
    training.fit(state(), (X, Y), epochs=1, checkpoint_dir=tmp_path, **kw)
    resumed_state, resumed = training.fit(state(), (X, Y), epochs=2, checkpoint_dir=tmp_path,
                                          **kw)
    assert resumed["step_loss"] == h["step_loss"]
    assert_trees_equal((resumed_state.params, resumed_state.batch_stats),
                       (full_state.params, full_state.batch_stats))


# ------------------------------------------------ the parts of fit, each on its own


def record(epoch, loss, *, evals=None, steps_per_epoch=12, seconds=1.5, per_step=None):
    """An EpochRecord as EpochRunner.run would return it."""
    per_step = per_step if per_step is not None else {"loss": np.full(steps_per_epoch, loss)}
    return training.EpochRecord(epoch, epoch * steps_per_epoch, seconds,
                                {"loss": loss, "error": loss / 10},
                                [[epoch * steps_per_epoch, loss]], evals or {}, per_step)


def test_history_declares_its_keys_from_the_names_it_is_given():
    h = training.History(["dev", "heldout"], ["probe"])
    assert list(h) == ["epoch", "steps", "train_loss", "train_error", "dev_loss", "dev_error",
                       "heldout_loss", "heldout_error", "seconds", "step_loss", "eval_steps",
                       "eval_seconds", "train_curve_loss", "train_curve_error",
                       "probe_curve_loss", "probe_curve_error"]
    assert list(training.History()) == ["epoch", "steps", "train_loss", "train_error",
                                        "seconds", "step_loss"]
    h.point(training.CurvePoint(6, 0.5, {"loss": 2.0, "error": 0.5},
                                {"probe": {"loss": 3.0, "error": 0.75}}))
    h.epoch(record(1, 1.0, evals={"dev": {"loss": 1.1, "error": 0.1},
                                  "heldout": {"loss": 1.2, "error": 0.2}}), None)
    h.point(training.CurvePoint(18, 0.25, {"loss": 1.0, "error": 0.25},
                                {"probe": {"loss": 2.0, "error": 0.5}}))
    assert h["eval_seconds"] == [0.5, 1.75]  # cumulative: the first epoch's 1.5 s, then 0.25
    assert h["seconds"] == [1.5] and h.seconds == 1.5
    assert h["dev_error"] == [0.1] and h["heldout_loss"] == [1.2]
    assert h["train_curve_loss"] == [2.0, 1.0] and h["probe_curve_error"] == [0.75, 0.5]
    assert h["step_loss"] == [[12, 1.0]]
    d = h.as_dict()
    d["epoch"].append(99)
    assert h["epoch"] == [1]  # a copy
    # A saved history replaces the lists; keys it does not declare are kept.
    fresh = training.History(["dev", "heldout"], ["probe"])
    fresh.load({**h.as_dict(), "note": [1]})
    assert fresh.as_dict() == {**h.as_dict(), "note": [1]} and fresh.seconds == 1.5


def test_history_without_curves_ignores_curve_points():
    h = training.History(metrics=("loss",))
    h.point(training.CurvePoint(12, 1.0, {"loss": 2.0}, {}))
    assert all(v == [] for v in h.values()) and "eval_steps" not in h


class Recorder(training.Observer):
    """An observer that writes down what it sees."""

    tracks_steps = True

    def __init__(self):
        self.seen = []

    def start(self, run):
        self.seen.append(("start", run))

    def progress(self, step):
        self.seen.append(("progress", step))

    def point(self, point):
        self.seen.append(("point", point.step, sorted(point.curves)))

    def epoch(self, record, state):
        self.seen.append(("epoch", record.epoch, int(state.step)))

    def close(self):
        self.seen.append(("close",))


def test_epoch_runner_runs_an_epoch_in_chunks_alone():
    runner = training.EpochRunner((X, Y), batch_size=8, seed=3, evals={"dev": (XV, YV)},
                                  curves={"probe": (XV[:8], YV[:8])}, evals_per_epoch=3,
                                  loss_points=5)
    assert runner.steps_per_epoch == 12 and runner.chunk_ends == [4, 8, 12]
    watcher = Recorder()
    state, rec = runner.run(new_state(bn=False), 1, [watcher])
    jax.effects_barrier()
    points = [s for s in watcher.seen if s[0] == "point"]
    assert points == [("point", 16, ["probe"]), ("point", 20, ["probe"]),
                      ("point", 24, ["probe"])]
    progress = [s[1] for s in watcher.seen if s[0] == "progress"]
    assert progress and all(12 < p <= 24 for p in progress)
    assert (rec.epoch, rec.steps) == (2, 24) and int(state.step) == 12
    assert rec.per_step["loss"].shape == (12,) and len(rec.step_loss) == 5
    assert rec.step_loss[0][0] == 13 and rec.step_loss[-1][0] == 24
    assert rec.evals["dev"] == training.evaluate(state, XV, YV)
    # The same steps as train_epoch on the same batches.
    xb, yb = steps.batches(X, Y, 8, seed=3, epoch=1)
    expect, metrics = training.train_epoch(new_state(bn=False), xb, yb)
    np.testing.assert_allclose(rec.per_step["loss"], metrics["loss"], rtol=1e-5, atol=1e-6)
    assert_trees_equal(state.params, expect.params, atol=1e-5)


def test_on_epoch_sees_the_history_and_fit_names_no_split_itself():
    calls = []
    _, h = training.fit(new_state(bn=False), (X, Y), epochs=2, batch_size=8, seed=0,
                        progress=False, evals={"dev": (XV, YV)},
                        on_epoch=lambda e, hist: calls.append((e, len(hist["dev_loss"]))))
    assert calls == [(1, 1), (2, 2)]
    assert "validation_loss" not in h and "test_loss" not in h  # no split names of its own


def test_progress_bar_counts_every_step(capsys):
    _, h = training.fit(new_state(bn=False), (X, Y), epochs=2, batch_size=8, seed=0,
                        desc="probe-bar", evals={"dev": (XV, YV)})
    err = capsys.readouterr().err
    assert "probe-bar" in err and "24/24" in err and "dev_err=" in err
    bar = training.ProgressBar("alone", file=io.StringIO())
    bar.start(training.RunInfo(epochs=3, start=1, steps_per_epoch=10))
    assert (bar.bar.n, bar.bar.total) == (10, 30)
    bar.progress(14)
    bar.point(training.CurvePoint(20, 1.0, {"loss": 0.5}, {"probe": {"loss": 0.25}}))
    assert bar.bar.n == 20 and "prob_loss=0.250" in str(bar.bar)
    bar.progress(15)  # a late report never moves it back
    assert bar.bar.n == 20
    bar.close()


def test_tensorboard_log_alone_and_only_where_it_writes(tmp_path):
    log = training.TensorBoardLog(tmp_path / "tb")
    log.start(training.RunInfo(epochs=2, start=0, steps_per_epoch=12))
    log.point(training.CurvePoint(12, 1.0, {"loss": 0.5, "error": 0.25}, {}))
    log.epoch(record(1, 0.5, evals={"dev": {"loss": 0.75, "error": 0.125}}), None)
    log.close()
    events = read_events(tmp_path / "tb")
    assert events == {"train/loss": [(12, 0.5)], "train/error": [(12, 0.25)],
                      "train/step_loss": [(12, 0.5)], "dev/loss": [(12, 0.75)],
                      "dev/error": [(12, 0.125)]}
    silent = training.TensorBoardLog(tmp_path / "silent", write=False)
    silent.start(training.RunInfo(epochs=2, start=0, steps_per_epoch=12))
    silent.point(training.CurvePoint(12, 1.0, {"loss": 0.5}, {}))
    silent.close()
    assert not (tmp_path / "silent").exists()


def test_checkpoint_saver_saves_and_resumes_alone(tmp_path, monkeypatch):
    s, _ = training.train_epoch(new_state(bn=False), X.reshape(12, 8, 6), Y.reshape(12, 8))
    history = training.History(["dev"])
    saver = training.CheckpointSaver(tmp_path / "ckpt", history)
    assert saver.resume(new_state(bn=False))[1] == 0
    rec = record(1, 0.5, evals={"dev": {"loss": 0.75, "error": 0.125}})
    history.epoch(rec, s)
    saver.epoch(rec, s)
    saver.close()
    again = training.History(["dev"])
    saver = training.CheckpointSaver(tmp_path / "ckpt", again)
    checked = []
    check = checksums.check
    monkeypatch.setattr(checksums, "check", lambda *a, **k: checked.append(a) or check(*a, **k))
    restored, start = saver.resume(new_state(bn=False))
    saver.close()
    assert len(checked) == 1  # the checkpoint's files are read and hashed once
    assert start == 1 and again.as_dict() == history.as_dict()
    assert int(restored.step) == 12
    assert_trees_equal(restored.params, s.params)


def test_epoch_callback_and_non_finite_stop_alone(tmp_path):
    history = training.History()
    seen = []
    callback = training.EpochCallback(lambda e, h: seen.append((e, h)), history)
    history.epoch(record(1, 0.5), None)
    callback.epoch(record(1, 0.5), None)
    assert seen == [(1, history.as_dict())]
    stop = training.NonFiniteStop(tmp_path)
    state = new_state(bn=False)
    stop.epoch(record(2, 0.5), state)  # finite: nothing happens
    losses = np.array([0.5, 0.4, np.inf, 0.3])
    with pytest.raises(FloatingPointError, match=rf"^fit: the training loss of epoch 3 is not "
                                                 rf"finite \(first at its step 3 of 4: inf\).*"
                                                 rf"last checkpoint \(epoch 2\) in {tmp_path}"):
        stop.epoch(record(3, 0.5, per_step={"loss": losses}), state)
    bad = state.replace(params=jax.tree.map(lambda a: a * np.nan, state.params))
    with pytest.raises(FloatingPointError, match="the state after epoch 1 holds a NaN"):
        training.NonFiniteStop().epoch(record(1, 0.5), bad)
