"""Aligning two ragged sequences of embeddings in time: per-row linear resampling to a common
length and a masked cosine (or MSE) loss over the valid frames.

Brain embeddings (one per 80 ms patch) and cached audio frames (one per 40 ms) of the same
sentence differ in length. Each row's valid frames are resampled, as ``F.interpolate(mode=
"linear", align_corners=False)`` would resample that row alone, to a common length, so padding
never leaks into a trial's frames and each trial keeps its own time scale.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

COMMON_LENGTHS = ("shorter", "longer", "first", "second")


def resample(x: Tensor, lengths: Tensor, out_lengths: Tensor, out_max: int | None = None) -> Tensor:
    """Row ``b``'s first ``lengths[b]`` frames of ``x [B, T, D]`` linearly resampled to
    ``out_lengths[b]`` frames (``F.interpolate`` linear, ``align_corners=False``); the output
    ``[B, out_max, D]`` is zero past each row's length. Differentiable in ``x``."""
    lengths = lengths.to(x.device, torch.int64)
    out_lengths = out_lengths.to(x.device, torch.int64)
    out_max = int(out_lengths.max()) if out_max is None else out_max
    j = torch.arange(out_max, device=x.device, dtype=torch.float64).unsqueeze(0)  # [1, L]
    scale = lengths.double().unsqueeze(1) / out_lengths.clamp_min(1).double().unsqueeze(1)
    src = ((j + 0.5) * scale - 0.5).clamp_min(0)
    i0 = src.floor().long()
    last = (lengths - 1).clamp_min(0).unsqueeze(1)
    i0 = torch.minimum(i0, last)
    i1 = torch.minimum(i0 + 1, last)
    w1 = (src - i0.double()).clamp(0, 1).to(x.dtype).unsqueeze(-1)
    d = x.shape[-1]
    a = x.gather(1, i0.unsqueeze(-1).expand(-1, -1, d))
    b = x.gather(1, i1.unsqueeze(-1).expand(-1, -1, d))
    out = a * (1 - w1) + b * w1
    valid = (j < out_lengths.unsqueeze(1)).unsqueeze(-1)
    return out * valid.to(out.dtype)


def common_lengths(first: Tensor, second: Tensor, mode: str = "shorter") -> Tensor:
    """Per-row target length: the ``shorter`` (the seed's choice: no extrapolation), ``longer``,
    or that of the ``first``/``second`` sequence."""
    if mode == "shorter":
        return torch.minimum(first, second)
    if mode == "longer":
        return torch.maximum(first, second)
    if mode == "first":
        return first.clone()
    if mode == "second":
        return second.clone()
    raise ValueError(f"common length {mode!r}: use one of {', '.join(COMMON_LENGTHS)}")


def frame_loss(a: Tensor, b: Tensor, kind: str = "cosine") -> Tensor:
    """Per-frame distance ``[B, L]``: ``1 - cos(a, b)`` or the mean squared difference."""
    if kind == "cosine":
        return 1 - F.cosine_similarity(a.float(), b.float(), dim=-1, eps=1e-8)
    if kind == "mse":
        return ((a.float() - b.float()) ** 2).mean(-1)
    raise ValueError(f"alignment loss {kind!r}: use cosine or mse")


def aligned_loss(
    x: Tensor,
    x_lengths: Tensor,
    y: Tensor,
    y_lengths: Tensor,
    mode: str = "shorter",
    kind: str = "cosine",
) -> Tensor:
    """Resample each row of ``x`` and ``y`` to its common length, then average
    :func:`frame_loss` over every valid frame of the batch (0 when there is none)."""
    target = common_lengths(x_lengths.to(y_lengths.device), y_lengths, mode).to(x.device)
    out_max = max(int(target.max()), 1) if len(target) else 1
    xs = resample(x, x_lengths, target, out_max)
    ys = resample(y.to(x.dtype), y_lengths, target, out_max)
    mask = torch.arange(out_max, device=x.device).unsqueeze(0) < target.unsqueeze(1)
    per_frame = frame_loss(xs, ys, kind)
    return (per_frame * mask).sum() / mask.sum().clamp_min(1)


def batch_aligned_loss(x: Tensor, y: Tensor, y_lengths: Tensor, kind: str = "mse") -> Tensor:
    """The seed's arithmetic (``Brain2TextModel.forward``): both *padded* batches interpolated to
    ``min(x.shape[1], y.shape[1])`` when they differ, the mask taken from ``y``'s lengths scaled
    by the same factor (``(len * L / T_y).long()``), then the frame loss averaged over masked
    frames (``sum / (count + 1e-8)``). Kept to reproduce the seed's numbers; padding leaks in."""
    length = min(x.shape[1], y.shape[1])
    y_lengths = y_lengths.to(x.device)
    if x.shape[1] != y.shape[1]:
        xs = F.interpolate(x.transpose(1, 2), size=length, mode="linear", align_corners=False)
        ys = F.interpolate(
            y.to(x.dtype).transpose(1, 2), size=length, mode="linear", align_corners=False
        )
        xs, ys = xs.transpose(1, 2), ys.transpose(1, 2)
        valid = (y_lengths * length / y.shape[1]).long()
    else:
        xs, ys, valid = x, y.to(x.dtype), y_lengths
    mask = (torch.arange(length, device=x.device).unsqueeze(0) < valid.unsqueeze(1)).float()
    return (frame_loss(xs, ys, kind) * mask).sum() / (mask.sum() + 1e-8)
