"""Writing one cache entry unit by unit, so that a killed run resumes where it stopped and
several ranks can commit different units of the same entry.

A *commit unit* is a run of ``chunk_rows`` consecutive items. For fixed-shape outputs it is
exactly one Zarr chunk of ``features``. For ragged outputs it is a *segment*: the unit's frames
as one raw file beside the entry, so any unit can be committed in any order, by any rank.
Committing unit u means: write its data (chunk or segment: temporary name, fsync, rename), then
atomically create the record ``_progress/<key>/<u>.json`` with the unit's CRC32C per block.
The record, not the data file, says a unit is done: a kill between the two redoes the unit.

Finalizing builds ``offsets`` and assembles ``values`` from the segments (ragged), writes the
``checksums`` array and the complete manifest, and removes ``_progress/<key>/``. Assembly can be
split across ranks (``assemble_values``); the bytes never depend on who wrote what.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from .arrays import VECTOR_CHUNK, write_raw, write_vector, writing_every_chunk
from .errors import StoreError
from .format import (
    CHECKSUMS,
    COLUMNS,
    COMPRESSIONS,
    FEATURES,
    IDS,
    OFFSETS,
    VALUES,
    Manifest,
    block_rows_for,
    chunk_file,
    load_manifest,
    progress_dir,
    write_manifest,
)
from .integrity import block_checksums, crc32c

VALUE_CHUNK_BYTES = 32 << 20  # ragged `values`: about this much per chunk


def fsync_path(path: Path) -> None:
    """Flush a file (or a directory's entries) to disk, so a commit survives power loss too."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes | np.ndarray) -> None:
    """Write a file under a temporary name, fsync it and rename it into place."""
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "wb") as f:
        if isinstance(data, np.ndarray):
            np.ascontiguousarray(data).tofile(f)
        else:
            f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def codecs_for(compression: str | None) -> dict[str, Any]:
    """Zarr v3 codec arguments. ``none`` keeps chunks raw so the reader can memory-map them."""
    if compression in (None, "none"):
        return {"compressors": None, "filters": None}
    if compression in COMPRESSIONS:
        return {
            "compressors": zarr.codecs.BloscCodec(cname=compression, clevel=5, shuffle="shuffle")
        }
    raise StoreError(f"unknown compression {compression!r}; use none, lz4 or zstd.")


@dataclass
class FinalizePlan:
    """What finalizing needs, computed once (by rank 0) from every unit's record."""

    records: dict[int, dict[str, Any]]
    offsets: np.ndarray | None = None  # ragged: int64 [N + 1]
    value_chunk: int = 0  # ragged: frames per `values` chunk

    @property
    def n_value_chunks(self) -> int:
        if self.offsets is None or not self.value_chunk:
            return 0
        return -(-int(self.offsets[-1]) // self.value_chunk)


class EntryWriter:
    """Creates or reopens an entry and commits its units."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.meta: Manifest = load_manifest(self.path)
        self.commits = progress_dir(self.path)

    # The writer's view of the manifest, under the names callers have always used.
    @property
    def manifest(self) -> dict[str, Any]:
        return self.meta.to_dict()

    @property
    def ragged(self) -> bool:
        return self.meta.ragged

    @property
    def n_rows(self) -> int:
        return self.meta.n_rows

    @property
    def chunk_rows(self) -> int:
        return self.meta.chunk_rows

    @property
    def n_chunks(self) -> int:
        return self.meta.n_chunks

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.meta.dtype)

    @property
    def row_shape(self) -> tuple[int, ...]:
        return self.meta.row_shape

    def unit_rows(self, unit: int) -> tuple[int, int]:
        return self.meta.unit_rows(unit)

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
        """Create the group, ``ids``, the metadata columns and the (incomplete) manifest.
        ``manifest`` holds the descriptive fields (key, key_inputs, teacher, output, source, …);
        ``row_shape`` of a ragged output is the shape of one frame, e.g. ``(1280,)``."""
        path = Path(path)
        n = len(ids)
        codecs = codecs_for(compression)
        for name, values in (columns or {}).items():
            if len(values) != n:
                raise StoreError(f"column {name!r} has {len(values)} values for {n} rows")
        if path.exists():
            shutil.rmtree(path)
        shutil.rmtree(progress_dir(path), ignore_errors=True)
        group = zarr.open_group(str(path), mode="w", zarr_format=3)
        if not ragged:
            group.create_array(
                FEATURES,
                shape=(n, *row_shape),
                chunks=(chunk_rows, *row_shape),
                dtype=dtype,
                fill_value=0,
                **codecs,
            )
        id_type, sums = write_vector(group, IDS, ids)
        column_types = {}
        for name, values in (columns or {}).items():
            column_types[name], more = write_vector(group, f"{COLUMNS}/{name}", values)
            sums.update(more)
        row_bytes = int(np.prod(row_shape)) * np.dtype(dtype).itemsize
        known = {"key_inputs", "teacher", "output", "output_description", "source", "batch_size"}
        meta = Manifest(
            key=manifest.get("key", path.name),
            layout="ragged" if ragged else "fixed",
            row_shape=tuple(int(d) for d in row_shape),
            dtype=np.dtype(dtype).name,
            n_rows=n,
            chunk_rows=chunk_rows,
            block_rows=block_rows_for(chunk_rows, row_bytes, ragged),
            complete=False,
            compression=compression or "none",
            ids=id_type,
            columns=column_types,
            array_checksums=sums,
            **{k: v for k, v in manifest.items() if k in known},
        )
        write_manifest(path, meta)
        progress_dir(path).mkdir(parents=True)
        return cls(path)

    # -- progress -------------------------------------------------------------------------------
    def segment_file(self, unit: int) -> Path:
        return self.commits / f"{unit}.values"

    def _valid_record(self, unit: int, record: Any) -> bool:
        """A record that describes unit ``unit`` completely (anything else is redone)."""
        if not isinstance(record, dict) or record.get("unit") != unit:
            return False
        start, stop = self.unit_rows(unit)
        crcs = record.get("crc32c")
        if record.get("rows") != stop - start or not isinstance(crcs, list):
            return False
        if not self.ragged:
            return len(crcs) == len(self.meta.unit_blocks(unit))
        lengths = record.get("lengths")
        if (
            not isinstance(lengths, list)
            or len(lengths) != stop - start
            or len(crcs) != len(lengths)
        ):
            return False
        try:
            size = self.segment_file(unit).stat().st_size
        except OSError:
            return False
        return size == sum(lengths) * self.meta.row_bytes

    def records(self) -> dict[int, dict[str, Any]]:
        """The committed units' records (torn or inconsistent ones count as not committed)."""
        out = {}
        if self.commits.is_dir():
            for f in self.commits.glob("*.json"):
                try:
                    unit = int(f.stem)
                    record = json.loads(f.read_text())
                except (ValueError, OSError, json.JSONDecodeError):
                    continue
                if 0 <= unit < self.n_chunks and self._valid_record(unit, record):
                    out[unit] = record
        return out

    def committed(self) -> set[int]:
        return set(self.records())

    def clean_partials(self) -> int:
        """Remove temporary files a killed writer left behind; they never count."""
        n = 0
        for f in [*self.path.rglob("*.partial"), *self.commits.glob("*.tmp")]:
            f.unlink(missing_ok=True)
            n += 1
        return n

    # -- commit ---------------------------------------------------------------------------------
    def commit(self, unit: int, data: np.ndarray | list[np.ndarray]) -> dict[str, Any]:
        """Write one unit's rows (an array for fixed outputs, a list of ``[T_i, ...]`` arrays for
        ragged ones) and record it; returns the record. Units may be committed in any order."""
        start, stop = self.unit_rows(unit)
        record: dict[str, Any] = {"unit": unit, "rows": stop - start}
        self.commits.mkdir(parents=True, exist_ok=True)  # even if someone deleted _progress
        if self.ragged:
            if len(data) != stop - start:
                raise StoreError(f"unit {unit} needs {stop - start} items, got {len(data)}")
            items = [np.ascontiguousarray(x, dtype=self.dtype) for x in data]
            for x in items:
                if x.shape[1:] != self.row_shape:
                    raise StoreError(f"unit {unit}: an item has frames {x.shape[1:]}, "
                                     f"expected {self.row_shape}")  # fmt: skip
            block = np.concatenate(items) if items else np.zeros((0, *self.row_shape), self.dtype)
            write_atomic(self.segment_file(unit), block.astype(self.dtype.newbyteorder("<")))
            record["lengths"] = [int(x.shape[0]) for x in items]
            record["crc32c"] = [crc32c(x) for x in items]
        else:
            block = np.asarray(data, dtype=self.dtype)
            if block.shape != (stop - start, *self.row_shape):
                raise StoreError(
                    f"unit {unit} has shape {block.shape}, "
                    f"expected {(stop - start, *self.row_shape)}"
                )
            with writing_every_chunk():
                zarr.open_array(str(self.path / FEATURES), mode="r+")[start:stop] = block
            fsync_path(chunk_file(self.path / FEATURES, unit, 1 + len(self.row_shape)))
            record["crc32c"] = block_checksums(block, self.meta.block_rows)
        write_atomic(self.commits / f"{unit}.json", json.dumps(record).encode())
        fsync_path(self.commits)
        return record

    # -- finish ---------------------------------------------------------------------------------
    def plan_finalize(self, records: dict[int, dict[str, Any]] | None = None) -> FinalizePlan:
        """Check that every unit is committed; for ragged entries, build ``offsets`` and create
        the ``values`` array (its chunks are then written by ``assemble_values``)."""
        records = self.records() if records is None else records
        missing = [u for u in range(self.n_chunks) if u not in records]
        if missing:
            raise StoreError(f"cannot finalize {self.path.name}: units {missing[:5]} not committed")
        plan = FinalizePlan(records)
        if self.ragged:
            lengths = [n for u in range(self.n_chunks) for n in records[u]["lengths"]]
            plan.offsets = np.zeros(self.n_rows + 1, dtype="<i8")
            np.cumsum(lengths, out=plan.offsets[1:])
            total = int(plan.offsets[-1])
            plan.value_chunk = max(1, min(VALUE_CHUNK_BYTES // self.meta.row_bytes, total))
            zarr.open_group(str(self.path), mode="r+").create_array(
                VALUES,
                shape=(total, *self.row_shape),
                chunks=(plan.value_chunk, *self.row_shape),
                dtype=self.meta.dtype,
                fill_value=0,
                overwrite=True,
                **codecs_for(self.meta.compression),
            )
        return plan

    def assemble_values(self, plan: FinalizePlan, chunks: range | list[int]) -> None:
        """Write ``values`` chunks from the unit segments (ragged). Chunks are independent, so
        ranks may each write a share. A segment whose bytes no longer match the CRC32C recorded
        at commit is an error, never copied."""
        if not chunks:
            return
        with writing_every_chunk():  # read at open: every chunk, even an all-zero one
            values = zarr.open_array(str(self.path / VALUES), mode="r+")
        vc, total = plan.value_chunk, int(plan.offsets[-1])
        cr = self.chunk_rows
        unit_starts = plan.offsets[np.arange(self.n_chunks) * cr]
        cache: dict[int, np.ndarray] = {}
        for c in chunks:
            lo, hi = c * vc, min((c + 1) * vc, total)
            buf = np.empty((hi - lo, *self.row_shape), self.dtype)
            first = int(np.searchsorted(unit_starts, lo, side="right")) - 1
            for u in range(max(first, 0), self.n_chunks):
                u_lo = int(unit_starts[u])
                if u_lo >= hi:
                    break
                seg = cache.get(u)
                if seg is None:
                    cache.clear()
                    seg = cache[u] = self._load_segment(u, plan.records[u])
                a, b = max(lo, u_lo), min(hi, u_lo + len(seg))
                if b > a:
                    buf[a - lo : b - lo] = seg[a - u_lo : b - u_lo]
            with writing_every_chunk():
                values[lo:hi] = buf
            fsync_path(chunk_file(self.path / VALUES, c, 1 + len(self.row_shape)))

    def _load_segment(self, unit: int, record: dict[str, Any]) -> np.ndarray:
        path = self.segment_file(unit)
        seg = np.fromfile(path, dtype=self.dtype.newbyteorder("<")).reshape(-1, *self.row_shape)
        bounds = np.concatenate([[0], np.cumsum(record["lengths"])])
        for i, want in enumerate(record["crc32c"]):
            if crc32c(seg[bounds[i] : bounds[i + 1]]) != want:
                raise StoreError(
                    f"segment {path} changed after it was committed (item {i} fails its CRC32C). "
                    f"Delete it (and {path.with_suffix('.json')}) and run the extraction again."
                )
        return seg

    def finish(self, plan: FinalizePlan, provenance: dict[str, Any]) -> dict[str, Any]:
        """Write ``offsets`` and ``checksums``, mark the entry complete, drop the records."""
        group = zarr.open_group(str(self.path), mode="r+")
        sums = dict(self.meta.array_checksums)
        if self.ragged:
            sums.update(write_raw(group, OFFSETS, plan.offsets, max(VECTOR_CHUNK, 1 << 20)))
            self.meta.n_values = int(plan.offsets[-1])
        block_crcs = np.asarray(
            [c for u in range(self.n_chunks) for c in plan.records[u]["crc32c"]], dtype="<u4"
        )
        sums.update(write_raw(group, CHECKSUMS, block_crcs, VECTOR_CHUNK))
        self.meta.array_checksums = sums
        self.meta.provenance = provenance
        self.meta.complete = True
        write_manifest(self.path, self.meta)
        shutil.rmtree(self.commits, ignore_errors=True)
        return self.meta.to_dict()

    def finalize(self, provenance: dict[str, Any]) -> dict[str, Any]:
        """All of finalizing, in one process."""
        plan = self.plan_finalize()
        self.assemble_values(plan, range(plan.n_value_chunks))
        return self.finish(plan, provenance)
