"""The full check of an entry (``featstore verify``): every piece of metadata, every small array
against its recorded CRC32C, every chunk file and every block of rows. Each problem is one
message naming the file and what is wrong; nothing here raises on damage.

Data chunks are read with plain file reads, one chunk at a time (memory stays bounded and no
mapped pages stay resident); compressed chunks are decoded one at a time through zarr-python.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr

from .arrays import read_checked, read_vector
from .errors import FeatstoreError
from .format import (
    CHECKSUMS,
    IDS,
    OFFSETS,
    Manifest,
    chunk_file,
    column_path,
    load_manifest,
    raw_layout_reason,
    read_array_meta,
)
from .integrity import crc32c, crc_hex


@dataclass
class Report:
    key: str
    problems: list[str] = field(default_factory=list)
    n_chunks: int = 0  # data chunks checked
    bad_chunks: int = 0
    n_blocks: int = 0
    incomplete: bool = False  # still being written (or interrupted): not checked further

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_entry(path: Path) -> Report:
    """Check everything about the entry at ``path``; the report lists every problem found."""
    report = Report(path.name)
    try:
        meta = load_manifest(path)
    except FeatstoreError as e:
        report.problems.append(str(e))
        return report
    if not meta.complete:
        report.incomplete = True
        report.problems.append(
            f"entry {meta.key} is incomplete (extraction was interrupted or is running); run the "
            f"same `featstore extract` again to resume it."
        )
        return report
    small: dict[str, np.ndarray] = {}
    vectors = [(IDS, meta.ids), *((column_path(c), kind) for c, kind in meta.columns.items())]
    for name, kind in vectors:
        try:
            small[name] = read_vector(path, name, kind, meta.array_checksums)
        except FeatstoreError as e:
            report.problems.append(str(e))
    for name in (CHECKSUMS, *([OFFSETS] if meta.ragged else [])):
        try:
            small[name] = read_checked(path, name, meta.array_checksums)
        except FeatstoreError as e:
            report.problems.append(str(e))
    for name, values in small.items():
        if name not in (CHECKSUMS, OFFSETS) and len(values) != meta.n_rows:
            report.problems.append(
                f"{path / name} has {len(values)} values for {meta.n_rows} rows."
            )
    if CHECKSUMS not in small or (meta.ragged and OFFSETS not in small):
        report.problems.append(f"entry {meta.key}: the data blocks cannot be checked without "
                               f"their checksums and offsets.")  # fmt: skip
        return report
    _verify_blocks(path, meta, small[CHECKSUMS], small.get(OFFSETS), report)
    return report


def _verify_blocks(
    path: Path, meta: Manifest, sums: np.ndarray, offsets: np.ndarray | None, report: Report
) -> None:
    array_dir = path / meta.data_array
    try:
        array_meta = read_array_meta(array_dir)
    except FeatstoreError as e:
        report.problems.append(str(e))
        return
    n_data = meta.n_values if meta.ragged else meta.n_rows
    shape = tuple(array_meta["shape"])
    if shape != (n_data, *meta.row_shape):
        report.problems.append(f"{array_dir}: shape {shape}, the manifest says "
                               f"{(n_data, *meta.row_shape)}.")  # fmt: skip
        return
    if len(sums) != meta.n_blocks:
        report.problems.append(f"{path / CHECKSUMS} has {len(sums)} values for {meta.n_blocks} "
                               f"blocks.")  # fmt: skip
        return
    if meta.ragged:
        bounds = offsets
        if (
            len(bounds) != meta.n_rows + 1
            or bounds[0] != 0
            or bounds[-1] != n_data
            or (np.diff(bounds) < 0).any()
        ):
            report.problems.append(f"{path / OFFSETS} does not index the values.")
            return
    else:
        bounds = np.minimum(np.arange(meta.n_blocks + 1) * meta.block_rows, meta.n_rows)
    chunk_rows = array_meta["chunk_grid"]["configuration"]["chunk_shape"][0]
    row_items = int(np.prod(meta.row_shape))
    dtype = np.dtype(meta.dtype).newbyteorder("<")
    array = None
    if raw_layout_reason(array_meta) is not None:
        try:
            array = zarr.open_array(str(array_dir), mode="r")
        except Exception as e:  # noqa: BLE001 - metadata zarr-python refuses
            report.problems.append(f"{array_dir}: zarr-python cannot open it ({e}).")
            return
    n_chunks = -(-n_data // chunk_rows) if n_data else 0
    report.n_chunks, report.n_blocks = n_chunks, meta.n_blocks
    block, crc, lost = 0, 0, False  # the block being summed, its CRC so far, unreadable bytes
    for c in range(n_chunks):
        lo, hi = c * chunk_rows, min((c + 1) * chunk_rows, n_data)
        file = chunk_file(array_dir, c, len(shape))
        data, problem = _read_chunk(file, array, lo, hi, chunk_rows, row_items, dtype)
        bad_here = problem
        pos = lo
        while block < meta.n_blocks and bounds[block] < hi:
            end = min(int(bounds[block + 1]), hi)
            if data is None:
                lost = True
            else:
                crc = crc32c(data[(pos - lo) * row_items : (end - lo) * row_items], crc)
            pos = end
            if int(bounds[block + 1]) > hi:
                break  # the block continues in the next chunk
            if not lost and crc != int(sums[block]) and bad_here is None:
                a, b = (block, block) if meta.ragged else (int(bounds[block]), end - 1)
                what = f"item {a}" if meta.ragged else f"rows {a}-{b}"
                bad_here = (f"entry {meta.key}: chunk {file} is corrupt ({what}: CRC32C "
                            f"{crc_hex(crc)}, recorded {crc_hex(int(sums[block]))}).")  # fmt: skip
            block, crc, lost = block + 1, 0, False
        if bad_here:
            report.problems.append(bad_here)
            report.bad_chunks += 1


def _read_chunk(
    file: Path, array, lo: int, hi: int, chunk_rows: int, row_items: int, dtype: np.dtype
) -> tuple[np.ndarray | None, str | None]:
    """A chunk's rows ``[lo, hi)`` as flat values (``array`` is the zarr array of an encoded
    one, None for raw chunk files), or None and what is wrong with it."""
    if array is None:
        size = chunk_rows * row_items * dtype.itemsize
        try:
            found = file.stat().st_size
        except FileNotFoundError:
            return None, f"chunk file {file} is missing."
        if found != size:
            return None, f"chunk file {file} has {found} bytes, expected {size} (truncated?)."
        return np.fromfile(file, dtype=dtype, count=(hi - lo) * row_items), None
    if not file.exists():
        return None, f"chunk file {file} is missing."
    try:
        return np.ascontiguousarray(array[lo:hi]).reshape(-1), None
    except Exception as e:  # noqa: BLE001 - a chunk that cannot be decoded is damage
        return None, f"chunk file {file} cannot be decoded ({type(e).__name__}: {e})."
