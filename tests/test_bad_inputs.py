"""Bad inputs found by hostile testing: each is one clear error, exit 1, and nothing is created
(options are checked before any entry, directory or lock). Also the stuck states a kill could
leave, which a re-run must always get out of."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from test_cli import cli, extract_args

from featstore.extract import extract
from featstore.sources import open_source


def assert_clean_failure(result, store, *needles):
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.output.count("error:") == 1, result.output
    for needle in needles:
        assert needle in result.output, result.output
    assert store.entries() == []
    leftovers = [p for p in store.root.rglob("*") if p.is_file()] if store.root.exists() else []
    debris = [p for p in leftovers if "_locks" not in str(p) and p.name != "digests.jsonl"]
    assert debris == []  # the lock files and the digest memo are not debris


@pytest.mark.parametrize("flag,value,needle", [
    ("--num-workers", "-1", "--num-workers must be an integer >= 0, got -1"),
    ("--chunk-rows", "-4", "--chunk-rows must be an integer >= 1, got -4"),
    ("--chunk-rows", "0", "--chunk-rows must be an integer >= 1, got 0"),
    ("--batch-size", "0", "--batch-size must be an integer >= 1, got 0"),
    ("--precision", "fp8", "precision 'fp8' unknown"),
    ("--compression", "gzip", "unknown compression 'gzip'"),
    ("--dtype", "bfloat16", "dtype 'bfloat16' is not supported"),
    ("--normalize", "l1", "normalize 'l1' unknown"),
    ("--device", "tpu", "unknown device 'tpu'"),
])  # fmt: skip
def test_bad_options_fail_before_anything_is_created(nsd_hdf5, store, flag, value, needle):
    assert_clean_failure(cli(*extract_args(store, nsd_hdf5, "bigG-tiny", flag, value)), store,
                         needle)  # fmt: skip


def test_weights_that_are_not_a_checkpoint(nsd_hdf5, store, tmp_path):
    """Before: a 59-line traceback."""
    bogus = tmp_path / "notes.txt"
    bogus.write_text("not a checkpoint at all")
    result = cli("extract", "--teacher", "bigG-tiny", "--source", nsd_hdf5, "--store", store.root,
                 "--weights", bogus, "-q")  # fmt: skip
    assert_clean_failure(result, store, "notes.txt", "is not a checkpoint")


def test_empty_ids_file(nsd_hdf5, store, tmp_path):
    """Before: a complete n=0 entry, printing both 'cache hit' and 'extracted'."""
    ids = tmp_path / "ids.txt"
    ids.write_text("\n")
    result = cli(*extract_args(store, nsd_hdf5, "bigG-tiny", "--ids", ids))
    assert_clean_failure(result, store, "holds no ids")


@pytest.mark.parametrize("content", ["[0.5, 1]", "[1, 2.25]"])
def test_fractional_ids_are_refused(nsd_hdf5, store, tmp_path, content):
    """Before: 0.5 silently became 0."""
    ids = tmp_path / "ids.json"
    ids.write_text(content)
    result = cli(*extract_args(store, nsd_hdf5, "bigG-tiny", "--ids", ids))
    assert_clean_failure(result, store, "ids must be whole numbers")


def test_integral_float_ids_are_accepted(nsd_hdf5, store, tmp_path):
    ids = tmp_path / "ids.npy"
    np.save(ids, np.array([3.0, 1.0]))
    result = cli(*extract_args(store, nsd_hdf5, "bigG-tiny", "--ids", ids))
    assert result.exit_code == 0, result.output


def test_numeric_text_is_named_as_not_text(tmp_path, store):
    """Before: reported as 'empty'."""
    path = tmp_path / "texts.jsonl"
    path.write_text('{"id": 1, "text": "fine"}\n{"id": 2, "text": 5}\n')
    result = cli(*extract_args(store, path, "clip-l-text-tiny"))
    assert_clean_failure(result, store, "the text of id 2 is 5 (a number), not text")


def test_all_nan_source_is_an_error_unless_allowed(tmp_path, store):
    """Before: NaN features were stored and verified ok."""
    path = tmp_path / "nan.hdf5"
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=np.full((4, 3, 224, 224), np.nan, np.float16))
    result = cli(*extract_args(store, path, "bigG-tiny", "-b", "2"))
    assert_clean_failure(result, store, "produced NaN or inf", "--allow-nonfinite")
    ok = cli(*extract_args(store, path, "bigG-tiny", "-b", "2", "--allow-nonfinite"))
    assert ok.exit_code == 0, ok.output


def test_nonfinite_outputs_keep_committed_units_for_a_resume(tmp_path, store, bigg_tiny):
    path = tmp_path / "half.hdf5"
    data = np.random.default_rng(0).random((8, 3, 224, 224)).astype(np.float16)
    data[6] = np.inf
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=data)
    with pytest.raises(Exception, match=r"ids \[6\]"):
        extract(bigg_tiny, open_source(path), store, batch_size=2, chunk_rows=2, num_workers=0,
                progress=False, log=lambda *_: None)  # fmt: skip
    (entry,) = store.entries()
    assert not entry.complete
    result = extract(bigg_tiny, open_source(path), store, batch_size=2, chunk_rows=2,
                     num_workers=0, progress=False, log=lambda *_: None,
                     allow_nonfinite=True)  # fmt: skip
    assert result.entries[0].status == "resumed" and result.items_computed == 2


def test_progress_is_plain_lines_when_not_a_terminal(nsd_hdf5, store):
    """CI logs, `> file`, SLURM: whole lines, never carriage-return redraws."""
    result = cli("extract", "--teacher", "bigG-tiny", "--source", nsd_hdf5, "--store", store.root,
                 "--weights", "random", "--num-workers", "0")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "\r" not in result.output
    assert "bigG-tiny: 20/20 items (100.0%)" in result.output


# -- stuck states a kill can leave ---------------------------------------------------------------
def interrupted(store, bigg_tiny, nsd_hdf5, monkeypatch, when="commit", after=2):
    """A run stopped after ``after`` commits (or inside finishing)."""
    from featstore import writer

    real = getattr(writer.EntryWriter, when)
    calls = []

    def stop(self, *a, **kw):
        if len(calls) == after:
            raise KeyboardInterrupt
        calls.append(1)
        return real(self, *a, **kw)

    monkeypatch.setattr(writer.EntryWriter, when, stop)
    with pytest.raises(KeyboardInterrupt):
        extract(bigg_tiny, open_source(nsd_hdf5), store, batch_size=4, chunk_rows=4,
                num_workers=0, progress=False, log=lambda *_: None)  # fmt: skip
    monkeypatch.setattr(writer.EntryWriter, when, real)


def rerun(store, bigg_tiny, nsd_hdf5, messages=None):
    return extract(bigg_tiny, open_source(nsd_hdf5), store, batch_size=4, chunk_rows=4,
                   num_workers=0, progress=False,
                   log=(lambda *_: None) if messages is None else messages.append)  # fmt: skip


def test_deleted_progress_dir_after_a_kill(store, bigg_tiny, nsd_hdf5, monkeypatch):
    """Before: FileNotFoundError on _progress/<key>/0.json.tmp on every re-run."""
    import shutil

    interrupted(store, bigg_tiny, nsd_hdf5, monkeypatch)
    shutil.rmtree(store.root / "_progress")
    result = rerun(store, bigg_tiny, nsd_hdf5)
    assert result.entries[0].status == "resumed" and result.items_computed == 20
    assert store.entries()[0].complete


def test_kill_after_completing_leaves_no_progress_dir_behind(store, bigg_tiny, nsd_hdf5,
                                                             monkeypatch):  # fmt: skip
    """Before: a kill after `complete: true` but before _progress/<key> was removed left it."""
    import shutil

    from featstore import writer

    real_rmtree, real_finish = shutil.rmtree, writer.EntryWriter.finish

    def die_on_progress(path, *a, **kw):
        if "_progress" in str(path):
            raise KeyboardInterrupt  # killed right after the complete manifest was written
        return real_rmtree(path, *a, **kw)

    def finish(self, *a, **kw):
        with monkeypatch.context() as m:
            m.setattr(shutil, "rmtree", die_on_progress)
            return real_finish(self, *a, **kw)

    monkeypatch.setattr(writer.EntryWriter, "finish", finish)
    with pytest.raises(KeyboardInterrupt):
        rerun(store, bigg_tiny, nsd_hdf5)
    monkeypatch.setattr(writer.EntryWriter, "finish", real_finish)
    (entry,) = store.entries()
    assert entry.complete and (store.root / "_progress" / entry.key).exists()
    assert rerun(store, bigg_tiny, nsd_hdf5).entries[0].status == "cached"
    assert not (store.root / "_progress" / entry.key).exists()


def test_resume_with_every_chunk_committed_only_finalizes(store, bigg_tiny, nsd_hdf5,
                                                           monkeypatch):  # fmt: skip
    """Before: it printed 'cache hit' but labelled the entry 'resumed'."""
    interrupted(store, bigg_tiny, nsd_hdf5, monkeypatch, when="finish", after=0)
    messages = []
    result = rerun(store, bigg_tiny, nsd_hdf5, messages)
    assert result.entries[0].status == "resumed" and result.items_computed == 0
    assert "cache hit" not in " ".join(messages)
    assert any("all 5 chunks are committed; finalizing" in m for m in messages), messages
    assert "finalized 1 entry" in result.summary()


def test_manifest_of_a_json_entry_list(tmp_path):
    """ids and columns survive JSON round trips of odd strings."""
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"id": "é/ü\u2028x", "text": "a cat"}) + "\n")
    assert open_source(path).ids.tolist() == ["é/ü\u2028x"]


def test_verify_of_an_incomplete_entry_says_so(store, bigg_tiny, nsd_hdf5, monkeypatch):
    interrupted(store, bigg_tiny, nsd_hdf5, monkeypatch, when="finish", after=0)
    (entry,) = store.entries()
    result = cli("verify", entry.key, "--store", store.root)
    assert result.exit_code == 1 and result.output.count("error:") == 1
    assert "is incomplete" in result.output and "resume" in result.output
