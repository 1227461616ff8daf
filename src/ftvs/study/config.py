"""The study config: built-in presets, YAML files, `--set` overrides, validation and defaults.

The format is described in docs/study.md; `normalize_config` turns what a user wrote into a fully
explicit dict (every default filled in) so the plan and the registry never guess.
"""

from __future__ import annotations

import copy
import importlib.resources
import re
from pathlib import Path

import yaml

from ftvs.comparison.decide import check_constraints
from ftvs.config import FIELDS, RESUME_FREE_KEYS, build_config
from ftvs.data import DEFAULT_TOKENIZER
from ftvs.errors import FtvsError, closest, is_count
from ftvs.study.tuning import check_tuning

KINDS = ("baseline", "scratch", "finetune", "distill")  # distill: a scratch student of another arm
TOP_KEYS = {
    "name",
    "description",
    "data",
    "seeds",
    "train",
    "arms",
    "sweeps",
    "launcher",
    "compare",
    "decide",
    "report",
    "reference_results",
    "notes",
    "expected_minutes",
    "tune",
}
DATA_DEFAULTS = {
    "source": None,
    "max_train_examples": None,
    "max_val_examples": None,
    "max_test_examples": None,
    "validation_split": 0.1,
    "test_split": 0.2,
    "seed": 0,
    "tokenizer": DEFAULT_TOKENIZER,
    "text_column": None,
    "label_column": None,
    "remove_headers": True,
    "max_chars": None,
    "unlabeled": None,  # a file of texts without labels, for distilled students (docs/distill.md)
    "unlabeled_from_rest": None,  # up to N of the training texts max_train_examples leaves out, unlabeled
}
ARM_META_KEYS = {"name", "arm", "launcher", "enabled", "tune", "teacher"}
BASELINE_KEYS = {
    "C",
    "C_grid",
    "word_ngrams",
    "char_ngrams",
    "min_df",
    "max_features",
    "max_iter",
    "class_weights",
}
SIZE_KEYS = ("n_layer", "n_head", "n_embd", "d_ff")
# config keys that may change without making a finished run stale: what `--resume` tolerates, plus the tags
FREE_KEYS = RESUME_FREE_KEYS | {"extra"}
_NOT_TRAIN_KEYS = ("data", "output_dir", "seed", "extra")  # set by the study per run
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_NAME_RULE = "may only use letters, digits, '.', '_', '+', '-'"


def preset_names() -> list[str]:
    root = importlib.resources.files("ftvs") / "presets"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def preset_text(name: str) -> str:
    names = preset_names()
    if name not in names:
        raise FtvsError(
            f"unknown study preset {name!r}{closest(name, names)}; choose from {', '.join(names)}"
        )
    return (importlib.resources.files("ftvs") / "presets" / f"{name}.yaml").read_text(encoding="utf-8")


def parse_yaml(text: str, origin: str) -> dict:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise FtvsError(
            f"study config {origin} is not valid YAML ({str(e).splitlines()[0]}); fix its syntax"
        ) from None
    if not isinstance(data, dict):
        raise FtvsError(f"study config {origin} must be a mapping (name, data, seeds, arms, sweeps, ...)")
    return data


def apply_override(cfg: dict, assignment: str) -> None:
    """`--set a.b.c=VALUE` (VALUE parsed as YAML). A list of named dicts (arms) is indexed by name."""
    if "=" not in assignment:
        raise FtvsError(f"--set {assignment!r} needs KEY=VALUE, e.g. --set train.num_train_epochs=2")
    key, raw = assignment.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise FtvsError(f"--set {assignment!r} has an empty key")
    node = cfg
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            match = [a for a in node if isinstance(a, dict) and a.get("name") == part]
            if not match:
                names = [a.get("name") for a in node if isinstance(a, dict)]
                raise FtvsError(
                    f"--set {key}: no entry named {part!r}{closest(part, names)} in {'.'.join(parts[:i])}"
                )
            node = match[0]
        else:
            if not isinstance(node.get(part), dict | list):
                node[part] = {}
            node = node[part]
    if isinstance(node, list):
        raise FtvsError(f"--set {key}: cannot assign into a list; name an entry (e.g. arms.NAME.KEY=VALUE)")
    node[parts[-1]] = value


def load_study_config(config_path=None, preset=None, overrides=()) -> tuple[dict, str | None]:
    if config_path and preset:
        raise FtvsError("give a study CONFIG file or --preset NAME, not both")
    if config_path and not Path(config_path).exists() and str(config_path) in preset_names():
        config_path, preset = None, str(config_path)  # `ftvs study quick` = `ftvs study --preset quick`
    if preset:
        raw, hint = parse_yaml(preset_text(preset), f"preset {preset}"), preset
    elif config_path:
        path = Path(config_path)
        if not path.is_file():
            raise FtvsError(
                f"study config {path} not found; give a YAML file or a preset ({', '.join(preset_names())})"
            )
        raw, hint = parse_yaml(path.read_text(encoding="utf-8"), str(path)), path.stem
    else:
        raise FtvsError(f"give a study CONFIG.yaml or --preset NAME (presets: {', '.join(preset_names())})")
    for assignment in overrides:
        apply_override(raw, assignment)
    return normalize_config(raw, hint), preset


# --------------------------------------------------------------------------------------------------
# Validation and defaults
# --------------------------------------------------------------------------------------------------


def normalize_config(raw: dict, name_hint: str = "study") -> dict:
    """Fill defaults and validate a study config; returns a new, fully explicit dict."""
    cfg = copy.deepcopy(raw)
    _check_keys(cfg, TOP_KEYS, "the study config")
    cfg["name"] = str(cfg.get("name") or name_hint)
    if not _NAME.match(cfg["name"]):
        raise FtvsError(f"study name {cfg['name']!r} {_NAME_RULE}")
    cfg["data"] = _normalize_data(cfg.get("data"))
    cfg["seeds"] = _normalize_seeds(cfg.get("seeds", [0]))
    train = dict(cfg.get("train") or {})
    for k in train:
        if k not in FIELDS or k in ("arm", *_NOT_TRAIN_KEYS):
            raise FtvsError(
                f"study config: train.{k} is not a shared training setting{closest(str(k), FIELDS)}"
            )
    cfg["train"] = train
    cfg["launcher"] = _launcher(cfg.get("launcher"), "launcher")
    cfg["arms"] = _normalize_arms(cfg.get("arms") or [], train)
    cfg["sweeps"] = _normalize_sweeps(dict(cfg.get("sweeps") or {}), cfg["arms"])
    check_tuning(cfg)  # `tune:` blocks (ftvs.study.tuning)
    cfg["compare"] = bool(cfg.get("compare", True))
    cfg["report"] = bool(cfg.get("report", True))
    cfg["decide"] = check_constraints(cfg.get("decide"), "study config: decide.")
    cfg["reference_results"] = cfg.get("reference_results") or []
    cfg.setdefault("description", "")
    return cfg


def _as_list(value, what: str) -> list:
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return list(value)
    if isinstance(value, int | float | str):
        return [value]
    raise FtvsError(f"study config: {what} must be a list")


def _check_keys(d: dict, allowed, where: str) -> None:
    for k in d:
        if k not in allowed:
            raise FtvsError(f"study config: unknown key {k!r} in {where}{closest(str(k), allowed)}")


def _normalize_data(given) -> dict:
    data = {**DATA_DEFAULTS, **(given or {})}
    _check_keys(data, DATA_DEFAULTS, "data")
    if not data["source"]:
        raise FtvsError(
            "study config: data.source is missing; e.g. 20newsgroups, hf:PolyAI/banking77 or a CSV folder"
        )
    for key in ("max_train_examples", "max_val_examples", "max_test_examples", "unlabeled_from_rest"):
        if data[key] is not None and not is_count(data[key]):
            raise FtvsError(f"study config: data.{key} must be a positive integer or null, got {data[key]!r}")
    return data


def _normalize_seeds(given) -> list[int]:
    seeds = _as_list(given, "seeds")
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise FtvsError(f"study config: seeds must be a non-empty list of integers, got {given!r}")
    if len(set(seeds)) != len(seeds):
        raise FtvsError(f"study config: seeds {seeds} repeat a seed")
    return seeds


def _normalize_arms(arms, train: dict) -> list[dict]:
    if not isinstance(arms, list) or not arms:
        raise FtvsError("study config: arms must be a non-empty list of {name, arm, ...} entries")
    seen = set()
    out_arms = []
    for i, arm in enumerate(arms):
        out_arms.append(_normalize_arm(arm, i, train, seen))
    _check_teachers(out_arms)
    return out_arms


def _check_teachers(arms: list[dict]) -> None:
    """A distill arm names its teacher: another arm of the study, not itself a student."""
    by_name = {a["name"]: a for a in arms}
    for a in arms:
        if a["arm"] != "distill":
            if a.get("teacher") is not None:
                raise FtvsError(
                    f"study config: arms.{a['name']} has a teacher but arm {a['arm']!r}; "
                    "a student is an arm of kind distill (arm: distill, teacher: ARM_NAME)"
                )
            continue
        t = a.get("teacher")
        if t not in by_name or by_name[t]["arm"] == "distill" or t == a["name"]:
            teachers = [n for n, b in by_name.items() if b["arm"] != "distill"]
            raise FtvsError(
                f"study config: arms.{a['name']}.teacher={t!r} must name another arm that is not a student "
                f"({', '.join(teachers)}){closest(str(t), teachers)}"
            )
        if not by_name[t]["enabled"] and a["enabled"]:
            raise FtvsError(
                f"study config: arms.{a['name']}'s teacher {t!r} is disabled; enable it or this arm"
            )


def _normalize_arm(arm, i: int, train: dict, seen: set) -> dict:
    if not isinstance(arm, dict):
        raise FtvsError(f"study config: arms[{i}] must be a mapping with at least name and arm")
    arm = dict(arm)
    kind = arm.get("arm")
    if kind not in KINDS:
        raise FtvsError(
            f"study config: arms[{i}].arm={kind!r} must be one of {', '.join(KINDS)}"
            f"{closest(str(kind), KINDS)}"
        )
    name = str(arm.get("name") or (kind if kind == "baseline" else f"{kind}-{i}"))
    if not _NAME.match(name):
        raise FtvsError(f"study config: arm name {name!r} {_NAME_RULE}")
    if name in seen:
        raise FtvsError(f"study config: two arms are named {name!r}; names must be unique")
    seen.add(name)
    arm["name"] = name
    arm["enabled"] = bool(arm.get("enabled", True))
    arm["launcher"] = _launcher(arm.get("launcher"), f"arms.{name}.launcher")
    if kind == "baseline":
        _check_keys(arm, BASELINE_KEYS | ARM_META_KEYS, f"arms.{name} (baseline)")
        return arm
    settings = {k: v for k, v in arm.items() if k not in ARM_META_KEYS}
    for k in settings:
        if k not in FIELDS or k in _NOT_TRAIN_KEYS:
            raise FtvsError(
                f"study config: unknown training key {k!r} in arms.{name}{closest(str(k), FIELDS)}"
            )
    try:  # fail now, not after an hour of other runs
        build_config({**train, **settings}, {"arm": train_kind(kind)})
    except FtvsError as e:
        raise FtvsError(f"study config arms.{name}: {e}") from None
    return arm


def train_kind(kind: str) -> str:
    """The `ftvs train` arm a study arm kind runs as (a distill arm trains a from-scratch student)."""
    return "scratch" if kind == "distill" else kind


def _normalize_sweeps(sweeps: dict, arms: list[dict]) -> dict:
    _check_keys(sweeps, {"data_size", "model_size"}, "sweeps")
    if sweeps.get("data_size"):
        sweeps["data_size"] = _normalize_data_size(sweeps["data_size"], [a["name"] for a in arms])
    else:
        sweeps.pop("data_size", None)
    if sweeps.get("model_size"):
        sweeps["model_size"] = _normalize_model_size(sweeps["model_size"], arms)
    else:
        sweeps.pop("model_size", None)
    return sweeps


def _normalize_data_size(given, names: list[str]) -> dict:
    ds = dict(given) if isinstance(given, dict) else {"fractions": given}
    _check_keys(ds, {"fractions", "arms", "resample_per_seed"}, "sweeps.data_size")
    fractions = sorted(
        {float(f) for f in _as_list(ds.get("fractions"), "sweeps.data_size.fractions")} | {1.0}
    )
    if not fractions or not all(0 < f <= 1 for f in fractions):
        raise FtvsError(
            f"study config: sweeps.data_size.fractions must be numbers in (0, 1], got {ds.get('fractions')}"
        )
    ds["fractions"] = fractions
    ds["arms"] = [str(a) for a in _as_list(ds.get("arms") or names, "sweeps.data_size.arms")]
    for a in ds["arms"]:
        if a not in names:
            raise FtvsError(f"study config: sweeps.data_size.arms names unknown arm {a!r}{closest(a, names)}")
    ds["resample_per_seed"] = bool(ds.get("resample_per_seed", True))
    return ds


def _normalize_model_size(given, arms: list[dict]) -> dict:
    ms = dict(given) if isinstance(given, dict) else {"sizes": given}
    _check_keys(ms, {"arm", "sizes"}, "sweeps.model_size")
    scratch = [a["name"] for a in arms if a["arm"] == "scratch"]
    ms["arm"] = ms.get("arm") or (scratch[0] if scratch else None)
    if ms["arm"] not in scratch:
        raise FtvsError(
            f"study config: sweeps.model_size.arm must name a scratch arm ({', '.join(scratch) or 'none'})"
        )
    ms["sizes"] = [
        _size_spec(s, i) for i, s in enumerate(_as_list(ms.get("sizes"), "sweeps.model_size.sizes"))
    ]
    if not ms["sizes"]:
        raise FtvsError("study config: sweeps.model_size.sizes is empty")
    return ms


def _launcher(value, where: str) -> dict:
    if not value:
        return {}
    if not isinstance(value, dict):
        raise FtvsError(f"study config: {where} must be a mapping like {{num_processes: 2}}")
    n = value.get("num_processes", 1)
    if not is_count(n):
        raise FtvsError(f"study config: {where}.num_processes must be a positive integer, got {n!r}")
    return dict(value)


# --------------------------------------------------------------------------------------------------
# From-scratch model sizes
# --------------------------------------------------------------------------------------------------


def _model_presets() -> dict:
    # ftvs.model imports torch (seconds): only when a study names a from-scratch size
    from ftvs.model import PRESETS

    return PRESETS


def _size_spec(spec, i: int) -> dict:
    presets = _model_presets()
    if isinstance(spec, str):
        spec = {"preset": spec}
    if not isinstance(spec, dict):
        raise FtvsError(f"study config: sweeps.model_size.sizes[{i}] must be a preset name or a mapping")
    _check_keys(spec, {"name", "preset", *SIZE_KEYS}, f"sweeps.model_size.sizes[{i}]")
    spec = dict(spec)
    if spec.get("preset") is not None and spec["preset"] not in presets:
        raise FtvsError(
            f"study config: unknown size preset {spec['preset']!r}{closest(str(spec['preset']), presets)}; "
            f"choose from {', '.join(presets)}"
        )
    if not spec.get("name"):
        if spec.get("preset") and not any(spec.get(k) for k in SIZE_KEYS):
            spec["name"] = spec["preset"]
        else:
            dims = model_dims(spec, spec.get("preset") or "tiny")
            spec["name"] = f"L{dims['n_layer']}-E{dims['n_embd']}"
    if not _NAME.match(str(spec["name"])):
        raise FtvsError(f"study config: size name {spec['name']!r} {_NAME_RULE}")
    return spec


def model_dims(settings: dict, default_preset: str = "tiny") -> dict:
    """Concrete (n_layer, n_head, n_embd, d_ff) of a from-scratch config (preset + overrides)."""
    presets = _model_presets()
    preset = settings.get("preset") or default_preset
    base = presets.get(preset, presets["tiny"])
    return {
        "preset": preset,
        **{k: settings.get(k) if settings.get(k) is not None else base[k] for k in SIZE_KEYS},
    }


def own_size_name(ms: dict, config: dict) -> str:
    """The name of the sweep size an arm's own (main) run stands for."""
    dims = model_dims(config)
    for s in ms["sizes"]:
        if (
            model_dims(
                {"preset": s.get("preset") or config.get("preset"), **{k: s.get(k) for k in SIZE_KEYS}}
            )
            == dims
        ):
            return s["name"]
    if dims == model_dims({"preset": dims["preset"]}):
        return dims["preset"]
    return f"L{dims['n_layer']}-E{dims['n_embd']}"
