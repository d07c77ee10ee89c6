"""NeuroBridge figures: retrieval bars (+ a grid of retrieved THINGS images) and the region
ablation bars in the seed's table layout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

KS = (1, 5, 10)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    _pyplot().close(fig)
    return out


def plot_retrieval(
    metrics: dict[str, Any],
    sim: torch.Tensor,
    ids: list[str],
    grid: tuple[str, int],
    out: Path,
) -> Path:
    """Top-k bars in both directions with chance; with ``grid = (images_root, rows)`` and a
    THINGS folder, each of the first ``rows`` test images beside its top-5 retrieved images."""
    plt = _pyplot()
    root, rows = grid
    root = Path(root) if root else None
    rows = min(rows, len(ids)) if root and root.is_dir() else 0
    fig = plt.figure(figsize=(10, 3.2 + 1.9 * rows))
    ax = fig.add_subplot(1 + rows, 1, 1)
    ks = [k for k in KS if f"n2i_top{k}" in metrics]
    x = np.arange(len(ks))
    for offset, prefix, label in ((-0.2, "n2i", "neural → image"), (0.2, "i2n", "image → neural")):
        values = [metrics[f"{prefix}_top{k}"] for k in ks]
        ax.bar(x + offset, values, width=0.4, label=label)
    n = metrics["n_images"]
    for j, k in enumerate(ks):
        ax.hlines(k / n, j - 0.4, j + 0.4, colors="red", linestyles="--")
    ax.set(xticks=x, xticklabels=[f"top-{k}" for k in ks], ylim=(0, 1.05), ylabel="accuracy")
    ax.set_title(f"retrieval among {n} test images (red: chance)")
    ax.legend(loc="upper left")
    if rows:
        from PIL import Image

        best = sim.argsort(dim=1, descending=True)[:, :5]
        for r in range(rows):
            shown = [r, *best[r].tolist()]
            for c, i in enumerate(shown):
                axi = fig.add_subplot(1 + rows, 6, 6 * (r + 1) + c + 1)
                with Image.open(root / ids[i]) as im:
                    axi.imshow(im.convert("RGB").resize((96, 96)))
                axi.set_axis_off()
                hit = " ✓" if c and i == r else ""
                axi.set_title("seen" if c == 0 else f"#{c}{hit}", fontsize=7)
    return _save(fig, out)


def plot_ablation(rows: list[dict[str, Any]], out: Path) -> Path:
    """Test neural → image top-1/5/10 per region (the seed's Phase 3b figure)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    x = np.arange(len(rows))
    for j, k in enumerate(KS):
        values = [r.get(f"n2i_top{k}", np.nan) for r in rows]
        ax.bar(x + (j - 1) * 0.27, values, width=0.27, label=f"top-{k}")
    labels = [f"{r['region']}\n({r['electrodes']} el.)" for r in rows]
    ax.set(xticks=x, xticklabels=labels, ylim=(0, 1.05), ylabel="neural → image accuracy")
    ax.set_title("region ablation (test images)")
    ax.legend()
    return _save(fig, out)
