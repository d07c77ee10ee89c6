"""A run killed at any point resumes at the first uncommitted chunk, byte-identical."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap

import pytest

from featstore import open_entry
from featstore.errors import StoreError
from featstore.extract import extract
from featstore.sources import open_source
from featstore.store import Store
from featstore.teachers import create_teacher

N, CHUNK, BATCH = 20, 4, 2  # 5 units of 2 batches

KILLER = textwrap.dedent(
    """
    import os, signal, sys
    import featstore
    from featstore import writer
    from featstore.extract import extract
    from featstore.sources import open_source
    from featstore.store import Store
    from featstore.teachers import create_teacher

    mode, k, source, store = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    batch, chunk = int(sys.argv[5]), int(sys.argv[6])
    commits = [0]
    real_commit, real_replace = writer.EntryWriter.commit, os.replace

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    def commit(self, unit, data):
        if mode == "after-commits" and commits[0] == k:
            die()
        commits[0] += 1
        return real_commit(self, unit, data)

    def replace(src, dst, *a, **kw):
        dst = str(dst)
        if mode == "before-record" and "_progress" in dst and commits[0] == k + 1:
            die()  # unit k's data is written, its record is not
        if mode == "mid-chunk-write" and "/features/c/" in dst and commits[0] == k + 1:
            die()  # unit k's chunk file is a temporary .partial, never renamed
        return real_replace(src, dst, *a, **kw)

    writer.EntryWriter.commit = commit
    os.replace = replace
    teacher = create_teacher("bigG-tiny", weights="random")
    extract(teacher, open_source(source), Store(store), batch_size=batch, chunk_rows=chunk,
            num_workers=0, progress=False, log=lambda *_: None)
    print("finished without being killed")
    """
)


def run_killed(tmp_path, mode, k, source, store_root, batch=BATCH):
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    proc = subprocess.run(
        [sys.executable, str(script), mode, str(k), str(source), str(store_root), str(batch),
         str(CHUNK)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr


def array_files(entry_path):
    """Every file of the arrays (data chunks and array metadata), as bytes."""
    return {
        str(p.relative_to(entry_path)): p.read_bytes()
        for p in sorted(entry_path.rglob("*"))
        if p.is_file() and p.parent != entry_path
    }


def manifest_without_provenance(entry_path):
    m = json.loads((entry_path / "zarr.json").read_text())["attributes"]["featstore"]
    m.pop("provenance")
    return m


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run to compare against."""
    from conftest import make_nsd_hdf5

    root = tmp_path_factory.mktemp("reference")
    source = make_nsd_hdf5(root / "images.hdf5", n=N)
    store = Store(root / "store")
    result = extract(create_teacher("bigG-tiny", weights="random"), open_source(source), store,
                     batch_size=BATCH, chunk_rows=CHUNK, num_workers=0, progress=False,
                     log=lambda *_: None)  # fmt: skip
    return source, result.entries[0].key, store


@pytest.mark.parametrize(
    "mode,k", [("after-commits", 0), ("after-commits", 2), ("before-record", 3),
               ("mid-chunk-write", 1)],
)  # fmt: skip
def test_sigkill_then_resume_is_byte_identical(tmp_path, reference, mode, k):
    source, key, ref_store = reference
    store = Store(tmp_path / "store")
    run_killed(tmp_path, mode, k, source, store.root)

    with pytest.raises(StoreError, match="incomplete"):
        open_entry(key, store)
    committed = sorted(int(p.stem) for p in (store.root / "_progress" / key).glob("*.json"))
    assert committed == list(range(k))
    kept = {u: store.entry_path(key).joinpath(f"features/c/{u}/0/0").stat() for u in committed}

    messages = []
    result = extract(create_teacher("bigG-tiny", weights="random"), open_source(source), store,
                     batch_size=BATCH, chunk_rows=CHUNK, num_workers=0, progress=False,
                     log=messages.append)  # fmt: skip
    assert result.entries[0].status == "resumed"
    assert any("took over the lock" in m for m in messages)  # the killed run's lock was stale
    # committed units are neither recomputed nor rewritten
    assert result.items_computed == N - CHUNK * k
    for u, st in kept.items():
        now = store.entry_path(key).joinpath(f"features/c/{u}/0/0").stat()
        assert (now.st_ino, now.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)

    assert not list(store.entry_path(key).rglob("*.partial"))
    assert array_files(store.entry_path(key)) == array_files(ref_store.entry_path(key))
    assert manifest_without_provenance(store.entry_path(key)) == manifest_without_provenance(
        ref_store.entry_path(key)
    )
    assert not (store.root / "_progress" / key).exists()
    assert open_entry(key, store).verify_all() == []


def test_resume_with_batches_straddling_chunks_is_still_byte_identical(tmp_path, reference):
    """An explicit --chunk-rows that is no multiple of the batch: the batch grid is global, so
    the rows of a committed unit sharing a batch are recomputed (not rewritten) and every item
    is computed in the same batch as in an uninterrupted run."""
    source, _, _ = reference
    ref = Store(tmp_path / "ref")
    key = extract(create_teacher("bigG-tiny", weights="random"), open_source(source), ref,
                  batch_size=3, chunk_rows=CHUNK, num_workers=0, progress=False,
                  log=lambda *_: None).entries[0].key  # fmt: skip
    store = Store(tmp_path / "store")
    run_killed(tmp_path, "after-commits", 2, source, store.root, batch=3)
    result = extract(create_teacher("bigG-tiny", weights="random"), open_source(source), store,
                     batch_size=3, chunk_rows=CHUNK, num_workers=0, progress=False,
                     log=lambda *_: None)  # fmt: skip
    assert result.items_computed == N - 6  # batches [6,9), [9,12) ... rows 6, 7 recomputed
    assert array_files(store.entry_path(key)) == array_files(ref.entry_path(key))


def test_interrupt_keeps_committed_chunks_and_releases_lock(nsd_hdf5, store, bigg_tiny,
                                                            monkeypatch):  # fmt: skip
    from featstore import writer

    real = writer.EntryWriter.commit
    calls = []

    def commit(self, unit, data):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(unit)
        return real(self, unit, data)

    monkeypatch.setattr(writer.EntryWriter, "commit", commit)
    with pytest.raises(KeyboardInterrupt):
        extract(bigg_tiny, open_source(nsd_hdf5), store, chunk_rows=4, batch_size=4,
                num_workers=0, progress=False, log=lambda *_: None)  # fmt: skip
    monkeypatch.setattr(writer.EntryWriter, "commit", real)
    assert not list((store.root / "_locks").glob("*.lock"))
    result = extract(bigg_tiny, open_source(nsd_hdf5), store, chunk_rows=4, batch_size=4,
                     num_workers=0, progress=False, log=lambda *_: None)  # fmt: skip
    assert result.entries[0].status == "resumed" and result.items_computed == 20 - 8
