"""Test configuration: eight host devices for the cross-device tests, and
hypothesis profiles sized for a 2-core CPU."""

import os

# Must happen before jax is imported anywhere: eight CPU devices let the
# sharded and cross-device tests run on a machine without accelerators.
_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()

from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "default", max_examples=12, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.differing_executors])
settings.register_profile(
    "thorough", max_examples=200, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.differing_executors])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
