"""The settings of a training experiment: one frozen dataclass, its defaults, its flags.

:class:`Settings` holds what every training experiment takes (the data, the
methods and batch sizes, the epochs, the seeds, the curves, the output
folder); an experiment subclasses it to add its own fields and to state its
own defaults. Each field carries its help text and its checks in its
annotation (a :class:`Flag`), so one declaration gives the default that
``run`` uses, the command-line flag (``--batch-sizes`` for ``batch_sizes``:
:func:`parser`) and the class's documentation (its ``Attributes`` section is
written from the fields by :func:`document`).

Example:
  >>> s = Settings(epochs=2, batch_sizes=(16, 4))
  >>> s.epochs, s.batch_sizes, s.seed
  (2, (16, 4), 0)
  >>> Settings(epochs=0)
  Traceback (most recent call last):
  ...
  lnjax.experiments.settings.SettingsError: --epochs must be at least 1, got 0
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import typing
from collections.abc import Callable, Mapping
from typing import Annotated, Any, TypeVar

from lnjax import data

__all__ = ["DATASETS", "EVAL_BATCH_SIZE", "EVAL_EXAMPLES", "EVALS_PER_EPOCH", "Settings",
           "SettingsError", "Flag", "at_least_one", "comma_list", "document", "from_args",
           "parser", "positive"]

DATASETS = ("auto", *data.NAMES)
"""The choices of ``--dataset``: ``"auto"`` and :data:`lnjax.data.NAMES`."""

EVAL_EXAMPLES = 2000
"""The default ``--eval-examples``: the size of the curves' subset of each split."""

EVALS_PER_EPOCH = 4
"""The default ``--evals-per-epoch``."""

EVAL_BATCH_SIZE = 200
"""The default ``--eval-batch-size``: on a CPU, the experiments' networks evaluate faster per
example in batches of a few hundred than of a thousand (their activations stay in the caches;
the speed guide's "The evaluation batch")."""

S = TypeVar("S", bound="Settings")


class SettingsError(ValueError):
    """A setting's value is out of its range; the message names the flag."""


def comma_list(kind: Callable[[str], Any]) -> Callable[[str], list]:
    """An argparse type: a comma-separated list of ``kind``.

    Example:
      >>> comma_list(int)("128,4")
      [128, 4]
    """
    def parse(text: str) -> list:
        try:
            out = [kind(v) for v in text.split(",") if v.strip()]
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{text!r}: {e}") from None
        if not out:
            raise argparse.ArgumentTypeError("an empty list")
        return out
    return parse


def at_least_one(value: int) -> str | None:
    """A check of a :class:`Flag`: ``value`` is at least 1 (epochs)."""
    return None if value >= 1 else "must be at least 1"


def positive(value: Any) -> str | None:
    """A check of a :class:`Flag`: ``value`` (each value of a tuple) is above 0."""
    values = value if isinstance(value, tuple) else (value,)
    return None if all(v is None or v > 0 for v in values) else "must be positive"


@dataclasses.dataclass(frozen=True)
class Flag:
    """What a settings field's flag and documentation need, given in its annotation::

        epochs: Annotated[int, Flag("epochs per run", parse=int)] = 1

    A subclass that only changes a field's default writes ``epochs: int = 5``:
    the help, parser and checks stay the base class's (a ``Flag`` in the
    subclass's annotation changes only what it sets).

    Attributes:
      help: the flag's help text and the field's documentation.
      parse: an argparse type for the flag (``int``, ``comma_list(int)``);
        ``None``: a boolean switch (``store_true``, or ``store_false`` for a
        ``flag`` given as ``--no-...``) when the default is a bool, else ``str``.
      check: ``check(value) -> message or None`` (e.g. :func:`positive`); the
        message is prefixed with the flag.
      choices: the values allowed (each of a tuple's values).
      flag: the flag, when it is not the field's name with dashes.
      unset: what a default of ``None`` means (``"all"``), for the help.
    """

    help: str | None = None
    parse: Callable[[str], Any] | None = None
    check: Callable[[Any], str | None] | None = None
    choices: tuple[str, ...] | None = None
    flag: str | None = None
    unset: str | None = None


@functools.cache
def _own_flags(klass: type) -> dict[str, dict[str, Any]]:
    """The :class:`Flag` entries of the fields ``klass`` itself annotates."""
    own = vars(klass).get("__annotations__", {})
    hints = typing.get_type_hints(klass, include_extras=True) if own else {}
    out: dict[str, dict[str, Any]] = {}
    for name in own:
        for extra in getattr(hints.get(name), "__metadata__", ()):
            if isinstance(extra, Flag):
                out[name] = {k: v for k, v in vars(extra).items() if v is not None}
    return out


def _meta(cls: type, name: str) -> dict[str, Any]:
    """A field's :class:`Flag` entries, the base classes' first (a subclass may change only
    the default, or some entries)."""
    out: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            out.update(_own_flags(klass).get(name, {}))
    return out


def _flag(name: str, meta: Mapping[str, Any]) -> str:
    return meta.get("flag") or "--" + name.replace("_", "-")


def _shown(value: Any, unset: str = "None") -> str:
    """A default as the command line writes it: ``128,4`` for a tuple."""
    if value is None:
        return unset
    if isinstance(value, tuple):
        return ",".join(map(str, value)) if value else "none"
    return str(value)


def _doc(cls: type) -> str:
    lines = ["", "", "    Attributes:"]
    for f in dataclasses.fields(cls):
        meta = _meta(cls, f.name)
        text = meta.get("help", "").replace("*", "\\*")  # no emphasis in reStructuredText
        flag = _flag(f.name, meta)
        default = _shown(f.default, meta.get("unset", "None"))
        if flag.startswith("--no-"):
            lines.append(f"      {f.name}: false with ``{flag}``: {text} (default: {default}).")
        else:
            lines.append(f"      {f.name}: {text} (``{flag}``, default: {default}).")
    return "\n".join(lines) + "\n"


def document(summary: str) -> Callable[[type[S]], type[S]]:
    """A class decorator for a settings dataclass: its docstring becomes ``summary`` and an
    ``Attributes`` section written from its fields (help, flag and default).

    Example:
      >>> @document("Two epochs by default.")
      ... @dataclasses.dataclass(frozen=True)
      ... class Short(Settings):
      ...     epochs: int = 2
      >>> Short().epochs, Short(epochs=3).epochs
      (2, 3)
    """
    def decorate(cls: type[S]) -> type[S]:
        cls.__doc__ = summary + _doc(cls)
        return cls
    return decorate


def _tuple_of(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        value = parse(text)
        return tuple(value) if isinstance(value, list) else value
    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


@document("""The settings every training experiment shares; an experiment's subclass
    adds its own fields and states its own defaults (``methods``, ``batch_sizes``,
    ``epochs``, ``lr``, ``out``, ``train_examples``).""")
@dataclasses.dataclass(frozen=True)
class Settings:
    dataset: Annotated[str, Flag("data set; 'auto' takes the first of mnist, fashion_mnist "
                                 "found", choices=DATASETS)] = "auto"
    data_dir: Annotated[str | None, Flag("a folder of MNIST-format IDX files or a TFDS "
                                         "data_dir", unset="the places lnjax.data.load looks")
                        ] = None
    methods: Annotated[tuple[str, ...], Flag("the methods to train, comma-separated",
                                             parse=comma_list(str))] = ()
    batch_sizes: Annotated[tuple[int, ...], Flag("comma-separated batch sizes",
                                                 parse=comma_list(int), check=positive)] = (128,)
    epochs: Annotated[int, Flag("epochs per run", parse=int, check=at_least_one)] = 1
    lr: Annotated[float, Flag("Adam learning rate", parse=float, check=positive)] = 1e-3
    seed: Annotated[int, Flag("seed of the parameters and batch order", parse=int)] = 0
    seeds: Annotated[int, Flag("run each setting with N seeds: --seed, --seed + 1, ...; the "
                               "table shows mean ± standard deviation, the figures the mean and "
                               "min-max", parse=int, check=positive)] = 1
    eval_examples: Annotated[int, Flag("the curves' fixed subset of the validation and test "
                                       "splits (the table's numbers are on the whole splits)",
                                       parse=int, check=positive)] = EVAL_EXAMPLES
    evals_per_epoch: Annotated[int, Flag("evaluations of the curves' subsets per epoch",
                                         parse=int, check=positive)] = EVALS_PER_EPOCH
    eval_batch_size: Annotated[int, Flag("examples per evaluation batch (a few hundred keep a "
                                         "CPU's caches warm; an accelerator may take more)",
                                         parse=int, check=positive)] = EVAL_BATCH_SIZE
    tensorboard: Annotated[bool, Flag("write TensorBoard event files to OUT/tensorboard/<run> "
                                      "(needs tensorboardX: pip install "
                                      "\"lnjax[tensorboard]\")")] = False
    train_examples: Annotated[int | None, Flag("train on the first N of the 55,000 training "
                                               "examples", parse=int, check=positive,
                                               unset="all")] = None
    validation_size: Annotated[int, Flag("the last N examples of the IDX training file form "
                                         "the validation split", parse=int, check=positive)
                               ] = data.VALIDATION_SIZE
    out: Annotated[str, Flag("folder for results.json, the figure, checkpoints")
                   ] = "runs/experiment"
    resume: Annotated[bool, Flag("start every run afresh instead of resuming from its "
                                 "checkpoint", flag="--no-resume")] = True
    progress: Annotated[bool, Flag("no progress bars", flag="--no-progress")] = True
    devices: Annotated[int | None, Flag("train data-parallel over the first N devices",
                                        parse=int, check=positive, unset="all")] = None

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):  # a list from a caller: kept as a tuple (frozen)
                object.__setattr__(self, f.name, value := tuple(value))
            meta = _meta(type(self), f.name)
            flag = _flag(f.name, meta)
            choices = meta.get("choices")
            if choices is not None:
                bad = [v for v in (value if isinstance(value, tuple) else (value,))
                       if v not in choices]
                if bad:
                    raise SettingsError(f"{flag}: unknown {bad}; choose from {list(choices)}")
            message = meta["check"](value) if value is not None and "check" in meta else None
            if message:
                raise SettingsError(f"{flag} {message}, got {_shown(value)}")
        self.check()

    def check(self) -> None:
        """Checks that span several fields (a subclass's; raise :class:`SettingsError`)."""

    def record(self) -> dict[str, Any]:
        """The settings as ``results.json``'s ``"config"`` holds them (lists for tuples,
        ``progress`` left out)."""
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items() if k != "progress"}


def parser(cls: type[Settings], description: str) -> argparse.ArgumentParser:
    """The command line of ``cls``: a flag per field, its help and default from the field.

    Flags not given keep the dataclass's default (:func:`from_args`); ``--help``
    shows the defaults as the command line writes them.

    Example:
      >>> p = parser(Settings, "an experiment")
      >>> sorted(vars(p.parse_args(["--epochs", "3", "--no-resume"])).items())
      [('epochs', 3), ('resume', False)]
    """
    p = argparse.ArgumentParser(description=description, argument_default=argparse.SUPPRESS)
    for f in dataclasses.fields(cls):
        meta = _meta(cls, f.name)
        flag, text = _flag(f.name, meta), meta.get("help", "")
        default = _shown(f.default, meta.get("unset", "None"))
        if isinstance(f.default, bool) and "parse" not in meta:
            action = "store_false" if flag.startswith("--no-") else "store_true"
            p.add_argument(flag, dest=f.name, action=action, help=text)
            continue
        choices = meta.get("choices")
        if choices is not None and not isinstance(f.default, tuple):
            p.add_argument(flag, dest=f.name, choices=choices, help=f"{text} (default: {default})")
            continue
        if choices is not None:
            text = f"{text}, from {', '.join(choices)}"
            if f.default == choices:
                default = "all"
        p.add_argument(flag, dest=f.name, type=_tuple_of(meta.get("parse", str)),
                       help=f"{text} (default: {default})")
    return p


def from_args(cls: type[S], args: argparse.Namespace) -> S:
    """The settings of parsed flags (``parser(cls, ...).parse_args(...)``): the flags
    given, the defaults for the others.

    Raises:
      SettingsError: a value out of its range (the message names the flag).
    """
    return cls(**vars(args))
