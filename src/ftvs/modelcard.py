"""The model card of a run: RUN_DIR/model/README.md, a Hugging Face `ModelCard` (YAML metadata + Markdown).

Written at the end of evaluation from what the run folder already records (config.yaml, metrics.json,
model/ftvs.json, train_summary.json and the data folder's metadata.json); nothing is asked of the Hub.
Upload the folder as it is (`huggingface-cli upload USER/NAME RUN_DIR/model`) and the Hub renders it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ftvs.errors import FtvsError
from ftvs.fileio import read_json

MAX_CLASSES_LISTED = 30
MOST_CONFUSED = 5
# the config keys that describe a run, not how it was launched
NOT_HYPERPARAMETERS = {
    "data",
    "data_dir",
    "output_dir",
    "disable_tqdm",
    "logging_steps",
    "save_steps",
    "num_workers",
    "extra",
    "resolved",
    "run_name",
    "arm",
}


def most_confused_pairs(matrix, label_names, k: int = MOST_CONFUSED) -> list[dict]:
    """The k largest off-diagonal cells of a confusion matrix: true class, predicted class, count and the
    share of the true class's test examples that went there."""
    m = np.asarray(matrix, dtype=np.int64)
    if m.size == 0:
        return []
    off = m.copy()
    np.fill_diagonal(off, 0)
    support = m.sum(axis=1)
    cells = [(int(off[i, j]), i, j) for i, j in zip(*np.nonzero(off))]
    cells.sort(key=lambda c: (-c[0], c[1], c[2]))
    return [
        {
            "true": label_names[i],
            "predicted": label_names[j],
            "count": n,
            "share_of_true": n / max(1, support[i]),
        }
        for n, i, j in cells[:k]
    ]


def _hub_base_model(name: str | None) -> str | None:
    """The Hub id of the base model, when it has one (a local folder has none)."""
    if not name:
        return None
    from ftvs.pretrained import BUILTIN_MODELS

    if name.lower() in BUILTIN_MODELS:
        return BUILTIN_MODELS[name.lower()]["hub_id"]
    if Path(name).exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        return None
    return name


def _read_optional(path: Path, what: str) -> dict:
    return read_json(path, what) if path.is_file() else {}


def _fmt(v, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool) or not isinstance(v, int | float):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    return f"{v:.{digits}f}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) if not isinstance(c, str) else c for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _arm_sentence(arm: str, info: dict, metrics: dict) -> str:
    model = metrics.get("model") or {}
    arch = model.get("architecture") or {}
    if arm == "scratch":
        return (
            f"A decoder-only transformer trained from random initialisation on this task alone "
            f"({arch.get('n_layer')} blocks, width {arch.get('n_embd')}, {arch.get('n_head')} heads, "
            f"{model.get('head', 'a classification head')})."
        )
    if arm == "finetune":
        method = info.get("method") or metrics.get("method")
        how = {
            "lora": "LoRA adapters on the attention projections plus a new classification head",
            "full": "every weight trained",
            "frozen": "the pre-trained body frozen, only the new head trained",
            "unfreeze": "the head first, then the top blocks unfrozen with a lower learning rate",
        }.get(method, method)
        return (
            f"The pre-trained decoder-only LM `{info.get('base_model')}` with a sequence-classification head "
            f"(the hidden state of the last non-pad token), fine-tuned by method `{method}`: {how}."
        )
    return (
        "A TF-IDF (word and character n-grams) + multinomial logistic regression baseline "
        f"({model.get('num_features', '?')} features)."
    )


def _load_snippet(arm: str, info: dict, library: str) -> str:
    if arm == "finetune" and library == "transformers":
        return (
            "```python\nfrom transformers import AutoModelForSequenceClassification, AutoTokenizer\n\n"
            'model = AutoModelForSequenceClassification.from_pretrained("PATH_OR_REPO")\n'
            'tokenizer = AutoTokenizer.from_pretrained("PATH_OR_REPO")\n'
            'logits = model(**tokenizer(["some text"], return_tensors="pt")).logits\n'
            "print(model.config.id2label[int(logits.argmax(-1))])\n```"
        )
    if arm == "finetune":
        return (
            "```python\nfrom peft import AutoPeftModelForSequenceClassification\n"
            "from transformers import AutoTokenizer\n\n"
            f"# loads the base model ({info.get('base_model')}) and applies the adapter and head\n"
            'model = AutoPeftModelForSequenceClassification.from_pretrained("PATH_OR_REPO", '
            f"num_labels={len(info.get('label_names') or [])})\n"
            'tokenizer = AutoTokenizer.from_pretrained("PATH_OR_REPO")\n'
            "model = model.merge_and_unload()  # optional: one plain model, no adapter branch\n```"
        )
    return (
        "```python\nfrom ftvs.evaluate import predict_texts\n\n"
        "# RUN_DIR is the folder that holds this model/ folder\n"
        'print(predict_texts("RUN_DIR", ["some text"]))\n```'
    )


@dataclass
class _Run:
    """What every card section reads, gathered once from the run folder."""

    run_dir: Path
    metrics: dict
    info: dict
    cfg: dict
    meta: dict
    arm: str | None
    method: str | None
    label_names: list
    test: dict
    dataset: str
    name: str
    library: str

    @property
    def splits(self) -> dict:
        return self.meta.get("splits") or {}

    @property
    def max_length(self):
        return self.info.get("max_length") or self.cfg.get("max_seq_length")


def _read_run(run_dir: Path) -> _Run:
    import yaml

    metrics = _read_optional(run_dir / "metrics.json", "metrics")
    if not metrics:
        raise FtvsError(f"{run_dir} has no metrics.json; run `ftvs evaluate {run_dir}` first")
    info = _read_optional(run_dir / "model" / "ftvs.json", "model marker")
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").is_file() else {}
    cfg = cfg or {}
    data_dir = metrics.get("data_dir") or cfg.get("data")
    meta = _read_optional(Path(data_dir) / "metadata.json", "data metadata") if data_dir else {}
    arm = metrics.get("arm") or info.get("arm")
    method = metrics.get("method") or info.get("method")
    return _Run(
        run_dir=run_dir,
        metrics=metrics,
        info=info,
        cfg=cfg,
        meta=meta,
        arm=arm,
        method=method,
        label_names=info.get("label_names") or meta.get("label_names") or [],
        test=metrics.get("test") or {},
        dataset=metrics.get("dataset") or meta.get("source") or "local data",
        name=metrics.get("run_name") or run_dir.name,
        library={"scratch": "ftvs", "baseline": "sklearn"}.get(
            arm, "peft" if method == "lora" else "transformers"
        ),
    )


def _card_metadata(r: _Run):
    """The card's YAML metadata: library, base model, tags and the test scores as Hub eval results."""
    from huggingface_hub import EvalResult, ModelCardData

    base = _hub_base_model(r.info.get("base_model")) if r.arm == "finetune" else None
    test = r.test
    results = [
        EvalResult(
            task_type="text-classification",
            dataset_type=str(r.dataset),
            dataset_name=str(r.dataset),
            dataset_split="test",
            metric_type=key,
            metric_name=label,
            metric_value=round(test[key], 6),
        )
        for key, label in (
            ("accuracy", "Accuracy"),
            ("macro_f1", "Macro F1"),
            ("weighted_f1", "Weighted F1"),
            ("ece", "Expected calibration error"),
            ("brier", "Brier score"),
        )
        if test.get(key) is not None
    ]
    return ModelCardData(
        model_name=r.name,
        library_name=r.library,
        pipeline_tag="text-classification",
        base_model=base,
        metrics=["accuracy", "f1"] + [k for k in ("ece", "brier") if k in test],
        tags=["ftvs", "text-classification", r.arm] + ([r.method] if r.method and r.method != r.arm else []),
        eval_results=results or None,
    )


def _intro_section(r: _Run) -> list[str]:
    return [
        f"# {r.name}",
        f"A {len(r.label_names)}-class text classifier for **{r.dataset}**, trained and evaluated with "
        "ftvs (fine-tuning vs. from-scratch). " + _arm_sentence(r.arm, r.info, r.metrics),
    ]


def _data_section(r: _Run) -> list[str]:
    label_names = r.label_names
    sections = ["## Data", f"Source: {r.meta.get('source_description') or r.dataset}."]
    if r.splits:
        sections.append(_table(["split", "examples"], [[s, v.get("count")] for s, v in r.splits.items()]))
    shown = ", ".join(f"`{n}`" for n in label_names[:MAX_CLASSES_LISTED])
    more = (
        f" and {len(label_names) - MAX_CLASSES_LISTED} more" if len(label_names) > MAX_CLASSES_LISTED else ""
    )
    sections.append(f"Classes ({len(label_names)}): {shown}{more}.")
    return sections


def _model_section(r: _Run) -> list[str]:
    params = r.metrics.get("params") or {}
    return [
        "## Model",
        _table(
            ["", ""],
            [
                ["arm", r.arm],
                ["method", r.method or "–"],
                ["base model", r.info.get("base_model") or "–"],
                ["parameters (total)", params.get("total")],
                ["parameters (trained)", params.get("trainable")],
                ["max sequence length", r.max_length],
                ["size on disk (bytes)", r.metrics.get("size_on_disk_bytes")],
            ],
        ),
    ]


def _hyperparameters_section(r: _Run) -> list[str]:
    drop = NOT_HYPERPARAMETERS | _other_arm_keys(r.arm)
    hyper = [
        [f"`{k}`", "–" if v is None else str(v)]
        for k, v in r.cfg.items()
        if k not in drop and not isinstance(v, dict)
    ]
    return [
        "## Hyperparameters",
        "From the run's `config.yaml` (every flag, resolved).",
        _table(["key", "value"], hyper) if hyper else "Not recorded.",
    ]


def _results_section(r: _Run) -> list[str]:
    test = r.test
    rows = [
        [label, test.get(key)]
        for key, label in (
            ("accuracy", "accuracy"),
            ("macro_f1", "macro-F1"),
            ("weighted_f1", "weighted-F1"),
            ("macro_precision", "macro precision"),
            ("macro_recall", "macro recall"),
            ("loss", "loss (NLL)"),
            ("ece", "expected calibration error (15 bins)"),
            ("brier", "Brier score"),
        )
        if test.get(key) is not None
    ]
    cal = r.metrics.get("calibration")
    if cal:
        rows += [
            ["temperature (fitted on val)", cal.get("temperature")],
            ["ECE after scaling", cal.get("ece_after")],
            ["Brier after scaling", cal.get("brier_after")],
        ]
    sections = [
        "## Test results",
        f"On the held-out test split ({_fmt(r.metrics.get('num_test_examples'))} examples).",
        _table(["metric", "value"], rows),
    ]
    pairs = most_confused_pairs(test.get("confusion_matrix") or [], r.label_names) if r.label_names else []
    if pairs:
        sections += [
            "Most confused pairs (true → predicted):",
            _table(
                ["true", "predicted", "count", "share of true class"],
                [[f"`{p['true']}`", f"`{p['predicted']}`", p["count"], p["share_of_true"]] for p in pairs],
            ),
        ]
    return sections


def _cost_section(r: _Run) -> list[str]:
    tr, inf = r.metrics.get("training") or {}, r.metrics.get("inference") or {}
    sections = [
        "## Training and inference cost",
        _table(
            ["", ""],
            [
                ["training seconds (total)", tr.get("seconds_total")],
                ["epochs run / best epoch", f"{_fmt(tr.get('epochs_run'))} / {_fmt(tr.get('best_epoch'))}"],
                ["stop reason", tr.get("stop_reason") or "–"],
                ["training device", (r.cfg.get("resolved") or {}).get("device") or "–"],
                ["inference seconds per 1,000 texts", inf.get("seconds_per_1000")],
                [
                    "inference batch size / device",
                    f"{_fmt(inf.get('batch_size'))} / {inf.get('device', '–')}",
                ],
            ],
        ),
    ]
    onnx = _read_optional(r.run_dir / "export" / "onnx_check.json", "ONNX check")
    if onnx:
        lat = onnx.get("latency") or {}
        sections.append(
            "ONNX export (`ftvs export`): CPU latency per 1,000 texts "
            f"{_fmt(lat.get('onnxruntime', {}).get('seconds_per_1000'))}s "
            f"(ONNX Runtime) vs. {_fmt(lat.get('pytorch', {}).get('seconds_per_1000'))}s (PyTorch), batch "
            f"{onnx.get('batch_size')}; predictions agree on {_fmt(onnx.get('argmax_agreement'))} of the "
            "test split."
        )
    return sections


def _intended_use_section(r: _Run) -> list[str]:
    n_train = (r.splits.get("train") or {}).get("count")
    n_classes = len(r.label_names)
    calibrated = r.metrics.get("calibration")
    ece = r.test.get("ece")
    return [
        "## Intended use and limitations",
        "\n".join(
            [
                f"- Intended for classifying short texts like those of {r.dataset} into exactly these "
                f"{n_classes} classes; anything else is forced into one of them.",
                f"- Trained on {_fmt(n_train)} examples; the test scores hold for text from the same "
                "distribution, "
                "not for other domains, languages or time periods.",
                f"- Inputs are truncated to {r.max_length or '–'} tokens.",
                f"- Confidences are {'calibrated by temperature scaling' if calibrated else 'not calibrated'}"
                + (f" (test ECE {_fmt(ece)})" if ece is not None else "")
                + "; do not read them as probabilities without checking.",
                "- Not evaluated for fairness or robustness to adversarial input; review errors (above) "
                "before use "
                "in decisions about people.",
            ]
        ),
    ]


def _how_to_load_section(r: _Run) -> list[str]:
    return [
        "## How to load",
        _load_snippet(r.arm, r.info, r.library),
        'Or from the command line: `ftvs predict RUN_DIR "some text"` (with `--onnx` after '
        "`ftvs export RUN_DIR --format onnx`)."
        if r.arm != "baseline"
        else 'Or from the command line: `ftvs predict RUN_DIR "some text"`.',
    ]


_SECTIONS = (
    _intro_section,
    _data_section,
    _model_section,
    _hyperparameters_section,
    _results_section,
    _cost_section,
    _intended_use_section,
    _how_to_load_section,
)


def build_model_card(run_dir):
    """The `huggingface_hub.ModelCard` of an evaluated run (needs RUN_DIR/metrics.json)."""
    from huggingface_hub import ModelCard

    r = _read_run(Path(run_dir))
    sections = [part for section in _SECTIONS for part in section(r)]
    content = f"---\n{_card_metadata(r).to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n"
    return ModelCard(content, ignore_metadata_errors=True)


def _other_arm_keys(arm: str) -> set[str]:
    from ftvs.config import FINETUNE_ONLY, SCRATCH_ONLY

    return {"scratch": FINETUNE_ONLY, "finetune": SCRATCH_ONLY}.get(arm, set())


def write_model_card(run_dir) -> Path:
    """Write RUN_DIR/model/README.md (replacing peft's placeholder card); returns its path."""
    path = Path(run_dir) / "model" / "README.md"
    build_model_card(run_dir).save(path)
    return path
