"""The experiments' command lines (lnjax.experiments.driver, pi_mnist, seq_mnist): tiny
end-to-end runs on IDX files the tests write; the paper's Table 1
(lnjax.experiments.invariance); the old names of lnjax.experiments.common."""

import dataclasses
import inspect
import json
from pathlib import Path
from typing import Annotated

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lnjax.experiments import (
    convnet,
    driver,
    invariance,
    pi_mnist,
    plots,
    results,
    runs,
    seq_mnist,
    settings,
    tables,
    transformer,
)
from tests.helpers import add_known_sha256, known_sha256, small_mnist, write_mnist_folder

N_TRAIN, N_VAL, N_TEST = 128, 48, 64  # batches of 16 and 4: equal scans, one compilation


@pytest.fixture
def mnist(tmp_path):
    """A small MNIST-format data set in tmp_path/data/mnist; validation = last 48 examples."""
    return small_mnist(tmp_path, N_TRAIN, N_VAL, N_TEST)


def read_results(out):
    with open(out / "results.json") as f:
        return json.load(f)


def is_png(path):
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pi_mnist_end_to_end(mnist, tmp_path, capsys):
    out = tmp_path / "pi"
    argv = ["--dataset", "mnist", *mnist.flags, "--hidden", "32,32",
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


def test_pi_mnist_resumes_from_checkpoints(mnist, tmp_path):
    out = tmp_path / "pi"
    base = ["--dataset", "mnist", *mnist.flags, "--hidden", "16,16",
            "--methods", "layernorm", "--batch-sizes", "8", "--out", str(out), "--no-progress"]
    first = pi_mnist.main(base + ["--epochs", "1"])["runs"]["layernorm"]["8"]["0"]
    resumed = pi_mnist.main(base + ["--epochs", "2"])["runs"]["layernorm"]["8"]["0"]
    fresh = pi_mnist.main(base + ["--epochs", "2", "--no-resume"])["runs"]["layernorm"]["8"]["0"]
    assert resumed["test_error"][:1] == first["test_error"]
    assert resumed["step_loss"] == fresh["step_loss"]
    assert resumed["test_loss"] == fresh["test_loss"]
    # pi_mnist.run with the keywords callers pass (epochs, lr, seed, out, resume, progress,
    # hidden) is the command line's run: it finds that run's checkpoint and trains nothing.
    splits, _ = mnist.load_splits()
    again = pi_mnist.run("layernorm", 8, splits, epochs=2, lr=1e-3, seed=0, out=str(out),
                         resume=True, progress=False, hidden=[16, 16])
    assert again["step_loss"] == fresh["step_loss"] and again["seconds"] == fresh["seconds"]


def test_seq_mnist_end_to_end(mnist, tmp_path, capsys):
    out = tmp_path / "seq"
    seq_mnist.main(["--dataset", "mnist", *mnist.flags, "--hidden", "16",
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
    real = plots.save_figure
    monkeypatch.setattr(plots, "save_figure",
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
    if known:
        add_known_sha256(monkeypatch, known_sha256(folder, "fashion_mnist"))
    on_disk, title = _tiny_pi_mnist(folder, tmp_path / "out", monkeypatch,
                                    extra=["--validation-size", str(N_VAL)])
    name = "fashion_mnist" if known else "mnist"
    identity = ("fashion_mnist (verified by checksum)" if known
                else f"unknown IDX data in {folder}")
    printed = capsys.readouterr().out
    assert on_disk["dataset"]["name"] == name
    assert on_disk["dataset"]["identity"] == identity
    assert on_disk["dataset"]["verified"] is known
    assert on_disk["dataset"]["source"] == f"idx:{folder}"
    assert on_disk["dataset"]["sizes"] == {"train": N_TRAIN, "validation": N_VAL,
                                           "test": N_TEST}
    assert on_disk["config"]["validation_size"] == N_VAL
    assert sorted(on_disk["dataset"]["sha256"]) == sorted(p.name for p in folder.iterdir())
    assert title.startswith(f"Permutation-invariant {name} (lnjax)")
    assert f"Data set: {identity}" in printed
    assert f"Permutation-invariant {name} ({identity}; idx:{folder}), 1 epochs" in printed


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


def test_help_lists_the_flags_with_the_settings_defaults(capsys):
    with pytest.raises(SystemExit):
        pi_mnist.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--dataset", "--data-dir", "--methods", "--batch-sizes", "--epochs", "--lr",
                 "--seed", "--out", "--seeds", "--eval-examples", "--evals-per-epoch",
                 "--tensorboard", "--validation-size", "--hidden", "--per-device-bn"):
        assert flag in text
    defaults = pi_mnist.PiMnistSettings()
    assert "--batch-sizes BATCH_SIZES comma-separated batch sizes (default: 128,4)" in text
    assert f"(default: {defaults.epochs})" in text and "(default: 1000,1000)" in text


def test_missing_data_is_a_clear_error(tmp_path):
    """With --data-dir, that folder is the only place looked: an empty one stops the run
    with the data layer's message (how to get the data)."""
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        pi_mnist.main(["--dataset", "auto", "--data-dir", str(tmp_path / "empty"),
                       "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o" / "results.json").exists()


def test_too_many_devices_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        seq_mnist.main(["--devices", "9"])
    assert ("--devices must be between 1 and 8 (the devices available), got 9"
            in capsys.readouterr().err)


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


def test_seeds_keep_every_history_and_the_table_shows_mean_and_spread(mnist, tmp_path,
                                                                      monkeypatch):
    """--seeds 2: both seeds' histories in results.json, evaluated on one fixed subset for
    the curves; the table's cells read mean ± std; the figure is written as PNG and PDF;
    --tensorboard writes one folder of event files per run."""
    from lnjax import training

    subsets = []
    real = training.fit

    def recording_fit(*args, curves=None, **kwargs):
        # The curves are the indices of their examples in the splits (fit's shared pass).
        subsets.append({k: np.asarray(index).copy() for k, index in curves.items()})
        return real(*args, curves=curves, **kwargs)

    monkeypatch.setattr(training, "fit", recording_fit)
    out = tmp_path / "pi"
    pi_mnist.main(["--dataset", "mnist", *mnist.flags, "--hidden", "8",
                   "--methods", "layernorm,batchnorm", "--batch-sizes", "16", "--epochs", "2",
                   "--seeds", "2", "--seed", "5", "--eval-examples", "32",
                   "--evals-per-epoch", "2", "--out", str(out), "--no-progress",
                   "--tensorboard"])
    on_disk = read_results(out)
    assert on_disk["config"]["seeds"] == 2
    for method in ("layernorm", "batchnorm"):
        by_seed = on_disk["runs"][method]["16"]
        assert sorted(by_seed) == ["5", "6"]
        assert by_seed["5"]["step_loss"] != by_seed["6"]["step_loss"]
        for h in by_seed.values():
            assert h["eval_steps"] == [4, 8, 12, 16]  # 8 steps an epoch, 2 points each
            assert len(h["test_curve_error"]) == len(h["validation_curve_error"]) == 4
            assert len(h["test_error"]) == 2  # the whole split, each epoch
    # One subset of 32 examples of each split, the same for every method and seed.
    assert len(subsets) == 4
    for s in subsets:
        assert len(s["test"]) == len(s["validation"]) == 32
        assert len(set(s["test"])) == 32 and s["test"].max() < 64 and s["validation"].max() < 48
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
    table = tables.summary_table(results["runs"], columns=pi_mnist.COLUMNS)
    assert table.startswith("| method | batch size | train NLL |")
    assert "| layernorm | 4 | 0.5000 | 10.00 | 10.00 | 2 | 2 |" in table


def test_run_refuses_settings_out_of_range_and_other_experiments_settings():
    with pytest.raises(settings.SettingsError, match="--hidden must be positive"):
        pi_mnist.run("layernorm", 8, {}, hidden=(16, 0))
    with pytest.raises(TypeError, match="width"):
        pi_mnist.run("layernorm", 8, {}, width=16)  # a transformer's setting


@pytest.mark.parametrize("module", [pi_mnist, seq_mnist, convnet, transformer])
def test_runs_take_the_settings_and_state_no_defaults_of_their_own(module):
    """Every default is the settings class's: run's own parameters are the run's identity."""
    params = inspect.signature(module.run).parameters
    assert list(params) == ["method", "batch_size", "splits", "settings", "seed", "mesh",
                            "changes"]
    assert [p.default for p in params.values()][3:6] == [None, None, None]
    assert module.EXPERIMENT.settings().methods == module.METHODS


# ------------------------------------------------------- the driver's hooks


@settings.document("A two-method experiment that trains nothing.")
@dataclasses.dataclass(frozen=True)
class FakeSettings(settings.Settings):
    methods: Annotated[tuple[str, ...], settings.Flag(choices=("a", "b"))] = ("a", "b")
    batch_sizes: tuple[int, ...] = (16, 4)


def fake_experiment(calls):
    def run(method, batch_size, splits, s, *, seed, mesh):
        calls.append(s)
        err = 0.1 * len(calls)
        return {"epoch": [1], "steps": [2], "train_loss": [0.5], "test_error": [err],
                "validation_error": [err], "seconds": [1.0]}

    def plan(s):
        if "b" in s.methods and 4 in s.batch_sizes:
            return dataclasses.replace(s, methods=("a",)), ["b (not at batch size 4)"]
        return s, []

    return driver.Experiment(
        name="fake", description="fake", title="Fake on", settings=FakeSettings, run=run,
        plot=lambda results, path: Path(path).write_bytes(b"figure"), figure="fake.png",
        columns=tables.columns(("epochs", "epoch", "d")), plan=plan,
        summary=lambda r: f"{len(r['runs'])} methods; verdict: {r['verdict']}\n",
        conclude=lambda r: {"verdict": sorted(r["runs"])})


def test_driver_builds_the_settings_once_and_fills_summary_md_from_the_hooks(mnist, tmp_path,
                                                                            capsys):
    calls = []
    out = tmp_path / "fake"
    returned = driver.main(fake_experiment(calls), ["--dataset", "mnist", *mnist.flags,
                                                    "--seeds", "2", "--out", str(out)])
    printed = capsys.readouterr().out
    assert len(calls) == 2 * 2 and all(s is calls[0] for s in calls)  # a, seeds 0, 1; 16 and 4
    assert calls[0] == FakeSettings(dataset="mnist", data_dir=str(mnist.data_dir),
                                    validation_size=N_VAL, seeds=2, out=str(out), methods=("a",))
    on_disk = read_results(out)
    assert on_disk == json.loads(json.dumps(returned))
    assert on_disk["skipped"] == ["b (not at batch size 4)"] and on_disk["verdict"] == ["a"]
    assert on_disk["config"] == calls[0].record() and "progress" not in on_disk["config"]
    assert sorted(on_disk["runs"]["a"]) == ["16", "4"]
    summary = (out / "summary.md").read_text()
    assert summary == "1 methods; verdict: ['a']\n\nSkipped: b (not at batch size 4).\n"
    assert summary.strip() in printed
    assert [line for line in printed.splitlines() if "Skipped" in line] == [
        "Skipped: b (not at batch size 4).", "Skipped: b (not at batch size 4)."]  # and in summary
    assert (out / "fake.png").read_bytes() == b"figure"


def test_driver_default_summary_is_the_table_and_the_seeds_note(mnist, tmp_path, capsys):
    calls = []
    plain = dataclasses.replace(fake_experiment(calls), summary=None)
    driver.main(plain, ["--dataset", "mnist", *mnist.flags, "--batch-sizes", "16", "--seeds",
                        "2", "--seed", "3", "--out", str(tmp_path / "o")])
    summary = (tmp_path / "o" / "summary.md").read_text()
    assert summary.startswith("| method | batch size | seeds | train NLL |")
    assert "| b | 16 | 2 |" in summary
    assert summary.endswith("Each cell: mean ± standard deviation over 2 seeds (3, 4).\n")


# ------------------------------------------------------- lnjax.experiments.common


MOVED = {
    settings: ("comma_list", "EVAL_EXAMPLES", "EVALS_PER_EPOCH"),
    results: ("versions", "write_json", "batch_sizes", "is_history", "seed_histories",
              "first_seed", "mean_history", "mean_runs", "seeds_of"),
    runs: ("eval_subset", "run_name", "config_key", "SUBSET_SEED"),
    tables: ("summary_table", "columns"),
    plots: ("pyplot", "save_figure", "figure", "DECADE", "set_scale", "curve", "first_curve",
            "smoothed_step_loss", "error_curve", "running_mean", "band", "seeds_caption",
            "eval_caption", "legend_below"),
    driver: ("Timer",),
}


@pytest.mark.parametrize("module, name", [(m, n) for m, names in MOVED.items() for n in names])
def test_common_names_warn_and_are_the_new_objects(module, name):
    from lnjax.experiments import common

    with pytest.warns(DeprecationWarning, match=rf"common\.{name} is now {module.__name__}"):
        old = getattr(common, name)
    assert old is getattr(module, name)


def test_common_fit_run_keeps_its_keywords(monkeypatch):
    from lnjax.experiments import common

    seen = []
    monkeypatch.setattr(runs, "fit_run", lambda *a, **k: seen.append((a, k)) or {"ok": 1})
    with pytest.warns(DeprecationWarning, match="runs.fit_run"):
        fit_run = common.fit_run
    history = fit_run("model", "tx", "splits", method="ln", batch_size=8, lr=0.01, seed=3,
                      hidden=[4], epochs=2, out="o", resume=False, progress=False, desc="d",
                      eval_examples=None)
    assert history == {"ok": 1}
    (model, tx, splits, run, s), kwargs = seen[0]
    assert run == runs.Run("ln", 8, 3, model_config=[4], label="d")
    assert s == settings.Settings(lr=0.01, epochs=2, out="o", resume=False, progress=False,
                                  eval_examples=None)
    assert kwargs == {"mesh": None, "takes_mask": False}


def test_driver_parser_and_check_args_keep_working_with_a_warning(capsys):
    with pytest.warns(DeprecationWarning, match="settings.parser"):
        make_parser = driver.parser
    with pytest.warns(DeprecationWarning, match="settings.from_args"):
        check_args = driver.check_args
    p = make_parser("old", methods=("a", "b"), default_methods=("a",), batch_sizes=(8,),
                    epochs=3, lr=0.1, out="o")
    args = p.parse_args(["--epochs", "4"])
    assert (args.methods, args.batch_sizes, args.epochs, args.lr, args.seed) == (("a",), (8,),
                                                                                 4, 0.1, 0)
    check_args(p, args, methods=("a", "b"))
    with pytest.raises(SystemExit):
        check_args(p, p.parse_args(["--methods", "c"]), methods=("a", "b"))
    assert "--methods: unknown ['c']" in capsys.readouterr().err


def test_no_docstring_is_read_and_results_are_not_in_comments():
    """The experiments' descriptions are strings of their own, and no measured errors are
    quoted in their docstrings or comments (they belong to the runs' outputs)."""
    import re

    import lnjax.experiments

    folder = Path(lnjax.experiments.__file__).parent
    for path in sorted(folder.glob("*.py")):
        text = path.read_text()
        assert not re.search(r"__doc__(?!\s*=)", text), path.name  # set, never read
        assert not re.search(r"\d+\.\d+ ?% (test )?error", text), path.name
    for module in (pi_mnist, seq_mnist, convnet, transformer, invariance):
        assert module.DESCRIPTION and module.DESCRIPTION in (module.__doc__ or "")
