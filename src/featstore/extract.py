"""Extraction: run a frozen teacher over a source once and store each requested output as a
cache entry. Three steps, each its own module:

1. plan (``planning``, rank 0, under the locks): cache hits, resumes, new entries, work left;
2. run units (``engine``): each rank computes and commits its share of the units;
3. finalize (here): ragged values assembled by all ranks, then rank 0 completes each entry.

Every option is checked before anything is created. Under torchrun the ranks share one entry's
units; the bytes never depend on how many ranks wrote them.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from .distributed import Ranks
from .engine import RunStats, run_units
from .errors import FeatstoreError, SourceError
from .format import COMPRESSIONS, DTYPES, progress_dir
from .planning import (
    Plan,
    default_chunk_rows,
    entry_keys,
    plan_extraction,
    share_of,
)
from .sources.base import Source
from .store import Store
from .teachers.base import Teacher
from .writer import EntryWriter

NORMALIZATIONS = ("none", "l2")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")

__all__ = [
    "EntryResult", "ExtractOptions", "ExtractResult", "default_chunk_rows", "default_num_workers",
    "entry_keys", "extract", "resolve_device",
]  # fmt: skip


def _positive(name: str, value: Any, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise FeatstoreError(f"{name} must be an integer >= {minimum}, got {value!r}.")


@dataclass(frozen=True)
class ExtractOptions:
    """How to extract (none of these but ``outputs``, ``dtype`` and ``normalize`` enter the key)."""

    outputs: tuple[str, ...] = ()  # empty: the teacher's first output
    dtype: str = "float16"
    batch_size: int = 32
    num_workers: int | None = None  # None: from the cores per rank and the device
    device: str = "auto"
    precision: str = "auto"
    chunk_rows: int | None = None  # None: ~32 MiB, whole batches
    compression: str = "none"
    normalize: str = "none"
    allow_nonfinite: bool = False
    rehash: bool = False  # hash the source again even if the digest memo knows it
    progress: bool = True

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> ExtractOptions:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(f"extract() got unexpected option(s) {unknown}")
        if kwargs.get("outputs") is not None:
            kwargs["outputs"] = tuple(kwargs["outputs"])
        else:
            kwargs.pop("outputs", None)
        if kwargs.get("compression") is None:
            kwargs.pop("compression", None)
        return cls(**kwargs)

    def check(self) -> None:
        """Every option on its own; raises one clear ``FeatstoreError``."""
        if self.dtype not in DTYPES:
            raise FeatstoreError(
                f"dtype {self.dtype!r} is not supported; use one of {', '.join(DTYPES)}."
            )
        if self.normalize not in NORMALIZATIONS:
            raise FeatstoreError(f"normalize {self.normalize!r} unknown; use none or l2.")
        if self.compression not in COMPRESSIONS:
            raise FeatstoreError(
                f"unknown compression {self.compression!r}; use none, lz4 or zstd."
            )
        if self.precision not in PRECISIONS:
            raise FeatstoreError(
                f"precision {self.precision!r} unknown; use {', '.join(PRECISIONS)}."
            )
        _positive("--batch-size", self.batch_size, 1)
        if self.num_workers is not None:
            _positive("--num-workers", self.num_workers, 0)
        if self.chunk_rows is not None:
            _positive("--chunk-rows", self.chunk_rows, 1)
        resolve_device(self.device)

    def check_pairing(self, teacher: Teacher, source: Source) -> None:
        """The options that depend on the teacher and the source."""
        unknown = [o for o in self.outputs if o not in teacher.outputs]
        if unknown:
            raise FeatstoreError(
                f"teacher {teacher.name} has no output {unknown[0]!r}; it has: "
                f"{', '.join(teacher.outputs)}."
            )
        if source.modality != teacher.modality:
            raise FeatstoreError(
                f"teacher {teacher.name} reads {teacher.modality}s but the source {source.path} "
                f"holds {source.modality}s."
            )
        if len(source) == 0:
            raise FeatstoreError(f"the source {source.path} selects no items; nothing to extract.")


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
    ranks: int = 1
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if self.items_computed:
            rate = self.items_computed / max(self.seconds, 1e-9)
            where = f"{self.ranks} ranks on {self.device}" if self.ranks > 1 else self.device
            return (
                f"extracted {self.items_computed} items in {self.seconds:.1f} s "
                f"({rate:.1f} items/s on {where}), wrote {self.bytes_written / 2**20:.1f} MiB"
            )
        finished = [e for e in self.entries if e.status != "cached"]
        if finished:
            what = "1 entry" if len(finished) == 1 else f"{len(finished)} entries"
            return f"nothing left to compute: finalized {what} whose chunks were all committed."
        return "nothing to do: every requested entry is already complete (cache hit)."


def default_num_workers(device: torch.device, ranks_per_node: int = 1) -> int:
    """Loader processes per rank, from the cores per rank: on a GPU they keep it fed; on a CPU
    they take cores from the teacher's own threads, so few small machines gain from them
    (measured in docs/benchmarks.md)."""
    cores = max(1, (os.cpu_count() or 1) // max(1, ranks_per_node))
    if device.type == "cuda":
        return min(8, max(0, cores - 1))
    return min(4, cores // 4)


def resolve_device(device: str, ranks: Ranks | None = None) -> torch.device:
    """``auto`` (CUDA if available), ``cpu``, ``cuda`` or ``cuda:N``; under torchrun, ``auto``
    and ``cuda`` mean this rank's local GPU."""
    local = ranks.local_rank if ranks is not None else 0
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FeatstoreError("--device cuda was asked for but no CUDA device is available.")
    if device == "cuda":
        device = f"cuda:{local}"
    try:
        return torch.device(device)
    except RuntimeError:
        raise FeatstoreError(f"unknown device {device!r}; use auto, cpu or cuda[:N].") from None


def _provenance(device: torch.device, options: ExtractOptions, ranks: Ranks) -> dict[str, Any]:
    import importlib.metadata as md

    versions = {}
    for pkg in ("torch", "open_clip_torch", "transformers", "zarr", "numpy", "featstore-heads"):
        with contextlib.suppress(md.PackageNotFoundError):
            versions[pkg] = md.version(pkg)
    precision = options.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    return {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "batch_size": options.batch_size,
        "precision": precision,
        "ranks": ranks.world,
    }


def extract(
    teacher: Teacher,
    source: Source,
    store: Store | None = None,
    options: ExtractOptions | None = None,
    *,
    log: Callable[[str], None] = print,
    **option_kwargs: Any,
) -> ExtractResult:
    """Run ``teacher`` over ``source`` once and store each requested output as a cache entry.

    A complete entry with the same key is a no-op; an incomplete one (a killed run) is resumed
    at its first uncommitted unit. Options come as an ``ExtractOptions`` or as keyword
    arguments (``outputs=["tokens"], batch_size=16, ...``). Under torchrun every rank calls
    this; they share the work. Returns what was done, entry by entry.
    """
    if options is None:
        options = ExtractOptions.from_kwargs(**option_kwargs)
    elif option_kwargs:
        raise TypeError("pass options either as ExtractOptions or as keyword arguments")
    options.check()
    options.check_pairing(teacher, source)
    ranks = Ranks.from_env()
    try:
        return _extract(teacher, source, store or Store(), options, ranks, log)
    finally:
        ranks.close()


def _extract(
    teacher: Teacher,
    source: Source,
    store: Store,
    options: ExtractOptions,
    ranks: Ranks,
    log: Callable[[str], None],
) -> ExtractResult:
    device = resolve_device(options.device, ranks)
    say = log if ranks.main else (lambda *_: None)
    store.ensure_writable()
    with contextlib.ExitStack() as locks:
        outcome: Any = None
        if ranks.main:
            try:
                outcome = plan_extraction(teacher, source, store, options, locks, say)
            except Exception as e:  # noqa: BLE001 - shared with the other ranks, then raised
                outcome = e
        plan: Plan = ranks.share(outcome)
        result = ExtractResult(
            entries=[EntryResult(e.key, e.output, e.status, str(e.path), e.n_rows, e.row_shape)
                     for e in plan.entries],
            device=str(device), ranks=ranks.world,
        )  # fmt: skip
        if not plan.writing:
            say(result.summary())
            return result
        writers = {e.output: EntryWriter(e.path) for e in plan.writing}
        mine = share_of(plan.groups, ranks.rank, ranks.world)
        workers = options.num_workers
        if workers is None:
            workers = default_num_workers(device, ranks.local_world)
        label = f"{teacher.name} {ranks.label()}".strip()
        started = time.time()
        try:
            stats = run_units(
                teacher, source, writers, {k: plan.units_in(mine, k) for k in writers},
                options, device, workers, label, progress_bar=False if ranks.distributed else None,
            )  # fmt: skip
        except SourceError:
            # The source's content defines the key: bad content can never complete these
            # entries, so nothing of them is kept.
            _remove(writers.values(), only_empty=False)
            raise
        except FeatstoreError:
            _remove(writers.values(), only_empty=True)  # keep whatever a resume can use
            raise
        everyone: list[RunStats] = ranks.gather(stats)
        provenance = {**_provenance(device, options, ranks), "started": started,
                      "seconds": max(s.seconds for s in everyone),
                      "items": sum(s.items for s in everyone)}  # fmt: skip
        for kind, writer in writers.items():
            records = dict(plan.committed[kind])
            for s in everyone:
                records.update(s.records[kind])
            _finalize(writer, records, provenance, ranks)
    result.items_computed = provenance["items"]
    result.seconds = provenance["seconds"]
    result.bytes_written = sum(s.bytes_written for s in everyone)
    say(result.summary())
    return result


def _finalize(
    writer: EntryWriter, records: dict[int, dict], provenance: dict[str, Any], ranks: Ranks
) -> None:
    """Rank 0 plans (offsets, the values array), every rank assembles its share of the ragged
    values chunks, then rank 0 completes the entry."""
    outcome: Any = None
    if ranks.main:
        try:
            outcome = writer.plan_finalize(records)
        except Exception as e:  # noqa: BLE001 - shared with the other ranks, then raised
            outcome = e
    plan = ranks.share(outcome)
    writer.assemble_values(plan, range(ranks.rank, plan.n_value_chunks, ranks.world))
    ranks.barrier()
    if ranks.main:
        writer.finish(plan, provenance)


def _remove(writers: Any, only_empty: bool) -> None:
    for writer in writers:
        if only_empty and writer.committed():
            continue
        shutil.rmtree(writer.path, ignore_errors=True)
        shutil.rmtree(progress_dir(writer.path), ignore_errors=True)
