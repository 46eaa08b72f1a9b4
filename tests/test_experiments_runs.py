"""One training run of an experiment (lnjax.experiments.runs): its identity, the curves'
fixed subsets."""

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lnjax import data, training
from lnjax.experiments import runs, settings


def toy(n, name="toy"):
    return data.Dataset(np.arange(float(n))[:, None], np.arange(n), name, "train", "memory")


def test_eval_subset_is_fixed_and_drawn_from_the_whole_split():
    ds = data.Dataset(np.arange(500.0)[:, None], np.arange(500), "toy", "test", "memory")
    a, b = runs.eval_subset(ds, 50), runs.eval_subset(ds, 50)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert len(set(a.labels.tolist())) == 50 and a.labels.max() > 100  # not the first 50
    np.testing.assert_array_equal(a.images[:, 0], a.labels)  # images and labels together
    assert runs.eval_subset(ds, None) is ds and runs.eval_subset(ds, 500) is ds


def test_identity_names_what_changes_the_run_and_nothing_else():
    """The checkpoint folder changes with the run, the learning rate, the data and the
    curves' settings; not with the epochs (a longer run resumes), the output folder or the
    progress bars."""
    run = runs.Run("ln", 8, 0, model_config=[16, 16], label="x")
    base = settings.Settings()

    def name(r=run, s=base, train=None):
        train = toy(64) if train is None else train
        return runs.run_name(r.method, r.batch_size, runs.identity(r, s, train))

    assert name().startswith("ln-bs8-")
    same = [name(s=settings.Settings(epochs=9, out="elsewhere", progress=False, resume=False,
                                     eval_batch_size=7)),
            name(r=runs.Run("ln", 8, 0, model_config=[16, 16], label="another bar"))]
    assert same == [name()] * 2
    other = [name(r=runs.Run("ln", 8, 1, model_config=[16, 16])),
             name(r=runs.Run("ln", 8, 0, model_config=[16, 8])),
             name(s=settings.Settings(lr=0.01)), name(s=settings.Settings(eval_examples=10)),
             name(train=toy(65)), name(train=toy(64, "other"))]
    assert len({name(), *other}) == 1 + len(other)
    # The curves' defaults leave the identity as it was before they were settings.
    assert "curves" not in runs.identity(run, base, toy(64))
    assert runs.identity(run, settings.Settings(evals_per_epoch=2), toy(64))["curves"] == [
        settings.EVAL_EXAMPLES, 2]


def test_with_hyperparams_sets_values_in_their_dtype_and_refuses_unknown_names():
    tx = optax.inject_hyperparams(optax.sgd)(learning_rate=np.asarray(0.1, np.float32),
                                             momentum=np.asarray(0.0, np.float32))
    state = runs.with_hyperparams(tx.init(jnp.zeros(2)), {"learning_rate": 2})
    assert float(state.hyperparams["learning_rate"]) == 2.0
    assert state.hyperparams["learning_rate"].dtype == jnp.float32
    assert float(state.hyperparams["momentum"]) == 0.0
    with pytest.raises(ValueError, match=r"no hyperparameter \['lr'\]"):
        runs.with_hyperparams(tx.init(jnp.zeros(2)), {"lr": 0.1})
    with pytest.raises(ValueError, match="holds no hyperparameters"):
        runs.with_hyperparams(optax.sgd(0.1).init(jnp.zeros(2)), {"learning_rate": 0.1})


def test_shared_makes_one_object_per_arguments():
    assert runs.shared(optax.adam, 1e-3) is runs.shared(optax.adam, 1e-3)
    assert runs.shared(optax.adam, 1e-3) is not runs.shared(optax.adam, 2e-3)


class Net(nn.Module):
    @nn.compact
    def __call__(self, x, *, train):
        return nn.Dense(3)(nn.tanh(nn.Dense(6)(x)))


def split(n, seed, name):
    rng = np.random.default_rng(seed)
    return data.Dataset(rng.normal(size=(n, 4)).astype(np.float32),
                        rng.integers(0, 3, n).astype(np.int32), "toy", name, "memory")


def test_fit_run_curves_are_the_fixed_subsets_and_its_table_the_whole_splits(tmp_path):
    splits = {"train": split(32, 0, "train"), "validation": split(20, 1, "validation"),
              "test": split(25, 2, "test")}
    s = settings.Settings(out=str(tmp_path), eval_examples=6, evals_per_epoch=2, epochs=2,
                          progress=False, eval_batch_size=4)
    tx = optax.adam(0.1)
    got = runs.fit_run(Net(), tx, splits, runs.Run("m", 8, 0), s)
    # The same training with the curves' subsets given as arrays.
    state = training.create_train_state(Net(), tx, splits["train"].images[:1], seed=0)
    whole = {k: (splits[k].images, splits[k].labels) for k in ("validation", "test")}
    subsets = {k: (runs.eval_subset(splits[k], 6).images, runs.eval_subset(splits[k], 6).labels)
               for k in whole}
    _, expect = training.fit(state, (splits["train"].images, splits["train"].labels), epochs=2,
                             batch_size=8, seed=0, evals=whole, curves=subsets,
                             evals_per_epoch=2, progress=False)
    assert got["eval_steps"] == expect["eval_steps"] == [2, 4, 6, 8]
    for key in ("validation_error", "test_error", "validation_curve_error", "test_curve_error"):
        assert got[key] == expect[key], key
    for key in ("validation_loss", "test_loss", "validation_curve_loss", "test_curve_loss"):
        np.testing.assert_allclose(got[key], expect[key], rtol=1e-6, err_msg=key)
