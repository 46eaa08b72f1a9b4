"""The parts of :mod:`lnjax.data`, one module each (pure NumPy: no module here imports jax).

:mod:`lnjax.data` is the entry point and re-exports what a user needs
(``load``, ``load_splits``, ``Dataset``, ...). The modules below are public for
what lies beneath it:

* :mod:`lnjax.datasets.core`: the data sets' names, :class:`~lnjax.data.Dataset`
  and the errors;
* :mod:`lnjax.datasets.idx`: finding and reading IDX files (:func:`~lnjax.datasets.idx.read_idx`);
* :mod:`lnjax.datasets.checksums`: the published checksums and what files are by them;
* :mod:`lnjax.datasets.folders`: the IDX folders looked in (``$LNJAX_DATA_DIR``,
  ``~/.cache/lnjax``, ``$LNJAX_SYSTEM_DATA_DIR``) and reading one;
* :mod:`lnjax.datasets.tfds_source`: TensorFlow Datasets, imported only when used;
* :mod:`lnjax.datasets.splits`: which examples each split takes
  (:func:`~lnjax.datasets.splits.split_slice`, ``validation_size``);
* :mod:`lnjax.datasets.loading`: :func:`~lnjax.data.load` and
  :func:`~lnjax.data.load_splits`;
* :mod:`lnjax.datasets.cli`: ``python -m lnjax.data`` (also ``python -m lnjax.datasets``).
"""

__all__: list[str] = []
