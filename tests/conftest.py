"""Test configuration: eight host devices for the cross-device tests, hypothesis
profiles sized for a 2-core CPU, and the notebooks executed once for the docs and
notebook tests."""

import os

import pytest
from hypothesis import HealthCheck, settings

from lnjax import parallel

# Before the first JAX computation (XLA reads the flag then): eight CPU devices let the sharded and cross-device tests run on
# a machine without accelerators.
os.environ["XLA_FLAGS"] = parallel.host_device_flags(8)


settings.register_profile(
    "default", max_examples=12, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.differing_executors])
settings.register_profile(
    "thorough", max_examples=200, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.differing_executors])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(scope="session")
def executed_notebooks():
    """The notebooks of colabs/ executed as the docs build executes them, once per run.

    docs/generate.py runs each notebook with docs/conf.py's ``NOTEBOOK_SETTINGS`` into
    docs/notebooks/ (kept while their inputs are unchanged). The docs tests build the site
    from them and the notebook tests read them, so the notebooks run once for both; a lock
    makes a second test process wait for the first, then find them up to date.

    Returns ``(folder, settings, stamps)``: docs/notebooks/, the settings each notebook was
    given, and each notebook's stamp (``{"seconds": ...}``, its last execution's time).
    """
    import fcntl
    import json

    from tests.helpers import docs_conf

    conf = docs_conf()
    generate = conf.generate  # docs/generate.py, as docs/conf.py imports it
    generate.GENERATED.mkdir(parents=True, exist_ok=True)
    with open(generate.GENERATED / "notebooks.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            generate.execute_notebooks(conf.NOTEBOOK_SETTINGS)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    stamps = {p.name.removesuffix(".json"): json.loads(p.read_text())
              for p in (generate.GENERATED / "stamps").glob("*.json")}
    return generate.NOTEBOOKS, conf.NOTEBOOK_SETTINGS, stamps
