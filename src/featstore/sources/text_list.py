"""A list of texts with ids: JSON, JSONL, CSV/TSV or TXT.

- TXT: one text per line; the id is the line number (0-based).
- JSON: a list of strings (id = position), a list of objects, or an object ``{id: text}``.
- JSONL / CSV / TSV: records with an id field and a text field (``id`` and ``text`` by default).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SourceError
from ..hashing import DigestMemo
from ._common import duplicates
from .base import Source, register_source

SUFFIXES = {".txt", ".json", ".jsonl", ".csv", ".tsv"}


def _records(path: Path, id_field: str, text_field: str) -> list[tuple[Any, Any]]:
    suffix = path.suffix.lower()
    text = path.read_text(encoding="utf-8")
    if suffix == ".txt":
        return list(enumerate(text.splitlines()))
    if suffix == ".json":
        data = json.loads(text)
        if isinstance(data, dict):
            return list(data.items())
        if isinstance(data, list) and all(isinstance(x, str) for x in data):
            return list(enumerate(data))
        if isinstance(data, list):
            return [_pick(r, id_field, text_field, f"item {i}") for i, r in enumerate(data)]
        raise SourceError(f"{path}: expected a JSON list or object, got {type(data).__name__}")
    if suffix == ".jsonl":
        out = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                out.append(_pick(json.loads(line), id_field, text_field, f"line {n}"))
        return out
    if suffix in (".csv", ".tsv"):
        reader = csv.DictReader(text.splitlines(), delimiter="\t" if suffix == ".tsv" else ",")
        return [_pick(r, id_field, text_field, f"row {n}") for n, r in enumerate(reader, 2)]
    raise SourceError(f"{path}: unsupported text list format; use {', '.join(sorted(SUFFIXES))}")


def _pick(record: Any, id_field: str, text_field: str, where: str) -> tuple[Any, Any]:
    if not isinstance(record, dict) or id_field not in record or text_field not in record:
        raise SourceError(
            f"{where} lacks the fields {id_field!r} and {text_field!r}; set --id-field and "
            f"--text-field to the names your file uses."
        )
    return record[id_field], record[text_field]


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return "list" if isinstance(value, list) else "object"


@register_source
class TextList(Source):
    kind = "text-list"
    modality = "text"

    @classmethod
    def detect(cls, path: Path) -> int:
        return 5 if path.suffix.lower() in SUFFIXES else 0

    def __init__(self, path: str | os.PathLike, id_field: str = "id", text_field: str = "text"):
        path = Path(path)
        if not path.is_file():
            raise SourceError(f"text list {path} does not exist.")
        try:
            records = _records(path, id_field, text_field)
        except (json.JSONDecodeError, UnicodeDecodeError, csv.Error) as e:
            raise SourceError(f"cannot parse {path}: {e}") from None
        if not records:
            raise SourceError(f"{path} holds no texts.")
        ids = [r[0] for r in records]
        for item_id, text in records:
            if not isinstance(text, str):
                what = "null" if text is None else f"a {_json_kind(text)}"
                raise SourceError(
                    f"{path}: the text of id {item_id!r} is {json.dumps(text)} ({what}), not "
                    f'text. Quote it in the file ("{text}") or fix the field name.'
                )
            if not text.strip():
                raise SourceError(
                    f"{path}: the text of id {item_id!r} is empty; remove or fill it."
                )
        dup = duplicates(map(str, ids))
        if dup:
            raise SourceError(f"{path}: ids repeat (first: {dup[:5]}); each id must be unique.")
        if all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            id_arr = np.asarray(ids, dtype=np.int64)
        else:
            id_arr = np.asarray([str(i) for i in ids], dtype=object)
        self.texts = [r[1] for r in records]
        super().__init__(path, id_arr)

    def load(self, i: int) -> str:
        return self.texts[int(self.positions[i])]

    def content_digest(self, memo: DigestMemo | None) -> str:
        h = hashlib.sha256()
        for i in range(len(self)):
            h.update(self.load(i).encode() + b"\0")
        return h.hexdigest()
