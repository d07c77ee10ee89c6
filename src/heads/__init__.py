"""heads: stage two — small trainable heads trained against featstore entries.

The training core and the first head (MindEye2) arrive with the stage-two issue; this package
holds the registry they plug into.
"""

from __future__ import annotations

_HEADS: dict[str, object] = {}


def list_heads() -> list[str]:
    return sorted(_HEADS)
