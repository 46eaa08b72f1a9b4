"""The device suite's byte model (benchmarks.byte_model): the bytes each pass must move,
counted by hand for known shapes."""

from __future__ import annotations

import doctest

import pytest

from benchmarks import byte_model


def test_doctests():
    result = doctest.testmod(byte_model)
    assert result.attempted > 0 and result.failed == 0


def test_layer_norm_passes_are_the_hand_count():
    rows, width, e = 4096, 1024, 2  # bf16
    x = rows * width * e
    forward = byte_model.pass_bytes("layer_norm", "forward", (rows, width), "bf16")
    # reads x, scale and bias; writes y
    assert forward == {"read": x + 2 * width * e, "written": x}
    saving = byte_model.pass_bytes("layer_norm", "forward_stats", (rows, width), "bf16")
    # and writes the mean and 1/sigma, f32, per row
    assert saving == {"read": x + 2 * width * e, "written": x + 8 * rows}
    backward = byte_model.pass_bytes("layer_norm", "backward", (rows, width), "bf16")
    # reads x, dy, scale and the two statistics; writes dx, dscale, dbias
    assert backward == {"read": 2 * x + width * e + 8 * rows, "written": x + 2 * width * e}
    assert backward == {"read": 16_812_032, "written": 8_392_704}


def test_rms_norm_has_one_parameter_and_one_statistic():
    rows, width = 16384, 256
    x = rows * width * 4  # f32
    saving = byte_model.pass_bytes("rms_norm", "forward_stats", (rows, width), "f32")
    assert saving == {"read": x + width * 4, "written": x + 4 * rows}
    backward = byte_model.pass_bytes("rms_norm", "backward", (rows, width), "f32")
    assert backward == {"read": 2 * x + width * 4 + 4 * rows, "written": x + width * 4}


@pytest.mark.parametrize("case", ["layer_norm", "rms_norm"])
@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_forward_backward_is_forward_saving_stats_then_backward(case, dtype):
    shape = (1024, 8192)
    both = byte_model.pass_bytes(case, "forward_backward", shape, dtype)
    saving = byte_model.pass_bytes(case, "forward_stats", shape, dtype)
    back = byte_model.pass_bytes(case, "backward", shape, dtype)
    assert both == {k: saving[k] + back[k] for k in ("read", "written")}
    # half the bytes per element, half the traffic but for the f32 statistics
    stats = 4 * (2 if case == "layer_norm" else 1) * shape[0]
    f32 = byte_model.pass_bytes(case, "forward_stats", shape, "f32")
    bf16 = byte_model.pass_bytes(case, "forward_stats", shape, "bf16")
    assert f32["written"] - stats == 2 * (bf16["written"] - stats)


def test_copy_bytes_reads_and_writes_x():
    assert byte_model.copy_bytes((4096, 1024), "bf16") == 2 * 4096 * 1024 * 2
    assert byte_model.copy_bytes((3, 5), "f32") == 120


def test_copies_fill_the_rotation_bytes_within_bounds():
    assert byte_model.copies((589824, 128), "f32") == 1  # 288 MiB: more than enough alone
    assert byte_model.copies((589824, 128), "bf16") == 2  # 144 MiB: two reach 256 MiB
    assert byte_model.copies((4096, 1024), "f32") == 16  # 16 MiB: 16, the most
    assert byte_model.copies((16, 1000), "f32") == byte_model.MAX_COPIES
    mib = 2**20 // 4  # f32 elements in a MiB
    assert byte_model.copies((100 * mib, 1), "f32") == 3  # 300 MiB in all
    assert byte_model.copies((128 * mib, 1), "f32") == 2  # 256 MiB exactly
    assert byte_model.copies((128 * mib - 1, 1), "f32") == 3  # two fall short by 8 bytes


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="unknown pass"):
        byte_model.pass_bytes("layer_norm", "sideways", (4, 8), "f32")
    with pytest.raises(ValueError, match="unknown case"):
        byte_model.pass_bytes("batch_norm", "forward", (4, 8), "f32")
    with pytest.raises(ValueError, match="unknown dtype"):
        byte_model.pass_bytes("layer_norm", "forward", (4, 8), "f64")
