"""The examples of the README, of the docs' landing page and of every guide in docs/guides run
as written: each ```python block on its own in this process, and the multi-host block (it calls
``jax.distributed.initialize``) as two processes on this machine."""

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
GUIDES = sorted((ROOT / "docs" / "guides").glob("*.md"))
DOCUMENTS = [README, ROOT / "docs" / "index.md", *GUIDES]


def _blocks(path):
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), flags=re.S | re.M)


ALL_BLOCKS = [(f"{path.relative_to(ROOT)}:{i}", block)
              for path in DOCUMENTS for i, block in enumerate(_blocks(path))]
MULTIHOST = [(name, b) for name, b in ALL_BLOCKS if "jax.distributed.initialize" in b]
BLOCKS = [(name, b) for name, b in ALL_BLOCKS if "jax.distributed.initialize" not in b]


def test_readme_has_examples():
    """The README shows the Linen, NNX, functional and recurrent examples; the guides more; and
    the one multi-host example is in the scaling-out guide."""
    readme = [name for name, _ in BLOCKS if name.startswith("README.md:")]
    assert len(readme) >= 4
    assert len(GUIDES) >= 6
    for guide in GUIDES:  # each guide that shows code shows it as a block that runs
        if "```python" in guide.read_text():
            assert _blocks(guide), guide.name
    assert len(BLOCKS) >= 15
    assert [name.split(":")[0] for name, _ in MULTIHOST] == ["docs/guides/scaling-out.md"]


@pytest.mark.parametrize("name", [name for name, _ in BLOCKS])
def test_example_runs(name):
    block = dict(BLOCKS)[name]
    exec(compile(block, f"{name} (python block)", "exec"), {"__name__": "__example__"})


def test_multihost_example_runs_as_two_processes(tmp_path):
    """The "Several hosts" block, started as ``python train.py 0`` and ``python train.py 1``
    with the coordinator on localhost and the shared folder in tmp_path."""
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        port = sock.getsockname()[1]
    [(_, script)] = MULTIHOST
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
