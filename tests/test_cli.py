"""The `featstore` CLI: every command, and every bad input as one clear error + exit 1."""

from __future__ import annotations

import json
import socket

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from featstore.store import Store
from featstore_cli.featstore_app import app

runner = CliRunner()


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def extract_args(store, source, teacher="bigG-tiny", *extra):
    return ("extract", "--teacher", teacher, "--source", source, "--store", store.root,
            "--weights", "random", "-q", "--num-workers", "0", *extra)  # fmt: skip


def assert_clean_failure(result, store, *needles):
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in result.output, result.output
    assert store.entries() == []
    assert not (store.root / "_progress").exists() or not any((store.root / "_progress").iterdir())


def test_help_everywhere():
    commands = ["extract", "ls", "info", "verify", "rm", "teachers", "demo", "migrate", "export"]
    for cmd in ([], *([c] for c in commands)):
        result = cli(*cmd, "--help")
        assert result.exit_code == 0 and "Usage" in result.output


def test_teachers_lists_shapes():
    result = cli("teachers")
    assert result.exit_code == 0
    assert "bigG" in result.output and "tokens [256,1664]" in result.output
    assert "clip-l-text" in result.output and "hidden [77,768]" in result.output


def test_extract_ls_info_verify_rm(nsd_hdf5, store):
    result = cli(*extract_args(store, nsd_hdf5, "bigG-tiny", "-o", "tokens", "-o", "embeds"))
    assert result.exit_code == 0, result.output
    assert result.output.count("extracted ") >= 2
    keys = [e.key for e in store.entries()]
    assert len(keys) == 2

    again = cli(*extract_args(store, nsd_hdf5))
    assert again.exit_code == 0 and "cache hit" in again.output

    ls = cli("ls", "--store", store.root)
    assert ls.exit_code == 0
    assert "[256,64]" in ls.output and "nsd-images:coco_images_224_float16.hdf5" in ls.output
    assert "2 entries" in ls.output

    info = cli("info", keys[0][:6], "--store", store.root)
    assert info.exit_code == 0
    assert json.loads(info.output)["key"] == keys[0]

    ok = cli("verify", keys[0], "--store", store.root)
    assert ok.exit_code == 0 and "ok: all" in ok.output

    rm = cli("rm", keys[0], "--store", store.root)
    assert rm.exit_code == 0 and [e.key for e in store.entries()] == [keys[1]]
    missing = cli("info", keys[0], "--store", store.root)
    assert missing.exit_code == 1 and "no entry" in missing.output


def test_verify_names_corrupt_chunks(nsd_hdf5, store):
    cli(*extract_args(store, nsd_hdf5, "bigG-tiny", "--chunk-rows", "8"))
    (entry,) = store.entries()
    chunk = entry.path / "features" / "c" / "2" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[1000] ^= 1  # inside row 16's bytes (rows 20-23 of this edge chunk are padding)
    chunk.write_bytes(bytes(data))
    result = cli("verify", entry.key, "--store", store.root)
    assert result.exit_code == 1
    assert "features/c/2/0/0 is corrupt" in result.output and "1 of 3 chunks" in result.output


def test_unknown_teacher_lists_known(nsd_hdf5, store):
    result = cli(*extract_args(store, nsd_hdf5, "bigGG"))
    assert_clean_failure(result, store, "unknown teacher 'bigGG'", "bigG-tiny", "clip-l-text")


def test_missing_source(tmp_path, store):
    result = cli(*extract_args(store, tmp_path / "nope.hdf5"))
    assert_clean_failure(result, store, "nope.hdf5 does not exist")


def test_hdf5_without_images_dataset(tmp_path, store):
    path = tmp_path / "wrong.hdf5"
    with h5py.File(path, "w") as f:
        f.create_dataset("pixels", data=np.zeros((2, 3, 8, 8), np.float16))
    result = cli(*extract_args(store, path))
    assert_clean_failure(result, store, "no dataset 'images'", "found: pixels")


def test_hdf5_with_wrong_shape(tmp_path, store):
    path = tmp_path / "hwc.hdf5"
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=np.zeros((2, 8, 8, 3), np.float16))
    result = cli(*extract_args(store, path))
    assert_clean_failure(result, store, "shape (2, 8, 8, 3)", "[N, 3, H, W]")


def test_ids_out_of_range(nsd_hdf5, tmp_path, store):
    ids = tmp_path / "ids.txt"
    ids.write_text("0\n5\n20\n25\n")
    result = cli(*extract_args(store, nsd_hdf5, "bigG-tiny", "--ids", ids))
    assert_clean_failure(result, store, "2 of 4 requested ids are not in", "Valid ids are 0..19")


def test_duplicated_ids(nsd_hdf5, tmp_path, store):
    ids = tmp_path / "ids.npy"
    np.save(ids, np.array([1, 2, 2, 3]))
    result = cli(*extract_args(store, nsd_hdf5, "bigG-tiny", "--ids", ids))
    assert_clean_failure(result, store, "listed more than once", "[2]")


def test_ids_and_range_select(nsd_hdf5, tmp_path, store):
    ids = tmp_path / "ids.json"
    ids.write_text("[9, 3, 4, 11]")
    result = cli(*extract_args(store, nsd_hdf5, "bigG-tiny", "--ids", ids, "--range", "1:3"))
    assert result.exit_code == 0, result.output
    from featstore import open_entry

    (entry,) = store.entries()
    assert open_entry(entry.key, store).ids.tolist() == [3, 4]


def test_bad_range(nsd_hdf5, store):
    result = cli(*extract_args(store, nsd_hdf5, "bigG-tiny", "--range", "5:100"))
    assert_clean_failure(result, store, "outside 0:20")


def test_corrupt_image_is_named_and_nothing_is_kept(image_folder, store):
    (image_folder / "sub" / "img3.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    result = cli(*extract_args(store, image_folder, "bigG-tiny", "-b", "2", "--chunk-rows", "2"))
    assert_clean_failure(result, store, "sub/img3.jpg")


def test_empty_text(tmp_path, store):
    path = tmp_path / "texts.jsonl"
    path.write_text('{"id": "a", "text": "fine"}\n{"id": "b", "text": "   "}\n')
    result = cli(*extract_args(store, path, "clip-l-text-tiny"))
    assert_clean_failure(result, store, "id 'b' is empty")


def test_text_list_missing_fields(tmp_path, store):
    path = tmp_path / "texts.csv"
    path.write_text("key,caption\n1,a cat\n")
    result = cli(*extract_args(store, path, "clip-l-text-tiny"))
    assert_clean_failure(result, store, "lacks the fields 'id' and 'text'", "--text-field")
    ok = cli(*extract_args(store, path, "clip-l-text-tiny", "--id-field", "key",
                           "--text-field", "caption"))  # fmt: skip
    assert ok.exit_code == 0, ok.output


def test_unwritable_store(nsd_hdf5, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    store = Store(blocker / "store")
    result = cli(*extract_args(store, nsd_hdf5))
    assert (
        result.exit_code == 1 and "is not writable" in result.output and "--store" in result.output
    )


def test_locked_key(nsd_hdf5, store):
    from featstore.extract import entry_keys
    from featstore.sources import open_source
    from featstore.teachers import create_teacher

    key = entry_keys(create_teacher("bigG-tiny", weights="random"), open_source(nsd_hdf5),
                     ["tokens"], "float16")["tokens"][0]  # fmt: skip
    with store.lock(key):
        result = cli(*extract_args(store, nsd_hdf5))
    assert result.exit_code == 1
    assert f"entry {key} is being written by pid" in result.output
    assert socket.gethostname() in result.output


def test_modality_mismatch(captions, store):
    result = cli(*extract_args(store, captions, "bigG-tiny"))
    assert_clean_failure(result, store, "reads images")


@pytest.mark.parametrize("flag,value,needle", [
    ("--dtype", "bfloat16", "dtype 'bfloat16' is not supported"),
    ("--output", "cls", "has no output 'cls'"),
    ("--preprocessing", "fancy", "unknown preprocessing 'fancy'"),
    ("--compression", "gzip", "unknown compression 'gzip'"),
])  # fmt: skip
def test_bad_options(nsd_hdf5, store, flag, value, needle):
    result = cli(*extract_args(store, nsd_hdf5, "bigG-tiny", flag, value))
    assert_clean_failure(result, store, needle)


def test_demo_runs(tmp_path):
    result = cli("demo", "--workdir", tmp_path / "demo", "-q")
    assert result.exit_code == 0, result.output
    assert "zero-copy memory map: True" in result.output
    assert len(Store(tmp_path / "demo" / "store").entries()) == 4


@pytest.mark.parametrize("teacher", ["bigG", "clip-l-text"])
def test_real_weights_are_default_and_offline_says_how_to_fix(
    nsd_hdf5, captions, store, teacher, monkeypatch
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = captions if teacher == "clip-l-text" else nsd_hdf5
    args = ("extract", "--teacher", teacher, "--source", source, "--store", store.root, "-q")
    result = cli(*args)
    assert_clean_failure(result, store, "cannot load", "network access", "--weights")


def test_weights_path_that_is_not_a_file(nsd_hdf5, store):
    result = cli("extract", "--teacher", "bigG-tiny", "--source", nsd_hdf5, "--store", store.root,
                 "--weights", "/no/such/ckpt.pt")  # fmt: skip
    assert_clean_failure(result, store, "neither 'pretrained', 'random' nor a checkpoint file")


def test_teacher_options(captions, store, nsd_hdf5):
    bad = cli(*extract_args(store, nsd_hdf5, "bigG-tiny", "--teacher-option", "colour=blue"))
    assert_clean_failure(
        bad, store, "teacher bigG-tiny takes no option 'colour'", "its options are: preprocessing"
    )
    malformed = cli(*extract_args(store, nsd_hdf5, "bigG-tiny", "--teacher-option", "oops"))
    assert_clean_failure(malformed, store, "must look like KEY=VALUE")
    ok = cli(*extract_args(store, captions, "qwen-audio-tiny", "--teacher-option",
                           "tts_noise=zero", "-o", "pooled"))  # fmt: skip
    assert ok.exit_code == 0, ok.output
    (entry,) = store.entries()
    assert "zero" in json.dumps(entry.manifest["key_inputs"])


def test_text_list_with_repeated_ids(tmp_path, store):
    path = tmp_path / "texts.jsonl"
    path.write_text('{"id": 1, "text": "a"}\n{"id": 2, "text": "b"}\n{"id": 1, "text": "c"}\n')
    result = cli(*extract_args(store, path, "clip-l-text-tiny"))
    assert_clean_failure(result, store, "ids repeat (first: ['1'])")
