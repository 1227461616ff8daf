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
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

from ftvs.calibration import calibrate_run
from ftvs.data import load_metadata, load_split
from ftvs.errors import FtvsError
from ftvs.fileio import (
    RunLock,
    append_jsonl,
    atomic_write_bytes,
    dir_size_bytes,
    load_tensors,
    read_json,
    replace_dir,
    save_tensors,
    write_json,
)
from ftvs.metrics import classification_metrics, summary_metrics
from ftvs.modelcard import write_model_card

ARM = "baseline"
METHOD = "tfidf_logreg"
FORMAT_VERSION = 1
DEFAULT_C_GRID = (5.0, 10.0, 20.0)


# ---------------------------------------------------------------------------------------------- model


@dataclass
class BaselineSettings:
    word_ngrams: tuple[int, int] = (1, 2)
    char_ngrams: tuple[int, int] = (2, 5)
    min_df: int = 1
    max_features: int | None = None
    lowercase: bool = True
    sublinear_tf: bool = True
    C_grid: tuple[float, ...] = DEFAULT_C_GRID
    max_iter: int = 1000
    tol: float = 1e-4
    solver: str = "lbfgs"
    seed: int = 0
    extra: dict = field(default_factory=dict)


def _vectorizers(s: BaselineSettings, vocab_word=None, vocab_char=None):
    from sklearn.feature_extraction.text import TfidfVectorizer

    common = dict(lowercase=s.lowercase, sublinear_tf=s.sublinear_tf, dtype=np.float32)
    word = TfidfVectorizer(
        analyzer="word", ngram_range=tuple(s.word_ngrams), min_df=1 if vocab_word else s.min_df,
        max_features=None if vocab_word else s.max_features, vocabulary=vocab_word, **common,
    )
    char = TfidfVectorizer(
        analyzer="char_wb", ngram_range=tuple(s.char_ngrams), min_df=1 if vocab_char else s.min_df,
        max_features=None if vocab_char else s.max_features, vocabulary=vocab_char, **common,
    )
    return word, char


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def _nll(proba: np.ndarray, y) -> float:
    y = np.asarray(y, dtype=np.int64)
    if len(y) == 0:
        return float("nan")
    return float(-np.log(np.clip(proba[np.arange(len(y)), y], 1e-12, None)).mean())


class BaselineModel:
    """Fitted TF-IDF vectorisers + linear classifier; scores with NumPy/SciPy, saves without pickle."""

    def __init__(self, settings: BaselineSettings, word, char, coef: np.ndarray, intercept: np.ndarray,
                 label_names: list[str]):
        self.settings = settings
        self.word, self.char = word, char
        self.coef = np.asarray(coef, dtype=np.float32)
        self.intercept = np.asarray(intercept, dtype=np.float32)
        self.label_names = list(label_names)

    # features ------------------------------------------------------------------------------------
    def features(self, texts):
        import scipy.sparse as sp

        return sp.hstack([self.word.transform(texts), self.char.transform(texts)], format="csr")

    @property
    def num_features(self) -> int:
        return int(self.coef.shape[1])

    def logits(self, texts) -> np.ndarray:
        x = self.features(texts)
        return np.asarray(x @ self.coef.T, dtype=np.float64) + self.intercept

    def predict_proba(self, texts) -> np.ndarray:
        return _softmax(self.logits(texts))

    def param_count(self) -> int:
        return int(self.coef.size + self.intercept.size)

    def describe(self) -> dict:
        s = self.settings
        n_word, n_char = len(self.word.vocabulary_), len(self.char.vocabulary_)
        params = self.param_count()
        return {
            "architecture": {
                "type": "TF-IDF + multinomial logistic regression",
                "word_ngrams": list(s.word_ngrams),
                "char_wb_ngrams": list(s.char_ngrams),
                "word_features": n_word,
                "char_features": n_char,
                "num_features": n_word + n_char,
                "sublinear_tf": s.sublinear_tf,
                "C": s.extra.get("C"),
            },
            "params_total": params,
            "params_trainable": params,
            "tokenizer": {
                "type": f"word {s.word_ngrams[0]}-{s.word_ngrams[1]}-grams + char_wb "
                        f"{s.char_ngrams[0]}-{s.char_ngrams[1]}-grams (TF-IDF)",
                "vocab_size": n_word + n_char,
                "lowercase": s.lowercase,
            },
            "head": f"linear softmax over {n_word + n_char} sparse TF-IDF features "
                    f"({len(self.label_names)} classes)",
        }

    # persistence ---------------------------------------------------------------------------------
    def save(self, model_dir) -> None:
        """Write the model folder atomically (temp folder, then swap)."""
        model_dir = Path(model_dir)
        tmp = model_dir.with_name(model_dir.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        vocab = {
            "word": {t: int(i) for t, i in self.word.vocabulary_.items()},
            "char_wb": {t: int(i) for t, i in self.char.vocabulary_.items()},
        }
        write_json(tmp / "vocab.json", vocab)
        save_tensors(
            tmp / "weights.safetensors",
            {
                "word_idf": torch.from_numpy(np.asarray(self.word.idf_, dtype=np.float32)),
                "char_idf": torch.from_numpy(np.asarray(self.char.idf_, dtype=np.float32)),
                "coef": torch.from_numpy(self.coef),
                "intercept": torch.from_numpy(self.intercept),
            },
            metadata={"format": str(FORMAT_VERSION)},
        )
        s = asdict(self.settings)
        write_json(tmp / "ftvs.json", {
            "arm": ARM,
            "method": METHOD,
            "format": FORMAT_VERSION,
            "label_names": self.label_names,
            "num_labels": len(self.label_names),
            "settings": s,
            "files": {"vocab": "vocab.json", "weights": "weights.safetensors"},
        })
        replace_dir(tmp, model_dir)

    @classmethod
    def load(cls, model_dir) -> BaselineModel:
        model_dir = Path(model_dir)
        marker = read_json(model_dir / "ftvs.json", "model marker")
        if marker.get("arm") != ARM:
            raise FtvsError(f"{model_dir} holds a {marker.get('arm')!r} model, not a TF-IDF baseline")
        raw = dict(marker.get("settings") or {})
        known = {k: raw[k] for k in BaselineSettings.__dataclass_fields__ if k in raw}
        for k in ("word_ngrams", "char_ngrams", "C_grid"):
            if k in known:
                known[k] = tuple(known[k])
        settings = BaselineSettings(**known)
        vocab = read_json(model_dir / "vocab.json", "baseline vocabulary")
        t = load_tensors(model_dir / "weights.safetensors")
        word, char = _vectorizers(settings, vocab["word"], vocab["char_wb"])
        word.idf_ = t["word_idf"].numpy().astype(np.float64)
        char.idf_ = t["char_idf"].numpy().astype(np.float64)
        return cls(settings, word, char, t["coef"].numpy(), t["intercept"].numpy(), marker["label_names"])


def fit_baseline(train_texts, train_labels, val_texts, val_labels, label_names, settings: BaselineSettings,
                 log=print) -> tuple[BaselineModel, dict]:
    """Fit the vectorisers on train, then one logistic regression per C;
    keep the C with the best validation macro-F1 (ties: smaller C). Returns the model and a record."""
    import warnings

    import scipy.sparse as sp
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    num_labels = len(label_names)
    t0 = time.perf_counter()
    word, char = _vectorizers(settings)
    x_train = sp.hstack([word.fit_transform(train_texts), char.fit_transform(train_texts)], format="csr")
    x_val = sp.hstack([word.transform(val_texts), char.transform(val_texts)], format="csr") if val_texts else None
    t_feat = time.perf_counter() - t0
    log(f"baseline: {x_train.shape[0]} train texts -> {x_train.shape[1]} TF-IDF features ({t_feat:.1f}s)")

    y_train = np.asarray(train_labels, dtype=np.int64)
    present = np.unique(y_train)
    grid = sorted(float(c) for c in settings.C_grid)

    def fit_one(c: float):
        t1 = time.perf_counter()
        clf = LogisticRegression(C=c, solver=settings.solver, max_iter=settings.max_iter, tol=settings.tol,
                                 random_state=settings.seed)
        clf.fit(x_train, y_train)
        return clf, time.perf_counter() - t1

    # the grid's fits are independent: one thread per core (the heavy parts release the GIL), BLAS/OpenMP
    # pools capped at one thread each so the fits do not oversubscribe the cores
    n_jobs = max(1, min(len(grid), os.cpu_count() or 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if n_jobs > 1:
            from concurrent.futures import ThreadPoolExecutor

            from threadpoolctl import threadpool_limits

            with threadpool_limits(limits=1), ThreadPoolExecutor(max_workers=n_jobs) as pool:
                fitted = list(pool.map(fit_one, grid))
        else:
            fitted = [fit_one(c) for c in grid]

    trials, best = [], None
    for c, (clf, seconds) in zip(grid, fitted):
        iterations = int(np.max(clf.n_iter_))
        coef = np.zeros((num_labels, x_train.shape[1]), dtype=np.float32)
        intercept = np.full(num_labels, -1e4, dtype=np.float32)  # classes absent from train: never predicted
        if len(present) == 2 and clf.coef_.shape[0] == 1:  # binary: sklearn stores one row
            coef[present[1]], intercept[present[1]] = clf.coef_[0], clf.intercept_[0]
            intercept[present[0]] = 0.0
            coef[present[0]] = 0.0
        else:
            coef[clf.classes_] = clf.coef_
            intercept[clf.classes_] = clf.intercept_
        trial = {"C": c, "seconds": seconds, "iterations": iterations, "converged": iterations < settings.max_iter}
        if x_val is not None:
            proba = _softmax(np.asarray(x_val @ coef.T, dtype=np.float64) + intercept)
            trial.update(summary_metrics(val_labels, proba.argmax(1), num_labels))
            trial["loss"] = _nll(proba, val_labels)
        log(f"baseline: C={c:g} val macro-F1={trial.get('macro_f1', float('nan')):.4f} "
            f"({trial['seconds']:.1f}s, {trial['iterations']} iterations)")
        trials.append(trial)
        if best is None or trial.get("macro_f1", 0.0) > best[0].get("macro_f1", 0.0):
            best = (trial, coef, intercept)
    trial, coef, intercept = best
    settings.extra["C"] = trial["C"]
    model = BaselineModel(settings, word, char, coef, intercept, label_names)
    record = {
        "feature_seconds": t_feat,
        "seconds_total": time.perf_counter() - t0,
        "grid": trials,
        "chosen_C": trial["C"],
        "converged": trial["converged"],
        "iterations": trial["iterations"],
        "num_features": int(x_train.shape[1]),
    }
    return model, record


# ------------------------------------------------------------------------------------------- the run


def _gap(train: dict, val: dict) -> dict:
    """Train minus val for accuracy, macro-F1 and loss (the convention of `ftvs evaluate`)."""
    return {k: train[k] - val[k] for k in ("accuracy", "macro_f1", "loss")
            if train.get(k) is not None and val.get(k) is not None}


def run_baseline(data_dir, output_dir, settings: BaselineSettings | None = None, run_name: str | None = None,
                 log=print) -> dict:
    """Fit, save, reload, evaluate; writes config.yaml, history.jsonl, train_summary.json, model/,
    metrics.json and predictions.json into `output_dir`. Returns the metrics dict."""
    settings = settings or BaselineSettings()
    data_dir, out = Path(data_dir), Path(output_dir)
    if not data_dir.is_dir():
        raise FtvsError(f"data folder {data_dir} not found; create it with `ftvs prepare ... --output_dir {data_dir}`")
    marker = out / "model" / "ftvs.json"
    if marker.is_file():
        arm = read_json(marker, "model marker").get("arm")
        if arm != ARM:
            raise FtvsError(f"{out} already holds a {arm!r} run; pick another --output_dir for the baseline")
    meta = load_metadata(data_dir)
    label_names = list(meta.get("label_names") or [])
    if not label_names:
        raise FtvsError(f"{data_dir}/metadata.json has no label_names; re-run `ftvs prepare`")
    train_x, train_y = load_split(data_dir, "train")
    val_x, val_y = load_split(data_dir, "val")
    test_x, test_y = load_split(data_dir, "test")
    if not train_x:
        raise FtvsError(f"{data_dir}/train.jsonl is empty")
    bad = [y for y in train_y + val_y + test_y if not 0 <= y < len(label_names)]
    if bad:
        raise FtvsError(f"label {bad[0]} is outside 0..{len(label_names) - 1} (metadata.json label_names); re-run `ftvs prepare`")
    run_name = run_name or out.name

    with RunLock(out):
        for stale in ("metrics.json", "predictions.json"):
            (out / stale).unlink(missing_ok=True)
        config = {
            "arm": ARM, "method": METHOD, "model_name": METHOD, "run_name": run_name,
            "data": str(data_dir), "data_dir": str(data_dir), "output_dir": str(out), "seed": settings.seed,
            "dataset": meta.get("source") or data_dir.name,
            "word_ngrams": list(settings.word_ngrams), "char_ngrams": list(settings.char_ngrams),
            "analyzer_char": "char_wb", "min_df": settings.min_df, "max_features": settings.max_features,
            "lowercase": settings.lowercase, "sublinear_tf": settings.sublinear_tf,
            "C_grid": list(settings.C_grid), "solver": settings.solver, "max_iter": settings.max_iter,
            "tol": settings.tol, "train_fraction": meta.get("train_fraction", 1.0),
            "num_train_examples": len(train_x), "num_train_epochs": 1, "world_size": 1,
        }
        summary = {"status": "running", "arm": ARM, "run_name": run_name}
        write_json(out / "train_summary.json", summary)
        atomic_write_bytes(out / "config.yaml", yaml.safe_dump(config, sort_keys=False).encode())

        model, record = fit_baseline(train_x, train_y, val_x, val_y, label_names, settings, log=log)
        train_seconds = record["seconds_total"]
        config["C"] = record["chosen_C"]
        atomic_write_bytes(out / "config.yaml", yaml.safe_dump(config, sort_keys=False).encode())

        model.save(out / "model")
        model = BaselineModel.load(out / "model")  # evaluate what is on disk

        tr_proba = model.predict_proba(train_x)
        train_m = summary_metrics(train_y, tr_proba.argmax(1), len(label_names)) | {"loss": _nll(tr_proba, train_y)}
        if val_x:
            va_proba = model.predict_proba(val_x)
            val_m = summary_metrics(val_y, va_proba.argmax(1), len(label_names)) | {"loss": _nll(va_proba, val_y)}
        else:
            val_m = {"accuracy": None, "macro_f1": None, "loss": None}

        t0 = time.perf_counter()
        te_proba = model.predict_proba(test_x)
        y_pred = te_proba.argmax(1)
        infer_seconds = time.perf_counter() - t0
        n_test = len(test_x)
        test_m = classification_metrics(test_y, y_pred, label_names, loss=_nll(te_proba, test_y), probs=te_proba)

        hist_path = out / "history.jsonl"
        hist_path.unlink(missing_ok=True)
        append_jsonl(hist_path, {
            "epoch": 1, "step": record["iterations"],
            "train_loss": train_m["loss"], "train_accuracy": train_m["accuracy"], "train_macro_f1": train_m["macro_f1"],
            "val_loss": val_m["loss"], "val_accuracy": val_m["accuracy"], "val_macro_f1": val_m["macro_f1"],
            "lr": None, "epoch_seconds": train_seconds, "elapsed_seconds": train_seconds,
            "examples_per_second": len(train_x) / train_seconds if train_seconds > 0 else None,
        })
        stop_reason = "converged" if record["converged"] else "max_iter"
        summary = {
            "status": "completed", "arm": ARM, "run_name": run_name, "seconds_total": train_seconds,
            "seconds_per_epoch": train_seconds, "epochs_run": 1, "best_epoch": 1, "stop_reason": stop_reason,
            "model_selection": record,
        }
        write_json(out / "train_summary.json", summary)

        desc = model.describe()
        gap = _gap(train_m, val_m)
        metrics = {
            "run_name": run_name, "arm": ARM, "method": METHOD, "model_name": METHOD,
            "dataset": config["dataset"], "data_dir": str(data_dir), "seed": settings.seed,
            "test": test_m, "num_test_examples": n_test,
            "inference": {
                "seconds_total": infer_seconds,
                "seconds_per_1000": infer_seconds / n_test * 1000 if n_test else None,
                "examples_per_second": n_test / infer_seconds if infer_seconds > 0 else None,
                "batch_size": n_test, "device": f"cpu ({platform.processor() or platform.machine()}, "
                                                 f"{os.cpu_count()} cores)",
            },
            "params": {"total": desc["params_total"], "trainable": desc["params_trainable"]},
            "size_on_disk_bytes": dir_size_bytes(out / "model"),
            "training": {
                "seconds_total": train_seconds, "seconds_per_epoch": train_seconds, "epochs_run": 1,
                "best_epoch": 1, "status": "completed", "stop_reason": stop_reason,
                "model_selection": {"chosen_C": record["chosen_C"], "grid": record["grid"]},
            },
            "best_val": val_m,
            "train_val_gap": {"best": gap, "last": dict(gap)},
            "model": desc,
        }
        write_json(out / "predictions.json", {
            "label_names": label_names, "y_true": [int(y) for y in test_y], "y_pred": [int(y) for y in y_pred],
            "confidence": [float(p) for p in te_proba.max(1)],
        })
        write_json(out / "metrics.json", metrics)
        _figures(out, run_name, label_names, test_m["confusion_matrix"])
        calibrate_run(out, metrics, np.log(np.clip(te_proba, 1e-30, None)), test_y)  # log p: logits up to a constant
        write_model_card(out)
    log(f"baseline: test accuracy {test_m['accuracy']:.4f}, macro-F1 {test_m['macro_f1']:.4f}, "
        f"trained in {train_seconds:.1f}s (C={record['chosen_C']:g}) -> {out}")
    return metrics


def _figures(out: Path, run_name: str, label_names, matrix) -> None:
    """The per-run figures every run dir has (training_curves.png, confusion_matrix.png)."""
    from ftvs.fileio import read_jsonl
    from ftvs.plots import plot_confusion_matrix, plot_training_curves

    plot_training_curves(read_jsonl(out / "history.jsonl"), out / "training_curves.png",
                         title=f"{run_name} (TF-IDF baseline: one fit = one epoch)")
    plot_confusion_matrix(matrix, label_names, out / "confusion_matrix.png", title=f"{run_name}: test confusion matrix")


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
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 5,10,20, got {text!r}") from None
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
    p.add_argument("--C", type=float, default=None, help="fixed inverse regularisation strength (skips the grid)")
    p.add_argument("--C_grid", type=_floats, default=DEFAULT_C_GRID,
                   help="C values tried on the val split, comma-separated (default: 5,10,20)")
    p.add_argument("--word_ngrams", type=_pair, default=(1, 2), help="word n-gram range lo,hi (default 1,2)")
    p.add_argument("--char_ngrams", type=_pair, default=(2, 5), help="char_wb n-gram range lo,hi (default 2,5)")
    p.add_argument("--min_df", type=int, default=1, help="drop n-grams seen in fewer training texts (default 1)")
    p.add_argument("--max_features", type=int, default=None, help="cap on features per vectoriser")
    p.add_argument("--max_iter", type=int, default=1000, help="lbfgs iteration cap (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--run_name", default=None, help="name shown in comparisons (default: the folder name)")
    p.set_defaults(func=cmd_baseline)
    return p


def cmd_baseline(args) -> int:
    if args.min_df < 1:
        raise FtvsError("--min_df must be at least 1")
    settings = BaselineSettings(
        word_ngrams=tuple(args.word_ngrams), char_ngrams=tuple(args.char_ngrams), min_df=args.min_df,
        max_features=args.max_features, C_grid=(args.C,) if args.C is not None else tuple(args.C_grid),
        max_iter=args.max_iter, seed=args.seed,
    )
    run_baseline(args.data, args.output_dir, settings, run_name=args.run_name)
    return 0
