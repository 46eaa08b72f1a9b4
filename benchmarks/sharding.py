"""Sharded jit: a Transformer block's training step with lnjax's modules against flax's.

One pre-LN Transformer block (layer norm, multi-head attention, layer norm,
GELU MLP; residuals around both), trained by an Adam step under ``jax.jit`` on
the 8 devices of a mesh, in four layouts::

    python -m benchmarks.sharding [--quick] [--out DIR]

* ``data``: the batch split over the mesh, the parameters replicated;
* ``sequence``: the sequence split over the mesh;
* ``tensor``: the attention heads and the MLP's hidden units split over the
  mesh (Megatron's column- then row-parallel matmuls; the residual stream and
  its layer norms stay whole);
* ``fsdp``: the batch and every parameter split over the mesh (each parameter
  along its first axis that the mesh divides).

For each layout and each module set (``lnjax.linen`` against ``flax.linen``,
the same block otherwise) it reports the collectives of the compiled step
(count and bytes per device, read from the compiled HLO: exact, no timing
involved) and the step time of lnjax's over flax's (interleaved rounds,
medians: :mod:`benchmarks.harness`). lnjax's modules run their defaults
(exact statistics), flax's theirs. Targets (:data:`BYTES_TARGET`,
:data:`TIME_TARGET`, printed with the table): lnjax's collective bytes and step
time as fractions of flax's, at most.

On a CPU the devices are forced host devices sharing the same cores
(``--xla_force_host_platform_device_count``; the script sets it before jax is
imported), so the times show the cost of the partitioned program, not a
speed-up. :class:`Block`, :class:`ConvBlock`, :func:`param_specs` and
:func:`train_step` are what the tests train under sharding too.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from benchmarks import report

DEVICES = 8
LAYOUTS = ("data", "sequence", "tensor", "fsdp")
BYTES_TARGET = 1.0  # lnjax's collective bytes / flax's, at most
TIME_TARGET = 1.1  # lnjax's step time / flax's, at most


def force_devices(n: int = DEVICES) -> None:
    """Asks XLA for ``n`` host devices, unless ``XLA_FLAGS`` already names a count (no
    effect once JAX has started its backends)."""
    from lnjax import parallel

    if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = parallel.host_device_flags(n)


def _modules():
    import flax.linen as nn

    class Block(nn.Module):
        """A pre-LN Transformer block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``.

        ``norm`` is the normalization's module class (``lnjax.linen.LayerNorm``,
        ``flax.linen.LayerNorm``, ...), built with no arguments.
        """

        norm: Any
        heads: int = 8
        mlp_dim: int = 128

        @nn.compact
        def __call__(self, x):
            h = self.norm(name="norm_attention")(x)
            x = x + nn.MultiHeadDotProductAttention(
                num_heads=self.heads, deterministic=True, name="attention")(h)
            h = self.norm(name="norm_mlp")(x)
            h = nn.gelu(nn.Dense(self.mlp_dim, name="hidden")(h))
            return x + nn.Dense(x.shape[-1], name="output")(h)

    class ConvBlock(nn.Module):
        """``x + relu(norm(conv3x3(x)))`` with ``norm`` a BatchNorm module class (training)."""

        norm: Any

        @nn.compact
        def __call__(self, x):
            h = nn.Conv(x.shape[-1], (3, 3), padding="SAME", use_bias=False, name="conv")(x)
            h = self.norm(use_running_average=False, name="norm")(h)
            return x + nn.relu(h)

    return Block, ConvBlock


def __getattr__(name: str) -> Any:
    # The blocks are defined on first use, so that importing this module leaves
    # jax unimported (``force_devices`` must run before it).
    if name in ("Block", "ConvBlock"):
        return dict(zip(("Block", "ConvBlock"), _modules()))[name]
    raise AttributeError(name)


def param_specs(params: Any, layout: str, axes: dict[str, str]) -> Any:
    """A ``PartitionSpec`` per parameter of a :class:`Block` or :class:`ConvBlock`.

    Args:
      params: the parameter tree (or its shapes).
      layout: ``"data"``/``"sequence"`` (all replicated), ``"tensor"`` (the
        attention's heads, the MLP's hidden units and the convolution's output
        channels split: column- then row-parallel) or ``"fsdp"`` (each parameter
        along its first axis the mesh axis divides).
      axes: the mesh axis each role uses: ``{"model": ..., "data": ...}``.

    Returns:
      A tree of ``PartitionSpec`` shaped like ``params``.
    """
    import jax
    from jax.sharding import PartitionSpec as P

    def spec(path, leaf):
        names = [str(getattr(k, "key", k)) for k in path]
        kind = names[-1]
        if layout == "tensor":
            m = axes["model"]
            if "attention" in names:  # q, k, v: (width, heads, head_dim); out: (heads, hd, width)
                if "out" in names:
                    return P(m) if kind == "kernel" else P()
                return P(None, m) if kind == "kernel" else P(m)
            if "hidden" in names:  # column-parallel
                return P(None, m) if kind == "kernel" else P(m)
            if "output" in names:  # row-parallel
                return P(m) if kind == "kernel" else P()
            if "conv" in names:  # the convolution's output channels, and its batch norm's
                return P(None, None, None, m)
            if names[0] == "norm" and kind in ("scale", "bias", "mean", "var"):
                return P(m)
            return P()  # the residual stream's layer norms: whole
        if layout == "fsdp":
            size = axes.get("data_size", DEVICES)
            for i, n in enumerate(leaf.shape):
                if n % size == 0:
                    return P(*([None] * i + [axes["data"]]))
        return P()

    return jax.tree_util.tree_map_with_path(spec, params)


def input_spec(layout: str, axes: dict[str, str], ndim: int = 3) -> Any:
    """The ``PartitionSpec`` of the block's input ``(batch, sequence, width)`` in ``layout``."""
    from jax.sharding import PartitionSpec as P

    if layout in ("data", "fsdp"):
        return P(axes["data"])
    if layout == "sequence":
        return P(None, axes["seq"])
    return P()


def train_step(model: Any, tx: Any, *, mutable: bool = False) -> Callable:
    """``step(params, opt_state, x, y) -> (params, opt_state, loss)``: one step of the
    optimizer ``tx`` on the mean squared error of ``model`` against ``y`` (``mutable``: a
    model with batch statistics, whose updates are dropped)."""
    import jax
    import jax.numpy as jnp
    import optax

    def loss(params, x, y):
        if mutable:
            out, _ = model.apply(params, x, mutable=["batch_stats"])
        else:
            out = model.apply(params, x)
        return jnp.mean(jnp.square(out - y))

    def step(params, opt_state, x, y):
        value, grads = jax.value_and_grad(loss)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    return step


def _case(layout: str, norm: Any, mesh: Any, *, batch: int, seq: int, width: int):
    """The compiled step of a :class:`Block` with ``norm`` in ``layout``, and its inputs."""
    import jax
    import numpy as np
    import optax
    from jax.sharding import NamedSharding

    block = __getattr__("Block")(norm)
    rng = np.random.default_rng(0)
    x = (3 + rng.standard_normal((batch, seq, width))).astype(np.float32)
    y = rng.standard_normal((batch, seq, width)).astype(np.float32)
    params = jax.jit(block.init)(jax.random.key(0), x)
    axes = {"data": "d", "seq": "d", "model": "d"}
    specs = param_specs(params, layout, axes)
    params = jax.device_put(params, jax.tree.map(lambda s: NamedSharding(mesh, s), specs))
    xs = jax.device_put(x, NamedSharding(mesh, input_spec(layout, axes)))
    ys = jax.device_put(y, NamedSharding(mesh, input_spec(layout, axes)))
    tx = optax.adam(1e-3)
    opt_state = jax.jit(tx.init)(params)
    with jax.set_mesh(mesh):
        step = jax.jit(train_step(block, tx))
        compiled = step.lower(params, opt_state, xs, ys).compile()
    return compiled, (params, opt_state, xs, ys)


def measure(*, quick: bool = False, layouts: tuple[str, ...] = LAYOUTS,
            rounds: int | None = None) -> dict:
    """Collectives (count, bytes) and the step-time ratio lnjax / flax for each layout."""
    force_devices()
    import flax.linen as nn
    import jax

    from benchmarks import harness
    from lnjax import linen as lnn
    from lnjax import parallel

    if jax.device_count() < DEVICES:
        raise SystemExit(f"benchmarks.sharding needs {DEVICES} devices, found "
                         f"{jax.device_count()}: run it in a fresh process (it sets XLA_FLAGS).")
    size = dict(batch=16, seq=32, width=64) if quick else dict(batch=32, seq=128, width=256)
    rounds = rounds or (5 if quick else 15)
    mesh = jax.make_mesh((DEVICES,), ("d",), axis_types=(jax.sharding.AxisType.Auto,))
    rows = []
    for layout in layouts:
        timed = {}
        row: dict[str, Any] = {"layout": layout}
        for who, norm in (("lnjax", lnn.LayerNorm), ("flax", nn.LayerNorm)):
            compiled, args = _case(layout, norm, mesh, **size)
            found = parallel.collectives(compiled)
            row[f"{who}_collectives"] = sum(c.runs for c in found)
            row[f"{who}_bytes"] = sum(c.total_bytes for c in found)
            timed[who] = harness.jax_call(compiled, *args)
        times = harness.measure(timed, [harness.TimeRatio("lnjax", "flax", TIME_TARGET,
                                                         at_least=False)], rounds=rounds)
        row.update(time_ratio=times["ratios"][0]["value"], median_ms=times["median_ms"])
        row["bytes_ratio"] = (row["lnjax_bytes"] / row["flax_bytes"] if row["flax_bytes"]
                              else (1.0 if row["lnjax_bytes"] == 0 else float("inf")))
        row["met"] = bool(row["bytes_ratio"] <= BYTES_TARGET
                          and row["time_ratio"] <= TIME_TARGET)
        rows.append(row)
    return {"block": size, "devices": DEVICES, "rows": rows,
            "targets": {"bytes_ratio": BYTES_TARGET, "time_ratio": TIME_TARGET},
            "machine": report.machine()}


def markdown(record: dict) -> str:
    """One row per layout: collectives, bytes and the time ratio, with the targets."""
    b = record["block"]
    rows = [[r["layout"], f"{r['lnjax_collectives']} / {r['flax_collectives']}",
             f"{r['lnjax_bytes']:,} / {r['flax_bytes']:,}", f"{r['bytes_ratio']:.2f}",
             f"{r['time_ratio']:.2f}", "yes" if r["met"] else "**no**"]
            for r in record["rows"]]
    head = (f"Transformer block training step (batch {b['batch']}, sequence {b['seq']}, "
            f"width {b['width']}) on {record['devices']} devices; targets: bytes ratio <= "
            f"{record['targets']['bytes_ratio']}, time ratio <= "
            f"{record['targets']['time_ratio']}\n\n")
    return head + report.table(
        ["layout", "collectives lnjax / flax", "bytes per device lnjax / flax", "bytes ratio",
         "time lnjax / flax", "met"], rows, align="llrrrl")


def main(argv: list[str] | None = None) -> dict:
    return report.quick_main(__doc__, "sharding", measure, markdown, argv)


if __name__ == "__main__":
    force_devices()
    main()
