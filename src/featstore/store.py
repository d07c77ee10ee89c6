"""The store root: where entries live, how they are found, listed and removed.

The layout (entries, ``_progress/``, ``_locks/``, the digest memo) is defined in ``format``.
An entry whose metadata cannot be read is still listed, with what is wrong, so it can be
inspected and removed rather than silently vanishing.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import StoreError
from .format import (
    MEMO_FILE,
    FormatError,
    Manifest,
    load_manifest,
    lock_file,
    looks_like_entry,
    progress_dir,
    raw_manifest,
)
from .hashing import DigestMemo
from .lock import EntryLock

STORE_ENV = "FEATSTORE_DIR"


def default_store_root() -> Path:
    """``$FEATSTORE_DIR`` if set, else the user cache dir (``~/.cache/featstore`` on Linux)."""
    if env := os.environ.get(STORE_ENV):
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("featstore", appauthor=False))


def read_manifest(entry_path: Path) -> dict[str, Any] | None:
    """The stored manifest dict of an entry (any format version), or None if there is none."""
    return raw_manifest(Path(entry_path))


@dataclass(frozen=True)
class EntrySummary:
    """An entry as listed: its typed manifest, or the reason it cannot be read."""

    key: str
    path: Path
    meta: Manifest | None
    problem: str | None = None

    @property
    def complete(self) -> bool:
        return self.meta is not None and self.meta.complete

    @property
    def manifest(self) -> dict[str, Any]:
        """The manifest as stored (empty when it cannot be read)."""
        return self.meta.to_dict() if self.meta is not None else raw_manifest(self.path) or {}

    @property
    def state(self) -> str:
        """``yes``/``no`` (complete or not), ``format 1`` (needs migrate) or ``DAMAGED``."""
        if self.meta is not None:
            return "yes" if self.meta.complete else "no"
        return "format 1" if self.manifest.get("format_version") == 1 else "DAMAGED"

    def listing(self) -> tuple[str, ...]:
        """Teacher, output, source, N, shape and dtype as `featstore ls` shows them; read from
        the stored manifest as far as it goes, so damaged and format-1 entries list too."""
        m = self.manifest
        src = m.get("source") if isinstance(m.get("source"), dict) else {}
        shape = m.get("row_shape")
        if isinstance(shape, list):
            dims = ["T", *shape] if m.get("layout") == "ragged" else shape
            shape_text = "[" + ",".join(map(str, dims)) + "]"
        else:
            shape_text = "?"
        return (
            str(m.get("teacher", "?")), str(m.get("output", "?")),
            f"{src.get('kind', '?')}:{Path(str(src.get('path', '?'))).name}",
            str(m.get("n_rows", "?")), shape_text, str(m.get("dtype", "?")),
        )  # fmt: skip

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())

    def require_readable(self) -> Manifest:
        if self.meta is None:
            raise FormatError(f"entry {self.key} is damaged: {self.problem}")
        return self.meta


def summarize(path: Path) -> EntrySummary:
    """An entry directory's summary; the problem, if its manifest cannot be read."""
    try:
        meta = load_manifest(path)
    except FormatError as e:
        return EntrySummary(path.name, path, None, str(e))
    return EntrySummary(path.name, path, meta)


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
        return EntryLock(lock_file(self.root, name), what or f"entry {name}", doing)

    def digest_memo(self, trust: bool = True) -> DigestMemo:
        """The memo of source digests; ``trust=False`` re-hashes everything (and records it)."""
        writable = os.access(self.root, os.W_OK) if self.root.exists() else False
        return DigestMemo(self.root / MEMO_FILE if writable else None, trust=trust)

    def entries(self) -> list[EntrySummary]:
        """Every entry, readable or not (``problem`` says what is wrong)."""
        if not self.root.is_dir():
            return []
        return [summarize(c) for c in sorted(self.root.iterdir()) if looks_like_entry(c)]

    def resolve(self, key_or_path: str) -> EntrySummary:
        """An entry by full key, unique key prefix (like git), or path to the entry directory."""
        as_path = Path(key_or_path).expanduser()
        if looks_like_entry(as_path):
            return summarize(as_path)
        matches = [e for e in self.entries() if e.path.name.startswith(key_or_path)]
        exact = [e for e in matches if e.path.name == key_or_path]
        if len(matches) == 1 or exact:
            return (exact or matches)[0]
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
        with self.lock(entry.path.name):
            shutil.rmtree(entry.path)
            shutil.rmtree(progress_dir(entry.path), ignore_errors=True)
        return entry
