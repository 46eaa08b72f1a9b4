"""The ConvNet experiment (lnjax.experiments.convnet): tiny end-to-end runs on IDX files the
tests write, over one device and split over the 8 CPU devices of tests/conftest.py; the
model's pieces; the verdicts computed from the numbers."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lnjax import parallel, training
from lnjax.experiments import convnet, settings
from tests.helpers import small_mnist

N_TRAIN, N_VAL, N_TEST = 128, 64, 64  # validation and test alike: one evaluation compiled
TINY = ["--channels", "8,8", "--no-progress", "--lr", "1e-2"]


@pytest.fixture
def mnist(tmp_path):
    """A small MNIST-format data set in tmp_path/data/mnist; validation = last 64 examples."""
    return small_mnist(tmp_path, N_TRAIN, N_VAL, N_TEST)


def data_flags(mnist, out):
    return ["--dataset", "mnist", *mnist.flags, "--out", str(out),
            "--train-examples", str(N_TRAIN)]


# ------------------------------------------------------------------ end to end


def test_end_to_end_one_device_and_split_over_eight(mnist, tmp_path, capsys):
    assert jax.device_count() == 8  # tests/conftest.py
    out = tmp_path / "cnn"
    results = convnet.main(data_flags(mnist, out) + TINY + [
        "--batch-sizes", "16,32", "--data-parallel", "32", "--epochs", "2"])
    printed = capsys.readouterr().out
    assert "Batch settings: batch 16, one device, batch 32 over 8 devices (4 each)." in printed
    assert "Skipped" not in printed  # batchnorm_sync at 16 is a run marked skipped
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["runs"] == json.loads(json.dumps(results["runs"]))
    assert on_disk["dataset"]["sizes"] == {"train": N_TRAIN, "validation": N_VAL,
                                           "test": N_TEST}
    for method in convnet.METHODS:
        for bs, devices in (("16", 1), ("32", 8)):
            h = on_disk["runs"][method][bs]["0"]
            if method == "batchnorm_sync" and devices == 1:
                assert convnet.skipped(h)
                continue
            assert h["devices"] == devices
            assert h["epoch"] == [1, 2]
            assert np.isfinite(h["train_loss"] + h["test_loss"]).all(), (method, bs)
            assert h["train_loss"][-1] < h["train_loss"][0], (method, bs)
    # Ghost batch norm (per device, 4 examples) and synchronized (32) are different runs.
    ghost = on_disk["runs"]["batchnorm"]["32"]["0"]
    sync = on_disk["runs"]["batchnorm_sync"]["32"]["0"]
    assert ghost["train_loss"] != sync["train_loss"] and ghost["test_loss"] != sync["test_loss"]
    assert (out / "convnet.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (out / "summary.md").read_text()
    assert summary.startswith("| method | batch size | devices |")
    assert "| batchnorm_sync | 32 | 8 |" in summary and "| batchnorm_sync | 16 |" not in summary
    assert summary.count("- **") == 4  # verdicts: two at batch 16; at 32 over 8 and its control
    assert "\n".join(convnet.verdicts(on_disk)) in summary
    assert summary == convnet.summary(on_disk)  # the driver wrote the experiment's summary
    assert summary.strip() in printed


def test_resumes_from_checkpoints(mnist, tmp_path):
    base = data_flags(mnist, tmp_path / "cnn") + TINY + [
        "--methods", "batchrenorm", "--batch-sizes", "16", "--data-parallel", "none"]
    first = convnet.main(base + ["--epochs", "1"])["runs"]["batchrenorm"]["16"]["0"]
    resumed = convnet.main(base + ["--epochs", "2"])["runs"]["batchrenorm"]["16"]["0"]
    fresh = convnet.main(base + ["--epochs", "2", "--no-resume"])["runs"]["batchrenorm"]["16"]
    fresh = fresh["0"]
    assert resumed["test_error"][:1] == first["test_error"]
    assert resumed["step_loss"] == fresh["step_loss"]  # the renorm step counter resumed too
    assert resumed["test_loss"] == fresh["test_loss"]


def test_asks_for_host_devices_only_when_not_told():
    env = {"XLA_FLAGS": "--xla_dump_to=/tmp/x"}
    convnet.ask_for_host_devices(8, env)
    assert env["XLA_FLAGS"] == "--xla_dump_to=/tmp/x --xla_force_host_platform_device_count=8"
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    convnet.ask_for_host_devices(8, env)
    assert env == {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    env = {}
    convnet.ask_for_host_devices(4, env)
    assert env == {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}


def test_default_methods_without_a_split_batch_run_all_but_batchnorm_sync(mnist, tmp_path,
                                                                           capsys):
    """The default --methods include batchnorm_sync; with no batch split over devices it is
    left out, said in one line, and the other methods run."""
    s, skipped = convnet.plan(convnet.ConvNetSettings(batch_sizes=(128,)))
    assert s.methods == tuple(m for m in convnet.METHODS if m != "batchnorm_sync")
    assert skipped == ["batchnorm_sync (it needs a batch split over devices: none of "
                       "--batch-sizes 128 is in --data-parallel 32)"]
    # On the command line (two methods here, for speed; the default five run the same way):
    # one device also leaves out the split batch size, in the same one line.
    out = tmp_path / "cnn"
    results = convnet.main(data_flags(mnist, out) + TINY + [
        "--methods", "groupnorm,batchnorm_sync", "--batch-sizes", "16,32", "--devices", "1",
        "--epochs", "1"])
    lines = [line for line in capsys.readouterr().out.splitlines()
             if line.startswith("Skipped")]
    assert lines[0] == (
        "Skipped: batch size 32 (--data-parallel 32 needs several devices, found 1: on a CPU "
        "set XLA_FLAGS=--xla_force_host_platform_device_count=8 before jax starts (python -m "
        "lnjax.experiments.convnet does)); batchnorm_sync (it needs a batch split over "
        "devices: none of --batch-sizes 16 is in --data-parallel 32).")
    assert list(results["runs"]) == ["groupnorm"] and list(results["runs"]["groupnorm"]) == ["16"]
    assert results["skipped"] == json.loads((out / "results.json").read_text())["skipped"]
    assert (out / "summary.md").read_text().rstrip().endswith(lines[0])


def test_plan_refuses_what_cannot_run_at_all():
    with pytest.raises(settings.SettingsError, match="must divide evenly over the 8 devices"):
        convnet.plan(convnet.ConvNetSettings(batch_sizes=(36,), data_parallel=(36,)))
    with pytest.raises(settings.SettingsError, match="needs several devices, found 1"):
        convnet.plan(convnet.ConvNetSettings(batch_sizes=(32,), devices=1))
    same = convnet.ConvNetSettings(batch_sizes=(128, 32), devices=4)
    assert convnet.plan(same) == (same, [])


@pytest.mark.parametrize("argv, message", [
    (["--methods", "nope"], "--methods: unknown"),
    (["--channels", "8,12"], "--channels must be positive multiples of 8"),
    (["--batch-sizes", "36", "--data-parallel", "36"], "must divide evenly over the 8 devices"),
    (["--batch-sizes", "32", "--data-parallel", "32", "--devices", "1"],
     "needs several devices, found 1"),
    (["--methods", "batchnorm_sync", "--batch-sizes", "128,4"],
     "--methods batchnorm_sync: it needs a batch split over devices"),
    (["--data-parallel", "a"], "invalid"),
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--momentum", "1"], "--momentum must be in [0, 1)"),
])
def test_bad_flags_are_clear_errors(argv, message, capsys):
    with pytest.raises(SystemExit):
        convnet.main(argv)
    assert message in capsys.readouterr().err


# ------------------------------------------------------------------ ghost and synchronized


def one_step(method, xb, yb, mesh):
    """The state after one step on the batch ``xb`` (1, 32, 12, 12), on ``mesh`` or one device."""
    axis = parallel.AXIS if method == "batchnorm_sync" else None
    model = convnet.ConvNet(method=method, channels=(8, 8), axis_name=axis)
    state = training.create_train_state(model, optax.sgd(0.1), xb[0, :1], seed=0,
                                        takes_mask=True)
    if mesh is None:
        return training.train_epoch(state, xb, yb)[0]
    return parallel.train_epoch(state, xb, yb, mesh)[0]


def test_synchronized_batch_norm_is_the_whole_batch_and_ghost_is_not():
    rng = np.random.default_rng(0)
    xb = rng.random((1, 32, 12, 12), dtype=np.float32)
    xb[:, 16:] += 2 * rng.random((1, 16, 1, 1), dtype=np.float32)  # devices see unlike data
    yb = rng.integers(0, 10, (1, 32)).astype(np.int32)
    mesh = parallel.make_mesh(8)
    whole = one_step("batchnorm", xb, yb, None)
    sync = one_step("batchnorm_sync", xb, yb, mesh)
    ghost = one_step("batchnorm", xb, yb, mesh)
    for a, b in zip(jax.tree.leaves(whole.batch_stats), jax.tree.leaves(sync.batch_stats)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    for a, b in zip(jax.tree.leaves(whole.params), jax.tree.leaves(sync.params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    # Ghost: the running mean is the devices' average of their means (the same as the whole
    # batch's), but the running variance misses the spread between the devices' means.
    whole_var = whole.batch_stats["BatchNorm_0"]["var"]
    ghost_var = ghost.batch_stats["BatchNorm_0"]["var"]
    assert np.all(ghost_var < whole_var)
    assert not np.allclose(ghost.params["Dense_0"]["kernel"], whole.params["Dense_0"]["kernel"])


# ------------------------------------------------------------------ the model's pieces


def test_convolution_and_its_gradient_match_xla():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(3, 7, 6, 4)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(3, 3, 4, 5)), jnp.float32)
    g = jnp.asarray(rng.normal(size=(3, 7, 6, 5)), jnp.float32)
    reference = jax.lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(convnet.conv_same(x, k), reference, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(convnet.conv_im2col(x, k), reference, rtol=1e-5, atol=1e-5)
    ours = jax.vjp(convnet.conv_same, x, k)[1](g)
    xla = jax.vjp(lambda a, b: jax.lax.conv_general_dilated(
        a, b, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")), x, k)[1](g)
    for a, b in zip(ours, xla):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_model_shapes_parameters_and_mask():
    model = convnet.ConvNet("batchnorm", channels=(8, 16, 8))
    x = np.random.default_rng(2).random((4, 12, 12), dtype=np.float32)
    variables = jax.jit(model.init, static_argnames="train")(jax.random.key(0), x, train=False)
    assert variables["params"]["Conv_1"]["kernel"].shape == (3, 3, 8, 16)
    assert "bias" not in variables["params"]["Conv_0"]  # the normalization's bias instead
    assert "bias" in jax.eval_shape(functools.partial(convnet.ConvNet("none", (8,)).init,
                                                      train=False),
                                    jax.random.key(0), x)["params"]["Conv_0"]
    assert jax.tree.map(jnp.shape, variables["batch_stats"]["BatchNorm_2"]) == {"mean": (8,),
                                                                               "var": (8,)}
    train = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))
    mask = np.array([True, True, True, False]).reshape(4, 1, 1)  # train_step's, for images
    padded, _ = train(variables, x, mask=mask)
    real, _ = train(variables, x[:3])
    assert padded.shape == (4, 10)
    np.testing.assert_allclose(padded[:3], real, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="one value per example"):
        train(variables, x, mask=np.ones((4, 12)))
    with pytest.raises(ValueError, match="method must be one of"):
        jax.eval_shape(functools.partial(convnet.ConvNet("batch").init, train=False),
                       jax.random.key(0), x)


def test_batch_renorm_starts_as_batch_norm_and_counts_its_steps():
    x = np.random.default_rng(3).random((4, 12, 12), dtype=np.float32)
    bn, brn = convnet.ConvNet("batchnorm", (8,)), convnet.ConvNet("batchrenorm", (8,))
    v_bn, v_brn = bn.init(jax.random.key(0), x, train=False), brn.init(jax.random.key(0), x,
                                                                       train=False)
    y_bn, _ = bn.apply(v_bn, x, train=True, mutable=["batch_stats"])
    y_brn, new = brn.apply(v_brn, x, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(y_brn, y_bn, rtol=1e-5, atol=1e-6)  # r_max 1, d_max 0 at first
    assert float(new["batch_stats"]["renorm_step"]) == 1.0
    late = {**v_brn, "batch_stats": {**new["batch_stats"], "renorm_step": jnp.float32(1000)}}
    y_late, _ = brn.apply(late, x, train=True, mutable=["batch_stats"])
    assert not np.allclose(y_late, y_bn, atol=1e-3)  # the running statistics now correct it


# ------------------------------------------------------------------ the verdicts


def fake_results(errors, *, devices=None, n_test=10000):
    """A results.json holding only last-epoch test errors: ``{(method, bs): error}``."""
    devices = devices or {}
    runs = {}
    for (method, bs), err in errors.items():
        runs.setdefault(method, {})[bs] = {"epoch": [1], "train_loss": [1.0],
                                           "test_error": [err], "devices": devices.get(bs, 1)}
    return {"dataset": {"name": "fashion_mnist", "sizes": {"test": n_test}}, "runs": runs}


def test_verdicts_follow_the_numbers():
    errors = {("none", "128"): 0.15, ("batchnorm", "128"): 0.10, ("layernorm", "128"): 0.12,
              ("batchnorm", "4"): 0.20, ("layernorm", "4"): 0.13, ("groupnorm", "4"): 0.14,
              ("batchrenorm", "4"): 0.15,
              ("batchnorm", "32"): 0.18, ("layernorm", "32"): 0.19, ("groupnorm", "32"): 0.12,
              ("batchrenorm", "32"): 0.125, ("batchnorm_sync", "32"): 0.11}
    lines = convnet.verdicts(fake_results(errors, devices={"32": 8}))
    assert lines[:4] == [
        "- **At batch 128 (one device), batch norm at least as good as layer norm in a ConvNet "
        "(Ba et al. 2016): held.**",
        "  - BatchNorm at least as good as LayerNorm: held (test error 10.00% vs 12.00%, "
        "-2.00 pp)",
        "- **At batch 128 (one device), layer norm ahead of no normalization (Ba et al. 2016): "
        "held.**",
        "  - LayerNorm ahead of no norm: held (test error 12.00% vs 15.00%, -3.00 pp)"]
    text = "\n".join(lines)
    assert ("At batch 4 (one device), layer norm, group norm and batch renorm ahead of batch "
            "norm: held.**") in text
    assert ("At batch 32 over 8 devices (4 each), layer norm, group norm and per-device batch "
            "renorm ahead of per-device (ghost) batch norm: did not hold (1 of 3 comparisons "
            "within the noise).**") in text
    assert ("LayerNorm ahead of BatchNorm: did not hold (test error 19.00% vs 18.00%, +1.00 pp; "
            "not clear: within ±1.10 pp)") in text
    assert "synchronized batch norm ahead of per-device: held.**" in text
    assert len(lines) == 2 + 2 + 4 + 4 + 2  # a line per claim and per comparison
    # Swap batch norm and layer norm at 128: the first verdict turns.
    errors[("batchnorm", "128")], errors[("layernorm", "128")] = 0.12, 0.10
    flipped = convnet.verdicts(fake_results(errors, devices={"32": 8}))
    assert flipped[0].endswith("did not hold.**")
    assert "+2.00 pp" in flipped[1]


def test_verdicts_say_when_a_difference_is_within_the_noise_or_not_run():
    few = fake_results({("batchnorm", "128"): 0.105, ("layernorm", "128"): 0.10,
                        ("none", "128"): 0.2}, n_test=1000)
    lines = convnet.verdicts(few)
    assert lines[0].endswith("did not hold (within the noise).**")
    assert lines[1].endswith("+0.50 pp; not clear: within ±2.71 pp)")
    missing = convnet.verdicts(fake_results({("batchnorm", "128"): 0.1, ("layernorm", "128"): 0.1}))
    assert missing[0].endswith("held (within the noise).**")
    assert missing[2].endswith("not run.**")
    assert missing[3] == "  - LayerNorm ahead of no norm: not run (none missing)"


def test_summary_lists_the_runs_made_and_the_full_size_command():
    results = fake_results({("batchnorm", "128"): 0.1, ("layernorm", "128"): 0.12,
                            ("none", "128"): 0.2})
    results["runs"]["batchnorm_sync"] = {"128": {"skipped": "one device", "devices": 1}}
    text = convnet.summary(results)
    assert "| batchnorm | 128 | 1 |" in text and "batchnorm_sync" not in text.split("\n\n")[0]
    assert convnet.FULL_SIZE in text
    assert text.rstrip().endswith(convnet.verdicts(results)[-1])
