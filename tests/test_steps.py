"""lnjax.steps.batches: one shuffled epoch stacked for a lax.scan."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lnjax.steps import batches


def test_batches_shapes_dtypes_and_pairing():
    images = np.arange(12, dtype=np.float32)[:, None, None] * np.ones((12, 28, 28), np.float32)
    labels = np.arange(12, dtype=np.int32)
    xb, yb = batches(images, labels, 4, seed=0)
    assert xb.shape == (3, 4, 28, 28) and yb.shape == (3, 4)
    assert xb.dtype == np.float32 and yb.dtype == np.int32
    np.testing.assert_array_equal(xb[:, :, 5, 7], yb)  # each image stays with its label
    assert sorted(yb.ravel().tolist()) == list(range(12))  # every example exactly once


def test_batches_order_is_the_documented_permutation():
    labels = np.arange(10)
    xb, yb = batches(labels * 10, labels, 5, seed=3, epoch=2, drop_remainder=False)
    expected = np.random.default_rng((3, 2)).permutation(10).reshape(2, 5)
    np.testing.assert_array_equal(yb, expected)
    np.testing.assert_array_equal(xb, expected * 10)


def test_batches_seeded_determinism():
    x, y = np.zeros((100, 3)), np.arange(100)
    first = batches(x, y, 10, seed=1, epoch=0)[1]
    np.testing.assert_array_equal(first, batches(x, y, 10, seed=1, epoch=0)[1])
    assert not np.array_equal(first, batches(x, y, 10, seed=1, epoch=1)[1])
    assert not np.array_equal(first, batches(x, y, 10, seed=2, epoch=0)[1])
    assert not np.array_equal(first.ravel(), y)  # shuffled


def test_batches_drop_remainder():
    y = np.arange(10)
    xb, yb = batches(y, y, 4, seed=0)
    assert yb.shape == (2, 4) and len(set(yb.ravel().tolist())) == 8
    dropped = {frozenset(set(range(10)) - set(batches(y, y, 4, seed=0, epoch=e)[1].ravel()))
               for e in range(5)}
    assert len(dropped) > 1  # a different remainder each epoch
    with pytest.raises(ValueError, match="does not divide the 10 examples"):
        batches(y, y, 4, seed=0, drop_remainder=False)


def test_batches_feed_lax_scan():
    y = np.arange(12, dtype=np.int32)
    xb, yb = batches(y.astype(np.float32), y, 3, seed=0)
    total, _ = jax.lax.scan(lambda c, b: (c + jnp.sum(b[0]) + jnp.sum(b[1]), None),
                            jnp.float32(0), (xb, yb))
    assert float(total) == 2 * sum(range(12))


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(batch_size=0), ValueError, "batch_size must be >= 1"),
    (dict(batch_size=11), ValueError, "larger than the 10 examples"),
    (dict(batch_size=2.0), TypeError, "batch_size must be an int"),
    (dict(batch_size=True), TypeError, "batch_size must be an int"),
    (dict(batch_size=2, seed=-1), ValueError, "seed must be >= 0"),
    (dict(batch_size=2, epoch=-1), ValueError, "epoch must be >= 0"),
    (dict(batch_size=2, labels=np.arange(9)), ValueError, "same number of examples"),
    (dict(batch_size=2, labels=np.int32(3)), ValueError, "leading examples axis"),
])
def test_batches_errors(kwargs, err, match):
    labels = kwargs.pop("labels", np.arange(10))
    kwargs.setdefault("seed", 0)
    with pytest.raises(err, match=match):
        batches(np.zeros((10, 2)), labels, **kwargs)
