"""The report's calibration paragraph: ECE and Brier per run, the temperature when one was fitted, and
the reliability diagram of the runs (drawn by `ftvs compare` from each run's predictions.json)."""

from __future__ import annotations

from ftvs.calibration import N_BINS, reliability_runs
from ftvs.fmt import f4

WELL_CALIBRATED_ECE = 0.05  # below this test ECE a run's confidences are called "close to its accuracy"


def calibration_blocks(x) -> list[dict]:
    """Blocks for `ftvs.report.builder.build_blocks` (`x` is its `Ctx`); none when no run has an ECE."""
    names = reliability_runs(x.c)
    rows = [x.by_name[n] for n in names if n in x.by_name]
    scored = [r for r in rows if (r.get("calibration") or {}).get("ece") is not None]
    if not scored:
        return []
    cal = {r["run"]: r["calibration"] for r in scored}
    fitted = any(c.get("temperature") is not None for c in cal.values())
    header = ["run", "test ECE", "test Brier"] + (
        ["temperature", "ECE after", "Brier after"] if fitted else []
    )
    table = [
        [r["run"], f4(cal[r["run"]]["ece"]), f4(cal[r["run"]]["brier"])]
        + ([f4(cal[r["run"]].get(k)) for k in ("temperature", "ece_after", "brier_after")] if fitted else [])
        for r in scored
    ]
    best = min(scored, key=lambda r: cal[r["run"]]["ece"])
    worst = max(scored, key=lambda r: cal[r["run"]]["ece"])
    good = [r["run"] for r in scored if cal[r["run"]]["ece"] < WELL_CALIBRATED_ECE]
    text = (
        f"Calibration asks whether a confidence of 0.8 means right 80% of the time. The expected calibration "
        f"error (ECE, {N_BINS} equal-width confidence bins, 0 is perfect) and the multi-class Brier score "
        "(mean squared error of the class probabilities, 0 is perfect, 2 the worst) are measured on the "
        "test "
        f"split. Best calibrated: {best['run']} (ECE {f4(cal[best['run']]['ece'])}); least: {worst['run']} "
        f"(ECE {f4(cal[worst['run']]['ece'])}). "
    )
    text += (
        f"Runs with ECE below {WELL_CALIBRATED_ECE}: {', '.join(good)}."
        if good
        else f"No run reaches an ECE below {WELL_CALIBRATED_ECE}: read their confidences as scores, not "
        "probabilities."
    )
    if fitted:
        text += (
            " Where a temperature is given, it was fitted on the validation split (`ftvs evaluate "
            "--calibrate`; "
            "T > 1 softens over-confident probabilities, T < 1 sharpens under-confident ones) and the scores "
            "after it are on the test split; "
            "predictions do not change."
        )
    blocks = [
        {"t": "h3", "text": "Calibration"},
        {"t": "p", "text": text},
        {
            "t": "table",
            "header": header,
            "rows": table,
            "caption": "Test-split calibration per run (lower is better)",
        },
    ]
    if "reliability" in x.figures:
        blocks.append(
            {
                "t": "fig",
                "file": x.figures["reliability"],
                "width": 60,
                "caption": "Reliability diagram: test accuracy per confidence bin against the diagonal of "
                "perfect calibration; a curve below the diagonal is over-confident.",
            }
        )
    return blocks
