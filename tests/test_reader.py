"""The read path: zero-copy gathers, ids, ragged entries, DataLoader workers, corruption."""

from __future__ import annotations

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


def test_cold_and_warm_read_paths_agree(tokens_entry, captions, store):
    """prefetch="always" reads with fadvise + pread, "never" from memory maps: same rows."""
    cold = open_entry(str(tokens_entry.path), prefetch="always")
    warm = open_entry(str(tokens_entry.path), prefetch="never")
    rows = np.array([19, 0, 8, 8, 15])
    np.testing.assert_array_equal(cold.gather(rows), warm.gather(rows))
    assert not cold._rows.open_maps and warm._rows.open_maps  # the cold path maps nothing
    key = run(WordVectors(), open_source(captions), store, dtype="float32", chunk_rows=3,
              batch_size=2).entries[0].key  # fmt: skip
    items = [6, 0, 3]
    cold_items = open_entry(key, store, prefetch="always").gather(items)
    warm_items = open_entry(key, store, prefetch="never").gather(items)
    for a, b in zip(cold_items, warm_items, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(FeatstoreError, match="prefetch 'sometimes' unknown"):
        open_entry(str(tokens_entry.path), prefetch="sometimes")


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
