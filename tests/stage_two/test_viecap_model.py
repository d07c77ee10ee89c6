"""ViECap's parts: mapping network at seed size, prompts and loss masks, noise injection,
entities, entity detection, beam search, caption metrics and the Karpathy reader."""

from __future__ import annotations

import itertools
import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from heads.data.coco_karpathy import normalize_caption, read_coco_captions
from heads.errors import DataError
from heads.losses.sequence import masked_lm_loss
from heads.zoo.viecap import entities as ent
from heads.zoo.viecap.batching import SequenceLayout, caption_length, hard_prompt
from heads.zoo.viecap.decoding import beam_search, detect_entities, stop_token_ids
from heads.zoo.viecap.head import noise_injection
from heads.zoo.viecap.model import MappingNetwork, ViECapModel, load_language_model
from heads.zoo.viecap.synthetic import write_tokenizer


def test_mapping_network_at_seed_size_matches_the_original_count():
    with torch.device("meta"):
        net = MappingNetwork()  # 512 -> 10 x 768, 10 prefix tokens, 8 layers, 8 heads, ratio 2
        out = net(torch.zeros(4, 512))
    assert sum(p.numel() for p in net.parameters()) == 41_745_408
    assert out.shape == (4, 10, 768)
    names = set(dict(net.named_parameters()))
    expected = {
        "linear.weight",
        "prefix_const",
        "transformer.layers.7.attn.to_keys_values.weight",
        "transformer.layers.0.attn.project.bias",
        "transformer.layers.0.mlp.fc2.bias",
    }
    assert expected <= names
    assert "transformer.layers.0.attn.to_queries.bias" not in names  # q and kv without bias


def test_mapping_network_keeps_only_the_prefix_outputs():
    torch.manual_seed(0)
    net = MappingNetwork(clip_dim=8, d_model=16, clip_length=3, prefix_length=2, num_layers=1,
                         num_heads=2)  # fmt: skip
    x = torch.randn(5, 8)
    out = net(x)
    assert out.shape == (5, 2, 16)
    tokens = torch.cat((net.linear(x).view(5, 3, 16), net.prefix_const.expand(5, -1, -1)), 1)
    assert torch.allclose(out, net.transformer(tokens)[:, 3:], atol=1e-6)


def test_hard_prompt_text():
    assert hard_prompt(["person", "dog"]) == "There are person, dog in image."
    assert hard_prompt([]) == "There are something in image."


def test_sequence_layout_positions_by_hand():
    layout = SequenceLayout(soft_length=2, caption_length=4, max_entities=1)  # text <= 2-1+5+4=10
    prompts = [[11, 12, 13], [21, 22, 23, 24, 25, 26, 27, 28]]
    captions = [[31, 32, 33, 34, 35], [41, 42, 43]]  # the first is cut to 4 tokens
    b = layout.build(prompts, captions)
    assert b["tokens"].tolist() == [
        [11, 12, 13, 31, 32, 33, 34, 0, 0, 0],
        [21, 22, 23, 24, 25, 26, 27, 28, 41, 42],  # prompt + caption cut to 10
    ]
    assert b["prompt_lengths"].tolist() == [3, 8]
    assert b["attention_mask"].tolist() == [[1] * 9 + [0] * 3, [1] * 12]
    # loss on caption tokens only: soft (2) + prompt, then the caption
    assert b["loss_mask"].nonzero().tolist() == [[0, 5], [0, 6], [0, 7], [0, 8], [1, 10], [1, 11]]
    assert b["labels"][0, 5:9].tolist() == [31, 32, 33, 34]
    # the logits at the last prompt position (4) are scored against the first caption token
    logits = torch.full((2, 12, 50), -10.0)
    logits[0, 4, 31] = 10.0
    one = torch.zeros(2, 12, dtype=torch.bool)
    one[0, 5] = True
    assert masked_lm_loss(logits, b["labels"], one) < 1e-6
    # a real token 0 ("!" in GPT-2) is learned, not ignored as in the original
    zero = layout.build([[5]], [[0, 7]])
    assert zero["loss_mask"][0, 3:5].tolist() == [True, True]


def test_soft_only_layout_has_no_prompt():
    layout = SequenceLayout(soft_length=3, caption_length=5, use_hard_prompt=False)
    b = layout.build([[1, 2]], [[7, 8, 9]])
    assert b["tokens"].tolist() == [[7, 8, 9]] and b["prompt_lengths"].tolist() == [0]
    assert b["loss_mask"].nonzero()[:, 1].tolist() == [3, 4, 5]


def test_caption_length_rule():
    lengths = np.array([10, 12, 11, 13, 40])
    expected = min(int(lengths.mean() + 10 * lengths.std(ddof=1)), 40)
    assert caption_length(lengths) == expected == 40
    assert caption_length(np.array([10, 10, 10, 11])) == 11  # capped by the max


def test_noise_injection_statistics():
    torch.manual_seed(0)
    x = torch.randn(4000, 512) * 3
    out = noise_injection(x, 0.016)
    assert torch.allclose(out.norm(dim=-1), torch.ones(4000), atol=1e-5)
    # normalize(x) + N(0, 0.016 I): the cosine to x concentrates at 1 / sqrt(1 + 512 * 0.016)
    cos = (out * F.normalize(x, dim=-1)).sum(-1)
    assert cos.mean().item() == pytest.approx(1 / math.sqrt(1 + 512 * 0.016), rel=0.02)
    assert torch.equal(noise_injection(x, 0.0), x)


def test_entities_fallback_path():
    objects = frozenset(["dog", "bus", "glass", "leaf", "tree", "fire", "wave", "top"])
    nouns = ent.vocabulary_nouns("Two men walking dogs past the leaves, by a fire on top.", objects)
    assert nouns == ["man", "dog", "leaf", "fire", "top"]
    assert ent.filter_entities(nouns, objects) == ["person", "dog", "leaf"]  # stop words out
    assert ent.filter_entities(["woman", "boy", "bus"], objects) == ["person", "person", "bus"]
    many = [f"x{i}" for i in range(10)] + ["dog"]  # "at most 10" counts the nouns before the filter
    assert ent.filter_entities(many, objects | {"dog"}) == []


def test_entity_masking_rate_and_dedupe():
    rng = np.random.default_rng(0)
    kept = [len(ent.mask_entities(["a", "b", "c", "d"], 0.4, rng)) for _ in range(4000)]
    assert np.mean(kept) / 4 == pytest.approx(0.6, abs=0.02)
    assert ent.mask_entities(["person", "dog", "person"], 0.0, rng) == ["person", "dog"]


def test_entity_table_is_cached_once(tmp_path, monkeypatch):
    objects = frozenset(["dog", "cat"])
    texts = ["A dog.", "Two cats and a dog."]
    first = ent.EntityTable.build(texts, objects, "vocabulary", cache_dir=tmp_path, ids=[7, 9])
    assert first.entities == [["dog"], ["cat", "dog"]] and len(list(tmp_path.iterdir())) == 1
    monkeypatch.setattr(ent, "vocabulary_nouns", lambda *a: pytest.fail("recomputed"))
    again = ent.EntityTable.build(texts, objects, "vocabulary", cache_dir=tmp_path, ids=[7, 9])
    assert again.entities == first.entities and again.tagged == 0
    with pytest.raises(ValueError, match="keyed by caption id"):
        ent.EntityTable.build(texts, objects, "vocabulary", cache_dir=tmp_path)


def test_entity_cache_is_keyed_by_caption_id(tmp_path, monkeypatch):
    objects = frozenset(["dog", "cat", "bus"])
    texts = {1: "A dog.", 2: "Two cats.", 3: "A bus and a dog.", 4: "A cat on a bus."}
    calls = []
    real = ent.vocabulary_nouns
    monkeypatch.setattr(ent, "vocabulary_nouns", lambda t, o: calls.append(t) or real(t, o))

    def build(ids, objs=objects, changed=None):
        calls.clear()
        got = {**texts, **(changed or {})}
        table = ent.EntityTable.build([got[i] for i in ids], objs, "vocabulary",
                                      cache_dir=tmp_path, ids=ids, log=lambda _: None)  # fmt: skip
        return dict(zip(ids, table.entities, strict=True)), len(calls)

    one, n = build([1, 2])
    assert n == 2 and one == {1: ["dog"], 2: ["cat"]}
    two, n = build([4, 2, 3])  # another subset in another order: only 3 and 4 are new
    assert n == 2 and two == {4: ["cat", "bus"], 2: ["cat"], 3: ["bus", "dog"]}
    three, n = build([3, 1])
    assert n == 0 and three == {3: ["bus", "dog"], 1: ["dog"]}
    assert len(list(tmp_path.iterdir())) == 1  # one sidecar, extended in place
    _, n = build([1, 2], changed={2: "Two buses."})  # a caption's text changed: it alone again
    assert n == 1 and build([2], changed={2: "Two buses."})[0] == {2: ["bus"]}
    other, n = build([1, 2, 3], objs=objects - {"dog"})  # another vocabulary: all again
    assert n == 3 and other == {1: [], 2: ["cat"], 3: ["bus"]}
    assert len(list(tmp_path.iterdir())) == 2
    assert ent.cache_identity("vocabulary", 10, objects) != ent.cache_identity(
        "vocabulary", 9, objects
    )


@pytest.mark.skipif(not ent.nltk_ready(), reason="NLTK and its tagger data are not installed")
def test_entities_tagger_path():
    objects = frozenset(["dog", "frisbee", "park"])
    nouns = ent.nltk_nouns("A man throws frisbees to two dogs in the park.")
    assert {"man", "frisbee", "dog", "park"} <= set(nouns)
    assert ent.filter_entities(nouns, objects)[:1] == ["person"]


def test_entity_tagger_choice_errors():
    if not ent.nltk_ready():
        with pytest.raises(DataError, match="NLTK or its data is not installed"):
            ent.resolve_method("nltk")
    with pytest.raises(DataError, match="use 'auto', 'nltk' or 'vocabulary'"):
        ent.resolve_method("spacy-ish")


def test_object_vocabulary_files(tmp_path):
    (tmp_path / "v.txt").write_text("Dog\nfire hydrant\n\ncat \n")
    assert ent.load_object_vocabulary(tmp_path / "v.txt") == {"dog", "cat"}  # single words
    (tmp_path / "v.json").write_text(json.dumps(["tree", "stop sign"]))
    assert ent.load_object_vocabulary(tmp_path / "v.json") == {"tree"}
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(DataError, match="holds no single-word objects"):
        ent.load_object_vocabulary(tmp_path / "empty.txt")


def test_entity_detection_from_vocabulary_embeddings():
    vocab = torch.eye(4, 8)  # dog, cat, bus, tree
    names = ["dog", "cat", "bus", "tree"]
    images = torch.stack([vocab[0] * 5 + 0.01, vocab[0] + vocab[2] * 0.999, torch.ones(8)])
    found = detect_entities(images, vocab, names, top_k=3, threshold=0.4, temperature=0.01)
    assert found[0].entities == ["dog"] and found[0].probs[0] > 0.99
    assert found[1].entities == ["dog", "bus"]  # two close scores: both above 0.4
    assert found[2].entities == []  # a tie over four: each 0.25 < 0.4
    low = detect_entities(images[2:], vocab, names, top_k=2, threshold=0.2)
    assert len(low[0].entities) == 2  # a four-way tie at 0.25 >= 0.2: top_k caps the list


@pytest.fixture(scope="module")
def tiny_lm():
    torch.manual_seed(3)
    return load_language_model("gpt2", "random", vocab_size=6, eos_id=0, layers=1, width=16,
                               heads=2).eval()  # fmt: skip


def _brute_force_best(lm, prefix, stop, max_length, vocab=6):
    """Every continuation up to max_length (ending at a stop token or at the limit), ranked by
    mean log-probability, computed with full forward passes (no cache)."""
    best, best_seq = -math.inf, None
    for n in range(1, max_length + 1):
        for seq in itertools.product(range(vocab), repeat=n):
            if any(t in stop for t in seq[:-1]) or (n < max_length and seq[-1] not in stop):
                continue
            embeds = torch.cat((prefix, lm.get_input_embeddings()(torch.tensor(seq))), 0)
            logp = lm(inputs_embeds=embeds[None]).logits[0].log_softmax(-1)
            total = sum(logp[len(prefix) - 1 + i, t].item() for i, t in enumerate(seq))
            if total / n > best:
                best, best_seq = total / n, list(seq)
    return best_seq


@torch.no_grad()
def test_beam_search_finds_the_best_mean_log_prob_sequence(tiny_lm):
    torch.manual_seed(1)
    prefixes = [torch.randn(4, 16), torch.randn(2, 16)]
    stop = [5]
    # a beam as wide as every prefix of length 2 (6 x 6) prunes nothing: it is exhaustive
    wide = beam_search(tiny_lm, prefixes, stop, beam_width=36, max_length=3)
    for prefix, got in zip(prefixes, wide, strict=True):
        assert got == _brute_force_best(tiny_lm, prefix, stop, 3)
    # batching (left padding, position ids, the cache) changes nothing
    alone = [beam_search(tiny_lm, [p], stop, beam_width=5, max_length=6)[0] for p in prefixes]
    assert beam_search(tiny_lm, prefixes, stop, beam_width=5, max_length=6) == alone
    greedy = beam_search(tiny_lm, prefixes[:1], stop, beam_width=1, max_length=4)[0]
    seq = list(prefixes[0])
    steps = []
    for _ in range(4):
        embeds = torch.stack(seq)
        nxt = int(tiny_lm(inputs_embeds=embeds[None]).logits[0, -1].argmax())
        steps.append(nxt)
        seq.append(tiny_lm.get_input_embeddings()(torch.tensor(nxt)))
        if nxt in stop:
            break
    assert greedy == steps


def test_stop_tokens_are_the_periods(tmp_path):
    from heads.zoo.viecap.model import load_tokenizer

    tok = load_tokenizer(str(write_tokenizer(tmp_path / "t.json", ["A dog. A cat ."] * 20)))
    ids = stop_token_ids(tok)
    assert {tok.decode([i]).strip() for i in ids} == {"."}


def test_model_prompt_orders_place_the_soft_tokens(tiny_lm):
    torch.manual_seed(0)
    mapping = MappingNetwork(clip_dim=4, d_model=16, clip_length=2, prefix_length=3,
                             num_layers=1, num_heads=2)  # fmt: skip
    feats, tokens = torch.randn(2, 4), torch.tensor([[1, 2, 3, 4], [2, 3, 4, 0]])
    lengths = torch.tensor([2, 1])
    soft = mapping(feats)
    words = tiny_lm.get_input_embeddings()(tokens)
    first = ViECapModel(tiny_lm, mapping, "hard_first").input_embeddings(feats, tokens, lengths)
    for b, p in enumerate(lengths.tolist()):
        want = torch.cat((words[b, :p], soft[b], words[b, p:]))
        assert torch.allclose(first[b], want)
    soft_first = ViECapModel(tiny_lm, mapping, "soft_first").input_embeddings(feats, tokens)
    assert torch.allclose(soft_first, torch.cat((soft, words), 1))
    only = ViECapModel(tiny_lm, mapping, "hard_only")
    assert only.soft_length == 0 and torch.equal(only.input_embeddings(feats, tokens), words)


REFS = {
    1: ["A man riding a wave on top of a surfboard.", "A surfer rides a big wave."],
    2: ["Two dogs play with a frisbee in the park.", "Dogs playing in a grassy park."],
}


def test_caption_metrics_on_two_images():
    from heads.metrics.captioning import caption_scores, java_available, simple_tokenize

    exact = caption_scores(REFS, {1: REFS[1][0], 2: REFS[2][0]}, meteor=False)
    assert exact.scores["BLEU-4"] == pytest.approx(1.0, abs=1e-6)
    assert exact.scores["BLEU-1"] == pytest.approx(1.0, abs=1e-6)
    assert set(exact.per_image) == {1, 2} and "CIDEr" in exact.per_image[1]
    wrong = caption_scores(REFS, {1: "A cat sleeps on a sofa.", 2: "A bowl of fruit."}, False)
    assert wrong.scores["CIDEr"] < 0.2 < exact.scores["CIDEr"]
    assert wrong.scores["ROUGE-L"] < exact.scores["ROUGE-L"]
    assert exact.tokenizer == ("ptb" if java_available() else "python")
    assert "METEOR" not in exact.scores and exact.unavailable["METEOR"]
    if "SPICE" not in exact.scores:
        assert exact.unavailable["SPICE"]  # reported as unavailable, never as 0
    assert simple_tokenize("A man's dog, running!") == "a man 's dog running"


def test_meteor_is_wired_per_image(monkeypatch):
    """METEOR's scorer goes into the corpus and per-image scores (a stand-in for the Java jar,
    whose start takes 30-100 s here; HEADS_JAVA_METRICS=1 runs the real one below)."""
    import pycocoevalcap.meteor.meteor as meteor_mod

    from heads.metrics import captioning

    class FakeMeteor:
        def compute_score(self, gts, res):
            per = [float(len(res[k][0])) for k in gts]
            return sum(per) / len(per), per

    monkeypatch.setattr(meteor_mod, "Meteor", FakeMeteor)
    monkeypatch.setattr(captioning, "java_available", lambda: True)
    monkeypatch.setattr(captioning, "_tokenize", lambda caps, ptb: caps)
    scored = captioning.caption_scores(REFS, {1: "ab", 2: "abcd"}, spice=False)
    assert scored.scores["METEOR"] == 3.0
    assert scored.per_image[1]["METEOR"] == 2.0 and scored.per_image[2]["METEOR"] == 4.0


@pytest.mark.skipif(
    not os.environ.get("HEADS_JAVA_METRICS"), reason="set HEADS_JAVA_METRICS=1 (Java, ~1 min)"
)
def test_meteor_with_java():
    from heads.metrics.captioning import caption_scores

    exact = caption_scores(REFS, {1: REFS[1][0], 2: REFS[2][0]}, spice=False)
    assert exact.scores["METEOR"] > 0.9


def test_karpathy_reader_and_caption_cleaning(tmp_path):
    data = {"images": [
        {"cocoid": 7, "filepath": "val2014", "filename": "a.jpg", "split": "test",
         "sentences": [{"sentid": 1, "raw": "A DOG ON A MAT"}, {"sentid": 2, "raw": "a cat!"}]},
        {"cocoid": 8, "filepath": "train2014", "filename": "b.jpg", "split": "restval",
         "sentences": [{"sentid": 3, "raw": "  two birds  "}]},
    ]}  # fmt: skip
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps(data))
    caps = read_coco_captions(path)
    assert caps.caption_ids.tolist() == [1, 2, 3] and caps.files[7] == "val2014/a.jpg"
    assert caps.references("test") == {7: ["A DOG ON A MAT", "a cat!"]}
    assert caps.select("train+restval").tolist() == [2]
    with pytest.raises(DataError, match="no captions in split 'val'"):
        caps.select("val")
    assert [normalize_caption(t) for t in caps.texts] == ["A dog on a mat.", "A cat!", "Two birds."]
    path.write_text(json.dumps({"images": [{"cocoid": 1}]}))
    with pytest.raises(DataError, match="not Karpathy's dataset_coco.json"):
        read_coco_captions(path)
