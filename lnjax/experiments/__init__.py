"""Command-line reproductions of the paper's results (``python -m lnjax.experiments.X``).

``invariance`` (Table 1), ``pi_mnist`` (Figure 6) and ``seq_mnist`` (LN-LSTM and
LN-GRU on sequential MNIST). The training experiments describe themselves with a
:class:`driver.Experiment` and share one command line, :func:`driver.main`, and
one training run, :func:`common.fit_run`.
"""
