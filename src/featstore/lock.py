"""One writer per cache entry: an exclusive lock file that names its owner."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from .errors import EntryLockedError, StoreError


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class EntryLock:
    """``O_EXCL`` lock file holding the owner's pid, host and start time.

    A lock left by a process that died on this host is taken over (and said so); a lock held by a
    live process, or by another host, is an error naming the owner. Later, ranks under torchrun
    will each hold their own lock file (``<key>.rank<r>.lock``) over disjoint chunks.
    """

    def __init__(self, path: Path, what: str):
        self.path = path
        self.what = what
        self.took_over_from: dict | None = None
        self._held = False

    def owner(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def acquire(self) -> EntryLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self.owner() or {}
                same_host = owner.get("host") == me["host"]
                if same_host and isinstance(owner.get("pid"), int) and not _pid_alive(owner["pid"]):
                    self.took_over_from = owner
                    self.path.unlink(missing_ok=True)
                    continue
                since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner.get("since", 0)))
                raise EntryLockedError(
                    f"{self.what} is being written by pid {owner.get('pid', '?')} on host "
                    f"{owner.get('host', '?')} (since {since}). Wait for it to finish, or if that "
                    f"process is gone, remove the lock file {self.path}."
                ) from None
            except PermissionError as e:
                raise StoreError(
                    f"cannot create a lock in {self.path.parent}: {e.strerror}. Choose a writable "
                    f"store with --store or FEATSTORE_DIR."
                ) from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self._held = True
            return self
        raise EntryLockedError(f"could not take the lock {self.path}")

    def release(self) -> None:
        if self._held:
            self.path.unlink(missing_ok=True)
            self._held = False

    def __enter__(self) -> EntryLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
