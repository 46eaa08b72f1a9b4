"""The benchmark scripts at toy sizes: their shared timing harness and report format, and a
smoke run of each script (seconds each)."""

from __future__ import annotations

import doctest
import json
import sys

import numpy as np
import pytest

from benchmarks import cases, harness, report

# ------------------------------------------------------- the harness and the report


@pytest.mark.parametrize("module", [harness, report, cases])
def test_doctests(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


def test_time_ratio_is_numerator_time_over_denominator_time():
    times = {"slow": [2.0, 4.0, 6.0], "fast": [1.0, 1.0, 3.0]}  # per round: 2, 4, 2
    ratio = harness.TimeRatio("slow", "fast", target=1.5)
    record = ratio.measure(times)
    assert record["label"] == "slow / fast" == ratio.label
    assert record["value"] == 2.0 and record["met"] is True
    assert (record["numerator"], record["denominator"]) == ("slow", "fast")
    assert harness.TimeRatio("fast", "slow").measure(times)["value"] == 0.5
    assert harness.TimeRatio("fast", "slow", 0.4, at_least=False).measure(times)["met"] is False
    assert harness.TimeRatio("slow", "fast").measure(times)["met"] is None  # no target
    assert harness.TimeRatio("slow", "absent").measure(times) is None


def test_time_interleaved_warms_up_then_goes_round_robin():
    calls = []
    functions = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    times = harness.time_interleaved(functions, rounds=3)
    assert calls == ["a", "b", "c"] + ["a", "b", "c"] * 3  # one untimed warm-up call each
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}
    assert all(t >= 0 for v in times.values() for t in v)


def test_time_interleaved_repeats_short_calls_to_min_time():
    calls = []
    harness.time_interleaved({"a": lambda: calls.append(1)}, rounds=2, min_time=1e-3)
    assert len(calls) > 2 + 2  # warm-up, calibration, then several calls per timing


def test_measure_reports_medians_and_the_ratios_it_can():
    import time

    functions = {"sleep 4 ms": lambda: time.sleep(4e-3), "sleep 1 ms": lambda: time.sleep(1e-3)}
    timed = harness.measure(functions, [harness.TimeRatio("sleep 4 ms", "sleep 1 ms"),
                                        harness.TimeRatio("sleep 4 ms", "not timed")], rounds=3)
    assert set(timed["median_ms"]) == set(functions)
    assert timed["median_ms"]["sleep 4 ms"] >= 4.0
    (ratio,) = timed["ratios"]
    assert ratio["label"] == "sleep 4 ms / sleep 1 ms" and ratio["value"] > 1.5
    assert harness.per_second(10, 500.0) == 20.0


def test_report_table_and_files(tmp_path):
    text = report.table(["a", "b"], [[1, "x"]], align="lr")
    assert text.splitlines() == ["| a | b |", "|---|---:|", "| 1 | x |"]
    with pytest.raises(ValueError, match="must agree"):
        report.table(["a", "b"], [[1]])
    paths = report.write(tmp_path / "o", "thing", {"k": [1.5]}, text)
    assert [p.name for p in paths] == ["thing.json", "thing.md"]
    assert json.loads(paths[0].read_text()) == {"k": [1.5]}
    assert paths[1].read_text() == text + "\n"
    cells = report.ratio_cells({"label": "flax / lnjax", "value": 2.345, "target": 3.0,
                                "at_least": True, "met": False})
    assert cells == ("flax / lnjax", "2.35", "≥ 3", "**no**")


def test_budget_predicts_the_next_piece_from_the_longest():
    now = [0.0]
    budget = harness.Budget(10.0, clock=lambda: now[0])
    assert budget.allows()  # nothing measured yet
    now[0] = 3.0
    budget.took(3.0)
    assert budget.allows()  # 3 + 3 <= 10
    budget.took(1.0)
    assert budget.longest == 3.0  # the longest, not the last
    now[0] = 7.5
    assert not budget.allows()  # 7.5 + 3 > 10
    assert budget.skip_note(["a", "b"]).endswith("(elapsed 8 s, longest group 3 s): a, b")


MACHINE = {"cpu": "a CPU", "cores": 2, "platform": "Linux", "jax": "j", "flax": "f",
           "torch": None, "load average": [1.0, 1.0, 1.0]}


def _record(title, median_ms, ratios=(), values=None, note=""):
    return {"name": title.lower().replace(" ", "_"), "title": title, "note": note,
            "values": values or {}, "median_ms": median_ms,
            "ratios": [harness.TimeRatio(n, d, t).measure(
                {k: [v] for k, v in median_ms.items()}) for n, d, t in ratios]}


def test_report_markdown_is_one_layout_for_every_suite():
    timed = _record("A fwd", {"lnjax": 1.0, "flax": 2.0, "copy": 0.5},
                    [("flax", "lnjax", 3.0), ("lnjax", "copy", None)], note="a note")
    bare = _record("B fwd", {"lnjax": 4.0})  # timed, no ratio: still a row
    memory = {"name": "m", "title": "M", "note": "", "values": {
        "x MiB": 1.0, "lnjax temp MiB": 2.0, "flax temp MiB": 3.0}}
    results = {"machine": MACHINE, "config": {"rounds": 3}, "cases": [timed, bare, memory],
               "notes": ["first"]}
    md = report.markdown(results, intro=["How to read."], tables=["| t |\n|---|", None],
                         notes=["second"])
    blocks = md.rstrip("\n").split("\n\n")
    assert blocks[0] == report.header(results) and blocks[0].startswith("Machine: a CPU, 2 cores")
    assert "3 interleaved rounds" in blocks[0] and "torch not installed" in blocks[0]
    assert blocks[1:5] == ["How to read.", "| t |\n|---|", report.RATIOS_READ,
                           report.cases_table(results["cases"])]
    assert blocks[5] == report.memory_table(results["cases"])
    assert blocks[6:] == ["Notes:", "- first\n- second\n- a_fwd: a note"]
    table = blocks[4].splitlines()
    assert table[2:] == ["| A fwd | lnjax 1, flax 2, copy 0.5 | flax / lnjax | 2.00 | ≥ 3 | **no** |",
                         "|  |  | lnjax / copy | 2.00 |  |  |",
                         "| B fwd | lnjax 4 |  |  |  |  |"]
    assert blocks[5].splitlines()[-1] == "| M | 1.0 MiB | 2.0 MiB | 3.0 MiB |"
    device = {"device_kind": "H9", "platform": "gpu", "device_count": 1, "torch_note": "none"}
    with_device = report.markdown({**results, "device": device, "cases": [memory]})
    assert with_device.startswith("Device: **H9** (platform gpu, 1 device(s)); none. Machine:")
    assert report.RATIOS_READ not in with_device  # no timed case, no ratio to read
    assert report.cases_table([memory]) is None and report.memory_table([timed]) is None


def test_report_plot_draws_a_bar_per_value_in_panels(tmp_path):
    plt = report.pyplot()
    results = {"machine": MACHINE, "cases": [
        _record("A", {"lnjax": 1.0, "flax": 2.0}, [("flax", "lnjax", 1.5)])]}
    (bar,) = report.ratio_bars(results["cases"])
    assert bar == report.Bar("A: flax / lnjax", 2.0, 1.5, True)
    report.plot(results, tmp_path / "one.png")
    panels = {"p": [bar, report.Bar("b", 0.5)], "q": [], "r": [report.Bar("c", 1.0, 2.0, False)]}
    report.plot(results, tmp_path / "grid.png", panels=panels, columns=2)
    one, grid = plt.imread(tmp_path / "one.png"), plt.imread(tmp_path / "grid.png")
    assert grid.shape[1] > one.shape[1]  # two panels a row: wider
    assert grid.shape[0] > one.shape[0]  # two rows of panels: taller


MOVED = [("run", name, "report") for name in ("markdown", "plot")]
MOVED += [("run", name, "cases") for name in ("lstm_case", "FlaxLNLSTMCell", "ResBlock")]
MOVED += [("device", name, "byte_model") for name in ("copies", "ROTATE_BYTES")]
MOVED += [("device", name, "targets") for name in ("COPY_TARGETS", "TOKAMAX")]
MOVED += [("device", name, "device_passes") for name in (
    "DTYPES", "lower_passes", "pass_arguments", "compile_all", "jax_outputs", "torch_passes")]
MOVED += [("device", name, "device_checks") for name in ("TOLERANCE", "reference", "check_error")]
MOVED += [("device", "EPSILON", "cases")]


@pytest.mark.parametrize("old, name, new", MOVED)
def test_moved_names_keep_working_with_a_deprecation_warning(old, name, new):
    import importlib

    before, after = (importlib.import_module(f"benchmarks.{m}") for m in (old, new))
    with pytest.warns(DeprecationWarning, match=f"benchmarks.{old}.{name} is deprecated: "
                                                f"use benchmarks.{new}.{name}"):
        assert getattr(before, name) is getattr(after, name)
    with pytest.raises(AttributeError):
        before.not_a_name  # noqa: B018


def test_command_lines_keep_their_flags(capsys, monkeypatch):
    from benchmarks import run as bench

    monkeypatch.setenv("COLUMNS", "200")  # argparse's width: no flag list broken in two

    with pytest.raises(SystemExit) as exit_:
        bench.main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert all(flag in text for flag in ("--quick", "--out", "--shapes", "--cases", "--device"))
    with pytest.raises(SystemExit) as exit_:
        bench.main(["--device", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert all(flag in text for flag in ("--quick", "--out", "--cases", "--max-seconds"))
    assert "layer_norm,rms_norm,lstm,image_norms" in text


def test_quick_main_parses_measures_prints_and_writes(tmp_path, capsys):
    seen = []

    def measure(*, quick):
        seen.append(quick)
        return {"quick": quick}

    def markdown(record):
        return report.table(["quick"], [[record["quick"]]])

    doc = "A script.\n\nMore."
    assert report.quick_main(doc, "thing", measure, markdown, ["--quick"]) == {"quick": True}
    assert "| True |" in capsys.readouterr().out and not (tmp_path / "thing.json").exists()
    report.quick_main(doc, "thing", measure, markdown, ["--out", str(tmp_path)])
    assert seen == [True, False]
    assert json.loads((tmp_path / "thing.json").read_text()) == {"quick": False}
    assert "| False |" in (tmp_path / "thing.md").read_text()


# ------------------------------------------------------- the scripts


def test_benchmark_quick(tmp_path):
    """``python -m benchmarks.run --quick --shapes tiny`` writes its three files."""
    from benchmarks import run as bench

    results = bench.run(quick=True, shapes="tiny", out=tmp_path, cases=["ln_fb"], progress=False)
    for name in ("results.json", "results.md", "results.png"):
        assert (tmp_path / name).stat().st_size > 0
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["machine"]["cores"] >= 1 and saved["quick"] is True
    timed = [c for c in results["cases"] if "median_ms" in c]
    assert timed and all({"lnjax", "flax", "copy"} <= set(c["median_ms"]) for c in timed)
    assert all(r["value"] > 0 for c in timed for r in c["ratios"])
    assert "| case |" in (tmp_path / "results.md").read_text()


def test_other_normalizations_are_timed_against_flax_with_their_memory(tmp_path):
    """norms_fb, norms_fwd and resnet: every module timed against flax's, the fwd+bwd cases
    with the compiled temporary memory of both in the memory table."""
    from benchmarks import run as bench

    results = bench.run(quick=True, shapes="tiny", out=tmp_path,
                        cases=["norms_fb", "norms_fwd", "resnet"], progress=False)
    titles = [c["title"] for c in results["cases"]]
    for module in ("BatchNorm fwd+bwd", "GroupNorm(8) fwd+bwd", "InstanceNorm fwd+bwd",
                   "LayerNorm(H,W,C) fwd+bwd", "LayerNorm masked fwd+bwd",
                   "BatchNorm fwd (train)", "BatchNorm fwd (eval)", "ResNet block fwd+bwd"):
        assert any(t.startswith(module) for t in titles), module
    for case in results["cases"]:
        assert case["ratios"][0]["label"] == "flax / lnjax" and case["ratios"][0]["value"] > 0
        if "fwd+bwd" in case["title"] and not case["title"].startswith("ResNet"):
            assert {"lnjax temp MiB", "flax temp MiB"} <= set(case["values"])
    md = (tmp_path / "results.md").read_text()
    assert "| GroupNorm(8) fwd+bwd 4x4x4x16 |" in md and "compiled fwd+bwd temp memory" in md


def test_a_ratio_is_the_median_of_each_rounds_time_over_time():
    """``a / b`` is time(a) / time(b), the median over the rounds of the round's ratio (not
    the ratio of the medians)."""
    times = {"a": [2.0, 9.0, 4.0], "b": [1.0, 3.0, 1.0]}  # rounds' ratios 2, 3, 4
    record = harness.TimeRatio("a", "b", target=2.5, at_least=True).measure(times)
    assert (record["label"], record["value"], record["met"]) == ("a / b", 3.0, True)
    assert harness.TimeRatio("b", "a").measure(times)["value"] == 1 / 3


def test_benchmark_ratios_read_as_time_over_time(tmp_path):
    """Each ratio's label is ``numerator / denominator``, two functions the case timed;
    the table prints the labels."""
    from benchmarks import run as bench

    results = bench.run(quick=True, shapes="tiny", out=tmp_path, cases=["ln_fwd"],
                        progress=False)
    (case, *_) = results["cases"]
    labels = [r["label"] for r in case["ratios"]]
    assert labels[0] == "flax / lnjax" and labels[-1] == "lnjax / copy"
    for r in case["ratios"]:
        assert r["label"] == f"{r['numerator']} / {r['denominator']}"
        assert {r["numerator"], r["denominator"]} <= set(case["median_ms"])
        assert r["value"] > 0
    copy = case["ratios"][-1]
    assert (copy["target"], copy["at_least"]) == (1.3, False)
    md = (tmp_path / "results.md").read_text()
    assert "| flax / lnjax |" in md and "| lnjax / copy |" in md and "≤ 1.3" in md


def test_scaling_benchmark_measures_each_device_count():
    from benchmarks import scaling

    rows = scaling.measure(quick=True, methods=("layernorm",), device_counts=(1, 2))
    assert [r["devices"] for r in rows] == [1, 2]
    assert all(r["steps_per_second"] > 0 for r in rows)
    assert "| layernorm (steps/s) |" in scaling.markdown(rows)


def test_sharding_benchmark_reads_collectives_and_times_both_module_sets():
    """Two layouts at the quick size: the collectives come from the compiled programs (the
    same for lnjax's and flax's block in these layouts), the time ratio from both."""
    from benchmarks import sharding

    record = sharding.measure(quick=True, layouts=("data", "tensor"), rounds=2)
    rows = {r["layout"]: r for r in record["rows"]}
    assert set(rows) == {"data", "tensor"}
    for r in rows.values():
        assert r["lnjax_collectives"] == r["flax_collectives"] > 0
        assert r["bytes_ratio"] == 1.0 and r["time_ratio"] > 0
    # Data parallelism all-reduces the gradients once; tensor parallelism moves activations.
    assert rows["tensor"]["lnjax_bytes"] > rows["data"]["lnjax_bytes"]
    table = sharding.markdown(record)
    assert "| data | 1 / 1 |" in table and "bytes ratio <= 1.0" in table


def test_accuracy_benchmark(tmp_path, capsys):
    """lnjax stays exact far from zero where flax's default variance does not."""
    from benchmarks import accuracy

    results = accuracy.main(["--rows", "8", "--width", "128", "--out", str(tmp_path)])
    assert list(results) == list(accuracy.OFFSETS)
    assert all(errs["lnjax"] < 1e-5 for errs in results.values())
    assert results[1e4]["flax (default)"] > 1e-2
    printed = capsys.readouterr().out
    assert "| offset / std | lnjax | flax (default) | flax (two-pass) |" in printed
    saved = json.loads((tmp_path / "accuracy.json").read_text())
    assert saved["10000.0"]["lnjax"] == results[1e4]["lnjax"]
    assert (tmp_path / "accuracy.md").read_text() == accuracy.markdown(results) + "\n"


def test_training_loop_benchmark(tmp_path):
    from benchmarks import training_loop

    row = training_loop.measure(quick=True, steps=4, repeats=2)
    assert row["steps"] == 4 and row["hidden"] == [256, 256]
    assert row["scan_steps_per_second"] > 0 and row["loop_steps_per_second"] > 0
    (ratio,) = row["ratios"]
    assert ratio["label"] == "python loop / epoch scan" and ratio["value"] > 0
    table = training_loop.markdown(row)
    assert "| epoch scan steps/s | Python loop steps/s | python loop / epoch scan |" in table
    assert np.isclose(float(table.splitlines()[-1].split("|")[-2]), ratio["value"], atol=5e-3)


def test_eval_batch_benchmark():
    from benchmarks import eval_batch

    rows = eval_batch.measure(quick=True, examples=400, repeats=2)
    assert [r["network"] for r in rows] == list(eval_batch.networks(quick=True))
    for r in rows:
        assert r["examples"] == 400 and set(r["per_second"]) == {"batch 200", "batch 1000"}
        assert all(v > 0 for v in r["per_second"].values())
        (ratio,) = r["ratios"]
        assert ratio["label"] == "batch 1000 / batch 200" and ratio["value"] > 0
    table = eval_batch.markdown(rows)
    assert "| network | examples/s, batch 200 | examples/s, batch 1000 | batch 1000 / batch 200 |" \
        in table
    last = table.splitlines()[-1].split("|")
    assert last[1].strip() == rows[-1]["network"]
    assert np.isclose(float(last[-2]), rows[-1]["ratios"][0]["value"], atol=5e-3)


def test_run_without_matplotlib_stops_before_timing_and_names_the_extra(monkeypatch, tmp_path):
    from benchmarks import run as bench_run

    def timed(*args, **kwargs):
        raise AssertionError("a case was timed before the missing plotting library was reported")

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # any import of it fails
    monkeypatch.setattr(bench_run, "run_case", timed)
    with pytest.raises(ImportError) as info:
        bench_run.run(cases=list(bench_run.CASES)[:1], shapes="tiny", out=tmp_path, progress=False)
    message = str(info.value)
    assert type(info.value).__name__ == "MissingExtraError"
    assert "\n" not in message and "results.png" in message
    assert message.endswith('pip install "lnjax[plots]"'), message
    assert not list(tmp_path.iterdir())
