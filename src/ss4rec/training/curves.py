"""``curves.png`` of a training run: the training loss and the validation metrics per epoch.

    >>> plot_curves(result["history"], "runs/demo/curves.png", title="SS4Rec")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

# A bare Figure, not pyplot: files only, no backend switch, no global state (a notebook that
# calls ss4rec.run keeps its inline plots).
from matplotlib.figure import Figure


def plot_curves(history: list[dict], path, title: str = "") -> Path:
    """Train loss and validation metrics per epoch -> a PNG at ``path``."""
    fig = Figure(figsize=(10, 3.6))
    loss_ax, valid_ax = fig.subplots(1, 2)
    epochs = [h["epoch"] for h in history]
    loss_ax.plot(epochs, [h.get("train_loss") for h in history], marker="o")
    loss_ax.set(xlabel="epoch", ylabel="train loss (mean per target)", title="training")
    valid = [h for h in history if h.get("valid")]
    for metric in sorted({k for h in valid for k in h["valid"] if k.endswith("@10")}):
        valid_ax.plot([h["epoch"] for h in valid], [h["valid"][metric] for h in valid], marker="o", label=metric)
    valid_ax.set(xlabel="epoch", title="validation")
    if valid:
        valid_ax.legend()
    for ax in (loss_ax, valid_ax):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path
