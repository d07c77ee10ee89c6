"""The small arrays of an entry (ids, metadata columns, offsets, checksums): writing them through
zarr-python as plain, uncompressed Zarr v3 arrays, and reading them back strictly.

Strings are a group of two core-type arrays (UTF-8 bytes and int64 offsets), so tensorstore, dask
and any other Zarr v3 reader open every array of an entry. Each array's CRC32C is recorded in the
manifest; reading checks it, and a missing chunk file is corruption (never the fill value).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import zarr

from .errors import CorruptChunkError
from .format import (
    STRING_ATTR,
    STRING_BYTES,
    STRING_OFFSETS,
    FormatError,
    chunk_file,
    raw_layout_reason,
    read_array_meta,
)
from .integrity import crc32c, crc_hex

VECTOR_CHUNK = 1 << 16  # elements per chunk of an int64 vector (512 KiB)
BYTES_CHUNK = 1 << 20  # bytes per chunk of a string group's UTF-8 array


def writing_every_chunk():
    """Every chunk is written, even all-fill ones, so that every chunk file exists. zarr-python
    honours this only through its global config, read when an array is created or opened: open
    (or create) the array inside this context, not just write there."""
    return zarr.config.set({"array.write_empty_chunks": True})


def as_id_vector(values: object) -> np.ndarray:
    """int64 when every value is an integer, else Python strings (object array)."""
    arr = np.asarray(values)
    if arr.dtype.kind in "iu":
        return arr.astype("<i8")
    return np.asarray([str(x) for x in arr.tolist()], dtype=object)


def write_raw(group: zarr.Group, name: str, data: np.ndarray, chunk: int) -> dict[str, str]:
    """A 1-d numeric array, uncompressed; returns ``{path: crc32c hex}``."""
    with writing_every_chunk():  # zarr-python reads this setting when an array is opened
        arr = group.create_array(
            name,
            shape=data.shape,
            chunks=(max(1, min(len(data), chunk)),),
            dtype=data.dtype,
            fill_value=0,
            compressors=None,
            filters=None,
            overwrite=True,
        )
        if len(data):
            arr[:] = data
    return {_path(group, name): crc_hex(crc32c(data))}


def write_vector(group: zarr.Group, name: str, values: object) -> tuple[str, dict[str, str]]:
    """A per-item vector (ids or a metadata column): int64, or a UTF-8 string group.
    Returns its type (``"int64"`` or ``"string"``) and the checksums of the arrays written."""
    vector = as_id_vector(values)
    if vector.dtype != object:
        return "int64", write_raw(group, name, vector, VECTOR_CHUNK)
    encoded = [s.encode("utf-8", errors="surrogatepass") for s in vector.tolist()]
    offsets = np.zeros(len(encoded) + 1, dtype="<i8")
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    utf8 = np.frombuffer(b"".join(encoded), dtype=np.uint8)
    sub = group.create_group(name, overwrite=True, attributes={STRING_ATTR: "utf-8"})
    sums = write_raw(sub, STRING_BYTES, utf8, BYTES_CHUNK)
    sums.update(write_raw(sub, STRING_OFFSETS, offsets, VECTOR_CHUNK))
    return "string", sums


def _path(group: zarr.Group, name: str) -> str:
    """An array's path relative to the entry (the group at the entry's root has path '')."""
    parts = [p for p in group.path.split("/") if p]
    # The entry group is opened at its own directory, so group.path is relative to it.
    return "/".join([*parts, name])


def read_raw(array_dir: Path) -> np.ndarray:
    """A whole array from its chunk files; a missing or wrong-sized chunk is corruption. Arrays
    rewritten with other codecs are read through zarr-python."""
    meta = read_array_meta(array_dir)
    if raw_layout_reason(meta) is not None:
        try:
            return zarr.open_array(str(array_dir), mode="r")[...]
        except Exception as e:  # noqa: BLE001 - any decode failure is damage to this array
            raise CorruptChunkError(f"{array_dir} cannot be decoded ({e}).") from None
    shape = tuple(meta["shape"])
    dtype = np.dtype(meta["data_type"]).newbyteorder("<")
    chunk_rows = meta["chunk_grid"]["configuration"]["chunk_shape"][0]
    row_items = int(np.prod(shape[1:]))
    out = np.empty(shape, dtype=dtype)
    flat = out.reshape(shape[0], row_items) if shape[0] else out
    for c in range(-(-shape[0] // chunk_rows) if shape[0] else 0):
        path = chunk_file(array_dir, c, len(shape))
        want = chunk_rows * row_items * dtype.itemsize
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise CorruptChunkError(f"chunk file {path} is missing.") from None
        if size != want:
            raise CorruptChunkError(f"chunk file {path} has {size} bytes, expected {want}.")
        rows = min(chunk_rows, shape[0] - c * chunk_rows)
        data = np.fromfile(path, dtype=dtype, count=rows * row_items)
        flat[c * chunk_rows : c * chunk_rows + rows] = data.reshape(rows, row_items)
    return out


def read_checked(entry_path: Path, name: str, checksums: dict[str, str]) -> np.ndarray:
    """A numeric array of the entry, checked against its recorded CRC32C."""
    data = read_raw(entry_path / name)
    want = checksums.get(name)
    found = crc_hex(crc32c(data))
    if want is None:
        raise FormatError(f"entry {entry_path.name}: no checksum is recorded for {name}.")
    if found != want:
        raise CorruptChunkError(
            f"{entry_path / name} is corrupt (CRC32C {found}, recorded {want})."
        )
    return data


def read_vector(entry_path: Path, name: str, kind: str, checksums: dict[str, str]) -> np.ndarray:
    """A per-item vector written by ``write_vector``: int64, or strings as an object array."""
    if kind == "int64":
        return read_checked(entry_path, name, checksums)
    group_meta = entry_path / name / "zarr.json"
    try:
        attrs = json.loads(group_meta.read_text()).get("attributes", {})
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as e:
        raise FormatError(f"{group_meta} is unreadable or missing ({e}).") from None
    if attrs.get(STRING_ATTR) != "utf-8":
        raise FormatError(f"{group_meta} is not a featstore string group.")
    utf8 = read_checked(entry_path, f"{name}/{STRING_BYTES}", checksums)
    offsets = read_checked(entry_path, f"{name}/{STRING_OFFSETS}", checksums)
    if (
        len(offsets) == 0
        or offsets[0] != 0
        or offsets[-1] != len(utf8)
        or (np.diff(offsets) < 0).any()
    ):
        raise CorruptChunkError(f"{entry_path / name}: offsets do not index its UTF-8 bytes.")
    raw = utf8.tobytes()
    bounds = offsets.tolist()
    try:
        strings = [
            raw[a:b].decode("utf-8", errors="surrogatepass")
            for a, b in zip(bounds[:-1], bounds[1:], strict=True)
        ]
    except UnicodeDecodeError as e:
        raise CorruptChunkError(f"{entry_path / name} holds invalid UTF-8 ({e}).") from None
    return np.asarray(strings, dtype=object)
