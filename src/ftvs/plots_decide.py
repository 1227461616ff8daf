"""The decision figures: the Pareto fronts (macro-F1 vs inference and training cost) and the data-size
sweep with its fitted learning curves (`ftvs.comparison.decide`, `ftvs.comparison.learning_curve`)."""

from __future__ import annotations

from pathlib import Path

from matplotlib.ticker import NullFormatter

from ftvs.comparison.runs import ARM_LABEL
from ftvs.plots_compare import _save, _short, plt

COST_LABEL = {
    "latency_p50_ms": "batch-1 latency p50, ms (log)",
    "throughput_s_per_1k": "batch-64 seconds per 1,000 texts (log)",
    "inference_seconds_per_1000": "inference seconds per 1,000 examples (log)",
    "train_seconds_total": "training seconds (log)",
}


def plot_pareto(comparison: dict, path: Path) -> str | None:
    """Two panels: the front as a step line, front points filled, dominated points hollow and grey."""
    par = comparison.get("pareto") or {}
    axes_data = [(k, par[k]) for k in ("inference", "training") if (par.get(k) or {}).get("points")]
    if not axes_data:
        return None
    pick = ((comparison.get("recommendation") or {}).get("pick") or {}).get("label")
    fig, axes = plt.subplots(1, len(axes_data), figsize=(5 * len(axes_data), 3.2), squeeze=False)
    for ax, (_, data) in zip(axes[0], axes_data):
        front = sorted((p for p in data["points"] if not p["dominated_by"]), key=lambda p: p["cost"])
        ax.step([p["cost"] for p in front], [p["macro_f1"] for p in front], where="post", color="C0", lw=1.2,
                label="Pareto front")  # fmt: skip
        for p in data["points"]:
            on, picked = not p["dominated_by"], p["label"] == pick
            edge = "C3" if picked else ("C0" if on else "grey")
            face = "C0" if on else "none"
            ax.scatter(p["cost"], p["macro_f1"], s=70 if picked else 40, zorder=3, facecolor=face,
                       edgecolor=edge, linewidths=2 if picked else 1)  # fmt: skip
            text = _short(p["label"], 22) + ("" if on else " (dominated)")
            ax.annotate(
                text, (p["cost"], p["macro_f1"]), fontsize=6, xytext=(4, 3), textcoords="offset points"
            )
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.margins(x=0.15, y=0.12)
        ax.set_xlabel(COST_LABEL.get(data["cost"], data["cost"]), fontsize=8)
        ax.set_ylabel("test macro-F1 (mean over seeds)", fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(
        "Pareto front: quality vs cost (hollow grey = dominated; red edge = recommended)", fontsize=9
    )
    fig.tight_layout()
    return _save(fig, path)


def plot_learning_curves(comparison: dict, path: Path) -> str | None:
    """The data-size sweep: measured points (mean ± std over seeds), the fitted power law of each
    configuration (solid over the measured range, dashed beyond: an extrapolation) with its bootstrap
    band, and the fine-tuned score the from-scratch arm is to reach."""
    lc = comparison.get("learning_curves") or {}
    fits = {f["label"]: f for f in lc.get("fits") or []}
    series = (comparison.get("sweeps") or {}).get("data_size") or []
    if not fits or not series:
        return None
    fig, ax = plt.subplots(figsize=(6.8, 3.6))
    for i, s in enumerate(series):
        colour = f"C{i % 10}"
        pts = [p for p in s["points"] if p["num_train_examples"]]
        ax.errorbar([p["num_train_examples"] for p in pts], [p["macro_f1_mean"] for p in pts],
                    yerr=[p["macro_f1_std"] or 0 for p in pts], fmt="o", capsize=3, color=colour,
                    label=_short(s["label"], 30))  # fmt: skip
        f = fits.get(s["label"])
        if not f:
            continue
        inside = [k for k, n in enumerate(f["grid"]) if n <= f["sizes"][-1] * 1.0001]
        if f.get("poor_fit"):  # drawn for what it is, not extrapolated
            ax.plot([f["grid"][k] for k in inside], [f["curve"][k] for k in inside], color=colour, lw=0.8,
                    ls=":", label=f"fit (poor, RMSE {f['rmse']:.2f}): not extrapolated")  # fmt: skip
            continue
        ax.plot([f["grid"][k] for k in inside], [f["curve"][k] for k in inside], color=colour, lw=1.3)
        ax.plot(f["grid"][inside[-1] :], f["curve"][inside[-1] :], color=colour, lw=1.3, ls="--")
        if f.get("band"):
            ax.fill_between(f["grid"], f["band"][0], f["band"][1], color=colour, alpha=0.15, lw=0)
    target = lc.get("target")
    if target:
        ax.axhline(target["macro_f1"], color="grey", ls=":", lw=1)
        ax.annotate(f"{ARM_LABEL['finetune']} score", (ax.get_xlim()[0], target["macro_f1"]), fontsize=6,
                    xytext=(3, 2), textcoords="offset points", color="grey")  # fmt: skip
    for r in lc.get("reach") or []:
        if r["status"] == "extrapolated":
            ax.axvline(r["examples"], color="grey", lw=0.8, ls="-.")
    ax.set_xscale("log")
    ax.set_xlabel("training examples (log); dashed = extrapolated fit")
    ax.set_ylabel("test macro-F1")
    ax.set_title(f"learning curves: {lc.get('model')}, 95% bootstrap band over seeds", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def decide_figures(comparison: dict, out: Path) -> dict[str, str]:
    """The Pareto figure, and the data-size sweep figure redrawn with its fitted curves where fitted."""
    made = {
        "pareto": plot_pareto(comparison, Path(out) / "pareto_front.png"),
        "sweep_data_size": plot_learning_curves(comparison, Path(out) / "sweep_data_size.png"),
    }
    return {k: v for k, v in made.items() if v}
