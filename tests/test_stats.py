"""Significance tests (`ftvs.stats`) and the seed/sweep aggregates (`ftvs.aggregate`) on known numbers."""

import math

import numpy as np
import pytest

from ftvs.aggregate import crossovers, mean_std
from ftvs.metrics import classification_metrics
from ftvs.stats import fast_macro_f1, holm, mcnemar_exact, paired_bootstrap


def test_significance_maths():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 7, 400)
    y[:3] = 6  # class 5 might never occur; F1 of an absent, never-predicted class is 0 in both
    a = np.where(rng.random(400) < 0.8, y, rng.integers(0, 7, 400))
    b = np.where(rng.random(400) < 0.6, y, rng.integers(0, 7, 400))
    names = [f"c{i}" for i in range(8)]
    assert fast_macro_f1(y, a, 8) == pytest.approx(classification_metrics(y, a, names)["macro_f1"], abs=1e-12)
    mc = mcnemar_exact([0] * 10, [0] * 10, [1] * 10)
    assert (mc["a_only_correct"], mc["b_only_correct"]) == (10, 0) and mc["p_value"] == pytest.approx(
        2 * 0.5**10
    )
    assert mcnemar_exact([0, 1], [0, 1], [0, 1])["p_value"] == 1.0
    boot = paired_bootstrap(y, a, b, 8, n_resamples=500, seed=1)
    for k in ("accuracy", "macro_f1"):
        assert boot[k]["ci_low"] < boot[k]["diff"] < boot[k]["ci_high"]
    assert boot["accuracy"]["diff"] == pytest.approx((a == y).mean() - (b == y).mean())
    assert paired_bootstrap(y, a, b, 8, n_resamples=500, seed=1) == boot  # seeded
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


def test_mean_std_is_the_sample_std_and_unknown_for_one_seed():
    assert mean_std([0.5, 0.7, 0.9]) == (pytest.approx(0.7), pytest.approx(np.std([0.5, 0.7, 0.9], ddof=1)))
    assert mean_std([0.8]) == (0.8, None)  # one seed measures no variance: None, not 0.0
    assert mean_std([None, float("nan"), 3, math.inf]) == (3.0, None)  # missing numbers are left out
    assert mean_std([]) == (None, None)


def _curve(label, arm, means, sizes=(100, 500, 1000), std=0.01):
    return {
        "label": label,
        "arm": arm,
        "points": [{"num_train_examples": n, "mean": m, "std": std} for n, m in zip(sizes, means)],
    }


def test_crossover_where_the_fine_tuning_advantage_disappears():
    (pair,) = crossovers(
        [_curve("scratch", "scratch", [0.30, 0.65, 0.74]), _curve("lora", "finetune", [0.60, 0.70, 0.72])]
    )
    assert (pair["a"], pair["b"]) == ("lora", "scratch")  # the fine-tuned curve is A
    assert [round(p["delta"], 2) for p in pair["points"]] == [0.30, 0.05, -0.02]
    assert pair["points"][0]["delta_std"] == pytest.approx(math.sqrt(2) * 0.01)
    (c,) = pair["crossings"]
    assert c["between_examples"] == [500, 1000]
    assert (c["leader_below"], c["leader_above"]) == ("lora", "scratch")
    assert 500 < c["interpolated_examples"] < 1000


def test_no_crossover_for_a_curve_ahead_from_the_start_and_levelling_counts():
    ahead = crossovers(
        [_curve("lora", "finetune", [0.5, 0.6, 0.7]), _curve("scratch", "scratch", [0.6, 0.7, 0.8])]
    )
    assert ahead[0]["crossings"] == []  # scratch leads everywhere: nothing to catch up
    level = crossovers(
        [_curve("lora", "finetune", [0.6, 0.7, 0.7]), _curve("scratch", "scratch", [0.5, 0.7, 0.6])]
    )
    (c,) = level[0]["crossings"]  # level at 500 closes the gap; ahead again at 1000 is not a second crossing
    assert c["between_examples"] == [100, 500] and c["interpolated_examples"] == pytest.approx(500)
    twice = crossovers([_curve("a", "scratch", [0.6, 0.4, 0.6]), _curve("b", "baseline", [0.5, 0.5, 0.5])])
    assert [c["between_examples"] for c in twice[0]["crossings"]] == [[100, 500], [500, 1000]]


def test_crossover_uses_only_sizes_measured_for_both_curves():
    a = _curve("a", "scratch", [0.6, 0.4], sizes=(100, 1000))
    b = _curve("b", "baseline", [0.5, 0.1, 0.5], sizes=(100, 500, 1000))
    (pair,) = crossovers([a, b])
    assert [p["num_train_examples"] for p in pair["points"]] == [100, 1000]
    assert pair["crossings"][0]["between_examples"] == [100, 1000]
