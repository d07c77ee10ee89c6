"""The extraction engine: source → DataLoader workers → frozen teacher → chunk writer.

One pass of the teacher can fill several entries (one per output kind). Work is cut into
fixed batches ``[b*B, (b+1)*B)`` of the item order, whatever was already done, so a resumed run
computes every item in the same batch as an uninterrupted one and writes identical bytes.
A background thread writes finished chunks while the teacher computes the next batches.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .errors import FeatstoreError, SourceError, StoreError
from .format import progress_dir
from .hashing import cache_key, canonical_json
from .sources.base import Source
from .store import Store, read_manifest
from .teachers.base import OutputSpec, Teacher
from .writer import EntryWriter

DTYPES = ("float16", "float32")
NORMALIZATIONS = ("none", "l2")
TARGET_CHUNK_BYTES = 32 << 20
RAGGED_CHUNK_ITEMS = 64


@dataclass
class EntryResult:
    key: str
    output: str
    status: str  # "extracted", "resumed" or "cached"
    path: str
    n_rows: int
    row_shape: tuple


@dataclass
class ExtractResult:
    entries: list[EntryResult]
    items_computed: int = 0
    seconds: float = 0.0
    bytes_written: int = 0
    device: str = "cpu"
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if not self.items_computed:
            return "nothing to do: every requested entry is already complete (cache hit)."
        rate = self.items_computed / max(self.seconds, 1e-9)
        return (
            f"extracted {self.items_computed} items in {self.seconds:.1f} s "
            f"({rate:.1f} items/s on {self.device}), wrote {self.bytes_written / 2**20:.1f} MiB"
        )


def default_chunk_rows(spec: OutputSpec, dtype: str, batch_size: int = 1) -> int:
    """Rows per chunk: about 32 MiB, and a multiple of the batch size, so that every chunk
    boundary is a batch boundary and a resumed run never recomputes a committed row."""
    if spec.ragged:
        rows = RAGGED_CHUNK_ITEMS
    else:
        row_bytes = int(np.prod(spec.row_shape)) * np.dtype(dtype).itemsize
        rows = max(1, TARGET_CHUNK_BYTES // max(row_bytes, 1))
    return max(batch_size, rows // batch_size * batch_size)


def default_num_workers(device: torch.device) -> int:
    """Loader processes: on a GPU they keep it fed; on a CPU they take cores from the teacher's
    own threads, so few small machines gain from them (measured in docs/benchmarks.md)."""
    cores = os.cpu_count() or 1
    if device.type == "cuda":
        return min(8, max(0, cores - 1))
    return min(4, cores // 4)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FeatstoreError("--device cuda was asked for but no CUDA device is available.")
    try:
        return torch.device(device)
    except RuntimeError:
        raise FeatstoreError(f"unknown device {device!r}; use auto, cpu or cuda[:N].") from None


def entry_keys(
    teacher: Teacher,
    source: Source,
    outputs: list[str],
    dtype: str,
    memo=None,
    normalize: str = "none",
) -> dict[str, tuple[str, dict[str, Any]]]:
    """``{output: (key, key_inputs)}`` for a teacher over a source."""
    fingerprint = source.fingerprint(memo)
    if memo is not None:
        memo.flush()
    identity = teacher.identity()
    keys = {}
    for kind in outputs:
        inputs = {**identity, "output": kind, "dtype": dtype, "normalize": normalize,
                  "source": fingerprint}  # fmt: skip
        keys[kind] = (cache_key(inputs), inputs)
    return keys


class _Failure:
    """An item that could not be loaded, carried back from a worker instead of an exception so
    the main process raises one clean error that names the item."""

    def __init__(self, message: str):
        self.message = message


class _Items(torch.utils.data.Dataset):
    def __init__(self, source: Source, preprocess: Callable[[Any], Any]):
        self.source, self.preprocess = source, preprocess

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> Any:
        try:
            return self.preprocess(self.source.load(i))
        except SourceError as e:
            return _Failure(str(e))
        except Exception as e:  # noqa: BLE001 - any decode/preprocess error names its item
            return _Failure(f"item {self.source.ids[i]!r} of {self.source.path}: {e}")


class _Collate:
    def __init__(self, collate: Callable[[list[Any]], Any]):
        self.collate = collate

    def __call__(self, items: list[Any]) -> Any:
        for item in items:
            if isinstance(item, _Failure):
                return item
        return self.collate(items)


class _BatchGrid(torch.utils.data.Sampler):
    """The fixed batches of ``batch_size`` that contain at least one needed row."""

    def __init__(self, n: int, batch_size: int, needed: np.ndarray):
        starts = np.unique(needed // batch_size) * batch_size
        self.batches = [list(range(s, min(s + batch_size, n))) for s in starts.tolist()]

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class _Assembler:
    """Collects an output's rows into whole units and hands finished units to the writer."""

    def __init__(self, writer: EntryWriter, ragged: bool):
        self.writer, self.ragged = writer, ragged
        self.todo = set(range(writer.n_chunks)) - writer.committed()
        self.buffers: dict[int, Any] = {}
        self.filled: dict[int, int] = {}

    def needed_rows(self) -> np.ndarray:
        parts = [np.arange(*self.writer.unit_rows(u)) for u in sorted(self.todo)]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def add(self, rows: list[int], values: Any) -> list[tuple[int, Any]]:
        done = []
        cr = self.writer.chunk_rows
        for j, row in enumerate(rows):
            unit = row // cr
            if unit not in self.todo:
                continue
            if unit not in self.buffers:
                start, stop = self.writer.unit_rows(unit)
                self.buffers[unit] = (
                    [None] * (stop - start)
                    if self.ragged
                    else np.empty((stop - start, *self.writer.row_shape), self.writer.dtype)
                )
                self.filled[unit] = 0
            self.buffers[unit][row - unit * cr] = values[j]
            self.filled[unit] += 1
            if self.filled[unit] == len(self.buffers[unit]):
                done.append((unit, self.buffers.pop(unit)))
                self.todo.discard(unit)
        return done


def _to_numpy(value: Any, dtype: str, ragged: bool, normalize: str = "none") -> Any:
    """Stored rows: optionally L2-normalized along the last axis (each vector, token or frame)."""
    np_dtype = getattr(torch, dtype)

    def convert(x: torch.Tensor):
        x = x.detach()
        if normalize == "l2":
            x = torch.nn.functional.normalize(x.float(), dim=-1)
        return x.to(np_dtype).cpu().numpy()

    return [convert(v) for v in value] if ragged else convert(value)


def _provenance(device: torch.device, batch_size: int, precision: str) -> dict[str, Any]:
    import importlib.metadata as md

    versions = {}
    for pkg in ("torch", "open_clip_torch", "transformers", "zarr", "numpy", "featstore-heads"):
        with contextlib.suppress(md.PackageNotFoundError):
            versions[pkg] = md.version(pkg)
    return {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "batch_size": batch_size,
        "precision": precision,
    }


def extract(
    teacher: Teacher,
    source: Source,
    store: Store | None = None,
    outputs: list[str] | None = None,
    dtype: str = "float16",
    batch_size: int = 32,
    num_workers: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    chunk_rows: int | None = None,
    compression: str | None = None,
    normalize: str = "none",
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> ExtractResult:
    """Run ``teacher`` over ``source`` once and store each requested output as a cache entry.

    A complete entry with the same key is a no-op; an incomplete one (a killed run) is resumed
    at its first uncommitted chunk. Returns what was done, entry by entry.
    """
    store = store or Store()
    outputs = list(outputs or [teacher.default_output])
    unknown = [o for o in outputs if o not in teacher.outputs]
    if unknown:
        raise FeatstoreError(
            f"teacher {teacher.name} has no output {unknown[0]!r}; it has: "
            f"{', '.join(teacher.outputs)}."
        )
    if dtype not in DTYPES:
        raise FeatstoreError(f"dtype {dtype!r} is not supported; use one of {', '.join(DTYPES)}.")
    if normalize not in NORMALIZATIONS:
        raise FeatstoreError(f"normalize {normalize!r} unknown; use none or l2.")
    if batch_size < 1:
        raise FeatstoreError("--batch-size must be at least 1.")
    if source.modality != teacher.modality:
        raise FeatstoreError(
            f"teacher {teacher.name} reads {teacher.modality}s but the source {source.path} holds "
            f"{source.modality}s."
        )
    torch_device = resolve_device(device)
    store.ensure_writable()
    keys = entry_keys(teacher, source, outputs, dtype, store.digest_memo(), normalize)

    result = ExtractResult(entries=[], device=str(torch_device))
    with contextlib.ExitStack() as locks:
        writers: dict[str, EntryWriter] = {}
        created: list[str] = []
        for kind, (key, inputs) in keys.items():
            spec = teacher.outputs[kind]
            path = store.entry_path(key)
            lock = locks.enter_context(store.lock(key))
            if lock.took_over_from:
                log(
                    f"note: took over the lock of entry {key} from dead pid "
                    f"{lock.took_over_from.get('pid')}"
                )
            manifest = read_manifest(path)
            status = "extracted"
            if manifest is not None and manifest.get("complete"):
                result.entries.append(
                    EntryResult(
                        key, kind, "cached", str(path), manifest["n_rows"], tuple(spec.shape)
                    )
                )
                log(f"{kind}: entry {key} is already complete; nothing to do (cache hit).")
                if (compression or "none") != manifest.get("compression", "none"):
                    stored = manifest.get("compression")
                    log(f"  note: it is stored with compression={stored}; compression is "
                        f"layout, not content, so the entry is reused as is.")  # fmt: skip
                continue
            same_inputs = manifest is not None and canonical_json(
                manifest.get("key_inputs")
            ) == canonical_json(inputs)
            if same_inputs:
                writer = EntryWriter(path)
                writer.clean_partials()
                status = "resumed"
                log(
                    f"{kind}: resuming entry {key}: {len(writer.committed())}/{writer.n_chunks} "
                    f"chunks already committed."
                )
                if writer.manifest.get("batch_size") not in (None, batch_size):
                    log(f"  note: it was started with --batch-size {writer.manifest['batch_size']};"
                        f" resuming with {batch_size} may differ in the last bits from an "
                        f"uninterrupted run.")  # fmt: skip
            else:
                if manifest is not None or path.exists():
                    log(f"{kind}: entry {key} is unreadable or stale; rebuilding it.")
                entry_manifest = {
                    "key": key,
                    "key_inputs": inputs,
                    "teacher": teacher.name,
                    "output": kind,
                    "output_description": spec.description,
                    "source": source.describe(),
                    "batch_size": batch_size,
                }
                writer = EntryWriter.create(
                    path, entry_manifest, source.ids, spec.row_shape, dtype, spec.ragged,
                    # zarr stores edge chunks full-size: never make a chunk longer than N
                    min(chunk_rows or default_chunk_rows(spec, dtype, batch_size),
                        max(1, len(source))),
                    compression,
                    columns=source.columns(),
                )  # fmt: skip
                created.append(kind)
            writers[kind] = writer
            result.entries.append(
                EntryResult(key, kind, status, str(path), len(source), tuple(spec.shape))
            )
        if not writers:
            return result

        try:
            _run(teacher, source, writers, result, torch_device, batch_size, num_workers,
                 precision, dtype, normalize, progress, log)  # fmt: skip
        except SourceError:
            # The source's content defines the key: bad content can never complete this entry,
            # so nothing of it is kept.
            for writer in writers.values():
                shutil.rmtree(writer.path, ignore_errors=True)
                shutil.rmtree(progress_dir(writer.path), ignore_errors=True)
            raise
    log(result.summary())
    return result


def _run(
    teacher: Teacher,
    source: Source,
    writers: dict[str, EntryWriter],
    result: ExtractResult,
    device: torch.device,
    batch_size: int,
    num_workers: int | None,
    precision: str,
    dtype: str,
    normalize: str,
    progress: bool,
    log: Callable[[str], None],
) -> None:
    from tqdm.auto import tqdm

    assemblers = {k: _Assembler(w, teacher.outputs[k].ragged) for k, w in writers.items()}
    needed = np.unique(np.concatenate([a.needed_rows() for a in assemblers.values()]))
    is_needed = np.zeros(len(source), dtype=bool)
    is_needed[needed] = True
    sampler = _BatchGrid(len(source), batch_size, needed)
    if num_workers is None:
        num_workers = default_num_workers(device)
    loader = torch.utils.data.DataLoader(
        _Items(source, teacher.preprocessor),
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=_Collate(teacher.collate),
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if num_workers else None,
    )
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    autocast_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    if precision not in ("fp32", "fp16", "bf16"):
        raise FeatstoreError(f"precision {precision!r} unknown; use auto, fp32, fp16 or bf16.")
    teacher.to(device)
    kinds = list(writers)
    ragged = {k: teacher.outputs[k].ragged for k in kinds}
    bytes_written = [0]
    pending: list[Future] = []
    slots = threading.BoundedSemaphore(4)  # at most 4 finished chunks waiting in memory

    def write(writer: EntryWriter, unit: int, data: Any) -> None:
        try:
            writer.commit(unit, data)
            bytes_written[0] += (
                sum(x.nbytes for x in data) if isinstance(data, list) else data.nbytes
            )
        finally:
            slots.release()

    computed = 0  # rows through the teacher (> needed only if batches straddle committed units)
    started = time.perf_counter()
    wall_start = time.time()
    bar = tqdm(total=int(len(needed)), unit="item", disable=not progress, desc=teacher.name,
               dynamic_ncols=True, smoothing=0.1)  # fmt: skip
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="featstore-writer") as pool:
        try:
            for rows, batch in zip(sampler, loader, strict=True):
                if isinstance(batch, _Failure):
                    raise SourceError(batch.message)
                with torch.inference_mode(), torch.autocast(
                    device.type, dtype=autocast_dtype or torch.float32,
                    enabled=autocast_dtype is not None,
                ):  # fmt: skip
                    out = teacher.forward(batch, kinds)
                for kind in kinds:
                    values = _to_numpy(out[kind], dtype, ragged[kind], normalize)
                    for unit, data in assemblers[kind].add(rows, values):
                        slots.acquire()
                        pending.append(pool.submit(write, writers[kind], unit, data))
                for f in [f for f in pending if f.done()]:
                    f.result()  # surface write errors early
                    pending.remove(f)
                bar.update(int(is_needed[rows].sum()))
                computed += len(rows)
            for f in pending:
                f.result()
        finally:
            bar.close()
            source.close()
    seconds = time.perf_counter() - started
    prov = _provenance(device, batch_size, precision)
    for kind, writer in writers.items():
        leftover = assemblers[kind].todo
        if leftover:
            raise StoreError(
                f"internal error: units {sorted(leftover)[:5]} of {kind} were never filled"
            )
        writer.finalize({**prov, "started": wall_start, "seconds": seconds, "items": computed})
    result.items_computed += computed
    result.seconds += seconds
    result.bytes_written += bytes_written[0]
