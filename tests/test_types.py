"""lnjax type-checks clean under mypy with the project's settings (pyproject.toml's
``[tool.mypy]``), and those settings do catch errors: lnjax ships ``py.typed``, so its
annotations are what its users' type checkers see.

One mypy run (from an empty cache, as on a fresh machine) checks the package and a probe
file with deliberate errors together: the package must have no error, the probe exactly
its own."""

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


@pytest.fixture(scope="module")
def checked(tmp_path_factory):
    """``(probe, result)``: ``python -m mypy lnjax PROBE`` with the project's settings."""
    folder = tmp_path_factory.mktemp("mypy")
    probe = folder / "probe.py"
    probe.write_text(PROBE)
    return probe, _mypy("lnjax", str(probe), cache_dir=folder / "cache")


def _errors(stdout):
    """``(file, line, code)`` of each error mypy reported."""
    return {(pathlib.Path(f).name, int(line), code) for f, line, code in
            re.findall(r"^(.+?):(\d+): error: .*\[([a-z-]+)\]$", stdout, flags=re.M)}


def test_package_type_checks(checked):
    """The package (``python -m mypy``, as ``make lint`` runs it) has no error."""
    probe, r = checked
    out = r.stdout + r.stderr
    assert "errors prevented further checking" not in out, out
    assert not [e for e in _errors(r.stdout) if e[0] != probe.name], f"mypy on lnjax:\n{out}"
    assert re.search(r"in 1 file \(checked \d+ source files\)", r.stdout), out


def test_settings_catch_errors(checked):
    """The same settings on a small file with deliberate errors report exactly those:
    lnjax's annotations are seen (not ``Any``), and the strictness settings apply."""
    probe, r = checked
    out = r.stdout + r.stderr
    expected = {(probe.name, i, m.group(1)) for i, line in enumerate(PROBE.splitlines(), 1)
                if (m := re.search(r"# E: ([a-z-]+)$", line))}
    assert r.returncode == 1, f"mypy should have failed on the probe:\n{out}"
    found = {e for e in _errors(r.stdout) if e[0] == probe.name}
    assert found == expected, f"expected errors {sorted(expected)}, got {sorted(found)}:\n{out}"
