"""MindEye2's contrastive losses (BiMixCo, SoftCLIP), TextAlign's InfoNCE and the SoftCLIP
temperature schedule. Pure functions.

Checked against MedARC-AI/MindEyeV2 ``src/utils.py`` (``mixco``, ``mixco_nce``,
``soft_clip_loss``, ``cosine_anneal``) and ``src/Train.py`` (how they are called). Deliberate
differences from the original are listed per function.

Contrastive inputs (``preds``, ``targs``, ``negatives``) must already be L2-normalized row
vectors; for MindEye that is ``F.normalize(tokens.flatten(1), dim=-1)`` ([B, 256*1664]). The
caller does that; nothing here normalizes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def _soft_ce(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean over rows of ``-sum_j labels[i,j] * log_softmax(logits)[i,j]``."""
    return -(logits.log_softmax(dim=-1) * labels).sum(dim=-1).mean()


def mixco(
    voxels: Tensor,
    beta: float = 0.15,
    s_thresh: float = 0.5,
    perm: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """MixCo on raw voxels ``[B, ...]`` (before the ridge).

    ``perm = randperm(B)``, ``betas ~ Beta(beta, beta)``, ``select = rand(B) <= s_thresh``;
    ``mixed[i] = betas[i]*v[i] + (1-betas[i])*v[perm[i]]`` for selected ``i``, unchanged
    otherwise, and ``betas[~select] = 1``. Returns ``(mixed, perm, betas, select)`` with ``betas``
    float32 ``[B]`` and ``select`` bool ``[B]`` on ``voxels.device``.

    Random draws come from ``generator`` (CPU) when given, else from torch's global RNG; the Beta
    draw uses a NumPy generator seeded from that torch RNG (torch's Beta takes no generator).
    Unlike the original, ``voxels`` is not modified in place.
    """
    n = voxels.shape[0]
    if perm is None:
        perm = torch.randperm(n, generator=generator)
    elif perm.shape != (n,):
        raise ValueError(f"perm must have shape [{n}], got {list(perm.shape)}")
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    betas = torch.from_numpy(np.random.default_rng(seed).beta(beta, beta, size=n)).float()
    select = torch.rand(n, generator=generator) <= s_thresh
    betas[~select] = 1.0

    perm = perm.to(voxels.device)
    betas = betas.to(voxels.device)
    select = select.to(voxels.device)
    b = betas.to(voxels.dtype).reshape(-1, *([1] * (voxels.dim() - 1)))
    mixed = torch.where(select.reshape(b.shape), voxels * b + voxels[perm] * (1 - b), voxels)
    return mixed, perm, betas, select


def mixco_per_subject(
    voxel_list: Sequence[Tensor],
    beta: float = 0.15,
    s_thresh: float = 0.5,
    generator: torch.Generator | None = None,
) -> tuple[list[Tensor], Tensor, Tensor, Tensor]:
    """:func:`mixco` within each subject's block (voxel counts differ between subjects).

    Returns ``(mixed_list, perm, betas, select)`` where ``perm``/``betas``/``select`` index the
    batch concatenated in list order: ``perm`` for block ``s`` is its local permutation plus the
    block's row offset. (The original concatenated the local perms without offsets, so every
    subject after the first pointed its mixed rows' soft labels into subject 0's block.)
    """
    mixed_list, perms, betas, selects = [], [], [], []
    offset = 0
    for vox in voxel_list:
        mixed, perm, b, sel = mixco(vox, beta, s_thresh, generator=generator)
        mixed_list.append(mixed)
        perms.append(perm + offset)
        betas.append(b)
        selects.append(sel)
        offset += vox.shape[0]
    return mixed_list, torch.cat(perms), torch.cat(betas), torch.cat(selects)


def mixco_nce(
    preds: Tensor,
    targs: Tensor,
    temp: float = 0.006,
    perm: Tensor | None = None,
    betas: Tensor | None = None,
    select: Tensor | None = None,
    bidirectional: bool = True,
) -> Tensor:
    """BiMixCo: soft cross-entropy of ``preds @ targs.T / temp`` against the MixCo labels.

    Labels: ``diag(betas)`` plus ``(1 - betas[i])`` added at ``(i, perm[i])``; the reverse
    direction uses ``logits.T`` against ``labels.T``, and the two are averaged. ``select`` (if
    given) forces ``betas[~select] = 1``. Without ``perm``, plain InfoNCE with identity labels.
    Inputs: L2-normalized rows (the caller normalizes).

    Differs from the original where ``perm[i] == i``: it *assigned* ``1 - betas[i]`` there,
    overwriting the diagonal (an unmixed row then got an all-zero label row); adding keeps every
    row of the labels summing to 1.
    """
    logits = preds @ targs.T / temp
    if perm is None:
        target = torch.arange(logits.shape[0], device=logits.device)
        loss = F.cross_entropy(logits, target)
        if bidirectional:
            loss = (loss + F.cross_entropy(logits.T, target)) / 2
        return loss
    n = logits.shape[0]
    if betas is None:
        raise ValueError("mixco_nce: perm given without betas")
    betas = betas.to(device=logits.device, dtype=logits.dtype)
    if select is not None:
        betas = torch.where(select.to(logits.device), betas, torch.ones_like(betas))
    labels = torch.diag(betas)
    rows = torch.arange(n, device=logits.device)
    labels = labels.index_put((rows, perm.to(logits.device)), 1 - betas, accumulate=True)
    loss = _soft_ce(logits, labels)
    if bidirectional:
        loss = (loss + _soft_ce(logits.T, labels.T)) / 2
    return loss


def soft_clip_loss(preds: Tensor, targs: Tensor, temp: float) -> Tensor:
    """SoftCLIP: the targets' own similarity softmax is the label distribution.

    ``clip_clip = targs @ targs.T / temp``, ``brain_clip = preds @ targs.T / temp``;
    ``loss1 = -(log_softmax(brain_clip) * softmax(clip_clip)).sum(-1).mean()``, ``loss2`` the same
    on ``brain_clip.T`` / ``clip_clip.T``; returns ``(loss1 + loss2) / 2``. (``clip_clip`` is
    symmetric, so this equals the original, which reused ``clip_clip`` for ``loss2``.)
    Inputs: L2-normalized rows (the caller normalizes).
    """
    clip_clip = targs @ targs.T / temp
    brain_clip = preds @ targs.T / temp
    loss1 = _soft_ce(brain_clip, clip_clip.softmax(dim=-1))
    loss2 = _soft_ce(brain_clip.T, clip_clip.T.softmax(dim=-1))
    return (loss1 + loss2) / 2


def info_nce(preds: Tensor, targs: Tensor, temp: float, negatives: Tensor | None = None) -> Tensor:
    """One-directional InfoNCE (TextAlign): row ``i`` of ``preds`` should pick ``targs[i]``.

    ``logits = preds @ targs.T / temp``; ``negatives`` adds extra columns: ``[N, D]`` shared by
    every row (``preds @ negatives.T / temp``) or ``[B, K, D]`` per row (row ``i`` also scores
    its own ``K`` hard negatives). Cross-entropy with diagonal targets. Inputs: L2-normalized
    rows (the caller normalizes; nothing here does).
    """
    logits = preds @ targs.T / temp
    if negatives is not None:
        if negatives.dim() == 2:
            extra = preds @ negatives.T / temp
        elif negatives.dim() == 3:
            extra = torch.einsum("bd,bkd->bk", preds, negatives) / temp
        else:
            raise ValueError(f"negatives must be [N, D] or [B, K, D], got {list(negatives.shape)}")
        logits = torch.cat([logits, extra], dim=1)
    return F.cross_entropy(logits, torch.arange(preds.shape[0], device=logits.device))


def cosine_temperature(epoch_frac: float, start: float = 0.004, end: float = 0.0075) -> float:
    """Cosine anneal from ``start`` (at 0) to ``end`` (at 1), clamped to [0, 1]:
    ``end + (start - end)/2 * (1 + cos(pi * epoch_frac))``.

    MindEye2: ``utils.cosine_anneal(0.004, 0.0075, n)`` gives ``n`` values on this curve at
    ``i/(n-1)``, with ``n = num_epochs - int(mixup_pct*num_epochs)``, indexed by
    ``epoch - int(mixup_pct*num_epochs)`` (Train.py); see :func:`soft_clip_temperature`.
    """
    frac = min(max(float(epoch_frac), 0.0), 1.0)
    return end + (start - end) / 2 * (1 + math.cos(math.pi * frac))


def soft_clip_temperature(
    epoch: int,
    num_epochs: int,
    mixup_pct: float = 0.33,
    start: float = 0.004,
    end: float = 0.0075,
) -> float:
    """SoftCLIP temperature for ``epoch`` exactly as MindEye2 indexes it: the first SoftCLIP
    epoch ``int(mixup_pct*num_epochs)`` gets ``start``, the last (``num_epochs-1``) gets ``end``.
    A single SoftCLIP epoch gets ``start`` (the original divides 0 by 0 there)."""
    first = int(mixup_pct * num_epochs)
    n = num_epochs - first
    if n <= 1:
        return cosine_temperature(0.0, start, end)
    return cosine_temperature((epoch - first) / (n - 1), start, end)


def clip_loss(a: Tensor, b: Tensor, temp: float | Tensor) -> Tensor:
    """Symmetric InfoNCE (CLIP's loss): row ``i`` of ``a`` should pick row ``i`` of ``b`` and
    vice versa; the mean of the two cross-entropies of ``a @ b.T / temp``. Inputs: L2-normalized
    rows."""
    logits = a @ b.T / temp
    target = torch.arange(a.shape[0], device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
