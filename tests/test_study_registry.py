"""study.json (ftvs/study/registry.py): typed run entries, load/save, and bringing a registry up to date with
a changed plan."""

import json

import pytest
from study_example import raw_config

from ftvs.errors import FtvsError
from ftvs.study.config import normalize_config
from ftvs.study.plan import plan_runs
from ftvs.study.registry import EntryFactory, RunEntry, load_registry, open_registry, save_registry


def _open(tmp_path, raw, existing=None, force=False):
    cfg = normalize_config(raw)
    return open_registry(
        existing,
        EntryFactory(tmp_path, cfg, None),
        plan_runs(cfg),
        force=force,
        selected=lambda rid: True,
        config_source="test",
    )


def test_run_entries_are_typed_and_keep_their_json(tmp_path):
    reg = _open(tmp_path, raw_config())
    e = reg["runs"]["scratch-f0.1-s1"]
    assert list(e)[:4] == ["id", "arm_name", "arm", "method"] and list(e)[-1] == "results"
    typed = RunEntry.from_dict({**e, "num_train_examples": 120, "needs_wipe": True})  # extra keys ignored
    assert typed.to_dict() == e
    assert (typed.arm, typed.sweep, typed.subset_seed, typed.state) == ("scratch", "data_size", 1, "pending")
    assert typed.run_dir == "runs/scratch-f0.1-s1" and typed.data_dir == "data/train-0.1-s1"
    assert typed.config["extra"]["train_fraction"] == 0.1 and typed.config["seed"] == 1
    base = RunEntry.from_dict(reg["runs"]["tfidf-f1-s0"])
    assert base.method == "tfidf_logreg" and base.config_file is None and base.num_train_epochs == 1


def test_load_and_save_round_trip(tmp_path):
    assert load_registry(tmp_path / "study.json") is None
    reg = _open(tmp_path, raw_config())
    save_registry(tmp_path / "study.json", reg)
    again = load_registry(tmp_path / "study.json")
    assert again == json.loads((tmp_path / "study.json").read_text()) and again["order"] == reg["order"]
    assert again["format"] == "ftvs-study" and again["version"] == 1 and again["updated"]
    (tmp_path / "other.json").write_text('{"format": "something-else"}')
    with pytest.raises(FtvsError, match="not an ftvs study registry"):
        load_registry(tmp_path / "other.json")


def test_reopening_keeps_outcomes_and_marks_a_killed_study(tmp_path):
    reg = _open(tmp_path, raw_config())
    done = reg["runs"]["tfidf-f1-s0"]
    done.update(state="completed", results={"test_accuracy": 0.9}, attempts=[{"outcome": "ok"}])
    reg["runs"]["scratch-f1-s0"].update(state="running", attempts=[{"outcome": "running"}])
    reg = _open(tmp_path, raw_config(), existing=json.loads(json.dumps(reg)))
    assert reg["runs"]["tfidf-f1-s0"]["state"] == "completed" and reg["runs"]["tfidf-f1-s0"]["results"]
    killed = reg["runs"]["scratch-f1-s0"]
    assert killed["state"] == "interrupted" and killed["attempts"] == [{"outcome": "killed"}]


def test_changed_settings_refused_for_finished_runs_and_reset_for_pending_ones(tmp_path):
    reg = _open(tmp_path, raw_config())
    reg["runs"]["scratch-f1-s0"]["state"] = "completed"
    changed = raw_config()
    changed["arms"][1]["num_train_epochs"] = 4
    with pytest.raises(
        FtvsError, match="settings of 1 finished or started run.*scratch-f1-s0.*num_train_epochs"
    ):
        _open(tmp_path, changed, existing=json.loads(json.dumps(reg)))
    reg["runs"]["scratch-f1-s0"]["state"] = "failed"
    again = _open(tmp_path, changed, existing=json.loads(json.dumps(reg)))
    assert (
        again["runs"]["scratch-f1-s0"]["needs_wipe"] and again["runs"]["scratch-f1-s0"]["state"] == "pending"
    )
    assert again["runs"]["scratch-f1-s0"]["config"]["num_train_epochs"] == 4


def test_runs_of_a_removed_arm_are_retired(tmp_path):
    reg = _open(tmp_path, raw_config())
    fewer = raw_config()
    fewer["arms"] = fewer["arms"][:2]
    again = _open(tmp_path, fewer, existing=json.loads(json.dumps(reg)))
    assert "lora-f1-s0" in again["retired_runs"] and "lora-f1-s0" not in again["runs"]
    assert again["order"] == [rid for rid in reg["order"] if not rid.startswith("lora")]
