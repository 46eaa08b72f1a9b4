"""Test configuration: eight host devices for the cross-device tests, and
hypothesis profiles sized for a 2-core CPU."""

import os

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
