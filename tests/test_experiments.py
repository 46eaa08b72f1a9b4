"""The experiments: tiny end-to-end runs of the command lines on IDX files the tests write,
and the paper's Table 1 (lnjax.experiments.invariance)."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lnjax import data
from lnjax.experiments import common, invariance, pi_mnist, seq_mnist
from tests.helpers import known_sha256, small_mnist, write_mnist_folder

N_TRAIN, N_VAL, N_TEST = 128, 48, 64  # batches of 16 and 4: equal scans, one compilation


@pytest.fixture
def mnist_dir(tmp_path, monkeypatch):
    """A small MNIST-format data set in tmp_path/data/mnist; validation = last 48 examples."""
    return small_mnist(tmp_path, monkeypatch, N_TRAIN, N_VAL, N_TEST)


def read_results(out):
    with open(out / "results.json") as f:
        return json.load(f)


def is_png(path):
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pi_mnist_end_to_end(mnist_dir, tmp_path, capsys):
    out = tmp_path / "pi"
    argv = ["--dataset", "mnist", "--data-dir", str(mnist_dir), "--hidden", "32,32",
            "--batch-sizes", "16,4", "--epochs", "2", "--lr", "3e-3", "--out", str(out),
            "--no-progress"]
    results = pi_mnist.main(argv)
    printed = capsys.readouterr().out
    assert "Data: mnist/train: 128 examples from idx:" in printed
    assert "| layernorm | 4 |" in printed and "| batchnorm | 16 |" in printed
    on_disk = read_results(out)
    assert on_disk["dataset"]["name"] == "mnist"
    assert on_disk["dataset"]["source"].startswith("idx:")
    assert on_disk["dataset"]["sizes"] == {"train": N_TRAIN, "validation": N_VAL,
                                           "test": N_TEST}
    assert "jax" in on_disk["versions"] and "lnjax" in on_disk["versions"]
    for method in pi_mnist.METHODS:
        for bs in ("16", "4"):
            h = on_disk["runs"][method][bs]["0"]
            assert h["epoch"] == [1, 2]
            assert len(h["test_error"]) == len(h["validation_error"]) == 2
            assert h["train_loss"][-1] < h["train_loss"][0], (method, bs)
            assert h["seconds"][-1] > 0
    assert results["runs"]["layernorm"]["4"]["0"]["test_error"][-1] < 0.5
    assert is_png(out / "figure6.png")
    assert (out / "summary.md").read_text().startswith("| method | batch size |")


def test_pi_mnist_resumes_from_checkpoints(mnist_dir, tmp_path):
    out = tmp_path / "pi"
    base = ["--dataset", "mnist", "--data-dir", str(mnist_dir), "--hidden", "16,16",
            "--methods", "layernorm", "--batch-sizes", "8", "--out", str(out), "--no-progress"]
    first = pi_mnist.main(base + ["--epochs", "1"])["runs"]["layernorm"]["8"]["0"]
    resumed = pi_mnist.main(base + ["--epochs", "2"])["runs"]["layernorm"]["8"]["0"]
    fresh = pi_mnist.main(base + ["--epochs", "2", "--no-resume"])["runs"]["layernorm"]["8"]["0"]
    assert resumed["test_error"][:1] == first["test_error"]
    assert resumed["step_loss"] == fresh["step_loss"]
    assert resumed["test_loss"] == fresh["test_loss"]


def test_seq_mnist_end_to_end(mnist_dir, tmp_path, capsys):
    out = tmp_path / "seq"
    seq_mnist.main(["--dataset", "mnist", "--data-dir", str(mnist_dir), "--hidden", "16",
                    "--batch-sizes", "16", "--epochs", "3", "--lr", "1e-2", "--out", str(out),
                    "--no-progress"])
    assert "| ln_lstm | 16 |" in capsys.readouterr().out
    on_disk = read_results(out)
    for method in seq_mnist.METHODS:
        h = on_disk["runs"][method]["16"]["0"]
        assert h["steps"] == [8, 16, 24]
        assert np.isfinite(h["train_loss"]).all()
        assert h["train_loss"][-1] < h["train_loss"][0], method
        assert h["step_loss"][0][0] == 1 and h["step_loss"][-1][0] == 24
    assert is_png(out / "curves.png")


def _tiny_pi_mnist(data_dir, out, monkeypatch, extra=()):
    """pi_mnist --dataset auto on ``data_dir`` (one short run); returns the results on disk
    and the figure's title."""
    titles = []
    real = common.save_figure
    monkeypatch.setattr(common, "save_figure",
                        lambda fig, path, title: (titles.append(title), real(fig, path, title)))
    pi_mnist.main(["--dataset", "auto", "--data-dir", str(data_dir), "--hidden", "8",
                   "--methods", "layernorm", "--batch-sizes", "16", "--epochs", "1",
                   "--out", str(out), "--no-progress", *extra])
    (title,) = titles
    return read_results(out), title


@pytest.mark.parametrize("known", [True, False], ids=["known_files", "unknown_files"])
def test_auto_run_is_named_after_its_files(tmp_path, monkeypatch, capsys, known):
    """--dataset auto tries mnist first, which finds the files in --data-dir itself; when
    their checksums are Fashion-MNIST's the run is recorded and titled fashion_mnist, else
    it keeps the name that found them and is recorded as unknown data."""
    folder = write_mnist_folder(tmp_path / "files", N_TRAIN + N_VAL, N_TEST)
    monkeypatch.setattr(data, "_VALIDATION_SIZE", N_VAL)
    monkeypatch.setattr(data, "KNOWN_SHA256",
                        known_sha256(folder, "fashion_mnist") if known else {})
    data._read_idx_cached.cache_clear()
    on_disk, title = _tiny_pi_mnist(folder, tmp_path / "out", monkeypatch)
    name = "fashion_mnist" if known else "mnist"
    identity = ("fashion_mnist (verified by checksum)" if known
                else f"unknown IDX data in {folder}")
    printed = capsys.readouterr().out
    assert on_disk["dataset"]["name"] == name
    assert on_disk["dataset"]["identity"] == identity
    assert on_disk["dataset"]["verified"] is known
    assert on_disk["dataset"]["source"] == f"idx:{folder}"
    assert sorted(on_disk["dataset"]["sha256"]) == sorted(p.name for p in folder.iterdir())
    assert title.startswith(f"Permutation-invariant {name} (lnjax)")
    assert f"Data set: {identity}" in printed
    assert f"Permutation-invariant {name} ({identity}; idx:{folder}), 1 epochs" in printed


def test_auto_run_on_debians_fashion_mnist_is_fashion_mnist(tmp_path, monkeypatch):
    """The report's case: --data-dir at Debian's Fashion-MNIST with --dataset auto."""
    debian = Path("/usr/share/datasets/fashion-mnist")
    if not debian.is_dir():
        pytest.skip(f"{debian} is absent (apt-get install dataset-fashion-mnist)")
    data._read_idx_cached.cache_clear()
    on_disk, title = _tiny_pi_mnist(debian, tmp_path / "out", monkeypatch,
                                    extra=["--train-examples", "64"])
    assert on_disk["dataset"]["name"] == "fashion_mnist"
    assert on_disk["dataset"]["identity"] == "fashion_mnist (verified by checksum)"
    assert on_disk["dataset"]["sizes"] == {"train": 64, "validation": 5000, "test": 10000}
    assert title.startswith("Permutation-invariant fashion_mnist (lnjax)")


def test_mlp_masks_padding_out_of_batch_norm_for_image_inputs():
    """The mask train_step passes for images, (batch, 1, 1), keeps the padding out."""
    model = pi_mnist.MLP("batchnorm", hidden=(8,))
    x = np.random.default_rng(0).random((4, 28, 28), dtype=np.float32)
    variables = model.init(jax.random.key(0), x, train=False)
    mask = np.array([True, True, True, False]).reshape(4, 1, 1)
    padded, _ = model.apply(variables, x, train=True, mask=mask, mutable=["batch_stats"])
    real, _ = model.apply(variables, x[:3], train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(padded[:3], real, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="one value per example"):
        model.apply(variables, x, train=True, mask=np.ones((4, 28)), mutable=["batch_stats"])


@pytest.mark.parametrize("module", [pi_mnist, seq_mnist])
@pytest.mark.parametrize("argv, message", [
    (["--methods", "nope"], "--methods: unknown"),
    (["--batch-sizes", "0"], "--batch-sizes must be positive"),
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--lr", "-1"], "--lr must be positive"),
    (["--batch-sizes", "a,b"], "invalid"),
    (["--seeds", "0"], "--seeds must be positive"),
    (["--eval-examples", "0"], "--eval-examples must be positive"),
    (["--evals-per-epoch", "0"], "--evals-per-epoch must be positive"),
])
def test_bad_flags_are_clear_errors(module, argv, message, capsys):
    with pytest.raises(SystemExit):
        module.main(argv)
    assert message in capsys.readouterr().err


def test_help_lists_the_flags(capsys):
    with pytest.raises(SystemExit):
        pi_mnist.main(["--help"])
    text = capsys.readouterr().out
    for flag in ("--dataset", "--data-dir", "--methods", "--batch-sizes", "--epochs", "--lr",
                 "--seed", "--out", "--seeds", "--eval-examples", "--evals-per-epoch",
                 "--tensorboard"):
        assert flag in text


def test_missing_data_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("LNJAX_DATA_DIR", raising=False)
    monkeypatch.setattr(data, "_DEBIAN_DIRS", {"mnist": str(tmp_path / "none"),
                                               "fashion_mnist": str(tmp_path / "none2")})
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        pi_mnist.main(["--dataset", "auto", "--data-dir", str(tmp_path / "empty"),
                       "--out", str(tmp_path / "o")])


def test_data_cli_reports_what_it_finds(mnist_dir, tmp_path, monkeypatch, capsys):
    assert data.main(["mnist", "--data-dir", str(mnist_dir)]) == 0
    assert "mnist/test: 64 examples from idx:" in capsys.readouterr().out
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(data, "_DEBIAN_DIRS", {})
    assert data.main(["kmnist", "--data-dir", str(tmp_path / "empty")]) == 1
    assert "none of kmnist found" in capsys.readouterr().out


# ------------------------------------------------------- the paper's Table 1


def test_table1_invariances_both_directions():
    """Invariant where the paper says so (change ~1e-6), measurably not elsewhere."""
    table = invariance.invariance_table(seed=0)
    for method, row in invariance.PAPER_TABLE1.items():
        for name, invariant in zip(invariance.TRANSFORMS, row):
            change = table[method][name]
            if invariant:
                assert change < 1e-4, f"{method} should be invariant to {name}: {change}"
            else:
                assert change > 1e-1, f"{method} should change under {name}: {change}"


def test_table1_normalized_summed_inputs_rejects_unknown_method():
    with pytest.raises(ValueError, match="unknown method 'group norm'"):
        invariance.normalized_summed_inputs("group norm", jnp.ones((2, 2)), jnp.ones((2, 2)))


def test_table1_formatting_reports_agreement():
    text = invariance.format_table(invariance.invariance_table(seed=1))
    assert "18 of 18 cells agree" in text


# ------------------------------------------------------- seeds, curves, figures


def test_seeds_keep_every_history_and_the_table_shows_mean_and_spread(mnist_dir, tmp_path,
                                                                      monkeypatch):
    """--seeds 2: both seeds' histories in results.json, evaluated on one fixed subset for
    the curves; the table's cells read mean ± std; the figure is written as PNG and PDF;
    --tensorboard writes one folder of event files per run."""
    from lnjax import training

    subsets = []
    real = training.fit

    def recording_fit(*args, curves=None, **kwargs):
        subsets.append({k: np.asarray(y).copy() for k, (_, y) in curves.items()})
        return real(*args, curves=curves, **kwargs)

    monkeypatch.setattr(training, "fit", recording_fit)
    out = tmp_path / "pi"
    pi_mnist.main(["--dataset", "mnist", "--data-dir", str(mnist_dir), "--hidden", "8",
                   "--methods", "layernorm,batchnorm", "--batch-sizes", "16", "--epochs", "2",
                   "--seeds", "2", "--seed", "5", "--eval-examples", "32",
                   "--evals-per-epoch", "2", "--out", str(out), "--no-progress",
                   "--tensorboard"])
    on_disk = read_results(out)
    assert on_disk["config"]["seeds"] == 2
    for method in ("layernorm", "batchnorm"):
        runs = on_disk["runs"][method]["16"]
        assert sorted(runs) == ["5", "6"]
        assert runs["5"]["step_loss"] != runs["6"]["step_loss"]
        for h in runs.values():
            assert h["eval_steps"] == [4, 8, 12, 16]  # 8 steps an epoch, 2 points each
            assert len(h["test_curve_error"]) == len(h["validation_curve_error"]) == 4
            assert len(h["test_error"]) == 2  # the whole split, each epoch
    # One subset of 32 examples of each split, the same for every method and seed.
    assert len(subsets) == 4
    for s in subsets:
        assert len(s["test"]) == len(s["validation"]) == 32
        np.testing.assert_array_equal(s["test"], subsets[0]["test"])
        np.testing.assert_array_equal(s["validation"], subsets[0]["validation"])
    summary = (out / "summary.md").read_text()
    assert summary.startswith("| method | batch size | seeds | train NLL |")
    row = next(line for line in summary.splitlines() if line.startswith("| layernorm | 16 |"))
    errors = [100 * h["test_error"][-1] for h in on_disk["runs"]["layernorm"]["16"].values()]
    cells = row.split(" | ")
    assert cells[2] == "2"
    assert f"{np.mean(errors):.2f} ± {np.std(errors, ddof=1):.2f}" in cells
    assert "mean ± standard deviation over 2 seeds (5, 6)" in summary
    assert is_png(out / "figure6.png")
    assert (out / "figure6.pdf").read_bytes()[:5] == b"%PDF-"
    logs = sorted(p.name for p in (out / "tensorboard").iterdir())
    assert len(logs) == 4 and all("-bs16-seed" in name for name in logs)


def test_eval_subset_is_fixed_and_drawn_from_the_whole_split():
    ds = data.Dataset(np.arange(500.0)[:, None], np.arange(500), "toy", "test", "memory")
    a, b = common.eval_subset(ds, 50), common.eval_subset(ds, 50)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert len(set(a.labels.tolist())) == 50 and a.labels.max() > 100  # not the first 50
    np.testing.assert_array_equal(a.images[:, 0], a.labels)  # images and labels together
    assert common.eval_subset(ds, None) is ds and common.eval_subset(ds, 500) is ds


def test_figures_and_tables_read_histories_of_one_seed_without_curves(tmp_path):
    """A results.json from before --seeds (a history per method and batch size, one point
    per epoch), as the notebooks build: the figures fall back to the per-epoch values."""
    def history(err):
        return {"epoch": [1, 2], "steps": [10, 20], "train_loss": [0.9, 0.5],
                "test_error": [err, err / 2], "validation_error": [err, err / 2],
                "seconds": [1.0, 2.0], "step_loss": [[1, 2.3], [10, 0.9], [20, 0.5]]}

    results = {"dataset": {"name": "mnist", "sizes": {"test": 64}}, "config": {},
               "runs": {m: {"16": history(0.3), "4": history(0.2)} for m in pi_mnist.METHODS}}
    for module, name in ((pi_mnist, "figure6.png"), (seq_mnist, "curves.png")):
        module.plot(results, str(tmp_path / name))
        assert is_png(tmp_path / name)
        assert (tmp_path / name).with_suffix(".pdf").read_bytes()[:5] == b"%PDF-"
    table = common.summary_table(results["runs"], columns=pi_mnist.COLUMNS)
    assert table.startswith("| method | batch size | train NLL |")
    assert "| layernorm | 4 | 0.5000 | 10.00 | 10.00 | 2 | 2 |" in table


def test_axis_scale_is_linear_for_a_narrow_range_and_plain_on_a_log_one():
    plt = common.pyplot()
    fig, ax = plt.subplots()
    assert common.set_scale(ax, [0.31, 0.9, 2.3]) == "linear"
    assert ax.get_yscale() == "linear"
    assert common.set_scale(ax, [0.02, 0.9, 2.3]) == "log"
    assert ax.get_yscale() == "log"
    fmt = ax.yaxis.get_major_formatter()
    assert [fmt(v, 0) for v in (0.02, 0.5, 1.0, 2.0)] == ["0.02", "0.5", "1", "2"]
    assert common.set_scale(ax, [-0.1, 5.0]) == "linear"  # not all positive
    plt.close(fig)
