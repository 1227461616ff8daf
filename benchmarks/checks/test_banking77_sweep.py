"""The learning-curve fit on a real data-size sweep: Banking77 (../shared/data/banking77) at four training
fractions, TF-IDF and the from-scratch `tiny` model, two seeds each, run by `ftvs study` and compared with
a latency constraint. ~15 minutes on one idle CPU core (longer on a loaded one); skipped where the CSVs
are missing (or FTVS_NO_SHARED=1). FTVS_SWEEP_OUT=DIR keeps the study folder (default: a temporary one)."""

import json
import os
from pathlib import Path

import yaml
from test_banking77 import BANKING77, needs_banking77

from ftvs.cli import main

FRACTIONS = [0.05, 0.1, 0.25]  # + 1.0: four sizes, ~450 to ~9,000 training texts
STUDY = {
    "name": "b77-sweep",
    "description": "Banking77 data-size sweep for the learning-curve fit (TF-IDF, scratch tiny)",
    "data": {"source": str(BANKING77), "validation_split": 0.1, "seed": 0},
    "seeds": [0, 1],
    "train": {"max_seq_length": 48, "per_device_train_batch_size": 32, "per_device_eval_batch_size": 256},
    "arms": [
        {"name": "tfidf", "arm": "baseline", "C": 10},
        {
            "name": "scratch-tiny",
            "arm": "scratch",
            "preset": "tiny",
            "pooling": "max",
            "token_dropout": 0.1,
            "lowercase": True,
            "label_smoothing": 0.1,
            "learning_rate": 2.0e-3,
            "num_train_epochs": 8,
            "early_stopping_patience": 0,
            "mixed_precision": "no",
        },
    ],
    "sweeps": {"data_size": {"fractions": FRACTIONS, "resample_per_seed": True}},
    "decide": {"max_latency_ms": 5},
}


@needs_banking77
def test_learning_curves_on_a_banking77_sweep(tmp_path):
    out = Path(os.environ.get("FTVS_SWEEP_OUT") or tmp_path / "study")
    cfg = tmp_path / "study.yaml"
    cfg.write_text(yaml.safe_dump(STUDY))
    assert main(["study", str(cfg), "--output_dir", str(out), "--quiet"]) == 0
    c = json.loads((out / "report" / "comparison.json").read_text())
    lc = c["learning_curves"]
    fits = {f["arm"]: f for f in lc["fits"]}
    assert set(fits) == {"baseline", "scratch"}
    for f in fits.values():
        assert len(f["sizes"]) == 4 and f["n_points"] == 8 and f["n_bootstrap"] > 100
        assert 0 < f["a"] <= 1 and f["b"] > 0 and f["c"] > 0
        assert f["band"][0][-1] <= f["curve"][-1] <= f["band"][1][-1]
    assert not fits["baseline"]["poor_fit"]  # TF-IDF follows the power law closely
    (reach,) = lc["reach"]  # scratch against the best other arm (no fine-tuned arm here: TF-IDF)
    assert reach["target_label"] == "TF-IDF + LogReg"
    assert (reach["status"] == "poor fit") == fits["scratch"]["poor_fit"]
    rec = c["recommendation"]
    assert rec["constraints"] == {"max_latency_ms": 5.0}
    assert rec["pick"] is None or rec["pick"]["latency_p50_ms"] <= 5.0
    md = (out / "report" / "report.md").read_text()
    assert "Data outlook" in md and "sweep_data_size.png" in md
    print(json.dumps({"fits": lc["fits"], "reach": lc["reach"], "recommendation": rec}, default=str)[:4000])
