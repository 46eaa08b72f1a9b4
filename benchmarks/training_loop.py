"""The epoch as one ``lax.scan`` against a Python loop over a jitted step.

The pi-MNIST network (784-1000-1000-10, layer norm, Adam) at batch size 4,
where the per-step dispatch of a Python loop weighs most::

    python -m benchmarks.training_loop [--quick] [--out DIR]

Both variants run the same :func:`lnjax.training.train_step` on the same
device-resident batches; the Python loop donates the state each step, as a
careful user would. Both are timed with the benchmarks' one harness
(:mod:`benchmarks.harness`: interleaved rounds, medians). Reported: steps per
second of each and the time ratio ``python loop / epoch scan`` (above 1: the
scan is faster); printed as a table, and with ``--out DIR`` written to
``training_loop.json`` and ``training_loop.md`` (:mod:`benchmarks.report`).
"""

from __future__ import annotations

from benchmarks import report


def measure(*, quick: bool = False, batch_size: int = 4, method: str = "layernorm",
            steps: int | None = None, repeats: int | None = None) -> dict:
    """Steps per second of the epoch scan and of the Python loop, and their time ratio.

    ``steps`` (per epoch) and ``repeats`` (timed rounds) default to 200 and 3
    with ``quick``, 1000 and 5 without.
    """
    import jax
    import numpy as np
    import optax

    from benchmarks import harness
    from lnjax import training
    from lnjax.experiments.pi_mnist import MLP

    hidden = (256, 256) if quick else (1000, 1000)
    steps = steps or (200 if quick else 1000)
    repeats = repeats or (3 if quick else 5)
    rng = np.random.default_rng(0)
    xb = jax.device_put(rng.random((steps, batch_size, 784), dtype=np.float32))
    yb = jax.device_put(rng.integers(0, 10, (steps, batch_size)).astype(np.int32))
    model = MLP(method, hidden=hidden)

    def fresh():
        return training.create_train_state(model, optax.adam(1e-3), xb[0], seed=0,
                                           takes_mask=True)

    step = jax.jit(training.train_step, donate_argnums=0)

    def scan_epoch():
        return harness.block(training.train_epoch(fresh(), xb, yb)[1])

    # The loop's batches are sliced before timing, so it is charged for dispatch only.
    xs = [xb[i] for i in range(steps)]
    ys = [yb[i] for i in range(steps)]

    def python_loop_presliced():
        state = fresh()
        for x, y in zip(xs, ys):
            state, metrics = step(state, {"x": x, "y": y})
        return harness.block(metrics)

    timed = harness.measure({"epoch scan": scan_epoch, "python loop": python_loop_presliced},
                            [harness.TimeRatio("python loop", "epoch scan")], rounds=repeats)
    sps = {k: harness.per_second(steps, ms) for k, ms in timed["median_ms"].items()}
    return {"batch_size": batch_size, "hidden": list(hidden), "steps": steps,
            "scan_steps_per_second": sps["epoch scan"],
            "loop_steps_per_second": sps["python loop"], "ratios": timed["ratios"]}


def markdown(row: dict) -> str:
    """One row: steps per second of each and their time ratio."""
    (ratio,) = row["ratios"]
    return report.table(
        [f"training loop, batch size {row['batch_size']}, hidden "
         f"{'-'.join(map(str, row['hidden']))}", "epoch scan steps/s", "Python loop steps/s",
         ratio["label"]],
        [["pi-MNIST, layer norm", f"{row['scan_steps_per_second']:.0f}",
          f"{row['loop_steps_per_second']:.0f}", f"{ratio['value']:.2f}"]], align="lrrr")


def main(argv: list[str] | None = None) -> dict:
    return report.quick_main(__doc__, "training_loop", measure, markdown, argv)


if __name__ == "__main__":
    main()
