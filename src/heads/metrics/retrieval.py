"""Retrieval metrics: top-k accuracy in both directions, N-way draws, confidence intervals.

A similarity matrix ``sim[q, c]`` scores query ``q`` against candidate ``c``; query ``i``'s
correct candidate is ``i``. "Both directions" means ``sim`` and ``sim.T``.
"""

from __future__ import annotations

from collections.abc import Iterable
from statistics import NormalDist

import numpy as np
import torch
from torch import Tensor


def topk_accuracy(sim: Tensor, k: int = 1) -> float:
    """Share of rows whose own column (the diagonal) is among the ``k`` highest. Ties count
    against the row (a row of equal scores is not a hit)."""
    own = sim.diagonal().unsqueeze(1)
    rank = (sim > own).sum(1)  # how many candidates beat the right one
    ties = (sim == own).sum(1) - 1
    return ((rank + ties) < k).float().mean().item()


def topk_both(sim: Tensor, ks: Iterable[int] = (1, 5, 10)) -> dict[str, float]:
    """``{"fwd_top1": ..., "bwd_top1": ...}``: queries → candidates (rows) and back (columns).
    A ``k`` above the number of candidates is left out."""
    out = {}
    for k in ks:
        if k <= sim.shape[1]:
            out[f"fwd_top{k}"] = topk_accuracy(sim, k)
            out[f"bwd_top{k}"] = topk_accuracy(sim.T, k)
    return out


Z95 = NormalDist().inv_cdf(0.975)  # 1.959964...


def summary(values: Iterable[float], way: int, ddof: int = 1) -> dict[str, float]:
    """Mean over draws with the 95% CI half-width ``z · std(ddof) / √draws`` (z = the normal
    0.975 quantile, as ``scipy.stats.norm.interval(0.95, mean, sem)``), N-way and chance."""
    arr = np.asarray(list(values), dtype=np.float64)
    ci = Z95 * arr.std(ddof=ddof) / np.sqrt(len(arr)) if len(arr) > 1 else 0.0
    return {"mean": float(arr.mean()), "ci95": float(ci), "way": int(way), "chance": 1 / way}


def cosine_matrix(a: Tensor, b: Tensor) -> Tensor:
    """``sim[i, j] = cos(a[i], b[j])`` for rows flattened to vectors."""
    a = torch.nn.functional.normalize(a.flatten(1).float(), dim=-1)
    b = torch.nn.functional.normalize(b.flatten(1).float(), dim=-1)
    return a @ b.T
