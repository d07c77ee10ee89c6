"""A folder of images (jpg, png, webp), recursively; an image's id is its relative path."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import SourceError
from ..hashing import DigestMemo, file_digest
from .base import Source, register_source

EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp"}


@register_source
class ImageFolder(Source):
    kind = "image-folder"
    modality = "image"

    @classmethod
    def detect(cls, path: Path) -> int:
        return 1 if path.is_dir() else 0  # any folder, when no other reader claims it

    def __init__(self, path: str | os.PathLike):
        path = Path(path)
        if not path.is_dir():
            raise SourceError(f"image folder {path} does not exist.")
        files = sorted(
            p.relative_to(path).as_posix()
            for p in path.rglob("*")
            if p.is_file() and p.suffix.lower() in EXTENSIONS
        )
        if not files:
            raise SourceError(f"{path} holds no images ({', '.join(sorted(EXTENSIONS))}).")
        super().__init__(path, np.asarray(files, dtype=object))

    def load(self, i: int) -> Image.Image:
        rel = self.ids[i]
        try:
            with Image.open(self.path / rel) as im:
                return im.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise SourceError(f"cannot decode image {self.path / rel}: {e}") from None

    def content_digest(self, memo: DigestMemo | None) -> str:
        h = hashlib.sha256()
        for rel in self.ids.tolist():
            h.update(rel.encode() + b"\0" + file_digest(self.path / rel, memo).encode())
        return h.hexdigest()
