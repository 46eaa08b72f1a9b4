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

N_TRAIN, N_VAL, N_TEST = 96, 48, 64


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
    assert "Data: mnist/train: 96 examples from idx:" in printed
    assert "| layernorm | 4 |" in printed and "| batchnorm | 16 |" in printed
    on_disk = read_results(out)
    assert on_disk["dataset"]["name"] == "mnist"
    assert on_disk["dataset"]["source"].startswith("idx:")
    assert on_disk["dataset"]["sizes"] == {"train": N_TRAIN, "validation": N_VAL,
                                           "test": N_TEST}
    assert "jax" in on_disk["versions"] and "lnjax" in on_disk["versions"]
    for method in pi_mnist.METHODS:
        for bs in ("16", "4"):
            h = on_disk["runs"][method][bs]
            assert h["epoch"] == [1, 2]
            assert len(h["test_error"]) == len(h["validation_error"]) == 2
            assert h["train_loss"][-1] < h["train_loss"][0], (method, bs)
            assert h["seconds"][-1] > 0
    assert results["runs"]["layernorm"]["4"]["test_error"][-1] < 0.5
    assert is_png(out / "figure6.png")
    assert (out / "summary.md").read_text().startswith("| method | batch size |")


def test_pi_mnist_resumes_from_checkpoints(mnist_dir, tmp_path):
    out = tmp_path / "pi"
    base = ["--dataset", "mnist", "--data-dir", str(mnist_dir), "--hidden", "16,16",
            "--methods", "layernorm", "--batch-sizes", "8", "--out", str(out), "--no-progress"]
    first = pi_mnist.main(base + ["--epochs", "1"])["runs"]["layernorm"]["8"]
    resumed = pi_mnist.main(base + ["--epochs", "2"])["runs"]["layernorm"]["8"]
    fresh = pi_mnist.main(base + ["--epochs", "2", "--no-resume"])["runs"]["layernorm"]["8"]
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
        h = on_disk["runs"][method]["16"]
        assert h["steps"] == [6, 12, 18]
        assert np.isfinite(h["train_loss"]).all()
        assert h["train_loss"][-1] < h["train_loss"][0], method
        assert h["step_loss"][0][0] == 1 and h["step_loss"][-1][0] == 18
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
                 "--seed", "--out"):
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
