"""NeuroBridge evaluation: validation during training and ``heads eval`` on the test images.

Alignment: top-1/5/10 retrieval among the 100 test images in both directions (neural → image:
for each MUA embedding, is its image among the k most similar CLIP embeddings; image → neural:
the reverse) and the positive-pair cosine mean ± std, as the seed's ``evaluate_alignment.py``.
During training ``val_top1``/``val_top5`` are the seed's: in-batch retrieval over the validation
rows in batches of ``eval.batch_size``, both directions averaged, then averaged over batches.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...losses.contrastive import clip_loss
from ...losses.sequence import masked_mse
from ...metrics.retrieval import topk_accuracy, topk_both
from ...report import Report

if TYPE_CHECKING:
    from .head import NeuroBridge

KS = (1, 5, 10)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _batches(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


@torch.no_grad()
def embed_mua(model: nn.Module, mua: np.ndarray, batch_size: int) -> torch.Tensor:
    """L2-normalized neural embeddings of MUA rows ``[n, electrodes]`` (eval mode, no aug)."""
    device = _device(model)
    out = [
        model.embed(torch.from_numpy(mua[s]).to(device)).float().cpu()
        for s in _batches(len(mua), batch_size)
    ]
    return torch.cat(out)


def _targets(entry, rows: np.ndarray) -> torch.Tensor:
    return F.normalize(torch.from_numpy(np.asarray(entry.gather(rows))).float(), dim=-1)


def in_batch_retrieval(neural: torch.Tensor, image: torch.Tensor, batch_size: int) -> dict:
    """The seed's validation metric: per batch, top-k of ``neural @ image.T`` in both directions
    averaged; the mean over batches (the last one may be smaller)."""
    top1, top5 = [], []
    for s in _batches(len(neural), batch_size):
        sim = neural[s] @ image[s].T
        k5 = min(5, sim.shape[0])
        top1.append((topk_accuracy(sim, 1) + topk_accuracy(sim.T, 1)) / 2)
        top5.append((topk_accuracy(sim, k5) + topk_accuracy(sim.T, k5)) / 2)
    return {"val_top1": float(np.mean(top1)), "val_top5": float(np.mean(top5))}


def retrieval_metrics(neural: torch.Tensor, image: torch.Tensor) -> dict[str, float]:
    """Top-k both ways (``n2i_topk``, ``i2n_topk``), positive/negative cosine, median rank."""
    sim = neural @ image.T
    both = topk_both(sim, KS)
    out = {k.replace("fwd", "n2i").replace("bwd", "i2n"): v for k, v in both.items()}
    diag = sim.diagonal()
    off = sim[~torch.eye(len(sim), dtype=torch.bool)]
    rank = (sim > diag[:, None]).sum(1).float() + 1
    out.update(
        positive_sim_mean=diag.mean().item(),
        positive_sim_std=diag.std().item(),
        negative_sim_mean=off.mean().item(),
        n2i_median_rank=rank.median().item(),
        n_images=len(sim),
    )
    return out


@torch.no_grad()
def validate(head: NeuroBridge, model: nn.Module) -> dict[str, float]:
    e = head.cfg["eval"]
    rows = head.split.val
    if head.kind == "align":
        neural = embed_mua(model, head.train_mua[rows], e["batch_size"])
        image = _targets(head.targets, rows)
        temp = model.log_temperature.exp().item()
        out = in_batch_retrieval(neural, image, e["batch_size"])
        out["val_loss"] = clip_loss(neural, image, temp).item()
        out["val_n2i_top5_all"] = topk_accuracy(neural @ image.T, 5)
        return out
    if head.kind == "pretrain":
        return {f"val_{k}": v for k, v in reconstruction(head, model, head.train_mua[rows]).items()}
    return adapter_validation(head, model, rows)


@torch.no_grad()
def reconstruction(head: NeuroBridge, model: nn.Module, mua: np.ndarray) -> dict[str, float]:
    """Masked-electrode MSE with masks drawn from ``eval.mask_seed`` (the same every time, so
    epochs compare), and the MSE over all electrodes."""
    from .head import electrode_mask

    L, e = head.cfg["loss"], head.cfg["eval"]
    device = _device(model)
    generator = torch.Generator(device=device).manual_seed(e["mask_seed"])
    masked_sum = all_sum = 0.0
    n_masked = n_all = 0
    for s in _batches(len(mua), e["batch_size"]):
        values = torch.from_numpy(mua[s]).to(device)
        masked = electrode_mask(
            values.shape, L["mask_ratio"], L["min_keep_ratio"], device, generator
        )
        predicted = model(values.masked_fill(masked, 0.0), ~masked).float()
        count = int(masked.sum())
        masked_sum += masked_mse(predicted, values, masked).item() * count
        all_sum += F.mse_loss(predicted, values, reduction="sum").item()
        n_masked, n_all = n_masked + count, n_all + values.numel()
    return {"masked_mse": masked_sum / max(1, n_masked), "all_mse": all_sum / n_all}


@torch.no_grad()
def adapter_validation(head: NeuroBridge, model: nn.Module, rows: np.ndarray) -> dict[str, float]:
    from .head import adapter_loss

    e = head.cfg["eval"]
    device = _device(model)
    sums: dict[str, float] = {}
    n = 0
    for s in _batches(len(rows), e["batch_size"]):
        clip = _targets(head.targets, rows[s]).to(device)
        loss, parts = adapter_loss(model(clip), clip, head.cfg["loss"])
        for k, v in {"loss": loss, **parts}.items():
            sums[k] = sums.get(k, 0.0) + float(v)
        n += 1
    return {f"val_{k}": v / n for k, v in sums.items()}


def test_mua(head: NeuroBridge) -> np.ndarray:
    """The test images' MUA: ``test_MUA`` (the mean over repeats), or with
    ``eval.average_reps`` the mean of ``test_MUA_reps`` over its repeats."""
    channels = head.selection.channels
    if head.cfg["eval"]["average_reps"]:
        return head.mua.read("test_MUA_reps", channels).mean(axis=0)
    return head.mua.read("test_MUA", channels)


def check_channels(head: NeuroBridge, model: nn.Module) -> None:
    """The run's saved electrode channels must be the ones the config selects now."""
    from ...errors import DataError

    saved = model.encoder.channels.cpu().numpy()
    if not np.array_equal(saved, head.selection.channels):
        raise DataError(
            f"this run was trained on {len(saved)} electrodes (channels {saved[:5].tolist()}...) "
            f"but its config now selects {len(head.selection.channels)}; the data file's "
            f"quality fields changed. Evaluate with the file the run was trained on."
        )


def final_evaluation(head: NeuroBridge, model: nn.Module, run_dir: Path) -> Report:
    e = head.cfg["eval"]
    if head.kind == "adapter":
        metrics = adapter_validation(head, model, head.split.val)
        lines = [f"{k}: {v:.4f}" for k, v in metrics.items()]
        report = Report("neurobridge", metrics, lines)
        report.save(run_dir / "eval.json")
        return report
    check_channels(head, model)
    mua = test_mua(head)
    electrodes = f"electrodes: {len(head.selection.channels)} ({head.selection.describe()})"
    if head.kind == "pretrain":
        metrics = {
            "test": reconstruction(head, model, mua),
            "val": reconstruction(head, model, head.train_mua[head.split.val]),
        }
        lines = [
            electrodes,
            *(
                f"{split} masked MSE {m['masked_mse']:.4f}, all-electrode MSE {m['all_mse']:.4f}"
                for split, m in metrics.items()
            ),
        ]
        report = Report("neurobridge", metrics, lines)
        report.save(run_dir / "eval.json")
        return report
    neural = embed_mua(model, mua, e["batch_size"])
    image = _targets(head.test_targets, np.arange(len(head.test_targets)))
    metrics: dict[str, Any] = retrieval_metrics(neural, image)
    metrics["electrodes"] = head.selection.counts()
    metrics["region"] = head.cfg["data"]["region"]
    lines = [electrodes, *format_retrieval(metrics)]
    report = Report("neurobridge", metrics, lines)
    report.save(run_dir / "eval.json")
    from .plots import plot_retrieval

    figure = run_dir / "plots" / "retrieval.png"
    grid = (e["images_root"], e["grid_rows"])
    report.files.append(plot_retrieval(metrics, neural @ image.T, head.test_ids, grid, figure))
    return report


def format_retrieval(m: dict[str, Any]) -> list[str]:
    n = m["n_images"]
    ks = [k for k in KS if f"n2i_top{k}" in m]
    chance = ", ".join(f"top-{k} {k / n:.0%}" for k in ks)

    def direction(prefix: str) -> str:
        return ", ".join(f"top-{k} {m[f'{prefix}_top{k}']:.1%}" for k in ks)

    return [
        f"test images: {n} (chance {chance})",
        f"neural -> image: {direction('n2i')}",
        f"image -> neural: {direction('i2n')}",
        f"positive similarity: {m['positive_sim_mean']:.3f} ± {m['positive_sim_std']:.3f} "
        f"(negatives {m['negative_sim_mean']:.3f}); median rank {m['n2i_median_rank']:.0f}",
    ]
