"""Tests for `ftvs study` (src/ftvs/study.py): config/presets/plan units, and one real study on a Banking77
subset that is SIGKILLed mid-training and resumed.

The integration test keeps 10 Banking77 intents and tiny models (BPE tokenizer, 24 tokens, the tiny
Llama fixture) so that its ~13 subprocesses finish in about two minutes on two CPU cores.
"""

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from ftvs import study as S
from ftvs.errors import FtvsError
from ftvs.fileio import RunLock

BANKING77 = Path(__file__).resolve().parents[2] / "shared" / "data" / "banking77"
needs_banking77 = pytest.mark.skipif(not (BANKING77 / "train.csv").is_file(),
                                     reason=f"Banking77 CSVs not found at {BANKING77}")


def _raw(**over) -> dict:
    raw = {
        "name": "unit",
        "data": {"source": "somewhere", "tokenizer": "none"},
        "seeds": [0, 1],
        "train": {"max_seq_length": 32},
        "arms": [
            {"name": "tfidf", "arm": "baseline"},
            {"name": "scratch", "arm": "scratch", "preset": "tiny", "num_train_epochs": 3},
            {"name": "lora", "arm": "finetune", "model_name_or_path": "smollm2-135m", "method": "lora"},
        ],
        "sweeps": {"data_size": {"fractions": [0.1, 0.5], "arms": ["tfidf", "scratch"]},
                   "model_size": {"arm": "scratch", "sizes": ["tiny", "small", {"name": "wide", "n_embd": 256}]}},
    }
    raw.update(over)
    return raw


# --------------------------------------------------------------------------------------------------
# Units: presets, config validation, plan, stratified cap, crossover
# --------------------------------------------------------------------------------------------------


def test_presets_load_validate_and_plan():
    assert {"quick", "banking77", "ag_news"} <= set(S.preset_names())
    for name in S.preset_names():
        cfg, preset = S.load_study_config(preset=name)
        assert preset == name and cfg["name"] == name
        ids = [r.id for r in S.plan_runs(cfg)]
        assert ids and len(ids) == len(set(ids))
    quick, _ = S.load_study_config(preset="quick")
    assert quick["data"]["source"] == "20newsgroups" and quick["seeds"] == [0]
    assert [a["arm"] for a in quick["arms"]] == ["baseline", "scratch", "finetune"]
    lora = next(a for a in quick["arms"] if a["arm"] == "finetune")
    assert lora["model_name_or_path"] == "smollm2-135m" and lora["method"] == "lora"
    b77, _ = S.load_study_config(preset="banking77")
    assert b77["seeds"] == [0, 1, 2]
    assert b77["sweeps"]["data_size"]["fractions"] == [0.01, 0.05, 0.1, 0.25, 0.5, 1.0]
    assert [s["name"] for s in b77["sweeps"]["model_size"]["sizes"]] == ["tiny", "small", "medium", "large"]
    assert {a["method"] for a in b77["arms"] if a["arm"] == "finetune"} == {"lora", "full"}
    ag, _ = S.load_study_config(preset="ag_news")
    assert sorted(r["test_accuracy"] for r in ag["reference_results"]) == [0.9154, 0.9195]
    with pytest.raises(FtvsError, match="did you mean 'quick'"):
        S.load_study_config(preset="quik")


def test_plan_orders_main_runs_first_and_dedupes_sweep_points():
    cfg = S.normalize_config(_raw())
    plan = S.plan_runs(cfg)
    ids = [r.id for r in plan]
    # main results first (baseline, scratch, finetune; every seed), then model sizes, then data sizes
    assert ids[:6] == ["tfidf-f1-s0", "tfidf-f1-s1", "scratch-f1-s0", "scratch-f1-s1", "lora-f1-s0", "lora-f1-s1"]
    # size "tiny" is the scratch arm's own size: no duplicate run
    assert "scratch.tiny-f1-s0" not in ids and "scratch.small-f1-s1" in ids and "scratch.wide-f1-s0" in ids
    assert [i for i in ids if "-f0.1-" in i] == ["tfidf-f0.1-s0", "tfidf-f0.1-s1", "scratch-f0.1-s0", "scratch-f0.1-s1"]
    assert ids.index("scratch-f0.5-s1") < ids.index("tfidf-f0.1-s0")  # larger fractions first
    assert not any(i.startswith("lora-f0.") for i in ids)
    assert cfg["sweeps"]["data_size"]["fractions"] == [0.1, 0.5, 1.0]  # 1.0 always closes the curve
    wide = next(r for r in plan if r.id == "scratch.wide-f1-s0")
    assert wide.sweep == "model_size" and wide.settings["n_embd"] == 256 and wide.settings["preset"] == "tiny"
    sub = next(r for r in plan if r.id == "scratch-f0.1-s1")
    assert sub.sweep == "data_size" and sub.subset_seed == 1 and sub.data_key == "0.1-s1"
    assert len(ids) == 6 + 2 * 2 + 2 * 2 * 2


def test_config_errors_and_overrides():
    raw = _raw()
    S.apply_override(raw, "arms.scratch.num_train_epochs=7")
    S.apply_override(raw, "train.max_seq_length=48")
    S.apply_override(raw, "seeds=[3]")
    cfg = S.normalize_config(raw)
    run = next(r for r in S.plan_runs(cfg) if r.id == "scratch-f1-s3")
    assert run.settings["num_train_epochs"] == 7 and run.settings["max_seq_length"] == 48
    with pytest.raises(FtvsError, match="no entry named 'scrach'.*did you mean 'scratch'"):
        S.apply_override(_raw(), "arms.scrach.preset=small")
    bad = _raw()
    bad["arms"][1]["lerning_rate"] = 1e-3
    with pytest.raises(FtvsError, match="did you mean 'learning_rate'"):
        S.normalize_config(bad)
    bad = _raw()
    bad["arms"].append({"name": "tfidf", "arm": "baseline"})
    with pytest.raises(FtvsError, match="two arms are named 'tfidf'"):
        S.normalize_config(bad)
    with pytest.raises(FtvsError, match="fractions must be numbers in"):
        S.normalize_config(_raw(sweeps={"data_size": {"fractions": [0, 0.5]}}))
    with pytest.raises(FtvsError, match="arms.scratch: invalid preset"):
        S.normalize_config(_raw(arms=[{"name": "scratch", "arm": "scratch", "preset": "huge"}]))
    with pytest.raises(FtvsError, match="data.source is missing"):
        S.normalize_config(_raw(data={}))


def test_stratified_cap_is_exact_proportional_and_deterministic():
    labels = [0] * 50 + [1] * 30 + [2] * 20 + [3] * 1
    idx = S.stratified_cap(labels, 10, seed=0)
    assert len(idx) == 10 and idx == sorted(idx) == S.stratified_cap(labels, 10, seed=0)
    counts = Counter(labels[i] for i in idx)
    assert counts[3] == 1 and counts[0] >= counts[1] >= counts[2] >= 1
    assert S.stratified_cap(labels, 10, seed=1) != idx
    assert S.stratified_cap(labels, 1000, seed=0) == list(range(len(labels)))


def test_crossover_names_where_finetuning_advantage_disappears():
    rows = []
    for frac, n, ft, sc in ((0.1, 100, 0.60, 0.30), (0.5, 500, 0.70, 0.65), (1.0, 1000, 0.72, 0.74)):
        rows.append({"arm": "finetune", "arm_name": "lora", "method": "lora", "model": "m", "train_fraction": frac,
                     "num_train_examples": n, "n": 2, "test_macro_f1_mean": ft, "test_macro_f1_std": 0.01})
        rows.append({"arm": "scratch", "arm_name": "scratch", "method": None, "model": "s", "train_fraction": frac,
                     "num_train_examples": n, "n": 2, "test_macro_f1_mean": sc, "test_macro_f1_std": 0.01})
    (c,) = S._crossovers(rows)
    assert c["finetuned"] == "lora" and c["other"] == "scratch" and c["crossover_num_train_examples"] == 1000
    assert 500 < c["crossover_interpolated"] < 1000
    assert [round(p["delta_macro_f1"], 2) for p in c["points"]] == [0.30, 0.05, -0.02]


# --------------------------------------------------------------------------------------------------
# A real study: killed mid-training, resumed, one arm failing
# --------------------------------------------------------------------------------------------------

EPOCHS = 6  # scratch epochs: long enough to be caught mid-run


@pytest.fixture(scope="module")
def banking10(tmp_path_factory):
    """Banking77 restricted to 10 intents (a local CSV folder with train.csv/test.csv)."""
    if not (BANKING77 / "train.csv").is_file():
        pytest.skip(f"Banking77 CSVs not found at {BANKING77}")
    out = tmp_path_factory.mktemp("banking10")
    keep = None
    for split in ("train", "test"):
        with open(BANKING77 / f"{split}.csv", newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        header, body = rows[0], rows[1:]
        if keep is None:
            keep = sorted({r[1] for r in body})[:10]
        with open(out / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(r for r in body if r[1] in keep)
    return out


def _study_yaml(path: Path, source: Path, llama: Path) -> Path:
    cfg = {
        "name": "tiny-study",
        "data": {"source": str(source), "max_train_examples": 300, "max_val_examples": 60, "max_test_examples": 80,
                 "tokenizer": "none"},
        "seeds": [0, 1],
        "train": {"max_seq_length": 24, "per_device_train_batch_size": 16, "per_device_eval_batch_size": 64,
                  "mixed_precision": "no", "early_stopping_patience": 0},
        "arms": [
            {"name": "tfidf", "arm": "baseline", "C": 10},
            {"name": "scratch", "arm": "scratch", "preset": "tiny", "tokenizer": "bpe", "bpe_vocab_size": 400,
             "n_layer": 1, "num_train_epochs": EPOCHS, "learning_rate": 3e-3},
            {"name": "llama", "arm": "finetune", "model_name_or_path": str(llama), "method": "lora",
             "num_train_epochs": 1},
            {"name": "broken", "arm": "finetune", "model_name_or_path": str(path.parent / "no-such-model"),
             "method": "lora", "num_train_epochs": 1},
        ],
        "sweeps": {"data_size": {"fractions": [0.1, 1.0], "arms": ["tfidf", "scratch"]}},
        "compare": True,
        "report": False,
    }
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _history_rows(run_dir: Path) -> list[dict]:
    p = run_dir / "history.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()] if p.is_file() else []


@needs_banking77
def test_study_survives_sigkill_resumes_and_reports_a_failed_run(tmp_path, banking10, tiny_llama_dir):
    cfg_path = _study_yaml(tmp_path / "study.yaml", banking10, tiny_llama_dir)
    out = tmp_path / "study"
    cmd = [sys.executable, "-m", "ftvs", "study", str(cfg_path), "--output_dir", str(out)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    # 1. start the study and SIGKILL it while the first from-scratch run is between two epochs
    target = out / "runs" / "scratch-f1-s0"
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 600
        try:
            while True:
                assert proc.poll() is None, "the study ended before it could be killed:\n" + \
                    (tmp_path / "first.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "no from-scratch epoch finished in time"
                if (target / "checkpoint" / "state.json").is_file() and 1 <= len(_history_rows(target)) < EPOCHS - 1:
                    os.kill(proc.pid, signal.SIGKILL)
                    break
                time.sleep(0.05)
        finally:
            proc.wait(timeout=60)
    # the training subprocess dies with the study (no orphan keeps the run locked)
    end = time.monotonic() + 60
    while not RunLock.is_free(target) and time.monotonic() < end:
        time.sleep(0.2)
    assert RunLock.is_free(target), "the killed study left its training running"

    reg = json.loads((out / "study.json").read_text())
    assert reg["runs"]["scratch-f1-s0"]["state"] == "running"  # killed without a chance to say otherwise
    assert json.loads((target / "train_summary.json").read_text())["status"] == "running"
    ckpt_epoch = json.loads((target / "checkpoint" / "state.json").read_text())["epoch"]
    assert 1 <= ckpt_epoch < EPOCHS
    kept_rows = [r for r in _history_rows(target) if r["epoch"] <= ckpt_epoch]
    finished = {rid: e for rid, e in reg["runs"].items() if e["state"] == "completed"}
    assert set(finished) == {"tfidf-f1-s0", "tfidf-f1-s1"}
    before = {rid: ((out / e["run_dir"] / "history.jsonl").read_bytes(),
                    (out / e["run_dir"] / "history.jsonl").stat().st_mtime_ns, e["finished_at"], len(e["attempts"]))
              for rid, e in finished.items()}

    # 2. the same command again: skips finished runs, resumes the killed one, reports the failed arm
    t0 = time.monotonic()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert res.returncode == 1, res.stdout[-3000:] + res.stderr[-3000:]  # 1: some runs failed
    reg = json.loads((out / "study.json").read_text())
    runs = reg["runs"]
    for rid, (hist, mtime, fin, n_att) in before.items():
        e = runs[rid]
        assert e["state"] == "completed" and e["finished_at"] == fin and len(e["attempts"]) == n_att
        p = out / e["run_dir"] / "history.jsonl"
        assert p.read_bytes() == hist and p.stat().st_mtime_ns == mtime, f"{rid} was retrained"
        assert f"{rid}: done earlier" in res.stdout

    resumed = runs["scratch-f1-s0"]
    assert resumed["state"] == "completed" and resumed["resumed_from_epoch"] == ckpt_epoch
    assert [(a["mode"], a["outcome"]) for a in resumed["attempts"]] == [("fresh", "killed"), ("resume", "ok")]
    rows = _history_rows(target)
    assert [r["epoch"] for r in rows] == list(range(1, EPOCHS + 1))
    assert rows[:ckpt_epoch] == kept_rows  # epochs before the checkpoint were not redone
    assert f"resuming after epoch {ckpt_epoch}" in res.stdout

    for seed in (0, 1):
        broken = runs[f"broken-f1-s{seed}"]
        assert broken["state"] == "failed" and "no-such-model" in broken["error"]
        assert f"FAILED broken-f1-s{seed}" in res.stdout
    ok = [rid for rid, e in runs.items() if not rid.startswith("broken")]
    assert all(runs[rid]["state"] == "completed" for rid in ok), {r: runs[r]["state"] for r in ok}
    # the runs planned after the failing arm still ran
    assert reg["order"].index("tfidf-f0.1-s0") > reg["order"].index("broken-f1-s1")
    assert len(ok) == 10 and reg["state"] == "completed_with_failures"

    # registry content: results, sweeps, tags in each run's config.yaml, nested subsets
    for rid in ok:
        r = runs[rid]["results"]
        assert 0 <= r["test_accuracy"] <= 1 and r["num_test_examples"] == 80
    assert runs["tfidf-f1-s0"]["results"]["test_accuracy"] > 0.5  # 10 intents: chance is 0.1
    ds = reg["sweeps"]["data_size"]
    assert len(ds) == 8 and {(d["arm_name"], d["train_fraction"]) for d in ds} == {
        (a, f) for a in ("tfidf", "scratch") for f in (0.1, 1.0)}
    main_train = (out / "data" / "main" / "train.jsonl").read_text().splitlines()
    per_class = Counter(json.loads(x)["label"] for x in main_train)
    n_tenth = sum(math.ceil(0.1 * n) for n in per_class.values())  # nested subsets round up per class
    assert {d["num_train_examples"] for d in ds if d["train_fraction"] == 0.1} == {n_tenth}
    assert {d["num_train_examples"] for d in ds if d["train_fraction"] == 1.0} == {300}
    summary = {(s["arm_name"], s["train_fraction"]): s for s in reg["sweeps"]["data_size_summary"]}
    assert summary[("scratch", 0.1)]["n"] == 2 and summary[("scratch", 0.1)]["test_macro_f1_std"] is not None
    conf = yaml.safe_load((out / "runs" / "scratch-f0.1-s1" / "config.yaml").read_text())
    assert conf["seed"] == 1 and conf["extra"]["train_fraction"] == 0.1 and conf["extra"]["sweep"] == "data_size"
    assert conf["extra"]["preset"] == "tiny" and conf["extra"]["arm_name"] == "scratch"
    base_conf = yaml.safe_load((out / "runs" / "tfidf-f0.1-s0" / "config.yaml").read_text())
    assert base_conf["extra"]["train_fraction"] == 0.1
    for seed in (0, 1):
        sub = (out / "data" / f"train-0.1-s{seed}" / "train.jsonl").read_text().splitlines()
        assert len(sub) == n_tenth and set(sub) <= set(main_train)
        assert (out / "data" / f"train-0.1-s{seed}" / "test.jsonl").read_bytes() == \
            (out / "data" / "main" / "test.jsonl").read_bytes()
    meta = json.loads((out / "data" / "main" / "metadata.json").read_text())
    assert meta["splits"]["val"]["count"] == 60 and meta["splits"]["test"]["count"] == 80
    assert meta["eval_caps"]["test_before_cap"] > 80
    assert reg["stages"]["compare"]["state"] == "completed"
    assert (out / "report" / "comparison.json").is_file()
    assert "data-size sweep (test macro-F1)" in res.stdout and "failed broken-f1-s0" in res.stdout
    rerun_seconds = time.monotonic() - t0

    # 3. --force --only reruns exactly the named run; failed runs are not retried with --no-retry_failed
    res = subprocess.run(cmd + ["--force", "--only", "tfidf-f0.1-s0", "--no-retry_failed", "--no-compare"],
                         capture_output=True, text=True, env=env, timeout=600)
    reg2 = json.loads((out / "study.json").read_text())
    assert res.returncode == 1, res.stdout[-2000:] + res.stderr[-2000:]  # the broken runs are still failed
    assert reg2["runs"]["tfidf-f0.1-s0"]["finished_at"] >= runs["tfidf-f0.1-s0"]["finished_at"]
    assert len(reg2["runs"]["tfidf-f0.1-s0"]["attempts"]) == 1
    for rid in ok:
        if rid != "tfidf-f0.1-s0":
            assert reg2["runs"][rid]["attempts"] == runs[rid]["attempts"], rid
    assert reg2["runs"]["broken-f1-s0"]["attempts"] == runs["broken-f1-s0"]["attempts"]
    assert rerun_seconds < 600


def test_registry_sweeps_from_finished_runs(tmp_path):
    """`collect` turns finished runs into study.json's sweeps: data-size points (+ mean/std, crossover) and
    model-size points with parameter counts and train-val gaps."""
    cfg = S.normalize_config(_raw())
    study = S.Study(cfg, tmp_path / "s")
    study.reg = {"runs": {}, "order": [r.id for r in study.plan], "stages": {},
                 "data": {"splits": {"train": 1000}, "subsets": {
                     f"{f}-s{s}": {"num_train_examples": int(1000 * f)} for f in (0.1, 0.5) for s in (0, 1)}}}
    for run in study.plan:
        e = study._planned_entry(run)
        e["num_train_examples"] = study.num_train_examples(e)
        dims = S._dims(e["config"]) if run.kind == "scratch" else {}
        params = 1000 * dims.get("n_embd", 1) * dims.get("n_layer", 1)
        f1 = {"baseline": 0.5, "scratch": 0.3 + 0.3 * run.train_fraction, "finetune": 0.7}[run.kind] + run.seed / 100
        e.update(state="completed", results={"test_accuracy": f1, "test_macro_f1": f1, "best_val_macro_f1": f1,
                                             "params_total": params, "train_val_gap_macro_f1": 0.1 * run.seed,
                                             "train_val_gap_accuracy": 0.0})
        study.reg["runs"][run.id] = e
    study.collect()
    sw = study.reg["sweeps"]
    assert {(d["arm_name"], d["train_fraction"], d["seed"]) for d in sw["data_size"]} == {
        (a, f, s) for a in ("tfidf", "scratch") for f in (0.1, 0.5, 1.0) for s in (0, 1)}
    row = next(r for r in sw["data_size_summary"] if r["arm_name"] == "scratch" and r["train_fraction"] == 0.5)
    assert row["n"] == 2 and row["num_train_examples"] == 500 and abs(row["test_macro_f1_mean"] - 0.455) < 1e-9
    assert row["test_macro_f1_std"] > 0
    sizes = {r["size"]: r for r in sw["model_size_summary"]}
    assert set(sizes) == {"tiny", "small", "wide"} and sizes["wide"]["n_embd"] == 256
    assert [r["size"] for r in sw["model_size_summary"]] == sorted(sizes, key=lambda k: sizes[k]["params_total"])
    assert sizes["tiny"]["n"] == 2 and abs(sizes["tiny"]["train_val_gap_macro_f1_mean"] - 0.05) < 1e-9
    assert sw["crossover"] == []  # the fine-tuned arm is not part of this data-size sweep
    main = {s["arm_name"]: s for s in study.reg["summary"]}
    assert set(main) == {"tfidf", "scratch", "lora"} and main["lora"]["n"] == 2
    text = S.format_summary({**study.reg, "name": "unit", "state": "completed", "study_dir": "x"})
    assert "data-size sweep" in text and "model-size sweep" in text and "mean ± std" in text


def test_a_run_saved_before_a_training_key_existed_is_not_stale():
    from ftvs.config import build_config, config_differences

    planned = build_config({}, {"arm": "finetune"}).to_dict()
    saved = {k: v for k, v in planned.items() if k not in ("token_dropout", "lowercase")}  # an older ftvs
    assert config_differences(saved, planned, S._FREE_KEYS) == []
    assert config_differences(saved, {**planned, "lowercase": True}, S._FREE_KEYS) == ["lowercase"]
    assert config_differences({**saved, "extra": {"a": 1}}, planned, S._FREE_KEYS) == []
    # baseline settings are not training keys: nothing is filled in for them
    assert config_differences({"C": 10.0, "seed": 0}, {"C": 10.0, "seed": 0}, S._FREE_KEYS) == []
    assert config_differences({"C": 10.0}, {"C": 20.0}, S._FREE_KEYS) == ["C"]
