"""A tiny search for the tests of `ftvs tune`: generated intent data that a 1-block from-scratch model
tells apart within a few epochs, a small search space, and the command line of a search."""

import csv
import random
import subprocess
import sys
from pathlib import Path

from tiny_runs import TINY_SCRATCH, child_env, flags

# six intents with words of their own, which a tiny model tells apart within a few epochs...
INTENTS = {
    "activate_card": "activate new card start use",
    "age_limit": "age old young minimum teenager",
    "apple_pay": "apple google pay phone wallet",
    "atm_support": "atm cash machine withdraw street",
    "top_up": "top automatic refill balance low",
    "transfer_missing": "transfer arrived sent friend bank",
}
# ...and six whose cues are often another intent's (a third of the texts), on which no baseline setting
# scores perfectly
SIMILAR_INTENTS = {
    "card_arrival": "arrive post mail week",
    "card_delivery": "deliver courier ship date",
    "fee_charged": "fee charge extra cost",
    "not_recognised": "recognise unknown strange merchant",
    "declined": "decline refuse reject fail",
    "pending": "pending wait still hold",
}
SHARED_WORDS = "my card payment please help why is the it has been today app account".split()
CLASSES = len(INTENTS)
# a from-scratch model small enough that an epoch is well under a second on one core
TINY_SETTINGS = {
    **TINY_SCRATCH,
    "num_train_epochs": 3,
    "per_device_train_batch_size": 8,
    "per_device_eval_batch_size": 256,
}
TINY = flags(TINY_SETTINGS)
SPACE = {
    "defaults": False,
    "learning_rate": {"low": 1e-3, "high": 3e-2, "log": True},
    "dropout": {"low": 0.0, "high": 0.2},
    "pooling": ["mean", "max"],
}


def prepare_intents(root: Path, intents: dict, confusion: float = 0.0) -> Path:
    """A prepared set of generated texts: 40 train texts per intent (a stratified val is carved from
    them), 10 test; each text mixes shared words with two cue words of its intent (or, with probability
    `confusion`, of a random one)."""
    from ftvs.data import prepare

    rng = random.Random(0)
    names = list(intents)
    for split, per_class in (("train", 40), ("test", 10)):
        rows = []
        for name in names:
            for i in range(per_class):
                cues = intents[name if rng.random() >= confusion else rng.choice(names)].split()
                words = rng.sample(SHARED_WORDS, 5) + rng.sample(cues, 2)
                rng.shuffle(words)
                rows.append({"text": " ".join(words) + f" {split} {i}", "category": name})
        with open(root / f"{split}.csv", "w", encoding="utf-8", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["text", "category"])
            w.writeheader()
            w.writerows(rows)
    prepare(str(root), root / "data", seed=0, tokenizer="none")
    return root / "data"


def tune_cmd(data, out, space, n_trials):
    return [
        sys.executable,
        "-m",
        "ftvs",
        "tune",
        "--arm",
        "scratch",
        "--data",
        str(data),
        "--output_dir",
        str(out),
        "--n_trials",
        str(n_trials),
        "--space",
        str(space),
        "--seed",
        "3",
        *TINY,
    ]


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=400)


def finished(summary):
    return [t for t in summary["trials"] if t["state"] in ("COMPLETE", "PRUNED")]
