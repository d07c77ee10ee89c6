"""Upgrading an entry from store format 1 to 2 in place (``featstore migrate``); no teacher runs.

Format 1 kept ids and string columns as zarr-python ``string`` arrays (not core Zarr v3), and
one zlib CRC32 per chunk of features only. Migrating reads every data chunk once, checking its
format-1 CRC32 and computing the format-2 CRC32C per block; rewrites ids, columns and ragged
offsets as plain arrays; then switches the manifest. Data chunk files are kept as they are.

Kill-safe: phase 1 writes the new arrays beside the old ones (``<name>.v2``); a marker file then
starts phase 2, which swaps each ``<name>.v2`` in and writes the format-2 manifest. A run that
finds the marker finishes phase 2; one that does not starts again from phase 1.
"""

from __future__ import annotations

import shutil
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from .arrays import VECTOR_CHUNK, read_raw, write_raw, write_vector
from .errors import CorruptChunkError, StoreError
from .format import (
    CHECKSUMS,
    COLUMNS,
    IDS,
    OFFSETS,
    STRING_BYTES,
    VALUES,
    Manifest,
    block_rows_for,
    column_path,
    raw_manifest,
    vector_arrays,
    write_manifest,
)
from .integrity import crc32c, crc_hex
from .progress import Progress
from .store import Store

MARKER = ".migrating"  # in the entry: phase 1 is complete
SUFFIX = ".v2"


def migrate_entry(
    store: Store, key_or_path: str, progress: bool = True, log: Callable[[str], None] = print
) -> str:
    """Upgrade one entry to the current store format; returns what was done."""
    entry = store.resolve(key_or_path)
    path = entry.path
    with store.lock(path.name):
        old = raw_manifest(path)
        if old is None:
            raise StoreError(f"entry {path.name} has no readable manifest; it cannot be migrated.")
        if old.get("format_version") == 2 and not (path / MARKER).exists():
            return f"{path.name} is already in store format 2."
        if old.get("format_version") != 1:
            raise StoreError(f"entry {path.name}: cannot migrate store format "
                             f"{old.get('format_version')!r}.")  # fmt: skip
        if not old.get("complete"):
            raise StoreError(
                f"entry {path.name} is an incomplete format-1 entry; finish it with the "
                f"featstore version that started it, or remove it (`featstore rm`) and extract "
                f"it again."
            )
        if not (path / MARKER).exists():
            columns = _phase1(path, old, progress)
            (path / MARKER).write_text(",".join(columns))
        _phase2(path, old)
    return f"migrated {path.name} to store format 2 (every chunk checked against its CRC32)."


def _v1_vector(path: Path, name: str) -> np.ndarray:
    values = zarr.open_array(str(path / name), mode="r")[...]
    return values if values.dtype.kind in "iu" else np.asarray(values, dtype=object)


def _phase1(path: Path, old: dict[str, Any], progress: bool) -> list[str]:
    """Write every new array under ``<name>.v2`` (and ``checksums``); check every data chunk."""
    for stale in [*path.glob(f"*{SUFFIX}"), *path.glob(f"{COLUMNS}/*{SUFFIX}")]:
        shutil.rmtree(stale)
    group = zarr.open_group(str(path), mode="r+")
    write_vector(group, IDS + SUFFIX, _v1_vector(path, IDS))
    columns = sorted(p.name for p in (path / COLUMNS).iterdir() if p.is_dir()) if (
        path / COLUMNS).is_dir() else []  # fmt: skip
    for name in columns:
        write_vector(group, column_path(name) + SUFFIX, _v1_vector(path, column_path(name)))
    ragged = old["layout"] == "ragged"
    n, cr = int(old["n_rows"]), int(old["chunk_rows"])
    data = zarr.open_array(str(path / (VALUES if ragged else "features")), mode="r")
    offsets = zarr.open_array(str(path / OFFSETS), mode="r")[...] if ragged else None
    if ragged:
        write_raw(group, OFFSETS + SUFFIX, offsets.astype("<i8"), max(VECTOR_CHUNK, 1 << 20))
    row_bytes = int(np.prod(old["row_shape"])) * np.dtype(old["dtype"]).itemsize
    block_rows = block_rows_for(cr, row_bytes, ragged)
    sums: list[int] = []
    bar = Progress(n, f"migrate {path.name}", enabled=progress)
    for unit, want in enumerate(old["checksums"]):
        start, stop = unit * cr, min((unit + 1) * cr, n)
        lo, hi = (int(offsets[start]), int(offsets[stop])) if ragged else (start, stop)
        try:
            rows = np.ascontiguousarray(data[lo:hi], dtype=np.dtype(old["dtype"]).newbyteorder("<"))
        except Exception as e:  # noqa: BLE001 - undecodable chunk
            raise CorruptChunkError(f"entry {path.name}: unit {unit} cannot be read ({e}); "
                                    f"it cannot be migrated.") from None  # fmt: skip
        if f"{zlib.crc32(rows.data):08x}" != want:
            raise CorruptChunkError(
                f"entry {path.name}: unit {unit} (rows {start}-{stop - 1}) does not match its "
                f"format-1 CRC32; the entry is corrupt and cannot be migrated. Remove it and "
                f"extract it again."
            )
        if ragged:
            bounds = offsets[start : stop + 1] - lo
            sums += [crc32c(rows[bounds[i] : bounds[i + 1]]) for i in range(stop - start)]
        else:
            sums += [crc32c(rows[i : i + block_rows]) for i in range(0, stop - start, block_rows)]
        bar.update(stop - start)
    bar.close()
    write_raw(group, CHECKSUMS + SUFFIX, np.asarray(sums, dtype="<u4"), VECTOR_CHUNK)
    (path / "block_rows.v2").write_text(str(block_rows))
    return columns


def _swap(path: Path, name: str) -> None:
    new = path / (name + SUFFIX)
    if new.exists():
        shutil.rmtree(path / name, ignore_errors=True)
        new.rename(path / name)


def _kind(path: Path, name: str) -> str:
    return "string" if (path / name / STRING_BYTES).is_dir() else "int64"


def _phase2(path: Path, old: dict[str, Any]) -> None:
    columns = [c for c in (path / MARKER).read_text().split(",") if c]
    ragged = old["layout"] == "ragged"
    names = [IDS, *(column_path(c) for c in columns), CHECKSUMS, *([OFFSETS] if ragged else [])]
    for name in names:
        _swap(path, name)
    sums = {}
    types = {name: _kind(path, name) for name in [IDS, *(column_path(c) for c in columns)]}
    for name in names:
        for array in vector_arrays(name, types.get(name, "int64")):
            sums[array] = crc_hex(crc32c(read_raw(path / array)))
    block_file = path / "block_rows.v2"
    keep = ("key", "key_inputs", "teacher", "output", "output_description", "source",
            "compression", "batch_size", "n_values", "provenance")  # fmt: skip
    meta = Manifest(
        layout=old["layout"],
        row_shape=tuple(old["row_shape"]),
        dtype=old["dtype"],
        n_rows=int(old["n_rows"]),
        chunk_rows=int(old["chunk_rows"]),
        block_rows=int(block_file.read_text()),
        complete=True,
        ids=types[IDS],
        columns={c: types[column_path(c)] for c in columns},
        array_checksums=sums,
        **{k: old[k] for k in keep if k in old},
    )
    meta.provenance = {**meta.provenance, "migrated": {"from_format": 1, "at": time.time()}}
    write_manifest(path, meta)
    block_file.unlink(missing_ok=True)
    (path / MARKER).unlink()
