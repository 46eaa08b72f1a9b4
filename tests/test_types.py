"""lnjax type-checks clean under mypy with the project's settings (pyproject.toml's
``[tool.mypy]``), and those settings do catch errors: lnjax ships ``py.typed``, so its
annotations are what its users' type checkers see.

Each mypy run starts from an empty cache, as on a fresh machine: about 8 s each on the
2-core machine (0.2 s with a warm cache)."""

import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

pytest.importorskip("mypy", reason="mypy is not installed (the dev extra installs it)")


def _mypy(*args: str, cache_dir: pathlib.Path) -> subprocess.CompletedProcess:
    """``python -m mypy ARGS`` from the repository root (so with its pyproject.toml),
    caching in ``cache_dir``."""
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(cache_dir), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_package_type_checks(tmp_path):
    """``python -m mypy`` (the package, as ``make lint`` runs it) finds no error."""
    r = _mypy(cache_dir=tmp_path / "cache")
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "Success" in r.stdout, f"mypy failed:\n{out}"


# Each line marked `# E: CODE` must be reported with that error code, and nothing else.
PROBE = '''
import jax.numpy as jnp
import lnjax
from lnjax import linen as lnn

x = jnp.ones((2, 3))
lnjax.layer_norm(x, epsilon="1e-6")  # E: arg-type
y: str = lnjax.layer_norm(x)  # E: assignment
lnn.LayerNorm()(x, mask=0.5)  # E: arg-type
ok: jnp.ndarray = lnjax.rms_norm(x, axis=(0, 1))


def untyped():  # its body is checked: check_untyped_defs
    n: int = "three"  # E: assignment


def half_typed(a: int, b):  # E: no-untyped-def
    return a


z = 1  # type: ignore[misc]  # E: unused-ignore
'''


def test_settings_catch_errors(tmp_path):
    """The same settings on a small file with deliberate errors report exactly those:
    lnjax's annotations are seen (not ``Any``), and the strictness settings apply."""
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    r = _mypy(str(probe), cache_dir=tmp_path / "cache")
    out = r.stdout + r.stderr
    expected = {(i, m.group(1)) for i, line in enumerate(PROBE.splitlines(), 1)
                if (m := re.search(r"# E: ([a-z-]+)$", line))}
    found = {(int(line), code) for line, code in
             re.findall(r"probe\.py:(\d+): error: .*\[([a-z-]+)\]$", r.stdout, flags=re.M)}
    assert r.returncode == 1, f"mypy should have failed on the probe:\n{out}"
    assert found == expected, f"expected errors {sorted(expected)}, got {sorted(found)}:\n{out}"
