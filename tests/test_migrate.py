"""Format-1 entries (zarr-python `string` ids, one zlib CRC32 per chunk) are refused with a
pointer to `featstore migrate`, which upgrades them in place, kill-safely, checking every chunk."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from featstore import open_entry
from featstore.errors import CorruptChunkError
from featstore.format import LegacyFormatError
from featstore.migrate import migrate_entry
from featstore_cli.featstore_app import app

runner = CliRunner()


def write_v1(root, key, ragged=False):
    """An entry exactly as featstore format 1 wrote it (see the format-1 spec)."""
    rng = np.random.default_rng(0)
    n, cr = 10, 4
    ids = np.asarray([f"img/{i}.png" for i in range(n)], dtype=object)
    with zarr.config.set({"array.write_empty_chunks": True}):
        g = zarr.open_group(str(root / key), mode="w", zarr_format=3)
        if ragged:
            lengths = rng.integers(1, 5, n)
            offsets = np.concatenate([[0], np.cumsum(lengths)]).astype("<i8")
            data = rng.standard_normal((int(offsets[-1]), 3)).astype("<f2")
            g.create_array("values", shape=data.shape, chunks=(7, 3), dtype="float16",
                           fill_value=0, compressors=None, filters=None)[:] = data  # fmt: skip
            g.create_array("offsets", shape=offsets.shape, dtype="int64")[:] = offsets
            units = [data[offsets[u * cr] : offsets[min((u + 1) * cr, n)]] for u in range(3)]
        else:
            data = rng.standard_normal((n, 8)).astype("<f2")
            g.create_array("features", shape=data.shape, chunks=(cr, 8), dtype="float16",
                           fill_value=0, compressors=None, filters=None)[:] = data  # fmt: skip
            units = [data[u * cr : (u + 1) * cr] for u in range(3)]
        g.create_array("ids", shape=(n,), dtype=str)[:] = ids
        g.create_array("columns/split", shape=(n,), dtype=str)[:] = np.asarray(
            ["train"] * 6 + ["test"] * 4, dtype=object)  # fmt: skip
    g.attrs["featstore"] = {
        "key": key, "key_inputs": {"teacher": "t"}, "teacher": "t", "output": "o",
        "output_description": "", "source": {"kind": "image-folder", "path": "x", "n": n},
        "format_version": 1, "layout": "ragged" if ragged else "fixed",
        "row_shape": [3] if ragged else [8], "dtype": "float16", "n_rows": n, "chunk_rows": cr,
        "n_chunks": 3, "compression": "none", "batch_size": 2, "complete": True,
        "checksums": [f"{zlib.crc32(np.ascontiguousarray(u).data):08x}" for u in units],
        "provenance": {"host": "old"}, **({"n_values": int(offsets[-1])} if ragged else {}),
    }  # fmt: skip
    return data, ids, (offsets if ragged else None)


@pytest.mark.parametrize("ragged", [False, True])
def test_format1_entry_is_refused_then_migrated(store, ragged):
    data, ids, offsets = write_v1(store.root, "old1", ragged)
    with pytest.raises(LegacyFormatError, match="featstore migrate old1"):
        open_entry("old1", store)
    ls = runner.invoke(app, ["ls", "--store", str(store.root)])
    assert "format 1" in ls.output
    result = runner.invoke(app, ["migrate", "old1", "--store", str(store.root), "-q"])
    assert result.exit_code == 0, result.output
    e = open_entry("old1", store)
    assert e.ids.tolist() == ids.tolist() and e.column("split").tolist()[-1] == "test"
    if ragged:
        np.testing.assert_array_equal(e[2], data[offsets[2] : offsets[3]])
    else:
        np.testing.assert_array_equal(e.gather(np.arange(10)), data)
    assert e.verify_all() == []
    assert e.manifest["provenance"]["migrated"]["from_format"] == 1
    again = runner.invoke(app, ["migrate", "old1", "--store", str(store.root), "-q"])
    assert again.exit_code == 0 and "already in store format 2" in again.output


def test_migration_killed_while_swapping_finishes_on_the_next_run(store, monkeypatch):
    data, ids, _ = write_v1(store.root, "old2")
    from pathlib import Path

    real_rename, calls = Path.rename, []

    def rename(self, target):
        calls.append(target)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed after swapping the first array in
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        migrate_entry(store, "old2", progress=False)
    monkeypatch.setattr(Path, "rename", real_rename)
    migrate_entry(store, "old2", progress=False)
    e = open_entry("old2", store)
    assert e.ids.tolist() == ids.tolist()
    np.testing.assert_array_equal(e.gather(np.arange(10)), data)


def test_corrupt_format1_entry_is_not_migrated(store):
    write_v1(store.root, "old3")
    chunk = store.root / "old3" / "features" / "c" / "1" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[3] ^= 1
    chunk.write_bytes(bytes(raw))
    with pytest.raises(CorruptChunkError, match="unit 1"):
        migrate_entry(store, "old3", progress=False)
    with pytest.raises(LegacyFormatError):
        open_entry("old3", store)  # left as it was
