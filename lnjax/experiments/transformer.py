"""Transformers: post-LN against pre-LN, pre-RMSNorm and no norm, with and without warm-up.

Xiong et al. (2020) found that a Transformer with layer norm after each residual
sum (post-LN, ``x = LN(x + f(x))``, the original Transformer's) needs a
learning-rate warm-up to train, while one with layer norm at the start of each
residual branch (pre-LN, ``x = x + f(LN(x))``, and a final LN) trains without
it. This experiment tests that on a small ViT-style classifier that runs offline:
each 28x28 (Fashion-)MNIST image is cut into 49 patches of 4x4 pixels, embedded
by one dense layer with a learned position embedding, and read by an encoder of
``--layers`` blocks (flax's ``nn.MultiHeadDotProductAttention`` and a GELU MLP,
lnjax's ``LayerNorm``/``RMSNorm``), averaged over the patches and classified by
a dense head::

    python -m lnjax.experiments.transformer --out runs/transformer

The methods: ``post_ln``, ``pre_ln``, ``pre_rms`` (pre-norm with RMSNorm) and
``none`` (no normalization) train with Adam at the peak rate ``--lr`` from the
first step; the same with the suffix ``_warmup`` (``post_ln_warmup``, ...) ramp
the rate linearly from 0 over ``--warmup-steps``, then keep it constant. No
gradient clipping, dropout or weight decay (each would blur the effect).

The default learning rate (:class:`TransformerSettings`) is set high enough for
warm-up to matter at the default sizes: at lower rates post-LN may train
without it, and the finding is then not tested. The runs' ``summary.md`` and
the experiments guide (``docs/guides/experiments.md``) report measured errors.

The verdict (:func:`verdict`, printed, appended to ``summary.md`` and stored as
``results.json``'s ``"verdict"``) is computed from the runs: a normalization
*needs* warm-up when, without it, the loss diverges or the last test error
loses more than a fifth of what the warm-up run gained over guessing
(:func:`compare_warmup`); the finding holds when post-LN needs warm-up and
pre-LN does not.

The defaults (:class:`TransformerSettings`) are sized for a shared 2-core CPU:
a 4-layer encoder of width 128 (0.54 M parameters) trained for a couple of
hundred steps on part of the training split, with the validation and test
splits evaluated whole after each epoch. A full-size run (all 55,000 examples,
about 8,600 steps; hours on a CPU, minutes on a GPU)::

    python -m lnjax.experiments.transformer --train-examples 55000 --epochs 20 \
        --warmup-steps 1000 --out runs/transformer_full

Writes ``results.json`` (per method and batch size, per epoch: train NLL and
error, validation and test NLL and error, wall time, the step-by-step training
loss; the data set and its source; library versions; the verdict),
``curves.png`` and ``curves.pdf`` (training loss and test error against steps,
one curve per method, and the last test errors), ``summary.md`` (the table and
the verdict). Runs resume from their checkpoints in ``OUT/checkpoints`` unless
``--no-resume``; a warm-up run's checkpoints are tied to its ``--warmup-steps``.

References: Xiong et al., "On Layer Normalization in the Transformer
Architecture", ICML 2020 (arXiv 2002.04745); Vaswani et al. (2017); Dosovitskiy
et al. (2021, ViT); Ba, Kiros & Hinton (2016).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from typing import Annotated, Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import optax

from lnjax import linen as lnn
from lnjax.experiments import driver, plots, tables
from lnjax.experiments.results import batch_sizes, mean_history, seed_histories
from lnjax.experiments.runs import Run, fit_run
from lnjax.experiments.settings import Flag, Settings, SettingsError, document, positive

NORMS = ("post_ln", "pre_ln", "pre_rms", "none")
WARMUP = "_warmup"  # the suffix of a method that warms its learning rate up
METHODS = tuple(f"{n}{s}" for n in NORMS for s in ("", WARMUP))
LABELS = {"post_ln": "post-LN", "pre_ln": "pre-LN", "pre_rms": "pre-RMSNorm",
          "none": "no norm"}
COLORS = {"post_ln": "tab:red", "pre_ln": "tab:blue", "pre_rms": "tab:green",
          "none": "tab:gray"}
PATCH = 4  # 28x28 images as 7x7 = 49 patches of 4x4 pixels


def split_method(method: str) -> tuple[str, bool]:
    """``"post_ln_warmup"`` -> ``("post_ln", True)``; ``"pre_ln"`` -> ``("pre_ln", False)``."""
    warm = method.endswith(WARMUP)
    norm = method[: -len(WARMUP)] if warm else method
    if norm not in NORMS:
        raise ValueError(f"transformer: method must be one of {METHODS}, got {method!r}")
    return norm, warm


def label(method: str) -> str:
    """``"post_ln_warmup"`` -> ``"post-LN, warm-up"``."""
    norm, warm = split_method(method)
    return f"{LABELS[norm]}, {'warm-up' if warm else 'no warm-up'}"


def residual(x: jnp.ndarray, sublayer: Callable, norm: Callable | None,
             position: str) -> jnp.ndarray:
    """One residual sublayer ``f`` with its normalization where ``position`` puts it.

    ``"post"``: ``LN(x + f(x))`` (Vaswani et al. 2017); ``"pre"``: ``x + f(LN(x))``
    (Xiong et al. 2020); ``"none"``: ``x + f(x)``.
    """
    if position == "post":
        assert norm is not None, "residual: position 'post' needs a norm"
        return norm(x + sublayer(x))
    if position == "pre":
        assert norm is not None, "residual: position 'pre' needs a norm"
        return x + sublayer(norm(x))
    if position == "none":
        return x + sublayer(x)
    raise ValueError(f"residual: position must be 'post', 'pre' or 'none', got {position!r}")


def patches(images: jnp.ndarray) -> jnp.ndarray:
    """``(batch, 28, 28)`` images (or ``(batch, 28, 28, 1)``) as ``(batch, 49, 16)``: the
    4x4 patches in row-major order, each patch's pixels in row-major order."""
    b, n = images.shape[0], 28 // PATCH
    x = images.reshape((b, n, PATCH, n, PATCH)).transpose((0, 1, 3, 2, 4))
    return x.reshape((b, n * n, PATCH * PATCH))


def _position_and_norm(norm: str) -> tuple[str, type | None]:
    """The position (``post``, ``pre``, ``none``) and module of a normalization variant."""
    return {"post_ln": ("post", lnn.LayerNorm), "pre_ln": ("pre", lnn.LayerNorm),
            "pre_rms": ("pre", lnn.RMSNorm), "none": ("none", None)}[norm]


class MLPBlock(nn.Module):
    """Dense(mlp_dim), GELU, Dense(width): the position-wise feed-forward sublayer."""

    mlp_dim: int

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        width = x.shape[-1]
        h = nn.gelu(nn.Dense(self.mlp_dim, name="hidden")(x))
        return nn.Dense(width, name="output")(h)


class EncoderBlock(nn.Module):
    """Self-attention then the MLP, each a residual sublayer normalized as ``norm`` says.

    Attributes:
      norm: one of :data:`NORMS`; the sublayers' norms are ``norm_attention``
        and ``norm_mlp`` (none for ``"none"``).
      heads: attention heads.
      mlp_dim: the MLP's hidden width.
    """

    norm: str = "pre_ln"
    heads: int = 4
    mlp_dim: int = 256

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        position, norm_type = _position_and_norm(self.norm)
        attention = nn.MultiHeadDotProductAttention(num_heads=self.heads, deterministic=True,
                                                    name="attention")
        mlp = MLPBlock(self.mlp_dim, name="mlp")
        for name, sublayer in (("attention", attention), ("mlp", mlp)):
            norm = None if norm_type is None else norm_type(name=f"norm_{name}")
            x = residual(x, sublayer, norm, position)
        return x


class PatchTransformer(nn.Module):
    """A ViT-style classifier of 28x28 images: 49 patches of 4x4, a Transformer encoder.

    Linear patch embedding plus a learned position embedding, ``layers``
    encoder blocks (:class:`EncoderBlock`), a final norm for the pre-norm
    variants (``final_norm``), mean pooling over the patches and a dense head.

    Attributes:
      norm: one of :data:`NORMS`.
      layers: the number of encoder blocks.
      width: the width of the token embeddings.
      heads: the number of attention heads.
      mlp_dim: the hidden width of each block's MLP.
      num_classes: the output width.
    """

    norm: str = "pre_ln"
    layers: int = 4
    width: int = 128
    heads: int = 4
    mlp_dim: int = 256
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        """Logits of images ``x`` shaped ``(batch, 28, 28)`` (or ``(batch, 28, 28, 1)``)."""
        del train  # no dropout, no batch statistics
        if self.norm not in NORMS:
            raise ValueError(f"PatchTransformer: norm must be one of {NORMS}, "
                             f"got {self.norm!r}")
        x = nn.Dense(self.width, name="embed")(patches(x))
        x = x + self.param("position", nn.initializers.normal(0.02), x.shape[1:], x.dtype)
        for i in range(self.layers):
            x = EncoderBlock(self.norm, self.heads, self.mlp_dim, name=f"block_{i}")(x)
        position, norm_type = _position_and_norm(self.norm)
        if position == "pre":
            assert norm_type is not None  # every pre-norm variant has a norm
            x = norm_type(name="final_norm")(x)
        return nn.Dense(self.num_classes, name="head")(x.mean(axis=1))


TRAIN_EXAMPLES = 12_800  # the default --train-examples: 100 steps an epoch at batch size 128


@document("The settings of ``python -m lnjax.experiments.transformer`` (its flags).")
@dataclasses.dataclass(frozen=True)
class TransformerSettings(Settings):
    methods: Annotated[tuple[str, ...], Flag(choices=METHODS)] = METHODS
    epochs: int = 2
    lr: float = 3e-3
    out: str = "runs/transformer"
    train_examples: int | None = TRAIN_EXAMPLES
    layers: Annotated[int, Flag("encoder blocks", parse=int, check=positive)] = 4
    width: Annotated[int, Flag("model width", parse=int, check=positive)] = 128
    heads: Annotated[int, Flag("attention heads (dividing --width)", parse=int,
                               check=positive)] = 4
    mlp_dim: Annotated[int, Flag("the MLP's hidden width", parse=int, check=positive)] = 256
    warmup_steps: Annotated[int, Flag("steps of linear warm-up of the *_warmup methods",
                                      parse=int, check=positive)] = 40

    def check(self) -> None:
        """``heads`` divides ``width``."""
        if self.width % self.heads:
            raise SettingsError(f"--heads ({self.heads}) must divide --width ({self.width})")


def schedule(lr: Any, warmup_steps: Any) -> optax.Schedule:
    """The learning rate: linear from 0 to ``lr`` over ``warmup_steps``, then ``lr``
    (``warmup_steps=0``: ``lr`` from the first step). Either may be a traced array (the
    values :func:`optimizer` holds in its state)."""
    def rate(count: Any) -> Any:
        ramp = jnp.clip(count / jnp.maximum(warmup_steps, 1), 0.0, 1.0)
        return lr * jnp.where(jnp.asarray(warmup_steps) > 0, ramp, 1.0)
    return rate


def _adam_with_warmup(learning_rate: Any, warmup_steps: Any) -> optax.GradientTransformation:
    return optax.adam(schedule(learning_rate, warmup_steps))


@functools.cache
def optimizer() -> optax.GradientTransformation:
    """Adam with :func:`schedule`, its peak rate ``learning_rate`` and ``warmup_steps`` held
    in its state (``optax.inject_hyperparams``): one object per process, so the eight
    methods' runs compile one step per normalization, whatever their warm-up, rate or seed
    (:func:`lnjax.experiments.runs.with_hyperparams` sets a run's values)."""
    return optax.inject_hyperparams(_adam_with_warmup)(learning_rate=np.asarray(0.0, np.float32),
                                                       warmup_steps=np.asarray(0, np.int32))


def run(method: str, batch_size: int, splits: dict,
        settings: TransformerSettings | None = None, *, seed: int | None = None,
        mesh: Any = None, **changes: Any) -> dict:
    """Trains one (method, batch size) and returns its history (see :func:`training.fit`).

    ``method`` is a normalization of :data:`NORMS`, with the suffix ``_warmup``
    for a linear warm-up over ``settings.warmup_steps`` (:func:`schedule`);
    without it Adam takes the peak rate ``settings.lr`` from the first step.
    Every run of a process is given the same :func:`optimizer` (the warm-up and
    rate in its state) and an equal model for equal settings, so the runs of
    one normalization share their compiled steps.

    Args:
      method: one of :data:`METHODS`.
      batch_size: examples per step.
      splits: ``{"train", "validation", "test"}``, each a :class:`lnjax.data.Dataset`.
      settings: the run's settings (default: :class:`TransformerSettings`' defaults).
      seed: the run's seed (default: ``settings.seed``).
      mesh: a device mesh (several devices: data-parallel).
      **changes: settings to change, by field name (``epochs=2``, ``warmup_steps=40``).
    """
    s = dataclasses.replace(settings or TransformerSettings(), **changes)
    norm, warm = split_method(method)
    model = PatchTransformer(norm, layers=s.layers, width=s.width, heads=s.heads,
                             mlp_dim=s.mlp_dim)
    warmup = s.warmup_steps if warm else 0
    # "optimizer" names the optimizer's state layout: checkpoints of the earlier layout
    # (the schedule outside the state) are not restored into this one.
    config = {"layers": s.layers, "width": s.width, "heads": s.heads, "mlp_dim": s.mlp_dim,
              "warmup_steps": warmup, "optimizer": "adam, warm-up in its state"}
    one = Run(method, batch_size, s.seed if seed is None else seed, model_config=config,
              label=f"{label(method):>24} bs={batch_size:<3}")
    return fit_run(model, optimizer(), splits, one, s, mesh=mesh,
                   hyperparams={"learning_rate": s.lr, "warmup_steps": warmup})


CHANCE_ERROR = 0.9  # the test error of guessing among the 10 classes
SHORTFALL = 0.2  # the share of the warm-up run's gain a run without it may lose


def _final(h: Mapping[str, Any], key: str) -> float:
    v = h[key][-1]
    return float("nan") if v is None else float(v)


def compare_warmup(runs: Mapping[str, Mapping[str, Any]], norm: str, batch_size: str,
                   *, shortfall: float = SHORTFALL) -> dict | None:
    """The last epoch of ``norm`` without and with warm-up at ``batch_size`` (the mean over
    the seeds); ``None`` if either run is missing.

    The run without warm-up *needs* warm-up when its training loss or test error is not
    finite, or when it loses more than ``shortfall`` of what the run with warm-up gained
    over guessing: ``lost = (error without - error with) / (CHANCE_ERROR - error with)``
    (0: as good, 1: no better than guessing). Scale-free, so the same rule serves a
    short run and a full one; ``shortfall`` should stay above the spread of ``lost``
    between seeds (``--seeds`` measures it).

    Returns:
      ``{"no_warmup": {"train_loss", "test_error"}, "warmup": {...}, "lost": float,
      "status": "needs" | "trains" | "untrained"}`` (``"untrained"``: the run with
      warm-up itself ended within 5 points of guessing, so there is nothing to compare).
    """
    cold = runs.get(norm, {}).get(batch_size)
    warm = runs.get(norm + WARMUP, {}).get(batch_size)
    if not cold or not warm:
        return None
    # Several seeds (runs[method][batch size][seed]): their mean.
    cold, warm = (mean_history(list(seed_histories(e).values()))
                  for e in (cold, warm))
    c = {"train_loss": _final(cold, "train_loss"), "test_error": _final(cold, "test_error")}
    w = {"train_loss": _final(warm, "train_loss"), "test_error": _final(warm, "test_error")}
    gain = CHANCE_ERROR - w["test_error"]
    finite = all(math.isfinite(v) for v in (*c.values(), *w.values()))
    lost = (c["test_error"] - w["test_error"]) / gain if finite and gain > 0 else math.nan
    if not (math.isfinite(c["train_loss"]) and math.isfinite(c["test_error"])):
        status = "needs"  # diverged without warm-up
    elif not (finite and gain > 0.05):
        status = "untrained"
    else:
        status = "needs" if lost > shortfall else "trains"
    return {"no_warmup": c, "warmup": w, "lost": lost, "status": status}


def verdict(results: Mapping[str, Any], *, shortfall: float = SHORTFALL) -> list[str]:
    """Markdown lines: for each normalization and batch size run with and without warm-up,
    its last-epoch training NLL and test error both ways and whether it needs warm-up
    (:func:`compare_warmup`); then whether Xiong et al. (2020)'s finding holds: post-LN
    needs warm-up and pre-LN trains without it."""
    runs = results["runs"]
    lines = []
    for bs in batch_sizes(results):
        found = {}
        for norm in NORMS:
            cmp = compare_warmup(runs, norm, str(bs), shortfall=shortfall)
            if cmp is None:
                continue
            found[norm] = cmp
            c, w, lost = cmp["no_warmup"], cmp["warmup"], cmp["lost"]
            what = {
                "needs": "needs warm-up (" + (
                    f"loses {100 * lost:.0f} % of the warm-up run's gain over guessing "
                    "without it)" if math.isfinite(lost) else "diverges without it)"),
                "trains": "trains without warm-up (" + (
                    f"loses {100 * lost:.0f} % of the warm-up run's gain over guessing)"
                    if lost > 0 else "no worse than with warm-up)"),
                "untrained": "did not learn with warm-up either",
            }[cmp["status"]]
            lines.append(f"- {LABELS[norm]}, batch size {bs}: without warm-up train NLL "
                         f"{c['train_loss']:.3f}, test error {100 * c['test_error']:.2f} %; "
                         f"with warm-up {w['train_loss']:.3f}, {100 * w['test_error']:.2f} %: "
                         f"{what}.")
        if "post_ln" in found and "pre_ln" in found:
            post, pre = found["post_ln"]["status"], found["pre_ln"]["status"]
            if "untrained" in (post, pre):
                result = "undecided"
            else:
                result = "holds" if post == "needs" and pre == "trains" else "does not hold"
            words = {"needs": "needs warm-up", "trains": "trains without warm-up",
                     "untrained": "did not learn with warm-up either"}
            lines.append(f"- **Xiong et al. (2020), post-LN needs warm-up and pre-LN trains "
                         f"without it: {result}** at batch size "
                         f"{bs}, learning rate {results['config']['lr']:g} (post-LN "
                         f"{words[post]}, pre-LN {words[pre]}; \"needs\": without warm-up "
                         f"the loss diverges or the run loses more than {100 * shortfall:g} % "
                         f"of the warm-up run's gain in test error over guessing).")
        else:
            lines.append(f"- Xiong et al. (2020)'s finding is not tested at batch size {bs}: "
                         f"it needs the runs post_ln, post_ln{WARMUP}, pre_ln and pre_ln{WARMUP}.")
    return lines


def plot(results: dict, path: str) -> None:
    """Training loss and test error against training steps (one curve per method: color
    the normalization, solid with warm-up, dashed without; the mean over the seeds, with a
    min-max band when there are several) beside the last test error on the whole test set
    (bars: the mean, whiskers: min-max), one row per batch size. Written as ``path`` (PNG)
    and a PDF of the same stem."""
    runs, sizes = results["runs"], batch_sizes(results)
    fig, axes = plots.figure(len(sizes), 3, width=4.0, height=3.4)
    subset = False
    for row, bs in enumerate(sizes):
        left, middle, right = axes[row]
        drawn: dict[str, list[float]] = {"left": [], "middle": []}
        bars = []
        for method, by in runs.items():
            if not by.get(str(bs)):
                continue
            hs = list(seed_histories(by[str(bs)]).values())
            norm, warm = split_method(method)
            kw = {"color": COLORS[norm], "linestyle": "-" if warm else "--",
                  "label": label(method)}
            steps, loss = plots.smoothed_step_loss(hs)
            drawn["left"] += plots.band(left, steps, loss, **kw)
            x, err, from_subset = plots.error_curve(hs)
            subset = subset or from_subset
            drawn["middle"] += plots.band(middle, x, err, **kw)
            final = [100 * _final(h, "test_error") for h in hs]
            bars.append((norm, warm, final))
        plots.set_scale(left, drawn["left"])
        plots.set_scale(middle, drawn["middle"])
        left.set(title=f"training loss, batch size {bs}", xlabel="training steps",
                 ylabel="train NLL (nats, running mean of 5)")
        middle.set(title=f"test error, batch size {bs}", xlabel="training steps",
                   ylabel="test error (%)")
        for ax in (left, middle):
            ax.grid(alpha=0.3, which="both")
        norms = [n for n in NORMS if any(b[0] == n for b in bars)]
        for norm, warm, final in bars:
            at = norms.index(norm) + (0.2 if warm else -0.2)
            mean = float(np.mean(final))
            spread = [[mean - min(final)], [max(final) - mean]] if len(final) > 1 else None
            right.bar(at, mean, width=0.38, color=COLORS[norm], hatch="" if warm else "//",
                      edgecolor="black", alpha=0.9 if warm else 0.5, yerr=spread, capsize=3)
            right.annotate(f"{mean:.1f}", (at, max(final)), ha="center", va="bottom",
                           fontsize=8)
        right.set_xticks(range(len(norms)), [LABELS[n] for n in norms])
        right.set_ylim(0, 1.15 * max([max(b[2]) for b in bars], default=1))
        right.set(title=f"last test error, batch size {bs}", ylabel="test error (%), whole set",
                  xlabel="hatched, left: no warm-up; plain, right: warm-up")
        right.grid(alpha=0.3, axis="y")
    plots.legend_below(fig, axes)
    cfg = results.get("config", {})
    measured = plots.eval_caption(results) if subset else "the test set after each epoch"
    plots.save_figure(fig, path, f"Transformer encoder on {results['dataset']['name']} "
                       f"patches (lnjax): {cfg.get('layers')} layers, width {cfg.get('width')}, "
                       f"Adam lr {cfg.get('lr', 0):g}, warm-up {cfg.get('warmup_steps')} steps\n"
                       f"{plots.seeds_caption(runs)}; test error curves on {measured}")


COLUMNS = tables.columns(("steps", "steps", "d"))
DESCRIPTION = ("Transformers: post-LN against pre-LN, pre-RMSNorm and no norm, with and without "
               "warm-up.")


def summary(results: Mapping[str, Any]) -> str:
    """``summary.md``: the table of the runs (:func:`~lnjax.experiments.tables.summary`)
    and the verdict (``results["verdict"]``, else :func:`verdict`)."""
    lines = results.get("verdict") or verdict(results)
    return tables.summary(results, COLUMNS) + "\n" + "\n".join(lines) + "\n"


def conclude(results: Mapping[str, Any]) -> dict[str, Any]:
    """What ``results.json`` holds besides the runs: ``{"verdict": verdict(results)}``."""
    return {"verdict": verdict(results)}


EXPERIMENT = driver.Experiment(
    name="transformer", description=DESCRIPTION, title="Transformer encoder on",
    settings=TransformerSettings, run=run, plot=plot, figure="curves.png", columns=COLUMNS,
    summary=summary, conclude=conclude)


def main(argv: list[str] | None = None) -> dict:
    """``python -m lnjax.experiments.transformer [flags]``; returns what ``results.json``
    holds, with the verdict (also in ``summary.md`` and printed)."""
    return driver.main(EXPERIMENT, argv)


if __name__ == "__main__":
    main()
