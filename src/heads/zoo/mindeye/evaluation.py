"""MindEye2 evaluation: N-way retrieval over random draws of test images, per subject."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...metrics.retrieval import summary
from ...report import Report, percent_line

if TYPE_CHECKING:
    from .head import MindEye


def repeat_weights(n: int, rule: str) -> np.ndarray:
    """How a test image's ``n`` repeats are averaged: ``mean``, or ``original`` (MindEye2's
    recon_inference pads to three: 1 repeat → [a, a, a], 2 → [a, a, b]; more: the mean)."""
    if rule == "original" and n == 2:
        return np.array([2 / 3, 1 / 3])
    return np.full(n, 1 / n)


@torch.no_grad()
def test_embeddings(head: MindEye, model: nn.Module, subject: int = 0) -> dict[str, Any]:
    """Outputs averaged over each test image's repeats, with the image's targets."""
    s = head.subjects[subject]
    split = s["split"]
    rule = head.cfg["eval"]["repeats"]
    device = next(model.parameters()).device
    brain, text = [], []
    for rows in split.test_rows:
        v = torch.from_numpy(s["betas"].read(rows)).to(device).unsqueeze(1)
        backbone, clip_voxels = model.backbone(model.ridge(v, subject))
        w = torch.from_numpy(repeat_weights(len(rows), rule)).float().to(device)
        brain.append(torch.einsum("r,r...->...", w, clip_voxels.float()))  # outputs averaged
        if model.text_head is not None:
            text.append(torch.einsum("r,r...->...", w, model.text_head(backbone).float()))
    images = split.test_images
    targets = head.targets.gather(head.targets.positions(images))
    result = {
        "images": images,
        "brain": F.normalize(torch.stack(brain).flatten(1), dim=-1).cpu(),
        "targets": F.normalize(torch.from_numpy(targets).float().flatten(1), dim=-1),
    }
    covered, pos, _ = head.dataset.text_features(images)
    if text and pos is not None:
        result["text_covered"] = covered
        result["text_pred"] = F.normalize(
            torch.stack(text)[torch.from_numpy(covered)], dim=-1
        ).cpu()
        result["text_true"] = F.normalize(torch.from_numpy(pos).float(), dim=-1)
    return result


def _top1(sim: torch.Tensor) -> float:
    """Share of rows whose best column is the diagonal."""
    return (sim.argmax(1) == torch.arange(len(sim))).float().mean().item()


def draw_subsets(n: int, way: int, draws: int, seed: int, rng: str) -> list[np.ndarray]:
    """The ``draws`` subsets of ``min(way, n)`` test images (positions in sorted image order).

    ``original``: MindEye2's final_evaluations — ``seed_everything(seed)``, then per draw
    ``np.random.choice(np.arange(n), size=way, replace=False)`` on NumPy's legacy global
    generator (here a ``RandomState(seed)`` of its own, which draws the same numbers);
    ``numpy``: ``numpy.random.default_rng(seed).choice``.
    """
    k = min(way, n)
    if rng == "original":
        legacy = np.random.RandomState(seed)
        return [legacy.choice(np.arange(n), size=k, replace=False) for _ in range(draws)]
    gen = np.random.default_rng(seed)
    return [gen.choice(n, size=k, replace=False) for _ in range(draws)]


def retrieval_scores(
    emb: dict[str, Any], way: int, draws: int, seed: int, rng: str = "original"
) -> dict[str, dict]:
    """N-way top-1 over draws of test images: mean, 95% CI half-width, chance.

    Directions follow the arithmetic of MindEye2's evaluation, where
    ``batchwise_cosine_similarity(Z, B)`` returns ``(Z·Bᵀ)ᵀ``, so its "fwd" matrix has images
    as rows:

    - ``image_retrieval`` (MindEye2's fwd, published as image retrieval): for each image, is its
      own brain embedding the most similar of the candidates' brain embeddings?
    - ``brain_retrieval`` (bwd): for each brain embedding, is its own image the most similar?
    - ``text_retrieval``: for each covered test image's predicted text feature, is its own
      caption feature the most similar (draws from ``default_rng(seed)`` of their own).

    The CI is MindEye2's: ``norm.interval(0.95, mean, std(ddof=0) / √draws)``.
    """
    n = len(emb["images"])
    image, brain, text = [], [], []
    subsets = draw_subsets(n, way, draws, seed, rng)
    if subsets and len(subsets[0]) == n:  # every draw is the whole test set: score it once
        subsets = subsets[:1]
    for pick in subsets:
        pick = torch.from_numpy(np.asarray(pick))
        sim = emb["targets"][pick] @ emb["brain"][pick].T  # [image, brain]
        image.append(_top1(sim))  # rows: images -> which brain embedding?
        brain.append(_top1(sim.T))  # rows: brain embeddings -> which image?
    n_text = len(emb["text_true"]) if "text_true" in emb else 0
    k_text = min(way, n_text)
    if k_text >= 2:
        gen = np.random.default_rng(seed)
        for _ in range(draws if k_text < n_text else 1):
            tp = torch.from_numpy(gen.choice(n_text, size=k_text, replace=False))
            text.append(_top1(emb["text_pred"][tp] @ emb["text_true"][tp].T))
    k = len(subsets[0]) if subsets else 0
    out = {
        "image_retrieval": summary(image, k, ddof=0),
        "brain_retrieval": summary(brain, k, ddof=0),
    }
    if text:
        out["text_retrieval"] = summary(text, k_text, ddof=0)
        out["text_retrieval"]["whole_set"] = k_text == n_text
    for name in ("image_retrieval", "brain_retrieval"):
        out[name]["whole_set"] = k == n
    return out


def final_evaluation(head: MindEye, model: nn.Module, run_dir: Path) -> Report:
    """``eval.draws`` draws of ``eval.way``-way retrieval per subject (mean ± 95% CI), TextAlign
    top-1; writes ``eval.json`` and ``plots/eval.png``."""
    e = head.cfg["eval"]
    model.eval()
    metrics: dict[str, Any] = {"subjects": {}}
    lines = []
    first = None
    for i, s in enumerate(head.subjects):
        emb = test_embeddings(head, model, i)
        scores = retrieval_scores(emb, e["way"], e["draws"], e["seed"], e["draws_rng"])
        lines += [percent_line(f"{s['name']} {name}", score) for name, score in scores.items()]
        scores["n_test_images"] = len(emb["images"])
        metrics["subjects"][s["name"]] = scores
        first = emb if first is None else first
    report = Report("mindeye", metrics, lines)
    report.save(run_dir / "eval.json")
    report.files.append(_plot_eval(head, first, metrics, run_dir / "plots" / "eval.png"))
    return report


def _plot_eval(head: MindEye, emb: dict[str, Any], report: dict[str, Any], out: Path) -> Path:
    """Accuracy bars with CIs and chance, and (with data.images) test images beside the images
    retrieved for their brain embeddings."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name, scores = next(iter(report["subjects"].items()))
    metrics = [k for k in ("image_retrieval", "brain_retrieval", "text_retrieval") if k in scores]
    images_path = head.cfg["data"]["images"]
    rows = 4 if images_path else 0
    fig = plt.figure(figsize=(10, 3.2 + 1.6 * rows))
    ax = fig.add_subplot(1 + rows, 1, 1) if rows else fig.add_subplot(1, 1, 1)
    means = [scores[m]["mean"] for m in metrics]
    ax.bar(metrics, means, yerr=[scores[m]["ci95"] for m in metrics], capsize=4, color="#4c72b0")
    for j, m in enumerate(metrics):
        ax.hlines(scores[m]["chance"], j - 0.4, j + 0.4, colors="red", linestyles="--")
        ax.text(j, means[j] + 0.02, f"{means[j]:.1%} ({scores[m]['way']}-way)", ha="center")
    ax.set(ylim=(0, 1.1), ylabel="top-1", title=f"{name}: retrieval (red: chance)")
    if rows:
        import h5py

        sim = emb["brain"] @ emb["targets"].T
        best = sim.argsort(dim=1, descending=True)[:, :4]
        with h5py.File(images_path, "r") as f:
            data = f["images"]
            for r in range(min(rows, len(emb["images"]))):
                ids = [int(emb["images"][r])] + [int(emb["images"][c]) for c in best[r]]
                for c, image_id in enumerate(ids):
                    axi = fig.add_subplot(1 + rows, 5, 5 * (r + 1) + c + 1)
                    axi.imshow(np.clip(data[image_id].astype(np.float32).transpose(1, 2, 0), 0, 1))
                    axi.set_axis_off()
                    axi.set_title("seen" if c == 0 else f"retrieved {c}", fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
