"""`ftvs study CONFIG.yaml` / `ftvs study --preset NAME`: the whole study from one YAML file.

One command runs prepare -> TF-IDF baseline -> from-scratch arm(s) -> fine-tuned arm(s) -> evaluate ->
compare -> report into one study folder, once per seed, plus the data-size and model-size sweeps.
The YAML format, the study folder and study.json are described in docs/study.md.

    config      presets, YAML, `--set` overrides, validation and defaults
    plan        the runs to make, in execution order
    registry    study.json: a `RunEntry` per run, load/save, reconciling it with the plan
    supervisor  the study process: data, child processes, resume/retry, compare
    executors   where the child processes run: here, one or `--parallel N` at a time, or on a Ray cluster
    progress    the status line and ETAs, from each run's progress.json and history.jsonl
    summary     per-arm summaries, sweeps, crossover, the terminal summary
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

from ftvs.comparison.decide import add_constraint_args, constraints_from_args
from ftvs.executors import add_executor_flags, check_executor_flags, executor_from_args
from ftvs.study.config import (
    FREE_KEYS,
    apply_override,
    load_study_config,
    model_dims,
    normalize_config,
    parse_yaml,
    preset_names,
    preset_text,
)
from ftvs.study.plan import PlannedRun, frac, plan_runs
from ftvs.study.progress import Progress
from ftvs.study.registry import RunEntry
from ftvs.study.summary import crossovers, format_summary
from ftvs.study.supervisor import Study, StudyInterrupted

__all__ = [
    "FREE_KEYS", "PlannedRun", "Progress", "RunEntry", "Study", "StudyInterrupted", "add_cli",
    "apply_override", "cmd_study", "crossovers", "format_summary", "load_study_config", "model_dims",
    "normalize_config", "plan_runs", "preset_names",
]  # fmt: skip


def cmd_study(args) -> int:
    if args.list_presets:
        for name in preset_names():
            cfg = parse_yaml(preset_text(name), name)
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
    if constraints_from_args(args):  # the flags over the YAML's `decide:` block
        raw["decide"] = {**(raw.get("decide") or {}), **constraints_from_args(args)}
    if args.no_compare:
        raw["compare"] = False
    if args.no_report:
        raw["report"] = False
    cfg = normalize_config(raw, cfg["name"])
    out = Path(args.output_dir or Path("studies") / cfg["name"])
    study = Study(
        cfg,
        out,
        preset=preset,
        force=args.force,
        only=args.only or (),
        retry_failed=args.retry_failed,
        progress=Progress(quiet=args.quiet),
        poll_seconds=args.poll_seconds,
        config_source=str(args.config) if args.config else f"preset:{preset}",
        tune_only=args.tune_only,
    )
    check_executor_flags(args)
    if args.dry_run:
        print(f"study {cfg['name']} -> {out}: {len(study.plan)} runs ({study.plan_text()})")
        for r in study.plan:
            mark = "" if study.selected(r.id) else "  (not selected)"
            print(
                f"  {r.id:<40} {'distill' if r.teacher else r.kind:<9} sweep={r.sweep:<10} seed={r.seed} "
                f"fraction={frac(r.train_fraction)}{mark}"
            )
        return 0
    study.executor = executor_from_args(args, out)
    try:
        reg = study.run()
    except (KeyboardInterrupt, StudyInterrupted):
        print(
            f"\nftvs: study interrupted; run the same command again to resume (registry: {study.path})",
            file=sys.stderr,
        )
        return 130
    finally:
        study.executor.close()
    print()
    print(format_summary(reg))
    print(f"registry: {study.path}")
    return 0 if reg["state"] in ("completed", "tuned") else 1


def add_cli(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "study",
        help="run the whole study (data, baseline, both arms, seeds, sweeps, compare, report) from one YAML",
        description="Run a whole study from a YAML file or a built-in preset into one folder with a registry "
        "(study.json) of every run. Rerunning the same command skips finished runs, resumes "
        "interrupted ones from their last checkpoint and retries failed ones; --force reruns. "
        f"Presets: {', '.join(preset_names())} (see --list-presets).",
    )
    p.add_argument("config", nargs="?", help="study YAML file (format: docs/study.md)")
    p.add_argument("--preset", help="a built-in study: quick (CPU, ~8 minutes), banking77, ag_news (GPU)")
    p.add_argument(
        "--list-presets",
        "--list_presets",
        dest="list_presets",
        action="store_true",
        help="print the built-in studies and exit",
    )
    p.add_argument(
        "--output_dir", "--output-dir", dest="output_dir", help="study folder (default studies/NAME)"
    )
    p.add_argument("--seeds", type=int, nargs="+", help="override the seeds, e.g. --seeds 0 1 2")
    p.add_argument("--fractions", type=float, nargs="+", help="override the data-size sweep fractions")
    p.add_argument(
        "--data_source",
        "--data-source",
        dest="data_source",
        help="override data.source (e.g. a local CSV folder instead of the Hub)",
    )
    p.add_argument(
        "--max_train_examples",
        "--max-train-examples",
        dest="max_train_examples",
        type=int,
        help="override data.max_train_examples (stratified cap of train)",
    )
    p.add_argument(
        "--max_val_examples",
        "--max-val-examples",
        dest="max_val_examples",
        type=int,
        help="override data.max_val_examples",
    )
    p.add_argument(
        "--max_test_examples",
        "--max-test-examples",
        dest="max_test_examples",
        type=int,
        help="override data.max_test_examples",
    )
    p.add_argument(
        "--num_train_epochs",
        "--epochs",
        dest="num_train_epochs",
        type=int,
        help="override the epochs of every neural arm",
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override any config value (YAML), e.g. --set train.max_seq_length=64 "
        "--set arms.smollm2-lora.method=full (repeatable)",
    )
    p.add_argument(
        "--only", nargs="+", metavar="PATTERN", help="only the runs whose id matches a glob, e.g. 'scratch-*'"
    )
    p.add_argument("--force", action="store_true", help="rerun (all runs, or those of --only) from scratch")
    p.add_argument(
        "--retry_failed",
        "--retry-failed",
        dest="retry_failed",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="retry runs that failed in an earlier invocation (default on)",
    )
    p.add_argument(
        "--no-compare", "--no_compare", dest="no_compare", action="store_true", help="skip `ftvs compare`"
    )
    p.add_argument(
        "--no-report", "--no_report", dest="no_report", action="store_true", help="skip `ftvs report`"
    )
    add_executor_flags(p, "runs")
    add_constraint_args(p)
    p.add_argument(
        "--tune_only",
        "--tune-only",
        dest="tune_only",
        action="store_true",
        help="prepare the data and run the arms' `tune:` searches, then stop (no final runs)",
    )
    p.add_argument(
        "--dry_run", "--dry-run", dest="dry_run", action="store_true", help="print the runs and exit"
    )
    p.add_argument("--quiet", action="store_true", help="no progress view, only the final summary")
    p.add_argument(
        "--poll_seconds",
        "--poll-seconds",
        dest="poll_seconds",
        type=float,
        default=1.0,
        help=argparse.SUPPRESS,
    )
    p.set_defaults(func=cmd_study)
    return p
