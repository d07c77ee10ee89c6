"""Stable hashes: cache keys and memoized file digests (stored bytes: see ``integrity``)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np

KEY_LENGTH = 20  # hex chars of sha256: 80 bits, collisions are not a practical concern


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace, so equal inputs hash equally."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, (tuple, set)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot hash {type(obj).__name__} in a cache key")


def cache_key(inputs: dict[str, Any]) -> str:
    """The cache key: a hash over every input that changes what an entry contains."""
    return hashlib.sha256(canonical_json(inputs).encode()).hexdigest()[:KEY_LENGTH]


def hash_ids(ids: np.ndarray) -> str:
    h = hashlib.sha256()
    if ids.dtype.kind in "iu":
        h.update(np.ascontiguousarray(ids, dtype="<i8").tobytes())
    else:
        for item in ids.tolist():
            h.update(str(item).encode())
            h.update(b"\0")
    return h.hexdigest()


class DigestMemo:
    """Remembers content digests so that unchanged inputs are not hashed again.

    A digest is reused only while the file's ``(real path, size, mtime_ns, ctime_ns, inode)``
    are all unchanged. ``ctime`` is set by the kernel on every write or metadata change and,
    unlike ``mtime``, cannot be set back with ``os.utime``; a file replaced by another gets a
    new inode. The memo lives in the store root as ``digests.jsonl``: one ``[stamp, digest]``
    JSON line per file, appended in batches (constant cost per file, so 73k images cost what 73k
    hashes cost), compacted when stale lines outnumber live ones. It only ever saves time:
    delete it at any time, or pass ``--rehash``.
    """

    FLUSH_EVERY = 1024  # lines; a killed hashing run keeps all but the last batch

    def __init__(self, path: Path | None, trust: bool = True):
        self.path = path
        self.trust = trust  # False: never reuse a digest (still record the fresh ones)
        self._data: dict[str, str] = {}
        self._pending: list[str] = []
        self._folders: dict[str, str] = {}  # folder -> its real path
        self._lines = 0
        if path is not None and path.exists():
            try:
                text = path.read_text()
            except (OSError, UnicodeDecodeError):
                text = ""
            for line in text.splitlines():
                self._lines += 1
                try:
                    stamp, digest = json.loads(line)
                except (ValueError, TypeError):
                    continue  # a torn line from a killed writer
                if isinstance(stamp, str) and isinstance(digest, str):
                    self._data[stamp] = digest

    def _stamp(self, file: Path, extra: str) -> str:
        st = os.lstat(file)
        if stat.S_ISLNK(st.st_mode):
            real, st = os.path.realpath(file), os.stat(file)
        else:  # resolve the folder once, not every path component of every file
            folder, name = os.path.split(os.path.abspath(file))
            real_folder = self._folders.get(folder)
            if real_folder is None:
                real_folder = self._folders[folder] = os.path.realpath(folder)
            real = os.path.join(real_folder, name)
        return f"{real}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{st.st_ino}|{extra}"

    def get(self, file: Path, extra: str = "") -> str | None:
        return self._data.get(self._stamp(file, extra)) if self.trust else None

    def put(self, file: Path, digest: str, extra: str = "") -> None:
        stamp = self._stamp(file, extra)
        self._data[stamp] = digest
        self._pending.append(json.dumps([stamp, digest]))
        if len(self._pending) >= self.FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        """Append the new digests to the file (compacting it when mostly stale)."""
        if self.path is None or not self._pending:
            self._pending = []
            return
        try:
            if self._lines + len(self._pending) > 2 * len(self._data) + self.FLUSH_EVERY:
                tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
                lines = [json.dumps([k, v]) for k, v in self._data.items()]
                tmp.write_text("".join(f"{line}\n" for line in lines))
                os.replace(tmp, self.path)
                self._lines = len(lines)
            else:
                with open(self.path, "a") as f:
                    f.write("".join(f"{line}\n" for line in self._pending))
                self._lines += len(self._pending)
        except OSError:
            pass  # the memo is an optimisation; never fail on it
        self._pending = []


def file_digest(file: Path, memo: DigestMemo | None = None, block: int = 1 << 22) -> str:
    """sha256 of a whole file, memoized by its stat stamp (see ``DigestMemo``)."""
    if memo is not None and (hit := memo.get(file)):
        return hit
    h = hashlib.sha256()
    with open(file, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    digest = h.hexdigest()
    if memo is not None:
        memo.put(file, digest)
    return digest


def directory_digest(path: Path, memo: DigestMemo | None = None) -> str:
    """sha256 over a directory's files (relative path + content digest), or one file's digest."""
    if path.is_file():
        return file_digest(path, memo)
    h = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(file.relative_to(path).as_posix().encode() + b"\0")
        h.update(file_digest(file, memo).encode())
    return h.hexdigest()
