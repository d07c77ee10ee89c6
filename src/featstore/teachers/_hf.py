"""Loading transformers checkpoints for teacher families, with the weights' cache-key identity."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import FeatstoreError
from ..hashing import directory_digest
from .base import TeacherSpec


def load_pretrained(spec: TeacherSpec, weights: str, *classes: Any) -> tuple[list, dict[str, Any]]:
    """``cls.from_pretrained`` for each class (model, tokenizer/processor, …) from the spec's repo
    (``weights="pretrained"``) or a local copy (a path), and the identity to key them by: the
    hub repo and commit, or the sha256 of a local copy's files (never its path)."""
    location = spec.config.get("repo") if weights == "pretrained" else weights
    if location is None:
        raise FeatstoreError(f"teacher {spec.name} has no pretrained weights; use --weights random")
    try:
        loaded = [cls.from_pretrained(location) for cls in classes]
    except OSError as e:
        raise FeatstoreError(
            f"cannot load {location!r}: {e}. Download it once with network access "
            f"(it is then cached), or pass --weights /path/to/a/local/copy."
        ) from None
    if not Path(location).exists():  # the spec's repo, or another hub repo id given as --weights
        revision = getattr(loaded[0].config, "_commit_hash", None)
        kind = "pretrained" if weights == "pretrained" else "hub"
        return loaded, {"kind": kind, "repo": location, "revision": revision}
    return loaded, {"kind": "path", "sha256": directory_digest(Path(location))}
