"""Parity of the remaining CLIP teachers with a direct forward of the same library models,
and the keyed normalization option."""

from __future__ import annotations

import h5py
import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from featstore import open_entry
from featstore.extract import entry_keys, extract
from featstore.sources import open_source
from featstore.teachers import create_teacher, get_spec
from featstore.teachers._openclip import model_config
from featstore.teachers.openclip_text import VIECAP_TEMPLATES
from featstore.teachers.openclip_vision import OPENAI_MEAN, OPENAI_STD


def run(teacher, source, store, **kw):
    kw = {"dtype": "float32", "num_workers": 0, "progress": False, "log": lambda *_: None, **kw}
    return [open_entry(e.key, store) for e in extract(teacher, source, store, **kw).entries]


def seeded_clip(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return open_clip.model.CLIP(**model_config(get_spec(name))).eval()


@pytest.mark.parametrize("name,dim", [("clip-l-image-tiny", 24), ("vitb32-image-tiny", 16)])
def test_openclip_image_embeds(name, dim, nsd_hdf5, store):
    (entry,) = run(create_teacher(name, weights="random"), open_source(nsd_hdf5), store,
                   outputs=["embeds"])  # fmt: skip
    with h5py.File(nsd_hdf5) as f:
        x = torch.from_numpy(f["images"][:]).float()
    mean, std = (
        torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1),
        torch.tensor(OPENAI_STD).view(1, 3, 1, 1),
    )
    with torch.inference_mode():
        want = seeded_clip(name).encode_image((x - mean) / std)
    assert entry.row_shape == (dim,)
    np.testing.assert_allclose(entry.gather(np.arange(20)), want.numpy(), atol=1e-5, rtol=1e-4)


def test_vitb32_text(captions, store):
    (entry,) = run(create_teacher("vitb32-text-tiny", weights="random"), open_source(captions),
                   store)  # fmt: skip
    src = open_source(captions)
    texts = [src.load(i) for i in range(len(src))]
    with torch.inference_mode():
        want = seeded_clip("vitb32-text-tiny").encode_text(
            open_clip.get_tokenizer("ViT-B-32")(texts)
        )
    np.testing.assert_allclose(entry.gather(np.arange(len(src))), want.numpy(), atol=1e-5)


def test_vitb32_vocab_is_the_prompt_ensemble(tmp_path, store):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("dog\ncat\ntraffic light\n")
    (entry,) = run(create_teacher("vitb32-vocab-tiny", weights="random"),
                   open_source(vocab, kind="text-list"), store, batch_size=2)  # fmt: skip
    model, tok = seeded_clip("vitb32-vocab-tiny"), open_clip.get_tokenizer("ViT-B-32")
    assert len(VIECAP_TEMPLATES) == 7
    with torch.inference_mode():
        want = []
        for word in ("dog", "cat", "traffic light"):
            e = F.normalize(
                model.encode_text(tok([t.format(word) for t in VIECAP_TEMPLATES])), dim=-1
            )
            want.append(F.normalize(e.mean(0), dim=-1))
    np.testing.assert_allclose(entry.gather([0, 1, 2]), torch.stack(want).numpy(), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(entry.gather([0, 1, 2]), axis=1), 1, atol=1e-5)


def test_vitb16_patches_match_transformers(image_folder, nsd_hdf5, store):
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    teacher = create_teacher("vitb16-patch-tiny", weights="random")
    (entry,) = run(teacher, open_source(image_folder), store, batch_size=2)
    torch.manual_seed(0)
    model = CLIPVisionModel(CLIPVisionConfig(**get_spec("vitb16-patch-tiny").config["model_cfg"]))
    processor = CLIPImageProcessor()
    src = open_source(image_folder)
    pixels = processor(images=[Image.open(image_folder / p).convert("RGB") for p in src.ids],
                       return_tensors="pt")["pixel_values"]  # fmt: skip
    with torch.inference_mode():
        want = model.eval()(pixel_values=pixels).last_hidden_state[:, 1:]
    assert entry.row_shape == (196, 32)
    np.testing.assert_allclose(entry.gather(np.arange(5)), want.numpy(), atol=1e-4, rtol=1e-4)
    (from_hdf5,) = run(teacher, open_source(nsd_hdf5, row_range="0:2"), store)
    assert from_hdf5.gather([0, 1]).shape == (2, 196, 32)


def test_l2_normalization_is_applied_and_keyed(nsd_hdf5, store, bigg_tiny):
    src = open_source(nsd_hdf5, row_range="0:4")
    (raw,) = run(bigg_tiny, src, store, outputs=["embeds"])
    (unit,) = run(bigg_tiny, src, store, outputs=["embeds"], normalize="l2")
    assert raw.key != unit.key and unit.manifest["key_inputs"]["normalize"] == "l2"
    np.testing.assert_allclose(np.linalg.norm(unit.gather(np.arange(4)), axis=1), 1, atol=1e-6)
    want = raw.gather(np.arange(4)) / np.linalg.norm(
        raw.gather(np.arange(4)), axis=1, keepdims=True
    )
    np.testing.assert_allclose(unit.gather(np.arange(4)), want, atol=1e-6)
    (tokens,) = run(bigg_tiny, src, store, outputs=["tokens"], normalize="l2")  # per token
    np.testing.assert_allclose(np.linalg.norm(tokens[0], axis=-1), 1, atol=1e-5)
    base = entry_keys(bigg_tiny, src, ["embeds"], "float32")["embeds"][0]
    assert base == raw.key


@pytest.mark.parametrize("name", ["vitb32-text", "vitb32-vocab", "vitb16-patch", "clip-l-image"])
def test_new_teachers_default_to_real_weights(name, monkeypatch):
    from featstore.errors import FeatstoreError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FeatstoreError, match="cannot load"):
        create_teacher(name)
