"""A tiny prepared text-classification dataset and a tiny from-scratch model (real training runs in seconds),
and the check of a one-line command-line error."""

import csv
import random
from pathlib import Path

from ftvs.cli import main
from ftvs.data import prepare

INTENTS = {
    "card": "my card was declined at the shop",
    "transfer": "the transfer to my friend has not arrived",
    "refund": "I want a refund for my order",
    "pin": "how do I change the pin of my card",
}
FILLER = "please help me today why is it that my account the app now".split()
# one block, width 32, BPE of 300 tokens, 24 tokens per text
TINY_SCRATCH_FLAGS = [
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
    "24",
    "--learning_rate",
    "3e-3",
    "--mixed_precision",
    "no",
    "--disable_tqdm",
]


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
    """`main(argv)` fails with exit code 2 and one `ftvs: error: ...` line on stderr that contains `needle`."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    if progress_bars:  # transformers' "Loading weights" bar may precede the error line on stderr
        assert "Traceback" not in err, err
        err = err.splitlines()[-1]
    assert err.startswith("ftvs: error: ") and "\n" not in err and "Traceback" not in err, err
    assert needle in err, err
    return err
