"""Loading transformers checkpoints for teacher families, with the weights' cache-key identity."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import FeatstoreError
from ..hashing import directory_digest
from .base import TeacherSpec, Weights


def load_pretrained(
    spec: TeacherSpec, weights: Weights, *classes: Any
) -> tuple[list, dict[str, Any]]:
    """``cls.from_pretrained`` for each class (model, tokenizer/processor, …) from the spec's repo
    (pretrained), another hub repo, or a local copy (a path), and the identity to key them by:
    the hub repo and commit, or the sha256 of a local copy's files (never its path)."""
    location = spec.config["repo"] if weights.kind == "pretrained" else weights.location
    try:
        loaded = [cls.from_pretrained(location) for cls in classes]
    except OSError as e:
        raise FeatstoreError(
            f"cannot load {location!r}: {e}. Download it once with network access "
            f"(it is then cached), or pass --weights /path/to/a/local/copy."
        ) from None
    if weights.kind != "path":  # the spec's repo, or another hub repo id given as --weights
        revision = getattr(loaded[0].config, "_commit_hash", None)
        return loaded, {"kind": weights.kind, "repo": location, "revision": revision}
    return loaded, {"kind": "path", "sha256": directory_digest(Path(location))}
