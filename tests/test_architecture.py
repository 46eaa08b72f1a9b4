"""The architecture holds, and its checks can fail.

``lint-imports`` checks pyproject.toml's ``[tool.importlinter]`` contracts (lnjax's layers, the
benchmarks' layers, no import of lnjax's private modules from tests or benchmarks, test files
independent of one another); ruff's SLF rules catch private names reached through a public
module (``data._x``). Each check is run as ``make lint`` runs it, and once on a change that
breaks it, so that a green run means something.
"""

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
LINT_IMPORTS = pathlib.Path(sys.executable).parent / "lint-imports"

pytestmark = pytest.mark.skipif(
    not LINT_IMPORTS.exists(),
    reason="import-linter is not installed (the dev extra installs it; make test does)")


def _lint_imports(*args: str, cwd: pathlib.Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_the_import_contracts_hold():
    out = _lint_imports()
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "Contracts: 7 kept, 0 broken." in out.stdout, out.stdout[-2000:]


def test_a_layer_importing_a_layer_above_it_breaks_the_contract(tmp_path):
    """The same contracts with the normalization layer put above the modules that use it:
    lnjax.linen's real imports of lnjax.normalization must then be reported."""
    config = (ROOT / "pyproject.toml").read_text()
    swapped = config.replace('    "lnjax.linen | lnjax.nnx",\n    "lnjax.recurrent",\n'
                             '    "lnjax.normalization",\n',
                             '    "lnjax.normalization",\n    "lnjax.recurrent",\n'
                             '    "lnjax.linen | lnjax.nnx",\n')
    assert swapped != config
    (tmp_path / "swapped.toml").write_text(swapped)
    out = _lint_imports("--config", str(tmp_path / "swapped.toml"))
    assert out.returncode == 1, out.stdout[-2000:]
    assert "lnjax.linen" in out.stdout and "BROKEN" in out.stdout


def test_ruff_finds_no_private_name_reached_from_outside_and_would(tmp_path):
    pytest.importorskip("ruff", reason="ruff is not installed (the dev extra installs it)")
    ruff = [sys.executable, "-m", "ruff", "check", "--select", "SLF", "--no-cache"]
    out = subprocess.run([*ruff, "lnjax", "tests", "benchmarks", "colabs"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:]
    (tmp_path / "reach.py").write_text("from lnjax import data\n\ndata._read_idx('x')\n")
    out = subprocess.run([*ruff, str(tmp_path / "reach.py")], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 1 and "SLF001" in out.stdout, out.stdout
