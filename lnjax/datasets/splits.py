"""The splits: which examples of the training and test files each split takes.

The paper holds out the last 5,000 of MNIST's 60,000 training examples for
validation. With ``validation_size`` examples held out of a training file of
``n`` examples:

=============== ================= =========================================
split           examples          TFDS split string
=============== ================= =========================================
``train``       ``[0, n - v)``    ``train[:-v]``
``validation``  ``[n - v, n)``    ``train[-v:]``
``train_full``  ``[0, n)``        ``train``
``test``        the test file     ``test``
=============== ================= =========================================

:func:`lnjax.data.load` and :func:`lnjax.data.load_splits` take
``validation_size`` (default :data:`VALIDATION_SIZE`) and pass it here.
"""

from __future__ import annotations

from lnjax.datasets._checks import check_int

__all__ = ["SPLITS", "VALIDATION_SIZE", "split_slice", "tfds_split"]

SPLITS = ("train", "validation", "test", "train_full")
"""The splits :func:`lnjax.data.load` knows."""

VALIDATION_SIZE = 5_000
"""The paper's validation split: the last 5,000 examples of the training file."""


def split_slice(split: str, n_train: int, *,
                validation_size: int = VALIDATION_SIZE) -> tuple[str, slice]:
    """The file part (``"train"`` or ``"test"``) and the slice of it that ``split`` takes.

    ``validation_size`` examples at the end of the training file are held out:
    with the 60,000 training examples of MNIST, ``"train"`` is ``[0, 55000)``
    and ``"validation"`` is ``[55000, 60000)``.

    Args:
      split: one of :data:`SPLITS`.
      n_train: the number of examples in the training file.
      validation_size: how many training examples are held out (at least 1).

    Returns:
      ``(part, slice)``.

    Raises:
      ValueError: an unknown split, a ``validation_size`` below 1, or a training file
        of no more than ``validation_size`` examples for ``"train"`` or
        ``"validation"`` (the message suggests ``"train_full"``).

    Example:
      >>> split_slice("validation", 60_000)
      ('train', slice(55000, 60000, None))
      >>> split_slice("train", 12, validation_size=4)
      ('train', slice(0, 8, None))
      >>> split_slice("test", 10_000)
      ('test', slice(None, None, None))
    """
    v = check_int(validation_size, fn="split_slice", name="validation_size", minimum=1)
    if split == "test":
        return "test", slice(None)
    if split == "train_full":
        return "train", slice(None)
    if split not in SPLITS:
        raise ValueError(f"split_slice: unknown split {split!r}; the known ones are {SPLITS}.")
    if n_train <= v:
        raise ValueError(
            f"split_slice: split={split!r} holds out the last {v} training examples for validation "
            f"(validation_size={v}), but the training file has only {n_train}; use "
            "split='train_full' or a smaller validation_size.")
    if split == "train":
        return "train", slice(0, n_train - v)
    return "train", slice(n_train - v, n_train)


def tfds_split(split: str, *, validation_size: int = VALIDATION_SIZE) -> str:
    """The TFDS split string of ``split``: the same examples as :func:`split_slice` takes.

    Args:
      split: one of :data:`SPLITS`.
      validation_size: how many training examples are held out (at least 1).

    Returns:
      A split string for ``tfds.data_source`` (``train[:-5000]`` is ``train[:55000]``
      for MNIST).

    Raises:
      ValueError: an unknown split or a ``validation_size`` below 1.

    Example:
      >>> [tfds_split(s) for s in SPLITS]
      ['train[:-5000]', 'train[-5000:]', 'test', 'train']
      >>> tfds_split("validation", validation_size=48)
      'train[-48:]'
    """
    v = check_int(validation_size, fn="tfds_split", name="validation_size", minimum=1)
    strings = {"train": f"train[:-{v}]", "validation": f"train[-{v}:]",
               "test": "test", "train_full": "train"}
    if split not in strings:
        raise ValueError(f"tfds_split: unknown split {split!r}; the known ones are {SPLITS}.")
    return strings[split]
