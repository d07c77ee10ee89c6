"""PNG figures of a run's training (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

from .tracking import read_metrics


def plot_training(run_dir: Path) -> Path:
    """``plots/training.png``: step loss, learning rate, and every validation metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    steps = [r for r in records if "loss" in r]
    evals = [r for r in records if r.get("eval")]
    keys = sorted({k for r in evals for k in r} - {"epoch", "step", "eval"})
    panels = 2 + bool(keys)
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.5))
    axes[0].plot([r["step"] for r in steps], [r["loss"] for r in steps], lw=0.8)
    axes[0].set(xlabel="step", ylabel="loss", title="training loss")
    axes[1].plot([r["step"] for r in steps], [r["lr"] for r in steps], lw=0.8)
    axes[1].set(xlabel="step", ylabel="lr", title="learning rate")
    if keys:
        for k in keys:
            axes[2].plot([r["step"] for r in evals], [r.get(k) for r in evals], "o-", label=k)
        axes[2].set(xlabel="step", title="validation")
        axes[2].legend(fontsize=7)
    fig.tight_layout()
    out = Path(run_dir) / "plots" / "training.png"
    out.parent.mkdir(exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
