"""heads: stage two — small trainable heads trained against featstore entries.

>>> from heads import get_head, train
>>> spec = get_head("mindeye")
"""

from .errors import HeadsError
from .registry import HeadSpec, build_head, get_head, list_heads, register_head
from .train import Head, Progress, train

__all__ = ["Head", "HeadSpec", "HeadsError", "Progress", "build_head", "get_head", "list_heads",
           "register_head", "train"]  # fmt: skip
