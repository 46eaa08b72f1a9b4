"""The device suite's targets (benchmarks.targets): which a group's measurements meet,
from hand-made group records."""

from __future__ import annotations

import doctest

from benchmarks import targets


def _row(library, pass_, copy_fraction, ms=1.0, device_ms=None, basis="wall"):
    return {"library": library, "pass": pass_, "copy_fraction": copy_fraction, "ms": ms,
            "device_ms": device_ms, "basis": basis}


def _ratio(numerator, denominator, value, target):
    return {"numerator": numerator, "denominator": denominator, "value": value,
            "label": f"{numerator} / {denominator}", "target": target, "at_least": True,
            "met": None if target is None else value >= target}


def _group(rows, ratios=(), case="layer_norm", shape=(4096, 1024), dtype="f32"):
    return {"case": case, "shape": list(shape), "dtype": dtype, "rows": list(rows),
            "ratios": list(ratios)}


def test_doctests():
    result = doctest.testmod(targets)
    assert result.attempted > 0 and result.failed == 0


def test_copy_fractions_are_met_at_or_above_the_goal_for_lnjax_only():
    forward, backward = targets.COPY_TARGETS["forward"], targets.COPY_TARGETS["backward"]
    group = _group([_row("lnjax xla", "forward", forward),  # exactly the goal: met
                    _row("lnjax pallas", "forward", forward - 0.01),  # just short
                    _row("lnjax xla", "backward", backward + 0.2),
                    _row("lnjax xla", "forward_stats", 0.1),  # no target on this pass
                    _row("flax", "forward", 0.1)])  # flax is held to none
    records = targets.targets([group])
    met = {(t["library"], t["target"].split()[0]): t["met"] for t in records}
    assert met == {("lnjax xla", "forward"): True, ("lnjax pallas", "forward"): False,
                   ("lnjax xla", "backward"): True}
    first = records[0]
    assert first["target"] == f"forward ≥ {forward:g} × copy bandwidth"
    assert (first["case"], first["shape"], first["dtype"]) == ("layer_norm", [4096, 1024], "f32")
    assert (first["value"], first["goal"], first["at_least"]) == (forward, forward, True)


def test_speed_up_over_flax_comes_from_the_ratios_with_a_target():
    group = _group([], [
        _ratio("flax: forward_backward", "lnjax xla: forward_backward", 2.0,
               targets.FLAX_SPEEDUP),
        _ratio("flax: forward_backward", "lnjax pallas: forward_backward", 1.2,
               targets.FLAX_SPEEDUP),
        _ratio("torch: forward_backward", "lnjax xla: forward_backward", 0.5, None)])
    records = targets.targets([group])
    assert [(t["library"], t["met"], t["basis"]) for t in records] == [
        ("lnjax xla", True, "wall"), ("lnjax pallas", False, "wall")]
    assert records[0]["target"] == (f"forward+backward ≥ {targets.FLAX_SPEEDUP:g}× flax "
                                    "(flax / lnjax time)")


def test_tokamax_times_on_its_shape_alone_with_the_device_time_where_measured():
    shape, ms = targets.TOKAMAX["shape"], targets.TOKAMAX["ms"]
    rows = [_row("lnjax xla", "forward", 1.0, ms=5.0, device_ms=ms["forward"] * 0.9,
                 basis="device"),  # the device time counts: met
            _row("lnjax pallas", "backward", 1.0, ms=ms["backward"] * 1.1),  # wall: not met
            _row("flax", "forward", 1.0, ms=0.001)]
    theirs = _group(rows, case=targets.TOKAMAX["case"], shape=shape,
                    dtype=targets.TOKAMAX["dtype"])
    tokamax = [t for t in targets.targets([theirs]) if t["target"].startswith("tokamax")]
    assert [(t["library"], t["met"], t["at_least"]) for t in tokamax] == [
        ("lnjax xla", True, False), ("lnjax pallas", False, False)]
    assert tokamax[0]["value"] == ms["forward"] * 0.9
    other_dtype = _group(rows, case="layer_norm", shape=shape, dtype="f32")
    assert not [t for t in targets.targets([other_dtype]) if t["target"].startswith("tokamax")]
    assert targets.tokamax_ms("rms_norm", shape, "bf16", "forward") is None
    assert targets.tokamax_ms("layer_norm", shape, "bf16", "forward_backward") is None


def test_summary_and_table_name_the_worst_group():
    goal = targets.COPY_TARGETS["forward"]
    groups = [_group([_row("lnjax xla", "forward", goal + 0.1)], shape=(8, 8)),
              _group([_row("lnjax xla", "forward", goal - 0.3)], shape=(16, 16)),
              _group([_row("lnjax xla", "forward", goal - 0.1)], shape=(32, 32))]
    records = targets.targets(groups)
    cell = targets.summary(records, "lnjax xla")
    assert cell == f"1 of 3 met; **not met**; worst {goal - 0.3:.3g} (layer_norm 16x16 f32)"
    assert targets.summary(records[:1], "lnjax xla") == f"{goal + 0.1:.3g}: met"
    assert targets.summary(records, "lnjax pallas") == "not measured"
    table = targets.table(records)
    assert table.splitlines()[0] == "| target | lnjax xla | lnjax pallas |"
    assert f"| forward ≥ {goal:g} × copy bandwidth | {cell} | not measured |" in table
    assert targets.table([]) is None


def test_the_worst_time_is_the_slowest():
    ms = targets.TOKAMAX["ms"]["forward"]
    shape, dtype = targets.TOKAMAX["shape"], targets.TOKAMAX["dtype"]
    groups = [_group([_row("lnjax xla", "forward", 1.0, ms=ms * f)], shape=shape, dtype=dtype)
              for f in (0.5, 3.0, 2.0)]
    records = [t for t in targets.targets(groups) if t["target"].startswith("tokamax")]
    assert targets.summary(records, "lnjax xla").startswith(
        f"1 of 3 met; **not met**; worst {ms * 3.0:.3g} ")
