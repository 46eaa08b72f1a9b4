"""The device benchmark (``python -m benchmarks.run --device``) in quick mode on this CPU.

No timing is asserted (timings are noisy here): what is checked is that every
(case, pass, dtype, library) that ran is recorded with a positive time and
bandwidth by the byte model, the skips (PyTorch, CUDA, the time budget) with
their notes, the correctness check that keeps a broken kernel from being
timed, and the files written. The byte model and the targets have their own
tests (test_benchmarks_byte_model.py, test_benchmarks_targets.py).
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import pytest

from benchmarks import (
    byte_model,
    cases,
    device,
    device_checks,
    device_passes,
    harness,
    targets,
)
from benchmarks import run as cpu_suite

QUICK_SHAPE = device.QUICK["shapes"][0]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One quick run of layer norm, the LSTM and the image norms through
    ``benchmarks.run --device``."""
    out = tmp_path_factory.mktemp("device")
    cpu_suite.main(["--device", "--quick", "--cases", "layer_norm,lstm,image_norms",
                    "--out", str(out)])
    return out, json.loads((out / "results.json").read_text())


def test_writes_three_files_with_the_device_named(quick_run):
    out, results = quick_run
    for name in ("results.json", "results.md", "results.png"):
        assert (out / name).stat().st_size > 0
    first = jax.devices()[0]
    assert results["device"]["device_kind"] == first.device_kind
    assert results["device"]["platform"] == first.platform
    assert results["quick"] is True and results["skipped"] == []
    md = (out / "results.md").read_text()
    assert md.startswith(f"Device: **{first.device_kind}** (platform {first.platform}")


def test_image_norms_are_timed_against_flax_without_the_cpu_targets(quick_run):
    out, results = quick_run
    records = results["image_norms"]
    titles = [r["title"] for r in records]
    shape = "x".join(map(str, device.QUICK["image_shapes"][0]))
    for module in ("BatchNorm", "GroupNorm(8)", "InstanceNorm", "LayerNorm(H,W,C)"):
        assert f"{module} fwd+bwd {shape}" in titles
    assert any(t.startswith("LayerNorm masked fwd+bwd") for t in titles)
    assert any(t.startswith("ResNet block") for t in titles)
    assert f"BatchNorm fwd (train) {shape}" in titles
    for r in records:
        assert r["median_ms"]["lnjax"] > 0 and r["median_ms"]["flax"] > 0
        flax = [t for t in r["ratios"] if t["label"] == "flax / lnjax"]
        assert len(flax) == 1 and flax[0]["value"] > 0 and flax[0]["target"] is None
        # PyTorch on the CPU is not compared with JAX on a device (nor here, with no CUDA)
        assert "torch" not in r["median_ms"]
    assert "ResNet block" in (out / "results.md").read_text()


def test_every_timed_pass_is_recorded_with_time_and_bandwidth(quick_run):
    _, results = quick_run
    groups = results["groups"]
    assert [(g["case"], g["dtype"]) for g in groups] == [("layer_norm", "f32"),
                                                         ("layer_norm", "bf16")]
    jax_libraries = {"lnjax xla", "lnjax pallas", "flax"}
    for group in groups:
        assert group["errors"] == {}, group["errors"]
        assert set(group["checks"]) == jax_libraries
        assert all(err <= device_checks.TOLERANCE[group["dtype"]]
                   for err in group["checks"].values())
        ran = {(r["library"], r["pass"]) for r in group["rows"]}
        assert ran == {(lib, p) for lib in jax_libraries for p in byte_model.PASSES}
        for row in group["rows"]:
            assert row["ms"] > 0 and row["gb_per_s"] > 0 and row["copy_fraction"] > 0
            assert row["device_ms"] is not None and row["device_ms"] > 0
            assert row["basis"] == "wall"  # on a CPU
            nbytes = byte_model.pass_bytes("layer_norm", row["pass"], QUICK_SHAPE,
                                           group["dtype"])
            assert (row["bytes_read"], row["bytes_written"]) == (nbytes["read"],
                                                                 nbytes["written"])
            total = nbytes["read"] + nbytes["written"]
            assert row["gb_per_s"] == pytest.approx(total / row["ms"] / 1e6)
        assert group["copy_ms"] > 0 and group["copy_gb_per_s"] > 0
        assert group["copies"] == byte_model.copies(QUICK_SHAPE, group["dtype"]) == 16
        copy_bytes = byte_model.copy_bytes(QUICK_SHAPE, group["dtype"])
        assert group["copy_gb_per_s"] == pytest.approx(copy_bytes / group["copy_ms"] / 1e6)
        labels = [r["label"] for r in group["ratios"]]
        assert labels == ["flax: forward_backward / lnjax xla: forward_backward",
                          "flax: forward_backward / lnjax pallas: forward_backward"]
    # The targets: copy fractions of the forward and backward of both lnjax kernels,
    # and the speed-up over flax; tokamax's shape is not in a quick run.
    names = {t["target"] for t in results["targets"]}
    assert names == {"forward ≥ 0.85 × copy bandwidth", "backward ≥ 0.75 × copy bandwidth",
                     "forward+backward ≥ 1.5× flax (flax / lnjax time)"}
    assert all(isinstance(t["met"], bool) for t in results["targets"])
    md = (quick_run[0] / "results.md").read_text()
    assert "| layer_norm 16x1000 bf16 | forward saving stats |" in md
    assert "| forward ≥ 0.85 × copy bandwidth |" in md


def test_report_and_chart_in_the_one_format(quick_run):
    """results.md is report.markdown's layout (the passes and targets tables, then the LSTM
    and image norm cases in the cases table, their memory, the notes); the chart's panels
    are the copy fractions of each pass and dtype against the targets."""
    out, results = quick_run
    md = (out / "results.md").read_text()
    assert md == device.markdown(results)
    header = "| case | median ms | ratio | value | target | met |"
    assert md.index("| group | pass |") < md.index("| target | lnjax xla |") < md.index(header)
    assert f"| {results['lstm']['title']} |" in md
    assert "| compiled fwd+bwd temp memory |" in md and "\nNotes:\n" in md
    panels = device.copy_fraction_panels(results)
    assert list(panels) == [f"{label}, {dtype}" for label in byte_model.PASSES.values()
                            for dtype in ("f32", "bf16")]
    rows = {(g["dtype"], r["pass"], r["library"]): r for g in results["groups"]
            for r in g["rows"]}
    for pass_, label in byte_model.PASSES.items():
        bars = panels[f"{label}, bf16"]
        assert [b.label for b in bars] == [f"LN 16x1000 {lib}"
                                           for lib in ("lnjax xla", "lnjax pallas", "flax")]
        for bar, library in zip(bars, ("lnjax xla", "lnjax pallas", "flax")):
            assert bar.value == rows["bf16", pass_, library]["copy_fraction"]
            goal = (targets.COPY_TARGETS.get(pass_) if library != "flax" else None)
            assert (bar.target, bar.met) == (goal, None if goal is None else bar.value >= goal)


def test_lstm_is_timed_against_flax(quick_run):
    _, results = quick_run
    lstm = results["lstm"]
    assert {"lnjax LN-LSTM", "flax LSTM", "copy"} <= set(lstm["median_ms"])
    assert all(ms > 0 for ms in lstm["median_ms"].values())
    assert all(r["target"] is None for r in lstm["ratios"])
    assert "torch LSTM" not in lstm["median_ms"]  # no CUDA here


def test_torch_without_cuda_is_skipped_with_a_note(quick_run, monkeypatch):
    _, results = quick_run
    rows = [r for g in results["groups"] for r in g["rows"]]
    assert not any(r["library"] == "torch" for r in rows)
    assert results["device"]["torch_device"] is None
    note = results["device"]["torch_note"]
    assert note in results["notes"]
    if device.torch is not None:
        assert "sees no CUDA device" in note
    monkeypatch.setattr(device, "torch", None)
    info = device.device_info()
    assert info["torch_device"] is None
    assert info["torch_note"] == "PyTorch is not installed: its cases are skipped"


def test_a_broken_or_failing_library_is_reported_not_timed():
    def norm(case, library):
        f = device_passes.jax_norm(case, library)
        if library == "lnjax pallas":
            return lambda x, *p: f(x, *p) + 1  # wrong by one everywhere
        if library == "flax":
            def fails(x, *p):
                raise NotImplementedError("no such kernel")
            return fails
        return f

    config = device.Config(**device.QUICK)
    inputs = cases.norm_inputs((8, 256), 0)
    group = device.run_group("rms_norm", (8, 256), "f32", inputs, config, None, norm=norm)
    assert group["errors"]["lnjax pallas"].startswith("check failed")
    assert group["errors"]["flax"] == "NotImplementedError: no such kernel"
    assert {r["library"] for r in group["rows"]} == {"lnjax xla"}
    assert {r["pass"] for r in group["rows"]} == set(byte_model.PASSES)


def test_torch_passes_match_the_reference_and_are_timed():
    """PyTorch's four passes (on CUDA in a device run) checked and timed here on its CPU."""
    pytest.importorskip("torch", reason="PyTorch is not installed (make test installs torch==2.13.0)")
    config = device.Config(**device.QUICK)
    inputs = cases.norm_inputs((8, 256), 1)
    for case, dtype in (("layer_norm", "bf16"), ("rms_norm", "f32")):
        group = device.run_group(case, (8, 256), dtype, inputs, config, "cpu")
        assert group["errors"] == {}, group["errors"]
        assert group["checks"]["torch"] <= device_checks.TOLERANCE[dtype]
        torch_rows = [r for r in group["rows"] if r["library"] == "torch"]
        assert {r["pass"] for r in torch_rows} == set(byte_model.PASSES)
        assert all(r["ms"] > 0 and r["gb_per_s"] > 0 and r["device_ms"] is None
                   for r in torch_rows)
        labels = {r["label"] for r in group["ratios"]}
        assert "torch: forward_backward / lnjax xla: forward_backward" in labels


def test_max_seconds_skips_with_a_note(tmp_path, capsys):
    results = device.main(["--quick", "--max-seconds", "0", "--out", str(tmp_path)])
    assert results["groups"] == [] and results["lstm"] is None
    assert results["image_norms"] == []
    assert results["skipped"] == ["layer_norm 16x1000 f32", "layer_norm 16x1000 bf16", "lstm",
                                  "rms_norm 16x1000 f32", "rms_norm 16x1000 bf16", "image_norms"]
    (skip_note,) = [n for n in results["notes"] if "--max-seconds 0" in n]
    assert skip_note.endswith(": " + ", ".join(results["skipped"]))
    for name in ("results.json", "results.md", "results.png"):
        assert (tmp_path / name).stat().st_size > 0
    md = (tmp_path / "results.md").read_text()
    assert "No group was timed." in md and "- skipped, as the time budget" in md
    assert "wrote " in capsys.readouterr().out


def test_pipelined_timing_waits_once_per_timing():
    waits, calls = [], []

    class Token:
        def block_until_ready(self):
            waits.append(len(calls))

    def start():
        calls.append(1)
        return Token()

    times = harness.time_interleaved({"f": start}, rounds=3, pipelined=True, min_time=1e-4)
    repeats = (len(calls) - 2) // 3  # warm-up and calibration, then 3 timings
    assert len(times["f"]) == 3 and repeats >= 1
    assert len(waits) == 2 + 3  # one wait per call outside the timings, one per timing
    assert waits[2:] == [2 + repeats * (i + 1) for i in range(3)]  # after the last call


def test_device_times_finds_each_named_program():
    def scaled_sine(x):
        return jnp.sin(x) * 2

    x = jnp.ones((64, 64))
    compiled = jax.jit(scaled_sine).lower(x).compile()
    times = harness.device_times({"sine": lambda: compiled(x), "absent": lambda: compiled(x)},
                                 {"sine": "jit_scaled_sine", "absent": "jit_nothing"}, calls=2)
    assert set(times) == {"sine"} and times["sine"] > 0
