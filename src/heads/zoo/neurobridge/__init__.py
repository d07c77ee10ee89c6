"""NeuroBridge on TVSD: ``heads train neurobridge`` (docs/heads/neurobridge.md)."""

from . import commands
from .head import NeuroBridge

__all__ = ["NeuroBridge", "commands"]
