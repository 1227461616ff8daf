"""`ftvs compare` on REAL tiny runs of every arm (a Banking77-format subset of 20 Newsgroups): run discovery,
seed groups, sweeps,
refusal of runs scored on different test sets (see tests/compare_runs.py for the runs)."""

import json
import re
import shutil

import numpy as np
import pytest
from compare_runs import NUM, build_tiny_study, metrics_of

from ftvs.cli import main


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_llama_dir):
    """Tiny real runs of each arm on one data folder, compared and reported with the CLI."""
    return build_tiny_study(tmp_path_factory, tiny_llama_dir)


def test_all_runs_found_recursively_and_seeds_grouped(study):
    c = study["c"]
    assert sorted(r["run"] for r in c["runs"]) == [
        "baseline_half",
        "baseline_s0",
        "baseline_s1",
        "ft_lora",
        "scratch_tiny",
    ]
    assert {r["arm"] for r in c["runs"]} == {"finetune", "scratch", "baseline"}
    groups = {g["label"]: g for g in c["groups"]}
    seeds = groups["TF-IDF + LogReg"]
    assert seeds["n"] == 2 and seeds["macro_f1_std"] is not None
    vals = [r["macro_f1"] for r in c["runs"] if r["run"] in ("baseline_s0", "baseline_s1")]
    assert seeds["macro_f1_mean"] == pytest.approx(np.mean(vals))
    assert seeds["macro_f1_std"] == pytest.approx(np.std(vals, ddof=1))
    assert (study["out"] / "comparison.md").read_text().count("\n| ") == 5


def test_sweeps_from_tagged_runs_and_missing_sweep_hint(study):
    sw = study["c"]["sweeps"]
    series = {s["label"]: s for s in sw["data_size"]}
    pts = series["TF-IDF + LogReg"]["points"]
    assert [p["train_fraction"] for p in pts] == [0.5, 1.0]
    assert pts[0]["num_train_examples"] < pts[1]["num_train_examples"]
    half = metrics_of(study, "baseline_half")["test"]["macro_f1"]
    assert pts[0]["macro_f1_mean"] == pytest.approx(half)
    hit = re.search(
        rf"\*\*TF-IDF \+ LogReg\*\*: macro-F1 ({NUM}) with ([\d,]+) training examples, ({NUM}) with "
        rf"([\d,]+)",
        study["md"],
    )
    assert float(hit.group(1)) == pytest.approx(pts[0]["macro_f1_mean"], abs=5e-5)
    assert int(hit.group(2).replace(",", "")) == pts[0]["num_train_examples"]
    assert not sw["model_size"]
    assert "`ftvs study --preset banking77`" in study["md"]


def test_refuses_runs_scored_on_different_test_sets(study, tmp_path, capsys):
    odd = tmp_path / "odd"
    shutil.copytree(study["runs"] / "baseline_s0", odd)
    pred = json.loads((odd / "predictions.json").read_text())
    # the same scores on texts in another order: its own predictions and metrics agree, the pairing does not
    for key in ("y_true", "y_pred", "confidence"):
        pred[key] = pred[key][::-1]
    (odd / "predictions.json").write_text(json.dumps(pred))
    m = json.loads((odd / "metrics.json").read_text())
    m["run_name"] = "odd"
    (odd / "metrics.json").write_text(json.dumps(m))
    code = main(
        ["compare", str(study["runs"] / "ft_lora"), str(odd), "--out", str(tmp_path / "cmp"), "--no-report"]
    )
    assert code == 2
    assert "same test set" in capsys.readouterr().err
