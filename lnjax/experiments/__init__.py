"""Command-line reproductions of the paper's results (``python -m lnjax.experiments.X``).

``invariance`` (Table 1), ``pi_mnist`` (Figure 6), ``seq_mnist`` (LN-LSTM and
LN-GRU on sequential MNIST), ``convnet`` (norms in a CNN at large, small and
split batches) and ``transformer`` (post-LN, pre-LN and warm-up). The training
experiments describe themselves with a :class:`driver.Experiment` and share one
command line, :func:`driver.main`, whose flags come from a
:class:`settings.Settings` dataclass; one training run, :func:`runs.fit_run`;
one ``results.json`` format, :mod:`results`; the table, :mod:`tables`; and the
figures' pieces, :mod:`plots`.
"""
