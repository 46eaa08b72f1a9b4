"""The Transformer experiment (lnjax.experiments.transformer): where each variant puts its
norm, the verdict on fed-in results, and a tiny end-to-end run on IDX files the test writes."""

import json
import logging
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lnjax import layer_norm
from lnjax.experiments import settings, transformer
from tests.helpers import small_mnist

N_TRAIN, N_VAL, N_TEST = 256, 48, 48  # 8 steps of 32: four equal scans an epoch, one
# compilation of the epoch runner; one evaluation shape: one compilation
TINY = ["--layers", "1", "--width", "16", "--heads", "2", "--mlp-dim", "32"]


@pytest.fixture
def mnist(tmp_path):
    """A small MNIST-format data set in tmp_path/data/mnist; validation = last 48 examples."""
    return small_mnist(tmp_path, N_TRAIN, N_VAL, N_TEST)


def images(n, seed=0):
    return np.random.default_rng(seed).random((n, 28, 28), dtype=np.float32)


# ------------------------------------------------- where the norms are


def flat_names(params):
    return {"/".join(str(k.key) for k in path)
            for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]}


@pytest.mark.parametrize("norm, kind", [("post_ln", "LayerNorm"), ("pre_ln", "LayerNorm"),
                                        ("pre_rms", "RMSNorm"), ("none", None)])
def test_parameter_tree_has_the_variants_norms(norm, kind):
    model = transformer.PatchTransformer(norm, layers=2, width=16, heads=2, mlp_dim=32)
    variables = model.init(jax.random.key(0), images(2), train=False)
    names = flat_names(variables["params"])
    norm_params = {n for n in names if "norm" in n}
    expected_leaves = {"LayerNorm": ("scale", "bias"), "RMSNorm": ("scale",), None: ()}[kind]
    blocks = {f"block_{i}/norm_{s}/{leaf}" for i in range(2) for s in ("attention", "mlp")
              for leaf in expected_leaves}
    final = {f"final_norm/{leaf}" for leaf in expected_leaves} if norm.startswith("pre") else set()
    assert norm_params == blocks | final
    # And they are lnjax's modules, in the order the variant applies them.
    order = []

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, (nn.LayerNorm, nn.RMSNorm, nn.MultiHeadDotProductAttention,
                                       transformer.MLPBlock)) and context.method_name == "__call__":
            order.append((type(context.module).__module__, type(context.module).__name__,
                          context.module.name))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        model.apply(variables, images(2), train=False)
    norms = {(m, k) for m, k, name in order if "norm" in name}
    assert norms == (set() if kind is None else {("lnjax.linen.normalization", kind)})
    names = [name for _, _, name in order]
    per_block = {"post_ln": ["attention", "norm_attention", "mlp", "norm_mlp"],
                 "pre_ln": ["norm_attention", "attention", "norm_mlp", "mlp"],
                 "pre_rms": ["norm_attention", "attention", "norm_mlp", "mlp"],
                 "none": ["attention", "mlp"]}[norm]
    assert names == 2 * per_block + (["final_norm"] if norm.startswith("pre") else [])


def test_residual_follows_the_equations():
    x = jnp.asarray(images(3)[:, :, :8])
    f = lambda v: 2.0 * v  # noqa: E731  (a sublayer: doubling)
    ln = layer_norm
    np.testing.assert_allclose(transformer.residual(x, f, ln, "post"), ln(3.0 * x), rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(transformer.residual(x, f, ln, "pre"), x + 2.0 * ln(x),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(transformer.residual(x, f, None, "none"), 3.0 * x)
    with pytest.raises(ValueError, match="position must be"):
        transformer.residual(x, f, ln, "middle")


def zero_sublayer_outputs(params):
    """The block's parameters with the attention and MLP outputs set to zero: f(x) = 0."""
    def zero(path, leaf):
        keys = [str(k.key) for k in path]
        return jnp.zeros_like(leaf) if ("out" in keys or "output" in keys) else leaf
    return jax.tree_util.tree_map_with_path(zero, params)


@pytest.mark.parametrize("norm, expected", [
    ("post_ln", lambda x: layer_norm(layer_norm(x))),  # LN(x + 0) after each sublayer
    ("pre_ln", lambda x: x),  # x + 0: the residual stream is untouched
    ("pre_rms", lambda x: x),
    ("none", lambda x: x),
])
def test_block_with_silent_sublayers_places_the_norm_as_the_equations_say(norm, expected):
    """With zero attention and MLP outputs, a pre-norm block is the identity and a post-LN
    block is LN applied after each of its two sublayers."""
    block = transformer.EncoderBlock(norm, heads=2, mlp_dim=32)
    x = jnp.asarray(np.random.default_rng(1).normal(3.0, 2.0, (2, 5, 16)), jnp.float32)
    params = zero_sublayer_outputs(block.init(jax.random.key(0), x)["params"])
    np.testing.assert_allclose(block.apply({"params": params}, x), expected(x), rtol=1e-5,
                               atol=1e-5)


def test_final_norm_is_rms_for_pre_rms():
    """pre_rms ends with an RMS norm: unit mean square over the width at initialization."""
    model = transformer.PatchTransformer("pre_rms", layers=1, width=16, heads=2, mlp_dim=32)
    variables = model.init(jax.random.key(0), images(2), train=False)
    _, state = model.apply(variables, images(2), train=False,
                           capture_intermediates=lambda mdl, _: mdl.name == "final_norm")
    [y] = state["intermediates"]["final_norm"]["__call__"]
    np.testing.assert_allclose(np.mean(np.square(np.asarray(y)), axis=-1), 1.0, atol=1e-3)
    assert not np.allclose(np.mean(np.asarray(y), axis=-1), 0.0, atol=1e-3)  # not centred


def test_patches_are_the_4x4_blocks_in_row_major_order():
    x = images(2)
    p = np.asarray(transformer.patches(jnp.asarray(x)))
    assert p.shape == (2, 49, 16)
    for k, (i, j) in enumerate([(0, 0), (0, 1), (1, 0), (3, 5), (6, 6)]):
        np.testing.assert_array_equal(p[k % 2, 7 * i + j],
                                      x[k % 2, 4 * i:4 * i + 4, 4 * j:4 * j + 4].ravel())
    np.testing.assert_array_equal(transformer.patches(jnp.asarray(x)[..., None]), p)


def test_unknown_method_and_norm_are_clear_errors():
    with pytest.raises(ValueError, match="method must be one of"):
        transformer.split_method("post_bn")
    with pytest.raises(ValueError, match="norm must be one of"):
        transformer.PatchTransformer("batchnorm").init(jax.random.key(0), images(1), train=False)


def test_warmup_schedule():
    warm, cold = transformer.schedule(1e-3, 10), transformer.schedule(1e-3, 0)
    assert float(warm(0)) == 0.0 and math.isclose(float(warm(5)), 5e-4, rel_tol=1e-6)
    assert math.isclose(float(warm(10)), 1e-3, rel_tol=1e-6)
    assert math.isclose(float(warm(1000)), 1e-3, rel_tol=1e-6)
    assert float(cold(0)) == float(cold(1000)) == pytest.approx(1e-3)


# ------------------------------------------------------------- the verdict


def fake_results(errors, losses=None, lr=3e-3):
    """A results.json with only the last epoch: ``errors[method]`` its test error."""
    losses = losses or {}
    return {"config": {"lr": lr}, "runs": {
        m: {"128": {"train_loss": [9.0, losses.get(m, 0.5)], "test_error": [0.9, e]}}
        for m, e in errors.items()}}


def test_verdict_holds_when_post_ln_alone_needs_warmup():
    lines = transformer.verdict(fake_results(
        {"post_ln": 0.90, "post_ln_warmup": 0.20, "pre_ln": 0.22, "pre_ln_warmup": 0.20}))
    assert lines[0] == ("- post-LN, batch size 128: without warm-up train NLL 0.500, test error "
                        "90.00 %; with warm-up 0.500, 20.00 %: needs warm-up (loses 100 % of "
                        "the warm-up run's gain over guessing without it).")
    assert lines[1].endswith("trains without warm-up (loses 3 % of the warm-up run's gain "
                             "over guessing).")
    assert "holds** at batch size 128, learning rate 0.003" in lines[-1]
    assert "does not hold" not in lines[-1]


@pytest.mark.parametrize("errors, losses, why", [
    # post-LN fine without warm-up: the finding fails on its first half.
    ({"post_ln": 0.21, "post_ln_warmup": 0.20, "pre_ln": 0.19, "pre_ln_warmup": 0.20}, {},
     "post-LN trains without warm-up, pre-LN trains without warm-up"),
    # pre-LN also needs warm-up (loses 0.2 / 0.7 = 29 % of the gain): the second half fails.
    ({"post_ln": 0.90, "post_ln_warmup": 0.20, "pre_ln": 0.40, "pre_ln_warmup": 0.20}, {},
     "post-LN needs warm-up, pre-LN needs warm-up"),
    # pre-LN diverged without warm-up (NaN loss), whatever its error.
    ({"post_ln": 0.90, "post_ln_warmup": 0.20, "pre_ln": 0.19, "pre_ln_warmup": 0.20},
     {"pre_ln": float("nan")}, "pre-LN needs warm-up"),
])
def test_verdict_follows_the_results(errors, losses, why):
    lines = transformer.verdict(fake_results(errors, losses))
    assert "does not hold**" in lines[-1] and why in lines[-1]


def test_verdict_undecided_when_a_warmup_run_did_not_learn():
    lines = transformer.verdict(fake_results(
        {"post_ln": 0.90, "post_ln_warmup": 0.88, "pre_ln": 0.19, "pre_ln_warmup": 0.20}))
    assert lines[0].endswith(": did not learn with warm-up either.")
    assert "undecided** at batch size 128" in lines[-1]
    assert "post-LN did not learn with warm-up either, pre-LN trains" in lines[-1]


def test_verdict_diverged_line():
    lines = transformer.verdict(fake_results(
        {"post_ln": 0.9, "post_ln_warmup": 0.2, "pre_ln": 0.2, "pre_ln_warmup": 0.2},
        {"post_ln": float("inf")}))
    assert lines[0].endswith("needs warm-up (diverges without it).")
    assert "holds**" in lines[-1] and "does not" not in lines[-1]


def test_verdict_shortfall_and_missing_runs():
    # post-LN loses 0.1 / 0.7 = 14 % of its warm-up run's gain: "needs" only below 14 %.
    errors = {"post_ln": 0.30, "post_ln_warmup": 0.20, "pre_ln": 0.20, "pre_ln_warmup": 0.20,
              "none": 0.3}
    assert "does not hold**" in transformer.verdict(fake_results(errors))[-1]
    strict = transformer.verdict(fake_results(errors), shortfall=0.1)
    assert "holds**" in strict[-1] and "does not" not in strict[-1]
    assert "loses more than 10 %" in strict[-1]
    lines = transformer.verdict(fake_results({"post_ln": 0.9, "post_ln_warmup": 0.2,
                                              "none": 0.3}))
    assert len(lines) == 2  # post-LN's line, then why the finding is not tested
    assert "not tested at batch size 128" in lines[1]


# ---------------------------------------------------------- the command line


def read_results(out):
    with open(out / "results.json") as f:
        return json.load(f)


def test_end_to_end_and_resume(mnist, tmp_path, capsys, caplog):
    out = tmp_path / "tx"
    base = ["--dataset", "mnist", *mnist.flags, *TINY, "--batch-sizes", "32",
            "--lr", "3e-3", "--warmup-steps", "4", "--out", str(out), "--no-progress",
            "--train-examples", str(N_TRAIN), "--devices", "1"]
    with jax.log_compiles(), caplog.at_level(logging.WARNING, logger="jax"):
        first = transformer.main(base + ["--epochs", "2"])
    printed = capsys.readouterr().out
    # Eight methods, four networks: the warm-up variants share their network's compiled
    # epoch (one per network and scan length).
    compiled = [r.getMessage() for r in caplog.records
                if r.getMessage().startswith("Compiling jit(_train_epoch)")]
    assert len(compiled) <= 4, compiled
    assert "| pre_rms_warmup | 32 |" in printed and "Xiong et al. (2020)" in printed
    on_disk = read_results(out)
    assert on_disk["experiment"] == "transformer"
    assert on_disk["dataset"]["sizes"] == {"train": N_TRAIN, "validation": N_VAL,
                                           "test": N_TEST}
    assert on_disk["config"]["warmup_steps"] == 4 and on_disk["config"]["layers"] == 1
    assert on_disk["verdict"] == transformer.verdict(on_disk) == first["verdict"]
    assert len(on_disk["verdict"]) == 5  # four normalizations, then Xiong et al.'s finding
    for method in transformer.METHODS:
        h = on_disk["runs"][method]["32"]["0"]
        assert h["steps"] == [8, 16]
        assert np.isfinite(h["train_loss"]).all()
        assert h["train_loss"][-1] < h["train_loss"][0], method
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (out / "summary.md").read_text()
    assert summary.startswith("| method | batch size |")
    assert summary.rstrip().endswith(on_disk["verdict"][-1])
    assert summary == transformer.summary(on_disk) and summary.strip() in printed
    # Resume: a third epoch continues from the checkpoint (the warm-up schedule too) and
    # equals a fresh three-epoch run.
    more = base + ["--epochs", "3", "--methods", "pre_ln_warmup"]
    resumed = transformer.main(more)["runs"]["pre_ln_warmup"]["32"]["0"]
    fresh = transformer.main(more + ["--no-resume"])["runs"]["pre_ln_warmup"]["32"]["0"]
    assert resumed["step_loss"][:16] == first["runs"]["pre_ln_warmup"]["32"]["0"]["step_loss"]
    assert resumed["step_loss"] == fresh["step_loss"]
    assert resumed["test_loss"] == fresh["test_loss"]
    # The warm-up length is part of a warm-up run's identity only.
    other = transformer.main(base + ["--epochs", "1", "--methods", "post_ln,post_ln_warmup",
                                     "--warmup-steps", "8"])["runs"]
    assert other["post_ln"]["32"]["0"]["epoch"] == [1, 2]  # resumed: its checkpoint has 2
    assert other["post_ln_warmup"]["32"]["0"]["epoch"] == [1]  # another warm-up: a new run
    # run with the keywords a notebook passes is the command line's run (its checkpoint).
    splits, _ = mnist.load_splits(train_examples=N_TRAIN)
    again = transformer.run("pre_ln_warmup", 32, splits, epochs=3, lr=3e-3, seed=0,
                            out=str(out), resume=True, progress=False, layers=1, width=16,
                            heads=2, mlp_dim=32, warmup_steps=4)
    assert again["step_loss"] == fresh["step_loss"] and again["seconds"] == fresh["seconds"]


@pytest.mark.parametrize("argv, message", [
    (["--methods", "post_ln,pre_bn"], "--methods: unknown ['pre_bn']"),
    (["--heads", "3"], "--heads (3) must divide --width (128)"),
    (["--warmup-steps", "0"], "--warmup-steps must be positive"),
    (["--layers", "0"], "--layers must be positive"),
    (["--mlp-dim", "-1"], "--mlp-dim must be positive"),
])
def test_bad_flags_are_clear_errors(argv, message, capsys):
    with pytest.raises(SystemExit):
        transformer.main(argv)
    assert message in capsys.readouterr().err


def test_run_refuses_settings_out_of_range_before_training():
    with pytest.raises(settings.SettingsError, match="--heads \\(3\\) must divide --width"):
        transformer.run("pre_ln", 32, {}, heads=3)
    with pytest.raises(settings.SettingsError, match="--warmup-steps must be positive"):
        transformer.run("pre_ln", 32, {}, transformer.TransformerSettings(), warmup_steps=0)


def test_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        transformer.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--dataset", "--data-dir", "--methods", "--batch-sizes", "--epochs", "--lr",
                 "--seed", "--out", "--train-examples", "--no-resume", "--devices",
                 "--warmup-steps", "--layers", "--width", "--heads", "--mlp-dim"):
        assert flag in text
    assert f"(default: {transformer.TRAIN_EXAMPLES})" in text
