"""Ragged read benchmark: random batches of ``[T_i, 1280]`` items, featstore reader vs RAM.

What is measured
    Items/s for random batches of ``--batches`` items (default 8 and 16) drawn without
    replacement from a ragged featstore entry of ``--items`` items (default 5000) of shape
    ``[T_i, 1280]`` fp16, with ``T_i`` uniform in ``[--t-min, --t-max]`` (40-200 frames: 1.6-8 s
    of sentence audio at 25 Hz, like qwen-audio's ``frames``). The entry is built with
    ``EntryWriter.create(..., ragged=True)`` / ``commit`` / ``finalize`` (``--unit-items`` items
    per commit unit, the extractor's default 64), exactly the layout ``featstore extract`` writes:
    one ``values [sum T, 1280]`` array (~32 MiB chunks) plus ``offsets``.

    The same items are also held in RAM as a Python list of numpy arrays (one per item). Readers:
      list of arrays
        (a)   featstore ``Entry.gather(rows)`` (verify=True; every unit is checked once before
              timing), a list of ``[T_i, 1280]`` arrays (copies)
        (a')  the same with ``verify=False``
        (b)   RAM list indexing ``[items[i] for i in rows]`` (no copy: the in-RAM limit)
        (b')  RAM list indexing with a copy per item (the same copies (a) makes)
        (ref) plain slices of ``np.memmap`` views over the same ``values`` chunk files, copied,
              no featstore code (the floor under (a))
      padded batch
        (c)   featstore ``Entry.gather_padded(rows)`` -> ``(padded [B, T_max, 1280], lengths)``
        (d)   RAM: pad into a preallocated ``[B, t_max, 1280]`` buffer (copy each item, zero its
              tail), lengths from a precomputed array
        (ref-pad) plain memmap slices copied once, straight into a new ``np.empty`` batch with
              zeroed tails (what a one-copy ``gather_padded`` would cost)

    All readers of a batch size see the same batches. The page cache is warmed first (every
    entry file is read once). The ``--iters`` batches are split into ``--rounds`` short rounds;
    in each round every reader reads the same slice, in an order that rotates from round to
    round, so drift in machine speed (a shared VM) hits all readers alike. Reported: each
    reader's median round and ratios as medians of per-round (paired) ratios. The one-time
    first-touch cost (CRC32C of every item, ``Entry.verify_all``) is timed separately on a
    warm page cache.

How to run
    python bench/read_ragged.py                     # N=5000 items (~1.4 GiB per copy), ~1 min
    python bench/read_ragged.py --items 1000 --iters 400 --workdir /tmp/fsbench

    Data (~1.4 GiB on disk for the defaults, plus the same in RAM while it runs) goes to
    ``--workdir`` (default ``bench/out/``, git-ignored) and is reused by later runs with the same
    parameters; ``--clean`` removes it at the end. Results are printed as markdown tables and
    written to ``<workdir>/read_ragged.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from _common import env_info, finish, warm_page_cache

import featstore  # noqa: F401  (applies featstore's import fix-ups first)
from featstore.format import chunk_file
from featstore.reader import Entry
from featstore.store import read_manifest
from featstore.writer import EntryWriter

DTYPE = "float16"
ENTRY_NAME = "bench-read-ragged"
GOAL = 0.9  # the fixed-shape reader's goal vs numpy in RAM (docs/benchmarks.md)

LIST_READERS = ("fs-gather", "fs-gather-noverify", "ram-list", "ram-list-copy", "mmap-ref")
PADDED_READERS = ("fs-padded", "ram-padded", "mmap-padded-ref")
LABELS = {
    "fs-gather": "(a) featstore `Entry.gather` (verify=True)",
    "fs-gather-noverify": "(a') featstore `Entry.gather`, verify=False",
    "ram-list": "(b) RAM list, `[items[i] for i in rows]` (no copy)",
    "ram-list-copy": "(b') RAM list, one copy per item",
    "mmap-ref": "(ref) plain np.memmap slices of the same chunk files, copied",
    "fs-padded": "(c) featstore `Entry.gather_padded`",
    "ram-padded": "(d) RAM list, padded into a preallocated buffer",
    "mmap-padded-ref": "(ref-pad) np.memmap slices copied once into a new padded array",
}
COPY_COL = "vs (b') RAM list + copy"
# (reader, baseline) pairs whose paired ratio is reported
COMPARE = {
    "vs (b) RAM list": [(r, "ram-list") for r in LIST_READERS],
    "vs (b') RAM list + copy": [(r, "ram-list-copy") for r in LIST_READERS],
    "vs (d) RAM padded": [(r, "ram-padded") for r in PADDED_READERS],
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Ragged random-batch read throughput: featstore reader vs a list in RAM.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--items", type=int, default=5000, help="items N of the ragged entry")
    p.add_argument("--width", type=int, default=1280, help="frame width")
    p.add_argument("--t-min", type=int, default=40, help="fewest frames per item")
    p.add_argument("--t-max", type=int, default=200, help="most frames per item")
    p.add_argument("--batches", default="8,16", help="comma-separated batch sizes")
    p.add_argument("--iters", type=int, default=2000, help="timed batches per reader and size")
    p.add_argument("--rounds", type=int, default=40, help="interleaved rounds the iters split into")
    p.add_argument("--unit-items", type=int, default=64, help="items per commit unit")
    p.add_argument("--workdir", type=Path, default=Path(__file__).parent / "out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clean", action="store_true", help="delete the generated data at the end")
    return p.parse_args(argv)


# -- data ---------------------------------------------------------------------------------------
def unit_items(args: argparse.Namespace, unit: int, lengths: np.ndarray) -> list[np.ndarray]:
    """Deterministic random items of one commit unit (independent of the other units)."""
    rng = np.random.default_rng([args.seed, unit])
    block = rng.standard_normal((int(lengths.sum()), args.width), dtype=np.float32).astype(DTYPE)
    return np.split(block, np.cumsum(lengths)[:-1])


def build_data(args: argparse.Namespace, data_dir: Path) -> tuple[Path, list[np.ndarray], float]:
    """The ragged entry and the same items as a list in RAM; the entry is reused when the
    parameters match."""
    entry_path = data_dir / "store" / ENTRY_NAME
    params = {"items": args.items, "width": args.width, "t_min": args.t_min, "t_max": args.t_max,
              "unit_items": args.unit_items, "seed": args.seed, "dtype": DTYPE}  # fmt: skip
    params_file = data_dir / "params.json"
    manifest = read_manifest(entry_path)
    reuse = (
        params_file.is_file()
        and json.loads(params_file.read_text()) == params
        and manifest is not None
        and manifest.get("complete")
    )
    lengths = np.random.default_rng(args.seed).integers(args.t_min, args.t_max + 1, args.items)
    n, cu = args.items, args.unit_items
    n_units = (n + cu - 1) // cu
    t0 = time.perf_counter()
    items: list[np.ndarray] = []
    if reuse:
        print(f"reusing the entry in {data_dir}; regenerating the RAM copy", flush=True)
        for unit in range(n_units):
            items += unit_items(args, unit, lengths[unit * cu : (unit + 1) * cu])
        return entry_path, items, time.perf_counter() - t0

    total = int(lengths.sum()) * args.width * np.dtype(DTYPE).itemsize
    print(f"building {n} ragged items [T, {args.width}] {DTYPE}, T in [{args.t_min}, "
          f"{args.t_max}] ({total / 2**30:.2f} GiB) in {data_dir} ...", flush=True)  # fmt: skip
    shutil.rmtree(data_dir, ignore_errors=True)
    (data_dir / "store").mkdir(parents=True)
    writer = EntryWriter.create(
        entry_path,
        {"key": ENTRY_NAME, "teacher": "synthetic", "output": "frames"},
        np.arange(n, dtype=np.int64),
        row_shape=(args.width,),
        dtype=DTYPE,
        ragged=True,
        chunk_rows=cu,
    )
    for unit in range(writer.n_chunks):
        start, stop = writer.unit_rows(unit)
        data = unit_items(args, unit, lengths[start:stop])
        writer.commit(unit, data)
        items += data
    writer.finalize({"bench": "read_ragged"})
    params_file.write_text(json.dumps(params))
    return entry_path, items, time.perf_counter() - t0


# -- readers ------------------------------------------------------------------------------------
def ram_padded(items: list[np.ndarray], lengths: np.ndarray, max_batch: int, t_max: int):
    """Pad into a preallocated buffer (reused: the returned array is valid until the next call)."""
    width = items[0].shape[1]
    buf = np.zeros((max_batch, t_max, width), dtype=items[0].dtype)

    def read(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lens = lengths[rows]
        t = int(lens.max())
        out = buf[: len(rows), :t]
        for j, (i, n) in enumerate(zip(rows.tolist(), lens.tolist(), strict=True)):
            out[j, :n] = items[i]
            out[j, n:] = 0
        return out, lens

    return read


def mmap_slicer(entry: Entry) -> Callable[[int], np.ndarray]:
    """Item r as plain ndarray views of ``np.memmap``s over the entry's ``values`` chunk files
    (a view, or a copy for the few items that straddle two chunks), offsets as a Python list;
    no featstore code on the read path."""
    raw = entry._rows  # RawRows of the entry's values; only its geometry and files are used
    vc = raw.chunk_rows
    n_chunks = (raw.shape[0] + vc - 1) // vc
    views = [
        np.memmap(
            chunk_file(raw.dir, c, len(raw.shape)), dtype=raw.dtype, mode="r", shape=raw.chunk_shape
        ).view(np.ndarray)
        for c in range(n_chunks)
    ]
    off = entry.offsets.tolist()

    def item(r: int) -> np.ndarray:
        s, e = off[r], off[r + 1]
        c = s // vc
        if e - 1 < (c + 1) * vc:
            return views[c][s - c * vc : e - c * vc]
        return np.concatenate([views[c][s - c * vc :], views[c + 1][: e - (c + 1) * vc]])

    return item


def mmap_ref(entry: Entry) -> Callable[[np.ndarray], list[np.ndarray]]:
    """Reference for ``gather``: one copy per item from plain memmap slices."""
    item = mmap_slicer(entry)
    return lambda rows: [np.array(item(r)) for r in rows.tolist()]


def mmap_padded_ref(entry: Entry) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Reference for ``gather_padded``: each item copied once, from plain memmap slices straight
    into a new ``np.empty`` batch whose tails are zeroed (what a one-copy reader would do)."""
    item = mmap_slicer(entry)
    all_lengths = np.diff(entry.offsets)
    frame = tuple(entry.row_shape)

    def read(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lens = all_lengths[rows]
        out = np.empty((len(rows), int(lens.max()), *frame), dtype=entry.dtype)
        for j, (r, n) in enumerate(zip(rows.tolist(), lens.tolist(), strict=True)):
            out[j, :n] = item(r)
            out[j, n:] = 0
        return out, lens

    return read


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def time_reader(read: Callable, batches: np.ndarray) -> tuple[float, int]:
    """Seconds to read every batch once (each result is checked so nothing is left lazy), and the
    minor page faults taken meanwhile (fresh output pages, or map pages not yet in the page
    table)."""
    f0 = minor_faults()
    t0 = time.perf_counter()
    for rows in batches:
        out = read(rows)
        assert len(out[1] if isinstance(out, tuple) else out) == len(rows)
    return time.perf_counter() - t0, minor_faults() - f0


def check_same(readers: dict[str, Callable], items: list[np.ndarray], rows: np.ndarray) -> None:
    for name, read in readers.items():
        out = read(rows)
        if name in PADDED_READERS:
            padded, lens = out
            want_lens = np.array([len(items[i]) for i in rows])
            ok = np.array_equal(lens, want_lens) and padded.shape[1] == want_lens.max()
            for j, i in enumerate(rows.tolist()):
                ok = ok and np.array_equal(padded[j, : lens[j]], items[i])
                ok = ok and not padded[j, lens[j] :].any()
        else:
            ok = all(np.array_equal(a, items[i]) for a, i in zip(out, rows.tolist(), strict=True))
        if not ok:
            raise SystemExit(f"reader {name} returned wrong data")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    sizes = [int(b) for b in args.batches.split(",") if b.strip()]
    if max(sizes) > args.items:
        raise SystemExit("batch sizes must not exceed --items")
    data_dir = args.workdir / "read_ragged_data"
    entry_path, items, build_s = build_data(args, data_dir)
    lengths = np.array([len(x) for x in items], dtype=np.int64)
    frame_bytes = args.width * np.dtype(DTYPE).itemsize
    total_bytes = int(lengths.sum()) * frame_bytes
    mean_item_kib = total_bytes / args.items / 1024
    print(f"data ready in {build_s:.1f} s ({total_bytes / 2**30:.2f} GiB per copy, "
          f"{mean_item_kib:.0f} KiB per item on average)")  # fmt: skip

    warm_bytes, warm_s = warm_page_cache([entry_path])
    print(f"page cache warmed: {warm_bytes / 2**30:.2f} GiB read in {warm_s:.1f} s")

    # First-touch verification cost (warm page cache): the CRC32 of every commit unit, once.
    fresh = Entry(entry_path)
    assert fresh.ragged and fresh.zero_copy, "the benchmark entry should be ragged and mappable"
    assert np.array_equal(fresh.lengths(), lengths)
    t0 = time.perf_counter()
    bad = fresh.verify_all()
    verify_s = time.perf_counter() - t0
    if bad:
        raise SystemExit(f"entry failed verification: {bad[:2]}")
    n_units = fresh.meta.n_chunks
    values_chunk = fresh._rows.chunk_rows

    entry_v = Entry(entry_path, verify=True)
    entry_v.gather(np.arange(args.items))  # touches (and verifies) every unit before timing
    entry_nv = Entry(entry_path, verify=False)
    entry_nv.gather(np.arange(args.items))  # opens every map before timing

    rng = np.random.default_rng(args.seed + 1)
    load_start = os.getloadavg()
    per_size: dict[str, dict] = {}
    for bsz in sizes:
        batches = np.stack(
            [rng.choice(args.items, size=bsz, replace=False) for _ in range(args.iters)]
        )
        readers: dict[str, Callable] = {
            "fs-gather": entry_v.gather,
            "fs-gather-noverify": entry_nv.gather,
            "ram-list": lambda rows: [items[i] for i in rows.tolist()],
            "ram-list-copy": lambda rows: [items[i].copy() for i in rows.tolist()],
            "mmap-ref": mmap_ref(entry_nv),
            "fs-padded": entry_v.gather_padded,
            "ram-padded": ram_padded(items, lengths, bsz, args.t_max),
            "mmap-padded-ref": mmap_padded_ref(entry_nv),
        }
        check_same(readers, items, batches[0])
        n_rounds = max(1, min(args.rounds, args.iters))
        bounds = np.linspace(0, args.iters, n_rounds + 1).astype(int)
        names = list(readers)
        rounds: dict[str, list[float]] = {name: [] for name in names}
        faults: dict[str, int] = dict.fromkeys(names, 0)
        for r in range(n_rounds):
            part = batches[bounds[r] : bounds[r + 1]]
            for name in names[r % len(names) :] + names[: r % len(names)]:
                seconds, nf = time_reader(readers[name], part)
                rounds[name].append(len(part) * bsz / seconds)
                faults[name] += nf
        rates = {name: statistics.median(v) for name, v in rounds.items()}

        def paired(name: str, base: str, rounds=rounds) -> float:
            return statistics.median(a / b for a, b in zip(rounds[name], rounds[base], strict=True))

        ratios = {col: {r: paired(r, base) for r, base in pairs} for col, pairs in COMPARE.items()}
        ratios["(a) vs (ref) memmap slices"] = {"fs-gather": paired("fs-gather", "mmap-ref")}
        ratios["(c) vs (a) gather"] = {"fs-padded": paired("fs-padded", "fs-gather")}
        ratios["(c) vs (ref-pad)"] = {"fs-padded": paired("fs-padded", "mmap-padded-ref")}
        per_size[str(bsz)] = {
            "items_per_s": rates,
            "gib_per_s": {k: v * mean_item_kib / 2**20 for k, v in rates.items()},
            "minor_faults_per_item": {k: v / (args.iters * bsz) for k, v in faults.items()},
            "items_per_s_rounds": rounds,
            "ratios_paired": ratios,
            "rounds": n_rounds,
        }
    load_end = os.getloadavg()

    print()
    print(
        f"N={args.items} ragged items [T, {args.width}] {DTYPE}, T uniform in [{args.t_min}, "
        f"{args.t_max}] (mean {lengths.mean():.0f} frames, {mean_item_kib:.0f} KiB), commit "
        f"units of {args.unit_items} items, values chunks of {values_chunk} frames; "
        f"{args.iters} batches per reader and batch size in interleaved rounds; warm page cache; "
        f"{os.cpu_count()} CPUs, load average {load_start[0]:.2f} -> {load_end[0]:.2f}"
    )
    print()
    cols = list(COMPARE)
    print("| reader | batch | items/s (median round) | GiB/s | minor faults / item | "
          + " | ".join(cols) + " |")  # fmt: skip
    print("|---|---:|---:|---:|---:|" + "---:|" * len(cols))
    for name in LIST_READERS + PADDED_READERS:
        for b in sizes:
            res = per_size[str(b)]
            cells = [f"{res['ratios_paired'][c][name]:.3f}" if name in res["ratios_paired"][c]
                     else "" for c in cols]  # fmt: skip
            gib = "—" if name == "ram-list" else f"{res['gib_per_s'][name]:.2f}"  # no bytes move
            print(
                f"| {LABELS[name]} | {b} | {res['items_per_s'][name]:,.0f} | "
                f"{gib} | {res['minor_faults_per_item'][name]:.1f} | " + " | ".join(cells) + " |"
            )
    print()
    print("| paired ratio | " + " | ".join(f"B={b}" for b in sizes) + " |")
    print("|---|" + "---:|" * len(sizes))
    for key, name, label in [
        ("(a) vs (ref) memmap slices", "fs-gather", "(a) / (ref): gather vs plain memmap slices"),
        ("(c) vs (a) gather", "fs-padded", "(c) / (a): gather_padded vs gather"),
        ("(c) vs (ref-pad)", "fs-padded", "(c) / (ref-pad): gather_padded vs one-copy padding"),
    ]:
        vals = " | ".join(f"{per_size[str(b)]['ratios_paired'][key][name]:.3f}" for b in sizes)
        print(f"| {label} | {vals} |")
    print()
    print("| one-time cost | value |")
    print("|---|---:|")
    print(
        f"| first-touch CRC32 of all {n_units} commit units (`verify_all`, warm cache) | "
        f"{verify_s:.2f} s ({total_bytes / verify_s / 2**30:.2f} GiB/s, "
        f"{1000 * verify_s / n_units:.1f} ms per {args.unit_items}-item unit) |"
    )
    print(f"| page-cache warm-up read of the entry | {warm_s:.1f} s |")
    print()
    summary = []
    for b in sizes:
        r = per_size[str(b)]["ratios_paired"]
        summary.append(
            f"B={b}: gather {r['vs (b) RAM list']['fs-gather']:.3f}x RAM list indexing, "
            f"{r[COPY_COL]['fs-gather']:.2f}x RAM list + copy; gather_padded "
            f"{r['vs (d) RAM padded']['fs-padded']:.2f}x RAM padding"
        )
    print("summary: " + "; ".join(summary))

    result = {
        "benchmark": "read_ragged",
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "dtype": DTYPE,
        "mean_frames": float(lengths.mean()),
        "total_bytes": total_bytes,
        "values_chunk_frames": values_chunk,
        "batch_sizes": per_size,
        "first_touch_verify_s": verify_s,
        "first_touch_verify_gib_per_s": total_bytes / verify_s / 2**30,
        "n_units": n_units,
        "warm_page_cache_s": warm_s,
        "loadavg": {"start": load_start, "end": load_end},
        "build_s": build_s,
        "env": env_info(),
    }
    return finish(result, args.workdir, "read_ragged", data_dir, args.clean)


if __name__ == "__main__":
    main(sys.argv[1:])
