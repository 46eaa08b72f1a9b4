"""What a plain ``pip install lnjax`` (no extras) gives: run by tests/test_packaging.py
with the Python of a fresh virtualenv that holds lnjax's wheel and its required
dependencies only.

``python plain_install_script.py IDX_FOLDER WORK_FOLDER`` imports every layer of the
package, trains a small layer-normalized network with ``lnjax.training.fit`` on the
MNIST-format IDX files in IDX_FOLDER (a progress bar on stderr, checkpoints in
WORK_FOLDER), resumes it from its checkpoints, calls the features that need an extra,
and prints what it saw as one JSON object on stdout.
"""

import importlib.util
import json
import sys
from pathlib import Path

import flax.linen as nn
import optax

import lnjax
import lnjax.checkpoint
import lnjax.data
import lnjax.linen
import lnjax.nnx
import lnjax.recurrent
import lnjax.training
from lnjax.experiments import plots

OPTIONAL = ("matplotlib", "tensorflow_datasets", "tensorboardX", "torch")


class Net(nn.Module):
    """784 -> 32 (layer norm, ReLU) -> 10."""

    @nn.compact
    def __call__(self, x, *, train):
        x = nn.Dense(32)(x.reshape((x.shape[0], -1)))
        return nn.Dense(10)(nn.relu(lnjax.linen.LayerNorm()(x)))


def main(idx_folder: Path, work: Path) -> dict:
    ds = lnjax.data.load("mnist", "test", data_dir=idx_folder, source="idx")
    kw = dict(epochs=2, batch_size=32, seed=0, checkpoint_dir=work / "checkpoints")

    def new_state():
        return lnjax.training.create_train_state(Net(), optax.adam(1e-2), ds.images[:1], seed=0)

    _, history = lnjax.training.fit(new_state(), (ds.images, ds.labels), progress=True,
                                    desc="plain install", **kw)
    # A second call finds both epochs in the checkpoints and trains nothing.
    _, resumed = lnjax.training.fit(new_state(), (ds.images, ds.labels), progress=False, **kw)

    errors = {}
    def tensorboard():
        lnjax.training.fit(new_state(), (ds.images, ds.labels), progress=False, epochs=1,
                           batch_size=32, seed=0, tensorboard_dir=work / "tensorboard")

    for name, feature in (("pyplot", plots.pyplot),
                          ("prepare", lambda: lnjax.data.prepare("mnist")),
                          ("tensorboard", tensorboard)):
        try:
            feature()
            errors[name] = None
        except ImportError as e:  # lnjax's MissingExtraError is an ImportError
            errors[name] = [type(e).__name__, str(e)]
    return {
        "lnjax": lnjax.__file__,
        "version": lnjax.__version__,
        "importable": {m: importlib.util.find_spec(m) is not None for m in OPTIONAL},
        "examples": len(ds.labels),
        "identity": ds.identity,
        "train_loss": history["train_loss"],
        "steps": history["steps"],
        "resumed_loss": resumed["train_loss"],
        "checkpoints": sorted(p.name for p in (work / "checkpoints").iterdir()),
        "errors": errors,
        "tensorboard_dir_made": (work / "tensorboard").exists(),
    }


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve())))
