"""Source registry: ``open_source(path)`` picks the reader from the path, or ``kind=`` forces it.

A source kind is one module of this package: a ``Source`` subclass decorated with
``@register_source``, which names itself by ``kind`` and says which paths it recognises
(``detect``). Every module here is imported with the package, so adding a reader is adding one
file.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from pathlib import Path
from typing import Any

from ..errors import SourceError
from .base import SOURCES, Source, read_ids, register_source

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_") and _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")


def detect_kind(path: Path) -> str:
    """The reader for a path, from the original datasets' file names; --source-kind overrides."""
    scores = {kind: cls.detect(path) for kind, cls in SOURCES.items()}
    kind = max(scores, key=scores.__getitem__)
    if scores[kind] > 0:
        return kind
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


def __getattr__(name: str) -> type[Source]:
    """The reader classes by name (``from featstore.sources import NsdImages``)."""
    for cls in SOURCES.values():
        if cls.__name__ == name:
            return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["SOURCES", "Source", "detect_kind", "open_source", "read_ids", "register_source"]
