"""Writing one cache entry chunk by chunk, so that a killed run resumes where it stopped.

A *commit unit* is a run of ``chunk_rows`` consecutive items. For fixed-shape outputs it is
exactly one Zarr chunk of ``features``; for ragged outputs it is the items' slice of ``values``.
Committing unit i means: write its data through zarr-python (whose local store writes each chunk
file to a temporary name and renames it into place), then atomically create the record
``<root>/_progress/<key>/<i>.json`` holding the unit's row count, CRC32 and, for ragged
outputs, the item lengths.
The record, not the data file, says a unit is done: a kill between the two just redoes the unit.
``finalize`` folds the records into the manifest, writes ``offsets`` and sets ``complete``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from .errors import StoreError
from .hashing import array_checksum
from .store import MANIFEST_ATTR, read_manifest

FORMAT_VERSION = 1
PROGRESS_DIR = "_progress"  # beside the entries, so the entry stays a clean Zarr hierarchy


# Every chunk is written, even all-zero ones, so every chunk file exists for the mmap reader.
# zarr-python only honours this through its global config (open_array ignores ``config=``).
def _writing():
    return zarr.config.set({"array.write_empty_chunks": True})


def _fsync(path: Path) -> None:
    """Flush a file (or a directory's entries) to disk, so a commit survives power loss too."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def chunk_file(array_dir: Path, chunk: int, ndim: int) -> Path:
    """The file of chunk ``chunk`` along axis 0 (default '/' key encoding, whole-row chunks)."""
    return array_dir / "c" / "/".join([str(chunk)] + ["0"] * (ndim - 1))


def progress_dir(entry_path: Path) -> Path:
    return entry_path.parent / PROGRESS_DIR / entry_path.name


def codecs_for(compression: str | None) -> dict[str, Any]:
    """Zarr v3 codec arguments. ``None`` keeps chunks raw so the reader can memory-map them."""
    if compression in (None, "none"):
        return {"compressors": None, "filters": None}
    if compression in ("lz4", "zstd"):
        return {
            "compressors": zarr.codecs.BloscCodec(cname=compression, clevel=5, shuffle="shuffle")
        }
    raise StoreError(f"unknown compression {compression!r}; use none, lz4 or zstd.")


def ids_array(ids: list | np.ndarray) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.dtype.kind in "iu":
        return arr.astype("<i8")
    return np.asarray([str(x) for x in arr.tolist()], dtype=object)


def _write_column(group: zarr.Group, name: str, values: Any, n: int) -> None:
    """A 1-d per-item array: int64 when every value is an integer, else strings."""
    values = ids_array(values)
    chunk = max(1, min(n, 1 << 16))
    if values.dtype == object:
        arr = group.create_array(name, shape=(n,), chunks=(chunk,), dtype=str)
    else:
        arr = group.create_array(name, shape=(n,), chunks=(chunk,), dtype="int64", fill_value=0)
    if n:
        with _writing():
            arr[:] = values


class EntryWriter:
    """Creates or reopens an entry and commits its units."""

    def __init__(self, path: Path):
        self.path = Path(path)
        manifest = read_manifest(self.path)
        if manifest is None:
            raise StoreError(f"{self.path} is not a featstore entry (no manifest in zarr.json).")
        self.manifest = manifest
        self.group = zarr.open_group(str(self.path), mode="r+")
        self.ragged = manifest["layout"] == "ragged"
        self.n_rows: int = manifest["n_rows"]
        self.chunk_rows: int = manifest["chunk_rows"]
        self.n_chunks: int = manifest["n_chunks"]
        self.dtype = np.dtype(manifest["dtype"])
        self.row_shape = tuple(manifest["row_shape"])
        self.commits = progress_dir(self.path)

    def _array(self, name: str) -> zarr.Array:
        # write_empty_chunks is a runtime setting, not stored metadata: pass it on every open.
        return zarr.open_array(str(self.path / name), mode="r+")

    # -- creation -------------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: Path,
        manifest: dict[str, Any],
        ids: np.ndarray,
        row_shape: tuple[int, ...],
        dtype: str,
        ragged: bool,
        chunk_rows: int,
        compression: str | None = None,
        columns: dict[str, np.ndarray] | None = None,
    ) -> EntryWriter:
        """Create the group, its arrays and the (incomplete) manifest. ``row_shape`` of a ragged
        output is the shape of one frame, e.g. ``(1280,)`` for ``[T_i, 1280]`` items.
        ``columns`` are per-item metadata stored as ``columns/<name>`` (e.g. a caption's
        image id), written with ``ids``."""
        n = len(ids)
        if path.exists():
            shutil.rmtree(path)
        shutil.rmtree(progress_dir(path), ignore_errors=True)
        group = zarr.open_group(str(path), mode="w", zarr_format=3)
        codecs = codecs_for(compression)
        if ragged:
            frame_bytes = int(np.prod(row_shape)) * np.dtype(dtype).itemsize
            # ~32 MiB of frames, but no bigger than 256 frames per item (tiny entries stay tiny)
            value_chunk = max(1, min((32 << 20) // max(frame_bytes, 1), 256 * max(n, 1)))
            group.create_array(
                "values",
                shape=(0, *row_shape),
                chunks=(value_chunk, *row_shape),
                dtype=dtype,
                fill_value=0,
                **codecs,
            )
        else:
            group.create_array(
                "features",
                shape=(n, *row_shape),
                chunks=(chunk_rows, *row_shape),
                dtype=dtype,
                fill_value=0,
                **codecs,
            )
        _write_column(group, "ids", ids, n)
        for name, values in (columns or {}).items():
            if len(values) != n:
                raise StoreError(f"column {name!r} has {len(values)} values for {n} rows")
            _write_column(group, f"columns/{name}", values, n)
        full = {
            **manifest,
            "format_version": FORMAT_VERSION,
            "layout": "ragged" if ragged else "fixed",
            "row_shape": list(row_shape),
            "dtype": np.dtype(dtype).name,
            "n_rows": n,
            "chunk_rows": chunk_rows,
            "n_chunks": (n + chunk_rows - 1) // chunk_rows,
            "compression": compression or "none",
            "complete": False,
        }
        group.attrs[MANIFEST_ATTR] = full
        progress_dir(path).mkdir(parents=True)
        return cls(path)

    # -- progress -------------------------------------------------------------------------------
    def unit_rows(self, unit: int) -> tuple[int, int]:
        start = unit * self.chunk_rows
        return start, min(start + self.chunk_rows, self.n_rows)

    def records(self) -> dict[int, dict[str, Any]]:
        out = {}
        if self.commits.is_dir():
            for f in self.commits.glob("*.json"):
                try:
                    out[int(f.stem)] = json.loads(f.read_text())
                except (ValueError, json.JSONDecodeError):
                    continue  # a torn record was never renamed into place; treat as absent
        return out

    def committed(self) -> set[int]:
        return set(self.records())

    def clean_partials(self) -> int:
        """Remove temporary chunk files a killed writer left behind; they never count."""
        n = 0
        for f in self.path.rglob("*.partial"):
            f.unlink(missing_ok=True)
            n += 1
        for f in self.commits.glob("*.tmp") if self.commits.is_dir() else []:
            f.unlink(missing_ok=True)
            n += 1
        return n

    # -- commit ---------------------------------------------------------------------------------
    def commit(self, unit: int, data: np.ndarray | list[np.ndarray]) -> None:
        """Write one unit's rows (an array for fixed outputs, a list of ``[T_i, ...]`` arrays for
        ragged ones) and record it. Ragged units must be committed in order."""
        start, stop = self.unit_rows(unit)
        record: dict[str, Any] = {"unit": unit, "rows": stop - start}
        if self.ragged:
            if len(data) != stop - start:
                raise StoreError(f"unit {unit} needs {stop - start} items, got {len(data)}")
            values_start = 0
            if unit > 0:
                prev = self.records().get(unit - 1)
                if prev is None:
                    raise StoreError(f"ragged unit {unit} committed before unit {unit - 1}")
                values_start = prev["values_stop"]
            lengths = [int(x.shape[0]) for x in data]
            block = (
                np.concatenate(data).astype(self.dtype, copy=False)
                if data
                else np.zeros((0, *self.row_shape), self.dtype)
            )
            values_stop = values_start + block.shape[0]
            values = self._array("values")
            if values.shape[0] < values_stop:
                values.resize((values_stop, *self.row_shape))
            if block.shape[0]:
                with _writing():
                    values[values_start:values_stop] = block
                vc = values.chunks[0]
                for c in range(values_start // vc, (values_stop - 1) // vc + 1):
                    _fsync(chunk_file(self.path / "values", c, 1 + len(self.row_shape)))
            _fsync(self.path / "values" / "zarr.json")
            record.update(values_start=values_start, values_stop=values_stop, lengths=lengths)
            record["crc32"] = array_checksum(block)
        else:
            block = np.asarray(data, dtype=self.dtype)
            if block.shape != (stop - start, *self.row_shape):
                raise StoreError(
                    f"unit {unit} has shape {block.shape}, "
                    f"expected {(stop - start, *self.row_shape)}"
                )
            with _writing():
                self._array("features")[start:stop] = block
            _fsync(chunk_file(self.path / "features", unit, 1 + len(self.row_shape)))
            record["crc32"] = array_checksum(block)
        tmp = self.commits / f"{unit}.json.tmp"
        with open(tmp, "w") as f:
            json.dump(record, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.commits / f"{unit}.json")
        _fsync(self.commits)

    # -- finish ---------------------------------------------------------------------------------
    def finalize(self, provenance: dict[str, Any]) -> dict[str, Any]:
        records = self.records()
        missing = [u for u in range(self.n_chunks) if u not in records]
        if missing:
            raise StoreError(f"cannot finalize {self.path.name}: units {missing[:5]} not committed")
        checksums = [records[u]["crc32"] for u in range(self.n_chunks)]
        manifest = dict(self.manifest)
        if self.ragged:
            lengths = [n for u in range(self.n_chunks) for n in records[u]["lengths"]]
            offsets = np.zeros(self.n_rows + 1, dtype="<i8")
            np.cumsum(lengths, out=offsets[1:])
            total = int(offsets[-1])
            values = self._array("values")
            if values.shape[0] != total:
                values.resize((total, *self.row_shape))
            off = self.group.create_array(
                "offsets",
                shape=(self.n_rows + 1,),
                chunks=(max(1, min(self.n_rows + 1, 1 << 20)),),
                dtype="int64",
                fill_value=0,
                overwrite=True,
            )
            with _writing():
                off[:] = offsets
            manifest["n_values"] = total
        manifest.update(complete=True, checksums=checksums, provenance=provenance)
        self.group.attrs[MANIFEST_ATTR] = manifest
        shutil.rmtree(self.commits, ignore_errors=True)
        self.manifest = manifest
        return manifest
