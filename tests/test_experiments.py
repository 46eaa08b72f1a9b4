"""Tiny end-to-end runs of the command-line experiments on IDX files the tests write."""

import json

import numpy as np
import pytest

from lnjax import data
from lnjax.experiments import pi_mnist, seq_mnist
from tests.test_data import idx_bytes, write

N_TRAIN, N_VAL, N_TEST = 96, 48, 64


def learnable_images(n, seed):
    """Class k: a fixed random template of class k plus noise, as uint8 pixels."""
    rng = np.random.default_rng(seed)
    templates = np.random.default_rng(123).random((10, 28, 28)) < 0.3
    labels = rng.integers(0, 10, n).astype(np.uint8)
    noise = rng.random((n, 28, 28)) < 0.1
    images = (templates[labels] ^ noise).astype(np.uint8) * 200 + 20
    return images.astype(np.uint8), labels


@pytest.fixture
def mnist_dir(tmp_path, monkeypatch):
    """A small MNIST-format data set in tmp_path/data/mnist; validation = last 48 examples."""
    folder = tmp_path / "data" / "mnist"
    x, y = learnable_images(N_TRAIN + N_VAL, seed=0)
    xt, yt = learnable_images(N_TEST, seed=1)
    write(folder / "train-images-idx3-ubyte", idx_bytes(x, 2051), True)
    write(folder / "train-labels-idx1-ubyte", idx_bytes(y, 2049), True)
    write(folder / "t10k-images-idx3-ubyte", idx_bytes(xt, 2051), False)
    write(folder / "t10k-labels-idx1-ubyte", idx_bytes(yt, 2049), False)
    monkeypatch.setattr(data, "_VALIDATION_SIZE", N_VAL)
    data._read_idx_cached.cache_clear()
    return folder.parent


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
