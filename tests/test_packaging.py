"""Packaging: what ``pip install`` of lnjax's wheel gives a user who asks for no extra, and
what its sdist and wheel hold.

The sdist and the wheel are built once per module as ``python -m build`` builds them: the
sdist from a copy of this source tree, the wheel from that sdist (so the sdist is proven to
build). The build uses this environment's setuptools when it has the version
pyproject.toml asks for, and an isolated build environment otherwise.

A fresh virtualenv then gets the wheel and its required dependencies from the package
index (pip's cache makes this seconds; ``--no-compile`` leaves byte-compiling to the first
import), and runs tests/plain_install_script.py: every layer of the package imports,
``lnjax.training.fit`` trains on MNIST-format IDX files with its progress bar and its
checkpoints, the optional packages are absent, and each feature that needs an extra says
which one in a single line.
"""

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from lnjax import parallel
from tests.helpers import write_mnist_folder

_DEV = "build and twine are not installed: pip install 'lnjax[dev]' (make test installs them)"
build = pytest.importorskip("build", reason=_DEV)
pytest.importorskip("twine", reason=_DEV)

ROOT = Path(__file__).resolve().parents[1]
NAME = "lnjax-0.1.0"
WHEEL = f"{NAME}-py3-none-any.whl"
# What a working tree may hold that is no part of the project (see .gitignore).
NOT_SOURCE = (".git", ".venv", "__pycache__", "*.egg-info", ".pytest_cache", ".ruff_cache",
              ".mypy_cache", ".hypothesis", "build", "dist", "runs", "results",
              ".ipynb_checkpoints", "_build")
OPTIONAL = ("matplotlib", "tensorflow_datasets", "tensorboardX", "torch")
EXTRAS = ("data", "plots", "experiments", "tensorboard", "notebooks", "bench", "torch",
          "docs", "dev")


def _run(args, **kw):
    """Runs ``args``; returns the completed process (output captured as text)."""
    return subprocess.run(args, capture_output=True, text=True, timeout=600, **kw)


def _ok(proc):
    assert proc.returncode == 0, f"{proc.args}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _source_files(folder):
    """The files of ``folder`` in this tree, relative to the tree's root, caches left out."""
    return {p.relative_to(ROOT).as_posix() for p in (ROOT / folder).rglob("*")
            if p.is_file() and p.suffix != ".pyc"
            and not any(fnmatch.fnmatch(part, pattern) for part in p.relative_to(ROOT).parts
                        for pattern in NOT_SOURCE)}


@pytest.fixture(scope="module")
def dists(tmp_path_factory):
    """``(sdist, wheel)`` paths: the sdist built from a copy of this tree, the wheel from it."""
    tmp = tmp_path_factory.mktemp("dists")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    builder = build.ProjectBuilder(src)
    unmet = [u for r in builder.build_system_requires for u in build.check_dependency(r)]
    _ok(_run([sys.executable, "-m", "build", *([] if unmet else ["--no-isolation"]),
              "--outdir", str(tmp / "dist"), str(src)]))
    sdist, wheel = tmp / "dist" / f"{NAME}.tar.gz", tmp / "dist" / WHEEL
    assert sorted(p.name for p in (tmp / "dist").iterdir()) == sorted([sdist.name, wheel.name])
    return sdist, wheel


def _sdist_members(sdist):
    with tarfile.open(sdist) as tar:
        names = [m.name for m in tar.getmembers() if m.isfile()]
    assert all(n.startswith(f"{NAME}/") for n in names)
    return {n.removeprefix(f"{NAME}/") for n in names}


def _wheel_members(wheel):
    with zipfile.ZipFile(wheel) as z:
        return set(z.namelist())


def test_twine_check_strict(dists):
    """PyPI would render the README and accept the metadata of both."""
    out = _ok(_run([sys.executable, "-m", "twine", "check", "--strict", *map(str, dists)]))
    assert out.stdout.count("PASSED") == 2, out.stdout


def test_the_wheel_holds_the_package_and_its_py_typed_only(dists):
    _, wheel = dists
    names = _wheel_members(wheel)
    package = {n for n in names if n.startswith("lnjax/")}
    assert package == _source_files("lnjax")  # every module, and lnjax/py.typed
    assert "lnjax/py.typed" in package
    info = names - package
    assert info == {f"{NAME}.dist-info/{f}" for f in (
        "METADATA", "WHEEL", "RECORD", "top_level.txt", "licenses/LICENSE")}
    with zipfile.ZipFile(wheel) as z:
        metadata = z.read(f"{NAME}.dist-info/METADATA").decode()
    headers = metadata.split("\n\n", 1)[0]
    assert "License-Expression: Apache-2.0" in headers
    # The oldest Python it accepts is the oldest its classifiers name.
    [oldest] = re.findall(r"^Requires-Python: >=(3\.\d+)$", headers, re.M)
    versions = re.findall(r"^Classifier: Programming Language :: Python :: (3\.\d+)$", headers,
                          re.M)
    assert min(versions, key=lambda v: int(v.split(".")[1])) == oldest
    assert "Classifier: Typing :: Typed" in headers
    assert sorted(re.findall(r"^Provides-Extra: (.*)$", headers, re.M)) == sorted(EXTRAS)
    # The core dependencies: no extra's package comes with a plain install.
    core = [r for r in re.findall(r"^Requires-Dist: (.*)$", headers, re.M) if "extra ==" not in r]
    assert {re.split(r"[ <>=;\[]", r)[0] for r in core} == {
        "jax", "jaxlib", "flax", "optax", "chex", "numpy", "orbax-checkpoint", "tqdm"}
    # No address the project cannot vouch for, in the metadata or the README below it.
    assert not re.search(r"^(Home-page|Project-URL|Download-URL):", headers, re.M)
    assert "github.com/lnjax" not in metadata and "git+http" not in metadata


def test_the_sdist_holds_the_project_with_a_complete_test_suite(dists):
    sdist, wheel = dists
    members = _sdist_members(sdist)
    wanted = {"README.md", "CONTRIBUTING.md", "LICENSE", "pyproject.toml", "MANIFEST.in",
              "Makefile"}
    for folder in ("lnjax", "tests", "colabs", "benchmarks", "docs"):
        wanted |= _source_files(folder)
    assert wanted <= members, sorted(wanted - members)
    # What the suite imports beside the test modules.
    assert {"tests/__init__.py", "tests/conftest.py", "tests/helpers.py", "tests/reference.py",
            "tests/multihost_worker.py", "tests/plain_install_script.py"} <= members
    # Besides: setuptools' own metadata, nothing else (no caches, no outputs).
    assert {m for m in members - wanted if not m.startswith("lnjax.egg-info/")} == {
        "PKG-INFO", "setup.cfg"}
    # The sdist's package is the wheel's, byte for byte.
    with tarfile.open(sdist) as tar, zipfile.ZipFile(wheel) as z:
        for name in sorted(m for m in members if m.startswith("lnjax/")):
            assert tar.extractfile(f"{NAME}/{name}").read() == z.read(name), name


def test_the_unpacked_sdist_runs_its_tests(dists, tmp_path):
    """pytest collects the whole suite in the unpacked sdist (every module imports: the
    conftest, the float64 references, the helpers, the multi-host worker) and runs a few
    tests that read them, the README and the notebooks."""
    sdist, _ = dists
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp_path, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    root = tmp_path / NAME
    assert not (root / ".git").exists()
    chosen = ("test_exact_far_from_zero", "test_load_idx_values", "test_readme_has_examples",
              "test_the_notebooks_are_all_there", "test_notebook_and_source_hold_the_same_cells",
              "test_report_table_and_files")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the sdist's lnjax
    out = _run([sys.executable, "-m", "pytest", "-q", "tests", "-k", " or ".join(chosen)],
               cwd=root, env=env)
    _ok(out)
    summary = out.stdout.strip().splitlines()[-1]
    passed = int(re.search(r"(\d+) passed", summary).group(1))
    assert passed >= len(chosen) and not re.search(r"failed|error|skipped", summary), summary


# --------------------------------------------------------------------------
# A plain install: the wheel and its required dependencies, no extra.
# --------------------------------------------------------------------------


def _venv_env():
    """The environment of a user's shell: nothing on PYTHONPATH, one CPU device."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["XLA_FLAGS"] = parallel.host_device_flags(None)
    env["JAX_PLATFORMS"] = "cpu"
    return env


@pytest.fixture(scope="module")
def plain_python(dists, tmp_path_factory):
    """The Python of a fresh virtualenv holding the wheel, installed without extras."""
    _, wheel = dists
    venv = tmp_path_factory.mktemp("plain") / "venv"
    # The venv gets no pip of its own: this environment's pip installs into it (--python).
    _ok(_run([sys.executable, "-m", "venv", "--without-pip", str(venv)]))
    python = venv / "bin" / "python"
    _ok(_run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-compile",
              "--disable-pip-version-check", "--progress-bar", "off", str(wheel)],
             env=_venv_env()))
    return python


@pytest.fixture(scope="module")
def plain_run(plain_python, tmp_path_factory):
    """``(report, stderr)`` of tests/plain_install_script.py in the plain install."""
    tmp = tmp_path_factory.mktemp("plain-run")
    idx = write_mnist_folder(tmp / "idx", 10, 256)  # the test split: 256 learnable images
    (tmp / "work").mkdir()
    out = _ok(_run([str(plain_python), "-I", str(ROOT / "tests" / "plain_install_script.py"),
                    str(idx), str(tmp / "work")], cwd=tmp, env=_venv_env()))
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


def test_a_plain_install_imports_trains_and_checkpoints(plain_python, plain_run):
    report, stderr = plain_run
    assert Path(report["lnjax"]).is_relative_to(plain_python.parents[1])  # the wheel's lnjax
    assert report["version"] == "0.1.0"
    assert report["importable"] == dict.fromkeys(OPTIONAL, False)
    assert report["examples"] == 256 and report["identity"].startswith("unknown IDX data")
    first, second = report["train_loss"]
    assert 0 < second < first < 10  # finite, and it learns
    assert report["steps"] == [8, 16]
    assert report["checkpoints"] == ["1", "2"]
    assert report["resumed_loss"] == report["train_loss"]  # restored, not trained again
    assert re.search(r"plain install: 100%.*16/16", stderr), stderr[-2000:]


def test_a_plain_install_names_the_extra_a_feature_needs(plain_python, plain_run, tmp_path):
    report, _ = plain_run
    assert not report["tensorboard_dir_made"]  # refused before anything was written
    for name, extra in (("pyplot", "plots"), ("prepare", "data"), ("tensorboard", "tensorboard")):
        kind, message = report["errors"][name]
        assert kind == "MissingExtraError"
        assert "\n" not in message and message.endswith(f'pip install "lnjax[{extra}]"'), message
    # An experiment stops before loading data or training, with that one line.
    out = _run([str(plain_python), "-I", "-m", "lnjax.experiments.pi_mnist", "--epochs", "1",
                "--out", str(tmp_path / "runs")], cwd=tmp_path, env=_venv_env())
    assert out.returncode != 0
    assert out.stdout == ""
    [line] = out.stderr.strip().splitlines()
    assert "matplotlib" in line and line.endswith('pip install "lnjax[plots]"'), line
    assert not (tmp_path / "runs").exists()
