"""Entry locks: an OS lock that a dead writer cannot keep and two writers cannot share."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from featstore.errors import EntryLockedError
from featstore.extract import entry_keys, extract
from featstore.lock import EntryLock
from featstore.sources import open_source

HOLDER = textwrap.dedent(
    """
    import sys
    from featstore.lock import EntryLock

    lock = EntryLock(sys.argv[1], "entry x").acquire()
    print("held", flush=True)
    sys.stdin.read()  # hold until the test closes stdin
    """
)


def start_holder(lock_path):
    """A live process that holds ``lock_path`` until its stdin closes."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock_path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    return holder


def dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True).stdout)  # fmt: skip


def tokens_key(teacher, source):
    return entry_keys(teacher, open_source(source), ["tokens"], "float16")["tokens"][0]


def run(teacher, source, store, **kw):
    return extract(teacher, open_source(source), store, num_workers=0, progress=False,
                   log=lambda *_: None, **kw)  # fmt: skip


def test_racing_takeovers_of_a_dead_lock_never_double_own(tmp_path):
    """Before: both racers took over the same dead-pid lock in 32 of 300 trials."""
    path = tmp_path / "k.lock"
    for trial in range(40):
        path.write_text(json.dumps({"pid": dead_pid() if trial == 0 else 999_999_999,
                                    "host": socket.gethostname(), "since": 0}))  # fmt: skip
        start, held, errors = threading.Barrier(4), [], []

        def racer(start=start, held=held, errors=errors):
            lock = EntryLock(path, "entry k")
            start.wait()
            try:
                lock.acquire()
                held.append(lock)
            except EntryLockedError:
                errors.append(1)

        threads = [threading.Thread(target=racer) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(held) == 1 and len(errors) == 3, (trial, len(held))
        held[0].release()


def test_release_never_deletes_a_lock_it_no_longer_owns(tmp_path):
    path = tmp_path / "k.lock"
    first = EntryLock(path, "entry k").acquire()
    path.unlink()  # someone removes the file by hand and a second writer takes a new one
    second = EntryLock(path, "entry k").acquire()
    first.release()
    assert path.exists()
    with pytest.raises(EntryLockedError):
        EntryLock(path, "entry k").acquire()
    second.release()
    assert not path.exists()


@pytest.mark.parametrize("content", [b"", b"\x00garbage{", b'{"pid": 1, "host": "elsewhere"}'])
def test_empty_garbage_or_foreign_lock_files_do_not_block(tmp_path, content):
    """Before: an empty or garbage lock (a kill between create and write) blocked forever as
    'pid ? on host ?'; so did a lock naming a reused pid or another host."""
    path = tmp_path / "k.lock"
    path.write_bytes(content)
    lock = EntryLock(path, "entry k").acquire()
    assert lock.held
    lock.release()


def test_lock_with_our_own_pid_does_not_block(tmp_path):
    """A container restart gives the new process the dead one's pid."""
    path = tmp_path / "k.lock"
    path.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": 0}))
    EntryLock(path, "entry k").acquire().release()


def test_live_holder_blocks_and_names_itself(tmp_path):
    path = tmp_path / "k.lock"
    holder = start_holder(path)
    try:
        with pytest.raises(EntryLockedError, match=f"pid {holder.pid} on host"):
            EntryLock(path, "entry k").acquire()
    finally:
        holder.communicate("")
    EntryLock(path, "entry k").acquire().release()  # freed when the holder exits


def test_killed_holder_frees_the_lock_at_once(tmp_path):
    path = tmp_path / "k.lock"
    holder = start_holder(path)
    holder.kill()
    holder.wait()
    lock = EntryLock(path, "entry k").acquire()
    assert lock.took_over_from["pid"] == holder.pid
    lock.release()


def test_stale_lock_of_dead_process_is_taken_over(nsd_hdf5, store, bigg_tiny):
    key = tokens_key(bigg_tiny, nsd_hdf5)
    lock = store.root / "_locks" / f"{key}.lock"
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname(), "since": 0}))
    messages = []
    result = extract(bigg_tiny, open_source(nsd_hdf5), store, num_workers=0, progress=False,
                     log=messages.append)  # fmt: skip
    assert result.entries[0].status == "extracted" and not lock.exists()
    assert any("took over the lock" in m for m in messages)


def test_concurrent_writer_fails_fast_before_hashing_the_source(nsd_hdf5, store, bigg_tiny,
                                                                monkeypatch):  # fmt: skip
    """The loser of a race for the same extraction fails in well under a second, before it
    hashes the source (hashing a 60 GB source takes minutes), and writes nothing."""
    from featstore.planning import job_name
    from featstore.sources.nsd import NsdImages

    source = open_source(nsd_hdf5)
    name = job_name(bigg_tiny, source, ["tokens"], "float16", "none")
    holder = start_holder(store.root / "_locks" / f"{name}.lock")
    hashed = []
    monkeypatch.setattr(NsdImages, "content_digest", lambda *a: hashed.append(1) or "x")
    try:
        t0 = time.perf_counter()
        with pytest.raises(EntryLockedError, match=f"pid {holder.pid}"):
            run(bigg_tiny, nsd_hdf5, store)
        assert time.perf_counter() - t0 < 0.5
        assert not hashed and store.entries() == []
    finally:
        holder.communicate("")


def test_concurrent_writer_of_the_same_entry_gets_a_clear_error(nsd_hdf5, store, bigg_tiny):
    key = tokens_key(bigg_tiny, nsd_hdf5)
    lock = store.root / "_locks" / f"{key}.lock"
    holder = start_holder(lock)
    try:
        with pytest.raises(EntryLockedError, match=f"entry {key} is being written by pid "
                                                   f"{holder.pid}"):  # fmt: skip
            run(bigg_tiny, nsd_hdf5, store)
        assert not store.entry_path(key).exists()  # nothing written by the loser
        assert lock.exists()  # the loser never removes someone else's lock
    finally:
        holder.communicate("")
