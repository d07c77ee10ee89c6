"""Helpers shared by the metadata-rich sources (t15, COCO captions, TVSD, vocabulary)."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np


def duplicates(values: Iterable[Any]) -> list[Any]:
    """The values that occur more than once, in order of first repetition."""
    counts = Counter(values)
    return [v for v, c in counts.items() if c > 1]


def as_str(value: Any) -> str:
    """An HDF5 attribute (str, bytes, numpy scalar or 1-element array) as a Python str."""
    if isinstance(value, np.ndarray):
        value = value.reshape(-1)[0] if value.size == 1 else value.tolist()
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def as_int(value: Any, default: int = -1) -> int:
    if value is None:
        return default
    try:
        return int(np.asarray(value).reshape(-1)[0])
    except (ValueError, TypeError, IndexError):
        return default


def text_digest(ids: np.ndarray, texts: Iterable[str], columns: dict[str, np.ndarray]) -> str:
    """sha256 over each selected item's id, text and metadata values, in item order. Every field
    is length-prefixed, so no text can be confused with a field boundary."""
    h = hashlib.sha256()

    def put(value: Any) -> None:
        data = str(value).encode("utf-8", errors="surrogatepass")
        h.update(len(data).to_bytes(8, "little") + data)

    names = sorted(columns)
    put(len(names))
    for name in names:
        put(name)
    cols = [np.asarray(columns[n]).tolist() for n in names]
    for j, (item_id, text) in enumerate(zip(ids.tolist(), texts, strict=True)):
        put(item_id)
        put(text)
        for col in cols:
            put(col[j])
    return h.hexdigest()
