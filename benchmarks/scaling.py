"""Data-parallel scaling: steps per second of the pi-MNIST step on 1, 2, 4, 8 devices.

The pi-MNIST network (784-1000-1000-10, Adam) trained by
:func:`lnjax.parallel.train_epoch` with a global batch of 128 split over a
mesh of 1, 2, 4 and 8 devices, for layer norm and synchronized batch norm::

    python -m benchmarks.scaling [--quick] [--out DIR]

On a CPU the devices are forced host devices sharing the same cores
(``--xla_force_host_platform_device_count``), so the figures show the cost of
the SPMD machinery, not a speed-up; on a machine with several accelerators
they show the scaling. Must run in a fresh process: the flag is set before
jax is imported. Times every (method, devices) with the benchmarks' one
harness (:mod:`benchmarks.harness`: interleaved rounds, medians); prints the
table, and with ``--out DIR`` writes ``scaling.json`` and ``scaling.md``
(:mod:`benchmarks.report`).
"""

from __future__ import annotations

import os

from benchmarks import report

MAX_DEVICES = 8


def _force_devices(n: int) -> None:
    # Unless XLA_FLAGS already names a count; no effect once JAX has started its backends.
    from lnjax import parallel

    if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = parallel.host_device_flags(n)


def measure(*, quick: bool = False, methods=("layernorm", "batchnorm"),
            device_counts=(1, 2, 4, 8), batch_size: int = 128) -> list[dict]:
    """Median steps per second over repeated epochs for each (method, devices)."""
    _force_devices(MAX_DEVICES)
    import jax  # after _force_devices
    import numpy as np

    from benchmarks import harness

    hidden = (256, 256) if quick else (1000, 1000)
    steps = 10 if quick else 50
    repeats = 3 if quick else 5
    rng = np.random.default_rng(0)
    xb = rng.random((steps, batch_size, 784), dtype=np.float32)
    yb = rng.integers(0, 10, (steps, batch_size)).astype(np.int32)
    runs = {(method, n): _epoch(method, n, hidden, xb, yb)
            for method in methods for n in device_counts if n <= jax.device_count()}
    median_ms = harness.measure({f"{m} x{n}": f for (m, n), f in runs.items()},
                                rounds=repeats)["median_ms"]
    return [{"method": m, "devices": n, "batch_size": batch_size, "hidden": list(hidden),
             "steps_per_second": harness.per_second(steps, median_ms[f"{m} x{n}"]),
             "device_kind": jax.devices()[0].device_kind} for m, n in runs]


def _epoch(method: str, n: int, hidden, xb, yb):
    """A no-argument function: one more epoch of the pi-MNIST network on ``n`` devices."""
    import optax

    from benchmarks import harness
    from lnjax import parallel, training
    from lnjax.experiments.pi_mnist import MLP

    mesh = parallel.make_mesh(n)
    model = MLP(method, hidden=hidden, axis_name=parallel.AXIS if n > 1 else None)
    state = training.create_train_state(model, optax.adam(1e-3), xb[0], seed=0,
                                        takes_mask=True)

    def epoch():
        nonlocal state
        state, metrics = parallel.train_epoch(state, xb, yb, mesh)
        return harness.block(metrics)
    return epoch


def markdown(rows: list[dict]) -> str:
    """A table: one row per method, one column per device count."""
    counts = sorted({r["devices"] for r in rows})
    header = [f"pi-MNIST step, global batch {rows[0]['batch_size'] if rows else ''}",
              *(f"{n} device{'s' if n > 1 else ''}" for n in counts)]
    body = []
    for method in dict.fromkeys(r["method"] for r in rows):
        by = {r["devices"]: r["steps_per_second"] for r in rows if r["method"] == method}
        body.append([f"{method} (steps/s)",
                     *(f"{by[n]:.1f}" if n in by else "-" for n in counts)])
    return report.table(header, body, align="l" + "r" * len(counts))


def main(argv: list[str] | None = None) -> list[dict]:
    return report.quick_main(__doc__, "scaling", measure, markdown, argv)


if __name__ == "__main__":
    main()
