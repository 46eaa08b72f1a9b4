"""lnjax benchmarks, run from a clone: ``python -m benchmarks.run`` (speed against flax,
PyTorch and a copy), ``benchmarks.accuracy``, ``benchmarks.scaling`` and
``benchmarks.training_loop``. They time with one harness (``harness.py``) and
report in one format (``report.py``)."""
