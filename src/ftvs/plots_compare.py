"""Cross-run figures for `ftvs compare` and the report (matplotlib, Agg backend, PNG).

One colour per configuration group (arm, method, model, train fraction), kept the same in every figure;
seeds of one group share the colour and differ in line style.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator, NullFormatter  # noqa: E402

from ftvs.calibration import plot_reliability_overlay, reliability_runs  # noqa: E402

DPI = 130
STYLES = ["-", "--", ":", "-."]
MAX_PANELS = 6  # per-run panels beyond this: one run per group


def _colours(comparison: dict) -> dict[str, tuple]:
    cmap = plt.get_cmap("tab10")
    out = {}
    for gi, g in enumerate(comparison["groups"]):
        for run in g["runs"]:
            out[run] = cmap(gi % 10)
    return out


def _style(comparison: dict) -> dict[str, str]:
    out = {}
    for g in comparison["groups"]:
        for k, run in enumerate(g["runs"]):
            out[run] = STYLES[k % len(STYLES)]
    return out


def _panel_runs(comparison: dict, limit: int = MAX_PANELS) -> list[str]:
    """All runs when few, otherwise the typical run of each full-data configuration (best first)."""
    names = [r["run"] for r in comparison["runs"]]
    if len(names) <= limit:
        return names
    return list((comparison.get("focus") or {}).get("runs") or names)[:limit]


def _save(fig, path: Path) -> str:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path.name


def _short(name: str, n: int = 28) -> str:
    return name if len(name) <= n else name[: n - 1] + "…"


def plot_curves_overlay(comparison: dict, path: Path) -> str | None:
    hist = comparison["histories"]
    if not any(hist.values()):
        return None
    colours, styles = _colours(comparison), _style(comparison)
    shown = set(_panel_runs(comparison, limit=10))
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.2))
    for name, rows in hist.items():
        if not rows or name not in shown:
            continue
        ep = [r["epoch"] for r in rows]
        secs = [r.get("elapsed_seconds") for r in rows]
        marker = "o" if len(rows) == 1 else None
        kw = dict(
            color=colours.get(name), ls=styles.get(name, "-"), marker=marker, ms=4, lw=1.5, label=_short(name)
        )
        for col, key in ((0, "val_macro_f1"), (1, "val_loss")):
            vals = [r.get(key) for r in rows]
            axes[0, col].plot(ep, vals, **kw)
            if all(s is not None for s in secs):
                axes[1, col].plot(secs, vals, **kw)
    for col, label in ((0, "val macro-F1"), (1, "val loss")):
        axes[0, col].set_xlabel("epoch")
        axes[1, col].set_xlabel("wall-clock training seconds (log)")
        axes[1, col].set_xscale("log")
        axes[1, col].xaxis.set_minor_formatter(NullFormatter())
        for row in (0, 1):
            axes[row, col].set_ylabel(label)
            axes[row, col].grid(alpha=0.3)
    for ax in axes[0]:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0, 0].set_title("validation macro-F1")
    axes[0, 1].set_title("validation loss")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(
        handles,
        labels,
        loc="lower center",
        ncol=min(4, len(labels)),
        fontsize=8,
        frameon=False,
        bbox_to_anchor=(0.5, -0.04),
    )
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return _save(fig, path)


def plot_train_val(comparison: dict, path: Path) -> str | None:
    hist = comparison["histories"]
    names = [n for n in _panel_runs(comparison) if hist.get(n)]
    if not names:
        return None
    colours = _colours(comparison)
    ncol = min(len(names), 4)
    nblock = math.ceil(len(names) / ncol)
    fig, axes = plt.subplots(2 * nblock, ncol, figsize=(2.7 * ncol + 0.6, 2.0 * 2 * nblock), squeeze=False)
    for k, name in enumerate(names):
        rows = hist[name]
        ep = [r["epoch"] for r in rows]
        block, col = divmod(k, ncol)
        marker = "o" if len(rows) == 1 else None
        for sub, (key, label) in enumerate((("macro_f1", "macro-F1"), ("loss", "loss"))):
            ax = axes[2 * block + sub, col]
            ax.plot(
                ep,
                [r.get(f"train_{key}") for r in rows],
                color=colours.get(name),
                lw=1.5,
                marker=marker,
                label="train",
            )
            ax.plot(
                ep,
                [r.get(f"val_{key}") for r in rows],
                color=colours.get(name),
                lw=1.5,
                ls="--",
                marker=marker or "s",
                ms=3,
                label="val",
            )
            ax.set_ylabel(label, fontsize=8)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if len(ep) == 1:
                ax.set_xlim(ep[0] - 0.5, ep[0] + 0.5)
                ax.set_xticks(ep)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            if sub == 0:
                ax.set_title(_short(name, 30), fontsize=9)
                if k == 0:
                    ax.legend(fontsize=7)
            else:
                ax.set_xlabel("epoch", fontsize=8)
    for k in range(len(names), nblock * ncol):
        block, col = divmod(k, ncol)
        axes[2 * block, col].axis("off")
        axes[2 * block + 1, col].axis("off")
    fig.tight_layout()
    return _save(fig, path)


def plot_confusions(comparison: dict, runs, path: Path) -> str | None:
    by_name = {r.name: r for r in runs}
    names = [n for n in _panel_runs(comparison, limit=4) if n in by_name]
    if not names:
        return None
    fig, axes = plt.subplots(1, len(names), figsize=(3.0 * len(names) + 0.8, 3.2), squeeze=False)
    im = None
    for ax, name in zip(axes[0], names):
        test = by_name[name].metrics.get("test") or {}
        m = np.asarray(test.get("confusion_matrix") or [[0]], dtype=float)
        m = m / np.clip(m.sum(axis=1, keepdims=True), 1, None)
        im = ax.imshow(m, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
        n = m.shape[0]
        labels = list((test.get("per_class") or {}).keys())
        if n <= 12 and len(labels) == n:
            ax.set_xticks(range(n), [_short(x, 12) for x in labels], rotation=90, fontsize=6)
            ax.set_yticks(range(n), [_short(x, 12) for x in labels], fontsize=6)
        else:
            ax.set_xticks([])
            ax.set_yticks([])
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("true", fontsize=8)
        ax.set_title(f"{_short(name, 24)}\nacc {test.get('accuracy', 0):.3f}", fontsize=8)
    fig.colorbar(im, ax=list(axes[0]), fraction=0.02, pad=0.02)
    return _save(fig, path)


def plot_per_class_diff(comparison: dict, path: Path) -> str | None:
    diff = comparison.get("per_class_diff")
    if not diff or not diff["classes"]:
        return None
    classes = diff["classes"]
    vals = np.array([c["diff"] for c in classes])
    n = len(vals)
    fig, ax = plt.subplots(figsize=(10, 3.0))
    colours = ["#2b8cbe" if v > 0 else "#e34a33" if v < 0 else "#999999" for v in vals]
    ax.bar(np.arange(n), vals, color=colours, width=0.85)
    ax.axhline(0, color="black", lw=0.8)
    if n <= 30:
        ax.set_xticks(np.arange(n), [_short(c["class"], 18) for c in classes], rotation=90, fontsize=6)
    else:
        ax.set_xticks([])
        ax.set_xlabel(f"{n} classes, sorted by difference")
    ax.set_ylabel("test F1 difference")
    ax.set_title(
        f"per-class F1: {_short(diff['a'], 30)} minus {_short(diff['b'], 30)} "
        f"(better for A in {diff['a_better']}, for B in {diff['b_better']})",
        fontsize=9,
    )
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def plot_scores(comparison: dict, path: Path) -> str | None:
    groups = comparison["groups"]
    if not groups:
        return None
    cmap = plt.get_cmap("tab10")
    x = np.arange(len(groups))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.1))
    for ax, key, label in ((axes[0], "accuracy", "test accuracy"), (axes[1], "macro_f1", "test macro-F1")):
        means = [g[f"{key}_mean"] or 0 for g in groups]
        stds = [g[f"{key}_std"] or 0 for g in groups]
        ax.bar(
            x,
            means,
            yerr=[s if s else 0 for s in stds],
            capsize=4,
            color=[cmap(i % 10) for i in range(len(groups))],
            width=0.7,
        )
        for xi, m, g in zip(x, means, groups):
            ax.text(
                xi,
                m,
                f"{m:.3f}" + (f"\n±{g[f'{key}_std']:.3f}" if g[f"{key}_std"] else ""),
                ha="center",
                va="bottom",
                fontsize=7,
            )
        ax.set_xticks(
            x,
            [_short(g["label"], 22) + (f"\n(n={g['n']})" if g["n"] > 1 else "") for g in groups],
            rotation=20,
            ha="right",
            fontsize=7,
        )
        ax.set_ylim(0, min(1.0, max(means) * 1.18 + 0.02))
        ax.set_title(label + " (mean ± std over seeds)", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def plot_cost(comparison: dict, path: Path) -> str | None:
    shown = set(_panel_runs(comparison, limit=12))
    rows = [r for r in comparison["runs"] if r["macro_f1"] is not None and r["run"] in shown]
    if not rows:
        return None
    colours = _colours(comparison)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.0))
    for ax, key, label in (
        (axes[0], "train_seconds_total", "training seconds (log)"),
        (axes[1], "inference_seconds_per_1000", "inference seconds per 1,000 examples (log)"),
    ):
        pts = [r for r in rows if r[key]]
        for r in pts:  # a distilled student as a diamond
            marker = "D" if r["method"] == "distilled" else "o"
            ax.scatter(r[key], r["macro_f1"], color=colours.get(r["run"]), s=40, zorder=3, marker=marker)
            ax.annotate(
                _short(r["run"], 20),
                (r[key], r["macro_f1"]),
                fontsize=6,
                xytext=(3, 3),
                textcoords="offset points",
            )
        _teacher_arrows(ax, comparison, {r["run"]: r for r in pts}, key)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(label, fontsize=8)
        ax.set_ylabel("test macro-F1", fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle("quality vs cost", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _teacher_arrows(ax, comparison: dict, shown: dict, key: str) -> None:
    """An arrow from each teacher run to its distilled student (comparison.json's `distillation`)."""
    for d in comparison.get("distillation") or []:
        for teacher, student in d["arrows"]:
            if teacher in shown and student in shown:
                t, s = shown[teacher], shown[student]
                arrow = {"arrowstyle": "->", "color": "0.4", "lw": 0.8, "shrinkA": 4, "shrinkB": 5}
                ax.annotate(
                    "", xy=(s[key], s["macro_f1"]), xytext=(t[key], t["macro_f1"]), arrowprops=arrow, zorder=2
                )


def _plot_sweep(
    series: list, path: Path, x_key: str, xlabel: str, title: str, keep=None, annotate=None
) -> str | None:
    """Test macro-F1 (mean ± std over seeds) against `x_key` on a log axis, one line per series."""
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    for s in series:
        pts = [p for p in s["points"] if keep(p)] if keep else s["points"]
        ax.errorbar(
            [p[x_key] for p in pts],
            [p["macro_f1_mean"] for p in pts],
            yerr=[p["macro_f1_std"] or 0 for p in pts],
            marker="o",
            capsize=3,
            label=_short(s["label"], 30),
        )
        if annotate:
            for p in pts:
                ax.annotate(
                    annotate(p),
                    (p[x_key], p["macro_f1_mean"]),
                    fontsize=6,
                    xytext=(3, -9),
                    textcoords="offset points",
                )
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test macro-F1")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def plot_data_sweep(comparison: dict, path: Path) -> str | None:
    return _plot_sweep(
        comparison["sweeps"]["data_size"],
        path,
        "num_train_examples",
        "training examples (log)",
        "sensitivity to training-set size (mean ± std over seeds)",
        keep=lambda p: p["num_train_examples"],
    )


def plot_model_sweep(comparison: dict, path: Path) -> str | None:
    return _plot_sweep(
        comparison["sweeps"]["model_size"],
        path,
        "params_total",
        "parameters (log)",
        "sensitivity to model size",
        annotate=lambda p: _short(str(p["preset"] or p["model_name"]), 16),
    )


def plot_tuning_history(comparison: dict, path: Path) -> str | None:
    """Best validation macro-F1 so far against finished trials and against seconds in trials, per arm."""
    arms = [a for a in (comparison.get("tuning") or {}).get("arms", []) if a["history"]]
    if not arms:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    cmap = plt.get_cmap("tab10")
    for i, arm in enumerate(arms):
        rows = [h for h in arm["history"] if h["best_value"] is not None]
        for ax, key in zip(axes, ("finished", "elapsed_seconds")):
            ax.step([h[key] for h in rows], [h["best_value"] for h in rows], where="post", marker="o",
                    markersize=3, color=cmap(i % 10), label=_short(arm["arm_name"], 20))  # fmt: skip
    axes[0].set_xlabel("finished trials")
    axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[1].set_xlabel("seconds in trials")
    axes[0].set_ylabel("best val macro-F1 so far")
    axes[0].legend(fontsize=8)
    fig.suptitle("hyperparameter search: optimisation history")
    return _save(fig, path)


def make_figures(runs, comparison: dict, out: Path) -> dict[str, str]:
    """Write every figure that has data into `out`; returns {figure id: file name}."""
    out = Path(out)
    made = {
        "curves_overlay": plot_curves_overlay(comparison, out / "curves_overlay.png"),
        "train_val_curves": plot_train_val(comparison, out / "train_val_curves.png"),
        "scores": plot_scores(comparison, out / "scores_bar.png"),
        "confusion_matrices": plot_confusions(comparison, runs, out / "confusion_matrices.png"),
        "per_class_diff": plot_per_class_diff(comparison, out / "per_class_f1_diff.png"),
        "cost": plot_cost(comparison, out / "cost_vs_quality.png"),
        "sweep_data_size": plot_data_sweep(comparison, out / "sweep_data_size.png"),
        "sweep_model_size": plot_model_sweep(comparison, out / "sweep_model_size.png"),
        "reliability": plot_reliability_overlay(
            runs, reliability_runs(comparison), out / "reliability_diagrams.png"
        ),
        "tuning_history": plot_tuning_history(comparison, out / "tuning_history.png"),
    }
    return {k: v for k, v in made.items() if v}
