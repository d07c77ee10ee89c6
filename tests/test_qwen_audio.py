"""The qwen-audio teacher: text → MMS-TTS → log-mel → Qwen2AudioEncoder, ragged valid frames.

Tiny random-weight models only (no hub): parity with a direct chain of the same transformers
classes, batch independence of the seeded TTS, text errors, and loading only the audio tower of a
(fake, tiny) Qwen2-Audio checkpoint from a local directory or an offline HF cache.
"""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers import VitsConfig, VitsModel, VitsTokenizer, WhisperFeatureExtractor
from transformers.models.qwen2_audio.configuration_qwen2_audio import Qwen2AudioEncoderConfig
from transformers.models.qwen2_audio.modeling_qwen2_audio import Qwen2AudioEncoder

import featstore.teachers
from featstore import open_entry
from featstore.errors import FeatstoreError, SourceError
from featstore.extract import entry_keys, extract
from featstore.sources import open_source
from featstore.store import Store
from featstore.teachers import create_teacher, get_spec, resolve_weights, teacher_outputs
from featstore.teachers import qwen_audio as qa
from featstore.teachers.base import TeacherSpec

if "qwen-audio" not in {s.family for s in featstore.teachers.list_teachers()}:
    featstore.teachers.register_family("qwen-audio", qa)

# the last is the first one's TTS input again (case and punctuation are not spoken)
SENTENCES = ["A cat on a mat.", "Two dogs playing!", "a red bus", "snow on the mountains",
             "a cat on a mat"]  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models are dominated by thread wake-ups on small CPUs: one thread is ~50x faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny():
    return create_teacher("qwen-audio-tiny", weights="random")


@pytest.fixture
def sentences(tmp_path):
    path = tmp_path / "sentences.jsonl"
    path.write_text("\n".join(json.dumps({"id": i, "text": t}) for i, t in enumerate(SENTENCES)))
    return path


def run(teacher, path, root, **kw):
    kw = {"dtype": "float32", "num_workers": 0, "progress": False, "log": lambda *_: None,
          "batch_size": 2, **kw}  # fmt: skip
    return extract(teacher, open_source(path), Store(root), **kw)


def direct_chain(sentences: list[str], tts_noise: str = "seeded") -> list[np.ndarray]:
    """The same transformers classes, built and chained without featstore's teacher code."""
    vocab = {c: i for i, c in enumerate(qa.CHAR_VOCAB)}
    tok_dir = qa.bundled_char_vocab()
    assert json.loads((tok_dir / "vocab.json").read_text()) == vocab
    tokenizer = VitsTokenizer(str(tok_dir / "vocab.json"), phonemize=False)  # normalize, add_blank
    torch.manual_seed(0)
    tts = VitsModel(VitsConfig(**qa.TINY_TTS, vocab_size=len(vocab))).eval()
    if tts_noise == "zero":
        tts.noise_scale = tts.noise_scale_duration = 0.0
    torch.manual_seed(0)
    encoder = Qwen2AudioEncoder(Qwen2AudioEncoderConfig(**qa.TINY_ENCODER)).eval()
    fe = WhisperFeatureExtractor(feature_size=80, sampling_rate=16000, hop_length=800, n_fft=400,
                                 chunk_length=3)  # fmt: skip
    assert fe.nb_max_frames == 2 * encoder.config.max_source_positions == 60
    out = []
    with torch.inference_mode():
        for s in sentences:
            ids = tokenizer(s, return_tensors="pt")["input_ids"]
            torch.manual_seed(qa.tts_seed(ids[0]))
            tts_out = tts(input_ids=ids)
            wave = tts_out.waveform[0, : int(tts_out.sequence_lengths[0])].numpy()
            feats = fe(wave, sampling_rate=16000, return_tensors="pt", return_attention_mask=True)
            n_in = int(feats["attention_mask"].sum())
            # Qwen2AudioModel's mask: conv2 frames past (L-1)//2+1 are padding (additive, 4D)
            n_conv = (n_in - 1) // 2 + 1
            mask = torch.zeros(1, 1, 30, 30)
            mask[..., n_conv:] = torch.finfo(torch.float32).min
            hidden = encoder(feats["input_features"], attention_mask=mask).last_hidden_state
            out.append(hidden[0, : ((n_in - 1) // 2 + 1 - 2) // 2 + 1].numpy())
    return out


def test_specs_outputs_and_valid_length_formula():
    real = teacher_outputs("qwen-audio")
    assert real["frames"].shape == (None, 1280) and real["frames"].ragged
    assert real["pooled"].shape == (1280,) and not real["pooled"].ragged
    assert teacher_outputs("qwen-audio-tiny")["frames"].row_shape == (32,)
    assert get_spec("qwen-audio").modality == "text"
    # the formula is transformers' own: Qwen2AudioEncoder._get_feat_extract_output_lengths
    lengths = torch.arange(1, 3001)
    _, want = Qwen2AudioEncoder._get_feat_extract_output_lengths(None, lengths)
    assert [qa.valid_frames(n) for n in range(1, 3001)] == want.tolist()
    assert qa.valid_frames(3000) == 750 and qa.valid_frames(60) == 15


def test_tiny_encoder_window_and_ragged_frames(tiny):
    encoder = tiny.model["encoder"]
    with torch.inference_mode():
        full = encoder(torch.zeros(1, 80, 60)).last_hidden_state
        out = tiny.forward(tiny.collate([tiny.preprocessor(s) for s in SENTENCES[:3]]),
                           ["frames", "pooled"])  # fmt: skip
    assert full.shape == (1, 15, 32)
    lengths = [f.shape[0] for f in out["frames"]]
    assert all(f.shape[1:] == (32,) for f in out["frames"]) and all(0 < n <= 15 for n in lengths)
    assert len(set(lengths)) > 1, "sentences of different lengths give different T"
    torch.testing.assert_close(out["pooled"], torch.stack([f.mean(0) for f in out["frames"]]))


def test_extracted_entries_equal_direct_chain(tiny, sentences, tmp_path):
    result = run(tiny, sentences, tmp_path / "s", outputs=["frames", "pooled"])
    frames = open_entry(result.entries[0].key, Store(tmp_path / "s"))
    pooled = open_entry(result.entries[1].key, Store(tmp_path / "s"))
    want = direct_chain(SENTENCES)
    assert frames.ragged and frames.row_shape == (32,) and pooled.row_shape == (32,)
    np.testing.assert_array_equal(frames.lengths(), [len(w) for w in want])
    for got, w in zip(frames.gather(np.arange(len(SENTENCES))), want, strict=True):
        np.testing.assert_allclose(got, w, atol=1e-5, rtol=1e-5)
    want_pooled = np.stack([w.mean(0) for w in want])
    np.testing.assert_allclose(pooled.gather(np.arange(len(SENTENCES))), want_pooled,
                               atol=1e-5, rtol=1e-5)  # fmt: skip
    # without Qwen2AudioModel's padding mask the frames attend to the padding: other values
    unmasked = create_teacher("qwen-audio-tiny", weights="random", encoder_mask="none")
    with torch.inference_mode():
        items = unmasked.collate([unmasked.preprocessor(s) for s in SENTENCES])
        other = unmasked.forward(items, ["pooled"])["pooled"].numpy()
    assert not np.allclose(other, want_pooled, atol=1e-3)
    src = open_source(sentences)
    assert (
        len({entry_keys(t, src, ["frames"], "float32")["frames"][0] for t in (tiny, unmasked)}) == 2
    )


def test_bytes_do_not_depend_on_batch_size_or_rng_state(tiny, sentences, tmp_path):
    entries = []
    for b in (1, 3):
        torch.manual_seed(1234 + b)  # the global RNG state must not matter either
        key = run(tiny, sentences, tmp_path / f"b{b}", batch_size=b).entries[0].key
        entries.append(open_entry(key, Store(tmp_path / f"b{b}")))
    rows = np.arange(len(SENTENCES))
    one, three = entries[0].gather(rows), entries[1].gather(rows)
    for a, b in zip(one, three, strict=True):
        assert a.tobytes() == b.tobytes()
    # the same TTS input gives the same audio wherever it sits in a batch
    assert one[0].tobytes() == one[4].tobytes()


def test_tts_is_seeded_per_sentence_and_leaves_the_rng_alone(tiny):
    ids = tiny.preprocessor("a red bus")
    copy = pickle.loads(pickle.dumps(tiny.preprocessor))  # it runs in DataLoader workers
    assert torch.equal(copy("a red bus")["input_ids"], ids["input_ids"])
    state = torch.get_rng_state()
    first = tiny.synthesize(ids["input_ids"], ids["seed"])
    assert torch.equal(torch.get_rng_state(), state)
    torch.rand(7)
    assert torch.equal(tiny.synthesize(ids["input_ids"], ids["seed"]), first)
    other = tiny.synthesize(ids["input_ids"], ids["seed"] + 1)
    assert not torch.equal(other[: len(first)], first[: len(other)])


def test_zero_noise_is_another_key_and_other_audio(tiny, sentences, tmp_path):
    zero = create_teacher("qwen-audio-tiny", weights="random", tts_noise="zero")
    src = open_source(sentences)
    keys = [entry_keys(t, src, ["frames"], "float32")["frames"][0] for t in (tiny, zero)]
    assert keys[0] != keys[1]
    assert zero.identity()["preprocessing"]["tts_noise"] == "zero"
    result = run(zero, sentences, tmp_path / "z")
    got = open_entry(result.entries[0].key, Store(tmp_path / "z")).gather(np.arange(3))
    want = direct_chain(SENTENCES[:3], tts_noise="zero")
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-5)
    seeded = direct_chain(SENTENCES[:1])[0]
    assert got[0].shape != seeded.shape or not np.allclose(got[0], seeded)


def test_characters_the_tts_lacks_are_named(tiny, tmp_path):
    with pytest.raises(SourceError, match=r"lacks: 'é', '5', '%'"):
        tiny.preprocessor("The café is 5% off.")
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": 0, "text": "a cat"}\n{"id": 1, "text": "naïve & co"}\n')
    with pytest.raises(SourceError, match=r"'naïve & co' has characters .* lacks: 'ï', '&'"):
        run(tiny, path, tmp_path / "s")
    assert not list((tmp_path / "s").glob("*/manifest.json"))
    # punctuation MMS-TTS drops by design, case and typographic apostrophes are fine
    assert torch.equal(tiny.preprocessor("Don’t  stop!")["input_ids"],
                       tiny.preprocessor("don't stop")["input_ids"])  # fmt: skip


@pytest.mark.parametrize("text", ["", "   ", "?!...", 3])
def test_empty_sentences_are_errors(tiny, text):
    with pytest.raises(SourceError, match="empty|expected a sentence"):
        tiny.preprocessor(text)


def test_audio_longer_than_the_window_is_an_error(tiny, tmp_path):
    path = tmp_path / "long.jsonl"
    long = "the quick brown fox jumps over the lazy dog " * 3
    path.write_text(json.dumps({"id": 0, "text": long}))
    with pytest.raises(SourceError, match=r"'the quick brown.*s of speech, longer than .* 3 s"):
        run(tiny, path, tmp_path / "s")


def test_options_are_checked():
    with pytest.raises(FeatstoreError, match="unknown tts_noise"):
        create_teacher("qwen-audio-tiny", weights="random", tts_noise="loud")
    with pytest.raises(FeatstoreError, match="no option 'speed'"):
        create_teacher("qwen-audio-tiny", weights="random", speed=2)
    with pytest.raises(FeatstoreError, match="no option 'preprocessing'"):
        create_teacher("qwen-audio-tiny", weights="random", preprocessing="mindeye")
    with pytest.raises(FeatstoreError, match="no pretrained weights"):
        create_teacher("qwen-audio-tiny", weights="pretrained")
    with pytest.raises(FeatstoreError, match="unknown text_normalizer 'roman'"):
        create_teacher("qwen-audio-tiny", text_normalizer="roman")
    assert create_teacher("qwen-audio-tiny").weights["encoder"]["kind"] == "random"


def test_digits_need_the_numbers_normalizer(tmp_path):
    path = tmp_path / "digits.jsonl"
    path.write_text(json.dumps({"id": 0, "text": "object number 0"}) + "\n")
    with pytest.raises(SourceError, match="text_normalizer=numbers"):
        run(create_teacher("qwen-audio-tiny"), path, tmp_path / "a", outputs=["pooled"])
    spoken = run(create_teacher("qwen-audio-tiny", text_normalizer="numbers"), path,
                 tmp_path / "b", outputs=["pooled"]).entries[0]  # fmt: skip
    words = tmp_path / "words.jsonl"
    words.write_text(json.dumps({"id": 0, "text": "object number zero"}) + "\n")
    plain = run(create_teacher("qwen-audio-tiny"), words, tmp_path / "c", outputs=["pooled"])
    assert spoken.key != plain.entries[0].key  # the normalizer is part of the key
    a = open_entry(spoken.key, Store(tmp_path / "b"))[0]
    b = open_entry(plain.entries[0].key, Store(tmp_path / "c"))[0]
    np.testing.assert_array_equal(a, b)  # ... and speaks the same words


def _tiny_tower_state(prefix: str = "audio_tower.") -> dict[str, torch.Tensor]:
    torch.manual_seed(0)  # the same weights as qwen-audio-tiny with weights="random", seed 0
    encoder = Qwen2AudioEncoder(Qwen2AudioEncoderConfig(**qa.TINY_ENCODER))
    return {prefix + k: v.contiguous() for k, v in encoder.state_dict().items()}


def _write_checkpoint(folder, tower: dict[str, torch.Tensor], sharded: bool = True):
    folder.mkdir(parents=True)
    config = {"model_type": "qwen2_audio", "audio_token_index": 151646,
              "audio_config": {"model_type": "qwen2_audio_encoder", **qa.TINY_ENCODER}}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    lm = {"language_model.model.embed_tokens.weight": torch.randn(8, 4),
          "multi_modal_projector.linear.weight": torch.randn(4, 32)}  # fmt: skip
    if not sharded:
        save_file({**tower, **lm}, str(folder / "model.safetensors"))
        return folder
    save_file({**tower, "multi_modal_projector.linear.weight": torch.randn(4, 32)},
              str(folder / "model-00001-of-00002.safetensors"))  # fmt: skip
    # the language-model shard is not even valid: reading it would fail the test
    (folder / "model-00002-of-00002.safetensors").write_bytes(b"not a safetensors file")
    weight_map = {k: "model-00001-of-00002.safetensors" for k in tower}
    weight_map["multi_modal_projector.linear.weight"] = "model-00001-of-00002.safetensors"
    weight_map["language_model.model.embed_tokens.weight"] = "model-00002-of-00002.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return folder


def test_local_checkpoint_loads_only_the_audio_tower(tiny, tmp_path):
    folder = _write_checkpoint(tmp_path / "ckpt", _tiny_tower_state())
    teacher = create_teacher("qwen-audio-tiny", weights=str(folder))
    assert teacher.weights["encoder"]["kind"] == "path"
    assert len(teacher.weights["encoder"]["sha256"]) == 64
    for k, v in tiny.model["encoder"].state_dict().items():
        torch.testing.assert_close(teacher.model["encoder"].state_dict()[k], v, rtol=0, atol=0)
    items = teacher.collate([teacher.preprocessor(s) for s in SENTENCES[:2]])
    with torch.inference_mode():
        got, want = teacher.forward(items, ["pooled"]), tiny.forward(items, ["pooled"])
    torch.testing.assert_close(got["pooled"], want["pooled"])
    # transformers-5 names ("model.audio_tower.*") in a single-file checkpoint load too
    single = _write_checkpoint(tmp_path / "v5", _tiny_tower_state("model.audio_tower."), False)
    other = create_teacher("qwen-audio-tiny", weights=str(single))
    assert other.weights["encoder"]["sha256"] != teacher.weights["encoder"]["sha256"]


def test_checkpoints_without_an_audio_tower_are_refused(tmp_path):
    folder = _write_checkpoint(tmp_path / "lm-only", {}, sharded=False)
    with pytest.raises(FeatstoreError, match=r"has no audio_tower\.\* weights"):
        create_teacher("qwen-audio-tiny", weights=str(folder))
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    with pytest.raises(FeatstoreError, match="no audio_config"):
        create_teacher("qwen-audio-tiny", weights=str(tmp_path / "plain"))
    with pytest.raises(FeatstoreError, match="neither 'pretrained', 'random' nor a checkpoint"):
        create_teacher("qwen-audio-tiny", weights=str(tmp_path / "missing"))


def test_hub_checkpoint_fetches_only_tower_shards_from_the_offline_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--Qwen--Fake-Audio"
    snapshot = _write_checkpoint(repo / "snapshots" / commit, _tiny_tower_state())
    (snapshot / "model-00002-of-00002.safetensors").unlink()  # never downloaded
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    spec = get_spec("qwen-audio-tiny")
    spec = TeacherSpec("qwen-audio-fake", spec.family, spec.modality, spec.description,
                       {**spec.config, "repo": "Qwen/Fake-Audio"})  # fmt: skip
    teacher = qa.QwenAudioTeacher(spec, resolve_weights(spec, None, 0, hub_ids=True))
    assert teacher.weights["encoder"] == {"kind": "pretrained", "repo": "Qwen/Fake-Audio",
                                          "revision": commit}  # fmt: skip
