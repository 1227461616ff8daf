"""`ftvs` command line. Each command lives in its own module, which registers it through `add_cli`."""

import argparse
import dataclasses
import errno
import importlib
import logging
import os
import sys
import typing

from ftvs import __version__
from ftvs.errors import FtvsError


def _add_config_flags(parser, arm: str) -> None:
    """One flag per TrainConfig field the arm reads, with the field's help and default."""
    from ftvs.config import FINETUNE_ONLY, SCRATCH_ONLY, TrainConfig

    skip = {"arm", "extra"} | (FINETUNE_ONLY if arm == "scratch" else SCRATCH_ONLY)
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name in skip:
            continue
        names = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if "_" in f.name else [])
        if f.name == "model_name_or_path":
            names.append("--model")
        default = f.metadata["default_text"]() if f.metadata["default_text"] else f.default
        help_text = (
            f.metadata["help"] + (f" (default {default})" if default not in (None, "") else "")
        ).replace("%", "%%")
        kind = hints[f.name]
        if kind is bool:
            parser.add_argument(
                *names, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        elif kind is str and "yes" in f.metadata["choices"]:  # `--compile` alone means yes
            parser.add_argument(*names, dest=f.name, nargs="?", const="yes", default=None, help=help_text)
        elif typing.get_origin(kind) in (list,) or kind == list[str] | None:
            parser.add_argument(*names, dest=f.name, nargs="+", default=None, help=help_text)
        else:
            base = (
                next((t for t in typing.get_args(kind) if t is not type(None)), kind)
                if typing.get_args(kind)
                else kind
            )
            parser.add_argument(*names, dest=f.name, type=base, default=None, help=help_text)


def cmd_train(args) -> int:
    from ftvs.config import FIELDS, build_config, load_yaml
    from ftvs.train import train

    file_values = load_yaml(args.config) if args.config else {}
    if args.resume:
        from ftvs.rundir import existing_run

        existing_run(args.resume, "--resume", "pass the --output_dir of the run to continue")
    if args.resume and not args.config and not file_values:
        from pathlib import Path

        from ftvs.rundir import CONFIG

        saved = Path(args.resume) / CONFIG
        if saved.is_file():  # `--resume RUN_DIR` alone continues with the run's own config
            from ftvs.config import read_saved_config

            file_values = read_saved_config(Path(args.resume))
    cli_values = {k: v for k, v in vars(args).items() if k in FIELDS and v is not None}
    cli_values["arm"] = args.arm
    if args.resume:
        cli_values["output_dir"] = args.resume
    cfg = build_config({k: v for k, v in file_values.items() if k != "arm"}, cli_values)
    if not cfg.data:
        raise FtvsError("no --data given; prepare a dataset with `ftvs prepare` and pass its folder")
    summary = train(
        cfg, resume=bool(args.resume), overwrite=args.overwrite_output_dir, data_given="data" in cli_values
    )
    from accelerate import PartialState

    log = PartialState().print  # under `accelerate launch`, the main process alone prints
    log(
        f"trained {summary['epochs_run']} epochs in {summary['seconds_total']:.1f}s; best epoch "
        f"{summary['best_epoch']} (val macro-F1 {summary['best_val_macro_f1']:.4f}); stop: "
        f"{summary['stop_reason']}"
    )
    if args.evaluate and summary.get("status") == "completed":
        from ftvs.evaluate import evaluate_run
        from ftvs.tracking import log_test_metrics

        m = evaluate_run(cfg.output_dir)
        log_test_metrics(cfg, m)
        log(f"test accuracy {m['test']['accuracy']:.4f} | macro-F1 {m['test']['macro_f1']:.4f}")
    return 0


def _add_train(subparsers) -> None:
    p = subparsers.add_parser("train", help="train one model (from scratch or fine-tuned)")
    arms = p.add_subparsers(dest="arm", metavar="{scratch,finetune}", required=True)
    for arm, text in (
        ("scratch", "train a small decoder-only transformer from random initialisation"),
        ("finetune", "fine-tune a pre-trained decoder-only LM with a classification head"),
    ):
        sp = arms.add_parser(
            arm,
            help=text,
            description=text + ". Flags override --config; YAML keys are the flag names without dashes.",
        )
        sp.add_argument("--config", help="YAML file of flag values (flags given here override it)")
        sp.add_argument(
            "--resume", metavar="RUN_DIR", help="continue an interrupted run exactly where it stopped"
        )
        sp.add_argument(
            "--overwrite_output_dir",
            "--overwrite-output-dir",
            action="store_true",
            help="replace a finished run of this arm in --output_dir (nothing else is ever replaced)",
        )
        sp.add_argument(
            "--evaluate",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="evaluate on the test split when training ends (default on)",
        )
        _add_config_flags(sp, arm)
        sp.set_defaults(func=cmd_train)


def cmd_models(args) -> int:
    from ftvs.model import PRESETS, ScratchClassifier, ScratchConfig

    vocab = args.vocab_size
    print(
        f"from-scratch presets (vocabulary {vocab:,}, {args.num_labels} classes, max length "
        f"{args.max_seq_length}):"
    )
    print(
        f"{'preset':<8} {'layers':>6} {'width':>6} {'heads':>5} {'ffn':>6} {'params':>11} {'embedding':>10} "
        f"{'non-emb':>10}"
    )
    for name, sizes in PRESETS.items():
        cfg = ScratchConfig(
            vocab_size=vocab, num_labels=args.num_labels, max_position=args.max_seq_length, **sizes
        )
        n = ScratchClassifier(cfg).num_parameters()
        print(
            f"{name:<8} {sizes['n_layer']:>6} {sizes['n_embd']:>6} {sizes['n_head']:>5} {sizes['d_ff']:>6} "
            f"{n['total']:>11,} {n['embedding']:>10,} {n['non_embedding']:>10,}"
        )
    return 0


def _add_models(subparsers) -> None:
    p = subparsers.add_parser(
        "models",
        help="print the from-scratch presets and their parameter counts",
        description="Parameter counts include the embedding table, whose size depends on the "
        "trimmed vocabulary of your data (Banking77 with the SmolLM2 tokenizer: ~5k).",
    )
    p.add_argument(
        "--vocab_size", "--vocab-size", type=int, default=5000, help="trimmed vocabulary size (default 5000)"
    )
    p.add_argument(
        "--num_labels", "--num-labels", type=int, default=77, help="number of classes (default 77)"
    )
    p.add_argument("--max_seq_length", type=int, default=128, help="positions (default 128)")
    p.set_defaults(func=cmd_models)


# modules that register their own sub-commands (optional ones are skipped until they exist)
COMMAND_MODULES = [
    "ftvs.data",
    "ftvs.evaluate",
    "ftvs.baseline",
    "ftvs.compare",
    "ftvs.report",
    "ftvs.study",
    "ftvs.tune",
    "ftvs.export",
    "ftvs.serve",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ftvs",
        description="Fine-tuning vs. from-scratch: prepare a text-classification dataset, train a small "
        "decoder-only "
        "transformer from scratch and fine-tune a pre-trained decoder LM on it, evaluate both and "
        "write the comparative report.",
    )
    parser.add_argument("--version", action="version", version=f"ftvs {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES[:1]:
        importlib.import_module(name).add_cli(sub)
    _add_train(sub)
    for name in COMMAND_MODULES[1:]:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue
        module.add_cli(sub)
    _add_models(sub)
    return parser


def main(argv=None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest:  # `ftvs predict RUN --onnx "text"`: argparse leaves texts after a flag unparsed
        if not hasattr(args, "texts") or any(r.startswith("-") for r in rest):
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        args.texts = [*args.texts, *rest]
    try:
        return args.func(args) or 0
    except FtvsError as e:
        if args.debug:
            raise
        print(f"ftvs: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `ftvs ... | head`: the reader left; not an error of ours
        sys.stderr.close()
        return 0
    except OSError as e:
        if e.errno != errno.ENOSPC or args.debug:
            raise
        print(
            f"ftvs: error: disk full while writing {e.filename or 'results'}; free space, then rerun "
            "(training continues with --resume RUN_DIR)",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("ftvs: interrupted; resume with --resume RUN_DIR", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
