"""The study config (ftvs/study/config.py): presets, validation with fixes in the messages, `--set`
overrides."""

import pytest
from study_example import raw_config

from ftvs.config import build_config, config_differences
from ftvs.errors import FtvsError
from ftvs.study.config import FREE_KEYS, apply_override, load_study_config, normalize_config, preset_names
from ftvs.study.plan import plan_runs


def test_presets_load_validate_and_plan():
    assert {"quick", "banking77", "ag_news"} <= set(preset_names())
    for name in preset_names():
        cfg, preset = load_study_config(preset=name)
        assert preset == name and cfg["name"] == name
        ids = [r.id for r in plan_runs(cfg)]
        assert ids and len(ids) == len(set(ids))
    quick, _ = load_study_config(preset="quick")
    assert quick["data"]["source"] == "20newsgroups" and quick["seeds"] == [0]
    assert [a["arm"] for a in quick["arms"]] == ["baseline", "scratch", "finetune"]
    distill, _ = load_study_config(preset="quick_distill")
    assert [a["arm"] for a in distill["arms"]] == ["baseline", "scratch", "finetune", "distill"]
    student = distill["arms"][-1]
    assert student["teacher"] == "smollm2-lora" and distill["data"]["unlabeled_from_rest"] > 0
    plan = {r.id: r for r in plan_runs(distill)}
    assert plan[f"{student['name']}-f1-s0"].teacher == "smollm2-lora-f1-s0" == list(plan)[-2]
    lora = next(a for a in quick["arms"] if a["arm"] == "finetune")
    assert lora["model_name_or_path"] == "smollm2-135m" and lora["method"] == "lora"
    b77, _ = load_study_config(preset="banking77")
    assert b77["seeds"] == [0, 1, 2]
    assert b77["sweeps"]["data_size"]["fractions"] == [0.01, 0.05, 0.1, 0.25, 0.5, 1.0]
    assert [s["name"] for s in b77["sweeps"]["model_size"]["sizes"]] == ["tiny", "small", "medium", "large"]
    assert {a["method"] for a in b77["arms"] if a["arm"] == "finetune"} == {"lora", "full"}
    ag, _ = load_study_config(preset="ag_news")
    assert sorted(r["test_accuracy"] for r in ag["reference_results"]) == [0.9154, 0.9195]
    with pytest.raises(FtvsError, match="did you mean 'quick'"):
        load_study_config(preset="quik")


def test_config_errors_and_overrides():
    raw = raw_config()
    apply_override(raw, "arms.scratch.num_train_epochs=7")
    apply_override(raw, "train.max_seq_length=48")
    apply_override(raw, "seeds=[3]")
    cfg = normalize_config(raw)
    run = next(r for r in plan_runs(cfg) if r.id == "scratch-f1-s3")
    assert run.settings["num_train_epochs"] == 7 and run.settings["max_seq_length"] == 48
    with pytest.raises(FtvsError, match="no entry named 'scrach'.*did you mean 'scratch'"):
        apply_override(raw_config(), "arms.scrach.preset=small")
    bad = raw_config()
    bad["arms"][1]["lerning_rate"] = 1e-3
    with pytest.raises(FtvsError, match="did you mean 'learning_rate'"):
        normalize_config(bad)
    bad = raw_config()
    bad["arms"].append({"name": "tfidf", "arm": "baseline"})
    with pytest.raises(FtvsError, match="two arms are named 'tfidf'"):
        normalize_config(bad)
    with pytest.raises(FtvsError, match="fractions must be numbers in"):
        normalize_config(raw_config(sweeps={"data_size": {"fractions": [0, 0.5]}}))
    with pytest.raises(FtvsError, match="arms.scratch: invalid preset"):
        normalize_config(raw_config(arms=[{"name": "scratch", "arm": "scratch", "preset": "huge"}]))
    with pytest.raises(FtvsError, match="data.source is missing"):
        normalize_config(raw_config(data={}))


def test_a_run_saved_before_a_training_key_existed_is_not_stale():
    planned = build_config({}, {"arm": "finetune"}).to_dict()
    saved = {k: v for k, v in planned.items() if k not in ("token_dropout", "lowercase")}  # an older ftvs
    assert config_differences(saved, planned, FREE_KEYS) == []
    assert config_differences(saved, {**planned, "lowercase": True}, FREE_KEYS) == ["lowercase"]
    assert config_differences({**saved, "extra": {"a": 1}}, planned, FREE_KEYS) == []
    # baseline settings are not training keys: nothing is filled in for them
    assert config_differences({"C": 10.0, "seed": 0}, {"C": 10.0, "seed": 0}, FREE_KEYS) == []
    assert config_differences({"C": 10.0}, {"C": 20.0}, FREE_KEYS) == ["C"]


def test_distill_arms_name_a_teacher_arm_and_run_after_it():
    raw = raw_config()
    raw["arms"].append({"name": "student", "arm": "distill", "teacher": "lora", "preset": "tiny"})
    raw["sweeps"]["data_size"]["arms"] = ["student"]  # its teacher's runs at those fractions come with it
    cfg = normalize_config(raw)
    plan = plan_runs(cfg)
    ids = [r.id for r in plan]
    for r in plan:
        if r.teacher:
            assert r.kind == "scratch" and ids.index(r.teacher) < ids.index(r.id)
            assert r.teacher == r.id.replace("student", "lora")
    assert {r.train_fraction for r in plan if r.arm_name == "lora"} == {0.1, 0.5, 1.0}
    for arm, match in (
        ({"name": "s", "arm": "distill", "teacher": "nobody"}, "did you mean|must name another arm"),
        ({"name": "s", "arm": "distill"}, "must name another arm"),
        ({"name": "s", "arm": "scratch", "teacher": "lora"}, "kind distill"),
        ({"name": "s", "arm": "distill", "teacher": "lora", "tune": {"n_trials": 2}}, "not tuned"),
    ):
        bad = raw_config()
        bad["arms"].append(arm)
        with pytest.raises(FtvsError, match=match):
            normalize_config(bad)
    chain = raw_config()
    chain["arms"] += [{"name": "s1", "arm": "distill", "teacher": "lora"},
                      {"name": "s2", "arm": "distill", "teacher": "s1"}]  # fmt: skip
    with pytest.raises(FtvsError, match="not a student"):
        normalize_config(chain)
