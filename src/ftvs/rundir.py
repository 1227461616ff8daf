"""The run folder: its file names, and the one reader/writer of its evaluation results and figures.

Every run, from scratch, fine-tuned or the TF-IDF baseline, has the same layout, so `ftvs compare`
treats them alike:

    RUN_DIR/config.yaml           the resolved training config
    RUN_DIR/history.jsonl         one line per epoch (train/val scores, lr, seconds)
    RUN_DIR/train_summary.json    status, stop reason, timings
    RUN_DIR/model/                the best epoch's exported model, with model/ftvs.json naming its arm
    RUN_DIR/checkpoint/           the training state to resume from
    RUN_DIR/metrics.json          test scores and costs (written by evaluation; marks an evaluated run)
    RUN_DIR/predictions.json      test labels and predictions (paired significance tests read them)
    RUN_DIR/training_curves.png, RUN_DIR/confusion_matrix.png, RUN_DIR/reliability_diagram.png
    RUN_DIR/metrics_val.json ...  scores of another split (`ftvs evaluate RUN --split val`), split-named

`check_output_dir` guards what a run may write into: nothing of the user's is ever replaced.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import yaml

from ftvs.errors import FtvsError
from ftvs.fileio import check_folder_path, files_hash, read_json, read_jsonl, write_json
from ftvs.plots import plot_confusion_matrix, plot_training_curves

CONFIG = "config.yaml"
HISTORY = "history.jsonl"
TRAIN_SUMMARY = "train_summary.json"
MODEL_DIR = "model"
MODEL_MARKER = "ftvs.json"  # inside MODEL_DIR: which arm wrote the model, and how to load it
CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_STATE = (
    "state.json"  # inside CHECKPOINT_DIR, written last: a checkpoint is complete once it exists
)
METRICS = "metrics.json"
PREDICTIONS = "predictions.json"
TRAINING_CURVES = "training_curves.png"
CONFUSION_MATRIX = "confusion_matrix.png"
RELIABILITY_DIAGRAM = "reliability_diagram.png"
DATA_METADATA = "metadata.json"  # inside a prepared data folder, which a run names in its config

PROGRESS = "progress.json"
LOGS_DIR = "logs"  # experiment trackers (`--report_to`)
EXPORT_DIR = "export"  # `ftvs export`
TEACHER_LOGITS, TEACHER_INFO = "teacher_logits.safetensors", "teacher.json"  # a distilled student's cache
TRIAL_CONFIG, TRIAL_LOG = "trial.yaml", "train.log"  # what `ftvs tune` writes before a trial's run starts
LAUNCH_FILES = {TRIAL_CONFIG, TRIAL_LOG}

# everything a run writes at its top level (plus hidden lock/temp files and split-named results)
RUN_FILES = {
    CONFIG,
    HISTORY,
    TRAIN_SUMMARY,
    MODEL_DIR,
    CHECKPOINT_DIR,
    METRICS,
    PREDICTIONS,
    TRAINING_CURVES,
    CONFUSION_MATRIX,
    PROGRESS,
    RELIABILITY_DIAGRAM,
    LOGS_DIR,
    EXPORT_DIR,
    TRIAL_CONFIG,
    TRIAL_LOG,
    TEACHER_LOGITS,
    TEACHER_INFO,
} | {f"{d}{s}" for d in (MODEL_DIR, CHECKPOINT_DIR) for s in (".tmp", ".old")}
RESULT_PREFIXES = ("metrics_", "predictions_", "confusion_matrix_")

CONFIDENCE_DIGITS = 6  # enough to rank predictions, small enough to keep predictions.json readable


def is_run_file(name: str) -> bool:
    return name in RUN_FILES or name.startswith(".") or name.startswith(RESULT_PREFIXES)


def run_kind(run_dir) -> str | None:
    """The arm ("scratch", "finetune", "baseline") of an ftvs run folder, or None when it is not one."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        return read_marker(run_dir).get("arm") if (model_dir(run_dir) / MODEL_MARKER).is_file() else None
    return read_config(run_dir).get("arm")


def is_finished(run_dir) -> bool:
    return read_summary(run_dir).get("status") == "completed" or (Path(run_dir) / METRICS).is_file()


def check_output_dir(out, kind: str, *, data_dir=None, resume: bool = False, overwrite: bool = False) -> None:
    """Refuse an --output_dir where a run would replace something not its own: a file, the data folder or a
    folder inside it, a folder holding other files, another kind of run, or a finished run (unless
    `overwrite`, which then removes that run's files). An unfinished run of the same kind is left for
    --resume (or replaced with `overwrite`)."""
    out = Path(out)
    check_folder_path(out, "--output_dir")
    if data_dir:
        data = Path(data_dir).resolve()
        if out.resolve() == data or data in out.resolve().parents:
            raise FtvsError(
                f"--output_dir {out} is inside the data folder {data_dir} (`ftvs prepare` replaces that "
                "folder); "
                "choose a folder outside it"
            )
    if not out.is_dir() or all(p.name.startswith(".") or p.name in LAUNCH_FILES for p in out.iterdir()):
        return  # new, empty, prepared by `ftvs tune`, or left with only a lock by a run that failed early
    found = run_kind(out)
    # outside a run every entry is the user's, even one named like a run's (u/model/ with their files)
    foreign = sorted(
        p.name + ("/" if p.is_dir() else "")
        for p in out.iterdir()
        if found is None and not p.name.startswith(".") or not is_run_file(p.name)
    )
    if found is None or foreign:
        shown = ", ".join(foreign[:5])
        raise FtvsError(
            f"--output_dir {out} holds files that are not an ftvs run's ({shown}); "
            "choose a new or empty folder so nothing of yours is replaced"
        )
    if found != kind:
        raise FtvsError(
            f"--output_dir {out} holds a {found!r} run, not a {kind!r} one; choose another folder"
        )
    if is_finished(out) and not (resume or overwrite):
        raise FtvsError(
            f"--output_dir {out} holds a finished {kind} run; pass --overwrite_output_dir to replace it "
            "or choose another folder"
        )


def clear_run(run_dir, keep: tuple[str, ...] = ()) -> None:
    """Remove a run's files (all of them but `keep`, after `check_output_dir` found nothing else there)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return
    for p in run_dir.iterdir():
        if is_run_file(p.name) and p.name not in (".lock", *keep):  # the lock: held by this very process
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()


def check_training_ended(run_dir, doing: str, scored_status: str | None = None) -> None:
    """Refuse to `doing` (evaluate, export, compare) a run whose training has not ended: still running (its
    lock is held) or killed (train_summary.json says "running"), or whose scores were taken mid-training
    (`scored_status`, what metrics.json recorded, is "running"). A failed run keeps its best epoch and may
    be scored."""
    from ftvs.fileio import RunLock

    run_dir = Path(run_dir)
    status = read_summary(run_dir).get("status")
    if "running" not in (status, scored_status):
        return
    if status != "running":
        raise FtvsError(
            f"{run_dir} was scored while it was still training ({METRICS} says 'running'); re-run "
            f"`ftvs evaluate {run_dir}`, then {doing} it"
        )
    if not RunLock.is_free(run_dir):
        raise FtvsError(f"{run_dir} is still training; {doing} it once its training has ended")
    again = (
        "rerun `ftvs baseline` on it"
        if run_kind(run_dir) == "baseline"
        else f"`ftvs train --resume {run_dir}`"
    )
    raise FtvsError(
        f"the training of {run_dir} never ended (killed or interrupted: its status is 'running'); finish it "
        f"({again}), then {doing} it"
    )


def is_evaluated(path: Path) -> bool:
    return path.is_dir() and (path / METRICS).is_file()


def existing_run(
    run_dir,
    what: str = "run folder",
    fix: str = "pass a run folder written by `ftvs train` or `ftvs baseline`",
) -> Path:
    """`run_dir` as a Path; a folder that does not exist is a one-line error that says so."""
    path = Path(run_dir)
    if not path.is_dir():
        raise FtvsError(
            f"{what} {path} {'is a file, not a folder' if path.exists() else 'does not exist'}; {fix}"
        )
    return path


def model_dir(run_dir) -> Path:
    return Path(run_dir) / MODEL_DIR


def model_hash(run_dir) -> str:
    """sha256 over the files of the run's model/ folder (weights, configs, tokenizer; not the model card
    that evaluate rewrites): the identity of the model an exported graph was made from."""
    root = model_dir(run_dir)
    names = sorted(
        p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.name != "README.md"
    )
    return files_hash(root, names)


def has_checkpoint(run_dir) -> bool:
    return (Path(run_dir) / CHECKPOINT_DIR / CHECKPOINT_STATE).is_file()


def read_config(run_dir) -> dict:
    """config.yaml as a dict; {} when the run has none (an evaluated-only or foreign run)."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise FtvsError(f"{path} is not valid YAML ({e}); restore it or re-run the training") from None
    return data if isinstance(data, dict) else {}


def read_history(run_dir) -> list[dict]:
    path = Path(run_dir) / HISTORY
    return read_jsonl(path) if path.is_file() else []


def read_summary(run_dir) -> dict:
    path = Path(run_dir) / TRAIN_SUMMARY
    return read_json(path, "training summary") if path.is_file() else {}


def read_marker(run_dir) -> dict:
    path = model_dir(run_dir) / MODEL_MARKER
    return read_json(path, "model marker") if path.is_file() else {}


def read_metrics(run_dir) -> dict:
    return read_json(Path(run_dir) / METRICS, "metrics")


def read_predictions(run_dir) -> dict:
    path = Path(run_dir) / PREDICTIONS
    if not path.is_file():
        raise FtvsError(f"{path} missing; re-run `ftvs evaluate {run_dir}` to write test predictions")
    return read_json(path, "predictions")


def result_names(split: str = "test") -> tuple[str, str, str]:
    """(metrics, predictions, confusion matrix) file names of a split's scores: the test split owns the
    plain names (what marks a run evaluated and what `compare` reads); another split never replaces them."""
    if split == "test":
        return METRICS, PREDICTIONS, CONFUSION_MATRIX
    return f"metrics_{split}.json", f"predictions_{split}.json", f"confusion_matrix_{split}.png"


def clear_results(run_dir, split: str = "test") -> None:
    """Remove a previous evaluation, so a failed re-run cannot leave stale scores behind."""
    for name in result_names(split)[:2]:
        (Path(run_dir) / name).unlink(missing_ok=True)


def write_results(
    run_dir, metrics: dict, label_names, y_true, y_pred, confidence, split: str = "test", split_hash=None
) -> None:
    """predictions.json, then metrics.json: a run counts as evaluated once metrics.json exists, so it is
    written last and a reader never finds scores without the predictions behind them. `split_hash`
    (the scored split's content hash) lets `compare` check that runs saw the same texts."""
    run_dir = Path(run_dir)
    metrics_name, predictions_name, _ = result_names(split)
    write_json(
        run_dir / predictions_name,
        {
            "label_names": list(label_names),
            "split": split,
            "split_hash": split_hash,
            "y_true": [int(y) for y in y_true],
            "y_pred": [int(y) for y in y_pred],
            "confidence": [round(float(c), CONFIDENCE_DIGITS) for c in confidence],
        },
    )
    write_json(run_dir / metrics_name, metrics)


def trained_data_hash(run_dir) -> str | None:
    """content_hash of the prepared data a run was trained on (config.yaml, under `resolved:` for the
    neural runs), if recorded."""
    cfg = read_config(run_dir)
    return cfg.get("data_content_hash") or (cfg.get("resolved") or {}).get("data_content_hash")


def check_same_data(run_dir, data_dir, data_hash, *, explicit: bool, doing: str) -> None:
    """Refuse to `doing` (resume, evaluate) a run on data other than it was trained on, unless the user
    named that data with --data; then say in one line that it is other data."""
    trained = trained_data_hash(run_dir)
    if not trained or not data_hash or trained == data_hash:
        return
    if not explicit:
        raise FtvsError(
            f"the data in {data_dir} changed since {run_dir} was trained on it (content hash {trained[:12]} "
            "-> "
            f"{data_hash[:12]}); to {doing} on this other data pass --data {data_dir} explicitly"
        )
    print(
        f"ftvs: note: {data_dir} is other data than {run_dir} was trained on (content hash {trained[:12]} -> "
        f"{data_hash[:12]})",
        file=sys.stderr,
    )


def write_figures(
    run_dir,
    label_names,
    confusion_matrix,
    run_name: str,
    curves_title: str | None = None,
    split: str = "test",
) -> None:
    """The per-run figures: training curves (when there is a history) and the test confusion matrix."""
    run_dir = Path(run_dir)
    history = read_history(run_dir)
    if history:
        plot_training_curves(history, run_dir / TRAINING_CURVES, title=curves_title or run_name)
    plot_confusion_matrix(
        confusion_matrix,
        label_names,
        run_dir / result_names(split)[2],
        title=f"{run_name}: {split} confusion matrix",
    )
