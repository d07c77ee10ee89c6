"""Sequence losses: CTC, masked regression and masked language-model cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

CTC_REDUCTIONS = ("mean", "sequence_mean", "none")


def ctc_loss(
    logits: Tensor,
    input_lengths: Tensor,
    targets: Tensor,
    target_lengths: Tensor,
    blank: int = 0,
    reduction: str = "mean",
    zero_infinity: bool = True,
) -> Tensor:
    """CTC over ``logits [B, T, C]`` (unnormalized) against padded ``targets [B, S]``, computed
    in fp32. ``reduction``: ``"mean"`` (torch's: each sequence's loss divided by its target
    length, then the batch mean), ``"sequence_mean"`` (the batch mean of the sequences' plain
    losses, as the t15 GRU baseline trains) or ``"none"`` (one loss per sequence).
    ``zero_infinity`` counts impossible alignments (input shorter than its target) as zero."""
    if reduction not in CTC_REDUCTIONS:
        raise ValueError(f"ctc_loss reduction {reduction!r}: use one of {CTC_REDUCTIONS}")
    log_probs = logits.float().log_softmax(-1).transpose(0, 1)  # [T, B, C]
    losses = F.ctc_loss(
        log_probs,
        targets,
        input_lengths,
        target_lengths,
        blank=blank,
        reduction="mean" if reduction == "mean" else "none",
        zero_infinity=zero_infinity,
    )
    return losses.mean() if reduction == "sequence_mean" else losses


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean squared error over the positions where ``mask`` is true (broadcast over trailing
    dims); 0 when nothing is masked."""
    mask = mask.to(pred.dtype)
    while mask.dim() < pred.dim():
        mask = mask.unsqueeze(-1)
    mask = mask.expand_as(pred)
    return ((pred - target) ** 2 * mask).sum() / mask.sum().clamp_min(1)


def masked_lm_loss(logits: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    """Next-token cross-entropy: ``logits [B, L, V]`` at position ``t`` predict ``labels[:, t+1]``;
    summed over positions whose ``mask[:, t+1]`` is set, divided by their count (minimind's
    ``(loss * loss_mask).sum() / loss_mask.sum()``)."""
    logits, labels, mask = logits[:, :-1], labels[:, 1:], mask[:, 1:].to(torch.float32)
    loss = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), reduction="none"
    ).view_as(mask)
    return (loss * mask).sum() / mask.sum().clamp_min(1)
