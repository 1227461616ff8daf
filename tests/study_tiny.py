"""A tiny 4-run study (TF-IDF and a one-block from-scratch model, two seeds, on the 4-intent data of
tests/tiny_runs.py) whose runs take seconds: for the executor tests and benchmarks/parallel_study.py."""

from pathlib import Path

import yaml
from tiny_runs import TINY_SCRATCH, prepare_tiny_dataset


def tiny_study_yaml(root: Path, epochs: int = 3, seeds=(0, 1), distill: bool = False) -> Path:
    """Writes the data under root/source and the study YAML as root/study.yaml; returns the YAML's path.
    `distill`: 100 labelled training texts, 40 of the rest unlabeled, and an arm `student` (the scratch
    settings) taught by the scratch arm."""
    source = root / "source"
    source.mkdir(parents=True, exist_ok=True)
    prepare_tiny_dataset(source)
    cfg = {
        "name": "tiny-executors",
        "data": {"source": str(source), "tokenizer": "none"},
        "seeds": list(seeds),
        "train": {
            "max_seq_length": 24,
            "per_device_train_batch_size": 16,
            "per_device_eval_batch_size": 64,
            "mixed_precision": "no",
            "early_stopping_patience": 0,
        },
        "arms": [
            {"name": "tfidf", "arm": "baseline", "C": 10},
            {
                "name": "scratch",
                "arm": "scratch",
                "preset": "tiny",
                **TINY_SCRATCH,  # its max_seq_length and mixed_precision are the train block's too
                "num_train_epochs": epochs,
                "learning_rate": 3e-3,
            },
        ],
        "compare": False,
        "report": False,
    }
    if distill:
        cfg["data"].update(max_train_examples=100, unlabeled_from_rest=40)
        student = {**cfg["arms"][1], "name": "student", "arm": "distill", "teacher": "scratch"}
        cfg["arms"].append(student)
    path = root / "study.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path
