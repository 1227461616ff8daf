"""Study summaries (ftvs/study/summary.py): per-arm means over seeds, the sweeps, the crossover, the terminal
text."""

from study_example import raw_config

from ftvs.study.config import model_dims, normalize_config
from ftvs.study.plan import plan_runs
from ftvs.study.registry import EntryFactory, num_train_examples
from ftvs.study.summary import collect, crossovers, format_summary


def test_crossover_names_where_finetuning_advantage_disappears():
    rows = []
    for frac, n, ft, sc in ((0.1, 100, 0.60, 0.30), (0.5, 500, 0.70, 0.65), (1.0, 1000, 0.72, 0.74)):
        rows.append(
            {
                "arm": "finetune",
                "arm_name": "lora",
                "method": "lora",
                "model": "m",
                "train_fraction": frac,
                "num_train_examples": n,
                "n": 2,
                "test_macro_f1_mean": ft,
                "test_macro_f1_std": 0.01,
            }
        )
        rows.append(
            {
                "arm": "scratch",
                "arm_name": "scratch",
                "method": None,
                "model": "s",
                "train_fraction": frac,
                "num_train_examples": n,
                "n": 2,
                "test_macro_f1_mean": sc,
                "test_macro_f1_std": 0.01,
            }
        )
    (c,) = crossovers(rows)
    assert c["a"] == "lora" and c["b"] == "scratch"
    (crossing,) = c["crossings"]
    assert crossing["between_examples"] == [500, 1000] and crossing["leader_above"] == "scratch"
    assert 500 < crossing["interpolated_examples"] < 1000
    assert [round(p["delta"], 2) for p in c["points"]] == [0.30, 0.05, -0.02]


def test_registry_sweeps_from_finished_runs(tmp_path):
    """`collect` turns finished runs into study.json's sweeps: data-size points (+ mean/std, crossover) and
    model-size points with parameter counts and train-val gaps."""
    cfg = normalize_config(raw_config())
    plan = plan_runs(cfg)
    entries = EntryFactory(tmp_path / "s", cfg, None)
    reg = {
        "runs": {},
        "order": [r.id for r in plan],
        "stages": {},
        "data": {
            "splits": {"train": 1000},
            "subsets": {
                f"{f}-s{s}": {"num_train_examples": int(1000 * f)} for f in (0.1, 0.5) for s in (0, 1)
            },
        },
    }
    for run in plan:
        e = entries.entry(run)
        e["num_train_examples"] = num_train_examples(reg, e)
        dims = model_dims(e["config"]) if run.kind == "scratch" else {}
        params = 1000 * dims.get("n_embd", 1) * dims.get("n_layer", 1)
        f1 = {"baseline": 0.5, "scratch": 0.3 + 0.3 * run.train_fraction, "finetune": 0.7}[
            run.kind
        ] + run.seed / 100
        e.update(
            state="completed",
            results={
                "test_accuracy": f1,
                "test_macro_f1": f1,
                "best_val_macro_f1": f1,
                "params_total": params,
                "train_val_gap_macro_f1": 0.1 * run.seed,
                "train_val_gap_accuracy": 0.0,
            },
        )
        reg["runs"][run.id] = e
    collect(reg, cfg)
    sw = reg["sweeps"]
    assert {(d["arm_name"], d["train_fraction"], d["seed"]) for d in sw["data_size"]} == {
        (a, f, s) for a in ("tfidf", "scratch") for f in (0.1, 0.5, 1.0) for s in (0, 1)
    }
    row = next(
        r for r in sw["data_size_summary"] if r["arm_name"] == "scratch" and r["train_fraction"] == 0.5
    )
    assert (
        row["n"] == 2 and row["num_train_examples"] == 500 and abs(row["test_macro_f1_mean"] - 0.455) < 1e-9
    )
    assert row["test_macro_f1_std"] > 0
    sizes = {r["size"]: r for r in sw["model_size_summary"]}
    assert set(sizes) == {"tiny", "small", "wide"} and sizes["wide"]["n_embd"] == 256
    assert [r["size"] for r in sw["model_size_summary"]] == sorted(
        sizes, key=lambda k: sizes[k]["params_total"]
    )
    assert sizes["tiny"]["n"] == 2 and abs(sizes["tiny"]["train_val_gap_macro_f1_mean"] - 0.05) < 1e-9
    assert sw["crossover"] == []  # the fine-tuned arm is not part of this data-size sweep
    main = {s["arm_name"]: s for s in reg["summary"]}
    assert set(main) == {"tfidf", "scratch", "lora"} and main["lora"]["n"] == 2
    text = format_summary({**reg, "name": "unit", "state": "completed", "study_dir": "x"})
    assert "data-size sweep" in text and "model-size sweep" in text and "mean ± std" in text
