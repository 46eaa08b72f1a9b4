"""Tests for lnjax.training.EpochRunner's evaluations: a curve given as indices into its
evaluation split shares the epoch's last pass with it; the evaluation batch size."""

import flax.linen as nn
import numpy as np
import optax
import pytest

from lnjax import steps, training


class Net(nn.Module):
    @nn.compact
    def __call__(self, x, *, train):
        return nn.Dense(3)(nn.tanh(nn.Dense(8)(x)))


def data(n, seed):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 5)).astype(np.float32), rng.integers(0, 3, n).astype(np.int32)


X, Y = data(48, 0)
XV, YV = data(30, 1)
PROBE = np.array([25, 3, 7, 11, 0, 19])  # unsorted on purpose: a subset, not an order


def new_state():
    return training.create_train_state(Net(), optax.adam(0.05), X[:1], seed=0)


@pytest.fixture
def evaluated(monkeypatch):
    """The number of examples of each call of lnjax.steps.evaluation_sums, and its batch size."""
    calls = []
    original = steps.evaluation_sums

    def spy(state, x, y, *, batch_size=1000):
        calls.append((len(y), batch_size))
        return original(state, x, y, batch_size=batch_size)

    monkeypatch.setattr(steps, "evaluation_sums", spy)
    return calls


class Points:
    tracks_steps = False

    def __init__(self):
        self.points = []

    def start(self, info):
        pass

    def point(self, point):
        self.points.append(point)

    def epoch(self, record, state):
        pass

    def close(self):
        pass


def test_a_curve_given_as_indices_shares_the_last_pass_with_its_split(evaluated):
    runner = training.EpochRunner((X, Y), batch_size=8, seed=0, evals={"dev": (XV, YV)},
                                  curves={"dev": PROBE}, evals_per_epoch=3, eval_batch_size=4)
    watcher = Points()
    state, record = runner.run(new_state(), 0, [watcher])
    # Two mid-epoch points on the subset, then the subset and the rest once each: every
    # example of the split is evaluated once at the epoch's end, none twice.
    assert evaluated == [(6, 4), (6, 4), (6, 4), (24, 4)]
    expect = training.evaluate(state, XV, YV)
    assert record.evals["dev"]["error"] == expect["error"]
    assert record.evals["dev"]["loss"] == pytest.approx(expect["loss"], rel=1e-6)
    last = watcher.points[-1].curves["dev"]
    probe = training.evaluate(state, XV[PROBE], YV[PROBE])
    assert last["error"] == probe["error"]
    assert last["loss"] == pytest.approx(probe["loss"], rel=1e-6)
    assert [p.step for p in watcher.points] == [2, 4, 6]


def test_curves_as_indices_give_the_history_of_curves_as_arrays():
    kwargs = dict(epochs=2, batch_size=8, seed=0, progress=False, evals={"dev": (XV, YV)},
                  evals_per_epoch=2)
    _, by_arrays = training.fit(new_state(), (X, Y), curves={"dev": (XV[PROBE], YV[PROBE])},
                                **kwargs)
    _, by_index = training.fit(new_state(), (X, Y), curves={"dev": PROBE}, **kwargs)
    assert by_index["eval_steps"] == by_arrays["eval_steps"] == [3, 6, 9, 12]
    for key in ("dev_error", "dev_curve_error"):
        assert by_index[key] == by_arrays[key]
    for key in ("dev_loss", "dev_curve_loss"):
        np.testing.assert_allclose(by_index[key], by_arrays[key], rtol=1e-6)


def test_a_curve_of_the_whole_split_evaluates_it_once(evaluated):
    runner = training.EpochRunner((X, Y), batch_size=8, seed=0, evals={"dev": (XV, YV)},
                                  curves={"dev": np.arange(30)})
    state, record = runner.run(new_state(), 0, [])
    assert evaluated == [(30, 1000)]
    assert record.evals["dev"] == training.evaluate(state, XV, YV)


@pytest.mark.parametrize("curves, error, match", [
    ({"probe": PROBE}, ValueError, r"curves \['probe'\] are given as indices.*\['dev'\]"),
    ({"dev": PROBE.astype(np.float32)}, TypeError, r"curves\['dev'\].*float32"),
    ({"dev": PROBE[:, None]}, TypeError, r"1-D integer array"),
    ({"dev": np.array([], np.int32)}, TypeError, r"non-empty"),
    ({"dev": np.array([0, 30])}, ValueError, r"30 examples; got indices from 0 to 30"),
    ({"dev": np.array([-1, 2])}, ValueError, r"from -1 to 2"),
])
def test_bad_curve_indices_are_named(curves, error, match):
    with pytest.raises(error, match=match):
        training.EpochRunner((X, Y), batch_size=8, seed=0, evals={"dev": (XV, YV)},
                             curves=curves)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_eval_batch_size_must_be_a_positive_int(bad):
    with pytest.raises(ValueError, match="eval_batch_size must be a positive int"):
        training.fit(new_state(), (X, Y), epochs=1, batch_size=8, seed=0, progress=False,
                     evals={"dev": (XV, YV)}, eval_batch_size=bad)


def test_fit_evaluates_in_batches_of_eval_batch_size(evaluated):
    _, h = training.fit(new_state(), (X, Y), epochs=1, batch_size=8, seed=0, progress=False,
                        evals={"dev": (XV, YV)}, eval_batch_size=7)
    assert evaluated == [(30, 7)]
    assert len(h["dev_error"]) == 1
