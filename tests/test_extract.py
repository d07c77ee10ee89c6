"""Extraction end to end: parity with a direct forward, the store is plain Zarr v3, cache keys."""

from __future__ import annotations

import json

import h5py
import numpy as np
import open_clip
import pytest
import torch
import zarr
from PIL import Image

from featstore import open_entry
from featstore.extract import entry_keys, extract
from featstore.sources import open_source
from featstore.teachers import create_teacher, get_spec
from featstore.teachers.openclip_vision import OPENAI_MEAN, OPENAI_STD, model_config

MEAN = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(OPENAI_STD).view(1, 3, 1, 1)


def direct_vision_model(seed: int = 0):
    """The same open_clip class, built independently of featstore's teacher code."""
    torch.manual_seed(seed)
    visual = open_clip.model.CLIP(**model_config(get_spec("bigG-tiny"))).visual.eval()
    visual.output_tokens = True
    return visual


def run(teacher, source, store, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("num_workers", 0)
    kw.setdefault("log", lambda *_: None)
    return extract(teacher, source, store, **kw)


def test_bigg_tokens_and_embeds_match_direct_forward(nsd_hdf5, store, bigg_tiny):
    result = run(bigg_tiny, open_source(nsd_hdf5), store, outputs=["tokens", "embeds"],
                 batch_size=8, chunk_rows=6)  # fmt: skip
    tokens = open_entry(result.entries[0].key, store)
    embeds = open_entry(result.entries[1].key, store)
    assert tokens.row_shape == (256, 64) and embeds.row_shape == (32,)
    with h5py.File(nsd_hdf5) as f:
        x = torch.from_numpy(f["images"][:]).float()
    with torch.inference_mode():
        pooled, toks = direct_vision_model()((x - MEAN) / STD)
    rows = np.arange(20)
    np.testing.assert_allclose(tokens.gather(rows), toks.numpy(), atol=2e-3, rtol=2e-3)
    np.testing.assert_allclose(embeds.gather(rows), pooled.numpy(), atol=2e-3, rtol=2e-3)
    assert tokens.gather(rows).dtype == np.float16
    np.testing.assert_array_equal(tokens.ids, np.arange(20))


def test_mindeye_preprocessing_matches_its_formula_and_is_another_key(nsd_hdf5, store):
    teacher = create_teacher("bigG-tiny", weights="random", preprocessing="mindeye")
    src = open_source(nsd_hdf5, row_range="0:4")
    result = run(teacher, src, store, dtype="float32")
    entry = open_entry(result.entries[0].key, store)
    with h5py.File(nsd_hdf5) as f:
        x = torch.from_numpy(f["images"][:4]).float()
    x = ((x + 1) / 2 - MEAN) / STD  # MindEye2: CLIP sees [0.5, 1]
    with torch.inference_mode():
        _, toks = direct_vision_model()(x)
    np.testing.assert_allclose(entry.gather(np.arange(4)), toks.numpy(), atol=1e-5, rtol=1e-5)
    standard = create_teacher("bigG-tiny", weights="random")
    key_std = entry_keys(standard, src, ["tokens"], "float32")["tokens"][0]
    assert key_std != result.entries[0].key


def test_image_folder_uses_open_clip_eval_transform(image_folder, store, bigg_tiny):
    src = open_source(image_folder)
    assert src.ids.tolist() == ["img0.png", "img2.png", "img4.png", "sub/img1.jpg", "sub/img3.jpg"]
    result = run(bigg_tiny, src, store, outputs=["embeds"], dtype="float32", batch_size=2)
    entry = open_entry(result.entries[0].key, store)
    transform = open_clip.transform.image_transform(224, is_train=False, mean=OPENAI_MEAN,
                                                    std=OPENAI_STD)  # fmt: skip
    x = torch.stack([transform(Image.open(image_folder / p).convert("RGB")) for p in src.ids])
    with torch.inference_mode():
        pooled, _ = direct_vision_model()(x)
    np.testing.assert_allclose(entry.gather(np.arange(5)), pooled.numpy(), atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(entry.by_id("sub/img3.jpg"), pooled[4].numpy(), atol=1e-5, rtol=1e-4)


def test_clip_text_pooled_and_hidden_match_transformers(captions, store, text_tiny):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from featstore.teachers.clip_text import TINY_TEXT

    src = open_source(captions)
    result = run(text_tiny, src, store, outputs=["pooled", "hidden"], dtype="float32",
                 batch_size=3)  # fmt: skip
    pooled = open_entry(result.entries[0].key, store)
    hidden = open_entry(result.entries[1].key, store)
    assert pooled.row_shape == (16,) and hidden.row_shape == (77, 32)
    torch.manual_seed(0)
    model = CLIPTextModelWithProjection(CLIPTextConfig(**TINY_TEXT)).eval()
    ids = torch.stack([text_tiny.preprocessor(src.load(i)) for i in range(len(src))])
    assert ids.shape == (7, 77)
    assert ids[0, 0] == 49406 and (ids[0] == 49407).sum() > 1  # SOT ... EOT, padded with EOT
    with torch.inference_mode():
        out = model(input_ids=ids)
    np.testing.assert_allclose(pooled.gather(np.arange(7)), out.text_embeds.numpy(), atol=1e-5)
    np.testing.assert_allclose(hidden.gather(np.arange(7)), out.last_hidden_state.numpy(),
                               atol=1e-5)  # fmt: skip
    assert pooled.ids.tolist() == list(range(100, 107))


def test_bundled_tokenizer_agrees_with_open_clip(text_tiny):
    text = "A photo of a Cat, sitting on the red mat!"
    ours = text_tiny.preprocessor(text)
    theirs = open_clip.tokenize([text])[0]
    n = int((theirs != 0).sum())
    assert torch.equal(ours[:n], theirs[:n])


def test_entry_is_plain_zarr_v3(nsd_hdf5, store, bigg_tiny):
    result = run(bigg_tiny, open_source(nsd_hdf5), store, batch_size=8, chunk_rows=8)
    entry = open_entry(result.entries[0].key, store)
    group = zarr.open_group(str(entry.path), mode="r")  # no featstore code involved
    assert group.metadata.zarr_format == 3
    assert set(group.array_keys()) == {"features", "ids", "checksums"}
    np.testing.assert_array_equal(group["features"][:], entry.gather(np.arange(20)))
    assert group["features"].chunks == (8, 256, 64)
    meta = json.loads((entry.path / "features" / "zarr.json").read_text())
    assert meta["codecs"] == [{"name": "bytes", "configuration": {"endian": "little"}}]
    manifest = group.attrs["featstore"]
    assert manifest["complete"] is True and manifest["format_version"] == 2
    # rows of 32 KiB: checksum blocks of 2 rows (about 64 KiB, dividing the 8-row chunks)
    assert manifest["block_rows"] == 2 and group["checksums"].shape == (10,)
    assert manifest["key_inputs"]["teacher"] == "bigG-tiny"
    assert manifest["provenance"]["versions"]["torch"] == torch.__version__
    assert manifest["source"] == {"kind": "nsd-images", "path": str(nsd_hdf5), "n": 20}


def test_second_extract_is_a_noop(nsd_hdf5, store, bigg_tiny):
    first = run(bigg_tiny, open_source(nsd_hdf5), store)
    chunk = open_entry(first.entries[0].key, store).path / "features" / "c" / "0" / "0" / "0"
    mtime = chunk.stat().st_mtime_ns
    messages = []
    second = run(bigg_tiny, open_source(nsd_hdf5), store, log=messages.append)
    assert second.entries[0].status == "cached" and second.items_computed == 0
    assert second.entries[0].key == first.entries[0].key
    assert any("cache hit" in m for m in messages)
    assert chunk.stat().st_mtime_ns == mtime


def test_every_key_input_changes_the_key(nsd_hdf5, tmp_path, bigg_tiny):
    src = open_source(nsd_hdf5)
    base = entry_keys(bigg_tiny, src, ["tokens"], "float16")["tokens"][0]
    variants = {
        "output": entry_keys(bigg_tiny, src, ["embeds"], "float16")["embeds"][0],
        "dtype": entry_keys(bigg_tiny, src, ["tokens"], "float32")["tokens"][0],
        "weights": entry_keys(
            create_teacher("bigG-tiny", weights="random", seed=1), src, ["tokens"], "float16"
        )["tokens"][0],  # fmt: skip
        "ids": entry_keys(
            bigg_tiny, open_source(nsd_hdf5, row_range="0:10"), ["tokens"], "float16"
        )["tokens"][0],  # fmt: skip
    }
    with h5py.File(nsd_hdf5, "r+") as f:  # one pixel of one image changes
        f["images"][3, 0, 0, 0] = 0.123
    variants["content"] = entry_keys(bigg_tiny, open_source(nsd_hdf5), ["tokens"], "float16")[
        "tokens"
    ][0]
    assert base not in variants.values()
    assert len(set(variants.values())) == len(variants)


def test_changed_source_is_never_served_stale(nsd_hdf5, store, bigg_tiny):
    old = run(bigg_tiny, open_source(nsd_hdf5), store).entries[0]
    with h5py.File(nsd_hdf5, "r+") as f:
        f["images"][0] = 0.0
    new = run(bigg_tiny, open_source(nsd_hdf5), store).entries[0]
    assert new.status == "extracted" and new.key != old.key
    a, b = open_entry(old.key, store), open_entry(new.key, store)
    assert not np.array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_modality_mismatch_is_an_error(captions, store, bigg_tiny):
    from featstore.errors import FeatstoreError

    with pytest.raises(FeatstoreError, match="reads images"):
        run(bigg_tiny, open_source(captions), store)
    assert not store.entries()


def test_compressed_entry_reads_through_zarr(nsd_hdf5, store, bigg_tiny):
    raw = run(bigg_tiny, open_source(nsd_hdf5), store).entries[0]
    other = type(store)(store.root.parent / "store-lz4")
    lz4 = run(bigg_tiny, open_source(nsd_hdf5), other, compression="lz4").entries[0]
    a, b = open_entry(raw.key, store), open_entry(lz4.key, other)
    assert a.zero_copy and not b.zero_copy
    rows = np.array([19, 0, 7, 7])
    np.testing.assert_array_equal(a.gather(rows), b.gather(rows))


def test_checkpoint_file_weights_are_loaded_and_keyed_by_content(nsd_hdf5, tmp_path, store):
    torch.manual_seed(7)
    model = open_clip.model.CLIP(**model_config(get_spec("bigG-tiny")))
    ckpt = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), ckpt)
    teacher = create_teacher("bigG-tiny", weights=str(ckpt))
    assert teacher.weights["kind"] == "file" and len(teacher.weights["sha256"]) == 64
    src = open_source(nsd_hdf5, row_range="0:2")
    entry = open_entry(run(teacher, src, store, dtype="float32").entries[0].key, store)
    with h5py.File(nsd_hdf5) as f:
        x = (torch.from_numpy(f["images"][:2]).float() - MEAN) / STD
    visual = model.visual.eval()
    visual.output_tokens = True
    with torch.inference_mode():
        _, tokens = visual(x)
    np.testing.assert_allclose(entry.gather([0, 1]), tokens.numpy(), atol=1e-5, rtol=1e-5)
    random_key = entry_keys(create_teacher("bigG-tiny", weights="random", seed=7), src,
                            ["tokens"], "float32")["tokens"][0]  # fmt: skip
    assert random_key != entry.key  # same numbers, different weights identity: never conflated


def test_worker_processes_give_identical_bytes(nsd_hdf5, tmp_path, bigg_tiny):
    from featstore.store import Store

    entries = []
    for workers in (0, 2):
        store = Store(tmp_path / f"store-{workers}")
        result = extract(bigg_tiny, open_source(nsd_hdf5), store, batch_size=4, chunk_rows=8,
                         num_workers=workers, progress=False, log=lambda *_: None)  # fmt: skip
        entries.append(open_entry(result.entries[0].key, store))
    np.testing.assert_array_equal(
        entries[0].gather(np.arange(20)), entries[1].gather(np.arange(20))
    )


def test_bad_image_in_a_worker_is_named(image_folder, store, bigg_tiny):
    from featstore.errors import SourceError

    (image_folder / "img2.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(SourceError, match="img2.png"):
        extract(bigg_tiny, open_source(image_folder), store, batch_size=2, num_workers=2,
                progress=False, log=lambda *_: None)  # fmt: skip
    assert store.entries() == []


def test_default_chunks_are_whole_batches():
    from featstore.extract import default_chunk_rows
    from featstore.teachers import teacher_outputs

    tokens = teacher_outputs("bigG")["tokens"]  # 0.8125 MiB per row in fp16
    assert default_chunk_rows(tokens, "float16") == 39  # ~32 MiB
    assert default_chunk_rows(tokens, "float16", batch_size=16) == 32
    assert default_chunk_rows(tokens, "float16", batch_size=64) == 64  # never below one batch
    assert default_chunk_rows(teacher_outputs("bigG")["embeds"], "float16", 100) % 100 == 0


def test_local_hf_copy_is_loaded_and_keyed_by_content(captions, tmp_path, store, text_tiny):
    """The real loading path (from_pretrained on a local copy), keyed by file content."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

    from featstore.teachers.clip_text import TINY_TEXT, bundled_clip_tokenizer_files

    torch.manual_seed(3)
    model = CLIPTextModelWithProjection(CLIPTextConfig(**TINY_TEXT))
    local = tmp_path / "clip-text-local"
    model.save_pretrained(local)
    files = bundled_clip_tokenizer_files()
    CLIPTokenizer(str(files / "vocab.json"), str(files / "merges.txt")).save_pretrained(local)
    teacher = create_teacher("clip-l-text-tiny", weights=str(local))
    assert teacher.weights["kind"] == "path"
    src = open_source(captions)
    entry = open_entry(run(teacher, src, store, dtype="float32").entries[0].key, store)
    ids = torch.stack([text_tiny.preprocessor(src.load(i)) for i in range(len(src))])
    with torch.inference_mode():
        want = model.eval()(input_ids=ids).text_embeds.numpy()
    np.testing.assert_allclose(entry.gather(np.arange(len(src))), want, atol=1e-5)

    before = entry_keys(teacher, src, ["pooled"], "float32")["pooled"][0]
    torch.manual_seed(4)
    CLIPTextModelWithProjection(CLIPTextConfig(**TINY_TEXT)).save_pretrained(local)
    changed = create_teacher("clip-l-text-tiny", weights=str(local))
    assert entry_keys(changed, src, ["pooled"], "float32")["pooled"][0] != before


def test_text_teacher_rejects_image_preprocessing():
    from featstore.errors import FeatstoreError

    with pytest.raises(FeatstoreError, match="takes no option 'preprocessing'"):
        create_teacher("clip-l-text-tiny", weights="random", preprocessing="mindeye")
