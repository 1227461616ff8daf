"""Per-run figures: training curves and the confusion matrix (matplotlib, no display needed)."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_training_curves(history: list[dict], path, title: str = "") -> None:
    """Loss, accuracy, macro-F1 (train and val) and learning rate against the epoch."""
    epochs = [r["epoch"] for r in history]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    for ax, key, label in zip(axes[:3], ("loss", "accuracy", "macro_f1"), ("loss", "accuracy", "macro-F1")):
        ax.plot(epochs, [r[f"train_{key}"] for r in history], "o-", label="train", ms=3)
        ax.plot(epochs, [r[f"val_{key}"] for r in history], "s-", label="val", ms=3)
        ax.set_xlabel("epoch")
        ax.set_title(label)
        ax.grid(alpha=0.3)
        ax.legend()
    axes[3].plot(epochs, [r["lr"] for r in history], "o-", ms=3)
    axes[3].set_title("learning rate (end of epoch)")
    axes[3].set_xlabel("epoch")
    axes[3].grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_confusion_matrix(matrix, label_names, path, title: str = "") -> None:
    """Row-normalised confusion matrix; tick labels only when there are few classes."""
    m = np.asarray(matrix, dtype=float)
    m = m / np.clip(m.sum(axis=1, keepdims=True), 1, None)
    n = len(label_names)
    size = min(12, max(4, 0.18 * n + 3))
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(m, cmap="Blues", vmin=0, vmax=1)
    if n <= 25:
        ax.set_xticks(range(n), label_names, rotation=90, fontsize=7)
        ax.set_yticks(range(n), label_names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix (row-normalised)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
