"""minimind-v on cached ViT-B/16 patch tokens: ``heads train vlm``, ``heads chat vlm``,
``heads export vlm`` (docs/heads/vlm.md)."""

from . import commands  # noqa: F401  (registers `heads chat` and `heads export`)
from .head import Vlm

__all__ = ["Vlm"]
