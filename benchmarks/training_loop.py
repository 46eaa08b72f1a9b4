"""The epoch as one ``lax.scan`` against a Python loop over a jitted step.

The pi-MNIST network (784-1000-1000-10, layer norm, Adam) at batch size 4,
where the per-step dispatch of a Python loop weighs most::

    python -m benchmarks.training_loop [--quick]

Both variants run the same :func:`lnjax.training.train_step` on the same
device-resident batches; the Python loop donates the state each step, as a
careful user would. Reported: steps per second of each (median over repeats,
interleaved) and their ratio.
"""

from __future__ import annotations

import argparse
import time


def measure(*, quick: bool = False, batch_size: int = 4, method: str = "layernorm") -> dict:
    """Steps per second of the epoch scan and of the Python loop, and the ratio."""
    import jax
    import numpy as np
    import optax

    from lnjax import training
    from lnjax.experiments.pi_mnist import MLP

    hidden = (256, 256) if quick else (1000, 1000)
    steps = 200 if quick else 1000
    repeats = 3 if quick else 5
    rng = np.random.default_rng(0)
    xb = jax.device_put(rng.random((steps, batch_size, 784), dtype=np.float32))
    yb = jax.device_put(rng.integers(0, 10, (steps, batch_size)).astype(np.int32))
    model = MLP(method, hidden=hidden)

    def fresh():
        return training.create_train_state(model, optax.adam(1e-3), xb[0], seed=0)

    step = jax.jit(training.train_step, donate_argnums=0)

    def scan_epoch():
        state, metrics = training.train_epoch(fresh(), xb, yb)
        jax.block_until_ready(metrics)

    # The loop's batches are sliced before timing, so it is charged for dispatch only.
    xs = [xb[i] for i in range(steps)]
    ys = [yb[i] for i in range(steps)]

    def python_loop_presliced():
        state = fresh()
        for x, y in zip(xs, ys):
            state, metrics = step(state, {"x": x, "y": y})
        jax.block_until_ready(metrics)

    variants = {"epoch scan": scan_epoch, "python loop": python_loop_presliced}
    times = {k: [] for k in variants}
    for fn in variants.values():
        fn()  # compile
    for _ in range(repeats):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    sps = {k: steps / float(np.median(v)) for k, v in times.items()}
    return {"batch_size": batch_size, "hidden": list(hidden), "steps": steps,
            "scan_steps_per_second": sps["epoch scan"],
            "loop_steps_per_second": sps["python loop"],
            "ratio": sps["epoch scan"] / sps["python loop"]}


def markdown(row: dict) -> str:
    return ("| training loop, batch size {batch_size}, hidden {h} | epoch scan steps/s | "
            "Python loop steps/s | scan / loop |\n|---|---:|---:|---:|\n"
            "| pi-MNIST, layer norm | {scan_steps_per_second:.0f} | "
            "{loop_steps_per_second:.0f} | {ratio:.2f} |").format(
                h="-".join(map(str, row["hidden"])), **row)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    row = measure(quick=p.parse_args(argv).quick)
    print(markdown(row))
    return row


if __name__ == "__main__":
    main()
