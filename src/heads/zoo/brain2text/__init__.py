"""brain2text: t15 intracortical speech decoding, ``heads train brain2text``
(docs/heads/brain2text.md)."""

from .head import Brain2Text

__all__ = ["Brain2Text"]
