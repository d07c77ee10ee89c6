"""What a source is: an ordered set of items with stable ids and a content fingerprint."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ..errors import SourceError
from ..hashing import DigestMemo, hash_ids

SOURCES: dict[str, type[Source]] = {}
S = TypeVar("S", bound="type[Source]")


def register_source(cls: S) -> S:
    """Class decorator: make a ``Source`` subclass available as ``--source-kind cls.kind``."""
    if cls.kind in SOURCES and SOURCES[cls.kind] is not cls:
        raise ValueError(f"source kind {cls.kind!r} is registered twice")
    SOURCES[cls.kind] = cls
    return cls


class Source:
    """Items to extract, in a fixed order.

    ``load(i)`` returns item i (PIL image, float tensor ``[3,H,W]`` in [0,1], or a string). It runs
    in DataLoader workers: sources are picklable and open their files lazily in each process.
    """

    kind: str = "source"
    modality: str = "image"

    @classmethod
    def detect(cls, path: Path) -> int:
        """How surely ``path`` is this kind of source, from the original datasets' file names:
        0 means "not mine"; the registered kind with the highest score reads it when
        ``--source-kind`` is not given."""
        return 0

    def __init__(self, path: Path, ids: np.ndarray, positions: np.ndarray | None = None):
        self.path = path
        self.ids = ids
        # Positions of the selected items in the underlying collection (identity if unselected).
        self.positions = np.arange(len(ids)) if positions is None else positions

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, i: int) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        """Release file handles opened by ``load`` in this process."""

    def content_digest(self, memo: DigestMemo | None) -> str:
        raise NotImplementedError

    def fingerprint(self, memo: DigestMemo | None = None) -> dict[str, Any]:
        """Cache-key input: the kind, the ids in order and a hash of the selected content."""
        return {"kind": self.kind, "ids": hash_ids(self.ids), "content": self.content_digest(memo)}

    def columns(self) -> dict[str, np.ndarray]:
        """Per-item metadata stored beside ``ids`` (e.g. the image id of each caption), in item
        order. Subclasses keep full-length arrays in ``self._columns``; selection slices them."""
        cols = getattr(self, "_columns", {})
        return {name: np.asarray(values)[self.positions] for name, values in cols.items()}

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": str(self.path), "n": len(self)}

    # -- selection ------------------------------------------------------------------------------
    def select(self, ids: Any = None, row_range: str | None = None) -> Source:
        """Keep the items whose ids are listed (a list or an ids file) and/or a ``start:stop``
        range of positions. Unknown or duplicated ids are errors."""
        keep = np.arange(len(self))
        if ids is not None:
            wanted = read_ids(ids) if isinstance(ids, (str, os.PathLike)) else np.asarray(ids)
            keep = self._positions_of(wanted)
        if row_range is not None:
            start, stop = parse_range(row_range, len(keep))
            keep = keep[start:stop]
        return self._subset(keep)

    def _positions_of(self, wanted: np.ndarray) -> np.ndarray:
        values, counts = np.unique(wanted.astype(str) if wanted.dtype == object else wanted,
                                   return_counts=True)  # fmt: skip
        dup = values[counts > 1]
        if len(dup):
            raise SourceError(
                f"{len(dup)} ids are listed more than once (first: {dup[:5].tolist()}). "
                f"Each id may appear once."
            )
        numeric = self.ids.dtype.kind in "iu"
        if wanted.dtype.kind in "fb":
            wanted = whole_numbers(wanted, "the ids file")
        if numeric and wanted.dtype.kind not in "iu":
            try:
                wanted = wanted.astype(np.int64)
            except ValueError:
                raise SourceError("ids must be integers for this source") from None
        index = {k: i for i, k in enumerate(self.ids.tolist())}
        keys = wanted.tolist()
        missing = [k for k in keys if k not in index]
        if missing:
            lo, hi = (self.ids.min(), self.ids.max()) if numeric and len(self.ids) else ("", "")
            extra = f" Valid ids are {lo}..{hi}." if numeric else ""
            raise SourceError(
                f"{len(missing)} of {len(keys)} requested ids are not in {self.path} "
                f"(first: {missing[:5]}).{extra}"
            )
        return np.array([index[k] for k in keys], dtype=np.int64)

    def _subset(self, keep: np.ndarray) -> Source:
        import copy

        sub = copy.copy(self)
        sub.ids = self.ids[keep]
        sub.positions = self.positions[keep]
        return sub


def read_ids(path: str | os.PathLike) -> np.ndarray:
    """Ids from a ``.npy`` array, a JSON list, or a text file with one id per line."""
    p = Path(path)
    if not p.is_file():
        raise SourceError(f"ids file {p} does not exist.")
    try:
        if p.suffix == ".npy":
            arr = np.load(p, allow_pickle=False)
        elif p.suffix == ".json":
            arr = np.asarray(json.loads(p.read_text()))
        else:
            lines = [ln.strip() for ln in p.read_text().splitlines() if ln.strip()]
            try:
                arr = np.asarray([int(x) for x in lines], dtype=np.int64)
            except ValueError:
                arr = np.asarray(lines, dtype=object)
    except (ValueError, json.JSONDecodeError) as e:
        raise SourceError(f"cannot read ids from {p}: {e}") from None
    if arr.ndim != 1:
        raise SourceError(f"ids file {p} must hold a flat list, got shape {arr.shape}")
    if not len(arr):
        raise SourceError(f"ids file {p} holds no ids; list the ids to extract, one per line.")
    return arr


def whole_numbers(ids: np.ndarray, where: str) -> np.ndarray:
    """Float ids that are whole numbers (``3.0``) as int64; anything fractional is an error,
    never silently truncated."""
    if ids.dtype.kind == "b" or (ids.dtype.kind == "f" and not np.isfinite(ids).all()):
        raise SourceError(f"ids must be whole numbers; {where} holds {ids[:3].tolist()}.")
    if ids.dtype.kind == "f":
        fractional = ids[ids != np.floor(ids)]
        if len(fractional):
            raise SourceError(
                f"ids must be whole numbers; {where} holds {fractional[0]!r} "
                f"({len(fractional)} fractional in all)."
            )
        return ids.astype(np.int64)
    return ids


def parse_range(text: str, n: int) -> tuple[int, int]:
    try:
        a, b = text.split(":")
        start = int(a) if a else 0
        stop = int(b) if b else n
    except ValueError:
        raise SourceError(f"range {text!r} must look like START:STOP, e.g. 0:1000") from None
    if not 0 <= start < stop <= n:
        raise SourceError(f"range {text!r} is outside 0:{n} or empty")
    return start, stop


def sha256_of(parts: list[bytes]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    return h.hexdigest()
