"""One writer per cache entry: an OS lock (``flock``) on a lock file that names its owner.

The kernel holds the lock for the open file and drops it when the holder exits, however it
exits (kill -9 included), so a dead writer's lock is free at once, a live one's never is, and
two processes can never both hold it: no pid checks, no takeover races. The file's content
(pid, host, start time) only names the owner in messages.

Releasing deletes the file while still holding the lock. A process that opened the file just
before may then lock the deleted file, so after locking, ``acquire`` checks that the path still
names the file it locked and otherwise starts again.

On NFS the Linux client emulates ``flock`` with POSIX byte-range locks through the server's lock
manager (NFSv4, or v3 with lockd); see docs/store-format.md#locking for the caveats.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from pathlib import Path

from .errors import EntryLockedError, StoreError

try:
    import fcntl
except ImportError:  # Windows: no flock; featstore's stores are POSIX-only for writing
    fcntl = None  # type: ignore[assignment]


class EntryLock:
    """An exclusive, non-blocking lock on ``path``; usable as a context manager."""

    def __init__(self, path: Path, what: str, doing: str = "written"):
        self.path = Path(path)
        self.what, self.doing = what, doing
        self.took_over_from: dict | None = None  # the owner a dead writer left in the file
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def owner(self) -> dict | None:
        try:
            found = json.loads(self.path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        return found if isinstance(found, dict) else None

    def _locked_error(self, owner: dict | None) -> EntryLockedError:
        owner = owner or {}
        since = owner.get("since")
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(
            since, (int, float)) else "?"  # fmt: skip
        return EntryLockedError(
            f"{self.what} is being {self.doing} by pid {owner.get('pid', '?')} on host "
            f"{owner.get('host', '?')} (since {when}). Wait for it to finish; the lock is freed "
            f"when that process exits ({self.path})."
        )

    def acquire(self) -> EntryLock:
        if fcntl is None:
            raise StoreError("writing a store needs POSIX file locks (Linux or macOS).")
        if self._fd is not None:
            return self
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create {self.path.parent}: {e.strerror}. Choose a writable "
                             f"store with --store or FEATSTORE_DIR.") from None  # fmt: skip
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as e:
                raise StoreError(
                    f"cannot create the lock {self.path}: {e.strerror}. Choose a writable store "
                    f"with --store or FEATSTORE_DIR."
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise self._locked_error(self.owner()) from None
                raise StoreError(
                    f"the file system of {self.path.parent} does not support file locks "
                    f"({e.strerror}). Mount it with lock support (NFS: lockd/NFSv4; Lustre: "
                    f"-o flock) or use a local --store."
                ) from None
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # we locked a file its holder had just deleted: try the new one
        self._fd = fd
        previous = self.owner()
        if previous and previous.get("pid") is not None:
            self.took_over_from = previous  # its holder died without releasing
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        return self

    def release(self) -> None:
        """Delete the lock file (only if it is still ours) and drop the lock."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if os.path.samestat(os.fstat(fd), os.stat(self.path)):
                self.path.unlink()
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)

    def __enter__(self) -> EntryLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
