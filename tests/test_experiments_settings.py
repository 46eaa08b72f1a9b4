"""The experiments' settings (lnjax.experiments.settings): one frozen dataclass per
experiment, its defaults stated once, the flags and the documentation written from it."""

import argparse
import dataclasses

import pytest

from lnjax.experiments import convnet, pi_mnist, seq_mnist, settings, transformer

EXPERIMENTS = [pi_mnist, seq_mnist, convnet, transformer]


@pytest.fixture(autouse=True)
def wide_help(monkeypatch):
    """--help at 400 columns: no long default wrapped within a word."""
    monkeypatch.setenv("COLUMNS", "400")


def help_text(cls):
    return " ".join(settings.parser(cls, "x").format_help().split())


def shown(default):
    if isinstance(default, tuple):
        return ",".join(map(str, default))
    return str(default)


@pytest.mark.parametrize("module", EXPERIMENTS)
def test_every_field_is_a_flag_whose_default_is_the_fields(module):
    cls = module.EXPERIMENT.settings
    p = settings.parser(cls, "x")
    assert settings.from_args(cls, p.parse_args([])) == cls()  # no flag: the defaults
    text = help_text(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):  # a switch: --tensorboard, --no-resume
            assert (flag if f.default is False else f"--no-{f.name}") in text
            continue
        metavar = "{" + ",".join(settings.DATASETS) + "}" if f.name == "dataset" \
            else f.name.upper()
        at = text.index(f"{flag} {metavar} ")  # the option's help (the usage has "NAME]")
        default = text[text.index("(default: ", at):]
        if f.name == "methods":  # all the methods that exist
            assert f.default == module.METHODS and default.startswith("(default: all)")
        elif f.default is None:
            assert default.startswith("(default: ") and not default.startswith("(default: None")
        else:
            assert default.startswith(f"(default: {shown(f.default)})"), (flag, default[:40])


def test_transformer_defaults_are_the_flags_and_runs():
    """One warm-up length: what --help shows, what the flags give and what run uses."""
    s = transformer.TransformerSettings()
    assert s.warmup_steps == 40 and s.lr == 3e-3 and s.train_examples == transformer.TRAIN_EXAMPLES
    assert "(default: 40)" in help_text(transformer.TransformerSettings)
    assert settings.from_args(transformer.TransformerSettings,
                              settings.parser(transformer.TransformerSettings, "x")
                              .parse_args(["--warmup-steps", "8"])).warmup_steps == 8


def test_flags_parse_into_the_fields_types():
    cls = convnet.ConvNetSettings
    args = settings.parser(cls, "x").parse_args([
        "--batch-sizes", "16,32", "--data-parallel", "none", "--channels", "8,16",
        "--momentum", "0.5", "--no-resume", "--no-progress", "--tensorboard", "--devices", "2"])
    s = settings.from_args(cls, args)
    assert s.batch_sizes == (16, 32) and s.data_parallel == () and s.channels == (8, 16)
    assert (s.momentum, s.resume, s.progress, s.tensorboard, s.devices) == (0.5, False, False,
                                                                             True, 2)
    assert s.epochs == cls().epochs == 3 and s.train_examples == 8000


def test_settings_are_frozen_and_lists_become_tuples():
    s = pi_mnist.PiMnistSettings(hidden=[32, 16], batch_sizes=[8])
    assert s.hidden == (32, 16) and s.batch_sizes == (8,)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.epochs = 3
    assert dataclasses.replace(s, epochs=3).epochs == 3 and s.epochs == 5
    assert s.record()["hidden"] == [32, 16] and "progress" not in s.record()


@pytest.mark.parametrize("cls, changes, message", [
    (settings.Settings, {"epochs": 0}, "--epochs must be at least 1, got 0"),
    (settings.Settings, {"batch_sizes": (8, 0)}, "--batch-sizes must be positive, got 8,0"),
    (settings.Settings, {"lr": 0.0}, "--lr must be positive"),
    (settings.Settings, {"dataset": "cifar"}, "--dataset: unknown ['cifar']"),
    (settings.Settings, {"validation_size": 0}, "--validation-size must be positive"),
    (pi_mnist.PiMnistSettings, {"methods": ("layernorm", "groupnorm")},
     "--methods: unknown ['groupnorm']; choose from ['baseline', 'batchnorm', 'layernorm']"),
    (convnet.ConvNetSettings, {"channels": (8, 12)}, "--channels must be positive multiples of 8"),
    (convnet.ConvNetSettings, {"momentum": 1.0}, "--momentum must be in [0, 1)"),
    (transformer.TransformerSettings, {"heads": 3}, "--heads (3) must divide --width (128)"),
    (seq_mnist.SeqMnistSettings, {"hidden": 0}, "--hidden must be positive"),
])
def test_values_out_of_range_are_refused_with_the_flag_named(cls, changes, message):
    with pytest.raises(settings.SettingsError) as info:
        cls(**changes)
    assert message in str(info.value)


def test_a_subclass_changing_a_default_keeps_the_help_and_the_check():
    @settings.document("Short runs.")
    @dataclasses.dataclass(frozen=True)
    class Short(settings.Settings):
        epochs: int = 7

    text = help_text(Short)
    assert "--epochs EPOCHS epochs per run (default: 7)" in text
    with pytest.raises(settings.SettingsError, match="--epochs must be at least 1"):
        Short(epochs=0)
    with pytest.raises(SystemExit):
        settings.parser(Short, "x").parse_args(["--epochs", "x"])


def test_the_documentation_is_written_from_the_fields():
    doc = transformer.TransformerSettings.__doc__
    assert doc.startswith("The settings of ``python -m lnjax.experiments.transformer``")
    assert "Attributes:" in doc
    assert "warmup_steps: steps of linear warm-up of the \\*_warmup methods (``--warmup-steps``, " \
        "default: 40)." in doc
    assert "resume: false with ``--no-resume``: start every run afresh" in doc
    assert "train_examples: train on the first N of the 55,000 training examples " \
        "(``--train-examples``, default: 12800)." in doc


def test_comma_list():
    assert settings.comma_list(int)("4, 8,") == [4, 8]
    for bad in ("", "a,b"):
        with pytest.raises(argparse.ArgumentTypeError):
            settings.comma_list(int)(bad)
