"""The digest memo: never trusted past a change to the file, and linear in the number of files."""

from __future__ import annotations

import os

import h5py
import numpy as np

from featstore.extract import extract
from featstore.hashing import DigestMemo, file_digest
from featstore.sources import open_source


def run(teacher, source, store):
    return extract(teacher, open_source(source), store, num_workers=0, progress=False,
                   log=lambda *_: None)  # fmt: skip


def test_in_place_change_with_restored_mtime_is_never_a_stale_hit(nsd_hdf5, store, bigg_tiny):
    """Before: same size + restored mtime made the memo serve the old digest (a stale hit)."""
    first = run(bigg_tiny, nsd_hdf5, store).entries[0]
    st = os.stat(nsd_hdf5)
    with h5py.File(nsd_hdf5, "r+") as f:
        f["images"][3] = np.zeros((3, 224, 224), np.float16)
    os.utime(nsd_hdf5, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(nsd_hdf5).st_size == st.st_size
    second = run(bigg_tiny, nsd_hdf5, store).entries[0]
    assert second.key != first.key and second.status == "extracted"


def test_memo_reuses_only_unchanged_files(tmp_path):
    memo_file, data = tmp_path / "digests.jsonl", tmp_path / "a.bin"
    data.write_bytes(b"x" * 100)
    memo = DigestMemo(memo_file)
    digest = file_digest(data, memo)  # hashed and recorded
    memo.flush()
    again = DigestMemo(memo_file)
    assert again.get(data) == digest
    os.utime(data, ns=(os.stat(data).st_atime_ns, os.stat(data).st_mtime_ns))  # ctime moves
    assert DigestMemo(memo_file).get(data) is None
    assert DigestMemo(memo_file, trust=False).get(data) is None


def test_memo_appends_instead_of_rewriting_per_file(tmp_path):
    """Before: every put rewrote the whole memo (quadratic: 40 min for 73k images)."""
    files = []
    for i in range(2500):
        files.append(tmp_path / f"f{i}")
        files[-1].write_bytes(b"%d" % i)
    memo_file = tmp_path / "digests.jsonl"
    memo = DigestMemo(memo_file)
    memo.put(files[0], "d0")
    memo.flush()
    inode = os.stat(memo_file).st_ino
    for i, f in enumerate(files[1:], 1):
        memo.put(f, f"d{i}")
    memo.flush()
    assert os.stat(memo_file).st_ino == inode  # appended, never replaced
    assert len(memo_file.read_text().splitlines()) == len(files)
    reloaded = DigestMemo(memo_file)
    assert all(reloaded.get(f) == f"d{i}" for i, f in enumerate(files))


def test_torn_memo_lines_are_ignored(tmp_path):
    memo_file, data = tmp_path / "digests.jsonl", tmp_path / "a.bin"
    data.write_bytes(b"abc")
    memo = DigestMemo(memo_file)
    memo.put(data, "cafe")
    memo.flush()
    with open(memo_file, "a") as f:
        f.write('["half a line')
    assert DigestMemo(memo_file).get(data) == "cafe"
