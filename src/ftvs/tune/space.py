"""Search spaces: what `ftvs tune` varies for each arm, with practitioner defaults and YAML overrides.

A space maps a setting (a `ftvs train` config key, or for the baseline `C`, `word_ngrams`, `char_ngrams`)
to a `Param`: a numeric range (`low`/`high`, optionally `log` and `step`), a list of choices, or one fixed
value. The value type of a train setting comes from `TrainConfig`, so `num_train_epochs: {low: 3, high: 8}`
is an integer range and `learning_rate: {low: 1e-4, high: 1e-2, log: true}` a float one.

Override file (`--space SPACE.yaml`), merged onto the arm's defaults:

    learning_rate: {low: 1e-4, high: 3e-3, log: true}   # a range
    pooling: [mean, max]                                # choices
    preset: tiny                                        # fixed: no longer searched
    token_dropout: null                                 # removed: the base config's value is used
    defaults: false                                     # optional: start from an empty space instead
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path

from ftvs.errors import FtvsError, closest

ARMS = ("scratch", "finetune", "baseline")

# The ranges a practitioner would search first for small classification data sets (hundreds to a few
# thousand texts). Learning rates are log-uniform around each method's usual optimum; epochs stay modest
# because early stopping ends a run that stops improving, and pruning ends a run that trails the others.
DEFAULT_SPACES = {
    "scratch": {
        "learning_rate": {"low": 3e-4, "high": 3e-3, "log": True},
        "dropout": {"low": 0.0, "high": 0.3},
        "token_dropout": {"low": 0.0, "high": 0.2},
        "weight_decay": {"low": 0.0, "high": 0.1},
        "pooling": ["last", "mean", "max"],
        "preset": ["tiny", "small"],
        "num_train_epochs": {"low": 5, "high": 20},
    },
    "lora": {
        "learning_rate": {"low": 1e-4, "high": 2e-3, "log": True},
        "lora_r": [4, 8, 16, 32],
        "lora_alpha": [8, 16, 32, 64],
        "lora_dropout": {"low": 0.0, "high": 0.2},
        "num_train_epochs": {"low": 3, "high": 10},
        "per_device_train_batch_size": [8, 16, 32],
    },
    "full": {
        "learning_rate": {"low": 1e-5, "high": 2e-4, "log": True},
        "num_train_epochs": {"low": 2, "high": 8},
    },
    "frozen": {
        "learning_rate": {"low": 1e-4, "high": 1e-2, "log": True},
        "num_train_epochs": {"low": 3, "high": 20},
    },
    "unfreeze": {
        "learning_rate": {"low": 1e-4, "high": 3e-3, "log": True},
        "base_lr_ratio": {"low": 0.01, "high": 0.3, "log": True},
        "unfreeze_after_epochs": {"low": 1, "high": 3},
    },
    "baseline": {
        "C": {"low": 0.5, "high": 100.0, "log": True},
        "word_ngrams": ["1,1", "1,2", "1,3"],
        "char_ngrams": ["2,4", "2,5", "3,5", "1,4"],
    },
}

# baseline settings the search may vary, with their value types (n-gram ranges are "lo,hi" strings,
# because Optuna's categorical choices must be scalars)
BASELINE_TYPES = {"C": float, "word_ngrams": str, "char_ngrams": str}
# train keys that name the run rather than configure it: never searched
NOT_SEARCHABLE = {
    "arm",
    "data",
    "output_dir",
    "seed",
    "method",
    "extra",
    "disable_tqdm",
    "logging_steps",
    "save_steps",
    "num_workers",
    "model_name_or_path",
}


@dataclass
class Param:
    """One searched setting: a range (low/high), choices, or a fixed value."""

    name: str
    kind: type  # int, float or str (choices of any scalar)
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list | None = None
    fixed: object = None

    def suggest(self, trial):
        if self.choices is not None:
            return trial.suggest_categorical(self.name, self.choices)
        if self.low is None:
            return self.fixed
        if self.kind is int:
            return trial.suggest_int(
                self.name, int(self.low), int(self.high), log=self.log, step=int(self.step or 1)
            )
        return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)

    def contains(self, value) -> bool:
        if self.choices is not None:
            return value in self.choices
        if self.low is None:
            return value == self.fixed
        return isinstance(value, int | float) and self.low <= value <= self.high

    def edge_values(self) -> list:
        """Values that must all be valid settings: the range ends, every choice, or the fixed value."""
        if self.choices is not None:
            return list(self.choices)
        return [self.fixed] if self.low is None else [self.kind(self.low), self.kind(self.high)]

    def to_dict(self):
        if self.choices is not None:
            return list(self.choices)
        if self.low is None:
            return self.fixed
        out = {"low": self.low, "high": self.high}
        if self.log:
            out["log"] = True
        if self.step is not None:
            out["step"] = self.step
        return out


def space_name(arm: str, method: str | None) -> str:
    """The default space's name: the arm, or for the fine-tuned arm its method."""
    if arm not in ARMS:
        raise FtvsError(f"unknown arm {arm!r}{closest(arm, ARMS)}; use one of {', '.join(ARMS)}")
    return (method or "lora") if arm == "finetune" else arm


def value_types(arm: str) -> dict[str, type]:
    """Searchable keys of an arm and their value types."""
    if arm == "baseline":
        return dict(BASELINE_TYPES)
    from ftvs.config import FINETUNE_ONLY, SCRATCH_ONLY, TrainConfig

    other_arm_only = FINETUNE_ONLY if arm == "scratch" else SCRATCH_ONLY
    hints = typing.get_type_hints(TrainConfig)
    types = {}
    for f in dataclasses.fields(TrainConfig):
        if f.name in NOT_SEARCHABLE or f.name in other_arm_only:
            continue
        kind = hints[f.name]
        scalar = (
            next((t for t in typing.get_args(kind) if t is not type(None)), kind)
            if typing.get_args(kind)
            else kind
        )
        if scalar in (int, float, str, bool):
            types[f.name] = scalar
    return types


def _number(key: str, field: str, value, kind: type):
    """`value` as the setting's own type, by the rule of `ftvs train` (YAML 1.1 reads `1e-4` as a string:
    it is the number it means; 1.5 is not an integer, true is not a number): never silently rounded."""
    from ftvs.config import convert_value

    number = convert_value(value, kind)
    if number is None:
        what, example = ("a whole number", 3) if kind is int else ("a number", 0.001)
        raise FtvsError(
            f"search space {key}.{field}={value!r} is not {what} ({key} is {what}); write e.g. "
            f"{field}: {example}"
        )
    return number


def parse_param(key: str, spec, kind: type) -> Param:
    """A `Param` from its YAML form: {low, high, log?, step?}, a list of choices, or a scalar (fixed)."""
    if isinstance(spec, list):
        if not spec:
            raise FtvsError(f"search space {key}: empty list of choices; give at least one value")
        choices = [_number(key, "choices", v, kind) if kind in (int, float) else v for v in spec]
        return Param(key, kind, choices=choices)
    if isinstance(spec, dict):
        unknown = set(spec) - {"low", "high", "log", "step"}
        if unknown or not {"low", "high"} <= set(spec):
            raise FtvsError(
                f"search space {key}: a range needs low and high (and optionally log, step), got "
                f"{sorted(spec)}; e.g. {key}: {{low: 0.0, high: 0.3}}"
            )
        if kind not in (int, float):
            raise FtvsError(
                f"search space {key}: {key} is not numeric, so it takes a list of choices, not a range"
            )
        low, high = (_number(key, f, spec[f], kind) for f in ("low", "high"))
        log = bool(spec.get("log", False))
        if not low < high:
            raise FtvsError(
                f"search space {key}: low ({low}) must be below high ({high}); swap them or fix it "
                f"with `{key}: {low}`"
            )
        if log and low <= 0:
            raise FtvsError(
                f"search space {key}: a log range needs low > 0 (got {low}); raise low or drop log"
            )
        step = _number(key, "step", spec["step"], kind) if spec.get("step") is not None else None
        if log and step is not None:
            raise FtvsError(f"search space {key}: log and step cannot be combined; drop one of them")
        return Param(key, kind, low=low, high=high, log=log, step=step)
    return Param(key, kind, fixed=_number(key, "value", spec, kind) if kind in (int, float) else spec)


def build_space(
    arm: str, method: str | None = None, override: dict | str | Path | None = None, fixed: dict | None = None
) -> dict[str, Param]:
    """The arm's default space with `override` (a mapping or a YAML file path) merged onto it. A setting
    the user `fixed` (--set, --config, flags: every trial's base) is never searched: it leaves the default
    space, and an override may not search it."""
    name = space_name(arm, method)
    fixed = fixed or {}
    if isinstance(override, str | Path):
        from ftvs.config import load_yaml

        override = load_yaml(override)
    override = dict(override or {})
    start_from_defaults = override.pop("defaults", True)
    if not isinstance(start_from_defaults, bool):
        raise FtvsError(f"search space: defaults must be true or false, got {start_from_defaults!r}")
    specs = {k: v for k, v in DEFAULT_SPACES[name].items() if k not in fixed} if start_from_defaults else {}
    types = value_types(arm)
    for key, spec in override.items():
        if key not in types:
            why = "is not searchable" if key in NOT_SEARCHABLE else f"is not a setting of the {name} arm"
            raise FtvsError(
                f"search space key {key!r} {why}{closest(key, types)}; searchable: {', '.join(sorted(types))}"
            )
        if key in fixed and spec is not None and spec != fixed[key]:
            raise FtvsError(
                f"search space key {key!r} is fixed to {fixed[key]!r} by the settings of every trial "
                f"(--set, --config or a flag); drop it from the space or from the fixed settings"
            )
        if spec is None:
            specs.pop(key, None)
        else:
            specs[key] = spec
    if not specs:
        raise FtvsError(f"search space for {name} is empty; list at least one setting to search")
    return {key: parse_param(key, spec, types[key]) for key, spec in specs.items()}


def searched(space: dict[str, Param]) -> dict[str, Param]:
    """The parameters Optuna varies (fixed ones are settings, not parameters)."""
    return {k: p for k, p in space.items() if p.fixed is None}


def suggest(trial, space: dict[str, Param]) -> dict:
    """One trial's settings: a suggested value for every searched key, the fixed value for the others."""
    return {key: param.suggest(trial) for key, param in space.items()}


def ngram_range(text: str) -> tuple[int, int]:
    """A baseline n-gram range from its "lo,hi" form."""
    try:
        lo, hi = (int(v) for v in str(text).split(","))
    except ValueError:
        raise FtvsError(f'n-gram range {text!r} must be two integers like "1,2"') from None
    if not 1 <= lo <= hi:
        raise FtvsError(f"n-gram range {text!r} needs 1 <= low <= high")
    return lo, hi
