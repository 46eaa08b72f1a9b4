"""lnjax benchmarks, run from a clone: ``python -m benchmarks.run`` (speed against flax,
PyTorch and a copy; ``--device``: on an accelerator, :mod:`benchmarks.device`),
``benchmarks.accuracy``, ``benchmarks.scaling``, ``benchmarks.sharding`` and
``benchmarks.training_loop``. They time with one harness (``harness.py``) and report in one
format (``report.py``); the cases both timing suites run are in ``cases.py``; the device
suite's byte model and targets in ``byte_model.py`` and ``targets.py``."""
