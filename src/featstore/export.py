"""``featstore export``: an entry as the files retrieval tools index directly.

The layout is clip-retrieval's, which autofaiss reads as is::

    OUT/embeddings/emb_00000.npy        rows of shard 0 ([n, *row_shape], the stored dtype)
    OUT/metadata/metadata_00000.parquet id + metadata columns of the same rows
    OUT/export.json                     what was exported, from which entry

or, with ``--format parquet``, one ``embeddings/emb_00000.parquet`` per shard holding ``id``,
the columns and an ``embedding`` list column (``autofaiss build_index --file_format parquet
--embedding_column_name embedding``). Rows stream through in blocks (checked against their
checksums), so memory stays bounded whatever the entry's size; everything is written into a
temporary folder that is renamed to OUT only when complete.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import FeatstoreError
from .progress import Progress
from .reader import Entry

FORMATS = ("npy", "parquet")
SHARD_BYTES = 1 << 30  # default shard size: about 1 GiB of rows
BLOCK_BYTES = 64 << 20  # rows read per step


@dataclass
class ExportResult:
    out: Path
    n_rows: int
    shards: list[str]

    def summary(self) -> str:
        return f"exported {self.n_rows} rows in {len(self.shards)} shard(s) to {self.out}"


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise FeatstoreError(
            "export writes parquet files and needs pyarrow: pip install 'featstore-heads[export]'"
        ) from None
    return pyarrow


def _metadata_table(pa, entry: Entry, lo: int, hi: int, columns: dict[str, np.ndarray]):
    data = {"id": entry.ids[lo:hi].tolist()}
    data.update({name: values[lo:hi].tolist() for name, values in columns.items()})
    return pa.table(data)


def export_entry(
    entry: Entry,
    out: Path,
    fmt: str = "npy",
    shard_rows: int | None = None,
    dtype: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> ExportResult:
    """Write ``entry`` to ``out`` in ``fmt`` ("npy" or "parquet"); see the module docstring."""
    if fmt not in FORMATS:
        raise FeatstoreError(f"unknown export format {fmt!r}; use {' or '.join(FORMATS)}.")
    if entry.ragged:
        raise FeatstoreError(
            f"entry {entry.key} is ragged ([T, {', '.join(map(str, entry.row_shape))}] items); "
            f"export writes one row per item. Read ragged entries with featstore or zarr."
        )
    if fmt == "parquet" and len(entry.row_shape) != 1:
        raise FeatstoreError(
            f"parquet export needs vector rows; entry {entry.key} has rows of shape "
            f"{list(entry.row_shape)}. Use --format npy."
        )
    out_dtype = np.dtype(dtype or entry.dtype)
    if out_dtype.name not in ("float16", "float32"):
        raise FeatstoreError(f"--dtype {dtype!r} unknown; use float16 or float32.")
    if shard_rows is not None and (not isinstance(shard_rows, int) or shard_rows < 1):
        raise FeatstoreError(f"--shard-rows must be an integer >= 1, got {shard_rows!r}.")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FeatstoreError(f"{out} exists and is not empty; choose another --out or pass "
                             f"--overwrite.")  # fmt: skip
    pa = _pyarrow()
    n = len(entry)
    row_bytes = int(np.prod(entry.row_shape)) * out_dtype.itemsize
    shard_rows = shard_rows or max(1, SHARD_BYTES // row_bytes)
    step = max(1, min(shard_rows, BLOCK_BYTES // row_bytes))
    columns = {name: entry.column(name) for name in entry.meta.columns}
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "embeddings").mkdir(parents=True)
    if fmt == "npy":
        (tmp / "metadata").mkdir()
    shards = []
    bar = Progress(n, f"export {entry.key}", unit="row", enabled=progress)
    try:
        for s, lo in enumerate(range(0, n, shard_rows)):
            hi = min(lo + shard_rows, n)
            name = f"emb_{s:05d}.{fmt}"
            shards.append(name)
            if fmt == "npy":
                rows = np.lib.format.open_memmap(
                    tmp / "embeddings" / name, mode="w+", dtype=out_dtype,
                    shape=(hi - lo, *entry.row_shape),
                )  # fmt: skip
                for a in range(lo, hi, step):
                    b = min(a + step, hi)
                    rows[a - lo : b - lo] = entry.gather(np.arange(a, b))
                    bar.update(b - a)
                rows.flush()
                del rows
                pa.parquet.write_table(_metadata_table(pa, entry, lo, hi, columns),
                                       tmp / "metadata" / f"metadata_{s:05d}.parquet")  # fmt: skip
            else:
                writer = None
                for a in range(lo, hi, step):
                    b = min(a + step, hi)
                    table = _metadata_table(pa, entry, a, b, columns)
                    rows = entry.gather(np.arange(a, b)).astype(out_dtype, copy=False)
                    values = pa.array(rows.reshape(-1))
                    table = table.append_column(
                        "embedding", pa.FixedSizeListArray.from_arrays(values, rows.shape[1])
                    )
                    if writer is None:
                        writer = pa.parquet.ParquetWriter(tmp / "embeddings" / name, table.schema)
                    writer.write_table(table)
                    bar.update(b - a)
                writer.close()
        info = {"key": entry.key, "teacher": entry.meta.teacher, "output": entry.meta.output,
                "format": fmt, "n_rows": n, "row_shape": list(entry.row_shape),
                "dtype": out_dtype.name, "shard_rows": shard_rows, "shards": shards,
                "columns": ["id", *columns]}  # fmt: skip
        (tmp / "export.json").write_text(json.dumps(info, indent=2))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        bar.close()
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    result = ExportResult(out, n, shards)
    log(result.summary())
    return result
