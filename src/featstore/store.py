"""The store root: where entries live, how they are found, listed and removed.

Layout (see docs/store-format.md)::

    <root>/<key>/            one Zarr v3 group per cache entry (arrays + manifest attributes)
    <root>/_progress/<key>/  per-chunk commit records while an extraction is in progress
    <root>/_locks/<key>.lock the writer's lock (owner pid, host, start time)
    <root>/digests.jsonl     memo of content digests by (path, size, mtime, ctime, inode)
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import StoreError
from .hashing import DigestMemo
from .lock import EntryLock

STORE_ENV = "FEATSTORE_DIR"
MANIFEST_ATTR = "featstore"


def default_store_root() -> Path:
    """``$FEATSTORE_DIR`` if set, else the user cache dir (``~/.cache/featstore`` on Linux)."""
    if env := os.environ.get(STORE_ENV):
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("featstore", appauthor=False))


def read_manifest(entry_path: Path) -> dict[str, Any] | None:
    """The featstore manifest from an entry's ``zarr.json``, or None if it is not an entry."""
    try:
        meta = json.loads((entry_path / "zarr.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return meta.get("attributes", {}).get(MANIFEST_ATTR)


@dataclass(frozen=True)
class EntrySummary:
    key: str
    path: Path
    manifest: dict[str, Any]

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())


class Store:
    """A directory of cache entries addressed by key."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root).expanduser() if root is not None else default_store_root()

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    def ensure_writable(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".write-probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise StoreError(
                f"the store {self.root} is not writable ({e.strerror}). Pass a writable directory "
                f"with --store or set {STORE_ENV}."
            ) from None

    def entry_path(self, key: str) -> Path:
        return self.root / key

    def lock(self, name: str, what: str | None = None, doing: str = "written") -> EntryLock:
        return EntryLock(self.root / "_locks" / f"{name}.lock", what or f"entry {name}", doing)

    def digest_memo(self, trust: bool = True) -> DigestMemo:
        """The memo of source digests; ``trust=False`` re-hashes everything (and records it)."""
        writable = os.access(self.root, os.W_OK) if self.root.exists() else False
        return DigestMemo(self.root / "digests.jsonl" if writable else None, trust=trust)

    def entries(self) -> list[EntrySummary]:
        if not self.root.is_dir():
            return []
        found = []
        for child in sorted(self.root.iterdir()):
            if child.is_dir() and (manifest := read_manifest(child)) is not None:
                found.append(EntrySummary(child.name, child, manifest))
        return found

    def resolve(self, key_or_path: str) -> EntrySummary:
        """An entry by full key, unique key prefix (like git), or path to the entry directory."""
        as_path = Path(key_or_path).expanduser()
        if as_path.is_dir() and (manifest := read_manifest(as_path)) is not None:
            return EntrySummary(as_path.name, as_path, manifest)
        matches = [e for e in self.entries() if e.key.startswith(key_or_path)]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise StoreError(
                f"no entry {key_or_path!r} in the store {self.root}. Run `featstore ls` to see "
                f"the entries, or pass --store for another store."
            )
        keys = ", ".join(e.key for e in matches[:5])
        raise StoreError(
            f"{key_or_path!r} matches {len(matches)} entries ({keys}); use more of the key."
        )

    def remove(self, key_or_path: str) -> EntrySummary:
        entry = self.resolve(key_or_path)
        with self.lock(entry.key):
            shutil.rmtree(entry.path)
            shutil.rmtree(self.root / "_progress" / entry.key, ignore_errors=True)
        return entry
