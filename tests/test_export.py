"""`featstore export`: npy shards + parquet metadata (clip-retrieval/autofaiss layout), or
parquet with an embedding column; streamed, atomic, and clear about what it cannot export."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from featstore import open_entry
from featstore.extract import extract
from featstore.sources import open_source
from featstore_cli.featstore_app import app

pq = pytest.importorskip("pyarrow.parquet")
runner = CliRunner()


@pytest.fixture
def text_entry(tmp_path, store, text_tiny):
    path = tmp_path / "caps.jsonl"
    path.write_text("".join(json.dumps({"id": f"c{i}", "text": f"caption {'x' * i}"}) + "\n"
                            for i in range(7)))  # fmt: skip
    key = extract(text_tiny, open_source(path), store, outputs=["pooled", "hidden"],
                  num_workers=0, progress=False, log=lambda *_: None).entries  # fmt: skip
    return {e.output: open_entry(e.key, store) for e in key}


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_npy_shards_and_parquet_metadata(text_entry, store, tmp_path):
    entry = text_entry["pooled"]
    out = tmp_path / "export"
    result = cli("export", entry.key, "--out", out, "--shard-rows", 3, "--store", store.root)
    assert result.exit_code == 0, result.output
    assert "exported 7 rows in 3 shard(s)" in result.output
    shards = sorted((out / "embeddings").glob("*.npy"))
    assert [p.name for p in shards] == ["emb_00000.npy", "emb_00001.npy", "emb_00002.npy"]
    rows = np.concatenate([np.load(p) for p in shards])
    np.testing.assert_array_equal(rows, entry.gather(np.arange(7)))
    meta = [pq.read_table(p).to_pydict() for p in sorted((out / "metadata").glob("*.parquet"))]
    assert [len(m["id"]) for m in meta] == [3, 3, 1]
    assert sum((m["id"] for m in meta), []) == [f"c{i}" for i in range(7)]
    info = json.loads((out / "export.json").read_text())
    assert info["key"] == entry.key and info["n_rows"] == 7 and info["dtype"] == "float16"
    again = cli("export", entry.key, "--out", out, "--store", store.root)
    assert again.exit_code == 1 and "exists and is not empty" in again.output


def test_parquet_with_an_embedding_column(text_entry, store, tmp_path):
    entry = text_entry["pooled"]
    out = tmp_path / "pq"
    result = cli("export", entry.key, "--out", out, "--format", "parquet", "--dtype", "float32",
                 "--store", store.root, "-q")  # fmt: skip
    assert result.exit_code == 0, result.output
    table = pq.read_table(out / "embeddings" / "emb_00000.parquet").to_pydict()
    assert table["id"] == [f"c{i}" for i in range(7)]
    got = np.asarray(table["embedding"], dtype=np.float32)
    np.testing.assert_array_equal(got, entry.gather(np.arange(7)).astype(np.float32))


def test_what_cannot_be_exported_is_said(text_entry, store, tmp_path):
    hidden = text_entry["hidden"]  # rows [77, 32]
    result = cli("export", hidden.key, "--out", tmp_path / "x", "--format", "parquet",
                 "--store", store.root)  # fmt: skip
    assert result.exit_code == 1 and "needs vector rows" in result.output
    assert not (tmp_path / "x").exists()
    ok = cli("export", hidden.key, "--out", tmp_path / "y", "--store", store.root, "-q")
    assert ok.exit_code == 0 and np.load(tmp_path / "y/embeddings/emb_00000.npy").shape == (
        7, 77, 32)  # fmt: skip
    bad = cli("export", hidden.key, "--out", tmp_path / "z", "--format", "csv",
              "--store", store.root)  # fmt: skip
    assert bad.exit_code == 1 and "unknown export format 'csv'" in bad.output
