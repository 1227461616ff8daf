"""`ftvs study` end to end (ftvs/study/supervisor.py): one real study on a small Banking77-format data set
(real 20 Newsgroups posts) that is SIGKILLed
mid-training and resumed, with an arm that fails. The units are in tests/test_study_*.py.

The integration test keeps 10 classes and tiny models (BPE tokenizer, 24 tokens, the tiny
Llama fixture) so that its ~13 subprocesses finish in about two minutes on two CPU cores.
"""

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
from builders import newsgroups_csv

from ftvs.fileio import RunLock

# --------------------------------------------------------------------------------------------------
# A real study: killed mid-training, resumed, one arm failing
# --------------------------------------------------------------------------------------------------

EPOCHS = 6  # scratch epochs: long enough to be caught mid-run


@pytest.fixture(scope="module")
def banking10(tmp_path_factory):
    """10 intents in Banking77's CSV format (train.csv/test.csv) and size: real newsgroup posts, ~130 train
    and 40 test texts per class."""
    return newsgroups_csv(tmp_path_factory.mktemp("banking10"), per_class_train=130, per_class_test=40,
                          num_classes=10)  # fmt: skip


def _study_yaml(path: Path, source: Path, llama: Path) -> Path:
    cfg = {
        "name": "tiny-study",
        "data": {
            "source": str(source),
            "max_train_examples": 300,
            "max_val_examples": 60,
            "max_test_examples": 80,
            "tokenizer": "none",
        },
        "seeds": [0, 1],
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
                "tokenizer": "bpe",
                "bpe_vocab_size": 400,
                "n_layer": 1,
                "num_train_epochs": EPOCHS,
                "learning_rate": 3e-3,
            },
            {
                "name": "llama",
                "arm": "finetune",
                "model_name_or_path": str(llama),
                "method": "lora",
                "num_train_epochs": 1,
            },
            {
                "name": "broken",
                "arm": "finetune",
                "model_name_or_path": str(path.parent / "no-such-model"),
                "method": "lora",
                "num_train_epochs": 1,
            },
        ],
        "sweeps": {"data_size": {"fractions": [0.1, 1.0], "arms": ["tfidf", "scratch"]}},
        "compare": True,
        "report": False,
        "decide": {"max_params": 1e12},  # passed on to the compare stage
    }
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _history_rows(run_dir: Path) -> list[dict]:
    p = run_dir / "history.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()] if p.is_file() else []


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
                assert proc.poll() is None, (
                    "the study ended before it could be killed:\n"
                    + (tmp_path / "first.log").read_text()[-3000:]
                )
                assert time.monotonic() < deadline, "no from-scratch epoch finished in time"
                if (target / "checkpoint" / "state.json").is_file() and 1 <= len(
                    _history_rows(target)
                ) < EPOCHS - 1:
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
    before = {
        rid: (
            (out / e["run_dir"] / "history.jsonl").read_bytes(),
            (out / e["run_dir"] / "history.jsonl").stat().st_mtime_ns,
            e["finished_at"],
            len(e["attempts"]),
        )
        for rid, e in finished.items()
    }

    # 2. the same command again: skips finished runs, resumes the killed one, reports the failed arm
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
    assert (
        runs["tfidf-f1-s0"]["results"]["test_accuracy"] > 0.35
    )  # 10 classes, 30 training texts each: chance is 0.1
    ds = reg["sweeps"]["data_size"]
    assert len(ds) == 8 and {(d["arm_name"], d["train_fraction"]) for d in ds} == {
        (a, f) for a in ("tfidf", "scratch") for f in (0.1, 1.0)
    }
    main_train = (out / "data" / "main" / "train.jsonl").read_text().splitlines()
    per_class = Counter(json.loads(x)["label"] for x in main_train)
    n_tenth = sum(math.ceil(0.1 * n) for n in per_class.values())  # nested subsets round up per class
    assert {d["num_train_examples"] for d in ds if d["train_fraction"] == 0.1} == {n_tenth}
    assert {d["num_train_examples"] for d in ds if d["train_fraction"] == 1.0} == {300}
    summary = {(s["arm_name"], s["train_fraction"]): s for s in reg["sweeps"]["data_size_summary"]}
    assert summary[("scratch", 0.1)]["n"] == 2 and summary[("scratch", 0.1)]["test_macro_f1_std"] is not None
    conf = yaml.safe_load((out / "runs" / "scratch-f0.1-s1" / "config.yaml").read_text())
    assert (
        conf["seed"] == 1 and conf["extra"]["train_fraction"] == 0.1 and conf["extra"]["sweep"] == "data_size"
    )
    assert conf["extra"]["preset"] == "tiny" and conf["extra"]["arm_name"] == "scratch"
    base_conf = yaml.safe_load((out / "runs" / "tfidf-f0.1-s0" / "config.yaml").read_text())
    assert base_conf["extra"]["train_fraction"] == 0.1
    for seed in (0, 1):
        sub = (out / "data" / f"train-0.1-s{seed}" / "train.jsonl").read_text().splitlines()
        assert len(sub) == n_tenth and set(sub) <= set(main_train)
        assert (out / "data" / f"train-0.1-s{seed}" / "test.jsonl").read_bytes() == (
            out / "data" / "main" / "test.jsonl"
        ).read_bytes()
    meta = json.loads((out / "data" / "main" / "metadata.json").read_text())
    assert meta["splits"]["val"]["count"] == 60 and meta["splits"]["test"]["count"] == 80
    assert meta["eval_caps"]["test_before_cap"] > 80
    assert reg["stages"]["compare"]["state"] == "completed"
    assert json.loads((out / "report" / "comparison.json").read_text())["recommendation"]["constraints"] == {
        "max_params": 1e12
    }
    assert "data-size sweep (test macro-F1)" in res.stdout and "failed broken-f1-s0" in res.stdout

    # 3. --force --only reruns exactly the named run; failed runs are not retried with --no-retry_failed
    res = subprocess.run(
        cmd + ["--force", "--only", "tfidf-f0.1-s0", "--no-retry_failed", "--no-compare"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    reg2 = json.loads((out / "study.json").read_text())
    assert res.returncode == 1, res.stdout[-2000:] + res.stderr[-2000:]  # the broken runs are still failed
    assert reg2["runs"]["tfidf-f0.1-s0"]["finished_at"] >= runs["tfidf-f0.1-s0"]["finished_at"]
    assert len(reg2["runs"]["tfidf-f0.1-s0"]["attempts"]) == 1
    for rid in ok:
        if rid != "tfidf-f0.1-s0":
            assert reg2["runs"][rid]["attempts"] == runs[rid]["attempts"], rid
    assert reg2["runs"]["broken-f1-s0"]["attempts"] == runs["broken-f1-s0"]["attempts"]
