"""A study with a `tune:` block end to end (ftvs/study/tuning.py): each arm is tuned on the validation split
alone, its best configuration trained and tested, and the report gets its tuning section."""

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from tiny_runs import prepare_tiny_dataset

from ftvs.cli import main
from ftvs.errors import FtvsError
from ftvs.study import load_study_config, normalize_config
from ftvs.study.tuning import effective_tune

TINY = {"tokenizer": "bpe", "bpe_vocab_size": 300, "n_layer": 1, "n_embd": 32, "n_head": 2, "d_ff": 64,
        "max_seq_length": 24, "mixed_precision": "no", "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 128, "disable_tqdm": True}  # fmt: skip


def _config(source: Path) -> dict:
    return {
        "name": "tuned",
        "data": {"source": str(source), "tokenizer": "none", "validation_split": 0.2},
        "seeds": [0],
        "train": TINY,
        "tune": {"n_trials": 2},
        "arms": [
            {"name": "tfidf", "arm": "baseline", "max_iter": 200},
            {"name": "scratch", "arm": "scratch", "num_train_epochs": 3,
             "tune": {"space": {"defaults": False, "learning_rate": {"low": 1e-3, "high": 1e-2, "log": True},
                                "dropout": {"low": 0.0, "high": 0.2}}}},
        ],
        "report": True,
    }  # fmt: skip


def test_the_tune_block_is_checked_and_every_arm_gets_the_same_budget_unless_it_says_otherwise():
    raw = _config(Path("somewhere"))
    raw["arms"].append({"name": "lora", "arm": "finetune", "tune": {"n_trials": 5}})
    raw["arms"].append({"name": "frozen", "arm": "finetune", "method": "frozen", "tune": False})
    cfg = normalize_config(raw)
    budgets = {a["name"]: (effective_tune(cfg, a) or {}).get("n_trials") for a in cfg["arms"]}
    assert budgets == {"tfidf": 2, "scratch": 2, "lora": 5, "frozen": None}
    assert normalize_config(cfg) == cfg  # normalising twice (the CLI does) changes nothing
    for bad, match in (({"n_trial": 2}, "did you mean 'n_trials'"), ({"n_trials": 0}, "positive integer"),
                       ({"pruner": "asha"}, "pruner must be one of"), ({"space": {}}, "belongs in an arm"),
                       ({"timeout": None}, "has no budget")):  # fmt: skip
        with pytest.raises(FtvsError, match=match):
            normalize_config({**raw, "tune": bad})
    raw["arms"][1]["tune"]["space"]["learning_rat"] = [1e-3]
    with pytest.raises(FtvsError, match="arms.scratch.tune.space"):
        normalize_config(raw)


def test_the_quick_tune_preset_is_a_valid_tuned_study():
    cfg, _ = load_study_config(None, "quick_tune", ())
    assert all(effective_tune(cfg, a)["n_trials"] == 4 for a in cfg["arms"])


@pytest.mark.slow
def test_a_tuned_study_tunes_on_validation_only_then_trains_the_best_and_reports_it(tmp_path):
    source = tmp_path / "csv"
    source.mkdir()
    prepare_tiny_dataset(source, num_train=160, num_test=40)
    shutil.rmtree(source / "data")  # keep the CSVs only: the study prepares its own folder
    cfg_path = tmp_path / "study.yaml"
    cfg_path.write_text(yaml.safe_dump(_config(source), sort_keys=False))
    out = tmp_path / "study"
    study = ["study", str(cfg_path), "--output_dir", str(out), "--quiet"]

    # 1. prepare the data (no run selected), then tune with the test split out of reach, two scratch
    # trials at once (the study's executor runs them)
    assert main([*study, "--only", "nothing"]) == 1  # "incomplete": no run selected
    test_file = out / "data" / "main" / "test.jsonl"
    hidden = tmp_path / "test.jsonl.hidden"
    os.rename(test_file, hidden)
    try:
        assert main([*study, "--tune-only", "--parallel", "2"]) == 0
    finally:
        os.rename(hidden, test_file)
    reg = json.loads((out / "study.json").read_text())
    assert reg["state"] == "tuned"
    assert all(e["state"] == "pending" for e in reg["runs"].values())  # tuning trained no final run
    assert set(reg["tuning"]) == {"tfidf", "scratch"}
    for name, rec in reg["tuning"].items():
        assert rec["state"] == "completed" and rec["trials"] == 2 and rec["budget"]["n_trials"] == 2
        assert rec["best_value"] >= rec["defaults_value"] and rec["best_params"]
        assert rec["tune_dir"] == f"tune/{name}"
    trials = sorted((out / "tune" / "scratch" / "trials").iterdir())
    assert len(trials) == 2
    searched = json.loads((out / "tune" / "scratch" / "tune.json").read_text())
    assert searched["executor"] == {"name": "local", "trials_at_once": 2}
    for trial in trials:  # real runs, never evaluated on the test split
        assert (trial / "history.jsonl").is_file()
        assert not (trial / "metrics.json").exists() and not (trial / "predictions.json").exists()

    # 2. the whole study: the searches are found finished, the runs take their best settings
    assert main(study) == 0
    reg = json.loads((out / "study.json").read_text())
    assert reg["state"] == "completed"
    for name in ("tfidf", "scratch"):
        tune = json.loads((out / "tune" / name / "tune.json").read_text())
        assert len(tune["trials"]) == 2  # not repeated
    best_scratch = reg["tuning"]["scratch"]["best_params"]
    run = yaml.safe_load((out / "runs" / "scratch-f1-s0" / "config.yaml").read_text())
    assert run["learning_rate"] == pytest.approx(best_scratch["learning_rate"])
    assert run["dropout"] == pytest.approx(best_scratch["dropout"])
    baseline = yaml.safe_load((out / "runs" / "tfidf-f1-s0" / "config.yaml").read_text())
    assert baseline["C_grid"] == [pytest.approx(reg["tuning"]["tfidf"]["best_params"]["C"])]

    comparison = json.loads((out / "report" / "comparison.json").read_text())
    assert {a["arm_name"] for a in comparison["tuning"]["arms"]} == {"tfidf", "scratch"}
    assert comparison["tuning"]["equal_budget"] is True
    assert (out / "report" / comparison["figures"]["tuning_history"]).is_file()
    report = (out / "report" / "report.md").read_text()
    assert "## Hyperparameter tuning" in report and "at equal budget" in report
    assert "fANOVA" in report and "tuning_history.png" in report
