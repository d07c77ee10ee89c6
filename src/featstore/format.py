"""The on-disk format of a store, in one place: layout names, paths, the typed manifest, and the
rule for when a reader may memory-map chunk files. docs/store-format.md is its prose version.

Writer, reader, verify, migrate and the CLI all take layout knowledge from here; nothing else
spells a path or reads a manifest field by string.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from .errors import StoreError

FORMAT_VERSION = 2  # 2: CRC32C per block of rows, checksummed ids/columns/offsets, UTF-8 strings
LEGACY_VERSIONS = (1,)  # readable only after `featstore migrate`
MANIFEST_ATTR = "featstore"  # the group attribute that holds the manifest
CHECKSUM = "crc32c"

# Beside the entries in the store root (so each entry stays a clean Zarr hierarchy).
PROGRESS_DIR = "_progress"  # commit records (and ragged value segments) while an entry is written
LOCKS_DIR = "_locks"
MEMO_FILE = "digests.jsonl"
RESERVED_PREFIX = "_"  # store-root names featstore uses for itself; never an entry

# Arrays of an entry.
FEATURES = "features"  # fixed layout: [N, *row_shape]
VALUES = (
    "values"  # ragged layout: [n_values, *frame_shape]; item i = values[offsets[i]:offsets[i+1]]
)
OFFSETS = "offsets"  # ragged layout: int64 [N + 1]
IDS = "ids"  # int64 [N], or a string group
COLUMNS = "columns"  # columns/<name>: int64 [N], or a string group
CHECKSUMS = "checksums"  # uint32 [n_blocks]: CRC32C of each block of `block_rows` rows (items)

# A string array is a Zarr group holding UTF-8 bytes and int64 offsets (core Zarr v3 data types
# only, so any v3 reader opens it): string i = utf8[offsets[i]:offsets[i+1]].decode("utf-8").
STRING_ATTR = "featstore_strings"
STRING_BYTES = "utf8"
STRING_OFFSETS = "offsets"

TARGET_BLOCK_BYTES = 64 << 10  # fixed layout: checksum blocks of about this many bytes (>= 1 row)

LAYOUTS = ("fixed", "ragged")
DTYPES = ("float16", "float32")
COMPRESSIONS = ("none", "lz4", "zstd")
ID_TYPES = ("int64", "string")


class FormatError(StoreError):
    """An entry's metadata is missing, unreadable or not what this format says."""


class LegacyFormatError(FormatError):
    """An entry in an older store format that must be migrated before it is read."""


class NewerFormatError(FormatError):
    """An entry written by a newer featstore than this one."""


# -- paths --------------------------------------------------------------------------------------
def chunk_file(array_dir: Path, chunk: int, ndim: int) -> Path:
    """The file of chunk ``chunk`` along axis 0 (default ``/`` key encoding, whole-row chunks)."""
    return array_dir / "c" / "/".join([str(chunk)] + ["0"] * (ndim - 1))


def progress_dir(entry_path: Path) -> Path:
    return entry_path.parent / PROGRESS_DIR / entry_path.name


def lock_file(root: Path, name: str) -> Path:
    return root / LOCKS_DIR / f"{name}.lock"


def column_path(name: str) -> str:
    return f"{COLUMNS}/{name}"


def vector_arrays(name: str, kind: str) -> list[str]:
    """The arrays that hold a per-item vector: itself (int64) or its string group's two."""
    return [name] if kind == "int64" else [f"{name}/{STRING_BYTES}", f"{name}/{STRING_OFFSETS}"]


def block_rows_for(chunk_rows: int, row_bytes: int, ragged: bool) -> int:
    """Rows (items) per checksum block: one item for ragged entries; for fixed ones about
    ``TARGET_BLOCK_BYTES`` of rows, as a divisor of ``chunk_rows`` so blocks nest in units.
    A cold read of one row then reads little more than that row to check it."""
    if ragged:
        return 1
    want = max(1, min(chunk_rows, TARGET_BLOCK_BYTES // max(row_bytes, 1)))
    return max(d for d in range(1, want + 1) if chunk_rows % d == 0)


# -- the zero-copy rule -------------------------------------------------------------------------
_RAW_DTYPES = {
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64",
}  # fmt: skip


def raw_layout_reason(meta: dict[str, Any]) -> str | None:
    """Why an array's chunk files are *not* its raw C-order little-endian bytes, or None if they
    are (then chunk ``c`` of rows is a file a reader may memory-map)."""
    codecs = meta.get("codecs", [])
    dtype = meta.get("data_type")
    if not isinstance(dtype, str) or dtype not in _RAW_DTYPES:
        return f"data type {dtype!r} is not a fixed-size number"
    if len(codecs) != 1 or codecs[0].get("name") != "bytes":
        return "chunks are encoded (compressed or filtered)"
    endian = (codecs[0].get("configuration") or {}).get("endian", "little")
    if endian != "little" and np.dtype(dtype).itemsize > 1:
        return "chunks are big-endian"
    grid = meta.get("chunk_grid", {})
    if grid.get("name") != "regular":
        return "chunk grid is not regular"
    cke = meta.get("chunk_key_encoding", {})
    if (
        cke.get("name") != "default"
        or (cke.get("configuration") or {}).get("separator", "/") != "/"
    ):
        return "chunk keys are not the default '/' encoding"
    if meta.get("storage_transformers"):
        return "storage transformers are set"
    shape = meta.get("shape")
    chunks = (grid.get("configuration") or {}).get("chunk_shape")
    if not isinstance(shape, list) or not isinstance(chunks, list) or len(shape) != len(chunks):
        return "shape and chunk shape do not match"
    if list(chunks[1:]) != list(shape[1:]):
        return "chunks do not span whole rows"
    return None


def _read_json(path: Path) -> Any:
    """A metadata file's JSON, or a ``FormatError`` saying it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FormatError(f"{path} is missing.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(f"{path} is unreadable ({e}).") from None


def read_array_meta(array_dir: Path) -> dict[str, Any]:
    """An array's ``zarr.json``, or a ``FormatError`` naming the file and what is wrong."""
    path = array_dir / "zarr.json"
    meta = _read_json(path)
    if not isinstance(meta, dict) or meta.get("node_type") != "array" or "shape" not in meta:
        raise FormatError(f"{path} is not Zarr v3 array metadata.")
    return meta


# -- the manifest -------------------------------------------------------------------------------
@dataclass
class Manifest:
    """The group attribute ``featstore``: what an entry holds and how it was made."""

    key: str
    layout: str
    row_shape: tuple[int, ...]
    dtype: str
    n_rows: int
    chunk_rows: int
    block_rows: int
    complete: bool
    key_inputs: dict[str, Any] = field(default_factory=dict)
    teacher: str = ""
    output: str = ""
    output_description: str = ""
    source: dict[str, Any] = field(default_factory=dict)
    compression: str = "none"
    batch_size: int | None = None
    ids: str = "int64"
    columns: dict[str, str] = field(default_factory=dict)  # name -> "int64" or "string"
    checksum: str = CHECKSUM
    array_checksums: dict[str, str] = field(default_factory=dict)  # array path -> CRC32C hex
    n_values: int | None = None  # ragged, once complete
    provenance: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    # -- derived ------------------------------------------------------------------------------
    @property
    def ragged(self) -> bool:
        return self.layout == "ragged"

    @property
    def n_chunks(self) -> int:
        """Commit units: ``chunk_rows`` consecutive items each (the last may be shorter)."""
        return math.ceil(self.n_rows / self.chunk_rows)

    @property
    def n_blocks(self) -> int:
        return math.ceil(self.n_rows / self.block_rows)

    @property
    def data_array(self) -> str:
        return VALUES if self.ragged else FEATURES

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.row_shape)) * np.dtype(self.dtype).itemsize

    def unit_rows(self, unit: int) -> tuple[int, int]:
        start = unit * self.chunk_rows
        return start, min(start + self.chunk_rows, self.n_rows)

    def unit_blocks(self, unit: int) -> range:
        start, stop = self.unit_rows(unit)
        return range(start // self.block_rows, -(-stop // self.block_rows))

    def block_rows_range(self, block: int) -> tuple[int, int]:
        start = block * self.block_rows
        return start, min(start + self.block_rows, self.n_rows)

    # -- (de)serialization --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["row_shape"] = list(self.row_shape)
        out["n_chunks"] = self.n_chunks
        if out["n_values"] is None:
            del out["n_values"]
        return out

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Manifest:
        """Check a stored manifest and type it; ``where`` names the file in error messages."""
        if not isinstance(data, dict):
            raise FormatError(f"{where}: the manifest is not a JSON object.")
        version = data.get("format_version")
        if version in LEGACY_VERSIONS:
            key = data.get("key", "KEY")
            raise LegacyFormatError(
                f"entry {key} is in store format {version}. Run `featstore migrate {key}` once "
                f"to upgrade it in place (it adds per-row checksums and portable string ids; no "
                f"teacher runs)."
            )
        if isinstance(version, int) and version > FORMAT_VERSION:
            raise NewerFormatError(
                f"{where} was written in store format {version} by a newer featstore; this one "
                f"reads format {FORMAT_VERSION}. Upgrade featstore-heads to read it."
            )
        if version != FORMAT_VERSION:
            raise FormatError(f"{where}: format_version {version!r} is not a known store format.")
        known = {f.name: f for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for name in ("key", "layout", "row_shape", "dtype", "n_rows", "chunk_rows",
                     "block_rows", "complete"):  # fmt: skip
            if name not in values:
                raise FormatError(f"{where}: the manifest lacks the field {name!r}.")
        m = cls(**values)
        m.row_shape = tuple(m.row_shape) if isinstance(m.row_shape, list) else m.row_shape
        m._check(where)
        return m

    def _check(self, where: str) -> None:
        def bad(what: str) -> FormatError:
            return FormatError(f"{where}: manifest field {what}.")

        def is_int(x: Any) -> bool:
            return isinstance(x, int) and not isinstance(x, bool)

        if self.layout not in LAYOUTS:
            raise bad(f"'layout' is {self.layout!r}, not one of {LAYOUTS}")
        if not isinstance(self.row_shape, tuple) or not all(
            is_int(d) and d > 0 for d in self.row_shape
        ):
            raise bad(f"'row_shape' is {self.row_shape!r}, not a list of positive integers")
        if self.dtype not in DTYPES:
            raise bad(f"'dtype' is {self.dtype!r}, not one of {DTYPES}")
        for name in ("n_rows", "chunk_rows", "block_rows"):
            value = getattr(self, name)
            if not is_int(value) or value < (0 if name == "n_rows" else 1):
                raise bad(f"{name!r} is {value!r}")
        if self.chunk_rows % self.block_rows:
            raise bad(f"'block_rows' {self.block_rows} does not divide chunk_rows")
        if self.compression not in COMPRESSIONS:
            raise bad(f"'compression' is {self.compression!r}, not one of {COMPRESSIONS}")
        if self.checksum != CHECKSUM:
            raise bad(f"'checksum' is {self.checksum!r}; this featstore knows only {CHECKSUM}")
        if self.ids not in ID_TYPES or any(t not in ID_TYPES for t in self.columns.values()):
            raise bad(f"'ids' or 'columns' names a type other than {ID_TYPES}")
        if not isinstance(self.array_checksums, dict):
            raise bad("'array_checksums' is not an object")
        if not isinstance(self.complete, bool):
            raise bad(f"'complete' is {self.complete!r}")
        if self.complete:
            needed = [*vector_arrays(IDS, self.ids), CHECKSUMS]
            for name, kind in self.columns.items():
                needed += vector_arrays(column_path(name), kind)
            needed += [OFFSETS] if self.ragged else []
            lost = [a for a in needed if a not in self.array_checksums]
            if lost:
                raise bad(f"'array_checksums' lacks {lost[:3]}")
            if self.ragged and not is_int(self.n_values):
                raise bad(f"'n_values' is {self.n_values!r}")


def read_group_attrs(entry_path: Path) -> dict[str, Any]:
    """The group ``zarr.json`` of an entry; a ``FormatError`` names the file and the problem."""
    path = entry_path / "zarr.json"
    meta = _read_json(path)
    if not isinstance(meta, dict) or meta.get("node_type") != "group":
        raise FormatError(f"{path} is not Zarr v3 group metadata.")
    attrs = meta.get("attributes", {})
    if not isinstance(attrs, dict) or MANIFEST_ATTR not in attrs:
        raise FormatError(f"{path} has no featstore manifest (attribute {MANIFEST_ATTR!r}).")
    return attrs


def load_manifest(entry_path: Path) -> Manifest:
    """An entry's typed manifest (complete or not)."""
    attrs = read_group_attrs(entry_path)
    return Manifest.from_dict(attrs[MANIFEST_ATTR], str(entry_path / "zarr.json"))


def raw_manifest(entry_path: Path) -> dict[str, Any] | None:
    """The stored manifest dict as is (any version), or None when there is none to read."""
    try:
        found = read_group_attrs(entry_path)[MANIFEST_ATTR]
    except FormatError:
        return None
    return found if isinstance(found, dict) else None


def looks_like_entry(path: Path) -> bool:
    """A store-root directory featstore would have written: a group ``zarr.json``, or arrays of
    an entry (so a damaged entry is listed as damaged, not silently skipped)."""
    if not path.is_dir() or path.name.startswith((RESERVED_PREFIX, ".")):
        return False
    return (path / "zarr.json").exists() or any(
        (path / name / "zarr.json").exists() for name in (FEATURES, VALUES, IDS)
    )


def write_manifest(entry_path: Path, manifest: Manifest) -> None:
    """Write the entry's group ``zarr.json`` with the manifest: temporary file, fsync, rename,
    so a kill leaves either the old manifest or the new one."""
    meta = {"zarr_format": 3, "node_type": "group",
            "attributes": {MANIFEST_ATTR: manifest.to_dict()}}  # fmt: skip
    path = entry_path / "zarr.json"
    tmp = path.with_name(f"zarr.json.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "w") as f:
        json.dump(meta, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
