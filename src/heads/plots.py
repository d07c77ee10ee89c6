"""PNG figures of a run (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path


def plot_training(run_dir: Path) -> Path:
    """``plots/training.png``: step loss and LR, and every per-epoch metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .train import read_metrics

    records = read_metrics(run_dir)
    steps = [r for r in records if "loss" in r]
    epochs = [r for r in records if "train_loss" in r]
    keys = sorted({k for r in epochs for k in r} - {"epoch", "step", "epoch_seconds"})
    fig, axes = plt.subplots(1, 2 + (len(keys) > 1), figsize=(5 * (2 + (len(keys) > 1)), 3.5))
    axes[0].plot([r["step"] for r in steps], [r["loss"] for r in steps], lw=0.8)
    axes[0].set(xlabel="step", ylabel="loss", title="training loss")
    axes[1].plot([r["step"] for r in steps], [r["lr"] for r in steps], lw=0.8)
    axes[1].set(xlabel="step", ylabel="lr", title="learning rate")
    if len(keys) > 1:
        for k in keys:
            if k != "train_loss":
                axes[2].plot(
                    [r["epoch"] for r in epochs], [r.get(k) for r in epochs], "o-", label=k
                )
        axes[2].set(xlabel="epoch", title="evaluation")
        axes[2].legend(fontsize=7)
    fig.tight_layout()
    out = Path(run_dir) / "plots" / "training.png"
    out.parent.mkdir(exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
