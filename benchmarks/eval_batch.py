"""Evaluation batch size: the experiments' networks evaluated in batches of 200 and of 1000.

The experiments evaluate their validation and test splits in batches of
``--eval-batch-size`` (default
:data:`lnjax.experiments.settings.EVAL_BATCH_SIZE`); this measures what that
choice is worth against batches of 1000 (:func:`lnjax.steps.evaluate`'s
default) on the machine it runs on::

    python -m benchmarks.eval_batch [--quick] [--out DIR]

Each network (the transformer, the ConvNet with layer norm, the row LSTM with
layer norm, the pi-MNIST MLP with layer norm, at the experiments' default
sizes; smaller with ``--quick``) evaluates the same device-resident examples
at both batch sizes, timed with the benchmarks' one harness
(:mod:`benchmarks.harness`: interleaved rounds, medians). Reported: examples
per second at each batch size and the time ratio ``batch 1000 / batch 200``
(above 1: the smaller batches are faster); printed as a table, and with
``--out DIR`` written to ``eval_batch.json`` and ``eval_batch.md``
(:mod:`benchmarks.report`).
"""

from __future__ import annotations

from typing import Any

from benchmarks import report

SMALL, LARGE = 200, 1000


def networks(quick: bool) -> dict[str, tuple[Any, bool]]:
    """``{name: (flax module, takes_mask)}``: the experiments' networks (smaller with ``quick``)."""
    from lnjax.experiments import convnet, pi_mnist, seq_mnist, transformer

    t = transformer.TransformerSettings()
    c = convnet.ConvNetSettings()
    return {
        "transformer, post-LN": (transformer.PatchTransformer(
            "post_ln", layers=1 if quick else t.layers, width=t.width, heads=t.heads,
            mlp_dim=t.mlp_dim), False),
        "ConvNet, layer norm": (convnet.ConvNet(method="layernorm", channels=c.channels,
                                                axis_name=None, momentum=c.momentum), True),
        "row LSTM, layer norm": (seq_mnist.RowClassifier(
            method="ln_lstm", hidden=seq_mnist.SeqMnistSettings().hidden), False),
        "pi-MNIST MLP, layer norm": (pi_mnist.MLP(
            method="layernorm", hidden=pi_mnist.PiMnistSettings().hidden), False),
    }


def measure(*, quick: bool = False, examples: int | None = None,
            repeats: int | None = None) -> list[dict]:
    """Examples per second of each network at batch sizes 200 and 1000, and their time ratio.

    ``examples`` (evaluated per call) and ``repeats`` (timed rounds) default to
    1000 and 3 with ``quick``, 4000 and 5 without.
    """
    import jax
    import numpy as np
    import optax

    from benchmarks import harness
    from lnjax import steps

    examples = examples or (1000 if quick else 4000)
    repeats = repeats or (3 if quick else 5)
    rng = np.random.default_rng(0)
    x = jax.device_put(rng.random((examples, 28, 28), dtype=np.float32))
    y = jax.device_put(rng.integers(0, 10, examples).astype(np.int32))
    rows = []
    for name, (model, takes_mask) in networks(quick).items():
        state = steps.create_train_state(model, optax.adam(1e-3), x[:1], seed=0,
                                         takes_mask=takes_mask)

        def at(bs: int, state: Any = state) -> Any:
            return lambda: harness.block(steps.evaluation_sums(state, x, y, batch_size=bs))

        timed = harness.measure({f"batch {LARGE}": at(LARGE), f"batch {SMALL}": at(SMALL)},
                                [harness.TimeRatio(f"batch {LARGE}", f"batch {SMALL}")],
                                rounds=repeats)
        rows.append({"network": name, "examples": examples,
                     "per_second": {k: harness.per_second(examples, ms)
                                    for k, ms in timed["median_ms"].items()},
                     "ratios": timed["ratios"]})
    return rows


def markdown(rows: list[dict]) -> str:
    """A row per network: examples per second at each batch size and their time ratio."""
    header = ["network", f"examples/s, batch {SMALL}", f"examples/s, batch {LARGE}",
              f"batch {LARGE} / batch {SMALL}"]
    body = [[r["network"], f"{r['per_second'][f'batch {SMALL}']:.0f}",
             f"{r['per_second'][f'batch {LARGE}']:.0f}", f"{r['ratios'][0]['value']:.2f}"]
            for r in rows]
    return report.table(header, body, align="lrrr")


def main(argv: list[str] | None = None) -> list[dict]:
    return report.quick_main(__doc__, "eval_batch", measure, markdown, argv)


if __name__ == "__main__":
    main()
