"""Distillation on the real Banking77 CSVs (docs/distill.md): 1,000 labelled training texts, the other ~8,000
training texts unlabeled, a SmolLM2-135M LoRA teacher (max_seq_length 64), the plain tiny from-scratch
model and the tiny student taught by the LoRA model. The student must close at least half of the
scratch -> teacher gap in test macro-F1.

Hours of CPU (the LoRA teacher above all): `FTVS_B77_DISTILL_DIR=DIR` keeps the data and runs in DIR, and
a run that already holds metrics.json there is reused (DIR/lora may be a teacher trained earlier on the
same 1,000 texts). Skipped where the CSVs are missing (or FTVS_NO_SHARED=1)."""

import os
from pathlib import Path

import pytest
from test_banking77 import BANKING77, needs_banking77

from ftvs.cli import main
from ftvs.fileio import read_json

LABELLED, UNLABELED = 1000, 8000
# the best from-scratch settings on Banking77 (README), for the plain model and the student alike
TINY = [
    "--preset",
    "tiny",
    "--pooling",
    "max",
    "--token_dropout",
    "0.1",
    "--lowercase",
    "--learning_rate",
    "2e-3",
    "--label_smoothing",
    "0.1",
    "--max_seq_length",
    "64",
    "--seed",
    "0",
    "--disable_tqdm",
]
RUNS = {
    "lora": ["finetune", "--model", "smollm2-135m", "--method", "lora", "--max_seq_length", "64",
             "--learning_rate", "1.4e-3", "--lora_r", "16", "--lora_alpha", "64", "--num_train_epochs", "5",
             "--per_device_train_batch_size", "8", "--disable_tqdm"],
    "scratch": ["scratch", *TINY, "--num_train_epochs", "40", "--early_stopping_patience", "10"],
    "student": ["scratch", *TINY, "--num_train_epochs", "20", "--early_stopping_patience", "5",
                "--distill_alpha", "0.5", "--distill_temperature", "1"],
}  # fmt: skip


def _run(work: Path, name: str, data: Path) -> dict:
    run = work / name
    if not (run / "metrics.json").is_file():
        extra = ["--teacher", str(work / "lora")] if name == "student" else []
        arm, *flags = RUNS[name]
        assert main(["train", arm, "--data", str(data), "--output_dir", str(run), *flags, *extra]) == 0
    return read_json(run / "metrics.json")["test"]


@needs_banking77
@pytest.mark.slow
def test_the_tiny_student_closes_half_the_gap_to_its_lora_teacher(tmp_path):
    work = Path(os.environ.get("FTVS_B77_DISTILL_DIR") or tmp_path)
    data = work / "data"
    if not (data / "unlabeled.jsonl").is_file():
        assert (
            main(
                [
                    "prepare",
                    str(BANKING77),
                    "--output_dir",
                    str(data),
                    "--tokenizer",
                    "none",
                    "--max-train-examples",
                    str(LABELLED),
                    "--unlabeled_from_rest",
                    str(UNLABELED),
                ]
            )
            == 0
        )
    meta = read_json(data / "metadata.json")
    assert meta["splits"]["train"]["count"] == LABELLED and meta["unlabeled"]["count"] >= 7000
    teacher, scratch, student = (_run(work, name, data) for name in ("lora", "scratch", "student"))
    gap = teacher["macro_f1"] - scratch["macro_f1"]
    closed = (student["macro_f1"] - scratch["macro_f1"]) / gap
    print(f"macro-F1 teacher {teacher['macro_f1']:.4f} scratch {scratch['macro_f1']:.4f} student "
          f"{student['macro_f1']:.4f}: {closed:.0%} of the gap closed")  # fmt: skip
    assert gap > 0 and closed >= 0.5
