"""Multi-rank extraction for real: `torchrun --nproc-per-node 2|3 -m featstore extract` with the
gloo backend on CPU, in subprocesses, compared byte for byte with a single-process run; a rank
killed mid-run, then a resume with another rank count."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from featstore import open_entry
from featstore.extract import extract
from featstore.sources import open_source
from featstore.store import Store
from featstore.teachers import create_teacher

WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
         "juliet", "kilo", "lima")  # fmt: skip
SENTENCES = [f"sentence {w} is spoken" for w in WORDS]
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def torchrun(n, *args, script=None, env_extra=None):
    """Run featstore (or a script) under torchrun with n CPU ranks; returns the process."""
    env = {**os.environ, **ONE_THREAD, "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    target = [script] if script else ["-m", "featstore"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           str(n), *target, *map(str, args)]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def array_files(entry_path):
    """Every array file (data chunks and array metadata) of an entry, as bytes."""
    return {str(p.relative_to(entry_path)): p.read_bytes() for p in sorted(entry_path.rglob("*"))
            if p.is_file() and p.parent != entry_path}  # fmt: skip


def manifest(entry_path):
    m = json.loads((entry_path / "zarr.json").read_text())["attributes"]["featstore"]
    m.pop("provenance")
    return m


def same_entry(a, b):
    assert array_files(a) == array_files(b)
    assert manifest(a) == manifest(b)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from conftest import make_nsd_hdf5

    root = tmp_path_factory.mktemp("dist")
    texts = root / "texts.jsonl"
    texts.write_text("".join(json.dumps({"id": f"s{i}", "text": t}) + "\n"
                             for i, t in enumerate(SENTENCES)))  # fmt: skip
    return root, make_nsd_hdf5(root / "images.hdf5", n=20), texts


def single(root, teacher, source, **kw):
    """The single-process reference, with one thread like each rank."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = extract(
            create_teacher(teacher, weights="random"),
            open_source(source),
            Store(root),
            num_workers=0,
            progress=False,
            log=lambda *_: None,
            **kw,
        )
    finally:
        torch.set_num_threads(threads)
    return {e.output: root / e.key for e in result.entries}


def test_two_ranks_write_the_same_bytes_as_one(inputs, tmp_path):
    root, images, _ = inputs
    want = single(
        tmp_path / "one",
        "bigG-tiny",
        images,
        outputs=["tokens", "embeds"],
        batch_size=2,
        chunk_rows=4,
    )
    store = tmp_path / "two"
    proc = torchrun(2, "extract", "-t", "bigG-tiny", "-s", images, "--weights", "random",
                    "-o", "tokens", "-o", "embeds", "-b", 2, "--chunk-rows", 4,
                    "--num-workers", 0, "--store", store)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout + proc.stderr
    assert "rank 0/2" in out and "rank 1/2" in out  # each rank reports its own progress
    assert out.count("extracted  ") == 2  # the entry lines, printed by rank 0 only
    for path in want.values():
        same_entry(store / path.name, path)
    assert json.loads((store / want["tokens"].name / "zarr.json").read_text())[
        "attributes"]["featstore"]["provenance"]["ranks"] == 2  # fmt: skip


RAGGED = textwrap.dedent(
    """
    import os, signal, sys
    from featstore import writer
    from featstore.extract import extract
    from featstore.sources import open_source
    from featstore.store import Store
    from featstore.teachers import create_teacher

    writer.VALUE_CHUNK_BYTES = 5 * 64  # 5 frames of [32] fp16 per values chunk: ranks share many
    if sys.argv[3] == "kill":
        real = writer.EntryWriter.commit

        def commit(self, unit, data):
            record = real(self, unit, data)
            if os.environ["RANK"] == "1":
                os.kill(os.getpid(), signal.SIGKILL)  # rank 1 dies after its first commit
            return record

        writer.EntryWriter.commit = commit
    result = extract(create_teacher("qwen-audio-tiny"), open_source(sys.argv[1]),
                     Store(sys.argv[2]), outputs=["frames"], batch_size=2, chunk_rows=2,
                     num_workers=0, progress=False)
    print("status", result.entries[0].status)
    """
)


def test_killed_rank_then_three_ranks_resume_ragged_byte_identical(inputs, tmp_path,
                                                                   monkeypatch):  # fmt: skip
    """Ragged values in many small chunks, so that ranks assemble chunks whose items come from
    other ranks' units and items span chunks."""
    from featstore import writer

    root, _, texts = inputs
    monkeypatch.setattr(writer, "VALUE_CHUNK_BYTES", 5 * 64)
    (want,) = single(
        tmp_path / "one", "qwen-audio-tiny", texts, outputs=["frames"], batch_size=2, chunk_rows=2
    ).values()
    assert len(list((want / "values" / "c").iterdir())) > 6  # many values chunks
    store = tmp_path / "many"
    script = tmp_path / "ragged.py"
    script.write_text(RAGGED)
    killed = torchrun(2, texts, store, "kill", script=str(script))
    assert killed.returncode != 0
    assert "Signals.SIGKILL" in killed.stderr or str(-signal.SIGKILL) in killed.stderr
    committed = sorted(int(p.stem) for p in (store / "_progress" / want.name).glob("*.json"))
    assert 1 <= len(committed) < 6  # some units, not all: a resume has work left
    with pytest.raises(Exception, match="incomplete"):
        open_entry(want.name, Store(store))
    resumed = torchrun(3, texts, store, "resume", script=str(script))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "status resumed" in resumed.stdout
    same_entry(store / want.name, want)
    assert open_entry(want.name, Store(store)).verify_all() == []
