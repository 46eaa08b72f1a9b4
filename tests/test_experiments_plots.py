"""The experiments' figures (lnjax.experiments.plots): curves over seeds, axis scales,
captions."""

import numpy as np

from lnjax.experiments import plots


def test_axis_scale_is_linear_for_a_narrow_range_and_plain_on_a_log_one():
    plt = plots.pyplot()
    fig, ax = plt.subplots()
    assert plots.set_scale(ax, [0.31, 0.9, 2.3]) == "linear"
    assert ax.get_yscale() == "linear"
    assert plots.set_scale(ax, [0.02, 0.9, 2.3]) == "log"
    assert ax.get_yscale() == "log"
    fmt = ax.yaxis.get_major_formatter()
    assert [fmt(v, 0) for v in (0.02, 0.5, 1.0, 2.0)] == ["0.02", "0.5", "1", "2"]
    assert plots.set_scale(ax, [-0.1, 5.0]) == "linear"  # not all positive
    plt.close(fig)


def test_curves_over_seeds_share_their_common_points():
    hs = [{"eval_steps": [2, 4, 6], "test_curve_error": [0.5, 0.4, 0.3], "test_error": [0.3]},
          {"eval_steps": [2, 4], "test_curve_error": [0.7, 0.2], "test_error": [0.2]}]
    xs, ys, subset = plots.error_curve(hs)
    assert subset and xs.tolist() == [2.0, 4.0]
    np.testing.assert_allclose(ys, [[50.0, 40.0], [70.0, 20.0]])
    xs, ys, subset = plots.error_curve([{"steps": [5], "test_error": [0.25]}])
    assert not subset and xs.tolist() == [5.0] and ys.tolist() == [[25.0]]
    assert plots.curve(hs, "train_curve_loss") is None


def test_captions_say_what_was_measured():
    results = {"dataset": {"sizes": {"test": 10000}}, "config": {"eval_examples": 2000}}
    assert plots.eval_caption(results) == "2,000 of the 10,000 test images"
    assert plots.eval_caption({**results, "config": {}}) == "all 10,000 test images"
    runs = {"ln": {"4": {"0": {}, "1": {}, "2": {}}}}
    assert plots.seeds_caption(runs) == "mean of 3 seeds, band: min–max"
    assert plots.seeds_caption({"ln": {"4": {"epoch": [1]}}}) == "1 seed"
