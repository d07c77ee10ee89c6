"""minimind-v's chat data: JSONL reading, the chat template, the loss mask, placeholder runs and
truncation, on a tokenizer trained offline (MiniMind's special tokens and ChatML template)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from heads.data.chat_jsonl import ChatEncoder, ChatSample, pad_batch, read_chat_jsonl
from heads.errors import ConfigError, DataError
from heads.zoo.vlm import synthetic as syn

SYSTEM = "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n"
TWO_TURNS = ("<image>\nWhat shape is this?", "A red circle.", "And the colour?", "Blue and green!")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    texts = [
        "What shape is this?",
        "A red circle.",
        "Describe the picture.",
        "And the colour?",
        "Blue and green!",
    ]
    records = [{"conversations": [{"content": t}]} for t in texts]
    return syn.train_tokenizer(syn.corpus(records), tmp_path_factory.mktemp("tok"))


def encoder(tokenizer, **kw):
    return ChatEncoder(tokenizer, image_tokens=kw.pop("image_tokens", 8), **kw)


def sample(*turns, images=()):
    return ChatSample("test", tuple(turns), tuple(images))


def test_chat_template_round_trip(tokenizer):
    enc = encoder(tokenizer)
    s = sample("<image>\nWhat shape is this?", "A red circle.", images=["a.jpg"])
    text = enc.render(s.turns)
    expected = (
        SYSTEM + "<|im_start|>user\n" + "@" * 8 + "\nWhat shape is this?<|im_end|>\n"
        "<|im_start|>assistant\nA red circle.<|im_end|>\n"
    )
    assert text == expected
    e = enc.encode(s)
    assert tokenizer.decode(e.ids) == expected  # ids → text → the same ids
    assert tokenizer(expected, add_special_tokens=False)["input_ids"] == e.ids.tolist()
    assert e.ids[:1].tolist() == [1] and tokenizer.convert_ids_to_tokens(2) == "<|im_end|>"
    prompt = enc.prompt(["<image>\nWhat shape is this?"])
    assert tokenizer.decode(prompt.ids).endswith("<|im_end|>\n<|im_start|>assistant\n")


def test_loss_mask_on_a_hand_built_conversation(tokenizer):
    """minimind-v's rule: after each "<|im_start|>assistant", skip the newline; train on the
    answer, "<|im_end|>" and the newline after it; nothing of the system or user turns."""
    enc = encoder(tokenizer)
    s = sample(*TWO_TURNS, images=["a.jpg"])
    e = enc.encode(s)
    current, spans = [], []
    for token, target in zip(e.ids.tolist(), e.targets.tolist(), strict=True):
        if target:
            current.append(token)
        elif current:
            spans.append(tokenizer.decode(current))
            current = []
    if current:
        spans.append(tokenizer.decode(current))
    assert spans == ["A red circle.<|im_end|>\n", "Blue and green!<|im_end|>\n"]


def test_placeholder_runs_for_several_images_and_stray_text(tokenizer):
    enc = encoder(tokenizer)
    turns = ("<image><image>\nWhat shape is this? @", "A red circle.", "<image> And?", "Blue.")
    s = sample(*turns, images=["a.jpg", "b.jpg", "c.jpg"])
    e = enc.encode(s)
    assert len(e.image_starts) == 3
    assert e.image_starts[1] == e.image_starts[0] + 8  # two adjacent images: one run of 16
    for start in e.image_starts:
        assert (e.ids[start : start + 8] == enc.image_token_id).all()
    # the stray "@" in the text stays an ordinary token (a run shorter than one image)
    assert (e.ids == enc.image_token_id).sum() == 3 * 8 + 1
    bad = sample("<image>@\nWhat shape is this?", "A red circle.", images=["a.jpg"])
    with pytest.raises(DataError, match="test: '@' touches an <image> tag"):
        enc.check(bad)  # found in the text, before any tokenizing
    with pytest.raises(DataError, match="run of 9 tokens is not a whole number of images"):
        enc.encode(bad)


def test_truncation_never_cuts_a_placeholder_run(tokenizer):
    turns = (*TWO_TURNS[:2], "<image>\n" + TWO_TURNS[2], TWO_TURNS[3])
    s = sample(*turns, images=["a.jpg", "b.jpg"])
    full = encoder(tokenizer, max_length=4096).encode(s)
    second = full.image_starts[1]
    for cut in (second + 1, second + 4, second + 8):  # inside the run, or ending on it
        e = encoder(tokenizer, max_length=cut).encode(s)
        assert len(e.ids) == second and e.image_starts == full.image_starts[:1]
        assert (e.ids == full.ids[:second]).all() and (e.targets == full.targets[:second]).all()
    e = encoder(tokenizer, max_length=second + 9).encode(s)  # the whole run fits, text after it
    assert len(e.ids) == second + 9 and e.image_starts == full.image_starts


def test_pad_batch_pads_right_and_numbers_images_by_row(tokenizer):
    enc = encoder(tokenizer)
    a = enc.encode(sample("<image>\nWhat shape is this?", "A red circle.", images=["a.jpg"]))
    b = enc.encode(sample("Describe the picture.", "Blue and green!"))
    batch = pad_batch([b, a], enc.pad_id)
    assert batch["input_ids"].shape == (2, max(len(a.ids), len(b.ids)))
    assert (batch["input_ids"][0, len(b.ids) :] == enc.pad_id).all()
    assert not batch["targets"][0, len(b.ids) :].any()
    assert batch["image_starts"].tolist() == [[1, a.image_starts[0]]]


def test_reader_checks_roles_images_and_json(tmp_path):
    good = {"conversations": syn.turn("<image>\nWhat?", "A cat."), "image": " a.jpg "}
    two = {"conversations": syn.turn("<image><image> Which?", "Both."), "image": "a.jpg, sub/b.png"}
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(good) + "\n\n" + json.dumps(two) + "\n")
    samples = read_chat_jsonl(path)
    assert [s.images for s in samples] == [("a.jpg",), ("a.jpg", "sub/b.png")]
    assert samples[1].source == f"{path} line 3"
    cases = {
        r"line 1: 2 <image> tags but 1 images \(a.jpg\)": {
            "conversations": syn.turn("<image> <image>", "x"),
            "image": "a.jpg",
        },
        "turn 1 has role 'assistant', but turns alternate": {
            "conversations": [{"role": "assistant", "content": "hi"}]
        },
        'needs a non-empty "conversations" list': {"conversations": []},
        '"image" must be a string': {"conversations": syn.turn("hi", "x"), "image": ["a.jpg"]},
    }
    for message, record in cases.items():
        path.write_text(json.dumps(record) + "\n")
        with pytest.raises(DataError, match=message):
            read_chat_jsonl(path)
    path.write_text("{not json\n")
    with pytest.raises(DataError, match="line 1: not valid JSON"):
        read_chat_jsonl(path)


def test_encoder_refuses_a_placeholder_that_merges(tokenizer):
    with pytest.raises(ConfigError, match="placeholder must be one token that never merges"):
        ChatEncoder(tokenizer, image_token="red ", image_tokens=4)
    with pytest.raises(ConfigError, match="cannot hold one image"):
        ChatEncoder(tokenizer, max_length=100, image_tokens=196)


def test_offline_synthetic_tokenizer_keeps_minimind_special_ids(tokenizer):
    """The demo's offline-trained tokenizer (not MiniMind's own, which needs the hub) keeps
    MiniMind's ids: pad 0, <|im_start|> 1, <|im_end|> 2, and the placeholder "@" is one token
    (id 34, as in MiniMind's). MiniMind's real tokenizer was checked outside the repository
    (docs/heads/vlm.md, "How it was checked")."""
    assert tokenizer.pad_token_id == 0 and tokenizer.bos_token_id == 1
    assert tokenizer.eos_token_id == 2
    assert tokenizer("@" * 196, add_special_tokens=False)["input_ids"] == [34] * 196
    assert np.unique(encoder(tokenizer).encode(sample("hi", "ok")).ids).size > 3
