"""The README's Python examples run as written: each block in this process, and the
multi-host block (it calls ``jax.distributed.initialize``) as two processes on this machine."""

import os
import pathlib
import re
import socket
import subprocess
import sys

import pytest

from lnjax import parallel

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
ALL_BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
MULTIHOST = [b for b in ALL_BLOCKS if "jax.distributed.initialize" in b]
BLOCKS = [b for b in ALL_BLOCKS if b not in MULTIHOST]


def test_readme_has_examples():
    assert len(BLOCKS) >= 2
    assert len(MULTIHOST) == 1


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index):
    exec(compile(BLOCKS[index], f"README.md python block {index}", "exec"), {})


def test_multihost_example_runs_as_two_processes(tmp_path):
    """The "Several hosts" block, started as ``python train.py 0`` and ``python train.py 1``
    with the coordinator on localhost and the shared folder in tmp_path."""
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        port = sock.getsockname()[1]
    script = MULTIHOST[0]
    assert '"host0:1234"' in script and '"/shared/run1"' in script
    script = script.replace('"host0:1234"', f'"localhost:{port}"').replace(
        '"/shared/run1"', repr(str(tmp_path / "run1")))
    (tmp_path / "train.py").write_text(script)
    env = {**os.environ, "XLA_FLAGS": parallel.host_device_flags(2),
           "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "train.py", str(i)], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    losses = [out.strip().splitlines()[-1] for out in outs]
    assert losses[0].startswith("0 [") and losses[1].startswith("1 [")
    assert losses[0][2:] == losses[1][2:]  # one run: both hosts record the same history
    assert (tmp_path / "run1").is_dir()
