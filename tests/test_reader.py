"""The read path: zero-copy gathers, ids, ragged entries, DataLoader workers, corruption."""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np
import pytest
import torch

from featstore import CorruptChunkError, open_entry
from featstore.errors import FeatstoreError, StoreError
from featstore.extract import extract
from featstore.sources import open_source
from featstore.teachers.base import OutputSpec, Preprocessor, Teacher, TeacherSpec


def run(teacher, source, store, **kw):
    return extract(teacher, source, store, num_workers=0, progress=False, log=lambda *_: None,
                   **kw)  # fmt: skip


class WordVectors(Teacher):
    """A test teacher with a ragged output: one seeded 4-d vector per word ``[T_i, 4]``."""

    class Pre(Preprocessor):
        def identity(self):
            return {"split": "whitespace"}

        def __call__(self, text):
            return text

    def __init__(self):
        self.spec = TeacherSpec("word-vectors", "test", "text", "test teacher")
        self.outputs = {"words": OutputSpec((None, 4), "one vector per word")}
        self.preprocessor = self.Pre()
        self.model = torch.nn.Linear(1, 1)
        self.weights = {"kind": "hash"}

    def architecture(self):
        return {"dim": 4}

    def collate(self, items):
        return items

    @staticmethod
    def vectors(text):
        words = text.split()
        return torch.tensor([[hash(w) % 97 / 97, len(w), i, 1.0] for i, w in enumerate(words)])

    def forward(self, batch, kinds):
        return {"words": [self.vectors(t) for t in batch]}


@pytest.fixture
def tokens_entry(nsd_hdf5, store, bigg_tiny):
    return open_entry(run(bigg_tiny, open_source(nsd_hdf5), store, chunk_rows=8).entries[0].key,
                      store)  # fmt: skip


def test_gather_row_and_id_access(tokens_entry):
    e = tokens_entry
    assert len(e) == 20 and e.zero_copy and e.row_shape == (256, 64)
    batch = e.gather([17, 3, 3, -1])
    assert batch.shape == (4, 256, 64) and batch.dtype == np.float16
    np.testing.assert_array_equal(batch[0], e[17])
    np.testing.assert_array_equal(batch[1], batch[2])
    np.testing.assert_array_equal(batch[3], e[19])
    np.testing.assert_array_equal(e.positions([5, 0]), [5, 0])
    np.testing.assert_array_equal(e.by_id(7), e[7])
    with pytest.raises(KeyError, match="2 of 3 ids are not in entry"):
        e.positions([1, 20, 99])
    with pytest.raises(IndexError):
        e.gather([20])


def test_missing_ids_and_columns_are_typed_errors_and_key_errors(tokens_entry):
    from featstore.errors import FeatstoreError, MissingIdsError, NoSuchColumnError

    with pytest.raises(MissingIdsError) as missing:
        tokens_entry.positions([3, 99])
    assert isinstance(missing.value, FeatstoreError) and isinstance(missing.value, KeyError)
    assert str(missing.value).startswith("1 of 2 ids are not in entry")  # unquoted message
    with pytest.raises(NoSuchColumnError) as column:
        tokens_entry.column("split")
    assert isinstance(column.value, FeatstoreError) and isinstance(column.value, KeyError)
    assert "has no column 'split' (columns: none)" in str(column.value)


def test_memmap_and_zarr_paths_agree(tokens_entry):
    slow = open_entry(str(tokens_entry.path), zero_copy=False)
    assert not slow.zero_copy
    rows = np.array([19, 0, 8, 8, 15])
    np.testing.assert_array_equal(tokens_entry.gather(rows), slow.gather(rows))


def test_every_read_way_returns_the_same_rows(tokens_entry, captions, store):
    """ "rows" (fadvise + pread), "pages" (2 MiB-page maps) and "never" (plain maps): same rows,
    fixed and ragged."""
    ways = {m: open_entry(str(tokens_entry.path), prefetch=m) for m in ("rows", "pages", "never")}
    rows = np.array([19, 0, 8, 8, 15])
    want = ways["never"].gather(rows)
    for entry in ways.values():
        np.testing.assert_array_equal(entry.gather(rows), want)
    assert ways["rows"]._rows.way == "rows" and not ways["rows"]._rows.open_maps  # maps nothing
    assert ways["never"]._rows.way == "maps" and ways["never"]._rows.open_maps
    key = run(WordVectors(), open_source(captions), store, dtype="float32", chunk_rows=3,
              batch_size=2).entries[0].key  # fmt: skip
    items = [6, 0, 3]
    want_items = open_entry(key, store, prefetch="never").gather(items)
    for mode in ("rows", "pages"):
        ragged = open_entry(key, store, prefetch=mode)
        for a, b in zip(ragged.gather(items), want_items, strict=True):
            np.testing.assert_array_equal(a, b)
    # "pages" maps all chunk files into one range: one flat array when they leave no gaps (the
    # tokens' 256 KiB chunks), else an array strided over the gaps (the ragged values' chunks)
    tokens, values = ways["pages"]._rows, ragged._rows
    assert tokens._flat is not None and tokens.open_maps == 3
    assert values.chunk_bytes % mmap.PAGESIZE and values._chunks is not None
    assert values._flat is None
    for entry in ways.values():  # an empty batch is an empty array, every way
        assert entry.gather([]).shape == (0, 256, 64)
    with pytest.raises(FeatstoreError, match="prefetch 'sometimes' unknown"):
        open_entry(str(tokens_entry.path), prefetch="sometimes")
    with pytest.warns(FutureWarning, match='now called "rows"'):
        renamed = open_entry(str(tokens_entry.path), prefetch="always")
    assert renamed._rows.way == "rows"


def test_pages_way_reads_the_entry_as_one_array(tokens_entry):
    """Chunk files mapped back to back: rows across a chunk boundary are a view, not a copy,
    and a view outlives the entry that made it (the maps stay until the last view is gone)."""
    import gc

    entry = open_entry(str(tokens_entry.path), prefetch="pages")
    plain = open_entry(str(tokens_entry.path), prefetch="never")
    assert entry.chunk_rows == 8
    span = entry._rows.rows(5, 13)  # chunks 0 and 1
    assert not span.flags.owndata and span.base is not None
    with pytest.raises(ValueError, match="read-only"):
        span[0, 0, 0] = 1  # the maps are read-only; numpy refuses instead of a segfault
    np.testing.assert_array_equal(span, plain.gather(np.arange(5, 13)))
    want = plain.gather(np.arange(5, 13)).copy()
    del entry
    gc.collect()
    np.testing.assert_array_equal(span, want)  # still mapped: no crash, same bytes


def test_cgroup_memory_limit_v1_and_v2(tmp_path):
    """The smallest limit on the cgroup or an ancestor; "max" / v1's ~2**63 mean none."""
    from featstore.reader import cgroup_memory_limit

    proc = tmp_path / "cgroup"
    job = tmp_path / "fs" / "slurm" / "job_7"
    job.mkdir(parents=True)
    (job / "memory.max").write_text("max\n")
    (job.parent / "memory.max").write_text(f"{64 << 30}\n")
    proc.write_text("0::/slurm/job_7\n")
    assert cgroup_memory_limit(proc, tmp_path / "fs") == 64 << 30
    (job / "memory.max").write_text(f"{8 << 30}\n")
    assert cgroup_memory_limit(proc, tmp_path / "fs") == 8 << 30
    v1 = tmp_path / "fs" / "memory" / "docker" / "abc"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    proc.write_text("4:memory:/docker/abc\n1:cpu:/\n")
    assert cgroup_memory_limit(proc, tmp_path / "fs") is None
    (v1 / "memory.limit_in_bytes").write_text(f"{2 << 30}\n")
    assert cgroup_memory_limit(proc, tmp_path / "fs") == 2 << 30
    assert cgroup_memory_limit(tmp_path / "missing", tmp_path / "fs") is None


def test_pages_way_with_chunks_of_no_whole_number_of_2mib(tmp_path):
    """Chunks of 2.93 MiB: each starts on a 2 MiB boundary (so it can map as 2 MiB pages) and
    the array is strided over the gaps; rows across a gap are a copy, never wrong."""
    from featstore.reader import Entry
    from featstore.writer import EntryWriter

    n, cr = 2500, 1000
    data = np.random.default_rng(0).standard_normal((n, 1536)).astype(np.float16)
    writer = EntryWriter.create(tmp_path / "e", {"key": "e"}, np.arange(n), row_shape=(1536,),
                                dtype="float16", ragged=False, chunk_rows=cr)  # fmt: skip
    for unit in range(writer.n_chunks):
        start, stop = writer.unit_rows(unit)
        writer.commit(unit, data[start:stop])
    writer.finalize({})
    entry = Entry(tmp_path / "e", prefetch="pages")
    rows = np.array([2499, 0, 999, 1000, 1999, 2000, 7, 7])
    np.testing.assert_array_equal(entry.gather(rows), data[rows])
    np.testing.assert_array_equal(entry._rows.rows(990, 2010), data[990:2010])
    raw = entry._rows
    assert raw._flat is None and raw._region.slot == 4 << 20
    assert all((raw._view(c).ctypes.data % (2 << 20)) == 0 for c in range(3))


def test_pages_way_falls_back_to_a_map_per_chunk_when_the_range_cannot_be_mapped(
    tokens_entry, monkeypatch
):
    from featstore import _region

    def refuse(self, index, fd):
        raise OSError(12, "Cannot allocate memory")  # as with vm.max_map_count exhausted

    monkeypatch.setattr(_region.MappedFiles, "map_file", refuse)
    entry = open_entry(str(tokens_entry.path), prefetch="pages")
    rows = np.array([19, 0, 8, 8, 15])
    want = open_entry(str(tokens_entry.path), prefetch="never").gather(rows)
    np.testing.assert_array_equal(entry.gather(rows), want)
    assert entry._rows._chunks is None and entry._rows.open_maps == 3  # chunks 0, 1, 2


def _map_flags(entry) -> list[set[str]]:
    """VmFlags of the maps of the entry's chunk files this reader holds (/proc/self/smaps)."""
    raw = entry._rows
    spans = [(v.ctypes.data, v.ctypes.data + raw.chunk_bytes) for v, _ in raw._maps.values()]
    if raw._region is not None:
        spans.append((raw._region.base, raw._region.base + raw._region.size))

    flags, mine = [], False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if fields and "-" in fields[0] and ":" not in fields[0]:
            start = int(fields[0].split("-")[0], 16)
            mine = (
                len(fields) >= 6
                and fields[5].startswith(str(entry.path))
                and any(lo <= start < hi for lo, hi in spans)
            )
        elif mine and fields[0] == "VmFlags:":
            flags.append(set(fields[1:]))
    assert len(flags) == raw.open_maps > 0  # one map per chunk file
    return flags


@pytest.mark.skipif(not Path("/proc/self/smaps").is_file(), reason="needs Linux /proc")
def test_pages_way_asks_the_kernel_for_2mib_pages_and_no_read_around(tokens_entry):
    """The maps of the "pages" way carry MADV_HUGEPAGE ("hg") and MADV_RANDOM ("rr"), so a
    fault reads its aligned 2 MiB block once; plain maps carry neither."""
    pages = open_entry(str(tokens_entry.path), prefetch="pages")
    pages.gather([0, 19])
    assert all({"hg", "rr"} <= f for f in _map_flags(pages))
    plain = open_entry(str(tokens_entry.path), prefetch="never")
    plain.gather([0, 19])
    assert not any({"hg", "rr"} & f for f in _map_flags(plain))


def test_auto_reads_pages_when_the_entry_fits_in_memory_else_rows(tokens_entry, monkeypatch):
    from featstore import reader

    assert open_entry(str(tokens_entry.path))._rows.way == "pages"  # a few KiB: fits
    monkeypatch.setattr(reader, "_pages_budget", lambda: 0)  # as if larger than memory
    big = open_entry(str(tokens_entry.path))
    assert big._rows.way == "rows"  # from disk until batches show the page cache
    want = open_entry(str(tokens_entry.path), prefetch="never").gather([3, 1])
    for _ in range(reader._WARM_AFTER_BATCHES + 1):
        big._rows._observe(2, 64, 0.0)  # fast batches: back to the maps
    assert big._rows.way == "maps"
    np.testing.assert_array_equal(big.gather([3, 1]), want)
    monkeypatch.undo()
    monkeypatch.setattr(reader, "_advise_pages", lambda mm: False)  # kernel refuses 2 MiB pages
    refused = open_entry(str(tokens_entry.path))
    np.testing.assert_array_equal(refused.gather([3, 1]), want)
    assert refused._rows.way == "rows"  # "auto" falls back to reading rows


def test_pages_budget_is_a_share_of_available_memory():
    from featstore import reader

    budget = reader._pages_budget()
    if reader.cgroup_memory_limit() is not None:
        pytest.skip("this process has a cgroup memory limit; the budget may be its share")
    if Path("/proc/meminfo").is_file():
        lines = Path("/proc/meminfo").read_text().splitlines()
        avail = next(int(x.split()[1]) * 1024 for x in lines if x.startswith("MemAvailable:"))
        assert abs(budget - avail * reader._PAGES_MEMORY_SHARE) < 0.05 * avail
    else:
        assert budget == 0


def test_dataset_in_dataloader_workers(tokens_entry):
    ds = tokens_entry.dataset(rows=np.array([4, 9, 12, 1, 0, 19]))
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, shuffle=False)
    batches = list(loader)
    assert [b.shape for b in batches] == [(4, 256, 64), (2, 256, 64)]
    np.testing.assert_array_equal(batches[1][1].numpy(), tokens_entry[19])


def test_corrupt_chunk_is_refused_and_named(tokens_entry):
    chunk = tokens_entry.path / "features" / "c" / "1" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[100] ^= 0xFF
    chunk.write_bytes(bytes(data))
    e = open_entry(str(tokens_entry.path))
    np.testing.assert_array_equal(e.gather([0, 1]).shape, (2, 256, 64))  # unit 0 is fine
    with pytest.raises(CorruptChunkError, match=r"features/c/1/0/0 is corrupt"):
        e.gather([9])
    bad = open_entry(str(tokens_entry.path), verify=False).verify_all()
    assert len(bad) == 1 and "c/1/0/0" in bad[0]


def test_truncated_chunk_is_refused(tokens_entry):
    chunk = tokens_entry.path / "features" / "c" / "2" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:1000])
    with pytest.raises(CorruptChunkError, match="has 1000 bytes"):
        open_entry(str(tokens_entry.path)).gather([18])


def test_ragged_entry_round_trip(captions, store):
    teacher = WordVectors()
    result = run(teacher, open_source(captions), store, dtype="float32", chunk_rows=3,
                 batch_size=2)  # fmt: skip
    e = open_entry(result.entries[0].key, store)
    src = open_source(captions)
    expected = [WordVectors.vectors(src.load(i)).numpy() for i in range(len(src))]
    assert e.ragged and e.row_shape == (4,)
    np.testing.assert_array_equal(e.lengths(), [len(x) for x in expected])
    for got, want in zip(e.gather([6, 0, 3]), [expected[6], expected[0], expected[3]], strict=True):
        np.testing.assert_array_equal(got, want)
    padded, lengths = e.gather_padded([1, 3])
    assert padded.shape == (2, max(len(expected[1]), len(expected[3])), 4)
    np.testing.assert_array_equal(padded[1, : lengths[1]], expected[3])
    assert (padded[0, lengths[0] :] == 0).all()
    np.testing.assert_array_equal(e.by_id(104), expected[4])
    short, short_len = e.gather_padded([3], max_length=2)
    assert short.shape == (1, 2, 4) and short_len.tolist() == [2]
    ds = list(torch.utils.data.DataLoader(e.dataset(), batch_size=3, collate_fn=list))
    assert [len(b) for b in ds] == [3, 3, 1]


def test_ragged_resume_after_interrupt(captions, store, monkeypatch):
    from featstore import writer

    real, calls = writer.EntryWriter.commit, []

    def commit(self, unit, data):
        if len(calls) == 1:
            raise KeyboardInterrupt
        calls.append(unit)
        return real(self, unit, data)

    monkeypatch.setattr(writer.EntryWriter, "commit", commit)
    with pytest.raises(KeyboardInterrupt):
        run(
            WordVectors(), open_source(captions), store, dtype="float32", chunk_rows=3, batch_size=3
        )
    monkeypatch.setattr(writer.EntryWriter, "commit", real)
    result = run(
        WordVectors(), open_source(captions), store, dtype="float32", chunk_rows=3, batch_size=3
    )
    assert result.entries[0].status == "resumed" and result.items_computed == 4
    e = open_entry(result.entries[0].key, store)
    src = open_source(captions)
    for i in range(len(src)):
        np.testing.assert_array_equal(e[i], WordVectors.vectors(src.load(i)).numpy())
    assert e.verify_all() == []


def test_incomplete_entry_is_never_served(nsd_hdf5, store, bigg_tiny, monkeypatch):
    from featstore import writer

    monkeypatch.setattr(writer.EntryWriter, "finish", lambda *a, **k: (_ for _ in ()).throw(
        KeyboardInterrupt))  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        run(bigg_tiny, open_source(nsd_hdf5), store)
    (entry,) = store.entries()
    assert not entry.complete
    with pytest.raises(StoreError, match="incomplete.*resume"):
        open_entry(entry.key, store)
