"""Losses shared by heads. Pure functions of tensors; the caller normalizes and masks."""

from .contrastive import (
    clip_loss,
    cosine_temperature,
    info_nce,
    mixco,
    mixco_nce,
    mixco_per_subject,
    soft_clip_loss,
    soft_clip_temperature,
)
from .sequence import ctc_loss, masked_lm_loss, masked_mse

__all__ = [
    "clip_loss",
    "cosine_temperature",
    "ctc_loss",
    "info_nce",
    "masked_lm_loss",
    "masked_mse",
    "mixco",
    "mixco_nce",
    "mixco_per_subject",
    "soft_clip_loss",
    "soft_clip_temperature",
]
