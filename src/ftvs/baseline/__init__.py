"""`ftvs baseline`: TF-IDF + logistic regression, written as a run directory like any neural run.

Features are word 1-2-grams and character 2-5-grams (`char_wb`, inside word boundaries), both with
sublinear TF and IDF weighting, L2-normalised per block and stacked. The classifier is a multinomial
logistic regression (lbfgs); C is picked on the validation split from a small grid (one fit per
value, run in parallel threads, one per core; the training time reported is the wall time of the whole
grid), or fixed with `--C`.

The fitted model is saved without pickle: `model/vocab.json` (both vocabularies), `model/weights.safetensors`
(IDF vectors, coefficients, intercepts) and `model/ftvs.json` (`arm: baseline`, label names, feature
settings). `BaselineModel.load` rebuilds it with NumPy/SciPy only, and the test predictions are made by
that reloaded model, so the scores describe exactly what is on disk.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import yaml

from ftvs import class_weights, rundir
from ftvs.baseline.model import (
    ARM,
    DEFAULT_C_GRID,
    FORMAT_VERSION,
    METHOD,
    BaselineModel,
    BaselineSettings,
    fit_baseline,
    mean_nll,
)
from ftvs.calibration import calibrate_run
from ftvs.class_weights import check_spec
from ftvs.data import load_metadata, load_split, split_hash
from ftvs.errors import FtvsError, check_count, closest
from ftvs.fileio import RunLock, append_jsonl, atomic_write_bytes, dir_size_bytes, write_json
from ftvs.latency import measure_latency
from ftvs.metrics import classification_metrics, summary_metrics, train_val_gap
from ftvs.modelcard import write_model_card

__all__ = [
    "ARM",
    "DEFAULT_C_GRID",
    "FORMAT_VERSION",
    "METHOD",
    "BaselineModel",
    "BaselineSettings",
    "add_cli",
    "cmd_baseline",
    "remeasure_latency",
    "fit_baseline",
    "run_baseline",
]


# ------------------------------------------------------------------------------------------- the run


def _load_splits(data_dir: Path) -> tuple[dict, list[str], dict]:
    """metadata, label names and the three (texts, labels) splits, with the input checks."""
    if not data_dir.is_dir():
        raise FtvsError(
            f"data folder {data_dir} not found; create it with `ftvs prepare ... --output_dir {data_dir}`"
        )
    meta = load_metadata(data_dir)
    label_names = list(meta.get("label_names") or [])
    if not label_names:
        raise FtvsError(f"{data_dir}/metadata.json has no label_names; re-run `ftvs prepare`")
    splits = {name: load_split(data_dir, name) for name in ("train", "val", "test")}
    if not splits["train"][0]:
        raise FtvsError(f"{data_dir}/train.jsonl is empty")
    bad = [y for name in ("train", "val", "test") for y in splits[name][1] if not 0 <= y < len(label_names)]
    if bad:
        raise FtvsError(
            f"label {bad[0]} is outside 0..{len(label_names) - 1} (metadata.json label_names); re-run "
            "`ftvs prepare`"
        )
    return meta, label_names, splits


def _run_config(
    settings: BaselineSettings, meta: dict, data_dir: Path, out: Path, run_name: str, num_train: int
) -> dict:
    return {
        "arm": ARM,
        "method": METHOD,
        "model_name": METHOD,
        "run_name": run_name,
        "data": str(data_dir),
        "data_dir": str(data_dir),
        "data_content_hash": meta.get("content_hash"),
        "output_dir": str(out),
        "seed": settings.seed,
        "dataset": meta.get("source") or data_dir.name,
        "word_ngrams": list(settings.word_ngrams),
        "char_ngrams": list(settings.char_ngrams),
        "analyzer_char": "char_wb",
        "min_df": settings.min_df,
        "max_features": settings.max_features,
        "lowercase": settings.lowercase,
        "sublinear_tf": settings.sublinear_tf,
        "C_grid": list(settings.C_grid),
        "solver": settings.solver,
        "max_iter": settings.max_iter,
        "tol": settings.tol,
        "class_weights": settings.class_weights,
        "train_fraction": meta.get("train_fraction", 1.0),
        "num_train_examples": num_train,
        "num_train_epochs": 1,
        "world_size": 1,
    }


def _write_config(out: Path, config: dict) -> None:
    atomic_write_bytes(out / rundir.CONFIG, yaml.safe_dump(config, sort_keys=False).encode())


def _fit_scores(model: BaselineModel, splits: dict, num_labels: int) -> tuple[dict, dict]:
    """Accuracy, macro-F1 and loss on train and val (None on an empty val split): the one "epoch"."""
    out = []
    for name in ("train", "val"):
        texts, labels = splits[name]
        if not texts:
            out.append({"accuracy": None, "macro_f1": None, "loss": None})
            continue
        proba = model.predict_proba(texts)
        out.append(summary_metrics(labels, proba.argmax(1), num_labels) | {"loss": mean_nll(proba, labels)})
    return out[0], out[1]


def _write_history(out: Path, record: dict, train_m: dict, val_m: dict, num_train: int) -> None:
    seconds = record["seconds_total"]
    hist_path = out / rundir.HISTORY
    hist_path.unlink(missing_ok=True)
    append_jsonl(
        hist_path,
        {
            "epoch": 1,
            "step": record["iterations"],
            "train_loss": train_m["loss"],
            "train_accuracy": train_m["accuracy"],
            "train_macro_f1": train_m["macro_f1"],
            "val_loss": val_m["loss"],
            "val_accuracy": val_m["accuracy"],
            "val_macro_f1": val_m["macro_f1"],
            "lr": None,
            "epoch_seconds": seconds,
            "elapsed_seconds": seconds,
            "examples_per_second": num_train / seconds if seconds > 0 else None,
        },
    )


def _metrics_record(config: dict, model: BaselineModel, record: dict, scores: dict, out: Path) -> dict:
    """metrics.json of the baseline, in the layout `ftvs evaluate` writes for the neural runs."""
    train_m, val_m, test_m = scores["train"], scores["val"], scores["test"]
    n_test, infer_seconds, train_seconds = (
        scores["num_test"],
        scores["infer_seconds"],
        record["seconds_total"],
    )
    desc = model.describe()
    gap = train_val_gap(train_m, val_m)
    stop_reason = "converged" if record["converged"] else "max_iter"
    return {
        "run_name": config["run_name"],
        "arm": ARM,
        "method": METHOD,
        "model_name": METHOD,
        "dataset": config["dataset"],
        "data_dir": config["data_dir"],
        "seed": config["seed"],
        "test": test_m,
        "num_test_examples": n_test,
        "inference": {
            "seconds_total": infer_seconds,
            "seconds_per_1000": infer_seconds / n_test * 1000 if n_test else None,
            "examples_per_second": n_test / infer_seconds if infer_seconds > 0 else None,
            "batch_size": n_test,
            "device": f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
        },
        "params": {"total": desc["params_total"], "trainable": desc["params_trainable"]},
        "size_on_disk_bytes": dir_size_bytes(rundir.model_dir(out)),
        "training": {
            "seconds_total": train_seconds,
            "seconds_per_epoch": train_seconds,
            "epochs_run": 1,
            "best_epoch": 1,
            "status": "completed",
            "stop_reason": stop_reason,
            "model_selection": {"chosen_C": record["chosen_C"], "grid": record["grid"]},
        },
        "best_val": val_m,
        "train_val_gap": {"best": gap, "last": dict(gap)},
        "model": desc,
    }


def check_settings(settings: BaselineSettings) -> BaselineSettings:
    """The counts and the class weights of the baseline's settings, by the rules of the flags."""
    check_spec(settings.class_weights)
    counts = {"min_df": settings.min_df, "max_iter": settings.max_iter, "max_features": settings.max_features}
    for name, value in counts.items():
        if value is not None or name != "max_features":
            check_count(f"--{name}", value)
    return settings


def baseline_latency(model: BaselineModel, texts: list[str]) -> dict:
    """Serving latency of the fitted baseline, timed like every neural run (`ftvs.latency`)."""
    return measure_latency(lambda batch: model.logits(batch).argmax(1), texts, "cpu", "fp32 (NumPy/SciPy)")


def remeasure_latency(run_dir, data_dir=None) -> dict:
    """`ftvs evaluate` on a baseline run: its scores stay as fitted, its latency is measured (again)."""
    run_dir = Path(run_dir)
    metrics = rundir.read_metrics(run_dir)
    data_dir = data_dir or metrics.get("data_dir")
    if not data_dir or not (Path(data_dir) / rundir.DATA_METADATA).is_file():
        raise FtvsError(f"{run_dir}: its data folder {data_dir!r} is gone; pass --data DIR")
    texts, _ = load_split(data_dir, "test")
    metrics["latency"] = baseline_latency(BaselineModel.load(rundir.model_dir(run_dir)), texts)
    write_json(run_dir / rundir.METRICS, metrics)
    return metrics


def run_baseline(
    data_dir,
    output_dir,
    settings: BaselineSettings | None = None,
    run_name: str | None = None,
    log=print,
    overwrite: bool = False,
) -> dict:
    """Fit, save, reload, evaluate; writes config.yaml, history.jsonl, train_summary.json, model/,
    metrics.json and predictions.json into `output_dir`. Returns the metrics dict."""
    settings = check_settings(settings or BaselineSettings())
    data_dir, out = Path(data_dir), Path(output_dir)
    rundir.check_output_dir(out, ARM, data_dir=data_dir, overwrite=overwrite)
    meta, label_names, splits = _load_splits(data_dir)
    (train_x, train_y), (val_x, val_y), (test_x, test_y) = splits["train"], splits["val"], splits["test"]
    class_weights.resolve(settings.class_weights, train_y, label_names)  # a bad weights file fails first
    run_name = run_name or out.name

    with RunLock(out):
        if overwrite:
            rundir.clear_run(out)
        rundir.clear_results(out)
        config = _run_config(settings, meta, data_dir, out, run_name, len(train_x))
        write_json(out / rundir.TRAIN_SUMMARY, {"status": "running", "arm": ARM, "run_name": run_name})
        _write_config(out, config)

        model, record = fit_baseline(train_x, train_y, val_x, val_y, label_names, settings, log=log)
        config["C"] = record["chosen_C"]
        _write_config(out, config)
        model.save(rundir.model_dir(out))
        model = BaselineModel.load(rundir.model_dir(out))  # evaluate what is on disk

        train_m, val_m = _fit_scores(model, splits, len(label_names))
        t0 = time.perf_counter()
        te_proba = model.predict_proba(test_x)
        y_pred = te_proba.argmax(1)
        infer_seconds = time.perf_counter() - t0
        test_m = classification_metrics(
            test_y, y_pred, label_names, loss=mean_nll(te_proba, test_y), probs=te_proba
        )

        _write_history(out, record, train_m, val_m, len(train_x))
        write_json(
            out / rundir.TRAIN_SUMMARY,
            {
                "status": "completed",
                "arm": ARM,
                "run_name": run_name,
                "seconds_total": record["seconds_total"],
                "seconds_per_epoch": record["seconds_total"],
                "epochs_run": 1,
                "best_epoch": 1,
                "stop_reason": "converged" if record["converged"] else "max_iter",
                "model_selection": record,
            },
        )
        scores = {
            "train": train_m,
            "val": val_m,
            "test": test_m,
            "num_test": len(test_x),
            "infer_seconds": infer_seconds,
        }
        metrics = _metrics_record(config, model, record, scores, out)
        metrics["latency"] = baseline_latency(model, test_x)
        calibrate_run(
            out, metrics, np.log(np.clip(te_proba, 1e-30, None)), test_y
        )  # log p: logits up to a constant
        rundir.write_results(
            out,
            metrics,
            label_names,
            test_y,
            y_pred,
            te_proba.max(1),
            split_hash=split_hash(data_dir, "test"),
        )
        rundir.write_figures(
            out,
            label_names,
            test_m["confusion_matrix"],
            run_name=run_name,
            curves_title=f"{run_name} (TF-IDF baseline: one fit = one epoch)",
        )
        write_model_card(out)
    log(
        f"baseline: test accuracy {test_m['accuracy']:.4f}, macro-F1 {test_m['macro_f1']:.4f}, "
        f"trained in {record['seconds_total']:.1f}s (C={record['chosen_C']:g}) -> {out}"
    )
    return metrics


# ------------------------------------------------------------------------------------------------ CLI


def _pair(text: str) -> tuple[int, int]:
    try:
        lo, hi = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two integers like 1,2, got {text!r}") from None
    if not 1 <= lo <= hi:
        raise argparse.ArgumentTypeError(f"need 1 <= low <= high, got {text!r}")
    return lo, hi


def _floats(text: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers like 5,10,20, got {text!r}"
        ) from None
    if not vals or any(v <= 0 for v in vals):
        raise argparse.ArgumentTypeError("C values must be positive")
    return vals


def add_cli(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "baseline",
        help="TF-IDF + logistic regression baseline, written as a run directory",
        description="Fit a TF-IDF (word 1-2-grams + char_wb 2-5-grams, sublinear tf) + logistic regression "
        "classifier on the train split, choose C on the val split, score the test split with the "
        "same metrics as the neural runs and write metrics.json, predictions.json, config.yaml, "
        "history.jsonl and model/ (no pickle) into --output_dir.",
    )
    p.add_argument("--data", required=True, help="prepared data folder (from `ftvs prepare`)")
    p.add_argument("--output_dir", required=True, help="run directory to write")
    p.add_argument(
        "--overwrite_output_dir",
        "--overwrite-output-dir",
        action="store_true",
        help="replace a finished baseline run in --output_dir (nothing else is ever replaced)",
    )
    p.add_argument(
        "--config",
        help="YAML file of the settings below (keys are the flag names; flags given here override it), "
        "e.g. the best.yaml of `ftvs tune --arm baseline`",
    )
    p.add_argument(
        "--C", type=float, default=None, help="fixed inverse regularisation strength (skips the grid)"
    )
    p.add_argument(
        "--C_grid",
        type=_floats,
        default=None,
        help="C values tried on the val split, comma-separated (default: 5,10,20)",
    )
    p.add_argument("--word_ngrams", type=_pair, default=None, help="word n-gram range lo,hi (default 1,2)")
    p.add_argument("--char_ngrams", type=_pair, default=None, help="char_wb n-gram range lo,hi (default 2,5)")
    p.add_argument(
        "--min_df", type=int, default=None, help="drop n-grams seen in fewer training texts (default 1)"
    )
    p.add_argument("--max_features", type=int, default=None, help="cap on features per vectoriser")
    p.add_argument("--max_iter", type=int, default=None, help="lbfgs iteration cap (default 1000)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    p.add_argument(
        "--class_weights",
        default=None,
        help="none, balanced (n / (classes x count)) or a JSON file {label_name: weight} (default none)",
    )
    p.add_argument("--run_name", default=None, help="name shown in comparisons (default: the folder name)")
    p.set_defaults(func=cmd_baseline)
    return p


# the settings a --config file may hold, at their defaults (the flags above)
SETTING_DEFAULTS = {
    "C": None,
    "C_grid": DEFAULT_C_GRID,
    "word_ngrams": (1, 2),
    "char_ngrams": (2, 5),
    "min_df": 1,
    "max_features": None,
    "max_iter": 1000,
    "seed": 0,
    "class_weights": "none",
}


def _file_settings(path) -> dict:
    """The settings of a --config YAML file, in the flags' types (`word_ngrams: "1,2"` or `[1, 2]`)."""
    from ftvs.config import load_yaml

    values = load_yaml(path)
    for key in values:
        if key not in SETTING_DEFAULTS:
            raise FtvsError(
                f"unknown key {key!r} in {path}{closest(key, SETTING_DEFAULTS)}; see `ftvs baseline --help`"
            )
    parse = {"word_ngrams": _pair, "char_ngrams": _pair, "C_grid": _floats}
    out = {}
    for key, value in values.items():
        if value is not None and key in parse:
            text = ",".join(str(v) for v in value) if isinstance(value, list | tuple) else str(value)
            try:
                value = parse[key](text)
            except argparse.ArgumentTypeError as e:
                raise FtvsError(f"{path}: {key}: {e}") from None
        out[key] = value
    return out


def cmd_baseline(args) -> int:
    given = {k: getattr(args, k) for k in SETTING_DEFAULTS if getattr(args, k) is not None}
    values = {**SETTING_DEFAULTS, **(_file_settings(args.config) if args.config else {}), **given}
    settings = BaselineSettings(
        word_ngrams=tuple(values["word_ngrams"]),
        char_ngrams=tuple(values["char_ngrams"]),
        min_df=values["min_df"],
        max_features=values["max_features"],
        C_grid=(float(values["C"]),) if values["C"] is not None else tuple(values["C_grid"]),
        max_iter=values["max_iter"],
        seed=values["seed"],
        class_weights=values["class_weights"],
    )
    run_baseline(
        args.data, args.output_dir, settings, run_name=args.run_name, overwrite=args.overwrite_output_dir
    )
    return 0
