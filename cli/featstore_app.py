"""`featstore`: run frozen teachers once and manage the cache entries they write."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ._common import handle_errors, human_bytes

app = typer.Typer(
    help="Stage one: run each frozen teacher once over a source into chunked Zarr v3 entries.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # option help is plain text: "[default: …]" must print as written
)

StoreOpt = typer.Option(
    None, "--store", help="Store directory [default: $FEATSTORE_DIR or ~/.cache/featstore]."
)


def _store(path: Path | None):
    from featstore.store import Store

    return Store(path)


def _key_values(items: list[str] | None, flag: str) -> dict[str, str]:
    from featstore.errors import FeatstoreError

    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise FeatstoreError(f"{flag} {item!r} must look like KEY=VALUE")
        out[key.strip().replace("-", "_")] = value
    return out


@app.command()
@handle_errors
def extract(
    teacher: str = typer.Option(
        ..., "--teacher", "-t", help="Teacher name (see `featstore teachers`)."
    ),
    source: Path = typer.Option(
        ...,
        "--source",
        "-s",
        help="A file or folder: NSD images HDF5, image folder, text list, t15 HDF5, COCO "
        "captions, TVSD .mat, vocabulary (see docs/sources.md).",
    ),
    source_kind: str = typer.Option(
        None,
        help="Force the source reader: nsd-images, image-folder, text-list, t15-sentences, "
        "coco-captions, tvsd-images, vocabulary [default: from the file name].",
    ),
    ids: Path = typer.Option(
        None, "--ids", help="Keep only these ids (.npy, .json list or one per line)."
    ),
    row_range: str = typer.Option(
        None, "--range", help="Keep rows START:STOP of the source (after --ids)."
    ),
    store: Path = StoreOpt,
    weights: str = typer.Option(
        None,
        help="pretrained, random, or a checkpoint path (transformers teachers: also a hub repo "
        "id) [default: pretrained; random for the *-tiny teachers].",
    ),
    output: list[str] = typer.Option(
        None, "--output", "-o", help="Output kind(s) to store [default: the teacher's first]."
    ),
    preprocessing: str = typer.Option(
        None, help="open_clip image teachers: standard or mindeye (MindEye2's (x+1)/2 quirk)."
    ),
    dtype: str = typer.Option("float16", help="Stored dtype: float16 or float32."),
    batch_size: int = typer.Option(32, "--batch-size", "-b"),
    num_workers: int = typer.Option(
        None, help="DataLoader workers [default: GPU min(8, cores-1); CPU min(4, cores/4)]."
    ),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    precision: str = typer.Option(
        "auto", help="auto (bf16 on GPU, fp32 on CPU), fp32, fp16, bf16."
    ),
    chunk_rows: int = typer.Option(None, help="Rows per chunk [default: ~32 MiB chunks]."),
    compression: str = typer.Option("none", help="none (zero-copy reads), lz4 or zstd (archive)."),
    normalize: str = typer.Option("none", help="none, or l2: unit-length rows (part of the key)."),
    id_field: str = typer.Option("id", help="Id field of JSONL/CSV/JSON-object text lists."),
    text_field: str = typer.Option("text", help="Text field of JSONL/CSV/JSON-object text lists."),
    teacher_option: list[str] = typer.Option(
        None,
        "--teacher-option",
        help="KEY=VALUE for the teacher (repeatable), e.g. "
        "tts_noise=zero for qwen-audio; see docs/teachers.md.",
    ),
    source_option: list[str] = typer.Option(
        None,
        "--source-option",
        help="KEY=VALUE for the source reader (repeatable), e.g. "
        "images_root=/data/THINGS; see docs/sources.md.",
    ),
    seed: int = typer.Option(0, help="Seed for --weights random."),
    allow_nonfinite: bool = typer.Option(
        False, help="Store NaN/inf outputs instead of stopping with an error naming the items."
    ),
    rehash: bool = typer.Option(
        False, help="Hash the source again even where the digest memo knows it unchanged."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Extract a teacher's outputs over a source (a no-op if the entry is complete; resumes if not).

    Under torchrun (torchrun --nproc-per-node N -m featstore extract ...) the ranks share the
    entry's chunks; see docs/quickstart.md.
    """
    from featstore.extract import ExtractOptions
    from featstore.extract import extract as run_extract
    from featstore.sources import detect_kind, open_source
    from featstore.teachers import create_teacher, get_spec

    options = ExtractOptions.from_kwargs(
        outputs=output or None, dtype=dtype, batch_size=batch_size, num_workers=num_workers,
        device=device, precision=precision, chunk_rows=chunk_rows, compression=compression,
        normalize=normalize, allow_nonfinite=allow_nonfinite, rehash=rehash, progress=not quiet,
    )  # fmt: skip
    options.check()  # every option before anything is loaded or created
    get_spec(teacher)  # unknown names fail before anything is loaded
    kind = source_kind or detect_kind(source)
    source_options = {}
    if kind == "text-list":
        source_options = {"id_field": id_field, "text_field": text_field}
    source_options.update(_key_values(source_option, "--source-option"))
    src = open_source(source, kind=kind, ids=ids, row_range=row_range, **source_options)
    teacher_options = {"weights": weights, "seed": seed,
                       **_key_values(teacher_option, "--teacher-option")}  # fmt: skip
    if preprocessing:
        teacher_options["preprocessing"] = preprocessing
    model = create_teacher(teacher, **teacher_options)
    options.check_pairing(model, src)
    result = run_extract(model, src, _store(store), options, log=typer.echo)
    if result.ranks == 1 or _is_rank_zero():
        for e in result.entries:
            typer.echo(f"{e.status:>9}  {e.key}  {teacher}/{e.output}  n={e.n_rows}  {e.path}")


def _is_rank_zero() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


@app.command("ls")
@handle_errors
def list_entries(store: Path = StoreOpt) -> None:
    """List the entries in the store (damaged ones too, marked as such)."""
    st = _store(store)
    entries = st.entries()
    if not entries:
        typer.echo(f"no entries in {st.root}")
        return
    header = ("KEY", "TEACHER", "OUTPUT", "SOURCE", "N", "SHAPE", "DTYPE", "SIZE", "COMPLETE")
    rows = [(e.key, *e.listing(), human_bytes(e.size_bytes()), e.state) for e in entries]
    damaged = [e for e in entries if e.meta is None]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    typer.echo(f"{len(entries)} entries in {st.root}")
    for e in damaged:
        typer.echo(f"{e.key}: {e.problem}", err=True)


@app.command()
@handle_errors
def info(key: str = typer.Argument(..., help="Key, unique key prefix, or entry path."),
         store: Path = StoreOpt) -> None:  # fmt: skip
    """Show an entry's manifest: key inputs, shapes, provenance."""
    entry = _store(store).resolve(key)
    entry.require_readable()
    m = entry.manifest
    sums = m.pop("array_checksums", {})
    m["array_checksums"] = f"{len(sums)} arrays (CRC32C)"
    m["size"] = human_bytes(entry.size_bytes())
    m["path"] = str(entry.path)
    typer.echo(json.dumps(m, indent=2, default=str))


@app.command()
@handle_errors
def verify(key: str = typer.Argument(..., help="Key, unique key prefix, or entry path."),
           store: Path = StoreOpt) -> None:  # fmt: skip
    """Check everything: metadata, ids, columns, offsets and every block of every chunk against
    its checksum. Names each problem and exits 1 if there is any."""
    from featstore.errors import CorruptChunkError, StoreError
    from featstore.verify import verify_entry

    entry = _store(store).resolve(key)
    report = verify_entry(entry.path)
    if report.incomplete:
        raise StoreError(report.problems[0])
    if not report.ok:
        for message in report.problems:
            typer.secho(message, fg=typer.colors.RED, err=True)
        others = len(report.problems) - report.bad_chunks
        parts = [f"{report.bad_chunks} of {report.n_chunks} chunks"] if report.bad_chunks else []
        parts += [f"{others} other problem{'s' if others > 1 else ''}"] if others else []
        raise CorruptChunkError(f"entry {entry.key} is damaged: {' and '.join(parts)}.")
    chunks = f"{report.n_chunks} chunk{'s' if report.n_chunks != 1 else ''}"
    typer.echo(
        f"ok: all {report.n_blocks} blocks in {chunks} of {entry.key} match their checksums, "
        f"and so do its ids, columns, offsets and metadata."
    )


@app.command()
@handle_errors
def rm(keys: list[str] = typer.Argument(..., help="Keys, unique key prefixes, or entry paths."),
       store: Path = StoreOpt) -> None:  # fmt: skip
    """Remove entries (waits for no one: a locked entry is an error)."""
    st = _store(store)
    for key in keys:
        entry = st.remove(key)
        typer.echo(
            f"removed {entry.key} ({entry.manifest.get('teacher')}/{entry.manifest.get('output')})"
        )


@app.command()
@handle_errors
def migrate(
    keys: list[str] = typer.Argument(None, help="Keys, unique key prefixes, or entry paths."),
    every: bool = typer.Option(False, "--all", help="Every entry in an older store format."),
    store: Path = StoreOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Upgrade entries written in an older store format in place (checks every chunk; no
    teacher runs). Readers refuse such entries until they are migrated."""
    from featstore.errors import FeatstoreError
    from featstore.migrate import migrate_entry

    st = _store(store)
    if every:
        keys = [e.key for e in st.entries() if e.manifest.get("format_version") == 1]
    if not keys:
        raise FeatstoreError("name the entries to migrate, or pass --all.")
    for key in keys:
        typer.echo(migrate_entry(st, key, progress=not quiet, log=typer.echo))


@app.command()
@handle_errors
def export(
    key: str = typer.Argument(..., help="Key, unique key prefix, or entry path."),
    out: Path = typer.Option(..., "--out", help="Output folder (must not exist or be empty)."),
    fmt: str = typer.Option(
        "npy", "--format", help="npy: .npy shards + parquet metadata; parquet: one table."
    ),
    shard_rows: int = typer.Option(None, help="Rows per shard [default: ~1 GiB shards]."),
    dtype: str = typer.Option(None, help="float16 or float32 [default: as stored]."),
    overwrite: bool = typer.Option(False, help="Replace an existing --out folder."),
    store: Path = StoreOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Export an entry for retrieval tools: embeddings as .npy shards (or parquet) plus ids and
    metadata as parquet, the layout clip-retrieval and autofaiss index directly."""
    from featstore.export import export_entry
    from featstore.reader import open_entry

    entry = open_entry(key, store=_store(store))
    export_entry(entry, out, fmt, shard_rows, dtype, overwrite, progress=not quiet,
                 log=typer.echo)  # fmt: skip


@app.command()
@handle_errors
def teachers() -> None:
    """List the registered teachers and their output shapes."""
    from featstore.teachers import list_teachers, teacher_outputs

    for spec in list_teachers():
        outs = ", ".join(f"{k} {v.describe()}" for k, v in teacher_outputs(spec.name).items())
        typer.echo(f"{spec.name:<18} {spec.modality:<6} {outs}")
        typer.echo(f"{'':<18} {spec.description}")


@app.command()
@handle_errors
def demo(
    workdir: Path = typer.Option(Path("featstore-demo"), help="Where the demo data and store go."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Run stage one end to end on a small synthetic dataset (generated on the fly) with tiny
    random-weight teachers."""
    from featstore.demo import run_demo

    run_demo(workdir, progress=not quiet, log=typer.echo)


if __name__ == "__main__":
    app()
