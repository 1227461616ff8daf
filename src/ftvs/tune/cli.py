"""`ftvs tune`: the command line of the search (ftvs.tune.search does the work)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from ftvs.errors import FtvsError
from ftvs.executors import add_executor_flags, check_executor_flags, executor_from_args
from ftvs.tune.search import PRUNERS
from ftvs.tune.space import ARMS

DESCRIPTION = (
    "Search the hyperparameters of one arm with Optuna (TPE sampler, median pruner) on a prepared data "
    "folder, "
    "scoring each trial on the validation split only (the test split is never read). Each trial of scratch/"
    "finetune is a real `ftvs train` run in OUTPUT_DIR/trials/NNNN, here or on a Ray cluster, one or "
    "--parallel N at a time. The study lives in OUTPUT_DIR (optuna.db, or --storage): rerun the same "
    "command to resume a stopped search. Writes OUTPUT_DIR/best.yaml (for `ftvs train "
    "--config`) and OUTPUT_DIR/tune.json. Any `ftvs train` flag given here is fixed for every trial. "
    "See docs/tune.md."
)


def add_cli(subparsers) -> argparse.ArgumentParser:
    from ftvs.cli import _add_config_flags

    # both arms' train flags are accepted (the chosen arm's are used); the tune flags, added after them,
    # replace the train flags of the same name (--data, --output_dir, --seed, --method, --config)
    p = subparsers.add_parser(
        "tune",
        help="hyperparameter search for one arm (validation split only)",
        description=DESCRIPTION,
        conflict_handler="resolve",
    )
    tune = p.add_argument_group("search")
    fixed = p.add_argument_group("fixed train settings", "`ftvs train` flags, the same for every trial")
    _add_config_flags(fixed, "scratch")
    _add_config_flags(fixed, "finetune")
    tune.add_argument("--arm", required=True, choices=ARMS, help="the arm to tune")
    tune.add_argument(
        "--method",
        choices=("lora", "full", "frozen", "unfreeze"),
        default=None,
        help="finetune arm: the method whose space is searched (default lora)",
    )
    tune.add_argument("--data", required=True, help="prepared data folder (from `ftvs prepare`)")
    tune.add_argument(
        "--output_dir",
        "--output-dir",
        dest="output_dir",
        required=True,
        help="tune folder: optuna.db (or optuna.journal), trials/, best.yaml, tune.json (rerun to resume)",
    )
    tune.add_argument(
        "--n_trials",
        "--n-trials",
        dest="n_trials",
        type=int,
        default=None,
        help="budget: finished (completed or pruned) trials, over every session of the search",
    )
    tune.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="budget: seconds spent in trials; no trial starts after it (one may overrun it)",
    )
    tune.add_argument(
        "--space", default=None, help="YAML overrides of the arm's search space (see docs/tune.md)"
    )
    tune.add_argument(
        "--seed", type=int, default=0, help="seeds the sampler and every trial's training (default 0)"
    )
    tune.add_argument("--pruner", choices=PRUNERS, default="median", help="trial pruning (default median)")
    tune.add_argument(
        "--defaults_first",
        "--defaults-first",
        dest="defaults_first",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="make the first trial the arm's default settings (default on)",
    )
    tune.add_argument(
        "--storage",
        default=None,
        help="where the Optuna study lives: sqlite (OUTPUT_DIR/optuna.db, the default here), journal "
        "(OUTPUT_DIR/optuna.journal, the default with --executor ray: safe on a shared filesystem) or a "
        "database URL (postgresql://...); a folder keeps the storage it started with",
    )
    add_executor_flags(tune, "trials")
    fixed.add_argument(
        "--config", default=None, help="YAML of fixed settings for every trial (train flag names)"
    )
    fixed.add_argument(
        "--set",
        dest="set_values",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="fixed settings for every trial, values in YAML (e.g. --set max_seq_length=64)",
    )
    p.set_defaults(func=cmd_tune)
    return p


def _parse_set(items: list[str]) -> dict:
    values = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise FtvsError(f"--set {item!r} is not KEY=VALUE; write e.g. --set max_seq_length=64")
        values[key.strip().replace("-", "_")] = yaml.safe_load(text)
    return values


def cmd_tune(args) -> int:
    from ftvs.config import FIELDS, load_yaml
    from ftvs.tune.search import tune_arm

    fixed = {**(load_yaml(args.config) if args.config else {}), **_parse_set(args.set_values)}
    flags = {
        k: v
        for k, v in vars(args).items()
        if k in FIELDS and v is not None and k not in ("arm", "data", "output_dir", "seed", "method")
    }
    if args.arm == "baseline" and flags:
        raise FtvsError(
            f"train flags ({', '.join('--' + k for k in flags)}) do not apply to --arm baseline; "
            "fix baseline settings with --set (e.g. --set min_df=2)"
        )
    check_executor_flags(args)
    if args.arm == "baseline" and (args.executor != "local" or args.parallel is not None):
        raise FtvsError(
            "--executor/--parallel apply to scratch and finetune trials; baseline trials are fits of "
            "seconds in this process: drop them"
        )
    executor = executor_from_args(args, Path(args.output_dir)) if args.arm != "baseline" else None
    try:
        summary = tune_arm(
            args.arm,
            args.data,
            args.output_dir,
            method=args.method,
            base={**fixed, **flags},
            space=args.space,
            n_trials=args.n_trials,
            timeout=args.timeout,
            seed=args.seed,
            pruner=args.pruner,
            defaults_first=args.defaults_first,
            executor=executor,
            storage=args.storage,
        )
    except KeyboardInterrupt:
        print("ftvs: interrupted; rerun the same command to resume the search", file=sys.stderr)
        return 130
    finally:
        if executor is not None:
            executor.close()
    best = summary["best"]
    if best is None:
        raise FtvsError(
            f"no trial completed within the budget; raise --n_trials or --timeout and rerun to continue "
            f"(see {args.output_dir}/tune.json)"
        )
    print(f"best val macro-F1 {best['value']:.4f} (trial {best['number']}): {best['params']}")
    print(f"train it: {best['command']}")
    return 0
