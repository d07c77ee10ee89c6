"""Reading cache entries for training: zero-copy memory maps over raw Zarr chunk files.

zarr-python costs milliseconds per request (see docs/benchmarks.md), far too slow for random
batches of rows. An uncompressed Zarr v3 chunk (codecs ``[bytes little-endian]``, regular grid,
default ``/`` chunk keys, chunks spanning whole rows) is exactly the C-order bytes of its rows,
so ``RawRows`` maps those files with ``np.memmap``. Anything else goes through zarr-python.

Each commit unit's CRC32 is checked the first time a process touches it; a mismatch raises
``CorruptChunkError`` naming the chunk. Readers are safe in DataLoader workers: maps are opened
lazily per process and never pickled.
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from .errors import CorruptChunkError, MissingIdsError, NoSuchColumnError, StoreError
from .store import Store, read_manifest
from .writer import chunk_file

_RAW_DTYPES = {
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64",
}  # fmt: skip


def raw_layout_reason(meta: dict[str, Any]) -> str | None:
    """Why an array's chunk files are *not* raw row-major bytes, or None if they are."""
    codecs = meta.get("codecs", [])
    dtype = meta.get("data_type")
    if dtype not in _RAW_DTYPES:
        return f"data type {dtype!r} is not a fixed-size number"
    if len(codecs) != 1 or codecs[0].get("name") != "bytes":
        return "chunks are encoded (compressed or filtered)"
    endian = codecs[0].get("configuration", {}).get("endian", "little")
    if endian != "little" and np.dtype(dtype).itemsize > 1:
        return "chunks are big-endian"
    if meta.get("chunk_grid", {}).get("name") != "regular":
        return "chunk grid is not regular"
    cke = meta.get("chunk_key_encoding", {})
    if cke.get("name") != "default" or cke.get("configuration", {}).get("separator", "/") != "/":
        return "chunk keys are not the default '/' encoding"
    if meta.get("storage_transformers"):
        return "storage transformers are set"
    shape = meta["shape"]
    chunks = meta["chunk_grid"]["configuration"]["chunk_shape"]
    if list(chunks[1:]) != list(shape[1:]):
        return "chunks do not span whole rows"
    return None


class RawRows:
    """Rows of a raw Zarr v3 array, read through memory maps of its chunk files."""

    def __init__(self, array_dir: Path, meta: dict[str, Any], max_open: int = 256):
        self.dir = array_dir
        self.shape = tuple(meta["shape"])
        self.dtype = np.dtype(meta["data_type"]).newbyteorder("<")
        self.chunk_rows = meta["chunk_grid"]["configuration"]["chunk_shape"][0]
        self.chunk_shape = (self.chunk_rows, *self.shape[1:])
        self._max_open = max_open
        # chunk -> plain ndarray view of its memory map (ndarray indexing skips np.memmap's
        # per-access Python overhead). Each map holds a file descriptor, so at most
        # ``max_open`` stay open; the oldest is dropped first.
        self._views: dict[int, np.ndarray] = {}
        self._pid = os.getpid()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_views"] = {}
        return state

    def chunk_path(self, chunk: int) -> Path:
        return chunk_file(self.dir, chunk, len(self.shape))

    def _fork_check(self) -> None:
        if self._pid != os.getpid():  # forked into a worker: never share the parent's maps
            self._views, self._pid = {}, os.getpid()

    def _map(self, chunk: int) -> np.ndarray:
        view = self._views.get(chunk)
        return view if view is not None else self._open(chunk)

    def _open(self, chunk: int) -> np.ndarray:
        path = self.chunk_path(chunk)
        expected = int(np.prod(self.chunk_shape)) * self.dtype.itemsize
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise CorruptChunkError(f"chunk file {path} is missing.") from None
        if size != expected:
            raise CorruptChunkError(
                f"chunk file {path} has {size} bytes, expected {expected} "
                f"(truncated or overwritten)."
            )
        view = np.memmap(path, dtype=self.dtype, mode="r", shape=self.chunk_shape).view(np.ndarray)
        if len(self._views) >= self._max_open:
            del self._views[next(iter(self._views))]
        self._views[chunk] = view
        return view

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop): a view when they lie in one chunk, else a copy."""
        self._fork_check()
        c0, c1 = start // self.chunk_rows, (max(stop, start + 1) - 1) // self.chunk_rows
        if c0 == c1:
            base = c0 * self.chunk_rows
            return self._map(c0)[start - base : stop - base]
        parts = []
        for c in range(c0, c1 + 1):
            base = c * self.chunk_rows
            parts.append(
                self._map(c)[max(start, base) - base : min(stop, base + self.chunk_rows) - base]
            )
        return np.concatenate(parts)

    def crc32(self, start: int, stop: int, block: int = 8 << 20) -> int:
        """CRC32 of rows [start, stop) read with plain file reads, not the memory maps: a
        checksum touches every byte, and through a map those pages would stay resident in this
        process (counted in its RSS) for as long as the map is open."""
        crc = 0
        row_bytes = int(np.prod(self.shape[1:])) * self.dtype.itemsize
        for c in range(start // self.chunk_rows, (max(stop, start + 1) - 1) // self.chunk_rows + 1):
            base = c * self.chunk_rows
            lo, hi = max(start, base) - base, min(stop, base + self.chunk_rows) - base
            if hi <= lo:
                continue
            self._open(c) if c not in self._views else None  # validates the file's size
            with open(self.chunk_path(c), "rb", buffering=0) as f:
                f.seek(lo * row_bytes)
                left = (hi - lo) * row_bytes
                while left:
                    data = f.read(min(block, left))
                    if not data:
                        raise CorruptChunkError(f"chunk file {self.chunk_path(c)} is truncated.")
                    crc = zlib.crc32(data, crc)
                    left -= len(data)
        return crc

    def take(self, indices: np.ndarray) -> np.ndarray:
        self._fork_check()
        out = np.empty((len(indices), *self.shape[1:]), dtype=self.dtype)
        cr, views = self.chunk_rows, self._views
        for j, i in enumerate(indices.tolist()):
            c = i // cr
            view = views.get(c)
            if view is None:
                view = self._open(c)
            out[j] = view[i - c * cr]
        return out


class ZarrRows:
    """The same interface through zarr-python, for compressed or otherwise encoded arrays."""

    def __init__(self, array_dir: Path):
        self.dir = array_dir
        self.array = zarr.open_array(str(array_dir), mode="r")
        self.shape = self.array.shape
        self.dtype = self.array.dtype
        self.chunk_rows = self.array.chunks[0]

    def chunk_path(self, chunk: int) -> Path:
        return chunk_file(self.dir, chunk, len(self.shape))

    def rows(self, start: int, stop: int) -> np.ndarray:
        return self.array[start:stop]

    def take(self, indices: np.ndarray) -> np.ndarray:
        uniq, inverse = np.unique(indices, return_inverse=True)
        return self.array.get_orthogonal_selection((uniq,))[inverse]


def open_rows(array_dir: Path, zero_copy: bool = True) -> RawRows | ZarrRows:
    meta = json.loads((array_dir / "zarr.json").read_text())
    if zero_copy and raw_layout_reason(meta) is None:
        return RawRows(array_dir, meta)
    return ZarrRows(array_dir)


class Entry:
    """A complete cache entry, opened for reading.

    ``entry[i]`` is row i; ``entry.gather(idx)`` a batch; ``entry.positions(ids)`` maps ids to rows.
    Ragged entries (``[T_i, ...]`` items) return arrays of varying length; ``gather_padded`` pads.
    """

    def __init__(self, path: str | os.PathLike, verify: bool = True, zero_copy: bool = True):
        self.path = Path(path)
        manifest = read_manifest(self.path)
        if manifest is None:
            raise StoreError(f"{self.path} is not a featstore entry.")
        self.manifest = manifest
        self.key: str = manifest.get("key", self.path.name)
        if not manifest.get("complete"):
            raise StoreError(
                f"entry {self.key} is incomplete (extraction was interrupted or is running). "
                f"Run the same `featstore extract` again to resume it."
            )
        self.ragged = manifest["layout"] == "ragged"
        self.chunk_rows: int = manifest["chunk_rows"]
        self.verify = verify
        self._checksums: list[str] = manifest["checksums"]
        self._n_units = len(self._checksums)
        self._n = int(manifest["n_rows"])
        self._verified: set[int] = set()
        self._pid = os.getpid()
        self._rows = open_rows(self.path / ("values" if self.ragged else "features"), zero_copy)
        self.zero_copy = isinstance(self._rows, RawRows)
        self.ids = zarr.open_array(str(self.path / "ids"), mode="r")[:]
        if self.ids.dtype.kind not in "iu":
            self.ids = np.asarray(self.ids, dtype=object)
        self.offsets = (
            zarr.open_array(str(self.path / "offsets"), mode="r")[:] if self.ragged else None
        )
        self._index: dict[Any, int] | None = None

    # -- description ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.manifest["n_rows"])

    def __repr__(self) -> str:
        shape = ("T", *self.row_shape) if self.ragged else self.row_shape
        return (
            f"Entry({self.key}, teacher={self.manifest.get('teacher')}, "
            f"output={self.manifest.get('output')}, n={len(self)}, row_shape={shape}, "
            f"dtype={self.dtype}, zero_copy={self.zero_copy})"
        )

    @property
    def row_shape(self) -> tuple[int, ...]:
        return tuple(self.manifest["row_shape"])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.manifest["dtype"])

    # -- integrity ------------------------------------------------------------------------------
    def _unit_crc32(self, unit: int) -> int:
        start = unit * self.chunk_rows
        stop = min(start + self.chunk_rows, len(self))
        if self.ragged:
            start, stop = int(self.offsets[start]), int(self.offsets[stop])
        if isinstance(self._rows, RawRows):
            return self._rows.crc32(start, stop)
        return zlib.crc32(np.ascontiguousarray(self._rows.rows(start, stop)).data)

    def check_unit(self, unit: int) -> None:
        """Recompute one unit's CRC32 and raise ``CorruptChunkError`` if it differs."""
        try:
            found = f"{self._unit_crc32(unit):08x}"
        except CorruptChunkError as e:
            raise CorruptChunkError(f"entry {self.key}: {e} {_FIX}") from None
        if found != self._checksums[unit]:
            where = self._rows.chunk_path(unit) if not self.ragged else f"values of unit {unit}"
            raise CorruptChunkError(
                f"entry {self.key}: chunk {where} is corrupt (CRC32 {found}, recorded "
                f"{self._checksums[unit]}). {_FIX}"
            )

    def _touch(self, rows: np.ndarray) -> None:
        if not self.verify:
            return
        if len(self._verified) == self._n_units and self._pid == os.getpid():
            return  # everything already checked in this process
        if self._pid != os.getpid():
            self._verified, self._pid = set(), os.getpid()
        for unit in set((rows // self.chunk_rows).tolist()) - self._verified:
            self.check_unit(unit)
            self._verified.add(unit)

    # -- access ---------------------------------------------------------------------------------
    def _check_rows(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if not rows.size:
            return rows
        n, lo, hi = self._n, int(rows.min()), int(rows.max())
        if lo < -n or hi >= n:
            raise IndexError(f"row index out of range for entry of {n} rows")
        return rows if lo >= 0 else np.where(rows < 0, rows + n, rows)

    def __getitem__(self, i: int) -> np.ndarray:
        (row,) = self._check_rows(np.array([i]))
        self._touch(np.array([row]))
        if self.ragged:
            return np.array(self._rows.rows(int(self.offsets[row]), int(self.offsets[row + 1])))
        return np.array(self._rows.take(np.array([row]))[0])

    def gather(self, rows: np.ndarray | list[int]) -> np.ndarray | list[np.ndarray]:
        """Rows as one ``[B, ...]`` array (fixed), or a list of ``[T_i, ...]`` arrays (ragged)."""
        rows = self._check_rows(rows)
        self._touch(rows)
        if self.ragged:
            return [
                np.array(self._rows.rows(int(self.offsets[r]), int(self.offsets[r + 1])))
                for r in rows.tolist()
            ]
        return self._rows.take(rows)

    def lengths(self, rows: np.ndarray | list[int] | None = None) -> np.ndarray:
        """Item lengths ``T_i`` of a ragged entry."""
        if not self.ragged:
            raise StoreError(
                f"entry {self.key} is not ragged; every row has shape {self.row_shape}"
            )
        all_lengths = np.diff(self.offsets)
        return all_lengths if rows is None else all_lengths[self._check_rows(rows)]

    def gather_padded(
        self, rows: np.ndarray | list[int], pad_value: float = 0.0, max_length: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """A ragged batch as ``(padded [B, T_max, ...], lengths [B])``; ``max_length`` truncates.
        Each item is copied once, straight from the store into the padded array."""
        if not self.ragged:
            raise StoreError(f"entry {self.key} is not ragged; use gather()")
        rows = self._check_rows(rows)
        self._touch(rows)
        starts = self.offsets[rows]
        lengths = (self.offsets[rows + 1] - starts).astype(np.int64)
        if max_length is not None:
            lengths = np.minimum(lengths, max_length)
        t = int(lengths.max()) if len(rows) else 0
        out = np.empty((len(rows), t, *self.row_shape), dtype=self.dtype)
        for j, (start, n) in enumerate(zip(starts.tolist(), lengths.tolist(), strict=True)):
            out[j, :n] = self._rows.rows(start, start + n)
            out[j, n:] = pad_value
        return out, lengths

    def positions(self, ids: list | np.ndarray) -> np.ndarray:
        """Row position of each id; a clear error lists ids that are not in the entry."""
        if self._index is None:
            self._index = {k: i for i, k in enumerate(self.ids.tolist())}
        keys = np.asarray(ids).tolist()
        missing = [k for k in keys if k not in self._index]
        if missing:
            raise MissingIdsError(
                f"{len(missing)} of {len(keys)} ids are not in entry {self.key} "
                f"(teacher {self.manifest.get('teacher')}); first: {missing[:5]}"
            )
        return np.array([self._index[k] for k in keys], dtype=np.int64)

    def column(self, name: str) -> np.ndarray:
        """A per-item metadata column (e.g. ``image_id`` of captions), in row order."""
        path = self.path / "columns" / name
        if not (path / "zarr.json").exists():
            folder = self.path / "columns"
            have = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
            raise NoSuchColumnError(
                f"entry {self.key} has no column {name!r} (columns: {have or 'none'})"
            )
        values = zarr.open_array(str(path), mode="r")[:]
        return values if values.dtype.kind in "iu" else np.asarray(values, dtype=object)

    def contains(self, ids: list | np.ndarray) -> np.ndarray:
        """A boolean mask: which ids have a row in this entry."""
        if self._index is None:
            self._index = {k: i for i, k in enumerate(self.ids.tolist())}
        return np.array([k in self._index for k in np.asarray(ids).tolist()], dtype=bool)

    def by_id(self, item_id: Any) -> np.ndarray:
        return self[int(self.positions([item_id])[0])]

    def verify_all(self) -> list[str]:
        """Check every unit; returns one message per bad chunk (empty when all are sound)."""
        bad = []
        for unit in range(len(self._checksums)):
            try:
                self.check_unit(unit)
            except CorruptChunkError as e:
                bad.append(str(e))
        return bad

    def dataset(self, rows: np.ndarray | None = None) -> FeatureDataset:
        return FeatureDataset(self, rows)


_FIX = "Remove the entry with `featstore rm KEY` and extract it again."


class FeatureDataset:
    """A map-style torch Dataset over an entry's rows (all rows, or the given ones).

    Implements ``__getitems__`` so a DataLoader fetches a whole batch in one gather.
    """

    def __init__(self, entry: Entry, rows: np.ndarray | None = None):
        self.entry = entry
        self.rows = np.arange(len(entry)) if rows is None else np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        import torch

        return torch.from_numpy(self.entry[int(self.rows[i])])

    def __getitems__(self, indices: list[int]):
        import torch

        batch = self.entry.gather(self.rows[np.asarray(indices)])
        if self.entry.ragged:
            return [torch.from_numpy(x) for x in batch]
        return list(torch.from_numpy(batch).unbind(0))


def open_entry(
    key_or_path: str, store: Store | str | None = None, verify: bool = True, zero_copy: bool = True
) -> Entry:
    """Open a complete entry by key, unique key prefix, or path."""
    store = store if isinstance(store, Store) else Store(store)
    return Entry(store.resolve(key_or_path).path, verify=verify, zero_copy=zero_copy)
