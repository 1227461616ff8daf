"""The deployment decision on tiny real runs (compare_runs.py): serving latency in every run's
metrics.json, the recommendation under each constraint, nothing qualifying, a significance tie that lets
the cheaper configuration win, the Pareto fronts, the learning-curve fit, the CLI and the report box."""

import itertools
import json
import shutil

import numpy as np
import pytest
from compare_runs import build_tiny_study, metrics_of
from tiny_runs import assert_one_line_error

from ftvs.cli import main
from ftvs.comparison.decide import CONSTRAINTS, check_constraints, pareto, recommend, value_of
from ftvs.comparison.learning_curve import (
    examples_to_reach,
    fit_power_law,
    fit_series,
    learning_curves,
    power_law,
)
from ftvs.errors import FtvsError
from ftvs.study import load_study_config, normalize_config


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_llama_dir):
    return build_tiny_study(tmp_path_factory, tiny_llama_dir)


def _decide(c: dict, **constraints) -> dict:
    return recommend(c["groups"], c["runs"], c["significance"], constraints)


def _full(c: dict) -> list[dict]:
    return [g for g in c["groups"] if g["train_fraction"] == 1.0]


def test_every_run_has_its_latency_measured_the_same_way(study):
    for name in ("scratch_tiny", "ft_lora", "baseline_s0"):
        lat = metrics_of(study, name)["latency"]
        assert 0 < lat["batch1_p50_ms"] <= lat["batch1_p95_ms"]
        assert lat["batch1_texts"] == 64 and lat["throughput_batch_size"] == 64
        assert lat["throughput_seconds_per_1000"] > 0 and lat["device"].startswith("cpu")
        assert lat["scope"].startswith("raw text to label")
        # batch 1 ran on the thread count that timed faster, and the process's count is back afterwards
        assert lat["batch1_torch_threads"] in {1, lat["torch_threads"]}
    assert metrics_of(study, "baseline_s0")["latency"]["precision"].startswith("fp32")
    row = next(r for r in study["c"]["runs"] if r["run"] == "ft_lora")
    assert row["latency_p50_ms"] == metrics_of(study, "ft_lora")["latency"]["batch1_p50_ms"]


def test_evaluate_remeasures_an_old_baseline_run_and_missing_latency_is_not_measured(study, tmp_path):
    old = tmp_path / "old_baseline"
    shutil.copytree(study["runs"] / "baseline_s0", old)
    metrics = json.loads((old / "metrics.json").read_text())
    metrics.pop("latency")  # as written before latency was measured
    (old / "metrics.json").write_text(json.dumps(metrics))
    out = tmp_path / "cmp"
    assert (
        main(["compare", str(old), str(study["runs"] / "scratch_tiny"), "--out", str(out), "--no-report"])
        == 0
    )
    c = json.loads((out / "comparison.json").read_text())
    cand = {x["label"]: x for x in c["recommendation"]["candidates"]}
    assert cand["TF-IDF + LogReg"]["latency_p50_ms"] is None
    rec = _decide(c, max_latency_ms=1e6)  # unmeasured cannot be shown to meet a latency limit
    assert not cand["TF-IDF + LogReg"]["meets"] or rec["pick"]["label"] != "TF-IDF + LogReg"
    assert main(["evaluate", str(old)]) == 0
    again = json.loads((old / "metrics.json").read_text())
    assert again["latency"]["batch1_p50_ms"] > 0 and again["test"] == metrics["test"]


def test_without_constraints_the_most_accurate_or_a_tied_cheaper_one(study):
    rec = study["c"]["recommendation"]
    best = max(_full(study["c"]), key=lambda g: g["macro_f1_mean"])
    assert rec["most_accurate"] == best["label"] and rec["constraints"] == {}
    if rec["tie"]:
        assert rec["decided_by"] == "significance tie" and rec["tie"]["cost_ratio"] < 1
    else:
        assert rec["pick"]["label"] == best["label"] and rec["decided_by"] == "best"
        assert rec["gives_up"] is None


def _as_candidates(groups: list[dict]) -> list[dict]:
    """Every configuration of the tiny study as a deployment choice (the half-data TF-IDF fit is a real
    run with a smaller vocabulary: a cheaper, less accurate option)."""
    return [{**g, "train_fraction": 1.0} for g in groups]


def _pairs(groups: list[dict], name: str):
    """Every ordered pair of configurations; for a wall-clock constraint also the pair with the two measured
    timings exchanged, since which tiny run times faster can flip on a busy machine (the rule is under test
    here, the measurement in test_every_run_has_its_latency_measured_the_same_way)."""
    field = CONSTRAINTS[name][0] + "_mean"
    for a, b in itertools.permutations(groups, 2):
        yield a, b
        if name in ("max_latency_ms", "max_throughput_s_per_1k"):
            yield {**a, field: b.get(field)}, {**b, field: a.get(field)}


@pytest.mark.parametrize("name", list(CONSTRAINTS))
def test_each_constraint_can_be_the_binding_one(study, name):
    """For a pair of real configurations where the rule picks A without constraints, a limit between A's
    and B's value rules out A: B is picked, and the constraint is named as the one that decided it."""
    c = study["c"]
    kind = CONSTRAINTS[name][1]
    found = []
    for a, b in _pairs(_as_candidates(c["groups"]), name):
        free = recommend([a, b], c["runs"], c["significance"])["pick"]["label"]
        va, vb = value_of(a, name), value_of(b, name)
        if (
            free == a["label"]
            and va is not None
            and vb is not None
            and (va > vb if kind == "max" else va < vb)
        ):
            found.append((a, b, (va + vb) / 2))
    assert found, f"no pair of the tiny study's configurations where {name} can decide"
    for a, b, limit in found:
        rec = recommend([a, b], c["runs"], c["significance"], {name: limit})
        assert rec["pick"]["label"] == b["label"] and rec["unconstrained"] == a["label"]
        assert rec["binding"] == [name] and rec["decided_by"] == "constraints"
        failed = next(x for x in rec["candidates"] if x["label"] == a["label"])
        assert [f["constraint"] for f in failed["fails"]] == [name] and not failed["meets"]
        if rec["most_accurate"] == a["label"]:
            assert rec["gives_up"]["than"] == a["label"] and rec["gives_up"]["macro_f1_diff"] < 0


def test_max_latency_picks_the_fastest_and_says_what_it_gives_up(study):
    c = study["c"]
    fastest = min(_full(c), key=lambda g: g["latency_p50_ms_mean"])
    rec = _decide(c, max_latency_ms=fastest["latency_p50_ms_mean"] * 1.0001)
    assert rec["pick"]["label"] == fastest["label"]
    assert rec["pick"]["latency_p50_ms"] <= fastest["latency_p50_ms_mean"] * 1.0001
    if rec["pick"]["label"] != rec["most_accurate"]:
        assert rec["gives_up"]["macro_f1_diff"] <= 0 and rec["gives_up"]["latency_p50_ms_ratio"] < 1


def test_nothing_qualifies_names_the_closest_and_its_failing_constraint(study):
    c = study["c"]
    fastest = min(_full(c), key=lambda g: g["latency_p50_ms_mean"])
    rec = _decide(c, max_latency_ms=fastest["latency_p50_ms_mean"] / 2, max_params=1e12)
    assert rec["pick"] is None and rec["decided_by"] == "nothing qualifies"
    assert rec["closest"]["label"] == fastest["label"]  # misses the one limit by the smallest margin
    (fail,) = rec["closest"]["fails"]
    assert fail["constraint"] == "max_latency_ms" and fail["value"] > fail["limit"]


def test_a_significance_tie_lets_the_cheaper_configuration_win(study):
    """Two real configurations that the Holm-adjusted McNemar test does not separate: the more accurate
    one is picked only when it is not also the more expensive one at batch 1."""
    c = study["c"]
    groups = _full(c)
    tied = [
        (ga, gb)
        for p in c["significance"]["pairs"]
        if not p["significant_holm"]
        for ga in groups
        for gb in groups
        if ga is not gb and p["a"] in ga["runs"] and p["b"] in gb["runs"]
    ]
    assert tied, "the tiny study has no pair that its paired test leaves undecided"
    best, other = sorted(tied[0], key=lambda g: -g["macro_f1_mean"])
    for cheap in (other, best):  # the real groups, with the batch-1 cost each case needs
        pair = [{**g, "latency_p50_ms_mean": 1.0 if g is cheap else 5.0} for g in (best, other)]
        rec = recommend(pair, c["runs"], c["significance"])
        assert rec["pick"]["label"] == cheap["label"] and rec["binding"] == []
        if cheap is other:
            assert rec["decided_by"] == "significance tie" and rec["tie"]["with"] == best["label"]
            assert rec["tie"]["cost_ratio"] == pytest.approx(0.2) and rec["tie"]["p_holm"] >= 0.05
            assert rec["gives_up"]["macro_f1_diff"] < 0 and rec["gives_up"][
                "latency_p50_ms_ratio"
            ] == pytest.approx(0.2)
        else:
            assert rec["decided_by"] == "best" and rec["tie"] is None and rec["gives_up"] is None
    free = recommend([best, other], c["runs"], c["significance"])  # their measured latencies
    cheaper = min((best, other), key=lambda g: g["latency_p50_ms_mean"])
    assert free["pick"]["label"] == cheaper["label"]


def test_pareto_marks_dominated_configurations(study):
    par = study["c"]["pareto"]
    for axis in ("inference", "training"):
        pts = par[axis]["points"]
        assert par[axis]["front"] and len(pts) == len(_full(study["c"]))
        for p in pts:
            beaten = [
                q for q in pts if q["macro_f1"] >= p["macro_f1"] and q["cost"] <= p["cost"] and q is not p
                and (q["macro_f1"] > p["macro_f1"] or q["cost"] < p["cost"])
            ]  # fmt: skip
            assert (p["dominated_by"] is None) == (not beaten)
            assert (p["label"] in par[axis]["front"]) == (p["dominated_by"] is None)
    assert par["inference"]["cost"] == "latency_p50_ms"
    for p in par["training"]["points"]:  # and on every run of the table
        for name in p["runs"]:
            row = next(r for r in study["c"]["runs"] if r["run"] == name)
            assert row["dominated"]["training"] == p["dominated_by"]

    def config(label, f1, train_s, p50):
        return {"label": label, "arm": "x", "runs": [], "train_fraction": 1.0, "macro_f1_mean": f1,
                "train_seconds_total_mean": train_s, "latency_p50_ms_mean": p50}  # fmt: skip

    groups = [config("a", 0.8, 9, 2.0), config("b", 0.7, 1, 3.0)]
    out = pareto(groups)
    assert out["inference"]["front"] == ["a"] and out["training"]["front"] == ["b", "a"]
    assert [p["dominated_by"] for p in out["inference"]["points"]] == [None, "a"]


@pytest.mark.parametrize("a,b,c", [(0.9, 3.0, 0.5), (0.7, 1.2, 0.3), (0.95, 20.0, 0.8)])
def test_power_law_fit_recovers_synthetic_parameters_within_10_percent(a, b, c):
    rng = np.random.default_rng(0)
    sizes = [100, 200, 400, 800, 1600, 3200]
    points = [(n, float(power_law(n, a, b, c)) + rng.normal(0, 0.002)) for n in sizes for _ in range(3)]
    fit = fit_series("synthetic", "scratch", points)
    for k, true in (("a", a), ("b", b), ("c", c)):
        assert abs(fit[k] - true) <= 0.1 * true, (k, fit[k], true)
        lo, hi = fit["intervals"][k]
        assert lo <= fit[k] <= hi
    assert fit["band"][0][0] <= fit["curve"][0] <= fit["band"][1][0]
    assert fit_power_law([100, 200], [0.5, 0.6]) is None  # two sizes cannot fix three parameters
    n = examples_to_reach(fit, 0.95 * a)
    assert power_law(n, fit["a"], fit["b"], fit["c"]) == pytest.approx(0.95 * a)
    assert examples_to_reach(fit, a + 0.01) == float("inf")


def test_cli_flags_reach_the_comparison_and_print_the_recommendation(study, tmp_path, capsys):
    c = study["c"]
    fastest = min(_full(c), key=lambda g: g["latency_p50_ms_mean"])
    limit = fastest["latency_p50_ms_mean"] * 1.0001
    out = tmp_path / "cmp"
    assert main(["compare", str(study["runs"]), "--out", str(out), "--formats", "md",
                 "--max_latency_ms", str(limit)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    rec = json.loads((out / "comparison.json").read_text())["recommendation"]
    assert rec["constraints"] == {"max_latency_ms": limit} and rec["pick"]["label"] == fastest["label"]
    assert f"Deploy: {fastest['label']}" in printed
    md = (out / "report.md").read_text()
    assert md.index("> **Recommendation**") < md.index("## 1.")
    assert "## Deployment decision" in md and "pareto_front.png" in md
    bad = ["compare", str(study["runs"]), "--out", str(tmp_path / "x"), "--max_latency_ms", "-1"]
    assert_one_line_error(capsys, bad, "--max_latency_ms must be a positive number")
    assert_one_line_error(
        capsys, ["report", "--out", str(out), "--max_params", "10"], "applied when comparing"
    )


def test_report_box_at_the_top_of_every_format(study):
    assert "> **Recommendation**" in study["md"].split("## 1.")[0]
    assert '<div class="box"><p class="box-title">Recommendation</p>' in study["html"]
    assert "Data outlook" in study["md"]


def test_study_decide_block_and_flags(capsys):
    cfg, _ = load_study_config(preset="quick")
    assert normalize_config({**cfg, "decide": {"max_latency_ms": 5}})["decide"] == {"max_latency_ms": 5.0}
    assert normalize_config(cfg)["decide"] == {}
    with pytest.raises(FtvsError, match="study config: decide.max_disk_mb must be a positive number"):
        normalize_config({**cfg, "decide": {"max_disk_mb": 0}})
    argv = ["study", "--preset", "quick", "--dry-run", "--min_macro_f1", "2"]
    assert_one_line_error(capsys, argv, "--min_macro_f1 must be a number in (0, 1]")


def test_bad_constraints_are_refused():
    with pytest.raises(FtvsError, match="min_macro_f1 must be a number in"):
        check_constraints({"min_macro_f1": 1.5})
    with pytest.raises(FtvsError, match="unknown constraint decide.max_latency; choose from"):
        check_constraints({"max_latency": 3}, "decide.")
    with pytest.raises(FtvsError, match="must be a mapping"):
        check_constraints([3], "decide.")


def _sweep_comparison(curve, target: float) -> dict:
    """A comparison holding one from-scratch data-size sweep (two seeds at four sizes) and a fine-tuned
    full-data score, as `ftvs compare` lays them out."""
    sizes, rows, points = [400, 800, 1600, 3200], [], []
    for n in sizes:
        ys = [curve(n) - 0.002, curve(n) + 0.002]
        run = {"arm": "scratch", "method": "scratch", "model_name": "scratch-tiny", "num_train_examples": n}
        rows += [{**run, "macro_f1": y} for y in ys]
        points.append({"num_train_examples": n, "macro_f1_mean": sum(ys) / 2})
    sweep = {"arm": "scratch", "method": "scratch", "model_name": "scratch-tiny", "label": "scratch-tiny"}
    return {
        "runs": rows,
        "sweeps": {"data_size": [{**sweep, "points": points}]},
        "focus": {"by_arm": {"finetune": {"group": "lora", "macro_f1_mean": target}}},
    }


def test_learning_curve_reach_is_an_extrapolation_beyond_or_not_estimated():
    law = lambda n: float(power_law(n, 0.9, 3.0, 0.5))  # noqa: E731
    lc = learning_curves(_sweep_comparison(law, 0.85))
    (reach,) = lc["reach"]  # 3 / (0.9 - 0.85) = 60 -> n = 60^2 = 3,600, past the 3,200 measured
    assert reach["status"] == "extrapolated" and reach["extrapolation"]
    assert reach["examples"] == pytest.approx(3600, rel=0.1) and reach["ci"][0] <= reach["examples"]
    assert (
        learning_curves(_sweep_comparison(law, 0.95))["reach"][0]["status"] == "beyond"
    )  # above the ceiling
    assert learning_curves(_sweep_comparison(law, 0.5))["reach"][0]["status"] == "measured"
    s_shaped = lambda n: 0.01 if n < 1600 else 0.8  # noqa: E731  (chance, then take-off)
    lc = learning_curves(_sweep_comparison(s_shaped, 0.85))
    assert lc["fits"][0]["poor_fit"] and lc["reach"][0]["status"] == "poor fit"
