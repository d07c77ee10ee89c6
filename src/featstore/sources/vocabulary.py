"""An entity vocabulary (e.g. ViECap's Visual Genome objects): one entity per item.

``path`` is a text file with one entity per line (stripped; blank lines skipped) or a ``.json``
list of strings. The id of an entity is the entity string itself, so ids must be unique. ``load``
returns the bare entity; prompt templates are the teacher's business.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..errors import SourceError
from ..hashing import DigestMemo
from ._common import duplicates, text_digest
from .base import Source, register_source


def _entities(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise SourceError(f"cannot read {path} as UTF-8: {e}") from None
    if path.suffix.lower() != ".json":
        return [ln.strip() for ln in text.splitlines() if ln.strip()]
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise SourceError(f"cannot parse {path}: {e}") from None
    if not isinstance(data, list):
        raise SourceError(f"{path}: expected a JSON list of strings, got a {type(data).__name__}.")
    out = []
    for n, item in enumerate(data):
        if not isinstance(item, str):
            raise SourceError(f"{path}: item {n} is {item!r}, not a string.")
        if not item.strip():
            raise SourceError(f"{path}: item {n} is an empty string; remove it.")
        out.append(item.strip())
    return out


@register_source
class Vocabulary(Source):
    kind = "vocabulary"
    modality = "text"

    def __init__(self, path: str | os.PathLike):
        path = Path(path)
        if not path.is_file():
            raise SourceError(f"vocabulary {path} does not exist.")
        entities = _entities(path)
        if not entities:
            raise SourceError(f"{path} holds no entities.")
        dup = duplicates(entities)
        if dup:
            raise SourceError(
                f"{path}: {len(dup)} entities repeat (first: {dup[:5]}); an entity is its own id, "
                f"so each may appear once."
            )
        super().__init__(path, np.asarray(entities, dtype=object))

    def load(self, i: int) -> str:
        return str(self.ids[i])

    def content_digest(self, memo: DigestMemo | None) -> str:
        return text_digest(self.ids, self.ids.tolist(), {})
