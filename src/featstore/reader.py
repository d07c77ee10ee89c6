"""Reading cache entries for training: zero-copy memory maps over raw Zarr chunk files.

zarr-python costs milliseconds per request (see docs/benchmarks.md), far too slow for random
batches of rows. An uncompressed Zarr v3 chunk (``format.raw_layout_reason`` says when) is
exactly the C-order bytes of its rows, so ``RawRows`` maps those files. Anything else goes
through zarr-python.

Cold reads: a page fault on a plain map fetches a large row in small synchronous pieces. When
the array fits in memory, ``RawRows`` maps its chunk files back to back as one array (a batch is
then one numpy fancy index), advised ``MADV_HUGEPAGE`` and ``MADV_RANDOM``: a fault then reads
the whole aligned 2 MiB block in one request, the block stays in the page cache as one 2 MiB
page, and later copies pay no 4 KiB TLB misses. A cold epoch reads each byte once, in large
requests. When the array is larger than memory, reading 2 MiB to serve a 0.81 MiB row would read
most bytes two or three times, so ``RawRows`` instead tells the kernel every row of the batch up
front (``POSIX_FADV_WILLNEED``: it reads them in parallel) and ``pread``s each row into the
output, switching back to the maps while batches come from the page cache.

Integrity: each block of ``block_rows`` rows (one item for ragged entries) has a CRC32C. A
block is checked on the bytes actually read, the first time any process sharing the ``Entry``
reads it (DataLoader workers forked from it share one verified-flags map), so a cold epoch reads
each byte once. ``verify_all`` (``featstore verify``) is the full check.
"""

from __future__ import annotations

import mmap
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from . import _region
from .arrays import read_checked, read_vector
from .errors import (
    CorruptChunkError,
    FeatstoreError,
    MissingIdsError,
    NoSuchColumnError,
    StoreError,
)
from .format import (
    CHECKSUMS,
    IDS,
    OFFSETS,
    FormatError,
    Manifest,
    chunk_file,
    column_path,
    load_manifest,
    raw_layout_reason,
    read_array_meta,
)
from .integrity import crc32c, crc_hex
from .store import Store

PREFETCH_MODES = ("auto", "pages", "rows", "never")
# "auto" reads through 2 MiB pages when the array takes at most this share of the memory the
# kernel reports available (the page cache can then keep it), else row by row.
_PAGES_MEMORY_SHARE = 0.5
_FIX = "Remove the entry with `featstore rm KEY` and extract it again."
# A batch counts as read from disk when copying it took longer than this per row plus per byte
# (page-cache copies run at several GB/s; a disk read costs tens of microseconds at least).
_COLD_SECONDS_PER_ROW = 20e-6
_COLD_SECONDS_PER_BYTE = 1 / 2e9
_WARM_AFTER_BATCHES = 8  # fast batches in a row before reading from the maps again


class RawRows:
    """Rows of a raw Zarr v3 array, read from its chunk files in one of three ways.

    ``prefetch`` picks it:

    * ``"pages"``: every chunk file mapped into one range, each chunk of 2 MiB or more on a
      2 MiB boundary (``_region``; where the platform does not allow it, one map per chunk),
      advised ``MADV_HUGEPAGE`` + ``MADV_RANDOM``, so a batch is one numpy fancy index. A cold
      row faults in its aligned 2 MiB blocks (one read each), which then stay cached as 2 MiB
      pages: the fastest cold epoch and the fastest warm reads, when the page cache can keep
      the array.
    * ``"rows"``: tells the kernel every row of the batch (``POSIX_FADV_WILLNEED``, which starts
      reading them all at once), then ``pread``s each row into the output: exactly the row's
      bytes, no page faults, nothing mapped. For arrays larger than memory.
    * ``"never"``: plain memory maps, no hints (the format-1 reader; a reference).
    * ``"auto"`` (default): ``"pages"`` if the array takes at most half of the memory available
      now (or of the cgroup memory limit) and the kernel accepts ``MADV_HUGEPAGE``; otherwise
      ``"rows"`` while batches come from disk and plain maps while they come from the page
      cache, chosen per batch from how long the last batches took.
    """

    def __init__(
        self, array_dir: Path, meta: dict[str, Any], max_open: int = 256, prefetch: str = "auto"
    ):
        if prefetch == "always":  # its name before "pages" existed
            warnings.warn('prefetch="always" is now called "rows"', FutureWarning, stacklevel=3)
            prefetch = "rows"
        if prefetch not in PREFETCH_MODES:
            raise FeatstoreError(f"prefetch {prefetch!r} unknown; use {', '.join(PREFETCH_MODES)}")
        self.dir = array_dir
        self.shape = tuple(meta["shape"])
        self.dtype = np.dtype(meta["data_type"]).newbyteorder("<")
        self.chunk_rows = meta["chunk_grid"]["configuration"]["chunk_shape"][0]
        self.chunk_shape = (self.chunk_rows, *self.shape[1:])
        self.row_bytes = int(np.prod(self.shape[1:])) * self.dtype.itemsize
        self.chunk_bytes = self.chunk_rows * self.row_bytes
        self.prefetch = prefetch
        # "auto" reads the "pages" way when the array fits in memory (``_pages_budget``).
        self._pages = prefetch == "pages" or (
            prefetch == "auto" and self.shape[0] * self.row_bytes <= _pages_budget()
        )
        # The "pages" way maps every chunk file back to back (``_region``): the array is then
        # one ndarray and a batch one numpy fancy index. ``None`` until first read.
        self._whole_ok = _region.available()
        self._chunks: np.ndarray | None = None  # [n_chunks, chunk_rows, ...] over the maps
        self._flat: np.ndarray | None = None  # [rows, ...] when the chunks leave no gaps
        self._region: _region.MappedFiles | None = None
        self._max_open = max_open
        # chunk -> (plain ndarray view of its map, the mmap). ndarray indexing skips np.memmap's
        # per-access overhead. A map (and each cold-path file) holds a file descriptor, so at
        # most ``max_open`` of each stay open; the oldest is dropped first.
        self._maps: dict[int, tuple[np.ndarray, mmap.mmap]] = {}
        self._fds: dict[int, int] = {}
        # Start on the cold way until batches show the page cache (a warm batch read the cold
        # way costs ~0.1 ms more).
        self._cold = True
        self._fast_batches = 0
        self._pid = os.getpid()

    def __getstate__(self) -> dict[str, Any]:
        gone = {"_maps": {}, "_fds": {}, "_chunks": None, "_flat": None, "_region": None}
        return {**self.__dict__, **gone}

    def __del__(self) -> None:
        if getattr(self, "_pid", None) == os.getpid():
            for fd in getattr(self, "_fds", {}).values():
                os.close(fd)

    @property
    def open_maps(self) -> int:
        """How many chunk files this process has mapped now (at most ``max_open`` one by one;
        every chunk once the "pages" way has mapped the whole array)."""
        whole = self._n_chunks if self._chunks is not None else 0
        return len(self._maps) + whole

    @property
    def _n_chunks(self) -> int:
        return -(-self.shape[0] // self.chunk_rows)

    def chunk_path(self, chunk: int) -> Path:
        return chunk_file(self.dir, chunk, len(self.shape))

    def _fork_check(self) -> None:
        if self._pid != os.getpid():  # forked into a worker: open this process's own files
            self._maps, self._fds, self._pid = {}, {}, os.getpid()

    def _checked_fd(self, chunk: int) -> int:
        """A new read-only fd of a chunk file whose size is right (else it is corruption)."""
        path = self.chunk_path(chunk)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise CorruptChunkError(f"chunk file {path} is missing.") from None
        size = os.fstat(fd).st_size
        if size != self.chunk_bytes:
            os.close(fd)
            raise CorruptChunkError(
                f"chunk file {path} has {size} bytes, expected {self.chunk_bytes} "
                f"(truncated or overwritten)."
            )
        return fd

    def _fd(self, chunk: int) -> int:
        fd = self._fds.get(chunk)
        if fd is None:
            if len(self._fds) >= self._max_open:
                os.close(self._fds.pop(next(iter(self._fds))))
            fd = self._fds[chunk] = self._checked_fd(chunk)
        return fd

    def _view(self, chunk: int) -> np.ndarray:
        if self._chunks is not None:
            return self._chunks[chunk]
        found = self._maps.get(chunk)
        return found[0] if found is not None else self._open(chunk)[0]

    def _whole(self) -> bool:
        """Map every chunk file into one range for the "pages" way (``_chunks``, and ``_flat``
        when the chunks leave no gaps), advised for 2 MiB pages. False where that cannot be
        done: then one map per chunk, or (under "auto", if 2 MiB pages are refused) rows."""
        if self._chunks is not None:
            return True
        if not self._pages or not self._whole_ok:
            return False
        try:
            region = _region.MappedFiles(self._n_chunks, self.chunk_bytes)
            for chunk in range(self._n_chunks):
                fd = self._checked_fd(chunk)
                try:
                    region.map_file(chunk, fd)
                finally:
                    os.close(fd)
        except OSError:  # no room for the range or too many maps (vm.max_map_count)
            self._whole_ok = False  # one map per chunk instead
            return False
        if not _advise_pages(region) and self.prefetch == "auto":
            self._pages = False  # no 2 MiB pages here: read rows instead
            return False
        self._chunks = region.rows(self.dtype, self.chunk_rows, self.shape[1:])
        if region.contiguous:
            self._flat = self._chunks.reshape(-1, *self.shape[1:])[: self.shape[0]]
        self._region = region
        return True

    def _open(self, chunk: int) -> tuple[np.ndarray, mmap.mmap]:
        fd = self._checked_fd(chunk)
        try:
            mm = mmap.mmap(fd, self.chunk_bytes, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
        if self._pages and not _advise_pages(mm) and self.prefetch == "auto":
            self._pages = False  # no 2 MiB pages here (kernel, platform): read rows instead
        view = np.frombuffer(mm, dtype=self.dtype).reshape(self.chunk_shape)
        if len(self._maps) >= self._max_open:
            del self._maps[next(iter(self._maps))]
        self._maps[chunk] = (view, mm)
        return view, mm

    # -- choosing the way -----------------------------------------------------------------------
    @property
    def way(self) -> str:
        """How the next batch will be read: ``"pages"``, ``"rows"`` or ``"maps"``."""
        if self._pages:
            return "pages"
        return "rows" if self._reading_cold() else "maps"

    def _reading_cold(self) -> bool:
        if self._pages or not hasattr(os, "preadv"):  # no pread (Windows): maps only
            return False
        return self.prefetch == "rows" or (self.prefetch == "auto" and self._cold)

    def _observe(self, rows: int, nbytes: int, seconds: float) -> None:
        """One slow batch switches to the cold way; only a run of fast ones switches back, so
        a store partly in the page cache (most batches hold some rows from disk) stays cold."""
        if self.prefetch != "auto" or self._pages:
            return
        if seconds > rows * _COLD_SECONDS_PER_ROW + nbytes * _COLD_SECONDS_PER_BYTE:
            self._cold, self._fast_batches = True, 0
        elif self._cold:
            self._fast_batches += 1
            self._cold = self._fast_batches < _WARM_AFTER_BATCHES

    def _segments(self, start: int, stop: int) -> list[tuple[int, int, int]]:
        """``(chunk, byte offset in its file, bytes)`` pieces of rows ``[start, stop)``."""
        cr, rb, out = self.chunk_rows, self.row_bytes, []
        for c in range(start // cr, (max(stop, start + 1) - 1) // cr + 1):
            lo, hi = max(start, c * cr) - c * cr, min(stop, (c + 1) * cr) - c * cr
            if hi > lo:
                out.append((c, lo * rb, (hi - lo) * rb))
        return out

    def _pread_into(self, buffers: list[np.ndarray], pieces: list[list[tuple[int, int, int]]]):
        """Hint every piece to the kernel, then read each into its (flat uint8) buffer."""
        fadvise = getattr(os, "posix_fadvise", None)
        if fadvise is not None:
            for segs in pieces:
                for c, off, n in segs:
                    fadvise(self._fd(c), off, n, os.POSIX_FADV_WILLNEED)
        for buf, segs in zip(buffers, pieces, strict=True):
            pos = 0
            for c, off, n in segs:
                got = os.preadv(self._fd(c), [buf[pos : pos + n]], off)
                if got != n:
                    raise CorruptChunkError(f"chunk file {self.chunk_path(c)} is truncated.")
                pos += n

    # -- access ---------------------------------------------------------------------------------
    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop): a view when they lie in one chunk (or the whole array is mapped),
        else a copy."""
        self._fork_check()
        if self._whole() and self._flat is not None:
            return self._flat[start:stop]
        cr = self.chunk_rows
        c0, c1 = start // cr, (max(stop, start + 1) - 1) // cr
        if c0 == c1:
            return self._view(c0)[start - c0 * cr : stop - c0 * cr]
        parts = [
            self._view(c)[max(start, c * cr) - c * cr : min(stop, (c + 1) * cr) - c * cr]
            for c in range(c0, c1 + 1)
        ]
        return np.concatenate(parts)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) the way the last batch was read (a view or a new array)."""
        if not self._reading_cold():
            return self.rows(start, stop)
        self._fork_check()
        out = np.empty((stop - start, *self.shape[1:]), self.dtype)
        self._pread_into([out.reshape(-1).view(np.uint8)], [self._segments(start, stop)])
        return out

    def take(self, indices: np.ndarray) -> np.ndarray:
        """Rows at ``indices`` (any order, repeats allowed) as a new array."""
        self._fork_check()
        if self._whole():
            if self._flat is not None:
                return self._flat[indices]
            return self._chunks[indices // self.chunk_rows, indices % self.chunk_rows]
        out = np.empty((len(indices), *self.shape[1:]), dtype=self.dtype)
        rows = indices.tolist()
        t0 = time.perf_counter()
        if self._reading_cold():
            flat = out.reshape(len(rows), out[0].size if len(rows) else 0).view(np.uint8)
            self._pread_into(list(flat), [self._segments(i, i + 1) for i in rows])
        else:
            cr, maps = self.chunk_rows, self._maps
            for j, i in enumerate(rows):
                c = i // cr
                found = maps.get(c)
                view = found[0] if found is not None else self._open(c)[0]
                out[j] = view[i - c * cr]
        self._observe(len(rows), out.nbytes, time.perf_counter() - t0)
        return out

    def take_ranges(self, starts: list[int], stops: list[int]) -> list[np.ndarray]:
        """Row ranges ``[start, stop)`` (ragged items) as new arrays."""
        self._fork_check()
        t0 = time.perf_counter()
        ranges = list(zip(starts, stops, strict=True))
        if self._reading_cold():
            out = [np.empty((b - a, *self.shape[1:]), self.dtype) for a, b in ranges]
            flats = [x.reshape(-1).view(np.uint8) for x in out]
            self._pread_into(flats, [self._segments(a, b) for a, b in ranges])
        else:
            out = [np.array(self.rows(a, b)) for a, b in ranges]
        self._observe(len(out), sum(x.nbytes for x in out), time.perf_counter() - t0)
        return out


def _pages_budget() -> int:
    """Bytes an array may take to be read through 2 MiB pages: a share of the memory the
    kernel reports available (page cache included), or of this process's cgroup memory limit
    if that is smaller (a Slurm job or container is charged for its page cache); 0 where
    neither is known."""
    available = None
    try:
        with open("/proc/meminfo", "rb") as fh:
            for line in fh:
                if line.startswith(b"MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    limits = [x for x in (available, cgroup_memory_limit()) if x is not None]
    return int(min(limits) * _PAGES_MEMORY_SHARE) if limits else 0


def cgroup_memory_limit(
    proc_cgroup: Path = Path("/proc/self/cgroup"), root: Path = Path("/sys/fs/cgroup")
) -> int | None:
    """The smallest memory limit on this process's cgroup and its ancestors (cgroup v2
    ``memory.max`` or v1 ``memory.limit_in_bytes``), or None if there is none."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    found: list[int] = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            top, name = root, "memory.max"
        elif "memory" in controllers.split(","):
            top, name = root / "memory", "memory.limit_in_bytes"
        else:
            continue
        here = top / path.strip("/")
        while True:
            try:
                value = (here / name).read_text().strip()
            except OSError:
                value = "max"
            if value.isdigit() and int(value) < 1 << 60:  # v1 says "no limit" with ~2**63
                found.append(int(value))
            if here == top or top not in here.parents:
                break
            here = here.parent
    return min(found) if found else None


def _advise_pages(mm: mmap.mmap | _region.MappedFiles) -> bool:
    """Ask for 2 MiB pages and no read-around on chunk maps; False if refused."""
    try:
        mm.madvise(mmap.MADV_HUGEPAGE)
    except (AttributeError, OSError):  # no THP on this platform or kernel
        return False
    mm.madvise(mmap.MADV_RANDOM)  # faults read their 2 MiB block only, not 8 MiB around it
    return True


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

    def _decode(self, read: Any) -> np.ndarray:
        try:
            return read()
        except Exception as e:  # noqa: BLE001 - a chunk that cannot be decoded is damage
            raise CorruptChunkError(f"a chunk of {self.dir} cannot be decoded ({e}).") from None

    def rows(self, start: int, stop: int) -> np.ndarray:
        return self._decode(lambda: self.array[start:stop])

    read = rows

    def take(self, indices: np.ndarray) -> np.ndarray:
        uniq, inverse = np.unique(indices, return_inverse=True)
        return self._decode(lambda: self.array.get_orthogonal_selection((uniq,)))[inverse]

    def take_ranges(self, starts: list[int], stops: list[int]) -> list[np.ndarray]:
        return [self.rows(a, b) for a, b in zip(starts, stops, strict=True)]


def open_rows(array_dir: Path, zero_copy: bool = True, prefetch: str = "auto"):
    meta = read_array_meta(array_dir)
    if zero_copy and raw_layout_reason(meta) is None:
        return RawRows(array_dir, meta, prefetch=prefetch)
    try:
        return ZarrRows(array_dir)
    except Exception as e:  # noqa: BLE001 - zarr-python refuses this metadata
        raise FormatError(f"{array_dir}: zarr-python cannot open it ({e}).") from None


def _shared_flags(n: int) -> np.ndarray:
    """``n`` zero bytes in an anonymous shared mapping: processes forked later (DataLoader
    workers) see each other's writes, so a block verified by one is verified for all."""
    return np.frombuffer(mmap.mmap(-1, max(n, 1)), dtype=np.uint8, count=n)


class Entry:
    """A complete cache entry, opened for reading.

    ``entry[i]`` is row i; ``entry.gather(idx)`` a batch; ``entry.positions(ids)`` maps ids to rows.
    Ragged entries (``[T_i, ...]`` items) return arrays of varying length; ``gather_padded`` pads.
    ``verify`` checks each block's CRC32C on first read; ``prefetch`` ("auto", "pages", "rows",
    "never") picks how rows are read from disk (``RawRows``).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        verify: bool = True,
        zero_copy: bool = True,
        prefetch: str = "auto",
    ):
        self.path = Path(path)
        self.meta: Manifest = load_manifest(self.path)
        self.key: str = self.meta.key
        if not self.meta.complete:
            raise StoreError(
                f"entry {self.key} is incomplete (extraction was interrupted or is running). "
                f"Run the same `featstore extract` again to resume it."
            )
        meta = self.meta
        self.ragged = meta.ragged
        self.chunk_rows = meta.chunk_rows
        self.verify = verify
        self._n = meta.n_rows
        sums = meta.array_checksums
        self.ids = read_vector(self.path, IDS, meta.ids, sums)
        self.offsets = read_checked(self.path, OFFSETS, sums) if self.ragged else None
        self._block_crc = read_checked(self.path, CHECKSUMS, sums)
        self._rows = open_rows(self.path / meta.data_array, zero_copy, prefetch)
        self.zero_copy = isinstance(self._rows, RawRows)
        self._check_shapes()
        self._verified: np.ndarray | None = _shared_flags(meta.n_blocks)
        self._all_verified = False  # every block checked (by this process or a sibling)
        self._clean_batches = 0
        self._index: dict[Any, int] | None = None

    def _check_shapes(self) -> None:
        meta, where = self.meta, f"entry {self.key}"
        n_data = meta.n_values if self.ragged else meta.n_rows
        if tuple(self._rows.shape) != (n_data, *meta.row_shape):
            raise CorruptChunkError(
                f"{where}: {meta.data_array} has shape {tuple(self._rows.shape)}, the manifest "
                f"says {(n_data, *meta.row_shape)}. {_FIX}"
            )
        if len(self.ids) != meta.n_rows or len(self._block_crc) != meta.n_blocks:
            raise CorruptChunkError(f"{where}: ids or checksums do not have one value per row.")
        if self.ragged:
            off = self.offsets
            if len(off) != meta.n_rows + 1 or off[0] != 0 or off[-1] != n_data:
                raise CorruptChunkError(f"{where}: offsets do not span values. {_FIX}")
            if (np.diff(off) < 0).any():
                raise CorruptChunkError(f"{where}: offsets decrease. {_FIX}")

    def __getstate__(self) -> dict[str, Any]:
        # A shared map cannot travel to a spawned process; it gets its own flags there.
        return {**self.__dict__, "_verified": None}

    # -- description ----------------------------------------------------------------------------
    @property
    def manifest(self) -> dict[str, Any]:
        """The manifest as stored (a dict); ``meta`` is the typed one."""
        return self.meta.to_dict()

    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        shape = ("T", *self.row_shape) if self.ragged else self.row_shape
        return (
            f"Entry({self.key}, teacher={self.meta.teacher}, output={self.meta.output}, "
            f"n={len(self)}, row_shape={shape}, dtype={self.dtype}, zero_copy={self.zero_copy})"
        )

    @property
    def row_shape(self) -> tuple[int, ...]:
        return self.meta.row_shape

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.meta.dtype)

    # -- integrity ------------------------------------------------------------------------------
    def _flags(self) -> np.ndarray:
        if self._verified is None:
            self._verified = _shared_flags(self.meta.n_blocks)
        return self._verified

    def _block_data(self, block: int) -> np.ndarray:
        lo, hi = self.meta.block_rows_range(block)
        if self.ragged:
            lo, hi = int(self.offsets[lo]), int(self.offsets[hi])
        return self._rows.read(lo, hi)

    def _where(self, block: int) -> str:
        lo, hi = self.meta.block_rows_range(block)
        if self.ragged:
            lo, hi = int(self.offsets[lo]), int(self.offsets[hi])
        cr = self._rows.chunk_rows
        files = sorted({str(self._rows.chunk_path(r // cr)) for r in (lo, max(lo, hi - 1))})
        what = f"item {block}" if self.ragged else f"rows {lo}-{hi - 1}"
        return f"chunk {' and '.join(files)} is corrupt ({what}"

    def check_block(self, block: int, data: np.ndarray | None = None) -> None:
        """Check one block's CRC32C (on ``data`` if given: the bytes just read)."""
        found = crc32c(self._block_data(block) if data is None else data)
        if found != int(self._block_crc[block]):
            raise CorruptChunkError(
                f"entry {self.key}: {self._where(block)}: CRC32C {crc_hex(found)}, recorded "
                f"{crc_hex(int(self._block_crc[block]))}). {_FIX}"
            )

    def _verify_read(self, rows: np.ndarray, read: np.ndarray | list[np.ndarray] | None) -> None:
        """Check the blocks of ``rows`` not yet verified; ``read[j]`` holds row ``rows[j]`` when
        a block is one row (so the check costs no second read)."""
        if not self.verify or not len(rows) or self._all_verified:
            return
        flags, br = self._flags(), self.meta.block_rows
        blocks = rows // br if br > 1 else rows
        todo = np.flatnonzero(flags[blocks] == 0)
        if not len(todo):
            self._clean_batches += 1
            if self._clean_batches % 64 == 0:  # flags only ever go from 0 to 1
                self._all_verified = bool(flags.all())
            return
        for j in todo.tolist():
            block = int(blocks[j])
            if flags[block]:
                continue  # a repeat within this batch
            self.check_block(block, read[j] if br == 1 and read is not None else None)
            flags[block] = 1

    def verify_all(self) -> list[str]:
        """The full check (``featstore verify``): every problem found, one message each."""
        from .verify import verify_entry

        return verify_entry(self.path).problems

    # -- access ---------------------------------------------------------------------------------
    def _check_rows(self, rows: np.ndarray | list[int]) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if not rows.size:
            return rows
        if rows.size <= 64:  # a batch: Python's min/max skip two numpy reductions (~5 µs each)
            listed = rows.tolist()
            lo, hi = min(listed), max(listed)
        else:
            lo, hi = int(rows.min()), int(rows.max())
        n = self._n
        if lo < -n or hi >= n:
            raise IndexError(f"row index out of range for entry of {n} rows")
        return rows if lo >= 0 else np.where(rows < 0, rows + n, rows)

    def _items(self, rows: np.ndarray) -> list[np.ndarray]:
        starts = self.offsets[rows].tolist()
        stops = self.offsets[rows + 1].tolist()
        items = self._rows.take_ranges(starts, stops)
        self._verify_read(rows, items)
        return items

    def __getitem__(self, i: int) -> np.ndarray:
        rows = self._check_rows(np.array([i]))
        if self.ragged:
            return self._items(rows)[0]
        out = self._rows.take(rows)
        self._verify_read(rows, out)
        return out[0]

    def gather(self, rows: np.ndarray | list[int]) -> np.ndarray | list[np.ndarray]:
        """Rows as one ``[B, ...]`` array (fixed), or a list of ``[T_i, ...]`` arrays (ragged)."""
        rows = self._check_rows(rows)
        if self.ragged:
            return self._items(rows)
        out = self._rows.take(rows)
        self._verify_read(rows, out)
        return out

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
        starts = self.offsets[rows]
        full = (self.offsets[rows + 1] - starts).astype(np.int64)
        lengths = full if max_length is None else np.minimum(full, max_length)
        self._verify_read(rows, None)  # checks whole items, also those truncated here
        t = int(lengths.max()) if len(rows) else 0
        out = np.empty((len(rows), t, *self.row_shape), dtype=self.dtype)
        for j, (start, n) in enumerate(zip(starts.tolist(), lengths.tolist(), strict=True)):
            out[j, :n] = self._rows.rows(start, start + n)
            out[j, n:] = pad_value
        return out, lengths

    def _id_index(self) -> dict[Any, int]:
        if self._index is None:
            self._index = {k: i for i, k in enumerate(self.ids.tolist())}
        return self._index

    def positions(self, ids: list | np.ndarray) -> np.ndarray:
        """Row position of each id; a clear error lists ids that are not in the entry."""
        index = self._id_index()
        keys = np.asarray(ids).tolist()
        missing = [k for k in keys if k not in index]
        if missing:
            raise MissingIdsError(
                f"{len(missing)} of {len(keys)} ids are not in entry {self.key} "
                f"(teacher {self.meta.teacher}); first: {missing[:5]}"
            )
        return np.array([index[k] for k in keys], dtype=np.int64)

    def column(self, name: str) -> np.ndarray:
        """A per-item metadata column (e.g. ``image_id`` of captions), in row order."""
        kind = self.meta.columns.get(name)
        if kind is None:
            have = sorted(self.meta.columns)
            raise NoSuchColumnError(
                f"entry {self.key} has no column {name!r} (columns: {have or 'none'})"
            )
        return read_vector(self.path, column_path(name), kind, self.meta.array_checksums)

    def contains(self, ids: list | np.ndarray) -> np.ndarray:
        """A boolean mask: which ids have a row in this entry."""
        index = self._id_index()
        return np.array([k in index for k in np.asarray(ids).tolist()], dtype=bool)

    def by_id(self, item_id: Any) -> np.ndarray:
        return self[int(self.positions([item_id])[0])]

    def dataset(self, rows: np.ndarray | None = None) -> FeatureDataset:
        return FeatureDataset(self, rows)


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
    key_or_path: str,
    store: Store | str | None = None,
    verify: bool = True,
    zero_copy: bool = True,
    prefetch: str = "auto",
) -> Entry:
    """Open a complete entry by key, unique key prefix, or path."""
    store = store if isinstance(store, Store) else Store(store)
    return Entry(store.resolve(key_or_path).path, verify, zero_copy, prefetch)
