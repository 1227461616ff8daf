"""Accuracy parity of bf16 and fp32, as a check rather than a claim: each arm trained in fp32 and in bf16
(`--mixed_precision no` / `bf16`) over 3 seeds on 20 Newsgroups (built in, offline) and on the real
Banking77 CSVs (skipped where ../shared/data/banking77, or FTVS_BANKING77, is missing); the mean test
accuracy of the two precisions must differ by at most 1 point, or by less than one seed standard deviation.
Sized for 2 CPU cores: the tiny scratch preset with one block, and the quick study's LoRA run of
SmolLM2-135M (one epoch on 20 Newsgroups' 1,000 texts, three on Banking77's 1,540). `make extra-checks`
runs it; the numbers go to benchmarks/RESULTS.md ("bf16 against fp32: accuracy parity"). On a CPU without
native bf16 the bf16 runs are emulated (slow, but correct). Each finished cell prints one `parity:` line
(`pytest -s` shows them).
"""

import json
import os
import statistics
from pathlib import Path

import pytest
from test_banking77 import BANKING77

import ftvs
from ftvs.data.splitting import cap_eval_splits
from ftvs.study.config import load_study_config
from ftvs.study.plan import plan_runs

SEEDS = (0, 1, 2)
PRECISIONS = ("no", "bf16")
MAX_GAP = 0.01  # mean test accuracy, fp32 against bf16: 1 point ...
# ... or less than one seed standard deviation (the larger of the two precisions')

# per data set: how much of it the check trains on (stratified subsets of `ftvs prepare`)
DATA = {
    "20newsgroups": {"max_train_examples": 1000, "max_val_examples": 200, "max_test_examples": 600},
    "banking77": {"max_train_examples": 1540, "max_val_examples": 385, "max_test_examples": 770},
}
ARMS = {
    # the quick study's scratch arm (src/ftvs/presets/quick.yaml), fewer epochs
    "scratch": {
        "preset": "tiny",
        "n_layer": 1,
        "pooling": "mean",
        "dropout": 0.5,
        "token_dropout": 0.2,
        "lowercase": True,
        "max_vocab": 4000,
        "max_seq_length": 64,
        "num_train_epochs": 15,
        "per_device_train_batch_size": 32,
        "learning_rate": 1e-3,
    },
    # the quick study's LoRA arm: quick_lora_settings (on 400 texts for one epoch, until the third session of
    # 2026-12-05, it stayed near chance on both data sets and could not tell the precisions apart)
    "finetune": None,
}
LORA_EPOCHS = {"20newsgroups": None, "banking77": 3}  # None: the quick preset's own (one epoch hardly
# leaves chance on 77 intents)


def quick_lora_settings(dataset: str) -> dict:
    """The quick study's LoRA run settings, as `ftvs study --preset quick` trains them, with the epochs of
    `LORA_EPOCHS` for `dataset`."""
    cfg, _ = load_study_config(preset="quick")
    (run,) = [r for r in plan_runs(cfg) if r.kind == "finetune"]
    skip = ("arm", "extra", "tracking_project", "save_steps")
    settings = {k: v for k, v in run.settings.items() if k not in skip}
    if LORA_EPOCHS[dataset]:
        settings["num_train_epochs"] = LORA_EPOCHS[dataset]
    return settings


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Prepared folders by (data set name, training texts), made on first use: val and test are the same
    whatever the number of training texts."""
    root, made = tmp_path_factory.mktemp("parity"), {}

    def get(name: str, max_train: int | None = None) -> Path:
        key = (name, max_train or DATA[name]["max_train_examples"])
        if key not in made:
            source = "20newsgroups" if name == "20newsgroups" else str(BANKING77)
            if name == "banking77" and (os.environ.get("FTVS_NO_SHARED") or not BANKING77.is_dir()):
                pytest.skip(f"Banking77 CSVs not found at {BANKING77}")
            made[key] = root / f"{name}-{key[1]}"
            ftvs.prepare(source, made[key], max_train_examples=key[1], seed=0)
            cap_eval_splits(made[key], DATA[name]["max_val_examples"], DATA[name]["max_test_examples"])
        return made[key]

    return get


def train_over_seeds(tmp_path: Path, variants: dict, **common) -> dict:
    """The metrics of `ftvs.train(**common, **variants[key])` for each key and seed of SEEDS, by key; the
    variants interleaved within each seed, so a slow phase of the machine hits them alike."""
    runs = {key: [] for key in variants}
    for seed in SEEDS:
        for key, extra in variants.items():
            runs[key].append(
                ftvs.train(
                    output_dir=tmp_path / f"{key}-{seed}", seed=seed, disable_tqdm=True, **{**common, **extra}
                )
            )
    return runs


def seed_stats(runs: dict) -> dict:
    """Per setting, the mean and standard deviation of its test accuracies over the seeds, and the runs."""
    accuracies = {k: [m["test"]["accuracy"] for m in metrics] for k, metrics in runs.items()}
    return {
        k: {"mean": statistics.mean(a), "sd": statistics.stdev(a), "runs": a} for k, a in accuracies.items()
    }


def allowed_gap(stats: dict, floor: float) -> float:
    """The rule of both checks: `floor` (1 point), or one seed standard deviation where that is larger (the
    larger of the settings')."""
    return max(floor, max(s["sd"] for s in stats.values()))


def parity(runs: dict) -> dict:
    """Mean and standard deviation of test accuracy per precision, their gap and whether it passes."""
    stats = seed_stats(runs)
    gap = abs(stats["no"]["mean"] - stats["bf16"]["mean"])
    allowed = allowed_gap(stats, MAX_GAP)
    return {**stats, "gap": gap, "allowed": allowed, "passes": gap <= allowed}


@pytest.mark.parametrize("dataset", list(DATA))
@pytest.mark.parametrize("arm", list(ARMS))
def test_bf16_matches_fp32_accuracy_over_three_seeds(arm, dataset, prepared, tmp_path):
    settings = quick_lora_settings(dataset) if arm == "finetune" else dict(ARMS[arm])
    data = prepared(dataset)
    variants = {p: {"mixed_precision": p} for p in PRECISIONS}
    runs = train_over_seeds(tmp_path, variants, arm=arm, data=data, **settings)
    for precision, metrics in runs.items():
        assert [m["training"]["mixed_precision"] for m in metrics] == [precision] * len(SEEDS)
    result = parity(runs)
    print(f"parity: {arm} {dataset} {json.dumps(result)}")
    assert result["passes"], result
