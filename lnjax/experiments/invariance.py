"""Table 1 of the paper, computed: what leaves the normalized summed inputs unchanged.

For a layer with weights ``W`` (units x inputs) and a data set ``X`` (cases x
inputs), the summed inputs are ``a = X W^T``. Each method normalizes them its
own way: batch norm per unit over the cases, weight norm by each unit's weight
norm, layer norm per case over the units. Each of the paper's six
transformations is applied and the largest change of the normalized summed
inputs is measured::

    python -m lnjax.experiments.invariance

Reference: Ba, Kiros & Hinton (2016), Table 1 and section 5.1.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

import lnjax

METHODS = ("batch norm", "weight norm", "layer norm")
TRANSFORMS = (
    "weight matrix re-scaling",
    "weight matrix re-centering",
    "weight vector re-scaling",
    "dataset re-scaling",
    "dataset re-centering",
    "single training case re-scaling",
)
# The paper's Table 1: True where the method is invariant to the transformation.
PAPER_TABLE1 = {
    "batch norm": (True, False, True, True, True, False),
    "weight norm": (True, False, True, False, False, False),
    "layer norm": (True, True, False, True, False, True),
}


def normalized_summed_inputs(method: str, w: jax.Array, x: jax.Array) -> jax.Array:
    """The summed inputs ``x @ w.T`` normalized by ``method`` (no gain, no bias, epsilon 0)."""
    if method == "batch norm":
        return lnjax.batch_norm(x @ w.T, reduction_axes=0, epsilon=0.0)[0]
    if method == "weight norm":
        return x @ lnjax.weight_norm(w, jnp.ones(w.shape[0]), axis=0, epsilon=0.0).T
    if method == "layer norm":
        return lnjax.layer_norm(x @ w.T, axis=-1, epsilon=0.0)
    raise ValueError(f"normalized_summed_inputs: unknown method {method!r}; "
                     f"choose one of {METHODS}.")


def transformations(key: jax.Array, w: jax.Array, x: jax.Array) -> dict[str, tuple]:
    """The paper's six transformations of ``(w, x)``, with arbitrary constants."""
    k1, k2 = jax.random.split(key)
    gamma_w = jax.random.normal(k1, (w.shape[1],))  # added to every unit's weights
    gamma_x = 3.0 * jax.random.normal(k2, (x.shape[1],))  # added to every case
    return {
        "weight matrix re-scaling": (3.7 * w, x),
        "weight matrix re-centering": (w + gamma_w[None, :], x),
        "weight vector re-scaling": (w.at[0].multiply(5.0), x),
        "dataset re-scaling": (w, 2.5 * x),
        "dataset re-centering": (w, x + gamma_x[None, :]),
        "single training case re-scaling": (w, x.at[0].multiply(3.0)),
    }


def invariance_table(seed: int = 0, *, cases: int = 64, inputs: int = 32,
                     units: int = 16) -> dict[str, dict[str, float]]:
    """Largest absolute change of each method's normalized summed inputs.

    Args:
      seed: random seed for the weights, data and transformation constants.
      cases, inputs, units: sizes of the data set and the layer.

    Returns:
      ``{method: {transformation: max |change|}}``; about 1e-6 (f32 rounding)
      where the method is invariant, of order 0.1 to 1 where it is not.
    """
    kw, kx, kt = jax.random.split(jax.random.key(seed), 3)
    w = jax.random.normal(kw, (units, inputs)) / jnp.sqrt(inputs)
    x = jax.random.normal(kx, (cases, inputs)) + 0.5
    table = {}
    for method in METHODS:
        base = normalized_summed_inputs(method, w, x)
        table[method] = {
            name: float(jnp.max(jnp.abs(normalized_summed_inputs(method, w2, x2) - base)))
            for name, (w2, x2) in transformations(kt, w, x).items()
        }
    return table


def format_table(table: dict[str, dict[str, float]], *, threshold: float = 1e-4) -> str:
    """A text table: 'invariant' or 'no', the measured change, and agreement with the paper."""
    lines = ["| method | " + " | ".join(TRANSFORMS) + " |",
             "|---|" + "---|" * len(TRANSFORMS)]
    agree = 0
    for method in METHODS:
        cells = []
        for name, paper in zip(TRANSFORMS, PAPER_TABLE1[method]):
            change = table[method][name]
            measured = change < threshold
            agree += measured == paper
            mark = "" if measured == paper else " (paper disagrees!)"
            cells.append(f"{'invariant' if measured else 'no'} ({change:.1e}){mark}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    total = len(METHODS) * len(TRANSFORMS)
    lines.append(f"\n{agree} of {total} cells agree with Table 1 of the paper "
                 f"(invariant means a change below {threshold:g}).")
    return "\n".join(lines)


DESCRIPTION = ("Table 1 of the paper, computed: what leaves the normalized summed inputs "
               "unchanged.")


def main(argv: list[str] | None = None) -> None:
    """``python -m lnjax.experiments.invariance [--seed N]``: prints Table 1, measured."""
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the weights, data and transformation constants")
    args = parser.parse_args(argv)
    print("Table 1 of Ba, Kiros & Hinton (2016), measured with lnjax "
          f"(jax {jax.__version__}, {jax.devices()[0].platform}); "
          "cells: largest change of the normalized summed inputs.\n")
    print(format_table(invariance_table(args.seed)))


if __name__ == "__main__":
    main()
