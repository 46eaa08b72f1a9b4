"""Accuracy far from zero: layer norm in f32 against a float64 reference.

For rows of unit variance whose mean sits at a growing offset, each
implementation's largest absolute output error against float64 NumPy on the
same f32 inputs::

    python -m benchmarks.accuracy [--rows 64] [--width 1024] [--out DIR]

Compared: lnjax, flax.linen.LayerNorm (its default ``E[x^2] - E[x]^2`` and
its two-pass ``use_fast_variance=False``) and, when installed,
torch.nn.functional.layer_norm. Prints the table, and with ``--out DIR`` writes
``accuracy.json`` and ``accuracy.md`` there (:mod:`benchmarks.report`).
"""

from __future__ import annotations

import flax.linen as fnn
import jax
import numpy as np

import lnjax
from benchmarks import report

OFFSETS = (0.0, 1e2, 1e3, 1e4, 1e5, 1e6)


def reference(x: np.ndarray, epsilon: float = 1e-6) -> np.ndarray:
    x = x.astype(np.float64)
    mean = x.mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + epsilon)


def implementations() -> dict:
    """name -> f(x: f32 ndarray) -> ndarray, all with epsilon 1e-6, no affine."""
    def flax_ln(fast):
        layer = fnn.LayerNorm(use_bias=False, use_scale=False, use_fast_variance=fast)
        return jax.jit(lambda x: layer.apply({}, x))

    impls = {
        "lnjax": jax.jit(lambda x: lnjax.layer_norm(x, epsilon=1e-6)),
        "flax (default)": flax_ln(True),
        "flax (two-pass)": flax_ln(False),
    }
    try:
        import torch

        def torch_ln(x):
            t = torch.from_numpy(np.asarray(x))
            return torch.nn.functional.layer_norm(t, t.shape[-1:], eps=1e-6).numpy()
        impls[f"torch {torch.__version__}"] = torch_ln
    except ImportError:
        pass
    return impls


def measure(rows: int = 64, width: int = 1024, seed: int = 0) -> dict:
    """``{offset: {implementation: max abs error}}``."""
    impls = implementations()
    rng = np.random.default_rng(seed)
    out = {}
    for offset in OFFSETS:
        x = (offset + rng.standard_normal((rows, width))).astype(np.float32)
        expect = reference(x)
        out[offset] = {name: float(np.max(np.abs(np.asarray(f(x), np.float64) - expect)))
                       for name, f in impls.items()}
    return out


def markdown(results: dict) -> str:
    """One row per offset, one column per implementation: the largest |error|."""
    names = list(next(iter(results.values())))
    return report.table(["offset / std", *names],
                        [[f"{offset:g}", *(f"{errs[n]:.1e}" for n in names)]
                         for offset, errs in results.items()])


def main(argv: list[str] | None = None) -> dict:
    parser = report.parser(__doc__, "accuracy")
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--width", type=int, default=1024)
    args = parser.parse_args(argv)
    results = measure(args.rows, args.width)
    report.publish(args.out, "accuracy", {str(k): v for k, v in results.items()},
                   markdown(results), heading=f"Largest |error| against float64, f32 rows of "
                   f"{args.width} values, std 1:")
    return results


if __name__ == "__main__":
    main()
