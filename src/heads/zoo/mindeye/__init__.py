"""MindEye2 (+ TextAlign) on NSD: ``heads train mindeye`` (docs/heads/mindeye.md)."""

from .head import MindEye

__all__ = ["MindEye"]
