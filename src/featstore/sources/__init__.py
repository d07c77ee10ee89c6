"""Source registry: ``open_source(path)`` picks the reader from the path, or ``kind=`` forces it."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import SourceError
from .base import Source, read_ids
from .coco_captions import CocoCaptions
from .image_folder import ImageFolder
from .nsd import NsdImages
from .t15 import T15Sentences
from .text_list import SUFFIXES as TEXT_SUFFIXES
from .text_list import TextList
from .tvsd import TvsdImages
from .vocabulary import Vocabulary

SOURCES: dict[str, Callable[..., Source]] = {
    "nsd-images": NsdImages,
    "image-folder": ImageFolder,
    "text-list": TextList,
    "t15-sentences": T15Sentences,
    "coco-captions": CocoCaptions,
    "tvsd-images": TvsdImages,
    "vocabulary": Vocabulary,
}


def detect_kind(path: Path) -> str:
    """The reader for a path, from the original datasets' file names; --source-kind overrides."""
    name = path.name.lower()
    if path.is_dir():
        if any(path.rglob("data_*.hdf5")):
            return "t15-sentences"
        if any(path.glob("captions_*.json")):
            return "coco-captions"
        return "image-folder"
    suffix = path.suffix.lower()
    if suffix == ".mat":
        return "tvsd-images"
    if suffix in (".h5", ".hdf5"):
        return "t15-sentences" if name.startswith("data_") else "nsd-images"
    if suffix == ".json" and (name.startswith("captions_") or name == "dataset_coco.json"):
        return "coco-captions"
    if suffix in TEXT_SUFFIXES:
        return "text-list"
    if not path.exists():
        raise SourceError(f"source {path} does not exist.")
    raise SourceError(
        f"cannot tell what kind of source {path} is; pass --source-kind ({', '.join(SOURCES)})."
    )


def open_source(
    path: str | os.PathLike,
    kind: str | None = None,
    ids: Any = None,
    row_range: str | None = None,
    **options: Any,
) -> Source:
    """Open a source and optionally select items by id list/file or ``start:stop`` range."""
    path = Path(path).expanduser()
    kind = kind or detect_kind(path)
    if kind not in SOURCES:
        raise SourceError(f"unknown source kind {kind!r}; known: {', '.join(SOURCES)}")
    try:
        source = SOURCES[kind](path, **options)
    except TypeError as e:  # an option this reader does not take
        raise SourceError(f"source kind {kind!r}: {e}") from None
    if ids is not None or row_range is not None:
        source = source.select(ids=ids, row_range=row_range)
    return source


__all__ = [
    "SOURCES", "CocoCaptions", "ImageFolder", "NsdImages", "Source", "T15Sentences", "TextList",
    "TvsdImages", "Vocabulary", "detect_kind", "open_source", "read_ids",
]  # fmt: skip
