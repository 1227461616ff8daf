"""`ftvs compare RUN_DIR... --out DIR`: side-by-side table, seed groups, significance, figures, report.

Everything here reads the documented run-directory layout (metrics.json, predictions.json, history.jsonl,
config.yaml, train_summary.json, model/ftvs.json), so scratch, fine-tuned and baseline runs are treated
alike. The output folder gets:

- `comparison.json`: the table (one row per run), the seed groups (mean ± std), convergence and
  overfitting numbers, paired significance for every pair of runs, sweeps, dataset and model
  descriptions, the figure list; the report is rendered from this file alone;
- `comparison.md`: the table in Markdown;
- figures (PNG), then `report.md`, `report.html`, `report.pdf` (see `ftvs.report`).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import glob
import itertools
import math
from pathlib import Path

import numpy as np
import yaml

from ftvs.calibration import calibration_row
from ftvs.config import FINETUNE_ONLY, SCRATCH_ONLY
from ftvs.errors import FtvsError
from ftvs.fileio import atomic_write_bytes, read_json, read_jsonl, write_json

COMPARISON_VERSION = 1
ARM_ORDER = {"finetune": 0, "scratch": 1, "baseline": 2}
ARM_LABEL = {"finetune": "fine-tuned", "scratch": "from scratch", "baseline": "TF-IDF baseline"}


# ------------------------------------------------------------------------------------------ loading


def _is_run_dir(p: Path) -> bool:
    return p.is_dir() and (p / "metrics.json").is_file()


def discover(paths) -> tuple[list[Path], list[dict]]:
    """Run dirs named by `paths` (run dirs, study folders searched recursively, glob patterns, or a
    study/registry JSON listing runs). Returns (run dirs, study JSON documents)."""
    found: list[Path] = []
    studies: list[dict] = []
    for raw in paths:
        raw = str(raw)
        matches = sorted(glob.glob(raw)) if any(c in raw for c in "*?[") else [raw]
        if not matches:
            raise FtvsError(f"no path matches {raw!r}")
        for m in matches:
            p = Path(m)
            if p.is_file() and p.suffix == ".json":
                doc = read_json(p, "study file")
                studies.append({"path": str(p), "doc": doc})
                found.extend(_runs_from_study(doc, p.parent))
            elif _is_run_dir(p):
                found.append(p)
            elif p.is_dir():
                nested = sorted(q.parent for q in p.rglob("metrics.json")
                                if q.parent.name != "model" and ".old" not in q.parent.name
                                and not q.parent.name.endswith(".tmp"))
                if not nested:
                    why = " (training not evaluated yet? run `ftvs evaluate RUN_DIR`)" \
                        if (p / "history.jsonl").is_file() else ""
                    raise FtvsError(f"{p} holds no evaluated run (no metrics.json below it){why}")
                found.extend(nested)
            else:
                raise FtvsError(f"{p} is neither a run folder, a study folder nor a study JSON file")
    unique, seen = [], set()
    for p in found:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    if not unique:
        raise FtvsError("no runs to compare; pass run folders (with metrics.json) or a study folder")
    return unique, studies


def _runs_from_study(doc: dict, base: Path) -> list[Path]:
    """Run dirs listed in a study/registry JSON (`runs` as strings or dicts with run_dir/output_dir/path)."""
    entries = doc.get("runs") or []
    if isinstance(entries, dict):
        entries = list(entries.values())
    out = []
    for e in entries:
        path = e if isinstance(e, str) else next((e.get(k) for k in ("run_dir", "output_dir", "path", "dir")
                                                  if isinstance(e, dict) and e.get(k)), None)
        if not path:
            continue
        p = Path(path)
        if not p.is_absolute() and not p.exists():
            p = base / p
        if _is_run_dir(p):
            out.append(p)
    return out


def _yaml(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise FtvsError(f"{path} is not valid YAML ({e}); restore it or re-run the training") from None
    return data if isinstance(data, dict) else {}


class Run:
    """One evaluated run directory, with the derived numbers the comparison needs."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.metrics = read_json(self.path / "metrics.json", "metrics")
        self.config = _yaml(self.path / "config.yaml")
        self.history = read_jsonl(self.path / "history.jsonl") if (self.path / "history.jsonl").is_file() else []
        self.summary = read_json(self.path / "train_summary.json", "training summary") \
            if (self.path / "train_summary.json").is_file() else {}
        self.marker = read_json(self.path / "model" / "ftvs.json", "model marker") \
            if (self.path / "model" / "ftvs.json").is_file() else {}
        self._predictions = None
        m = self.metrics
        self.name = str(m.get("run_name") or self.path.name)
        self.arm = str(m.get("arm") or self.config.get("arm") or self.marker.get("arm") or "unknown")
        self.method = m.get("method") or self.config.get("method") if self.arm == "finetune" else m.get("method")
        self.method = str(self.method or {"scratch": "scratch", "baseline": "tfidf_logreg"}.get(self.arm, "-"))
        self.model_name = str(m.get("model_name") or self.config.get("model_name_or_path") or self.method)
        size = (self.config.get("extra") or {}).get("preset")
        if self.arm == "scratch" and size:  # study model-size sweep: the size name (a preset may be widened)
            self.model_name = f"scratch-{size}"
        self.seed = m.get("seed", self.config.get("seed"))
        if "test" not in m or "accuracy" not in (m.get("test") or {}):
            raise FtvsError(f"{self.path}/metrics.json has no test scores; re-run `ftvs evaluate {self.path}`")

    def tag(self, key, default=None):
        """A sweep tag from config.yaml (top level or under `extra`), else from metrics.json."""
        for src in (self.config.get("extra") or {}, self.config, self.metrics):
            if isinstance(src, dict) and src.get(key) is not None:
                return src[key]
        return default

    @property
    def train_fraction(self) -> float:
        try:
            return float(self.tag("train_fraction", 1.0))
        except (TypeError, ValueError):
            return 1.0

    @property
    def preset(self):
        return self.tag("preset") if self.arm == "scratch" else None

    @property
    def group_key(self) -> tuple:
        return (self.arm, self.method, self.model_name, self.train_fraction)

    @property
    def predictions(self) -> dict:
        if self._predictions is None:
            path = self.path / "predictions.json"
            if not path.is_file():
                raise FtvsError(f"{path} missing; re-run `ftvs evaluate {self.path}` to write test predictions")
            self._predictions = read_json(path, "predictions")
        return self._predictions

    @property
    def data_dir(self) -> str | None:
        return self.metrics.get("data_dir") or self.config.get("data") or self.config.get("data_dir")


def resolve_data_dir(run: Run) -> Path | None:
    """The run's prepared data folder as it exists now (absolute, cwd-relative, or run-dir-relative)."""
    d = run.data_dir
    if not d:
        return None
    for cand in (Path(d), run.path / d, run.path.parent / d):
        if (cand / "metadata.json").is_file():
            return cand
    return None


def load_runs(paths) -> tuple[list[Run], list[dict]]:
    dirs, studies = discover(paths)
    runs = [Run(p) for p in dirs]
    names: dict[str, int] = {}
    for r in runs:  # make names unique (two studies may reuse a folder name)
        if r.name in names:
            names[r.name] += 1
            r.name = f"{r.name}#{names[r.name]}"
        else:
            names[r.name] = 1
    runs.sort(key=lambda r: (ARM_ORDER.get(r.arm, 9), r.model_name, -r.train_fraction, str(r.seed), r.name))
    return runs, studies


# ---------------------------------------------------------------------------------------- numbers


def _f(x):
    """float or None (NaN/inf → None)."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def convergence(history: list[dict]) -> dict:
    """Epoch of the val macro-F1 peak, epochs/seconds to reach 95% of it, largest epoch-to-epoch val-F1
    drop, and the val-loss minimum epoch with the rise from it to the last epoch."""
    rows = [r for r in history if _f(r.get("val_macro_f1")) is not None]
    if not rows:
        return {}
    best = max(rows, key=lambda r: r["val_macro_f1"])
    target = 0.95 * best["val_macro_f1"]
    reach = next(r for r in rows if r["val_macro_f1"] >= target)
    f1s = [r["val_macro_f1"] for r in rows]
    drops = [a - b for a, b in zip(f1s, f1s[1:])]
    out = {
        "epochs": len(rows),
        "best_epoch": int(best["epoch"]),
        "best_val_macro_f1": float(best["val_macro_f1"]),
        "epochs_to_95pct_best": int(reach["epoch"]),
        "seconds_to_95pct_best": _f(reach.get("elapsed_seconds")),
        "max_val_f1_drop": float(max(drops)) if drops else 0.0,
        "last_val_macro_f1": float(f1s[-1]),
    }
    losses = [(r["epoch"], _f(r.get("val_loss"))) for r in rows if _f(r.get("val_loss")) is not None]
    if losses:
        ep_min, loss_min = min(losses, key=lambda t: t[1])
        out.update({"val_loss_min_epoch": int(ep_min), "val_loss_min": loss_min,
                    "val_loss_rise_after_min": float(losses[-1][1] - loss_min)})
    return out


def _gap_from_history(row: dict) -> dict:
    return {k: row[f"train_{k}"] - row[f"val_{k}"] for k in ("accuracy", "macro_f1", "loss")
            if _f(row.get(f"train_{k}")) is not None and _f(row.get(f"val_{k}")) is not None}


def table_row(run: Run) -> dict:
    m = run.metrics
    t, tr, inf = m.get("test") or {}, m.get("training") or {}, m.get("inference") or {}
    params = m.get("params") or {}
    gap = m.get("train_val_gap") or {}
    conv = convergence(run.history)
    if run.history and not gap:
        best = max(run.history, key=lambda r: r.get("val_macro_f1") or -1)
        gap = {"best": _gap_from_history(best), "last": _gap_from_history(run.history[-1])}
    epochs_run = tr.get("epochs_run") or (len(run.history) or None)
    seconds = _f(tr.get("seconds_total"))
    per_epoch = _f(tr.get("seconds_per_epoch")) or (seconds / epochs_run if seconds and epochs_run else None)
    desc = m.get("model") or {}
    tok = desc.get("tokenizer") or {}
    return {
        "run": run.name, "path": str(run.path), "dataset": m.get("dataset"), "arm": run.arm, "method": run.method, "model_name": run.model_name,
        "seed": run.seed, "train_fraction": run.train_fraction, "preset": run.preset,
        "num_train_examples": _num_train(run),
        "params_total": params.get("total"), "params_trainable": _trainable(run, params),
        "accuracy": _f(t.get("accuracy")), "macro_f1": _f(t.get("macro_f1")), "weighted_f1": _f(t.get("weighted_f1")),
        "test_loss": _f(t.get("loss")),
        "train_seconds_total": seconds, "train_seconds_per_epoch": per_epoch,
        "epochs_run": epochs_run, "best_epoch": tr.get("best_epoch", conv.get("best_epoch")),
        "epochs_to_95pct_best": conv.get("epochs_to_95pct_best"),
        "seconds_to_95pct_best": conv.get("seconds_to_95pct_best"),
        "stop_reason": tr.get("stop_reason"),
        "inference_seconds_per_1000": _f(inf.get("seconds_per_1000")),
        "inference_device": inf.get("device"),
        "size_on_disk_bytes": m.get("size_on_disk_bytes"),
        "best_val_macro_f1": _f((m.get("best_val") or {}).get("macro_f1")),
        "gap_best_macro_f1": _f((gap.get("best") or {}).get("macro_f1")),
        "gap_best_loss": _f((gap.get("best") or {}).get("loss")),
        "gap_last_macro_f1": _f((gap.get("last") or {}).get("macro_f1")),
        "gap_last_loss": _f((gap.get("last") or {}).get("loss")),
        "tokenizer": tok.get("type") or tok.get("name"),
        "vocab_size": tok.get("vocab_size"),
        "num_test_examples": m.get("num_test_examples"),
        "convergence": conv,
        "calibration": calibration_row(m),
    }


def _trainable(run: Run, params: dict):
    """Trainable parameters while training (train_summary / config `resolved`), else metrics.json's count
    (a reloaded model for evaluation may report 0 trainable)."""
    for v in (run.summary.get("params_trainable"), (run.config.get("resolved") or {}).get("params_trainable")):
        if isinstance(v, int) and v > 0:
            return v
    return params.get("trainable")


def _num_train(run: Run):
    for v in (run.tag("num_train_examples"), (run.config.get("resolved") or {}).get("num_train_examples")):
        if isinstance(v, int | float) and v > 0:
            return int(v)
    d = resolve_data_dir(run)
    if d is not None:
        try:
            return int(read_json(d / "metadata.json")["splits"]["train"]["count"])
        except (KeyError, TypeError, ValueError, FtvsError):
            return None
    return None


def _mean_std(values):
    vals = [float(v) for v in values if _f(v) is not None]
    if not vals:
        return None, None
    return float(np.mean(vals)), (float(np.std(vals, ddof=1)) if len(vals) > 1 else None)


def make_groups(runs: list[Run], rows: list[dict]) -> list[dict]:
    """Runs sharing (arm, method, model_name, train_fraction), i.e. seeds of one configuration."""
    by_key: dict[tuple, list[int]] = {}
    for i, r in enumerate(runs):
        by_key.setdefault(r.group_key, []).append(i)
    groups = []
    for key, idx in by_key.items():
        members = [rows[i] for i in idx]
        g = {"key": list(key), "arm": key[0], "method": key[1], "model_name": key[2], "train_fraction": key[3],
             "label": _group_label(key), "runs": [m["run"] for m in members], "n": len(members),
             "seeds": [m["seed"] for m in members]}
        for field in ("accuracy", "macro_f1", "weighted_f1", "best_epoch", "train_seconds_total",
                      "inference_seconds_per_1000", "params_total", "params_trainable", "num_train_examples",
                      "gap_best_macro_f1", "gap_last_macro_f1"):
            mean, std = _mean_std(m[field] for m in members)
            g[f"{field}_mean"], g[f"{field}_std"] = mean, std
        groups.append(g)
    return groups


def _group_label(key) -> str:
    arm, method, model_name, frac = key
    if arm == "baseline":
        base = "TF-IDF + LogReg"
    elif arm == "scratch":
        base = model_name if str(model_name).startswith("scratch") else f"scratch {model_name}"
    else:
        base = f"{Path(str(model_name)).name} ({method})"
    return base if frac in (None, 1.0) else f"{base} @ {frac:g} train"


# -------------------------------------------------------------------------------------- significance


def check_same_test_set(runs: list[Run]) -> dict:
    """All runs must share one test set (same labels in the same order); FtvsError naming the odd one."""
    ref = runs[0]
    ref_y = ref.predictions.get("y_true") or []
    ref_names = ref.predictions.get("label_names")
    for r in runs[1:]:
        y = r.predictions.get("y_true") or []
        problem = None
        if r.predictions.get("label_names") != ref_names:
            problem = "different label sets"
        elif len(y) != len(ref_y):
            problem = f"{len(y)} vs {len(ref_y)} test examples"
        elif y != ref_y:
            n_diff = sum(a != b for a, b in zip(y, ref_y))
            problem = f"labels differ at {n_diff} of {len(y)} positions"
        if problem:
            raise FtvsError(
                f"runs {ref.name!r} (data {ref.data_dir}) and {r.name!r} (data {r.data_dir}) were not scored on the "
                f"same test set ({problem}); compare runs of one prepared data folder only")
    return {"num_examples": len(ref_y), "num_labels": len(ref_names or []), "label_names": ref_names,
            "data_dirs": sorted({str(r.data_dir) for r in runs})}


def significance(runs: list[Run], n_resamples: int = 2000, seed: int = 0) -> dict:
    """McNemar exact test and paired bootstrap CIs (accuracy, macro-F1) for every pair of runs.

    All runs are resampled with the same indices, so each pair's bootstrap is paired; the per-run
    resampled scores are computed once and differenced per pair.
    """
    from ftvs.stats import ALPHA, bootstrap_interval, fast_macro_f1, holm, mcnemar_exact, resample_weights

    test = check_same_test_set(runs)
    y = np.asarray(runs[0].predictions["y_true"], dtype=np.int64)
    num_labels = test["num_labels"]
    preds = [np.asarray(r.predictions["y_pred"], dtype=np.int64) for r in runs]
    n = len(y)
    acc_boot = [[] for _ in runs]
    f1_boot = [[] for _ in runs]
    if n and len(runs) > 1:
        for w in resample_weights(n, n_resamples, seed):
            for i, p in enumerate(preds):
                acc_boot[i].append(w @ (p == y).astype(np.float64) / n)
                f1_boot[i].append(fast_macro_f1(y, p, num_labels, w))
    acc_boot = [np.concatenate(a) if a else np.zeros(0) for a in acc_boot]
    f1_boot = [np.concatenate(a) if a else np.zeros(0) for a in f1_boot]
    point_acc = [float((p == y).mean()) if n else 0.0 for p in preds]
    point_f1 = [fast_macro_f1(y, p, num_labels) if n else 0.0 for p in preds]

    def ci(d, point):
        return bootstrap_interval(d, point, 0.95)

    pairs = []
    for i, j in itertools.combinations(range(len(runs)), 2):
        # orient each pair so that A is the one with the higher test macro-F1
        a, b = (i, j) if point_f1[i] >= point_f1[j] else (j, i)
        mc = mcnemar_exact(y, preds[a], preds[b])
        pairs.append({
            "a": runs[a].name, "b": runs[b].name, "a_arm": runs[a].arm, "b_arm": runs[b].arm,
            "mcnemar": mc,
            "accuracy": ci(acc_boot[a] - acc_boot[b], point_acc[a] - point_acc[b]),
            "macro_f1": ci(f1_boot[a] - f1_boot[b], point_f1[a] - point_f1[b]),
        })
    for pair, adj in zip(pairs, holm([p["mcnemar"]["p_value"] for p in pairs])):
        pair["mcnemar"]["p_holm"] = adj
        pair["significant"] = pair["mcnemar"]["p_value"] < ALPHA
        pair["significant_holm"] = adj < ALPHA
    return {"test_set": {k: v for k, v in test.items() if k != "label_names"}, "alpha": ALPHA,
            "n_resamples": int(n_resamples), "seed": int(seed), "confidence": 0.95,
            "method": "McNemar exact (two-sided binomial on discordant pairs) + paired bias-corrected percentile "
                      "bootstrap; Holm adjustment over all pairs",
            "pairs": pairs}


def find_pair(sig: dict, a: str, b: str) -> dict | None:
    """The significance record of runs a and b, oriented as (a - b)."""
    for p in sig.get("pairs", []):
        if p["a"] == a and p["b"] == b:
            return p
        if p["a"] == b and p["b"] == a:
            flipped = {**p, "a": a, "b": b, "a_arm": p["b_arm"], "b_arm": p["a_arm"]}
            for k in ("accuracy", "macro_f1"):
                d = p[k]
                flipped[k] = {"diff": -d["diff"], "ci_low": -d["ci_high"], "ci_high": -d["ci_low"],
                              "excludes_zero": d["excludes_zero"]}
            mc = dict(p["mcnemar"])
            mc["a_only_correct"], mc["b_only_correct"] = mc["b_only_correct"], mc["a_only_correct"]
            flipped["mcnemar"] = mc
            return flipped
    return None


# ----------------------------------------------------------------------------------- descriptions


def describe_model(run: Run) -> dict:
    """Architecture outline, head, tokenizer and sizes (metrics.json `model` → model/ftvs.json → config)."""
    m = run.metrics
    desc = dict(m.get("model") or {})
    arch = dict(desc.get("architecture") or {})
    if not arch:
        if run.arm == "scratch":
            for k in ("preset", "n_layer", "n_head", "n_embd", "d_ff", "pooling", "positional", "dropout"):
                v = run.config.get(k, run.marker.get(k))
                if v is not None:
                    arch[k] = v
        elif run.arm == "finetune":
            arch["base model"] = run.model_name
    tok = desc.get("tokenizer") or {}
    if not tok and run.arm == "scratch":
        tok = {"type": run.config.get("tokenizer")}
    elif not tok and run.arm == "finetune":
        tok = {"type": f"pre-trained tokenizer of {run.model_name}"}
    params = m.get("params") or {}
    return {
        "run": run.name, "arm": run.arm, "method": run.method, "model_name": run.model_name,
        "architecture": arch, "head": desc.get("head") or run.marker.get("head"),
        "tokenizer": tok, "params_total": params.get("total", desc.get("params_total")),
        "params_trainable": params.get("trainable", desc.get("params_trainable")),
        "params_embedding": desc.get("params_embedding"),
        "size_on_disk_bytes": m.get("size_on_disk_bytes"),
        "max_seq_length": run.config.get("max_seq_length"),
        "training": {k: run.config.get(k) for k in (
            "learning_rate", "num_train_epochs", "per_device_train_batch_size", "gradient_accumulation_steps",
            "weight_decay", "warmup_ratio", "lr_scheduler_type", "max_grad_norm", "dropout", "token_dropout",
            "label_smoothing", "early_stopping_patience", "lora_r", "lora_alpha", "C") if run.config.get(k) is not None
            and not (run.arm != "finetune" and k in FINETUNE_ONLY) and not (run.arm != "scratch" and k in SCRATCH_ONLY)},
        "resolved": run.config.get("resolved") or {},
    }


def describe_dataset(runs: list[Run], n_examples: int = 6, seed: int = 0) -> dict:
    """metadata.json of the runs' data folder plus a few seeded examples (distinct classes)."""
    data_dir = next((d for d in (resolve_data_dir(r) for r in runs) if d is not None), None)
    if data_dir is None:
        return {"available": False, "data_dir": runs[0].data_dir if runs else None}
    meta = read_json(data_dir / "metadata.json", "data metadata")
    names = meta.get("label_names") or []
    examples = []
    path = data_dir / "train.jsonl"
    if path.is_file():
        rows = read_jsonl(path)
        rng = np.random.default_rng(seed)
        seen = set()
        for i in rng.permutation(len(rows)):
            row = rows[int(i)]
            if row.get("label") in seen:
                continue
            seen.add(row.get("label"))
            label = row.get("label")
            examples.append({"text": str(row.get("text", "")),
                             "label": names[label] if isinstance(label, int) and 0 <= label < len(names) else label})
            if len(examples) >= n_examples:
                break
    per_class = ((meta.get("splits") or {}).get("train") or {}).get("per_class") or {}
    counts = [int(v) for v in per_class.values()] if per_class else []
    return {
        "available": True, "data_dir": str(data_dir),
        "source": meta.get("source"), "source_description": meta.get("source_description"),
        "num_labels": meta.get("num_labels", len(names)), "label_names": names,
        "splits": {k: {"count": (v or {}).get("count")} for k, v in (meta.get("splits") or {}).items()},
        "train_per_class_min": min(counts) if counts else None,
        "train_per_class_max": max(counts) if counts else None,
        "train_per_class_median": float(np.median(counts)) if counts else None,
        "length_words": meta.get("length_words"), "length_tokens": meta.get("length_tokens"),
        "tokenizer_for_stats": meta.get("tokenizer"),
        "cleaning": meta.get("cleaning") or {},
        "val_source": meta.get("val_source"), "test_source": meta.get("test_source"),
        "validation_split": meta.get("validation_split"), "test_split": meta.get("test_split"),
        "max_train_examples": meta.get("max_train_examples"), "seed": meta.get("seed"),
        "train_fraction": meta.get("train_fraction"), "content_hash": meta.get("content_hash"),
        "examples": examples,
    }


# ------------------------------------------------------------------------------------------- sweeps


def sweeps(runs: list[Run], rows: list[dict], studies: list[dict]) -> dict:
    """Data-size sweep (macro-F1 vs #train examples per configuration) and model-size sweep (macro-F1 vs
    params per arm), from the runs' train_fraction / preset tags. Empty lists when there is no sweep."""
    data_series: dict[tuple, dict[float, list[dict]]] = {}
    for r, row in zip(runs, rows):
        data_series.setdefault((r.arm, r.method, r.model_name), {}).setdefault(r.train_fraction, []).append(row)
    data_size = []
    for (arm, method, model_name), by_frac in data_series.items():
        if len(by_frac) < 2:
            continue
        points = []
        for frac, members in sorted(by_frac.items()):
            mean, std = _mean_std(m["macro_f1"] for m in members)
            n_train, _ = _mean_std(m["num_train_examples"] for m in members)
            points.append({"train_fraction": frac, "num_train_examples": int(n_train) if n_train else None,
                           "macro_f1_mean": mean, "macro_f1_std": std, "n": len(members)})
        data_size.append({"arm": arm, "method": method, "model_name": model_name,
                          "label": _group_label((arm, method, model_name, 1.0)), "points": points})
    model_series: dict[tuple, dict] = {}
    for r, row in zip(runs, rows):
        if r.train_fraction != 1.0 or row["params_total"] is None:
            continue
        model_series.setdefault((r.arm, r.method), {}).setdefault(r.model_name, []).append(row)
    model_size = []
    for (arm, method), by_model in model_series.items():
        if len(by_model) < 2:
            continue
        points = []
        for model_name, members in by_model.items():
            mean, std = _mean_std(m["macro_f1"] for m in members)
            points.append({"model_name": model_name, "preset": members[0]["preset"],
                           "params_total": members[0]["params_total"],
                           "params_trainable": members[0]["params_trainable"],
                           "macro_f1_mean": mean, "macro_f1_std": std, "n": len(members)})
        points.sort(key=lambda p: p["params_total"])
        model_size.append({"arm": arm, "method": method, "label": ARM_LABEL.get(arm, arm) +
                           ("" if arm != "finetune" else f" ({method})"), "points": points})
    crossover = _crossovers(data_size)
    declared = [s["doc"].get("sweeps") for s in studies if isinstance(s.get("doc"), dict) and s["doc"].get("sweeps")]
    return {"data_size": data_size, "model_size": model_size, "crossovers": crossover, "declared": declared}


def _crossovers(data_size: list[dict]) -> list[dict]:
    """Where two data-size curves cross: the training-set size interval in which their order flips."""
    out = []
    for s1, s2 in itertools.combinations(data_size, 2):
        p1 = {p["num_train_examples"]: p["macro_f1_mean"] for p in s1["points"] if p["num_train_examples"]}
        p2 = {p["num_train_examples"]: p["macro_f1_mean"] for p in s2["points"] if p["num_train_examples"]}
        xs = sorted(set(p1) & set(p2))
        for lo, hi in zip(xs, xs[1:]):
            d_lo, d_hi = p1[lo] - p2[lo], p1[hi] - p2[hi]
            if d_lo * d_hi < 0:
                out.append({"a": s1["label"], "b": s2["label"], "between_examples": [lo, hi],
                            "leader_below": s1["label"] if d_lo > 0 else s2["label"],
                            "leader_above": s1["label"] if d_hi > 0 else s2["label"]})
    return out


# -------------------------------------------------------------------------------------------- driver


def per_class_difference(run_a: Run, run_b: Run) -> dict:
    """Per-class test F1 of A minus B, sorted from A's biggest lead to B's."""
    pa = (run_a.metrics.get("test") or {}).get("per_class") or {}
    pb = (run_b.metrics.get("test") or {}).get("per_class") or {}
    diffs = [{"class": c, "f1_a": pa[c]["f1"], "f1_b": pb[c]["f1"], "diff": pa[c]["f1"] - pb[c]["f1"],
              "support": pa[c].get("support")} for c in pa if c in pb]
    diffs.sort(key=lambda d: -d["diff"])
    return {"a": run_a.name, "b": run_b.name, "classes": diffs,
            "a_better": sum(d["diff"] > 0 for d in diffs), "b_better": sum(d["diff"] < 0 for d in diffs),
            "ties": sum(d["diff"] == 0 for d in diffs)}


def representative(group: dict, rows_by_name: dict) -> str:
    """The typical run of a seed group: test macro-F1 closest to the group mean (ties: first listed)."""
    mean = group["macro_f1_mean"] or 0.0
    return min(group["runs"], key=lambda n: abs((rows_by_name[n]["macro_f1"] or 0.0) - mean))


def focus(groups: list[dict], rows: list[dict]) -> dict:
    """Which runs the narrative and the per-run figures use: per arm, the full-data group with the best
    mean test macro-F1 and its typical run; `runs`: the typical run of every full-data group (best first)."""
    by_name = {r["run"]: r for r in rows}
    full = [g for g in groups if (g["train_fraction"] or 1.0) == 1.0] or groups
    full = sorted(full, key=lambda g: -(g["macro_f1_mean"] or 0.0))
    by_arm = {}
    for g in full:
        if g["arm"] not in by_arm:
            by_arm[g["arm"]] = {"group": g["label"], "run": representative(g, by_name), "n": g["n"],
                                "macro_f1_mean": g["macro_f1_mean"], "macro_f1_std": g["macro_f1_std"]}
    return {"by_arm": by_arm, "arm_order": list(by_arm), "runs": [representative(g, by_name) for g in full],
            "rule": "per arm: the full-data configuration with the best mean test macro-F1; within it the seed "
                    "whose macro-F1 is closest to the configuration mean"}


def best_runs_of_two_arms(runs: list[Run], foc: dict) -> tuple[Run, Run] | None:
    """The typical runs of the two best arms (by their best configuration's mean macro-F1)."""
    order = foc["arm_order"]
    if len(order) < 2:
        return None
    by_name = {r.name: r for r in runs}
    return by_name[foc["by_arm"][order[0]]["run"]], by_name[foc["by_arm"][order[1]]["run"]]


def compare(paths, out_dir, n_resamples: int = 2000, seed: int = 0, figures: bool = True, log=print) -> dict:
    """Load runs, compute everything, write comparison.json/.md and figures into out_dir; return the dict."""
    runs, studies = load_runs(paths)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = [table_row(r) for r in runs]
    groups = make_groups(runs, rows)
    sig = significance(runs, n_resamples=n_resamples, seed=seed)
    comparison = {
        "ftvs_comparison_version": COMPARISON_VERSION,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "runs": rows, "groups": groups, "significance": sig,
        "models": [describe_model(r) for r in runs],
        "dataset": describe_dataset(runs, seed=seed),
        "sweeps": sweeps(runs, rows, studies),
        "studies": [s["path"] for s in studies],
        "reference_results": [ref for s in studies for ref in (s["doc"].get("reference_results") or [])
                              if isinstance(ref, dict)],
        "histories": {r.name: r.history for r in runs},
        "focus": focus(groups, rows), "per_class_diff": None, "figures": {},
    }
    pair = best_runs_of_two_arms(runs, comparison["focus"])
    if pair:
        comparison["per_class_diff"] = per_class_difference(*pair)
    if figures:
        from ftvs.plots_compare import make_figures

        comparison["figures"] = make_figures(runs, comparison, out)
    write_json(out / "comparison.json", comparison)
    atomic_write_bytes(out / "comparison.md", (markdown_table(rows) + "\n").encode())
    log(f"compare: {len(runs)} runs, {len(sig['pairs'])} pairs -> {out / 'comparison.json'}")
    return comparison


def fmt(x, digits=4, unit=""):
    if x is None:
        return "–"
    if isinstance(x, int) and not isinstance(x, bool):
        return f"{x:,}{unit}"
    return f"{x:.{digits}f}{unit}"


def fmt_seconds(x):
    if x is None:
        return "–"
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def fmt_bytes(n):
    if n is None:
        return "–"
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n} B"


def fmt_count(n):
    if n is None:
        return "–"
    n = float(n)
    if n >= 1e9:
        return f"{n / 1e9:.2f}B"
    if n >= 1e6:
        return f"{n / 1e6:.2f}M"
    if n >= 1e3:
        return f"{n / 1e3:.1f}k"
    return f"{int(n)}"


TABLE_COLUMNS = [
    ("run", "run", str), ("arm", "arm", str), ("method", "method", str),
    ("params total", "params_total", fmt_count), ("params trainable", "params_trainable", fmt_count),
    ("accuracy", "accuracy", fmt), ("macro-F1", "macro_f1", fmt), ("weighted-F1", "weighted_f1", fmt),
    ("train s", "train_seconds_total", fmt_seconds), ("s/epoch", "train_seconds_per_epoch", fmt_seconds),
    ("epochs", "epochs_run", lambda v: "–" if v is None else str(v)),
    ("best epoch", "best_epoch", lambda v: "–" if v is None else str(v)),
    ("infer s/1k", "inference_seconds_per_1000", lambda v: fmt(v, 3)),
    ("disk", "size_on_disk_bytes", fmt_bytes),
    ("gap F1 best", "gap_best_macro_f1", lambda v: fmt(v, 3)), ("gap F1 last", "gap_last_macro_f1", lambda v: fmt(v, 3)),
    ("gap loss best", "gap_best_loss", lambda v: fmt(v, 3)), ("gap loss last", "gap_last_loss", lambda v: fmt(v, 3)),
]


def table_cells(rows: list[dict], columns=TABLE_COLUMNS) -> tuple[list[str], list[list[str]]]:
    return [c[0] for c in columns], [[fn(r.get(key)) for _, key, fn in columns] for r in rows]


def markdown_table(rows: list[dict], columns=TABLE_COLUMNS) -> str:
    header, cells = table_cells(rows, columns)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ CLI


def add_cli(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "compare",
        help="compare evaluated runs: table, significance, figures and the report",
        description="Compare evaluated run folders (scratch, fine-tuned, baseline) scored on the same test set: "
                    "side-by-side table, seed groups (mean ± std), McNemar exact test and paired bootstrap CIs "
                    "for every pair, overlaid curves, confusion matrices, per-class F1 differences, and sweeps "
                    "(train_fraction / preset tags). Writes comparison.json, comparison.md, the figures and "
                    "report.md/.html/.pdf into --out.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR",
                   help="run folders, study folders (searched for runs), glob patterns, or a study JSON listing runs")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and of the example picks (default 0)")
    p.add_argument("--no-report", dest="report", action="store_false", help="skip report.md/.html/.pdf")
    p.add_argument("--formats", default="md,html,pdf", help="report formats, comma-separated (default md,html,pdf)")
    p.set_defaults(func=cmd_compare)
    return p


def cmd_compare(args) -> int:
    if args.bootstrap < 100:
        raise FtvsError("--bootstrap needs at least 100 resamples for a 95% interval")
    comparison = compare(args.runs, args.out, n_resamples=args.bootstrap, seed=args.seed)
    print(markdown_table(comparison["runs"]))
    if args.report:
        from ftvs.report import build_report, parse_formats

        written = build_report(comparison, args.out, formats=parse_formats(args.formats))
        for path in written.values():
            print(f"wrote {path}")
    return 0
