"""Read-path benchmark: random batches of target rows, featstore reader vs the alternatives.

What is measured
    Samples/s for random batches of ``--batch`` rows (default 8) drawn without replacement from a
    ``[N, 256, 1664]`` float16 array (bigG token targets, 0.81 MiB per row), read by:

    (a) featstore: ``featstore.reader.Entry(path).gather(rows)`` on an uncompressed entry
        (memory maps of the raw Zarr v3 chunk files), with ``verify=True`` (the default; every
        chunk's CRC32 is checked once per process, here before timing) and ``verify=False``;
    (b) a numpy array in RAM, ``arr[rows]`` (the limit);
    (c) an h5py contiguous dataset with a fancy index; h5py needs increasing indices, so each
        batch is sorted first (as MindEye does) and the sort is timed with the read;
    (d) zarr-python 3 ``get_orthogonal_selection`` on the entry's ``features`` array (reference;
        only ``--zarr-iters`` batches since it is slow).

    (ref) plain ndarray views of ``np.memmap`` over the same chunk files, no featstore code:
        the floor under (a), so (ref) - (a) is the reader's own per-batch overhead.

    All readers see the same batches. The page cache is warmed first (every data file is read
    once) so the numbers are the steady state. The ``--iters`` batches are split into
    ``--rounds`` short rounds; in each round every reader reads the same slice, in an order that
    rotates from round to round, so drift in machine speed (a shared VM) hits all readers alike.
    Reported: each reader's median round, and ratios as the median of per-round (paired) ratios.
    The one-time first-touch cost (CRC32C of every block, ``Entry.verify_all``) is timed
    separately on a warm page cache.

How to run
    python bench/read_targets.py                      # N=2048 rows (~1.7 GB per copy)
    python bench/read_targets.py --rows 512 --iters 500 --workdir /tmp/fsbench

    Data (featstore entry + HDF5 file, ~2x N x 0.81 MiB on disk) goes to ``--workdir``
    (default ``bench/out/``, git-ignored) and is reused by later runs with the same
    ``--rows/--seed/--chunk-rows``; ``--clean`` removes it at the end. Results are printed as a
    markdown table and written to ``<workdir>/read_targets.json``.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import zarr
from _common import env_info, finish, warm_page_cache

import featstore  # noqa: F401  (applies featstore's import fix-ups first)
from featstore.reader import Entry
from featstore.store import read_manifest
from featstore.writer import EntryWriter

ROW_SHAPE = (256, 1664)
DTYPE = "float16"
ENTRY_NAME = "bench-read-targets"
H5_DATASET = "targets"
GOAL_VS_NUMPY = 0.95
GOAL_VS_H5PY = 2.0
GOAL_COLD_VS_H5PY = 2.0
GOAL_COLD_VS_PREAD = 1.0
SORTED_READERS = ("h5py", "zarr")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Random-batch read throughput: featstore reader vs numpy, h5py and zarr.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--rows", type=int, default=2048, help="rows N of the [N,256,1664] fp16 array")
    p.add_argument("--batch", type=int, default=8, help="rows per random batch")
    p.add_argument("--iters", type=int, default=6000, help="timed batches per reader")
    p.add_argument("--rounds", type=int, default=60, help="interleaved rounds the iters split into")
    p.add_argument("--zarr-iters", type=int, default=20, help="batches for zarr-python (slow)")
    p.add_argument("--chunk-rows", type=int, default=32, help="rows per Zarr chunk")
    p.add_argument("--workdir", type=Path, default=Path(__file__).parent / "out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clean", action="store_true", help="delete the generated data at the end")
    p.add_argument(
        "--cold",
        action="store_true",
        help="drop the page cache before every batch (the store larger than RAM)",
    )
    p.add_argument("--cold-iters", type=int, default=300, help="timed batches per reader, --cold")
    p.add_argument("--cold-epochs", type=int, default=3, help="cold epochs per reader, --cold")
    p.add_argument(
        "--touch-gib",
        type=float,
        default=None,
        help="GiB of memory touched (then freed) before every cold epoch, for every reader "
        "alike: on a VM whose balloon returns free memory to the host, the first touch of such "
        "memory costs seconds per GiB (see touch_memory). Default: 2x the entry; 0: off",
    )
    p.add_argument(
        "--warm-via",
        choices=("reader", "read"),
        default="reader",
        help="how the warm run fills the page cache: 'reader' evicts the entry and reads one "
        "epoch through featstore (as a training run's first epoch does); 'read' reads every "
        "file with plain read() calls",
    )
    p.add_argument("--loader-workers", type=int, default=4, help="DataLoader workers, --cold")
    p.add_argument(
        "--big",
        type=int,
        default=0,
        metavar="ROWS",
        help="a store of ROWS rows larger than the page cache (no drops, no h5py "
        "copy): featstore vs pread as the cache lets them; e.g. 30000 = 24 GiB",
    )
    p.add_argument("--big-seconds", type=float, default=20.0, help="timed seconds per round")
    return p.parse_args(argv)


# -- data ---------------------------------------------------------------------------------------
def unit_data(seed: int, unit: int, rows: int) -> np.ndarray:
    """Deterministic random rows for one chunk (independent of how many units there are)."""
    rng = np.random.default_rng([seed, unit])
    return rng.standard_normal((rows, *ROW_SHAPE), dtype=np.float32).astype(DTYPE)


def build_data(args: argparse.Namespace, data_dir: Path) -> tuple[Path, Path, np.ndarray, float]:
    """Entry + HDF5 file + in-RAM array with identical contents; reused when parameters match."""
    entry_path = data_dir / "store" / ENTRY_NAME
    h5_path = data_dir / "targets.h5"
    params = {"rows": args.rows, "seed": args.seed, "chunk_rows": args.chunk_rows,
              "row_shape": list(ROW_SHAPE), "dtype": DTYPE}  # fmt: skip
    params_file = data_dir / "params.json"
    manifest = read_manifest(entry_path)
    reuse = (
        params_file.is_file()
        and json.loads(params_file.read_text()) == params
        and manifest is not None
        and manifest.get("complete")
        and h5_path.is_file()
    )
    t0 = time.perf_counter()
    if reuse:
        print(f"reusing data in {data_dir}", flush=True)
        with h5py.File(h5_path, "r") as f:
            arr = f[H5_DATASET][:]
        return entry_path, h5_path, arr, time.perf_counter() - t0

    print(f"building {args.rows} rows x {ROW_SHAPE} {DTYPE} in {data_dir} ...", flush=True)
    shutil.rmtree(data_dir, ignore_errors=True)
    (data_dir / "store").mkdir(parents=True)
    n, cr = args.rows, args.chunk_rows
    arr = np.empty((n, *ROW_SHAPE), dtype=DTYPE)
    writer = EntryWriter.create(
        entry_path,
        {"key": ENTRY_NAME, "teacher": "synthetic", "output": "tokens"},
        np.arange(n, dtype=np.int64),
        row_shape=ROW_SHAPE,
        dtype=DTYPE,
        ragged=False,
        chunk_rows=cr,
    )
    with h5py.File(h5_path, "w") as f:
        ds = f.create_dataset(H5_DATASET, shape=(n, *ROW_SHAPE), dtype=DTYPE)  # contiguous
        for unit in range(writer.n_chunks):
            start, stop = writer.unit_rows(unit)
            block = unit_data(args.seed, unit, stop - start)
            writer.commit(unit, block)
            ds[start:stop] = block
            arr[start:stop] = block
    writer.finalize({"bench": "read_targets"})
    params_file.write_text(json.dumps(params))
    return entry_path, h5_path, arr, time.perf_counter() - t0


def warm_up(args: argparse.Namespace, entry_path: Path, h5_path: Path) -> float:
    """Fill the page cache with both copies; the entry's way decides its page sizes."""
    t0 = time.perf_counter()
    warm_page_cache([h5_path])
    drop_page_cache(data_files(entry_path, h5_path)[:-1], [])  # both ways start from disk
    if args.warm_via == "reader":  # as a training run's first epoch leaves it
        entry = Entry(entry_path, verify=False)
        for start in range(0, args.rows, 64):
            entry.gather(np.arange(start, min(start + 64, args.rows)))
        print(f"page cache warmed: entry read through featstore ({entry._rows.way}), HDF5 read")
    else:
        warm_page_cache([entry_path])
        print("page cache warmed: every file read with read()")
    return time.perf_counter() - t0


# -- timing -------------------------------------------------------------------------------------
def time_reader(read: Callable[[np.ndarray], np.ndarray], batches: np.ndarray) -> float:
    """Seconds to read every batch once (each result is checked so nothing is left lazy)."""
    t0 = time.perf_counter()
    for rows in batches:
        out = read(rows)
        assert out.shape[0] == len(rows)
    return time.perf_counter() - t0


def check_same(readers: dict[str, Callable[[np.ndarray], np.ndarray]], arr, rows) -> None:
    """Every reader returns the same rows (h5py and zarr in sorted order)."""
    srt = np.sort(rows)
    for name, read in readers.items():
        want = arr[srt] if name in SORTED_READERS else arr[rows]
        if not np.array_equal(read(rows), want):
            raise SystemExit(f"reader {name} returned wrong data")


def copy_without_huge_pages(arr: np.ndarray) -> np.ndarray:
    """A copy of ``arr`` in 4 KiB pages. numpy asks for transparent huge pages on large arrays
    (``MADV_HUGEPAGE``); whether page-cache maps get them depends on the kernel and file system
    (``huge_page_share`` measures it), so this shows what huge pages are worth here."""
    try:
        from numpy._core.multiarray import _set_madvise_hugepage
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _set_madvise_hugepage
    previous = _set_madvise_hugepage(False)
    try:
        out = np.empty_like(arr)
        out[...] = arr
    finally:
        _set_madvise_hugepage(previous)
    return out


def huge_page_share(under: Path) -> float | None:
    """Share of this process's resident mapped bytes of files under ``under`` that the kernel
    maps with 2 MiB pages (``FilePmdMapped / Rss`` in /proc/self/smaps; Linux 4.8+). Recent
    kernels with large folios in the page cache (ext4 since 6.x, xfs) give file maps huge
    pages too; older ones never do."""
    try:
        lines = Path("/proc/self/smaps").read_text().splitlines()
    except OSError:
        return None
    mine, rss, pmd = False, 0, 0
    for line in lines:
        fields = line.split()
        if fields and "-" in fields[0] and len(fields) >= 5 and ":" not in fields[0]:
            mine = len(fields) >= 6 and fields[5].startswith(str(under))
        elif mine and fields and fields[0] in ("Rss:", "FilePmdMapped:"):
            if fields[0] == "Rss:":
                rss += int(fields[1])
            else:
                pmd += int(fields[1])
    return pmd / rss if rss else None


def row_loop(arr: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Reference: the copy loop of ``mmap_views`` over the array in RAM. Against it, the maps'
    row shows what copying out of page-cache memory costs by itself."""

    def read(rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), *arr.shape[1:]), dtype=arr.dtype)
        for j, i in enumerate(rows.tolist()):
            out[j] = arr[i]
        return out

    return read


def mmap_views(entry: Entry) -> Callable[[np.ndarray], np.ndarray]:
    """Reference: plain ndarray views of ``np.memmap``s over the same chunk files, no featstore
    code on the read path (the floor the reader's own Python overhead sits on)."""
    raw = entry._rows  # RawRows of the entry; only its chunk file paths are used
    cr = raw.chunk_rows
    views = [
        np.memmap(raw.chunk_path(c), dtype=raw.dtype, mode="r", shape=raw.chunk_shape).view(
            np.ndarray
        )
        for c in range(entry.meta.n_chunks)
    ]

    def read(rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), *raw.shape[1:]), dtype=raw.dtype)
        for j, i in enumerate(rows.tolist()):
            out[j] = views[i // cr][i % cr]
        return out

    return read


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.big:
        return big_main(args)
    if args.batch > args.rows:
        raise SystemExit("--batch must not exceed --rows")
    data_dir = args.workdir / "read_targets_data"
    entry_path, h5_path, arr, build_s = build_data(args, data_dir)
    if args.cold:
        return cold_main(args, data_dir, entry_path, h5_path, arr, build_s)
    row_mib = int(np.prod(ROW_SHAPE)) * np.dtype(DTYPE).itemsize / 2**20
    print(f"data ready in {build_s:.1f} s ({args.rows * row_mib / 1024:.2f} GiB per copy)")

    warm_s = warm_up(args, entry_path, h5_path)

    # First-touch verification cost (warm page cache): the CRC32 of every chunk, once.
    fresh = Entry(entry_path)
    assert fresh.zero_copy, "the benchmark entry should be memory-mappable"
    t0 = time.perf_counter()
    bad = fresh.verify_all()
    verify_s = time.perf_counter() - t0
    if bad:
        raise SystemExit(f"entry failed verification: {bad[:2]}")
    n_units = fresh.meta.n_chunks
    entry_bytes = arr.nbytes

    rng = np.random.default_rng(args.seed)
    batches = np.stack(
        [rng.choice(args.rows, size=args.batch, replace=False) for _ in range(args.iters)]
    )

    entry_v = Entry(entry_path, verify=True)
    entry_v.gather(np.arange(args.rows))  # touches (and verifies) every unit before timing
    entry_nv = Entry(entry_path, verify=False)
    entry_nv.gather(np.arange(args.rows))  # opens every map before timing
    h5 = h5py.File(h5_path, "r")
    ds = h5[H5_DATASET]
    zarr_arr = zarr.open_array(str(entry_path / "features"), mode="r")
    arr_4k = copy_without_huge_pages(arr)

    readers: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "featstore": entry_v.gather,
        "featstore-noverify": entry_nv.gather,
        "numpy": lambda rows: arr[rows],
        "numpy-4k": lambda rows: arr_4k[rows],
        "h5py": lambda rows: ds[np.sort(rows)],
        "mmap-views": mmap_views(entry_nv),
        "numpy-loop": row_loop(arr),
        "zarr": lambda rows: zarr_arr.get_orthogonal_selection((np.sort(rows),)),
    }
    labels = {
        "featstore": "(a) featstore `Entry.gather` (mmap of raw Zarr v3 chunks, verify=True)",
        "featstore-noverify": "(a') featstore `Entry.gather`, verify=False",
        "numpy": "(b) numpy array in RAM, `arr[rows]`",
        "numpy-4k": "(b') the same array in RAM in 4 KiB pages",
        "h5py": "(c) h5py contiguous dataset, sorted fancy index",
        "zarr": f"(d) zarr-python `get_orthogonal_selection` ({args.zarr_iters} batches)",
        "mmap-views": "(ref) plain ndarray views of np.memmap over the same chunk files",
        "numpy-loop": "(ref) the same row-by-row copy loop over the numpy array in RAM",
    }
    check_same(readers, arr, batches[0])
    load_start = os.getloadavg()

    # Short interleaved rounds, reader order rotated each round: drift in machine speed (shared
    # VM) hits every reader alike, and ratios are taken within a round (paired).
    n_rounds = max(1, min(args.rounds, args.iters))
    bounds = np.linspace(0, args.iters, n_rounds + 1).astype(int)
    timed = [name for name in readers if name != "zarr"]
    rounds: dict[str, list[float]] = {name: [] for name in readers}
    for r in range(n_rounds):
        part = batches[bounds[r] : bounds[r + 1]]
        for name in timed[r % len(timed) :] + timed[: r % len(timed)]:
            rounds[name].append(len(part) * args.batch / time_reader(readers[name], part))
    zarr_part = batches[: args.zarr_iters]
    rounds["zarr"].append(len(zarr_part) * args.batch / time_reader(readers["zarr"], zarr_part))
    h5.close()
    huge_share = huge_page_share(entry_path)  # the maps the warm reads opened

    load_end = os.getloadavg()
    rates = {name: statistics.median(r) for name, r in rounds.items()}

    def paired(name: str, base: str) -> float:
        return statistics.median(a / b for a, b in zip(rounds[name], rounds[base], strict=True))

    ratios = {name: paired(name, "numpy") for name in timed}
    ratios["zarr"] = rates["zarr"] / rates["numpy"]
    vs_numpy = ratios["featstore"]
    vs_h5py = paired("featstore", "h5py")
    numpy_vs_h5py = paired("numpy", "h5py")

    print()
    print(
        f"N={args.rows} rows of {ROW_SHAPE} {DTYPE} ({row_mib:.2f} MiB/row), batch {args.batch}, "
        f"{args.iters} batches per reader in {n_rounds} interleaved rounds, chunk_rows "
        f"{args.chunk_rows}, warm page cache (filled via {args.warm_via}), {os.cpu_count()} "
        f"CPUs, load average "
        f"{load_start[0]:.2f} -> {load_end[0]:.2f}"
    )
    print()
    print("| reader | samples/s (median round) | GiB/s | vs numpy (paired median) |")
    print("|---|---:|---:|---:|")
    for name in ["featstore", "featstore-noverify", "numpy", "numpy-4k", "h5py", "zarr",
                 "mmap-views", "numpy-loop"]:  # fmt: skip
        rate = rates[name]
        print(
            f"| {labels[name]} | {rate:,.0f} | {rate * row_mib / 1024:.2f} | {ratios[name]:.3f} |"
        )
    print()
    print("| one-time cost | value |")
    print("|---|---:|")
    print(
        f"| `verify_all` (full check: CRC32C of every block, by file reads; warm cache), "
        f"{n_units} chunks | "
        f"{verify_s:.2f} s ({entry_bytes / verify_s / 2**30:.2f} GiB/s, "
        f"{1000 * verify_s / n_units:.1f} ms per {args.chunk_rows}-row chunk) |"
    )
    print(f"| page-cache warm-up of entry + HDF5 (via {args.warm_via}) | {warm_s:.1f} s |")
    print()
    ok_np, ok_h5 = vs_numpy >= GOAL_VS_NUMPY, vs_h5py >= GOAL_VS_H5PY
    print(
        f"summary: featstore {rates['featstore']:,.0f} samples/s = {vs_numpy:.2f}x numpy "
        f"(goal >= {GOAL_VS_NUMPY}: {'met' if ok_np else 'MISSED'}), {vs_h5py:.2f}x h5py "
        f"(goal >= {GOAL_VS_H5PY}: {'met' if ok_h5 else 'MISSED'}; numpy itself is "
        f"{numpy_vs_h5py:.2f}x h5py here); {paired('featstore', 'numpy-4k'):.2f}x numpy without "
        f"huge pages, {paired('featstore', 'mmap-views'):.2f}x plain memmap views; the memmap "
        f"copy loop is {paired('mmap-views', 'numpy-loop'):.2f}x the same loop over RAM"
    )
    if huge_share is not None:
        print(f"the entry's memory maps: {huge_share:.0%} of resident bytes in 2 MiB pages")

    result = {
        "benchmark": "read_targets",
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "row_shape": list(ROW_SHAPE),
        "dtype": DTYPE,
        "samples_per_s": rates,
        "samples_per_s_rounds": rounds,
        "ratios_vs_numpy_paired": ratios,
        "ratio_featstore_vs_numpy": vs_numpy,
        "ratio_featstore_vs_h5py": vs_h5py,
        "ratio_numpy_vs_h5py": numpy_vs_h5py,
        "goals": {"vs_numpy": GOAL_VS_NUMPY, "vs_h5py": GOAL_VS_H5PY},
        "goals_met": {"vs_numpy": ok_np, "vs_h5py": ok_h5},
        "entry_maps_huge_page_share": huge_share,
        "first_touch_verify_s": verify_s,
        "first_touch_verify_gib_per_s": entry_bytes / verify_s / 2**30,
        "n_chunks": n_units,
        "warm_page_cache_s": warm_s,
        "loadavg": {"start": load_start, "end": load_end},
        "build_s": build_s,
        "env": env_info(h5py=h5py.__version__, zarr=zarr.__version__),
    }
    return finish(result, args.workdir, "read_targets", data_dir, args.clean)


# -- cold page cache ----------------------------------------------------------------------------
def data_files(entry_path: Path, h5_path: Path) -> list[Path]:
    chunks = (entry_path / "features" / "c").rglob("*")
    return [*sorted(p for p in chunks if p.is_file()), h5_path]


def drop_page_cache(files: list[Path], maps: list[mmap.mmap]) -> None:
    """Evict ``files`` from the page cache. Pages still mapped by this process are not
    evicted by ``POSIX_FADV_DONTNEED``, so our own maps drop their pages first."""
    for mm in maps:
        mm.madvise(mmap.MADV_DONTNEED)
    for path in files:
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def resident_fraction(files: list[Path]) -> float:
    """Share of ``files``' pages in the page cache (``mincore`` over a fresh map)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    total = resident = 0
    for path in files:
        size = path.stat().st_size
        if not size:
            continue
        with open(path, "rb") as fh:
            mm = mmap.mmap(fh.fileno(), size, access=mmap.ACCESS_READ)
        pages = -(-size // mmap.PAGESIZE)
        vec = np.zeros(pages, np.uint8)
        view = np.frombuffer(mm, np.uint8)
        libc.mincore(ctypes.c_void_p(view.ctypes.data), size, ctypes.c_void_p(vec.ctypes.data))
        del view
        mm.close()
        total += pages
        resident += int((vec & 1).sum())
    return resident / max(total, 1)


class ChunkPread:
    """(ref) ``os.pread`` of each row from the entry's chunk files into the output."""

    def __init__(self, entry: Entry, flags: int = os.O_RDONLY):
        raw = entry._rows
        self.cr, self.row_bytes, self.shape, self.dtype = (raw.chunk_rows, raw.row_bytes,
                                                           raw.shape, raw.dtype)  # fmt: skip
        self.fds = [os.open(raw.chunk_path(c), flags)
                    for c in range(-(-raw.shape[0] // raw.chunk_rows))]  # fmt: skip

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        flat = out.reshape(len(rows), -1).view(np.uint8)
        for j, i in enumerate(rows.tolist()):
            os.preadv(self.fds[i // self.cr], [flat[j]], (i % self.cr) * self.row_bytes)
        return out


class DirectPread(ChunkPread):
    """(ref) The device's ceiling for these bytes: ``O_DIRECT`` reads of exactly each row, all
    in flight at once (one thread per row; ``preadv`` releases the GIL), into a page-aligned
    buffer, bypassing the page cache (no copy, no read-ahead). Row offsets are multiples of
    4 KiB here."""

    def __init__(self, entry: Entry):
        super().__init__(entry, os.O_RDONLY | getattr(os, "O_DIRECT", 0))
        self.buf = mmap.mmap(-1, 64 * self.row_bytes)  # page-aligned
        self.pool = ThreadPoolExecutor(64)

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        flat = np.frombuffer(self.buf, np.uint8, len(rows) * self.row_bytes)
        flat = flat.reshape(len(rows), -1)

        def read(j: int, i: int) -> int:
            return os.preadv(self.fds[i // self.cr], [flat[j]], (i % self.cr) * self.row_bytes)

        list(self.pool.map(read, range(len(rows)), rows.tolist()))
        return flat.view(self.dtype).reshape(len(rows), *self.shape[1:]).copy()


class HintedMaps:
    """(ref) The quick test from the issue: memmaps, ``MADV_WILLNEED`` on the batch's row
    ranges, then copy. No featstore code."""

    def __init__(self, entry: Entry):
        raw = entry._rows
        self.cr, self.rb, self.shape, self.dtype = (raw.chunk_rows, raw.row_bytes, raw.shape,
                                                    raw.dtype)  # fmt: skip
        self.maps = []
        for c in range(-(-raw.shape[0] // raw.chunk_rows)):
            with open(raw.chunk_path(c), "rb") as fh:
                self.maps.append(mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ))
        self.views = [np.frombuffer(m, raw.dtype).reshape(raw.chunk_shape) for m in self.maps]

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        page = mmap.PAGESIZE
        for i in rows.tolist():
            lo = (i % self.cr) * self.rb
            self.maps[i // self.cr].madvise(mmap.MADV_WILLNEED, lo - lo % page,
                                            self.rb + lo % page)  # fmt: skip
        out = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        for j, i in enumerate(rows.tolist()):
            out[j] = self.views[i // self.cr][i % self.cr]
        return out


def entry_maps(entry: Entry) -> list:
    """Everything the entry's reader has mapped (each has ``madvise``)."""
    raw = entry._rows
    whole = [raw._region] if raw._region is not None else []
    return [*(mm for _, mm in raw._maps.values()), *whole]


def cold_loader_run(entry_path: Path, h5_path: Path, files: list[Path], args) -> dict:
    """One epoch (every row once, random order) through a DataLoader with ``workers`` worker
    processes from a dropped page cache, for featstore and for h5py."""
    import torch

    class H5Rows(torch.utils.data.Dataset):
        def __init__(self, path):
            self.path, self.file = path, None

        def __len__(self):
            return args.rows

        def __getitems__(self, indices):
            if self.file is None:
                self.file = h5py.File(self.path, "r")
            rows = np.sort(np.asarray(indices))
            return list(torch.from_numpy(self.file[H5_DATASET][rows]).unbind(0))

    class NoRead(H5Rows):
        """The loader's own ceiling: rows of the right size that are never read."""

        def __getitems__(self, indices):
            return list(torch.empty((len(indices), *ROW_SHAPE), dtype=torch.float16).unbind(0))

    out = {}
    datasets = {
        "featstore": lambda: Entry(entry_path).dataset(),
        "h5py": lambda: H5Rows(h5_path),
        "no reads (the DataLoader's own ceiling)": lambda: NoRead(None),
    }
    for name, make in datasets.items():
        rates = []
        for epoch in range(2):
            drop_page_cache(files, [])
            touch_memory(args.touch_gib)
            loader = torch.utils.data.DataLoader(
                make(), batch_size=args.batch, shuffle=True, num_workers=args.loader_workers,
                generator=torch.Generator().manual_seed(epoch), collate_fn=torch.stack,
            )  # fmt: skip
            t0 = time.perf_counter()
            n = sum(len(b) for b in loader)
            rates.append(n / (time.perf_counter() - t0))
        out[name] = max(rates)
    return out


def touch_memory(gib: float) -> None:
    """Touch ``gib`` GiB of fresh anonymous memory and free it. On this VM (virtio-balloon with
    free page reporting) memory left free for a few seconds goes back to the host, and its next
    first touch costs ~3 s/GiB (``np.ones(2**27)`` 1 GiB: 3.3 s the first time, 0.13 s after).
    A cold epoch allocates page-cache memory; without this, whichever reader asks for 2 MiB
    folios pays the host's price, which a machine with real memory does not charge."""
    if gib > 0:
        block = np.ones(int(gib * 2**30) // 8)
        del block


def cold_epochs_run(entry_path: Path, h5_path: Path, files: list[Path], args) -> dict:
    """Whole epochs (every row once, random batches) from a dropped page cache, with nothing
    dropped during the epoch: a store that fits in memory, read for the first time. Readers
    interleaved epoch by epoch; each featstore epoch is a fresh ``Entry`` (nothing verified)."""
    h5 = h5py.File(h5_path, "r")
    ds = h5[H5_DATASET]
    pread = ChunkPread(Entry(entry_path, verify=False))
    readers: dict[str, Callable[[], Callable[[np.ndarray], Any]]] = {
        "featstore": lambda: Entry(entry_path).gather,
        "featstore-rows": lambda: Entry(entry_path, prefetch="rows").gather,
        "h5py": lambda: lambda rows: ds[np.sort(rows)],
        "pread": lambda: pread,
    }
    rng = np.random.default_rng(args.seed + 1)
    names = list(readers)
    rounds: dict[str, list[float]] = {name: [] for name in names}
    huge, ways = [], set()
    for r in range(args.cold_epochs):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            drop_page_cache(files, [])
            touch_memory(args.touch_gib)
            read = readers[name]()
            owner = getattr(read, "__self__", None)
            order = rng.permutation(args.rows)
            t0 = time.perf_counter()
            for start in range(0, args.rows, args.batch):
                read(order[start : start + args.batch])
            rounds[name].append(args.rows / (time.perf_counter() - t0))
            if isinstance(owner, Entry):
                if name == "featstore":
                    ways.add(owner._rows.way)
                    huge.append(huge_page_share(entry_path))
                for mm in entry_maps(owner):  # let the next drop evict these pages
                    mm.madvise(mmap.MADV_DONTNEED)
            del read, owner
    h5.close()
    return {"rounds": rounds, "huge_share": huge, "ways": sorted(ways)}


def cold_main(args, data_dir, entry_path, h5_path, arr, build_s) -> dict:
    files = data_files(entry_path, h5_path)
    if args.touch_gib is None:
        args.touch_gib = 2 * arr.nbytes / 2**30
    rng = np.random.default_rng(args.seed)
    n_epoch = args.rows // args.batch
    batches = np.concatenate(
        [rng.permutation(args.rows)[: n_epoch * args.batch].reshape(n_epoch, args.batch)
         for _ in range(-(-args.cold_iters // n_epoch))]
    )[: args.cold_iters]  # fmt: skip
    epochs = {"entry": None}

    def featstore_verified(rows: np.ndarray) -> np.ndarray:
        return epochs["entry"].gather(rows)

    plain = Entry(entry_path, verify=False, prefetch="never")
    hinted = Entry(entry_path, verify=False, prefetch="rows")
    pages = Entry(entry_path, verify=False, prefetch="pages")
    readers = {
        "featstore": featstore_verified,
        "featstore-noverify": hinted.gather,
        "featstore-pages": pages.gather,
        "featstore-nohints": plain.gather,
        "h5py": None,
        "pread": ChunkPread(hinted),
        "hinted-maps": HintedMaps(hinted),
        "direct": DirectPread(hinted),
    }
    h5 = h5py.File(h5_path, "r")
    ds = h5[H5_DATASET]
    readers["h5py"] = lambda rows: ds[np.sort(rows)]
    labels = {
        "featstore": "(a) featstore `Entry.gather`, prefetch='rows', verify=True (each row "
        "checked as read)",
        "featstore-noverify": "(a') featstore, prefetch='rows', verify=False",
        "featstore-pages": "(a'') featstore, prefetch='pages' (2 MiB per fault), verify=False",
        "featstore-nohints": "(a''') featstore, prefetch='never' (plain memmap), verify=False",
        "h5py": "(c) h5py contiguous dataset, sorted fancy index",
        "pread": "(ref) `os.pread` of each row into the output",
        "hinted-maps": "(ref) memmap + `MADV_WILLNEED` on the batch's rows, then copy",
        "direct": "(ref) `O_DIRECT` reads of the batch's rows, all in flight: the device",
    }
    check_same({k: v for k, v in readers.items() if k != "featstore"}, arr, batches[0])
    load_start = os.getloadavg()
    n_rounds = max(1, min(args.rounds, len(batches)))
    bounds = np.linspace(0, len(batches), n_rounds + 1).astype(int)
    names = list(readers)
    rounds: dict[str, list[float]] = {name: [] for name in names}
    mapped = lambda: [*entry_maps(plain), *entry_maps(hinted), *entry_maps(pages),  # noqa: E731
                      *readers["hinted-maps"].maps,
                      *(entry_maps(epochs["entry"]) if epochs["entry"] else [])]  # fmt: skip
    checked_cold = []
    for r in range(n_rounds):
        part = batches[bounds[r] : bounds[r + 1]]
        for name in names[r % len(names) :] + names[: r % len(names)]:
            if name == "featstore":  # a fresh process-view: nothing verified
                epochs["entry"] = Entry(entry_path, prefetch="rows")
            seconds = 0.0
            for rows in part:
                drop_page_cache(files, mapped())
                if r == 0 and not checked_cold:
                    checked_cold.append(resident_fraction(files))
                t0 = time.perf_counter()
                readers[name](rows)
                seconds += time.perf_counter() - t0
            rounds[name].append(len(part) * args.batch / seconds)
    h5.close()
    for mm in mapped():
        mm.madvise(mmap.MADV_DONTNEED)
    load_mid = os.getloadavg()
    rates = {name: statistics.median(v) for name, v in rounds.items()}

    def paired(table: dict[str, list[float]], name: str, base: str) -> float:
        return statistics.median(a / b for a, b in zip(table[name], table[base], strict=True))

    vs_h5 = paired(rounds, "featstore", "h5py")
    vs_pread = paired(rounds, "featstore", "pread")
    ep = cold_epochs_run(entry_path, h5_path, files, args)
    ep_rates = {name: statistics.median(v) for name, v in ep["rounds"].items()}
    ep_vs_h5 = paired(ep["rounds"], "featstore", "h5py")
    ep_vs_pread = paired(ep["rounds"], "featstore", "pread")
    load_end = os.getloadavg()
    loader = cold_loader_run(entry_path, h5_path, files, args)
    row_mib = int(np.prod(ROW_SHAPE)) * np.dtype(DTYPE).itemsize / 2**20
    print()
    print(f"COLD, every batch from disk: N={args.rows} rows of {ROW_SHAPE} {DTYPE}, batch "
          f"{args.batch}, {len(batches)} batches per reader in {n_rounds} interleaved rounds, "
          f"page cache dropped before every batch (resident after a drop: "
          f"{100 * checked_cold[0]:.1f}%), load average {load_start[0]:.2f} -> "
          f"{load_mid[0]:.2f}")  # fmt: skip
    print()
    print("| reader | cold samples/s (median round) | MiB/s | vs h5py | vs pread |")
    print("|---|---:|---:|---:|---:|")
    for name in names:
        vs = f"{paired(rounds, name, 'h5py'):.2f} | {paired(rounds, name, 'pread'):.2f}"
        print(f"| {labels[name]} | {rates[name]:,.0f} | {rates[name] * row_mib:,.0f} | {vs} |")
    print()
    ways = ", ".join(ep["ways"])
    ep_labels = {
        "featstore": f"(a) featstore `Entry.gather`, prefetch='auto' (took: {ways}), verify=True",
        "featstore-rows": "(a') featstore, prefetch='rows', verify=True",
        "h5py": "(c) h5py contiguous dataset, sorted fancy index",
        "pread": "(ref) `os.pread` of each row into the output",
    }
    shares = [x for x in ep["huge_share"] if x is not None]
    share = f"{100 * min(shares):.0f}%" if shares else "?"
    print(f"COLD EPOCHS, a store that fits in memory: {args.cold_epochs} epochs per reader, "
          f"interleaved, page cache dropped and {args.touch_gib:.1f} GiB of memory touched "
          f"before each; after featstore's epoch {share} of "
          f"the entry's maps are in 2 MiB pages; load average {load_mid[0]:.2f} -> "
          f"{load_end[0]:.2f}")  # fmt: skip
    print()
    print("| reader | samples/s (median epoch) | vs h5py | vs pread |")
    print("|---|---:|---:|---:|")
    for name, label in ep_labels.items():
        print(f"| {label} | {ep_rates[name]:,.0f} | {paired(ep['rounds'], name, 'h5py'):.2f} | "
              f"{paired(ep['rounds'], name, 'pread'):.2f} |")  # fmt: skip
    print()
    print(f"| DataLoader, {args.loader_workers} workers, one cold epoch | samples/s |")
    print("|---|---:|")
    for name, rate in loader.items():
        print(f"| {name} | {rate:,.0f} |")
    ok_h5, ok_pread = vs_h5 >= GOAL_COLD_VS_H5PY, vs_pread >= GOAL_COLD_VS_PREAD
    ep_ok_h5, ep_ok_pread = ep_vs_h5 >= GOAL_COLD_VS_H5PY, ep_vs_pread >= GOAL_COLD_VS_PREAD
    ceiling = paired(rounds, "direct", "h5py")
    print()
    print(f"summary: every batch from disk: featstore (verify=True) {rates['featstore']:,.0f} "
          f"samples/s = {vs_h5:.2f}x h5py (goal >= {GOAL_COLD_VS_H5PY}: "
          f"{'met' if ok_h5 else 'MISSED'}; the device's ceiling is {ceiling:.2f}x), "
          f"{vs_pread:.2f}x pread (goal >= {GOAL_COLD_VS_PREAD}: "
          f"{'met' if ok_pread else 'MISSED'}). Cold epoch: {ep_rates['featstore']:,.0f} "
          f"samples/s = {ep_vs_h5:.2f}x h5py ({'met' if ep_ok_h5 else 'MISSED'}), "
          f"{ep_vs_pread:.2f}x pread ({'met' if ep_ok_pread else 'MISSED'})")  # fmt: skip
    result = {
        "benchmark": "read_targets_cold",
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "samples_per_s": rates,
        "samples_per_s_rounds": rounds,
        "ratio_featstore_vs_h5py": vs_h5,
        "ratio_featstore_vs_pread": vs_pread,
        "ratio_device_ceiling_vs_h5py": ceiling,
        "resident_after_drop": checked_cold[0],
        "epochs_samples_per_s": ep_rates,
        "epochs_rounds": ep["rounds"],
        "epochs_ratio_featstore_vs_h5py": ep_vs_h5,
        "epochs_ratio_featstore_vs_pread": ep_vs_pread,
        "epochs_huge_page_share": ep["huge_share"],
        "loader_samples_per_s": loader,
        "goals_met": {
            "vs_h5py": ok_h5,
            "vs_pread": ok_pread,
            "epoch_vs_h5py": ep_ok_h5,
            "epoch_vs_pread": ep_ok_pread,
        },  # fmt: skip
        "loadavg": {"start": load_start, "mid": load_mid, "end": load_end},
        "build_s": build_s,
        "env": env_info(h5py=h5py.__version__, zarr=zarr.__version__),
    }
    return finish(result, args.workdir, "read_targets_cold", data_dir, args.clean)


# -- a store larger than the page cache -----------------------------------------------------
def fp16_rows(seed: int, unit: int, rows: int) -> np.ndarray:
    """Finite random fp16 rows, fast (drawn as bit patterns: the big store is tens of GiB)."""
    rng = np.random.default_rng([seed, unit])
    bits = rng.integers(0x3000, 0x3C00, size=(rows, *ROW_SHAPE), dtype=np.uint16)
    return bits.view(np.float16)


def big_main(args) -> dict:
    """Random batches over a store larger than the page cache, nothing dropped by hand: the
    kernel's own cache decides what is resident, as in a real run over 62 GB of NSD tokens."""
    data_dir = args.workdir / "read_targets_big"
    entry_path = data_dir / "store" / ENTRY_NAME
    manifest = read_manifest(entry_path)
    t0 = time.perf_counter()
    if not (manifest and manifest.get("complete") and manifest.get("n_rows") == args.big):
        shutil.rmtree(data_dir, ignore_errors=True)
        (data_dir / "store").mkdir(parents=True)
        print(f"building {args.big} rows ({args.big * 0.8125 / 1024:.1f} GiB) ...", flush=True)
        writer = EntryWriter.create(entry_path, {"key": ENTRY_NAME}, np.arange(args.big),
                                    row_shape=ROW_SHAPE, dtype=DTYPE, ragged=False,
                                    chunk_rows=args.chunk_rows)  # fmt: skip
        for unit in range(writer.n_chunks):
            start, stop = writer.unit_rows(unit)
            writer.commit(unit, fp16_rows(args.seed, unit, stop - start))
        writer.finalize({"bench": "read_targets --big"})
    build_s = time.perf_counter() - t0
    files = data_files(entry_path, Path("/nonexistent"))[:-1]
    size = sum(f.stat().st_size for f in files)
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    print(f"store {size / 2**30:.1f} GiB, RAM {mem / 2**30:.1f} GiB (built in {build_s:.0f} s)")
    rng = np.random.default_rng(args.seed)
    verified = Entry(entry_path)  # checks each row on its first read, as a fresh run does
    plain = Entry(entry_path, verify=False, prefetch="never")
    readers = {"featstore": verified.gather, "featstore-nohints": plain.gather,
               "pread": ChunkPread(plain)}  # fmt: skip
    load = [os.getloadavg()[0]]
    rounds: dict[str, list[float]] = {k: [] for k in readers}
    names = list(readers)
    for r in range(max(1, args.rounds // 10)):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            n = 0
            t_end = time.perf_counter() + args.big_seconds
            t_start = time.perf_counter()
            while time.perf_counter() < t_end:
                readers[name](rng.integers(0, args.big, args.batch))
                n += args.batch
            rounds[name].append(n / (time.perf_counter() - t_start))
            load.append(os.getloadavg()[0])
    resident = resident_fraction(files[:: max(1, len(files) // 64)])
    rates = {k: statistics.median(v) for k, v in rounds.items()}
    print()
    print(f"BIG: {args.big} rows, batch {args.batch}, {len(rounds['pread'])} rounds of "
          f"{args.big_seconds:.0f} s per reader, ~{100 * resident:.0f}% of the store resident at "
          f"the end, load average {min(load):.2f}-{max(load):.2f}")  # fmt: skip
    print()
    print("| reader | samples/s (median round) | vs pread |")
    print("|---|---:|---:|")
    for name in names:
        ratio = statistics.median(a / b for a, b in zip(rounds[name], rounds["pread"], strict=True))
        print(f"| {name} | {rates[name]:,.0f} | {ratio:.2f} |")
    result = {"benchmark": "read_targets_big", "rows": args.big, "store_gib": size / 2**30,
              "ram_gib": mem / 2**30, "resident_end": resident, "samples_per_s": rates,
              "rounds": rounds, "loadavg": load, "build_s": build_s,
              "env": env_info(h5py=h5py.__version__, zarr=zarr.__version__)}  # fmt: skip
    return finish(result, args.workdir, "read_targets_big", data_dir, args.clean)


if __name__ == "__main__":
    main(sys.argv[1:])
