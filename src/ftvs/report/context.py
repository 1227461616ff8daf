"""What every report section needs: indexes over the comparison (`Ctx`), the thresholds behind the
qualitative words, and the sentences that describe a paired test."""

from __future__ import annotations

from ftvs import fmt
from ftvs.comparison.focus import focus
from ftvs.comparison.runs import ARM_LABEL
from ftvs.comparison.significance import find_pair
from ftvs.fmt import signed

OVERFIT_GAP = 0.10  # train − val macro-F1 at the last epoch above this: "overfits"
LOSS_RISE = 0.10  # val loss at the last epoch this fraction above its minimum: "val loss rising"
NEAR_BEST = 0.95  # convergence: first epoch at 95% of the best val macro-F1
MANY_RUNS = 10  # above this many runs, tables and per-run text show one typical run per configuration


def ratio(a, b):
    if a is None or b is None or a <= 0 or b <= 0:
        return None
    return a / b


def times_phrase(a, b, more: str, less: str) -> str | None:
    """'3.2× faster' style comparison of a against b (a/b < 1 → `less` word)."""
    r = ratio(a, b)
    if r is None:
        return None
    if r >= 1:
        return f"{fmt.times(r)} {more}"
    return f"{fmt.times(1 / r)} {less}"


def arm_label(arm: str) -> str:
    return ARM_LABEL.get(arm, arm)


class Ctx:
    """Indexes over the comparison used by every section."""

    def __init__(self, c: dict):
        self.c = c
        self.rows = c["runs"]
        self.by_name = {r["run"]: r for r in self.rows}
        self.models = {m["run"]: m for m in c.get("models", [])}
        self.groups = c["groups"]
        self.sig = c.get("significance") or {}
        # a comparison.json written before `focus` existed: the same choice, made now
        foc = c.get("focus") or focus(self.groups, self.rows)
        self.focus_runs = [self.by_name[n] for n in foc.get("runs", []) if n in self.by_name] or list(
            self.rows
        )
        self.best = {
            arm: self.by_name[v["run"]]
            for arm, v in (foc.get("by_arm") or {}).items()
            if v.get("run") in self.by_name
        }
        ranked = [self.best[a] for a in foc.get("arm_order", []) if a in self.best]
        self.winner = ranked[0] if ranked else None
        self.ft, self.sc, self.base = (
            self.best.get("finetune"),
            self.best.get("scratch"),
            self.best.get("baseline"),
        )
        # per-run narrative for small comparisons; one typical run per full-data configuration for studies
        self.many = len(self.rows) > MANY_RUNS
        self.narrative_rows = self.focus_runs if self.many else list(self.rows)
        self.figures = c.get("figures") or {}

    def pair(self, a: dict | None, b: dict | None):
        if not a or not b or a is b:
            return None
        return find_pair(self.sig, a["run"], b["run"])

    def group_of(self, run_name: str) -> dict | None:
        return next((g for g in self.groups if run_name in g["runs"]), None)

    def figure(self, key: str, width: int, caption: str) -> list[dict]:
        """The figure block for comparison figure `key`, or nothing when it was not drawn."""
        if key not in self.figures:
            return []
        return [{"t": "fig", "file": self.figures[key], "width": width, "caption": caption}]

    def representatives(self) -> list[dict]:
        """One row per full-data configuration: its typical seed (see comparison.json `focus.rule`)."""
        return list(self.focus_runs)


def titled_list(title: str, items: list[str]) -> list[dict]:
    """A sub-section of bullet points, or nothing when there is nothing to say."""
    if not items:
        return []
    return [{"t": "h3", "text": title}, {"t": "ul", "items": items}]


def describe_pair(p: dict, metric: str = "macro_f1") -> str:
    d = p[metric]
    return f"{signed(d['diff'])} (95% CI [{signed(d['ci_low'])}, {signed(d['ci_high'])}])"


def significance_words(p: dict) -> str:
    """The McNemar result; McNemar tests the accuracy difference (who is right more often)."""
    mc = p["mcnemar"]
    verdict = "significant" if p["significant"] else "not significant"
    p_text = fmt.p_value(mc["p_value"])
    p_text = f"p {p_text}" if p_text.startswith("<") else f"p = {p_text}"
    return (
        f"McNemar exact {p_text} ({mc['a_only_correct']} vs {mc['b_only_correct']} "
        f"discordant examples), {verdict} at α = 0.05"
    )


def verdict(p: dict, a_label: str, b_label: str) -> str:
    """Who is ahead, from McNemar (accuracy) and the bootstrap interval (macro-F1), read together."""
    acc_sig, f1_sig = p["significant"], p["macro_f1"]["excludes_zero"]
    acc_lead = a_label if p["accuracy"]["diff"] > 0 else b_label
    f1_lead = a_label if p["macro_f1"]["diff"] > 0 else b_label
    if acc_sig and f1_sig:
        if acc_lead == f1_lead:
            return f"The {acc_lead} model is ahead on both accuracy and macro-F1."
        return f"The {f1_lead} model is ahead on macro-F1 but the {acc_lead} model on accuracy."
    if f1_sig:
        return f"The {f1_lead} model is ahead on macro-F1; the accuracy difference is not significant."
    if acc_sig:
        return f"The {acc_lead} model is ahead on accuracy; the macro-F1 interval includes zero."
    return "Neither accuracy nor macro-F1 separates the two models at this test-set size."
