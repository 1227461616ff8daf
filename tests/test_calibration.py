"""Calibration: ECE and Brier against hand-computed cases, temperature scaling, and their place in every
run's metrics.json, reliability diagram and the report."""

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import brier_score_loss
from tiny_runs import baseline_run, scratch_run, sms_data

from ftvs.calibration import (
    brier_score,
    confidence_table,
    expected_calibration_error,
    fit_temperature,
    softmax,
)
from ftvs.cli import main

# confidences 0.9, 0.75, 0.7, 0.55 (argmax 0, 0, 1, 0) for labels 0, 1, 1, 0: right, wrong, right, right
PROBS = np.array([[0.9, 0.1], [0.75, 0.25], [0.3, 0.7], [0.55, 0.45]])
Y = np.array([0, 1, 1, 0])


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_ece_matches_a_hand_computed_example():
    # 5 bins of width 0.2: (0.8,1] holds 0.9 (right): |1 - 0.9| = 0.1; (0.6,0.8] holds 0.75 (wrong) and 0.7
    # (right): |0.5 - 0.725| = 0.225 for 2 examples; (0.4,0.6] holds 0.55 (right): |1 - 0.55| = 0.45
    assert expected_calibration_error(PROBS, Y, n_bins=5) == pytest.approx((0.1 + 2 * 0.225 + 0.45) / 4)
    # one bin: |accuracy 0.75 - mean confidence 0.725|
    assert expected_calibration_error(PROBS, Y, n_bins=1) == pytest.approx(0.025)


def test_brier_matches_a_hand_computed_example_and_sklearn():
    # per example sum_k (p_k - [y=k])^2: 0.01+0.01, 0.5625+0.5625, 0.09+0.09, 0.2025+0.2025
    assert brier_score(PROBS, Y) == pytest.approx((0.02 + 1.125 + 0.18 + 0.405) / 4)
    # two classes: the multi-class score is twice sklearn's (which scores the positive class only)
    assert brier_score(PROBS, Y) == pytest.approx(2 * brier_score_loss(Y, PROBS[:, 1]))


def test_perfect_and_worst_predictions():
    onehot = np.eye(3)[[0, 2, 1, 1]]
    assert (
        expected_calibration_error(onehot, [0, 2, 1, 1]) == 0.0 and brier_score(onehot, [0, 2, 1, 1]) == 0.0
    )
    assert (
        expected_calibration_error(onehot, [1, 0, 2, 0]) == 1.0 and brier_score(onehot, [1, 0, 2, 0]) == 2.0
    )


def test_confidence_table_bins_are_right_closed():
    t = confidence_table([0.2, 0.4, 0.41, 1.0, 0.0], [1, 0, 1, 1, 0], n_bins=5)
    assert t["count"].tolist() == [2, 1, 1, 0, 1]  # 0 joins the first bin; 0.4 closes the second
    assert t["accuracy"][0] == 0.5 and np.isnan(t["accuracy"][3])


def test_temperature_scaling_recovers_an_over_confident_scale():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(size=(4000, 5)) * 1.5
    y = np.array([rng.choice(5, p=p) for p in softmax(true_logits)])
    t = fit_temperature(3.0 * true_logits, y)  # a model three times too sure of itself
    assert t == pytest.approx(3.0, rel=0.1)
    assert expected_calibration_error(softmax(3.0 * true_logits / t), y) < expected_calibration_error(
        softmax(3.0 * true_logits), y
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("calibration")
    data = sms_data(root)
    scratch = scratch_run(data, root / "scratch")
    return {"data": data, "scratch": scratch, "baseline": baseline_run(data, root / "baseline"), "root": root}


def test_every_run_has_ece_brier_and_a_reliability_diagram(runs):
    for name in ("scratch", "baseline"):
        run = runs[name]
        m = json.loads((run / "metrics.json").read_text())
        p = json.loads((run / "predictions.json").read_text())
        assert 0.0 <= m["test"]["ece"] <= 1.0 and 0.0 <= m["test"]["brier"] <= 2.0, name
        assert "calibration" not in m  # temperature scaling is opt-in
        # the ECE again, from what predictions.json keeps (max probability, rounded to 6 digits)
        t = confidence_table(p["confidence"], np.asarray(p["y_true"]) == np.asarray(p["y_pred"]))
        gap = np.nan_to_num(np.abs(t["accuracy"] - t["confidence"]))
        assert (t["count"] * gap).sum() / t["count"].sum() == pytest.approx(m["test"]["ece"], abs=1e-4)
        assert (run / "reliability_diagram.png").stat().st_size > 5000


def val_nll(run, data):
    """NLL of softmax(logits / T) on the validation split, as a function of T, from the run's own model."""
    import torch
    import torch.nn.functional as F

    from ftvs.arms import load_arm
    from ftvs.data import load_split
    from ftvs.inference import make_eval_loader, predict_loader

    arm = load_arm(run / "model")
    texts, labels = load_split(data, "val")
    out = predict_loader(arm.model.eval(), make_eval_loader(arm, arm.encode(texts), labels, 64), len(texts))
    logits, y = torch.tensor(out["logits"], dtype=torch.float64), torch.tensor(labels)
    return lambda t: F.cross_entropy(logits / t, y).item()


def test_evaluate_calibrate_fits_a_temperature_on_val(runs, capsys):
    run = runs["scratch"]
    before = json.loads((run / "metrics.json").read_text())
    assert main(["evaluate", str(run), "--calibrate"]) == 0
    m = json.loads((run / "metrics.json").read_text())
    cal = m["calibration"]
    assert cal["temperature"] > 0 and cal["fitted_on"] == "val" and cal["num_fit_examples"] > 50
    assert 0.0 <= cal["ece_after"] <= 1.0 and 0.0 <= cal["brier_after"] <= 2.0
    assert m["test"]["ece"] == pytest.approx(before["test"]["ece"])  # the model's own scores are unchanged
    assert m["test"]["accuracy"] == before["test"]["accuracy"]
    # the temperature is the one that minimises the validation NLL: lower than the model's own (T = 1)
    # and than a temperature a quarter off either way
    nll = val_nll(run, runs["data"])
    t = cal["temperature"]
    assert nll(t) < nll(1.0) and nll(t) < min(nll(t * 1.25), nll(t / 1.25)), (t, nll(t), nll(1.0))
    with capsys.disabled():
        print(
            f"\n[calibration] scratch: T={cal['temperature']:.3f}, ECE {m['test']['ece']:.4f} -> "
            f"{cal['ece_after']:.4f}, Brier {m['test']['brier']:.4f} -> {cal['brier_after']:.4f}"
        )


def test_report_shows_the_calibration_paragraph_and_figure(runs):
    out = runs["root"] / "report"
    assert (
        main(
            [
                "report",
                str(runs["scratch"]),
                str(runs["baseline"]),
                "--out",
                str(out),
                "--formats",
                "md",
                "--bootstrap",
                "50",
            ]
        )
        == 0
    )
    comparison = json.loads((out / "comparison.json").read_text())
    assert comparison["figures"]["reliability"] == "reliability_diagrams.png"
    assert (out / "reliability_diagrams.png").stat().st_size > 5000
    md = (out / "report.md").read_text()
    section = md[md.index("### Calibration") :]
    for run in ("scratch", "baseline"):
        ece = json.loads((runs[run] / "metrics.json").read_text())["test"]["ece"]
        assert f"| {run} | {ece:.4f} |" in section
    assert "](reliability_diagrams.png)" in section
