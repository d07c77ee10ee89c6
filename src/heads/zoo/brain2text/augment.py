"""The baseline's input transforms, on the training device: white noise, constant offset, a
random cut of leading steps (training only), and Gaussian smoothing over time (always).

Order and values follow nejm-brain-to-text's ``transform_data``: noise ``randn(B,T,C) * 1.0``,
offset ``randn(B,1,C) * 0.2``, ``cut = numpy randint(0, 3)`` once per batch (so 0, 1 or 2 steps;
the trials' lengths shrink by ``cut``), then a depthwise convolution with the 9-tap kernel below,
zero-padded to the same length.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


@lru_cache(maxsize=8)
def gaussian_kernel(
    std: float = 2.0, size: int = 100, threshold: float = 0.01
) -> tuple[float, ...]:
    """The baseline's smoothing taps: ``scipy.ndimage.gaussian_filter1d(impulse, std)`` of a
    float32 impulse of length ``size`` (a Gaussian truncated at 4 std, normalised), the taps above
    ``threshold`` kept and renormalised: 9 taps for ``std=2`` (0.0276 ... 0.2042 ... 0.0276). With
    the impulse far from both edges the filter's output is its own weights, so no scipy."""
    radius = int(4.0 * std + 0.5)
    if size // 2 - radius < 0 or size // 2 + radius >= size:
        raise ValueError(f"smoothing kernel size {size} is too short for std {std}")
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    weights = np.exp(-0.5 * (x / std) ** 2)
    weights = (weights / weights.sum()).astype(np.float32)
    kept = weights[weights > threshold]
    return tuple((kept / kept.sum()).tolist())


def smooth(x: Tensor, std: float = 2.0, size: int = 100) -> Tensor:
    """Gaussian smoothing of ``[B, T, C]`` along time, per channel, ``padding="same"``."""
    taps = torch.tensor(gaussian_kernel(std, size), dtype=x.dtype, device=x.device)
    channels = x.shape[-1]
    kernel = taps.view(1, 1, -1).repeat(channels, 1, 1)
    return F.conv1d(x.transpose(1, 2), kernel, padding="same", groups=channels).transpose(1, 2)


def augment(
    x: Tensor,
    n_time_steps: Tensor,
    white_noise_std: float = 1.0,
    constant_offset_std: float = 0.2,
    random_cut: int = 3,
    rng: np.random.RandomState | None = None,
) -> tuple[Tensor, Tensor]:
    """Training noise and the random cut (before smoothing). ``random_cut`` is numpy's exclusive
    upper bound, as in the baseline config (3 → cut 0, 1 or 2); ``rng`` defaults to numpy's global
    RNG, which the training loop seeds and checkpoints."""
    b, _, c = x.shape
    if white_noise_std > 0:
        x = x + torch.randn_like(x) * white_noise_std
    if constant_offset_std > 0:
        x = x + torch.randn(b, 1, c, device=x.device, dtype=x.dtype) * constant_offset_std
    if random_cut > 0:
        cut = int((rng or np.random).randint(0, random_cut))
        x = x[:, cut:]
        n_time_steps = n_time_steps - cut
    return x, n_time_steps


def smoothing_width(std: float = 2.0, size: int = 100) -> int:
    """Number of taps (9 for the default std 2)."""
    return len(gaussian_kernel(std, size))
