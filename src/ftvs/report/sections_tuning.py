"""The report's "Hyperparameter tuning" section: what each arm's search got and found (comparison.json
`tuning`, from `ftvs.comparison.tuning`), and whether the verdict holds at equal budget."""

from __future__ import annotations

from ftvs import fmt
from ftvs.fmt import f4, signed
from ftvs.report.context import Ctx

TOP_PARAMS = 3  # importance: the parameters shown per arm


def _budget(a: dict) -> str:
    parts = [
        f"{a['n_trials']} trials" if a["n_trials"] else "",
        fmt.clock(a["timeout_seconds"]) if a["timeout_seconds"] else "",
    ]
    return " or ".join(p for p in parts if p)


def _value(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def _params(params: dict) -> str:
    return ", ".join(f"{k}={_value(v)}" for k, v in params.items()) or "–"


def _verdict(t: dict) -> str:
    lead = t["leaders"]
    budget = "at equal budget" if t["equal_budget"] else "although the budgets differed (see the table)"
    if not lead["tuned"]:
        return "No search completed a trial, so tuning says nothing about the verdict."
    if lead["defaults"] == lead["tuned"]:
        return (
            f"**{lead['tuned']}** leads on validation macro-F1 both with its defaults and after tuning, "
            f"{budget}: the verdict does not hinge on who picked the hyperparameters."
        )
    return (
        f"With defaults **{lead['defaults']}** leads on validation macro-F1, after tuning "
        f"**{lead['tuned']}** "
        f"({budget}): tuning changes the verdict, so a comparison at default settings would mislead."
    )


def tuning_blocks(x: Ctx) -> list[dict]:
    t = x.c.get("tuning")
    if not t:
        return []
    arms = t["arms"]
    blocks = [
        {"t": "h2", "text": "Hyperparameter tuning"},
        {
            "t": "p",
            "text": "Before its final runs, each tuned arm was searched with Optuna (TPE sampler, the first "
            "trial at the arm's defaults, median pruning on the per-epoch validation macro-F1), each trial a "
            "real run scored on the **validation split only**; the final runs train the best configuration "
            "once "
            "per seed, and only they read the test split. " + _verdict(t),
        },
        {
            "t": "table",
            "header": [
                "arm",
                "budget",
                "trials",
                "search time",
                "val F1 defaults",
                "val F1 tuned",
                "gain",
                "best hyperparameters",
            ],
            "rows": [
                [
                    a["arm_name"],
                    _budget(a),
                    str(a["trials_finished"] or 0),
                    fmt.clock(a["seconds_used"] or 0),
                    f4(a["defaults_value"]) if a["defaults_value"] is not None else "–",
                    f4(a["best_value"]) if a["best_value"] is not None else "–",
                    signed(a["gain"]) if a["gain"] is not None else "–",
                    _params(a["best_params"]),
                ]
                for a in arms
            ],
            "caption": "Each arm's search: its budget (trials and/or seconds), what it used, the validation "
            "macro-F1 of the defaults trial and of the best trial, and the best trial's hyperparameters",
        },
    ]
    blocks += x.figure(
        "tuning_history",
        90,
        "Best validation macro-F1 so far against finished trials (left) "
        "and against seconds spent in trials (right), one line per arm",
    )
    rows = [
        [
            a["arm_name"],
            ", ".join(
                f"{k} {v:.2f}" for k, v in sorted(a["importance"].items(), key=lambda kv: -kv[1])[:TOP_PARAMS]
            ),
        ]
        if a["importance"]
        else [a["arm_name"], f"– ({a['importance_skipped'] or 'not computed'})"]
        for a in arms
    ]
    blocks.append(
        {
            "t": "table",
            "header": ["arm", f"top {TOP_PARAMS} parameters (fANOVA importance)"],
            "rows": rows,
            "align": "ll",
            "caption": "Which hyperparameters mattered: Optuna's fANOVA importance over each arm's "
            "completed trials (sums to 1 per arm)",
        }
    )
    return blocks
