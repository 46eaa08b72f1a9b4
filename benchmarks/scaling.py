"""Data-parallel scaling: steps per second of the pi-MNIST step on 1, 2, 4, 8 devices.

The pi-MNIST network (784-1000-1000-10, Adam) trained by
:func:`lnjax.parallel.train_epoch` with a global batch of 128 split over a
mesh of 1, 2, 4 and 8 devices, for layer norm and synchronized batch norm::

    python -m benchmarks.scaling [--quick] [--out DIR]

On a CPU the devices are forced host devices sharing the same cores
(``--xla_force_host_platform_device_count``), so the figures show the cost of
the SPMD machinery, not a speed-up; on a machine with several accelerators
they show the scaling. Must run in a fresh process: the flag is set before
jax is imported.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

MAX_DEVICES = 8


def _force_devices(n: int) -> None:
    flag = f"--xla_force_host_platform_device_count={n}"
    if "jax" in sys.modules:
        return  # too late; use whatever devices exist
    if flag not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()


def measure(*, quick: bool = False, methods=("layernorm", "batchnorm"),
            device_counts=(1, 2, 4, 8), batch_size: int = 128) -> list[dict]:
    """Median steps per second over repeated epochs for each (method, devices)."""
    _force_devices(MAX_DEVICES)
    import jax
    import numpy as np
    import optax

    from lnjax import parallel, training
    from lnjax.experiments.pi_mnist import MLP

    hidden = (256, 256) if quick else (1000, 1000)
    steps = 10 if quick else 50
    repeats = 3 if quick else 5
    rng = np.random.default_rng(0)
    xb = rng.random((steps, batch_size, 784), dtype=np.float32)
    yb = rng.integers(0, 10, (steps, batch_size)).astype(np.int32)
    rows = []
    for method in methods:
        for n in device_counts:
            if n > jax.device_count():
                continue
            mesh = parallel.make_mesh(n)
            model = MLP(method, hidden=hidden, axis_name=parallel.AXIS if n > 1 else None)
            state = training.create_train_state(model, optax.adam(1e-3), xb[0], seed=0)
            times = []
            for r in range(repeats + 1):  # the first run compiles
                t0 = time.perf_counter()
                state, metrics = parallel.train_epoch(state, xb, yb, mesh)
                jax.block_until_ready(metrics)
                if r:
                    times.append(time.perf_counter() - t0)
            sps = steps / float(np.median(times))
            rows.append({"method": method, "devices": n, "batch_size": batch_size,
                         "hidden": list(hidden), "steps_per_second": sps,
                         "device_kind": jax.devices()[0].device_kind})
    return rows


def markdown(rows: list[dict]) -> str:
    """A table: one row per method, one column per device count."""
    counts = sorted({r["devices"] for r in rows})
    lines = ["| pi-MNIST step, global batch "
             f"{rows[0]['batch_size'] if rows else ''} | "
             + " | ".join(f"{n} device{'s' if n > 1 else ''}" for n in counts) + " |",
             "|---|" + "---:|" * len(counts)]
    for method in dict.fromkeys(r["method"] for r in rows):
        by = {r["devices"]: r["steps_per_second"] for r in rows if r["method"] == method}
        lines.append(f"| {method} (steps/s) | "
                     + " | ".join(f"{by[n]:.1f}" if n in by else "-" for n in counts) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small network, few steps")
    p.add_argument("--out", default=None, help="write scaling.json and scaling.md here")
    args = p.parse_args(argv)
    rows = measure(quick=args.quick)
    table = markdown(rows)
    print(table)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "scaling.json"), "w") as f:
            json.dump(rows, f, indent=1)
        with open(os.path.join(args.out, "scaling.md"), "w") as f:
            f.write(table + "\n")
    return rows


if __name__ == "__main__":
    main()
