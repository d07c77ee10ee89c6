"""ViECap on COCO captions: ``heads train viecap`` (docs/heads/viecap.md)."""

from . import commands  # noqa: F401  (registers `heads caption`)
from .head import ViECap

__all__ = ["ViECap"]
