"""Every array of an entry is checksummed, and every kind of damage is named: `featstore verify`
gives one message per problem naming the file and exits 1, the reader refuses the entry, `ls`
still lists it. (Before: a deleted `ids/c/0` read as zeros and verified ok, flipped bytes in
compressed chunks or bad metadata crashed verify with tracebacks.)"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from featstore import open_entry
from featstore.errors import FeatstoreError
from featstore.extract import extract
from featstore.sources import open_source
from featstore.store import Store
from featstore_cli.featstore_app import app

runner = CliRunner()


def run(teacher, source, store, **kw):
    return extract(teacher, source, store, num_workers=0, progress=False, log=lambda *_: None,
                   **kw).entries[0].key  # fmt: skip


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, bigg_tiny, text_tiny):
    """Small entries of every shape: int ids (raw and lz4), string ids + columns, ragged."""
    from conftest import make_nsd_hdf5
    from test_reader import WordVectors

    root = tmp_path_factory.mktemp("pristine")
    store = Store(root / "store")
    nsd = open_source(make_nsd_hdf5(root / "images.hdf5", n=20))
    texts = root / "texts.jsonl"
    texts.write_text("".join(json.dumps({"id": f"s{i}", "text": f"caption number {'x' * i}"})
                             + "\n" for i in range(9)))  # fmt: skip
    return store, {
        "fixed": run(bigg_tiny, nsd, store, chunk_rows=8, batch_size=8),
        "lz4": run(bigg_tiny, nsd, store, chunk_rows=8, batch_size=8, outputs=["embeds"],
                   compression="lz4"),
        "strings": run(text_tiny, open_source(texts), store, chunk_rows=4, batch_size=4),
        "ragged": run(WordVectors(), open_source(texts), store, chunk_rows=4, batch_size=4,
                      dtype="float32"),
    }  # fmt: skip


@pytest.fixture
def damaged(pristine, tmp_path):
    """A copy of one pristine entry to damage: ``damaged(kind) -> (store, entry path)``."""
    source_store, keys = pristine

    def copy(kind):
        store = Store(tmp_path / kind)
        shutil.copytree(source_store.entry_path(keys[kind]), store.entry_path(keys[kind]))
        return store, store.entry_path(keys[kind])

    return copy


def flip(path, offset=0):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x5A
    path.write_bytes(bytes(data))


def verify(store, key):
    result = runner.invoke(app, ["verify", key, "--store", str(store.root)])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "error: entry" in result.output
    return result.output


def set_manifest(entry, change):
    meta_file = entry / "zarr.json"
    meta = json.loads(meta_file.read_text())
    change(meta["attributes"]["featstore"])
    meta_file.write_text(json.dumps(meta))


CASES = [
    # (entry kind, damage, what verify must say)
    ("fixed", lambda e: (e / "ids/c/0").unlink(), "ids/c/0 is missing"),
    ("fixed", lambda e: flip(e / "ids/c/0", 8), "/ids is corrupt (CRC32C"),
    ("fixed", lambda e: (e / "checksums/c/0").unlink(), "checksums/c/0 is missing"),
    ("fixed", lambda e: flip(e / "features/c/1/0/0", 100), "features/c/1/0/0 is corrupt (rows 8-9"),
    ("fixed", lambda e: (e / "features/c/2/0/0").unlink(), "features/c/2/0/0 is missing"),
    ("fixed", lambda e: (e / "features/c/0/0/0").write_bytes(b"short"), "has 5 bytes, expected"),
    (
        "fixed",
        lambda e: (e / "features/zarr.json").write_text("{not json"),
        "features/zarr.json is unreadable",
    ),
    ("fixed", lambda e: (e / "features/zarr.json").unlink(), "features/zarr.json is missing"),
    ("fixed", lambda e: (e / "zarr.json").write_text("garbage"), "zarr.json is unreadable"),
    (
        "fixed",
        lambda e: set_manifest(e, lambda m: m.pop("array_checksums")),
        "'array_checksums' lacks",
    ),
    (
        "fixed",
        lambda e: set_manifest(e, lambda m: m.pop("n_rows")),
        "the manifest lacks the field 'n_rows'",
    ),
    (
        "fixed",
        lambda e: set_manifest(e, lambda m: m.update(format_version=9)),
        "format 9 by a newer featstore",
    ),
    ("lz4", lambda e: flip(e / "features/c/1/0", 40), "features/c/1/0"),
    ("strings", lambda e: flip(e / "ids/utf8/c/0", 3), "ids/utf8 is corrupt (CRC32C"),
    ("strings", lambda e: (e / "ids/offsets/c/0").unlink(), "ids/offsets/c/0 is missing"),
    ("ragged", lambda e: flip(e / "offsets/c/0", 9), "/offsets is corrupt (CRC32C"),
    ("ragged", lambda e: flip(e / "values/c/0/0", 4 * 4 * 5), "values/c/0/0 is corrupt (item"),
]


@pytest.mark.parametrize("kind,damage,needle", CASES)
def test_every_damage_is_named_by_verify_and_refused_by_the_reader(damaged, kind, damage, needle):
    store, entry = damaged(kind)
    assert runner.invoke(app, ["verify", entry.name, "--store", str(store.root)]).exit_code == 0
    damage(entry)
    assert needle in verify(store, entry.name)
    with pytest.raises(FeatstoreError):
        e = open_entry(str(entry))
        e.gather(np.arange(len(e)))


def test_damaged_entry_is_listed_and_removable(damaged):
    store, entry = damaged("fixed")
    (entry / "zarr.json").write_text("garbage")
    ls = runner.invoke(app, ["ls", "--store", str(store.root)])
    assert ls.exit_code == 0 and "DAMAGED" in ls.output and entry.name in ls.output
    info = runner.invoke(app, ["info", entry.name[:6], "--store", str(store.root)])
    assert info.exit_code == 1 and "is damaged" in info.output and "Traceback" not in info.output
    rm = runner.invoke(app, ["rm", entry.name, "--store", str(store.root)])
    assert rm.exit_code == 0 and store.entries() == []


def test_deleted_ids_chunk_is_never_read_as_zeros(damaged):
    """The original report: ids read as 0 and by_id(0) returned row 63."""
    store, entry = damaged("fixed")
    (entry / "ids/c/0").unlink()
    with pytest.raises(FeatstoreError, match="ids/c/0 is missing"):
        open_entry(str(entry)).by_id(0)


def test_column_checksums(damaged):
    store, entry = damaged("strings")
    meta = json.loads((entry / "zarr.json").read_text())["attributes"]["featstore"]
    assert meta["ids"] == "string"
    e = open_entry(str(entry))
    assert e.ids.tolist() == [f"s{i}" for i in range(9)]


def test_verify_checks_each_block_on_the_bytes_read(damaged):
    """A corrupt block is caught by the reader the first time that row is read, and a sound
    row of the same chunk still reads."""
    store, entry = damaged("fixed")
    flip(entry / "features/c/1/0/0", 100)  # row 8
    e = open_entry(str(entry))
    assert e.gather([10, 11]).shape == (2, 256, 64)  # another block of chunk 1
    with pytest.raises(FeatstoreError, match=r"features/c/1/0/0 is corrupt \(rows 8-9"):
        e.gather([8])


def test_all_zero_arrays_still_have_every_chunk(tmp_path, store):
    """zarr-python skips all-fill chunks unless told at open; a missing chunk is corruption, so
    ids of [0], an all-zero column and all-zero ragged values must still be written."""
    from test_reader import WordVectors

    class Zeros(WordVectors):
        @staticmethod
        def vectors(text):
            return WordVectors.vectors(text) * 0

        def forward(self, batch, kinds):
            return {"words": [self.vectors(t) for t in batch]}

    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps({"id": 0, "text": "all zero here"}) + "\n")
    key = run(Zeros(), open_source(path), store, dtype="float32")
    entry = store.entry_path(key)
    assert (entry / "ids/c/0").exists() and (entry / "values/c/0/0").exists()
    assert runner.invoke(app, ["verify", key, "--store", str(store.root)]).exit_code == 0
    assert open_entry(key, store).ids.tolist() == [0]


def test_ragged_items_spanning_values_chunks_are_checked(tmp_path, store, monkeypatch):
    """verify follows an item across chunk files, and a damaged later chunk is named."""
    from test_reader import WordVectors

    from featstore import writer

    monkeypatch.setattr(writer, "VALUE_CHUNK_BYTES", 3 * 16)  # 3 frames of [4] fp32 per chunk
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps({"id": i, "text": " ".join(["w"] * (1 + i % 4))}) + "\n"
                            for i in range(9)))  # fmt: skip
    key = run(WordVectors(), open_source(path), store, dtype="float32", chunk_rows=2,
              batch_size=2)  # fmt: skip
    entry = store.entry_path(key)
    chunks = sorted((entry / "values" / "c").iterdir(), key=lambda p: int(p.name))
    assert len(chunks) == 7  # 21 frames in chunks of 3
    e = open_entry(key, store)
    assert e.verify_all() == []
    src = open_source(path)
    for i in range(9):
        np.testing.assert_array_equal(e[i], WordVectors.vectors(src.load(i)).numpy())
    flip(chunks[5] / "0", 4)
    assert "values/c/5/0 is corrupt (item" in verify(store, key)
