"""The plan (ftvs/study/plan.py): which runs a study makes, in which order."""

from study_example import raw_config

from ftvs.study.config import normalize_config
from ftvs.study.plan import plan_runs


def test_plan_orders_main_runs_first_and_dedupes_sweep_points():
    cfg = normalize_config(raw_config())
    plan = plan_runs(cfg)
    ids = [r.id for r in plan]
    # main results first (baseline, scratch, finetune; every seed), then model sizes, then data sizes
    assert ids[:6] == [
        "tfidf-f1-s0",
        "tfidf-f1-s1",
        "scratch-f1-s0",
        "scratch-f1-s1",
        "lora-f1-s0",
        "lora-f1-s1",
    ]
    # size "tiny" is the scratch arm's own size: no duplicate run
    assert "scratch.tiny-f1-s0" not in ids and "scratch.small-f1-s1" in ids and "scratch.wide-f1-s0" in ids
    assert [i for i in ids if "-f0.1-" in i] == [
        "tfidf-f0.1-s0",
        "tfidf-f0.1-s1",
        "scratch-f0.1-s0",
        "scratch-f0.1-s1",
    ]
    assert ids.index("scratch-f0.5-s1") < ids.index("tfidf-f0.1-s0")  # larger fractions first
    assert not any(i.startswith("lora-f0.") for i in ids)
    assert cfg["sweeps"]["data_size"]["fractions"] == [0.1, 0.5, 1.0]  # 1.0 always closes the curve
    wide = next(r for r in plan if r.id == "scratch.wide-f1-s0")
    assert wide.sweep == "model_size" and wide.settings["n_embd"] == 256 and wide.settings["preset"] == "tiny"
    sub = next(r for r in plan if r.id == "scratch-f0.1-s1")
    assert sub.sweep == "data_size" and sub.subset_seed == 1 and sub.data_key == "0.1-s1"
    assert len(ids) == 6 + 2 * 2 + 2 * 2 * 2
