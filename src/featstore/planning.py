"""Planning an extraction, on rank 0 and under the locks: which entries are cache hits, which are
resumed and which are created, and which rows remain, cut into groups that ranks can share.

A group is a run of rows that is whole units of every entry being written and whole batches,
so each rank commits complete units of its own and computes every row in the same batch as a
single process would.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .format import FormatError, LegacyFormatError, load_manifest, progress_dir, raw_manifest
from .hashing import DigestMemo, cache_key, canonical_json, hash_ids
from .sources.base import Source
from .store import Store
from .teachers.base import OutputSpec, Teacher
from .writer import EntryWriter

TARGET_CHUNK_BYTES = 32 << 20
MAX_CHUNK_ROWS = 1024  # so that small rows still give units for ranks to share
RAGGED_CHUNK_ITEMS = 64


@dataclass
class PlannedEntry:
    output: str
    key: str
    path: Path
    status: str  # "cached", "extracted" (created now) or "resumed"
    n_rows: int
    row_shape: tuple


@dataclass
class Plan:
    entries: list[PlannedEntry]
    todo: dict[str, list[int]] = field(default_factory=dict)  # output -> uncommitted units
    committed: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)
    chunk_rows: dict[str, int] = field(default_factory=dict)
    groups: list[tuple[int, int]] = field(default_factory=list)  # row groups that hold work

    @property
    def writing(self) -> list[PlannedEntry]:
        return [e for e in self.entries if e.status != "cached"]

    def units_in(self, groups: list[tuple[int, int]], output: str) -> set[int]:
        """The output's uncommitted units that lie in ``groups``."""
        cr = self.chunk_rows[output]
        starts = np.array([g[0] for g in groups], dtype=np.int64)
        stops = np.array([g[1] for g in groups], dtype=np.int64)
        mine = set()
        for unit in self.todo[output]:
            i = int(np.searchsorted(starts, unit * cr, side="right")) - 1
            if i >= 0 and unit * cr < stops[i]:
                mine.add(unit)
        return mine


def default_chunk_rows(spec: OutputSpec, dtype: str, batch_size: int = 1) -> int:
    """Rows per chunk: about 32 MiB (at most 1024 rows), a multiple of the batch size, so that
    every chunk boundary is a batch boundary and a resumed run never recomputes a committed
    row. Ragged outputs: 64 items."""
    if spec.ragged:
        rows = RAGGED_CHUNK_ITEMS
    else:
        row_bytes = int(np.prod(spec.row_shape)) * np.dtype(dtype).itemsize
        rows = min(MAX_CHUNK_ROWS, max(1, TARGET_CHUNK_BYTES // max(row_bytes, 1)))
    return max(batch_size, rows // batch_size * batch_size)


def entry_keys(
    teacher: Teacher,
    source: Source,
    outputs: list[str],
    dtype: str,
    memo: DigestMemo | None = None,
    normalize: str = "none",
) -> dict[str, tuple[str, dict[str, Any]]]:
    """``{output: (key, key_inputs)}`` for a teacher over a source (hashes the source)."""
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


def job_name(
    teacher: Teacher, source: Source, outputs: list[str], dtype: str, normalize: str
) -> str:
    """A lock name for "this teacher over this selection of this source", known without hashing
    the source's content, so a second identical run fails at once instead of after hashing."""
    job = {"teacher": teacher.identity(), "outputs": sorted(outputs), "dtype": dtype,
           "normalize": normalize, "kind": source.kind,
           "path": os.path.realpath(source.path), "ids": hash_ids(source.ids),
           "positions": hash_ids(np.asarray(source.positions))}  # fmt: skip
    return "job-" + hashlib.sha256(canonical_json(job).encode()).hexdigest()[:20]


def work_groups(
    n: int, batch_size: int, chunk_rows: dict[str, int], todo: dict[str, list[int]]
) -> list[tuple[int, int]]:
    """Row groups ``[start, stop)`` that hold an uncommitted unit: each is a whole number of
    batches and of every output's units (its length is their least common multiple)."""
    step = math.lcm(batch_size, *chunk_rows.values())
    busy = sorted({u * chunk_rows[k] // step for k, units in todo.items() for u in units})
    return [(g * step, min((g + 1) * step, n)) for g in busy]


def share_of(groups: list[tuple[int, int]], rank: int, world: int) -> list[tuple[int, int]]:
    """Rank ``rank``'s contiguous share of the groups."""
    n = len(groups)
    return groups[rank * n // world : (rank + 1) * n // world]


def _complete_note(path: Path, compression: str, log: Callable[[str], None]) -> None:
    """A complete entry is a cache hit; say what a user may not expect about it."""
    stored = raw_manifest(path) or {}
    if compression != stored.get("compression", "none"):
        log(f"  note: it is stored with compression={stored.get('compression')}; compression is "
            f"layout, not content, so the entry is reused as is.")  # fmt: skip


def plan_extraction(
    teacher: Teacher,
    source: Source,
    store: Store,
    options: Any,
    locks: contextlib.ExitStack,
    log: Callable[[str], None],
) -> Plan:
    """Take the locks (held until ``locks`` closes), find or create each output's entry and list
    the work left. Runs on rank 0 only."""
    outputs = list(options.outputs or [teacher.default_output])
    locks.enter_context(store.lock(
        job_name(teacher, source, outputs, options.dtype, options.normalize),
        what=f"the extraction of {teacher.name} over {source.path}", doing="run",
    ))  # fmt: skip
    memo = store.digest_memo(trust=not options.rehash)
    keys = entry_keys(teacher, source, outputs, options.dtype, memo, options.normalize)
    plan = Plan(entries=[])
    for kind, (key, inputs) in keys.items():
        spec = teacher.outputs[kind]
        path = store.entry_path(key)
        lock = locks.enter_context(store.lock(key))
        if lock.took_over_from:
            log(f"note: took over the lock of entry {key} from dead pid "
                f"{lock.took_over_from.get('pid')}")  # fmt: skip
        planned = PlannedEntry(kind, key, path, "extracted", len(source), tuple(spec.shape))
        plan.entries.append(planned)
        try:
            meta = load_manifest(path)
        except LegacyFormatError:
            if (raw_manifest(path) or {}).get("complete"):
                planned.status = "cached"
                log(f"{kind}: entry {key} is already complete (cache hit), in store format 1: "
                    f"run `featstore migrate {key}` before reading it.")  # fmt: skip
                continue
            meta = None
        except FormatError:
            meta = None
        if meta is not None and meta.complete:
            planned.status = "cached"
            shutil.rmtree(progress_dir(path), ignore_errors=True)  # a kill after completing
            log(f"{kind}: entry {key} is already complete; nothing to do (cache hit).")
            _complete_note(path, options.compression, log)
            continue
        if meta is not None and canonical_json(meta.key_inputs) == canonical_json(inputs):
            writer = EntryWriter(path)
            writer.clean_partials()
            planned.status = "resumed"
            records = writer.records()
            done = len(records)
            if done == writer.n_chunks:
                log(f"{kind}: resuming entry {key}: all {done} chunks are committed; finalizing.")
            else:
                log(f"{kind}: resuming entry {key}: {done}/{writer.n_chunks} chunks already "
                    f"committed.")  # fmt: skip
            if meta.batch_size not in (None, options.batch_size):
                log(f"  note: it was started with --batch-size {meta.batch_size}; resuming with "
                    f"{options.batch_size} may differ in the last bits from an uninterrupted "
                    f"run.")  # fmt: skip
        else:
            if path.exists():
                log(f"{kind}: entry {key} is unreadable or stale; rebuilding it.")
            chunk_rows = options.chunk_rows or default_chunk_rows(
                spec, options.dtype, options.batch_size
            )
            writer = EntryWriter.create(
                path,
                {"key": key, "key_inputs": inputs, "teacher": teacher.name, "output": kind,
                 "output_description": spec.description, "source": source.describe(),
                 "batch_size": options.batch_size},
                source.ids, spec.row_shape, options.dtype, spec.ragged,
                # zarr stores edge chunks full-size: never make a chunk longer than N
                min(chunk_rows, max(1, len(source))),
                options.compression,
                columns=source.columns(),
            )  # fmt: skip
            records = {}
        plan.committed[kind] = records
        plan.chunk_rows[kind] = writer.chunk_rows
        plan.todo[kind] = [u for u in range(writer.n_chunks) if u not in records]
    writing = {e.output for e in plan.writing}
    plan.groups = work_groups(
        len(source), options.batch_size,
        {k: v for k, v in plan.chunk_rows.items() if k in writing},
        {k: v for k, v in plan.todo.items() if k in writing},
    )  # fmt: skip
    return plan
