"""`ftvs study CONFIG.yaml` / `ftvs study --preset NAME`: the whole study from one YAML file.

One command runs prepare -> TF-IDF baseline -> from-scratch arm(s) -> fine-tuned arm(s) -> evaluate ->
compare -> report into one study folder, once per seed, plus the data-size and model-size sweeps. Every
training run is a subprocess (`python -m ftvs train ...`, or `launch.launch_command` when a launcher is
set), so a crash in one run never kills the study, and a killed study leaves resumable runs: rerunning
the same command skips finished runs, resumes interrupted ones from their last checkpoint
(`ftvs train ... --resume RUN_DIR`), retries failed ones and carries on. `--force` reruns.

Study YAML (presets live in `ftvs/presets/*.yaml`; `ftvs study --list-presets`)
--------------------------------------------------------------------------------
    name: quick                      # study name (default: the file name); default folder studies/NAME
    description: ...
    data:                            # `ftvs prepare` settings, prepared once into STUDY/data/main
      source: 20newsgroups           # hf:NAME[:CONFIG], a file, a folder, 20newsgroups, sms_spam
      max_train_examples: 1200       # stratified cap of train (optional)
      max_val_examples: 200          # stratified caps of val/test, applied by the study (optional)
      max_test_examples: 600
      validation_split: 0.1          # also: test_split, seed, tokenizer, text_column, label_column,
                                     #       remove_headers, max_chars
    seeds: [0, 1, 2]                 # every run is repeated once per seed
    train: {max_seq_length: 64}      # TrainConfig keys shared by every neural arm (flag names of `ftvs train`)
    launcher: {num_processes: 2}     # optional: multi-process training via accelerate (also per arm)
    arms:                            # in order of execution within a kind: baseline, scratch, finetune
      - {name: tfidf, arm: baseline}                     # + C, C_grid, word_ngrams, char_ngrams, min_df, ...
      - {name: scratch-tiny, arm: scratch, preset: tiny, num_train_epochs: 10}
      - {name: smollm2-lora, arm: finetune, model_name_or_path: smollm2-135m, method: lora}
    sweeps:
      data_size:                     # nested stratified subsets of train (val/test unchanged)
        fractions: [0.01, 0.1, 1.0]
        arms: [tfidf, scratch-tiny, smollm2-lora]   # default: every arm
        resample_per_seed: true      # subset drawn with the run's seed (error bars include the draw)
      model_size:                    # from-scratch arm at several sizes (fraction 1.0)
        arm: scratch-tiny            # default: the first scratch arm
        sizes: [tiny, small, {name: wide, preset: small, n_embd: 384}]
    compare: true                    # `ftvs compare STUDY/study.json --out STUDY/report` at the end
    report: true                     # ... with report.md/.html/.pdf (compare's report step)
    reference_results: [...]         # published numbers the report may cite (copied into study.json)

Study folder
------------
    study.json       the registry (below), rewritten atomically after every state change
    study.yaml       the resolved study config
    data/main/       the prepared data (eval caps applied); data/train-F-sS/: nested train subsets
    configs/ID.yaml  the TrainConfig file each neural run was started with
    runs/ID/         one run directory per run (layout in docs/design.md)
    logs/ID.log      stdout+stderr of the run's subprocesses
    report/          `ftvs compare` output: comparison.json/.md, figures, report.md/.html/.pdf

Run ids are `ARM[.SIZE]-fFRACTION-sSEED`, e.g. `scratch-tiny-f0.1-s2`, `scratch-tiny.small-f1-s0`.
Each neural run's config.yaml carries `seed` and, in `extra`: `study`, `study_preset` (the study preset
name, or null), `arm_name`, `sweep` ("main", "data_size" or "model_size"), `train_fraction`, `size` (the
model-size sweep size, null for the arm's own size) and `preset` (from-scratch runs: the size name that
`ftvs compare` plots the model-size sweep by; null otherwise). The baseline run's config.yaml gets the
same `extra` block after it finishes. Compare/report run as `ftvs compare STUDY/study.json --out
STUDY/report` (all evaluated runs of the registry).

study.json (format "ftvs-study", version 1; paths are relative to the folder holding study.json)
-----------------------------------------------------------------------------------------------
    {"format": "ftvs-study", "version": 1, "name", "preset", "description", "study_dir" (absolute, when
     written), "config" (resolved study config), "created", "updated", "state" ("running", "completed",
     "completed_with_failures", "interrupted", "incomplete" when --only left runs out),
     "seconds_wall_runs" (sum over runs), "seconds_last_invocation",
     "data": {"state", "dir", "config", "source", "num_labels", "label_names", "splits": {split: count},
              "content_hash", "seconds", "subsets": {"F-sS": {"dir", "train_fraction", "seed",
              "num_train_examples", "content_hash"}}},
     "order": [run ids in execution order],
     "runs": {ID: {"id", "arm_name", "arm" (baseline/scratch/finetune), "method" (lora/full/.../tfidf_logreg,
              null for scratch), "model" ("scratch-tiny", "smollm2-135m", "tfidf_logreg"), "size", "seed",
              "train_fraction", "num_train_examples", "sweep", "run_dir", "data_dir", "config_file", "log",
              "config", "state" (pending/running/completed/failed/interrupted), "error", "exit_code",
              "started_at", "finished_at", "seconds_wall", "epochs_done", "num_train_epochs",
              "resumed_from_epoch", "attempts": [{"mode" (fresh/resume/evaluate), "started_at",
              "ended_at", "outcome", "exit_code"}],
              "results": {"test_accuracy", "test_macro_f1", "test_weighted_f1", "best_val_macro_f1",
                          "train_val_gap_macro_f1", "train_val_gap_accuracy", "params_total",
                          "params_trainable", "train_seconds", "epochs_run", "best_epoch",
                          "num_test_examples", "inference_seconds_per_1000"}}},
     "stages": {"compare": {"state" (completed/failed/skipped), "out", "log", "error", "seconds",
                            "report": [report.md/.html/.pdf paths]}},
     "retired_runs": {ID: entry} (runs of an earlier version of the config, left out of compare/report),
     "sweeps": {
        "data_size": [{"arm", "arm_name", "method", "model", "train_fraction", "num_train_examples", "seed",
                       "run_id", "run_dir", "test_macro_f1", "test_accuracy", "best_val_macro_f1"}],
        "data_size_summary": [{"arm", "arm_name", "method", "model", "train_fraction", "num_train_examples",
                               "n", "test_macro_f1_mean", "test_macro_f1_std", "test_accuracy_mean",
                               "test_accuracy_std"}],
        "crossover": [{"finetuned", "other", "other_arm", "rule", "points": [{"num_train_examples",
                       "train_fraction", "delta_macro_f1", "delta_std"}], "crossover_num_train_examples",
                       "crossover_interpolated"}],
        "model_size": [{"arm_name", "size", "preset", "n_layer", "n_head", "n_embd", "d_ff", "params_total",
                        "seed", "run_id", "run_dir", "test_macro_f1", "test_accuracy", "best_val_macro_f1",
                        "train_val_gap_macro_f1", "train_val_gap_accuracy"}],
        "model_size_summary": [{"arm_name", "size", "params_total", "n", "test_macro_f1_mean",
                                "test_macro_f1_std", "train_val_gap_macro_f1_mean", "train_val_gap_macro_f1_std",
                                ...}]},
     "summary": [{"arm", "arm_name", "method", "model", "n", "test_accuracy_mean", "test_accuracy_std",
                  "test_macro_f1_mean", "test_macro_f1_std", "train_seconds_mean", "params_total"}],
     "reference_results": [...]}

`data_size` holds every completed run of the data-size sweep (fraction 1.0 runs included), std is the
sample std over seeds (0 for one seed). A crossover is the smallest measured training-set size at which
the other arm's mean macro-F1 reaches the fine-tuned arm's (delta = fine-tuned - other <= 0);
`crossover_interpolated` interpolates linearly in log(#examples) between the bracketing sizes.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import fnmatch
import importlib.resources
import math
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import yaml

from ftvs.config import FIELDS, FINETUNE_ONLY, RESUME_FREE_KEYS, build_config, config_differences
from ftvs.errors import FtvsError, closest
from ftvs.fileio import RunLock, atomic_write_bytes, read_json, read_jsonl, write_json

FORMAT, VERSION = "ftvs-study", 1
KINDS = ("baseline", "scratch", "finetune")
STATES = ("pending", "running", "completed", "failed", "interrupted")
TOP_KEYS = {"name", "description", "data", "seeds", "train", "arms", "sweeps", "launcher", "compare", "report",
            "reference_results", "notes", "expected_minutes"}
DATA_DEFAULTS = {"source": None, "max_train_examples": None, "max_val_examples": None, "max_test_examples": None,
                 "validation_split": 0.1, "test_split": 0.2, "seed": 0, "tokenizer": "smollm2-135m",
                 "text_column": None, "label_column": None, "remove_headers": True, "max_chars": None}
ARM_META_KEYS = {"name", "arm", "launcher", "enabled"}
BASELINE_KEYS = {"C", "C_grid", "word_ngrams", "char_ngrams", "min_df", "max_features", "max_iter"}
SIZE_KEYS = ("n_layer", "n_head", "n_embd", "d_ff")
# config keys that may change without making a finished run stale: what `--resume` tolerates, plus the tags
_FREE_KEYS = RESUME_FREE_KEYS | {"extra"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _fmt_seconds(s) -> str:
    if s is None or not math.isfinite(s):
        return "-"
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def _frac(f: float) -> str:
    return f"{f:g}"


# --------------------------------------------------------------------------------------------------
# Study config: presets, YAML, overrides, validation
# --------------------------------------------------------------------------------------------------


def preset_names() -> list[str]:
    root = importlib.resources.files("ftvs") / "presets"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def preset_text(name: str) -> str:
    names = preset_names()
    if name not in names:
        raise FtvsError(f"unknown study preset {name!r}{closest(name, names)}; choose from {', '.join(names)}")
    return (importlib.resources.files("ftvs") / "presets" / f"{name}.yaml").read_text(encoding="utf-8")


def _parse_yaml(text: str, origin: str) -> dict:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise FtvsError(f"study config {origin} is not valid YAML ({str(e).splitlines()[0]}); fix its syntax") from None
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
                raise FtvsError(f"--set {key}: no entry named {part!r}{closest(part, names)} in {'.'.join(parts[:i])}")
            node = match[0]
        else:
            if not isinstance(node.get(part), dict | list):
                node[part] = {}
            node = node[part]
    if isinstance(node, list):
        raise FtvsError(f"--set {key}: cannot assign into a list; name an entry (e.g. arms.NAME.KEY=VALUE)")
    node[parts[-1]] = value


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


def normalize_config(raw: dict, name_hint: str = "study") -> dict:
    """Fill defaults and validate a study config; returns a new, fully explicit dict."""
    cfg = copy.deepcopy(raw)
    _check_keys(cfg, TOP_KEYS, "the study config")
    cfg["name"] = str(cfg.get("name") or name_hint)
    if not _NAME.match(cfg["name"]):
        raise FtvsError(f"study name {cfg['name']!r} may only use letters, digits, '.', '_', '+', '-'")
    data = {**DATA_DEFAULTS, **(cfg.get("data") or {})}
    _check_keys(data, DATA_DEFAULTS, "data")
    if not data["source"]:
        raise FtvsError("study config: data.source is missing; e.g. 20newsgroups, hf:PolyAI/banking77 or a CSV folder")
    for key in ("max_train_examples", "max_val_examples", "max_test_examples"):
        if data[key] is not None and (not isinstance(data[key], int) or data[key] < 1):
            raise FtvsError(f"study config: data.{key} must be a positive integer or null, got {data[key]!r}")
    cfg["data"] = data
    seeds = _as_list(cfg.get("seeds", [0]), "seeds")
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise FtvsError(f"study config: seeds must be a non-empty list of integers, got {cfg.get('seeds')!r}")
    if len(set(seeds)) != len(seeds):
        raise FtvsError(f"study config: seeds {seeds} repeat a seed")
    cfg["seeds"] = seeds
    train = dict(cfg.get("train") or {})
    for k in train:
        if k not in FIELDS or k in ("arm", "data", "output_dir", "seed", "extra"):
            raise FtvsError(f"study config: train.{k} is not a shared training setting{closest(str(k), FIELDS)}")
    cfg["train"] = train
    cfg["launcher"] = _launcher(cfg.get("launcher"), "launcher")
    arms = cfg.get("arms") or []
    if not isinstance(arms, list) or not arms:
        raise FtvsError("study config: arms must be a non-empty list of {name, arm, ...} entries")
    seen = set()
    out_arms = []
    for i, arm in enumerate(arms):
        if not isinstance(arm, dict):
            raise FtvsError(f"study config: arms[{i}] must be a mapping with at least name and arm")
        arm = dict(arm)
        kind = arm.get("arm")
        if kind not in KINDS:
            raise FtvsError(f"study config: arms[{i}].arm={kind!r} must be one of {', '.join(KINDS)}"
                            f"{closest(str(kind), KINDS)}")
        name = str(arm.get("name") or (kind if kind == "baseline" else f"{kind}-{i}"))
        if not _NAME.match(name):
            raise FtvsError(f"study config: arm name {name!r} may only use letters, digits, '.', '_', '+', '-'")
        if name in seen:
            raise FtvsError(f"study config: two arms are named {name!r}; names must be unique")
        seen.add(name)
        arm["name"] = name
        arm["enabled"] = bool(arm.get("enabled", True))
        arm["launcher"] = _launcher(arm.get("launcher"), f"arms.{name}.launcher")
        if kind == "baseline":
            _check_keys(arm, BASELINE_KEYS | ARM_META_KEYS, f"arms.{name} (baseline)")
        else:
            settings = {k: v for k, v in arm.items() if k not in ARM_META_KEYS}
            for k in settings:
                if k not in FIELDS or k in ("data", "output_dir", "seed", "extra"):
                    raise FtvsError(f"study config: unknown training key {k!r} in arms.{name}{closest(str(k), FIELDS)}")
            try:  # fail now, not after an hour of other runs
                build_config({**train, **settings}, {"arm": kind})
            except FtvsError as e:
                raise FtvsError(f"study config arms.{name}: {e}") from None
        out_arms.append(arm)
    cfg["arms"] = out_arms
    names = [a["name"] for a in out_arms]
    sweeps = dict(cfg.get("sweeps") or {})
    _check_keys(sweeps, {"data_size", "model_size"}, "sweeps")
    if sweeps.get("data_size"):
        ds = dict(sweeps["data_size"]) if isinstance(sweeps["data_size"], dict) else {"fractions": sweeps["data_size"]}
        _check_keys(ds, {"fractions", "arms", "resample_per_seed"}, "sweeps.data_size")
        fractions = sorted({float(f) for f in _as_list(ds.get("fractions"), "sweeps.data_size.fractions")} | {1.0})
        if not fractions or not all(0 < f <= 1 for f in fractions):
            raise FtvsError(f"study config: sweeps.data_size.fractions must be numbers in (0, 1], got {ds.get('fractions')}")
        ds["fractions"] = fractions
        ds["arms"] = [str(a) for a in _as_list(ds.get("arms") or names, "sweeps.data_size.arms")]
        for a in ds["arms"]:
            if a not in names:
                raise FtvsError(f"study config: sweeps.data_size.arms names unknown arm {a!r}{closest(a, names)}")
        ds["resample_per_seed"] = bool(ds.get("resample_per_seed", True))
        sweeps["data_size"] = ds
    else:
        sweeps.pop("data_size", None)
    if sweeps.get("model_size"):
        ms = dict(sweeps["model_size"]) if isinstance(sweeps["model_size"], dict) else {"sizes": sweeps["model_size"]}
        _check_keys(ms, {"arm", "sizes"}, "sweeps.model_size")
        scratch = [a["name"] for a in out_arms if a["arm"] == "scratch"]
        ms["arm"] = ms.get("arm") or (scratch[0] if scratch else None)
        if ms["arm"] not in scratch:
            raise FtvsError(f"study config: sweeps.model_size.arm must name a scratch arm ({', '.join(scratch) or 'none'})")
        ms["sizes"] = [_size_spec(s, i) for i, s in enumerate(_as_list(ms.get("sizes"), "sweeps.model_size.sizes"))]
        if not ms["sizes"]:
            raise FtvsError("study config: sweeps.model_size.sizes is empty")
        sweeps["model_size"] = ms
    else:
        sweeps.pop("model_size", None)
    cfg["sweeps"] = sweeps
    cfg["compare"] = bool(cfg.get("compare", True))
    cfg["report"] = bool(cfg.get("report", True))
    cfg["reference_results"] = cfg.get("reference_results") or []
    cfg.setdefault("description", "")
    return cfg


def _launcher(value, where: str) -> dict:
    if not value:
        return {}
    if not isinstance(value, dict):
        raise FtvsError(f"study config: {where} must be a mapping like {{num_processes: 2}}")
    n = value.get("num_processes", 1)
    if not isinstance(n, int) or n < 1:
        raise FtvsError(f"study config: {where}.num_processes must be a positive integer, got {n!r}")
    return dict(value)


def _size_spec(spec, i: int) -> dict:
    from ftvs.model import PRESETS

    if isinstance(spec, str):
        spec = {"preset": spec}
    if not isinstance(spec, dict):
        raise FtvsError(f"study config: sweeps.model_size.sizes[{i}] must be a preset name or a mapping")
    _check_keys(spec, {"name", "preset", *SIZE_KEYS}, f"sweeps.model_size.sizes[{i}]")
    spec = dict(spec)
    if spec.get("preset") is not None and spec["preset"] not in PRESETS:
        raise FtvsError(f"study config: unknown size preset {spec['preset']!r}{closest(str(spec['preset']), PRESETS)}; "
                        f"choose from {', '.join(PRESETS)}")
    if not spec.get("name"):
        if spec.get("preset") and not any(spec.get(k) for k in SIZE_KEYS):
            spec["name"] = spec["preset"]
        else:
            dims = _dims(spec, spec.get("preset") or "tiny")
            spec["name"] = f"L{dims['n_layer']}-E{dims['n_embd']}"
    if not _NAME.match(str(spec["name"])):
        raise FtvsError(f"study config: size name {spec['name']!r} may only use letters, digits, '.', '_', '+', '-'")
    return spec


def _dims(settings: dict, default_preset: str = "tiny") -> dict:
    """Concrete (n_layer, n_head, n_embd, d_ff) of a from-scratch config (preset + overrides)."""
    from ftvs.model import PRESETS

    preset = settings.get("preset") or default_preset
    base = PRESETS.get(preset, PRESETS["tiny"])
    return {"preset": preset, **{k: settings.get(k) if settings.get(k) is not None else base[k] for k in SIZE_KEYS}}


def load_study_config(config_path=None, preset=None, overrides=()) -> tuple[dict, str | None]:
    if config_path and preset:
        raise FtvsError("give a study CONFIG file or --preset NAME, not both")
    if config_path and not Path(config_path).exists() and str(config_path) in preset_names():
        config_path, preset = None, str(config_path)  # `ftvs study quick` = `ftvs study --preset quick`
    if preset:
        raw, hint = _parse_yaml(preset_text(preset), f"preset {preset}"), preset
    elif config_path:
        path = Path(config_path)
        if not path.is_file():
            raise FtvsError(f"study config {path} not found; give a YAML file or a preset ({', '.join(preset_names())})")
        raw, hint = _parse_yaml(path.read_text(encoding="utf-8"), str(path)), path.stem
    else:
        raise FtvsError(f"give a study CONFIG.yaml or --preset NAME (presets: {', '.join(preset_names())})")
    for assignment in overrides:
        apply_override(raw, assignment)
    return normalize_config(raw, hint), preset


# --------------------------------------------------------------------------------------------------
# The plan: every run of the study, in execution order
# --------------------------------------------------------------------------------------------------


@dataclass
class PlannedRun:
    id: str
    arm_name: str
    kind: str
    seed: int
    train_fraction: float
    subset_seed: int
    size: str | None  # model-size sweep size name; None = the arm's own size
    sweep: str  # main | data_size | model_size
    settings: dict  # TrainConfig values (neural) or baseline settings, without data/output_dir/seed
    launcher: dict = field(default_factory=dict)

    @property
    def data_key(self) -> str:
        return "main" if self.train_fraction >= 1.0 else f"{_frac(self.train_fraction)}-s{self.subset_seed}"


def plan_runs(cfg: dict) -> list[PlannedRun]:
    arms = {a["name"]: a for a in cfg["arms"] if a["enabled"]}
    ds = cfg["sweeps"].get("data_size")
    ms = cfg["sweeps"].get("model_size")
    data_seed = cfg["data"]["seed"]
    runs: dict[str, PlannedRun] = {}

    def settings_of(arm: dict, size: dict | None = None) -> dict:
        if arm["arm"] == "baseline":
            return {k: v for k, v in arm.items() if k in BASELINE_KEYS}
        s = {**cfg["train"], **{k: v for k, v in arm.items() if k not in ARM_META_KEYS}}
        if size is not None:
            s["preset"] = size.get("preset") or s.get("preset") or "tiny"
            for k in SIZE_KEYS:
                s[k] = size.get(k)
        return s

    def add(arm, seed, fraction, size, sweep):
        settings = settings_of(arm, size)
        size_name = None
        if size is not None and _dims(settings) != _dims(settings_of(arm)):
            size_name = size["name"]
        subset_seed = seed if (ds and ds["resample_per_seed"]) else data_seed
        rid = f"{arm['name']}{'.' + size_name if size_name else ''}-f{_frac(fraction)}-s{seed}"
        if rid in runs:
            return
        runs[rid] = PlannedRun(rid, arm["name"], arm["arm"], seed, fraction, subset_seed, size_name,
                               "main" if fraction >= 1 and size_name is None else sweep,
                               settings, arm["launcher"] or cfg["launcher"])

    kind_order = {k: i for i, k in enumerate(KINDS)}
    ordered = sorted(arms.values(), key=lambda a: kind_order[a["arm"]])
    for arm in ordered:  # main results first: they answer the study's question
        for seed in cfg["seeds"]:
            add(arm, seed, 1.0, None, "main")
    if ms and ms["arm"] in arms:
        for size in ms["sizes"]:
            for seed in cfg["seeds"]:
                add(arms[ms["arm"]], seed, 1.0, size, "model_size")
    if ds:
        for fraction in sorted(ds["fractions"], reverse=True):
            for arm in ordered:
                if arm["name"] in ds["arms"]:
                    for seed in cfg["seeds"]:
                        add(arm, seed, fraction, None, "data_size")
    return list(runs.values())


# --------------------------------------------------------------------------------------------------
# Data: prepare once, cap val/test, nested train subsets
# --------------------------------------------------------------------------------------------------


def stratified_cap(labels, n_keep: int, seed: int) -> list[int]:
    """Sorted indices of a stratified subsample of exactly min(n_keep, n) examples (>= 1 per class when
    n_keep allows), proportional per class with largest-remainder rounding."""
    n = len(labels)
    if n_keep >= n:
        return list(range(n))
    by: dict = defaultdict(list)
    for i, y in enumerate(labels):
        by[y].append(i)
    classes = sorted(by)
    quota = {c: n_keep * len(by[c]) / n for c in classes}
    keep = {c: min(len(by[c]), int(quota[c])) for c in classes}
    if n_keep >= len(classes):
        for c in classes:
            keep[c] = max(keep[c], 1)
    rest = n_keep - sum(keep.values())
    order = sorted(classes, key=lambda c: (-(quota[c] - int(quota[c])), -len(by[c]), c))
    while rest > 0:
        grew = False
        for c in order:
            if rest and keep[c] < len(by[c]):
                keep[c] += 1
                rest -= 1
                grew = True
        if not grew:
            break
    while rest < 0:  # the "one per class" floor overshot: take back from the largest allocations
        c = max(classes, key=lambda c: (keep[c], c))
        keep[c] -= 1
        rest += 1
    chosen = []
    for c in classes:
        perm = np.random.default_rng([seed, len(by[c]), classes.index(c)]).permutation(len(by[c]))
        chosen.extend(by[c][j] for j in perm[: keep[c]])
    return sorted(chosen)


def cap_eval_splits(data_dir, max_val: int | None, max_test: int | None, seed: int = 0) -> dict:
    """Stratified caps on val/test of a prepared folder, in place (written to a temp folder, swapped in).

    Used by small studies (CPU presets) where scoring thousands of test texts with a pre-trained LM would
    cost more than training. metadata.json gains `eval_caps`."""
    from ftvs import data as D

    data_dir = Path(data_dir)
    meta = D.load_metadata(data_dir)
    changed, before = {}, {}
    for split, cap in (("val", max_val), ("test", max_test)):
        texts, labels = D.load_split(data_dir, split)
        before[split] = len(texts)
        if cap and cap < len(texts):
            idx = stratified_cap(labels, cap, seed + (11 if split == "val" else 13))
            changed[split] = ([texts[i] for i in idx], [labels[i] for i in idx])
    if not changed:
        return meta
    tok = None
    if meta.get("length_tokens") and meta.get("tokenizer"):
        with contextlib.suppress(Exception):  # statistics only: never fail a study over them
            tok = D._load_tokenizer(meta["tokenizer"])
    stats = D._split_stats(changed, meta["label_names"], tok)
    for split in changed:
        meta["splits"][split] = stats["splits"][split]
        meta["length_words"][split] = stats["length_words"][split]
        if meta.get("length_tokens") is not None:
            if tok is not None:
                meta["length_tokens"][split] = stats["length_tokens"][split]
            else:
                meta["length_tokens"].pop(split, None)
    meta["eval_caps"] = {"max_val_examples": max_val, "max_test_examples": max_test, "seed": seed,
                         "val_before_cap": before["val"], "test_before_cap": before["test"]}
    files = {s: (data_dir / f"{s}.jsonl").read_bytes() for s in D.SPLITS if s not in changed}
    with D._staging_dir(data_dir) as tmp:
        for split, raw in files.items():
            atomic_write_bytes(tmp / f"{split}.jsonl", raw)
        for split, (texts, labels) in changed.items():
            D._write_split(tmp, split, texts, labels)
        meta["content_hash"] = D.content_hash(tmp)
        write_json(tmp / "metadata.json", meta)
    return meta


# --------------------------------------------------------------------------------------------------
# Subprocesses
# --------------------------------------------------------------------------------------------------


def _die_with_parent_fn():
    """preexec_fn: on Linux the child gets SIGTERM when the study process dies (even by SIGKILL), so a
    killed study never leaves an orphaned training that holds its run lock."""
    parent = os.getpid()

    def setup():
        with contextlib.suppress(Exception):
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
            if os.getppid() != parent:  # the study died before prctl took effect
                os._exit(143)

    return setup if sys.platform.startswith("linux") else None


def _ftvs_cmd(args: list[str], launcher: dict) -> list[str]:
    n = int((launcher or {}).get("num_processes", 1))
    if n <= 1:
        return [sys.executable, "-m", "ftvs", *args]
    from ftvs.launch import launch_command

    extra = {k: v for k, v in launcher.items() if k != "num_processes"}
    if "cpu" not in extra:  # GPU processes where there are GPUs, gloo CPU processes elsewhere
        import torch

        extra["cpu"] = not torch.cuda.is_available()
    return [str(c) for c in launch_command(args, n, **extra)]


_TQDM = re.compile(r"epoch (\d+)/(\d+):\s*\d+%\|[^|\r\n]*\|\s*(\d+)/(\d+) \[([0-9:]+)<([0-9:?]+)")


def _clock_seconds(text: str) -> float | None:
    try:
        parts = [int(p) for p in text.split(":")]
    except ValueError:
        return None
    s = 0
    for p in parts:
        s = s * 60 + p
    return float(s)


def _last_error(log_path: Path) -> str:
    """The most useful line of a failed subprocess's log: `ftvs: error: ...`, else the last exception line."""
    if not log_path.is_file():
        return "no log"
    with open(log_path, "rb") as f:
        f.seek(max(0, log_path.stat().st_size - 64_000))
        lines = [ln.strip() for ln in f.read().decode("utf-8", "replace").replace("\r", "\n").splitlines()]
    lines = [ln for ln in lines if ln]
    for ln in reversed(lines):
        if ln.startswith("ftvs: error:"):
            return ln[len("ftvs: error:"):].strip()
    for ln in reversed(lines):
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b", ln):
            return ln
    return lines[-1] if lines else "no output"


# --------------------------------------------------------------------------------------------------
# Progress view
# --------------------------------------------------------------------------------------------------


class Progress:
    """One status line per running run: which run, epoch (from history.jsonl / the log's progress bar),
    ETA of the run and of the study. On a terminal the line is redrawn in place; otherwise a line is
    printed per epoch and at most once a minute in between."""

    def __init__(self, stream=None, quiet: bool = False):
        self.stream = stream or sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)()) and not quiet
        self.quiet = quiet
        self._last_line = ""
        self._last_print = 0.0
        self._last_epochs = -1

    def say(self, text: str) -> None:
        if self.quiet:
            return
        if self.tty and self._last_line:
            self.stream.write("\r\033[K")
            self._last_line = ""
        self.stream.write(text + "\n")
        self.stream.flush()

    def reset(self) -> None:
        self._last_epochs = -1
        self._last_print = 0.0

    def status(self, text: str, epochs_done: int) -> None:
        if self.quiet:
            return
        if self.tty:
            width = shutil.get_terminal_size((120, 20)).columns - 1
            self.stream.write("\r\033[K" + text[:width])
            self.stream.flush()
            self._last_line = text
            return
        now = time.monotonic()
        if epochs_done != self._last_epochs or now - self._last_print >= 60:
            self._last_epochs = epochs_done
            self._last_print = now
            self.stream.write("  " + text + "\n")
            self.stream.flush()

    def end_line(self) -> None:
        if self.tty and self._last_line:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self._last_line = ""


def run_progress(run_dir: Path, log_path: Path, num_epochs: int | None) -> dict:
    """What a running training has done so far: epochs from history.jsonl, the current epoch's batch
    position and remaining time from the last progress-bar update in its log."""
    rows = []
    hist = run_dir / "history.jsonl"
    if hist.is_file():
        with contextlib.suppress(Exception):
            rows = read_jsonl(hist)
    info = {"epochs_done": len(rows), "num_epochs": num_epochs, "last": rows[-1] if rows else None,
            "epoch_seconds": statistics.mean(r["epoch_seconds"] for r in rows) if rows else None}
    if log_path.is_file():
        with contextlib.suppress(OSError):
            with open(log_path, "rb") as f:
                f.seek(max(0, log_path.stat().st_size - 8192))
                tail = f.read().decode("utf-8", "replace")
            found = list(_TQDM.finditer(tail))
            if found:
                m = found[-1]
                epoch, total_epochs, batch, batches = (int(m.group(i)) for i in range(1, 5))
                info.update(bar_epoch=epoch, bar_batch=batch, bar_batches=batches,
                            bar_elapsed=_clock_seconds(m.group(5)), bar_remaining=_clock_seconds(m.group(6)))
                info["num_epochs"] = info["num_epochs"] or total_epochs
    return info


def run_eta(info: dict) -> float | None:
    n = info.get("num_epochs")
    done = info["epochs_done"]
    if not n or done >= n:  # nothing left to train (evaluating, or about to)
        return None
    per_epoch = info.get("epoch_seconds")
    in_epoch = None
    if info.get("bar_epoch") == done + 1 and info.get("bar_remaining") is not None:
        in_epoch = info["bar_remaining"]
        if per_epoch is None and info.get("bar_batch") and info.get("bar_elapsed"):
            per_epoch = info["bar_elapsed"] * info["bar_batches"] / info["bar_batch"]
    if per_epoch is None:
        return None
    left_after = max(0, n - done - 1)
    return (in_epoch if in_epoch is not None else per_epoch) + left_after * per_epoch


# --------------------------------------------------------------------------------------------------
# The study
# --------------------------------------------------------------------------------------------------


class StudyInterrupted(Exception):
    pass


class Study:
    def __init__(self, cfg: dict, out_dir, preset: str | None = None, force: bool = False, only=(),
                 retry_failed: bool = True, progress: Progress | None = None, poll_seconds: float = 1.0,
                 config_source: str | None = None):
        self.cfg = cfg
        self.dir = Path(out_dir)
        self.preset = preset
        self.force = force
        self.only = list(only or [])
        self.retry_failed = retry_failed
        self.progress = progress or Progress()
        self.poll = poll_seconds
        self.config_source = config_source
        self.plan = plan_runs(cfg)
        self.path = self.dir / "study.json"
        self.reg: dict = {}
        self._started = time.monotonic()
        self._ran_any = False  # did this invocation (re)run anything? (else compare is up to date)

    # --- registry -------------------------------------------------------------------------------
    def save(self) -> None:
        self.reg["updated"] = _now()
        write_json(self.path, self.reg)

    def rel(self, path) -> str:
        return os.path.relpath(Path(path), self.dir)

    def abs(self, rel) -> Path:
        return (self.dir / rel).resolve()

    def selected(self, rid: str) -> bool:
        return not self.only or any(fnmatch.fnmatch(rid, pat) for pat in self.only)

    def _load_or_create(self) -> None:
        existing = read_json(self.path, "study registry") if self.path.is_file() else None
        if existing is not None and existing.get("format") != FORMAT:
            raise FtvsError(f"{self.path} is not an ftvs study registry; choose another --output_dir")
        if existing is not None and self.force and not self.only:
            existing = None  # --force: a fresh registry (run folders are replaced as runs start)
        reg = existing or {"format": FORMAT, "version": VERSION, "created": _now(), "runs": {}, "stages": {},
                           "data": {"state": "pending"}}
        reg.update({"name": self.cfg["name"], "preset": self.preset, "description": self.cfg.get("description", ""),
                    "study_dir": str(self.dir.resolve()), "config": self.cfg, "config_source": self.config_source,
                    "reference_results": self.cfg.get("reference_results", []), "state": "running"})
        from ftvs import __version__

        reg["ftvs_version"] = __version__
        self.reg = reg
        # data settings changed since the data was prepared?
        data_cfg = self.cfg["data"]
        if reg["data"].get("state") == "completed" and reg["data"].get("config") != data_cfg:
            if not self.force:
                diff = sorted(k for k in set(data_cfg) | set(reg["data"].get("config") or {})
                              if data_cfg.get(k) != (reg["data"].get("config") or {}).get(k))
                raise FtvsError(f"the data settings changed since {self.dir} was prepared ({', '.join(diff)}); "
                                "pass --force to redo the study, or use a new --output_dir")
            reg["data"] = {"state": "pending"}
        # runs: new entries, stale configs
        order = []
        stale = []
        for run in self.plan:
            entry = reg["runs"].get(run.id)
            planned = self._planned_entry(run)
            if entry is None:
                reg["runs"][run.id] = planned
            else:
                changed = config_differences(entry.get("config") or {}, planned["config"], _FREE_KEYS)
                keep = {k: entry[k] for k in ("state", "error", "exit_code", "started_at", "finished_at",
                                              "seconds_wall", "epochs_done", "resumed_from_epoch", "attempts",
                                              "results", "num_train_examples") if k in entry}
                if changed and not (self.force and self.selected(run.id)):
                    resumable = (self.abs(planned["run_dir"]) / "checkpoint" / "state.json").is_file()
                    if entry.get("state") == "completed" or (entry.get("state") in ("running", "interrupted")
                                                              and resumable):
                        stale.append(f"{run.id} ({', '.join(changed[:3])})")
                    else:  # pending or failed: simply (re)start with the new settings
                        keep = {"attempts": entry.get("attempts", []), "needs_wipe": True}
                reg["runs"][run.id] = {**planned, **keep}
            order.append(run.id)
        if stale:
            raise FtvsError(f"the settings of {len(stale)} finished or started run(s) changed since they ran: "
                            f"{'; '.join(stale[:3])}{' ...' if len(stale) > 3 else ''}; pass --force (optionally "
                            "with --only PATTERN) to retrain them, or use a new --output_dir")
        for entry in reg["runs"].values():  # we hold the study lock: "running" is a previous, killed study
            for att in entry.get("attempts") or []:
                if att.get("outcome") == "running":
                    att["outcome"] = "killed"
            if entry.get("state") == "running":
                entry.update(state="interrupted", error="the study was killed during this run")
        retired = {rid: e for rid, e in reg["runs"].items() if rid not in order}
        if retired:  # no longer part of the study (an arm was removed): kept aside, out of compare/report
            reg.setdefault("retired_runs", {}).update(retired)
            reg["runs"] = {rid: reg["runs"][rid] for rid in order}
        reg["order"] = order

    def _planned_entry(self, run: PlannedRun) -> dict:
        run_dir = self.dir / "runs" / run.id
        data_dir = self.dir / "data" / ("main" if run.data_key == "main" else f"train-{run.data_key}")
        if run.kind == "baseline":
            method, model = "tfidf_logreg", "tfidf_logreg"
            config = {**run.settings, "seed": run.seed}
            num_epochs = 1
        else:
            method = run.settings.get("method", "lora") if run.kind == "finetune" else None
            model = run.settings.get("model_name_or_path", "smollm2-135m") if run.kind == "finetune" \
                else f"scratch-{run.settings.get('preset', 'tiny')}"
            config = self._train_config(run, run_dir, data_dir)
            num_epochs = config.get("num_train_epochs", 10)
        return {"id": run.id, "arm_name": run.arm_name, "arm": run.kind, "method": method, "model": model,
                "size": run.size, "seed": run.seed, "train_fraction": run.train_fraction, "sweep": run.sweep,
                "subset_seed": run.subset_seed, "run_dir": self.rel(run_dir), "data_dir": self.rel(data_dir),
                "config_file": self.rel(self.dir / "configs" / f"{run.id}.yaml") if run.kind != "baseline" else None,
                "log": self.rel(self.dir / "logs" / f"{run.id}.log"), "config": config,
                "num_train_epochs": num_epochs, "launcher": run.launcher, "state": "pending", "error": None,
                "exit_code": None, "started_at": None, "finished_at": None, "seconds_wall": 0.0,
                "epochs_done": 0, "resumed_from_epoch": None, "attempts": [], "results": None}

    def _extra(self, run: PlannedRun) -> dict:
        """Tags for compare/report: `preset` is the from-scratch size (what `ftvs compare` plots the
        model-size sweep by), `study_preset` the study preset."""
        size = None
        if run.kind == "scratch":
            ms = self.cfg["sweeps"].get("model_size")
            size = run.size or (_own_size_name(ms, run.settings) if ms and ms["arm"] == run.arm_name
                                else _dims(run.settings)["preset"])
        return {"study": self.cfg["name"], "study_preset": self.preset, "arm_name": run.arm_name,
                "sweep": run.sweep, "train_fraction": run.train_fraction, "size": run.size, "preset": size}

    def _train_config(self, run: PlannedRun, run_dir: Path, data_dir: Path) -> dict:
        values = {**run.settings, "data": str(data_dir.resolve()), "output_dir": str(run_dir.resolve()),
                  "seed": run.seed, "extra": self._extra(run)}
        cfg = build_config(values, {"arm": run.kind}).to_dict()
        if run.kind == "scratch":  # keep only the keys of this arm: tidy files, no false "changed" alarms
            for k in FINETUNE_ONLY:
                cfg.pop(k, None)
        return cfg

    # --- main entry ------------------------------------------------------------------------------
    def run(self) -> dict:
        self.dir.mkdir(parents=True, exist_ok=True)
        with RunLock(self.dir):
            self._load_or_create()
            atomic_write_bytes(self.dir / "study.yaml", yaml.safe_dump(self.cfg, sort_keys=False).encode())
            self.save()
            old_term = signal.getsignal(signal.SIGTERM)

            def on_term(signum, frame):
                raise StudyInterrupted("terminated")

            with contextlib.suppress(ValueError):  # not in the main thread: keep the default
                signal.signal(signal.SIGTERM, on_term)
            try:
                self._run_all()
            except (KeyboardInterrupt, StudyInterrupted):
                self.reg["state"] = "interrupted"
                self.save()
                self.progress.end_line()
                raise
            finally:
                with contextlib.suppress(ValueError):
                    signal.signal(signal.SIGTERM, old_term)
        return self.reg

    def _run_all(self) -> None:
        t0 = time.monotonic()
        p = self.progress
        p.say(f"study {self.cfg['name']}: {len(self.plan)} runs ({self._plan_text()}) -> {self.dir}")
        self.prepare_data()
        todo = [rid for rid in self.reg["order"] if self.selected(rid)]
        for i, rid in enumerate(todo, 1):
            self.run_one(rid, i, len(todo))
        self.collect()
        self.save()
        st = self.reg["stages"].get("compare") or {}
        up_to_date = not self._ran_any and st.get("state") == "completed" and \
            (self.dir / "report" / "comparison.json").is_file() and st.get("with_report") == bool(self.cfg.get("report"))
        if up_to_date:
            self.progress.say("compare: up to date (no run changed)")
        elif self.cfg.get("compare") or self.cfg.get("report"):
            self.stage_compare(report=bool(self.cfg.get("report")))
        runs = [self.reg["runs"][r] for r in self.reg["order"]]
        failed = [r for r in runs if r["state"] == "failed"]
        self.reg["state"] = "completed_with_failures" if failed or any(
            s.get("state") == "failed" for s in self.reg["stages"].values()) else "completed"
        if any(r["state"] not in ("completed", "failed") for r in runs):
            self.reg["state"] = "incomplete"  # --only left some runs out
        self.reg["seconds_last_invocation"] = time.monotonic() - t0
        self.save()

    def _plan_text(self) -> str:
        kinds = defaultdict(int)
        for r in self.plan:
            kinds[r.kind] += 1
        parts = [f"{n} {k}" for k, n in kinds.items()]
        parts.append(f"seeds {', '.join(map(str, self.cfg['seeds']))}")
        if self.cfg["sweeps"].get("data_size"):
            parts.append(f"fractions {', '.join(_frac(f) for f in self.cfg['sweeps']['data_size']['fractions'])}")
        if self.cfg["sweeps"].get("model_size"):
            parts.append(f"sizes {', '.join(s['name'] for s in self.cfg['sweeps']['model_size']['sizes'])}")
        return "; ".join(parts)

    # --- data ------------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        from ftvs import data as D

        d = self.reg["data"]
        main_dir = self.dir / "data" / "main"
        dc = self.cfg["data"]
        if d.get("state") != "completed" or not (main_dir / "metadata.json").is_file():
            t0 = time.monotonic()
            old_hash = d.get("content_hash")
            d.update(state="running", dir=self.rel(main_dir), config=dc, subsets={})
            self.save()
            self.progress.say(f"preparing {dc['source']} -> {self.rel(main_dir)}")
            kwargs = {k: dc[k] for k in ("text_column", "label_column", "validation_split", "test_split",
                                         "max_train_examples", "seed", "tokenizer", "remove_headers", "max_chars")
                      if dc.get(k) is not None}
            if main_dir.exists() and not (main_dir / "metadata.json").is_file():
                shutil.rmtree(main_dir)
            try:
                D.prepare(dc["source"], main_dir, **kwargs)
                meta = cap_eval_splits(main_dir, dc.get("max_val_examples"), dc.get("max_test_examples"), dc["seed"])
            except BaseException as e:
                d.update(state="failed", error=str(e))
                self.save()
                raise
            d.update(state="completed", source=meta["source"], num_labels=meta["num_labels"],
                     label_names=meta["label_names"], splits={s: meta["splits"][s]["count"] for s in D.SPLITS},
                     content_hash=meta["content_hash"], seconds=time.monotonic() - t0, error=None)
            if old_hash and old_hash != meta["content_hash"]:  # new data: nothing trained on the old counts
                for run in self.reg["runs"].values():
                    if run.get("state") != "pending" or run.get("attempts"):
                        run.update(state="pending", needs_wipe=True, results=None, epochs_done=0)
            self.save()
            s = d["splits"]
            self.progress.say(f"data: {d['num_labels']} classes, {s['train']:,} train / {s['val']:,} val / "
                              f"{s['test']:,} test ({_fmt_seconds(d['seconds'])})")
        subsets = d.setdefault("subsets", {})
        for run in self.plan:
            if run.data_key == "main" or run.data_key in subsets and (self.abs(subsets[run.data_key]["dir"])
                                                                      / "metadata.json").is_file():
                continue
            if not self.selected(run.id):
                continue
            out = self.dir / "data" / f"train-{run.data_key}"
            meta = D.subsample_train(main_dir, out, run.train_fraction, run.subset_seed, tokenizer="none")
            subsets[run.data_key] = {"dir": self.rel(out), "train_fraction": run.train_fraction,
                                     "seed": run.subset_seed, "num_train_examples": meta["splits"]["train"]["count"],
                                     "content_hash": meta["content_hash"]}
            self.save()

    def num_train_examples(self, entry: dict) -> int | None:
        d = self.reg["data"]
        if entry["train_fraction"] >= 1:
            return (d.get("splits") or {}).get("train")
        key = f"{_frac(entry['train_fraction'])}-s{entry['subset_seed']}"
        return ((d.get("subsets") or {}).get(key) or {}).get("num_train_examples")

    # --- one run -------------------------------------------------------------------------------------
    def run_one(self, rid: str, index: int, total: int) -> None:
        e = self.reg["runs"][rid]
        run_dir, log = self.abs(e["run_dir"]), self.abs(e["log"])
        e["num_train_examples"] = self.num_train_examples(e)
        head = f"[{index}/{total}] {rid}"
        force = self.force and self.selected(rid)
        done = e["state"] == "completed" and (run_dir / "metrics.json").is_file() and not e.get("needs_wipe")
        if done and not force:
            self.progress.say(f"{head}: done earlier ({self._result_text(e)}), skipped")
            return
        if e["state"] == "failed" and not self.retry_failed and not force:
            self.progress.say(f"{head}: failed earlier ({e.get('error')}), skipped (--no-retry_failed)")
            return
        if e.pop("needs_wipe", False) and not done:
            self._wipe(run_dir)
        if force:
            self._wipe(run_dir)
            e.update(state="pending", attempts=[], seconds_wall=0.0, epochs_done=0, resumed_from_epoch=None,
                     results=None, error=None, exit_code=None, started_at=None, finished_at=None)
        log.parent.mkdir(parents=True, exist_ok=True)
        self._ran_any = True
        self._wait_for_lock(run_dir)
        e["state"] = "running"
        e["error"] = None
        e["started_at"] = e.get("started_at") or _now()
        self.save()
        try:
            if e["arm"] == "baseline":
                ok = self._run_baseline(e, run_dir, log, head)
            else:
                ok = self._run_neural(e, run_dir, log, head)
        except (KeyboardInterrupt, StudyInterrupted):
            e["state"] = "interrupted"
            e["error"] = "interrupted; rerun the study to resume"
            self._epochs_done(e, run_dir)
            self.save()
            raise
        self.progress.end_line()
        if ok:
            e["results"] = self._results(run_dir)
            e.update(state="completed", finished_at=_now(), error=None)
            self._epochs_done(e, run_dir)
            self.save()
            self.progress.say(f"  done {rid}: {self._result_text(e)} in {_fmt_seconds(e['seconds_wall'])}")
        else:
            e.update(state="failed", finished_at=_now())
            self._epochs_done(e, run_dir)
            self.save()
            self.progress.say(f"  FAILED {rid}: {e['error']} (log: {e['log']})")

    def _wipe(self, run_dir: Path) -> None:
        run_dir = run_dir.resolve()
        if run_dir.exists() and self.dir.resolve() in run_dir.parents:
            shutil.rmtree(run_dir)

    def _wait_for_lock(self, run_dir: Path, timeout: float = 120.0) -> None:
        """A previous study's training (killed with it) may still be exiting; give it time to let go."""
        if not run_dir.is_dir() or RunLock.is_free(run_dir):
            return
        self.progress.say(f"  waiting for an earlier process to release {self.rel(run_dir)} ...")
        end = time.monotonic() + timeout
        while time.monotonic() < end and not RunLock.is_free(run_dir):
            time.sleep(0.5)

    def _epochs_done(self, e: dict, run_dir: Path) -> None:
        hist = run_dir / "history.jsonl"
        with contextlib.suppress(Exception):
            e["epochs_done"] = len(read_jsonl(hist)) if hist.is_file() else 0

    def _attempt(self, e: dict, mode: str, cmd: list[str], run_dir: Path, log: Path, head: str,
                 phase: str) -> int:
        att = {"mode": mode, "started_at": _now(), "ended_at": None, "outcome": "running", "exit_code": None,
               "seconds": None}
        e["attempts"].append(att)
        self.save()
        t0 = time.monotonic()
        rc = None
        try:
            rc = self._spawn(e, cmd, run_dir, log, head, phase)
        finally:
            att["seconds"] = time.monotonic() - t0
            e["seconds_wall"] = e.get("seconds_wall", 0.0) + att["seconds"]
            att["ended_at"] = _now()
            att["exit_code"] = rc
            att["outcome"] = "interrupted" if rc is None else ("ok" if rc == 0 else "failed")
            e["exit_code"] = rc
            self.save()
        return rc

    def _spawn(self, e: dict, cmd: list[str], run_dir: Path, log: Path, head: str, phase: str) -> int:
        self.progress.reset()
        with self._child(cmd, log, f"{phase}: ") as proc:
            last_epochs = e.get("epochs_done", 0)
            while True:
                try:
                    rc = proc.wait(timeout=self.poll)
                except subprocess.TimeoutExpired:
                    rc = None
                info = run_progress(run_dir, log, e.get("num_train_epochs")) if phase == "train" else None
                if info and info["epochs_done"] != last_epochs:
                    last_epochs = e["epochs_done"] = info["epochs_done"]
                    self.save()
                if rc is not None:
                    return rc
                self.progress.status(self._status_text(e, head, phase, info), info["epochs_done"] if info else 0)

    @contextlib.contextmanager
    def _child(self, cmd: list[str], log: Path, label: str):
        """A child process writing into `log` (appended, after a header line); stopped if we are interrupted."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
        with open(log, "ab") as logf:
            logf.write(f"\n=== {_now()} {label}{shlex.join(cmd)}\n".encode())
            logf.flush()
            proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                    preexec_fn=_die_with_parent_fn())
            try:
                yield proc
            except BaseException:
                self._stop(proc)
                raise

    @staticmethod
    def _stop(proc: subprocess.Popen) -> None:
        """Interrupt a child like Ctrl-C would (it checkpointed at its last epoch), then insist."""
        for sig, wait in ((signal.SIGINT, 20), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            if proc.poll() is not None:
                return
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=wait)

    def _status_text(self, e: dict, head: str, phase: str, info: dict | None) -> str:
        elapsed = time.monotonic() - self._started
        parts = [f"{head} {e['arm_name']}"]
        if phase != "train" or info is None:
            parts.append(phase)
        else:
            n = info.get("num_epochs") or e.get("num_train_epochs") or 0
            done = info["epochs_done"]
            if info.get("bar_epoch") == done + 1 and info.get("bar_batches"):
                parts.append(f"epoch {info['bar_epoch']}/{n} batch {info['bar_batch']}/{info['bar_batches']}")
            elif done < n:
                parts.append(f"epoch {done + 1}/{n}")
            else:
                parts.append(f"{done} epochs done, evaluating")
            last = info.get("last")
            if last and last.get("val_macro_f1") is not None:
                parts.append(f"val macro-F1 {last['val_macro_f1']:.3f}")
            if info.get("epoch_seconds"):
                parts.append(f"{_fmt_seconds(info['epoch_seconds'])}/epoch")
            eta = run_eta(info)
            if eta is not None:
                parts.append(f"run ETA {_fmt_seconds(eta)}")
        study_eta = self.study_eta(exclude=e["id"])
        if study_eta:
            parts.append(f"then ~{_fmt_seconds(study_eta)} more")
        parts.append(f"elapsed {_fmt_seconds(elapsed)}")
        return " | ".join(parts)

    def study_eta(self, exclude: str | None = None) -> float | None:
        """Rough time for the runs still pending: per arm, wall seconds per (train example x epoch) of its
        finished runs, times each pending run's examples x epochs (early stopping makes it an upper bound)."""
        rate: dict[str, list[float]] = defaultdict(list)
        for rid in self.reg["order"]:
            r = self.reg["runs"][rid]
            if r["state"] == "completed" and r.get("num_train_examples") and r.get("seconds_wall"):
                work = r["num_train_examples"] * max(1, r.get("epochs_done") or 1)
                rate[r["arm_name"]].append(r["seconds_wall"] / work)
        total, known = 0.0, False
        for rid in self.reg["order"]:
            r = self.reg["runs"][rid]
            if rid == exclude or r["state"] == "completed" or not self.selected(rid):
                continue
            n = self.num_train_examples(r)
            if rate.get(r["arm_name"]) and n:
                total += statistics.mean(rate[r["arm_name"]]) * n * max(1, r.get("num_train_epochs") or 1)
                known = True
        return total if known else None

    def _run_baseline(self, e: dict, run_dir: Path, log: Path, head: str) -> bool:
        self._wipe(run_dir)  # a baseline is one quick fit: an interrupted one simply starts over
        s = e["config"]
        args = ["baseline", "--data", str(self.abs(e["data_dir"])), "--output_dir", str(run_dir),
                "--seed", str(e["seed"]), "--run_name", e["id"]]
        for key in ("C", "min_df", "max_features", "max_iter"):
            if s.get(key) is not None:
                args += [f"--{key}", str(s[key])]
        for key in ("C_grid", "word_ngrams", "char_ngrams"):
            if s.get(key) is not None:
                v = s[key]
                args += [f"--{key}", ",".join(str(x) for x in v) if isinstance(v, list | tuple) else str(v)]
        self.progress.say(f"{head}: TF-IDF baseline, seed {e['seed']}, {e.get('num_train_examples') or '?'} train examples")
        rc = self._attempt(e, "fresh", _ftvs_cmd(args, {}), run_dir, log, head, "baseline")
        if rc != 0 or not (run_dir / "metrics.json").is_file():
            e["error"] = _last_error(log) if rc != 0 else "baseline finished without metrics.json"
            return False
        # tag the run like the neural runs (compare/report group on these)
        cfg_path = run_dir / "config.yaml"
        with contextlib.suppress(Exception):
            saved = yaml.safe_load(cfg_path.read_text()) or {}
            saved["extra"] = self._extra(self._planned(e["id"]))
            atomic_write_bytes(cfg_path, yaml.safe_dump(saved, sort_keys=False).encode())
        return True

    def _planned(self, rid: str) -> PlannedRun:
        return next(r for r in self.plan if r.id == rid)

    def _run_neural(self, e: dict, run_dir: Path, log: Path, head: str) -> bool:
        summary_path = run_dir / "train_summary.json"
        summary = {}
        with contextlib.suppress(Exception):
            summary = read_json(summary_path) if summary_path.is_file() else {}
        trained = summary.get("status") == "completed"
        has_ckpt = (run_dir / "checkpoint" / "state.json").is_file()
        what = (f"{e['arm']} {e['model']}{' ' + e['method'] if e.get('method') else ''}, seed {e['seed']}, "
                f"fraction {_frac(e['train_fraction'])} ({e.get('num_train_examples') or '?'} train examples)")
        if not trained:
            cfg_path = self.abs(e["config_file"])
            atomic_write_bytes(cfg_path, yaml.safe_dump({k: v for k, v in e["config"].items() if k != "arm"},
                                                        sort_keys=False).encode())
            launcher = e.get("launcher") or {}
            multi = int(launcher.get("num_processes", 1)) > 1
            args = ["train", e["arm"], "--config", str(cfg_path)]
            if has_ckpt:
                epoch = None
                with contextlib.suppress(Exception):
                    epoch = read_json(run_dir / "checkpoint" / "state.json").get("epoch")
                e["resumed_from_epoch"] = epoch
                args += ["--resume", str(run_dir)]
                mode = "resume"
                self.progress.say(f"{head}: {what}: resuming after epoch {epoch}")
            else:
                self._wipe(run_dir)  # nothing resumable there (killed before the first checkpoint)
                args += ["--output_dir", str(run_dir)]
                mode = "fresh"
                self.progress.say(f"{head}: {what}")
            if multi:
                args.append("--no-evaluate")  # evaluation runs once, below, in a single process
            rc = self._attempt(e, mode, _ftvs_cmd(args, launcher), run_dir, log, head, "train")
            summary = {}
            with contextlib.suppress(Exception):
                summary = read_json(summary_path) if summary_path.is_file() else {}
            if rc != 0 or summary.get("status") != "completed":
                e["error"] = _last_error(log) if rc != 0 else f"training ended with status {summary.get('status')!r}"
                return False
        else:
            self.progress.say(f"{head}: {what}: trained earlier, evaluating")
        if not (run_dir / "metrics.json").is_file():
            rc = self._attempt(e, "evaluate", _ftvs_cmd(["evaluate", str(run_dir)], {}), run_dir, log, head,
                               "evaluating")
            if rc != 0 or not (run_dir / "metrics.json").is_file():
                e["error"] = _last_error(log) if rc != 0 else "evaluation wrote no metrics.json"
                return False
        return True

    def _results(self, run_dir: Path) -> dict:
        m = read_json(run_dir / "metrics.json", "metrics")
        test = m.get("test") or {}
        gap = ((m.get("train_val_gap") or {}).get("best") or {})
        training = m.get("training") or {}
        return {"test_accuracy": test.get("accuracy"), "test_macro_f1": test.get("macro_f1"),
                "test_weighted_f1": test.get("weighted_f1"),
                "best_val_macro_f1": (m.get("best_val") or {}).get("macro_f1"),
                "best_val_accuracy": (m.get("best_val") or {}).get("accuracy"),
                "train_val_gap_macro_f1": gap.get("macro_f1"), "train_val_gap_accuracy": gap.get("accuracy"),
                "params_total": (m.get("params") or {}).get("total"),
                "params_trainable": (m.get("params") or {}).get("trainable"),
                "train_seconds": training.get("seconds_total"), "epochs_run": training.get("epochs_run"),
                "best_epoch": training.get("best_epoch"), "stop_reason": training.get("stop_reason"),
                "num_test_examples": m.get("num_test_examples"),
                "inference_seconds_per_1000": (m.get("inference") or {}).get("seconds_per_1000")}

    @staticmethod
    def _result_text(e: dict) -> str:
        r = e.get("results") or {}
        if r.get("test_accuracy") is None:
            return "no results"
        return f"test accuracy {r['test_accuracy']:.4f}, macro-F1 {r['test_macro_f1']:.4f}"

    # --- sweeps and summaries --------------------------------------------------------------------
    def collect(self) -> None:
        runs = [self.reg["runs"][r] for r in self.reg["order"]]
        done = [r for r in runs if r["state"] == "completed" and r.get("results")]
        self.reg["summary"] = _group(
            [r for r in done if r["train_fraction"] >= 1 and r.get("size") is None], ("arm_name",))
        sweeps = {}
        ds = self.cfg["sweeps"].get("data_size")
        if ds:
            rows = [{"arm": r["arm"], "arm_name": r["arm_name"], "method": r["method"], "model": r["model"],
                     "train_fraction": r["train_fraction"], "num_train_examples": r.get("num_train_examples"),
                     "seed": r["seed"], "run_id": r["id"], "run_dir": r["run_dir"],
                     "test_macro_f1": r["results"]["test_macro_f1"], "test_accuracy": r["results"]["test_accuracy"],
                     "best_val_macro_f1": r["results"].get("best_val_macro_f1")}
                    for r in done if r.get("size") is None and r["arm_name"] in ds["arms"]
                    and r["train_fraction"] in ds["fractions"]]
            sweeps["data_size"] = rows
            sweeps["data_size_summary"] = _group_sweep(rows)
            sweeps["crossover"] = _crossovers(sweeps["data_size_summary"])
        ms = self.cfg["sweeps"].get("model_size")
        if ms:
            rows = []
            for r in done:
                if r["arm_name"] != ms["arm"] or r["train_fraction"] < 1:
                    continue
                dims = _dims(r["config"])
                rows.append({"arm_name": r["arm_name"], "size": r.get("size") or _own_size_name(ms, r["config"]),
                             **dims, "params_total": r["results"]["params_total"], "seed": r["seed"],
                             "run_id": r["id"], "run_dir": r["run_dir"],
                             "test_macro_f1": r["results"]["test_macro_f1"],
                             "test_accuracy": r["results"]["test_accuracy"],
                             "best_val_macro_f1": r["results"].get("best_val_macro_f1"),
                             "train_val_gap_macro_f1": r["results"].get("train_val_gap_macro_f1"),
                             "train_val_gap_accuracy": r["results"].get("train_val_gap_accuracy")})
            rows.sort(key=lambda x: (x["params_total"] or 0, x["seed"]))
            sweeps["model_size"] = rows
            sweeps["model_size_summary"] = _group_model_size(rows)
        self.reg["sweeps"] = sweeps
        self.reg["seconds_wall_runs"] = sum(r.get("seconds_wall") or 0 for r in runs)

    # --- compare and report ----------------------------------------------------------------------
    def _stage(self, name: str, cmd: list[str], out: Path) -> None:
        st = self.reg["stages"].setdefault(name, {})
        log = self.dir / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        st.update(state="running", out=self.rel(out), log=self.rel(log), error=None)
        self.save()
        self.progress.say(f"{name}: {shlex.join(cmd[2:])}")
        t0 = time.monotonic()
        try:
            with self._child(cmd, log, "") as proc:
                rc = proc.wait()
        except BaseException:
            st["state"] = "interrupted"
            self.save()
            raise
        st["seconds"] = time.monotonic() - t0
        if rc == 0:
            st.update(state="completed")
            self.progress.say(f"  {name} -> {self.rel(out)} ({_fmt_seconds(st['seconds'])})")
        else:
            st.update(state="failed", error=_last_error(log), exit_code=rc)
            self.progress.say(f"  {name} FAILED: {st['error']} (log: {self.rel(log)})")
        self.save()

    def stage_compare(self, report: bool = True) -> None:
        """`ftvs compare STUDY/study.json --out STUDY/report`: every evaluated run of the registry (sweeps
        included; compare groups seeds by arm/method/model/train_fraction), plus the report."""
        done = [r for r in self.reg["runs"].values() if r["state"] == "completed"]
        if len(done) < 2:
            self.reg["stages"]["compare"] = {"state": "skipped", "error": "fewer than two completed runs"}
            self.progress.say("compare: skipped (fewer than two completed runs)")
            return
        out = self.dir / "report"
        cmd = [sys.executable, "-m", "ftvs", "compare", str(self.path), "--out", str(out)]
        if not report:
            cmd.append("--no-report")
        self._stage("compare", cmd, out)
        st = self.reg["stages"]["compare"]
        st["with_report"] = report
        st["report"] = [self.rel(p) for p in sorted(out.glob("report.*"))] if st.get("state") == "completed" else []


def _own_size_name(ms: dict, config: dict) -> str:
    """The name of the sweep size an arm's own (main) run stands for."""
    dims = _dims(config)
    for s in ms["sizes"]:
        if _dims({"preset": s.get("preset") or config.get("preset"), **{k: s.get(k) for k in SIZE_KEYS}}) == dims:
            return s["name"]
    return dims["preset"] if dims == _dims({"preset": dims["preset"]}) else f"L{dims['n_layer']}-E{dims['n_embd']}"


def _mean_std(values) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None
    return statistics.mean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0


def _group(runs: list[dict], keys: tuple[str, ...]) -> list[dict]:
    groups: dict = {}
    for r in runs:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    out = []
    for members in groups.values():
        first = members[0]
        row = {"arm": first["arm"], "arm_name": first["arm_name"], "method": first["method"], "model": first["model"],
               "n": len(members), "seeds": [m["seed"] for m in members],
               "num_train_examples": first.get("num_train_examples"),
               "params_total": first["results"].get("params_total")}
        for metric in ("test_accuracy", "test_macro_f1", "train_seconds", "train_val_gap_macro_f1"):
            mean, std = _mean_std(m["results"].get(metric) for m in members)
            row[f"{metric}_mean"], row[f"{metric}_std"] = mean, std
        out.append(row)
    return out


def _group_sweep(rows: list[dict]) -> list[dict]:
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["arm_name"], r["train_fraction"]), []).append(r)
    out = []
    arm_order = list(dict.fromkeys(r["arm_name"] for r in rows))
    for (arm_name, fraction), members in sorted(groups.items(), key=lambda kv: (arm_order.index(kv[0][0]), kv[0][1])):
        first = members[0]
        row = {"arm": first["arm"], "arm_name": arm_name, "method": first["method"], "model": first["model"],
               "train_fraction": fraction,
               "num_train_examples": statistics.mean(m["num_train_examples"] for m in members)
               if all(m.get("num_train_examples") for m in members) else None, "n": len(members)}
        for metric in ("test_macro_f1", "test_accuracy"):
            row[f"{metric}_mean"], row[f"{metric}_std"] = _mean_std(m[metric] for m in members)
        out.append(row)
    return out


def _group_model_size(rows: list[dict]) -> list[dict]:
    groups: dict = {}
    for r in rows:
        groups.setdefault(r["size"], []).append(r)
    out = []
    for size, members in groups.items():
        first = members[0]
        row = {"arm_name": first["arm_name"], "size": size, **{k: first[k] for k in ("preset", *SIZE_KEYS)},
               "params_total": first["params_total"], "n": len(members)}
        for metric in ("test_macro_f1", "test_accuracy", "train_val_gap_macro_f1", "train_val_gap_accuracy"):
            row[f"{metric}_mean"], row[f"{metric}_std"] = _mean_std(m[metric] for m in members)
        out.append(row)
    return sorted(out, key=lambda x: x["params_total"] or 0)


def _crossovers(summary: list[dict]) -> list[dict]:
    """For every fine-tuned arm vs every other arm: fine-tuning's macro-F1 advantage per training-set size
    and the size where it disappears (other arm's mean >= the fine-tuned arm's)."""
    by_arm: dict = defaultdict(dict)
    kinds = {}
    for row in summary:
        by_arm[row["arm_name"]][row["train_fraction"]] = row
        kinds[row["arm_name"]] = row["arm"]
    out = []
    for ft in [a for a, k in kinds.items() if k == "finetune"]:
        for other in [a for a, k in kinds.items() if k != "finetune"]:
            fractions = sorted(set(by_arm[ft]) & set(by_arm[other]))
            points = []
            for f in fractions:
                a, b = by_arm[ft][f], by_arm[other][f]
                if a["test_macro_f1_mean"] is None or b["test_macro_f1_mean"] is None:
                    continue
                sd = math.sqrt((a["test_macro_f1_std"] or 0) ** 2 + (b["test_macro_f1_std"] or 0) ** 2)
                points.append({"train_fraction": f, "num_train_examples": a["num_train_examples"],
                               "delta_macro_f1": a["test_macro_f1_mean"] - b["test_macro_f1_mean"], "delta_std": sd})
            cross, interp = None, None
            for i, p in enumerate(points):
                if p["delta_macro_f1"] <= 0:
                    cross = p["num_train_examples"]
                    if i > 0 and points[i - 1]["num_train_examples"] and p["num_train_examples"]:
                        q = points[i - 1]
                        d0, d1 = q["delta_macro_f1"], p["delta_macro_f1"]
                        x0, x1 = math.log(q["num_train_examples"]), math.log(p["num_train_examples"])
                        t = d0 / (d0 - d1) if d0 != d1 else 1.0
                        interp = math.exp(x0 + t * (x1 - x0))
                    elif p["num_train_examples"]:
                        interp = float(p["num_train_examples"])
                    break
            out.append({"finetuned": ft, "other": other, "other_arm": kinds[other],
                        "rule": "smallest measured #train examples with mean macro-F1(other) >= mean macro-F1(finetuned)",
                        "points": points, "crossover_num_train_examples": cross,
                        "crossover_interpolated": interp})
    return out


# --------------------------------------------------------------------------------------------------
# Terminal summary
# --------------------------------------------------------------------------------------------------


def _pm(mean, std, n) -> str:
    if mean is None:
        return "-"
    return f"{mean:.4f}" if n <= 1 else f"{mean:.4f} ± {std:.4f}"


def _table(rows: list[list[str]], right=()) -> str:
    widths = [max(len(r[j]) for r in rows) for j in range(len(rows[0]))]
    lines = []
    for i, r in enumerate(rows):
        lines.append("  ".join(c.rjust(w) if j in right else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths))).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_summary(reg: dict) -> str:
    runs = [reg["runs"][r] for r in reg.get("order", [])]
    n_done = sum(r["state"] == "completed" for r in runs)
    n_failed = sum(r["state"] == "failed" for r in runs)
    wall = sum(r.get("seconds_wall") or 0 for r in runs)
    out = [f"study {reg['name']} ({reg.get('state')}): {len(runs)} runs, {n_done} completed, {n_failed} failed, "
           f"{_fmt_seconds(wall)} of run time -> {reg.get('study_dir')}", ""]
    rows = [["run", "state", "epochs", "time", "train ex", "test acc", "macro-F1", "params"]]
    for r in runs:
        res = r.get("results") or {}
        params = res.get("params_total")
        rows.append([r["id"], r["state"], str(r.get("epochs_done") or "-"), _fmt_seconds(r.get("seconds_wall")),
                     f"{r['num_train_examples']:,}" if r.get("num_train_examples") else "-",
                     f"{res['test_accuracy']:.4f}" if res.get("test_accuracy") is not None else "-",
                     f"{res['test_macro_f1']:.4f}" if res.get("test_macro_f1") is not None else "-",
                     (f"{params / 1e6:.2f}M" if params >= 1e5 else f"{params:,}") if params else "-"])
    out.append(_table(rows, right={2, 3, 4, 5, 6, 7}))
    failed = [r for r in runs if r["state"] == "failed"]
    for r in failed:
        out.append(f"  failed {r['id']}: {r.get('error')} (log {r['log']})")
    summary = reg.get("summary") or []
    if summary and any(s["n"] > 1 for s in summary):
        out += ["", "main results (mean ± std over seeds):"]
        rows = [["arm", "model", "n", "test accuracy", "test macro-F1"]]
        for s in summary:
            rows.append([s["arm_name"], f"{s['model']}{' ' + s['method'] if s.get('method') and s['arm'] == 'finetune' else ''}",
                         str(s["n"]), _pm(s["test_accuracy_mean"], s["test_accuracy_std"], s["n"]),
                         _pm(s["test_macro_f1_mean"], s["test_macro_f1_std"], s["n"])])
        out.append(_table(rows, right={2}))
    sweeps = reg.get("sweeps") or {}
    if sweeps.get("data_size_summary"):
        out += ["", "data-size sweep (test macro-F1):"]
        fractions = sorted({s["train_fraction"] for s in sweeps["data_size_summary"]})
        arms = list(dict.fromkeys(s["arm_name"] for s in sweeps["data_size_summary"]))
        cell = {(s["arm_name"], s["train_fraction"]): s for s in sweeps["data_size_summary"]}
        sizes = {s["train_fraction"]: s["num_train_examples"] for s in sweeps["data_size_summary"]
                 if s["num_train_examples"]}
        head = ["arm"] + [_frac(f) + (f" ({int(sizes[f]):,} ex)" if f in sizes else "") for f in fractions]
        rows = [head]
        for a in arms:
            rows.append([a] + [_pm(cell[(a, f)]["test_macro_f1_mean"], cell[(a, f)]["test_macro_f1_std"],
                                   cell[(a, f)]["n"]) if (a, f) in cell else "-" for f in fractions])
        out.append(_table(rows, right=set(range(1, len(head)))))
        for c in sweeps.get("crossover") or []:
            where = (f"at ~{c['crossover_interpolated']:,.0f} train examples" if c.get("crossover_interpolated")
                     else "not within the measured sizes")
            out.append(f"  {c['other']} catches up with {c['finetuned']} {where}")
    if sweeps.get("model_size_summary"):
        out += ["", "model-size sweep (from scratch):"]
        rows = [["size", "layers", "width", "params", "n", "test macro-F1", "train-val gap (macro-F1)"]]
        for s in sweeps["model_size_summary"]:
            rows.append([s["size"], str(s["n_layer"]), str(s["n_embd"]), f"{s['params_total']:,}" if s["params_total"] else "-",
                         str(s["n"]), _pm(s["test_macro_f1_mean"], s["test_macro_f1_std"], s["n"]),
                         _pm(s["train_val_gap_macro_f1_mean"], s["train_val_gap_macro_f1_std"], s["n"])])
        out.append(_table(rows, right={1, 2, 3, 4}))
    stages = reg.get("stages") or {}
    st = stages.get("compare")
    if st:
        out.append("")
        out.append(f"compare: {st.get('state')}" + (f" -> {st['out']}" if st.get("state") == "completed" else "")
                   + (f" ({st['error']})" if st.get("error") else ""))
        if st.get("report"):
            out.append(f"report: {', '.join(st['report'])}")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def cmd_study(args) -> int:
    if args.list_presets:
        for name in preset_names():
            cfg = _parse_yaml(preset_text(name), name)
            desc = " ".join(str(cfg.get("description", "")).split())
            print(f"{name:<10} {desc}")
        return 0
    overrides = list(args.set or [])
    if args.data_source:
        overrides.append(f"data.source={args.data_source}")
    for key in ("max_train_examples", "max_val_examples", "max_test_examples"):
        if getattr(args, key) is not None:
            overrides.append(f"data.{key}={getattr(args, key)}")
    cfg, preset = load_study_config(args.config, args.preset, ())
    raw = copy.deepcopy(cfg)
    if args.num_train_epochs is not None:  # every neural arm, over the arms' own values
        for arm in raw["arms"]:
            if arm["arm"] != "baseline":
                arm["num_train_epochs"] = args.num_train_epochs
    for o in overrides:
        apply_override(raw, o)
    if args.seeds:
        raw["seeds"] = list(args.seeds)
    if args.fractions:
        ds = raw["sweeps"].get("data_size") or {}
        raw["sweeps"]["data_size"] = {**ds, "fractions": list(args.fractions)}
    if args.no_compare:
        raw["compare"] = False
    if args.no_report:
        raw["report"] = False
    cfg = normalize_config(raw, cfg["name"])
    out = Path(args.output_dir or Path("studies") / cfg["name"])
    study = Study(cfg, out, preset=preset, force=args.force, only=args.only or (), retry_failed=args.retry_failed,
                  progress=Progress(quiet=args.quiet), poll_seconds=args.poll_seconds,
                  config_source=str(args.config) if args.config else f"preset:{preset}")
    if args.dry_run:
        print(f"study {cfg['name']} -> {out}: {len(study.plan)} runs ({study._plan_text()})")
        for r in study.plan:
            mark = "" if study.selected(r.id) else "  (not selected)"
            print(f"  {r.id:<40} {r.kind:<9} sweep={r.sweep:<10} seed={r.seed} fraction={_frac(r.train_fraction)}{mark}")
        return 0
    try:
        reg = study.run()
    except (KeyboardInterrupt, StudyInterrupted):
        print(f"\nftvs: study interrupted; run the same command again to resume (registry: {study.path})",
              file=sys.stderr)
        return 130
    print()
    print(format_summary(reg))
    print(f"registry: {study.path}")
    return 0 if reg["state"] == "completed" else 1


def add_cli(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "study", help="run the whole study (data, baseline, both arms, seeds, sweeps, compare, report) from one YAML",
        description="Run a whole study from a YAML file or a built-in preset into one folder with a registry "
                    "(study.json) of every run. Rerunning the same command skips finished runs, resumes "
                    "interrupted ones from their last checkpoint and retries failed ones; --force reruns. "
                    f"Presets: {', '.join(preset_names())} (see --list-presets).")
    p.add_argument("config", nargs="?", help="study YAML file (format: see the top of ftvs/study.py)")
    p.add_argument("--preset", help="a built-in study: quick (CPU, ~8 minutes), banking77, ag_news (GPU)")
    p.add_argument("--list-presets", "--list_presets", dest="list_presets", action="store_true",
                   help="print the built-in studies and exit")
    p.add_argument("--output_dir", "--output-dir", dest="output_dir", help="study folder (default studies/NAME)")
    p.add_argument("--seeds", type=int, nargs="+", help="override the seeds, e.g. --seeds 0 1 2")
    p.add_argument("--fractions", type=float, nargs="+", help="override the data-size sweep fractions")
    p.add_argument("--data_source", "--data-source", dest="data_source",
                   help="override data.source (e.g. a local CSV folder instead of the Hub)")
    p.add_argument("--max_train_examples", "--max-train-examples", dest="max_train_examples", type=int,
                   help="override data.max_train_examples (stratified cap of train)")
    p.add_argument("--max_val_examples", "--max-val-examples", dest="max_val_examples", type=int,
                   help="override data.max_val_examples")
    p.add_argument("--max_test_examples", "--max-test-examples", dest="max_test_examples", type=int,
                   help="override data.max_test_examples")
    p.add_argument("--num_train_epochs", "--epochs", dest="num_train_epochs", type=int,
                   help="override the epochs of every neural arm")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override any config value (YAML), e.g. --set train.max_seq_length=64 "
                        "--set arms.smollm2-lora.method=full (repeatable)")
    p.add_argument("--only", nargs="+", metavar="PATTERN", help="only the runs whose id matches a glob, e.g. 'scratch-*'")
    p.add_argument("--force", action="store_true", help="rerun (all runs, or those of --only) from scratch")
    p.add_argument("--retry_failed", "--retry-failed", dest="retry_failed", action=argparse.BooleanOptionalAction,
                   default=True, help="retry runs that failed in an earlier invocation (default on)")
    p.add_argument("--no-compare", "--no_compare", dest="no_compare", action="store_true", help="skip `ftvs compare`")
    p.add_argument("--no-report", "--no_report", dest="no_report", action="store_true", help="skip `ftvs report`")
    p.add_argument("--dry_run", "--dry-run", dest="dry_run", action="store_true", help="print the runs and exit")
    p.add_argument("--quiet", action="store_true", help="no progress view, only the final summary")
    p.add_argument("--poll_seconds", "--poll-seconds", dest="poll_seconds", type=float, default=1.0,
                   help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_study)
    return p
