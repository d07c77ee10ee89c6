"""Running units: source → DataLoader workers → frozen teacher → unit writer.

Work is cut into fixed batches ``[b*B, (b+1)*B)`` of the item order, whatever was done before
and whichever rank runs them, so every item is computed in the same batch as in one
uninterrupted single-process run, and the stored bytes are the same. A background thread writes
finished units while the teacher computes the next batches.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .errors import FeatstoreError, SourceError, StoreError
from .progress import Progress
from .sources.base import Source
from .teachers.base import Teacher
from .writer import EntryWriter

AUTOCAST = {"fp16": torch.float16, "bf16": torch.bfloat16}


class NonFiniteOutputError(FeatstoreError):
    """The teacher produced NaN or inf for some items."""


@dataclass
class RunStats:
    items: int = 0  # rows through the teacher (> needed when batches straddle committed units)
    seconds: float = 0.0
    bytes_written: int = 0
    records: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)  # output -> unit


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

    def __init__(self, writer: EntryWriter, ragged: bool, todo: set[int]):
        self.writer, self.ragged, self.todo = writer, ragged, set(todo)
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


def to_numpy(value: Any, dtype: str, ragged: bool, normalize: str = "none") -> Any:
    """Stored rows: optionally L2-normalized along the last axis (each vector, token or frame)."""
    torch_dtype = getattr(torch, dtype)

    def convert(x: torch.Tensor):
        x = x.detach()
        if normalize == "l2":
            x = torch.nn.functional.normalize(x.float(), dim=-1)
        return x.to(torch_dtype).cpu().numpy()

    return [convert(v) for v in value] if ragged else convert(value)


def check_finite(kind: str, rows: list[int], values: Any, source: Source, teacher: str) -> None:
    """One clear error naming the items whose outputs hold NaN or inf."""
    if isinstance(values, list):
        bad = [r for r, v in zip(rows, values, strict=True) if not np.isfinite(v).all()]
    else:
        finite = np.isfinite(values.reshape(len(rows), -1)).all(axis=1)
        bad = [r for r, ok in zip(rows, finite.tolist(), strict=True) if not ok]
    if bad:
        ids = np.asarray(source.ids)[bad[:5]].tolist()
        raise NonFiniteOutputError(
            f"teacher {teacher} produced NaN or inf in output {kind!r} for {len(bad)} item(s) of "
            f"this batch (ids {ids}). Check those items of {source.path} for NaN/inf values, "
            f"or use --precision fp32 if fp16 overflowed. To store such values anyway, pass "
            f"--allow-nonfinite. Units committed before this batch are kept."
        )


def run_units(
    teacher: Teacher,
    source: Source,
    writers: dict[str, EntryWriter],
    todo: dict[str, set[int]],
    options: Any,
    device: torch.device,
    num_workers: int,
    progress_label: str,
    progress_bar: bool | None = None,
) -> RunStats:
    """Compute and commit the units ``todo[kind]`` of each writer; returns what was done."""
    assemblers = {k: _Assembler(w, teacher.outputs[k].ragged, todo[k]) for k, w in writers.items()}
    needed = np.unique(np.concatenate([a.needed_rows() for a in assemblers.values()]))
    stats = RunStats(records={k: {} for k in writers})
    if not len(needed):
        return stats
    is_needed = np.zeros(len(source), dtype=bool)
    is_needed[needed] = True
    sampler = _BatchGrid(len(source), options.batch_size, needed)
    loader = torch.utils.data.DataLoader(
        _Items(source, teacher.preprocessor),
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=_Collate(teacher.collate),
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if num_workers else None,
    )
    precision = options.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    autocast_dtype = AUTOCAST.get(precision)
    teacher.to(device)
    kinds = list(writers)
    ragged = {k: teacher.outputs[k].ragged for k in kinds}
    pending: list[Future] = []
    slots = threading.BoundedSemaphore(4)  # at most 4 finished units waiting in memory
    lock = threading.Lock()

    def write(kind: str, unit: int, data: Any) -> None:
        try:
            record = writers[kind].commit(unit, data)
            with lock:
                stats.records[kind][unit] = record
                stats.bytes_written += (
                    sum(x.nbytes for x in data) if isinstance(data, list) else data.nbytes
                )
        finally:
            slots.release()

    started = time.perf_counter()
    bar = Progress(int(len(needed)), progress_label, enabled=options.progress, bar=progress_bar)
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
                    values = to_numpy(out[kind], options.dtype, ragged[kind], options.normalize)
                    if not options.allow_nonfinite:
                        check_finite(kind, rows, values, source, teacher.name)
                    for unit, data in assemblers[kind].add(rows, values):
                        slots.acquire()
                        pending.append(pool.submit(write, kind, unit, data))
                for f in [f for f in pending if f.done()]:
                    f.result()  # surface write errors early
                    pending.remove(f)
                bar.update(int(is_needed[rows].sum()))
                stats.items += len(rows)
            for f in pending:
                f.result()
        finally:
            bar.close()
            source.close()
    for kind, assembler in assemblers.items():
        if assembler.todo:
            raise StoreError(
                f"internal error: units {sorted(assembler.todo)[:5]} of {kind} were never filled"
            )
    stats.seconds = time.perf_counter() - started
    return stats
