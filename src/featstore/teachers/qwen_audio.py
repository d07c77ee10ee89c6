"""Qwen2-Audio's audio tower over synthesized speech: text → MMS-TTS → log-mel → encoder frames.

Per sentence: ``VitsModel`` (MMS-TTS, "facebook/mms-tts-eng", 16 kHz) speaks it; a
``WhisperFeatureExtractor`` (128 mels, hop 160, n_fft 400, 30 s window) turns the waveform into
``input_features [1,128,3000]`` and a frame mask; ``Qwen2AudioEncoder`` (the audio tower of
"Qwen/Qwen2-Audio-7B-Instruct", loaded alone, never the 7B language model) maps them to
``last_hidden_state [1,750,1280]`` (25 Hz). Only the valid frames are kept:

- ``frames`` — ragged ``[T_i, 1280]``, ``T = ((L-1)//2+1 - 2)//2 + 1`` for ``L`` valid mel frames
  (``Qwen2AudioEncoder._get_feat_extract_output_lengths``: conv2 has stride 2, then the AvgPool1d).
- ``pooled`` — ``[1280]``, the mean of those frames.

The encoder gets the same attention mask ``Qwen2AudioModel.forward`` builds for it (padding
frames after conv2 are masked) unless ``encoder_mask="none"``.

TTS noise: VITS samples noise with the global RNG (``torch.randn`` / ``randn_like`` with no
generator; ``noise_scale`` 0.667, ``noise_scale_duration`` 0.8). ``tts_noise="seeded"`` (default)
speaks each sentence alone with the RNG seeded from a hash of its TTS input (the token ids), and
restores the RNG afterwards: the same sentence always gives the same audio, whatever its batch.
``tts_noise="zero"`` sets both noise scales to 0. The TTS runs in fp32 (autocast off) so its
durations, and hence ``T``, do not depend on ``--precision``. Every sentence is also encoded on its
own (its window is padded to 30 s anyway), so stored bytes do not depend on ``--batch-size``.
Seeded noise on a GPU is drawn by the CUDA generator: reproducible there, but not the CPU's audio.

Text: whitespace runs become one space and typographic apostrophes become ``'``; the punctuation
MMS-TTS drops by design (``.,;:!?"()[]{}…“”«»¡¿``) is dropped; any other character the TTS
vocabulary lacks (after lowercasing, as ``VitsTokenizer`` does) is a ``SourceError`` naming it,
where the tokenizer would silently drop it. Audio longer than the encoder's window is a
``SourceError`` naming the sentence (never silently truncated).

Weights: ``weights`` is the encoder: "pretrained" (the spec's repo: only ``config.json``, the
safetensors index and the shards that hold ``audio_tower.*`` are fetched with ``hf_hub_download``,
and only those tensors are read), "random", or a local checkpoint directory. ``tts`` is the TTS:
a hub repo, a local directory, or "random" (the tiny spec's default).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import FeatstoreError, SourceError
from ..hashing import canonical_json, directory_digest, file_digest
from . import register_family
from ._bundled import bundled_files
from ._numbers import NORMALIZERS, normalize_numbers
from .base import OutputSpec, Preprocessor, Teacher, TeacherSpec, Weights

TTS_REPO = "facebook/mms-tts-eng"
ENCODER_REPO = "Qwen/Qwen2-Audio-7B-Instruct"
# Qwen2-Audio checkpoints name the tower "audio_tower.*"; transformers 5 renames that to
# "model.audio_tower.*" when it loads one (conversion_mapping.py, "qwen2_audio"): accept both.
TOWER_PREFIXES = ("audio_tower.", "model.audio_tower.")
NOISE_MODES = ("seeded", "zero")
ENCODER_MASKS = ("qwen2-audio", "none")
SILENT_PUNCTUATION = '.,;:!?"()[]{}…“”«»¡¿'
APOSTROPHES = "’‘ʼ"
TEXT_RULES = "v1: collapse whitespace; typographic apostrophes -> '; drop silent punctuation"
CHAR_VOCAB = "_ '-abcdefghijklmnopqrstuvwxyz"  # "_" (id 0) is the blank add_blank inserts


def valid_frames(n_input_frames: int) -> int:
    """Encoder output frames for ``L`` valid mel frames (``_get_feat_extract_output_lengths``)."""
    return ((n_input_frames - 1) // 2 + 1 - 2) // 2 + 1


def bundled_char_vocab() -> Path:
    """A character vocabulary for random-weight TTS (no hub): ``vocab.json`` in the user's
    cache (see ``_bundled``)."""
    vocab = json.dumps({c: i for i, c in enumerate(CHAR_VOCAB)})
    return bundled_files("tts-chars-v1", {"vocab.json": lambda: vocab})


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def tts_text(sentence: Any, vocab: set[str]) -> str:
    """The text the TTS will read, or a SourceError naming what it cannot read."""
    if not isinstance(sentence, str):
        raise SourceError(f"expected a sentence (str), got {type(sentence).__name__}")
    text = re.sub(r"\s+", " ", sentence).strip()
    if "'" in vocab:
        text = text.translate({ord(a): "'" for a in APOSTROPHES})
    missing: list[str] = []
    for ch in text:
        if ch in vocab or ch in SILENT_PUNCTUATION or all(c in vocab for c in ch.lower()):
            continue
        if ch not in missing:
            missing.append(ch)
    if missing:
        raise SourceError(
            f"sentence {_short(sentence)!r} has characters the TTS vocabulary lacks: "
            f"{', '.join(repr(c) for c in missing)}. Spell them out (e.g. '%' as 'percent') "
            f"or remove them; the TTS would silently skip them. Digits: pass --teacher-option "
            f"text_normalizer=numbers to speak numbers as words."
        )
    spoken = "".join(c for c in text.lower() if c in vocab).strip()
    if not spoken:
        raise SourceError(f"sentence {_short(sentence)!r} is empty: there is nothing to speak.")
    return text


def tts_seed(input_ids: torch.Tensor) -> int:
    """A stable 63-bit seed from the TTS input: equal inputs get equal noise."""
    data = np.ascontiguousarray(input_ids.numpy(), dtype="<i8").tobytes()
    digest = hashlib.sha256(b"featstore-qwen-audio-tts\0" + data).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class QwenAudioPreprocessor(Preprocessor):
    """Sentence → ``{"sentence", "input_ids" [n], "seed"}`` (the VITS tokenizer; no model)."""

    def __init__(
        self,
        tokenizer,
        tokenizer_id: dict[str, Any],
        tts_noise: str,
        extra: dict,
        text_normalizer: str = "none",
    ):
        self.text_normalizer = text_normalizer
        self.tokenizer = tokenizer
        self.tokenizer_id = tokenizer_id
        self.tts_noise = tts_noise
        self.extra = extra
        self.vocab = set(tokenizer.encoder)

    def identity(self) -> dict[str, Any]:
        return {"tokenizer": self.tokenizer_id, "text": TEXT_RULES,
                "silent_punctuation": SILENT_PUNCTUATION, "apostrophes": APOSTROPHES,
                "tts_noise": self.tts_noise,
                "tts_seed": "sha256(token ids)" if self.tts_noise == "seeded" else None,
                "tts_precision": "fp32", **self.extra}  # fmt: skip

    def __call__(self, item: Any) -> dict[str, Any]:
        spoken = normalize_numbers(item) if self.text_normalizer == "numbers" else item
        text = tts_text(spoken, self.vocab)
        ids = torch.tensor(self.tokenizer(text)["input_ids"], dtype=torch.long)
        return {"sentence": item, "input_ids": ids, "seed": tts_seed(ids)}


REAL_FEATURES = {"feature_size": 128, "sampling_rate": 16000, "hop_length": 160, "n_fft": 400,
                 "chunk_length": 30}  # fmt: skip
REAL_ENCODER = {"d_model": 1280, "encoder_layers": 32, "encoder_attention_heads": 20,
                "encoder_ffn_dim": 5120, "num_mel_bins": 128,
                "max_source_positions": 1500}  # fmt: skip
# Tiny: 60 input frames = 2 * max_source_positions: n_samples = 3 s * 16 kHz, hop 800.
TINY_FEATURES = {"feature_size": 80, "sampling_rate": 16000, "hop_length": 800, "n_fft": 400,
                 "chunk_length": 3}  # fmt: skip
TINY_ENCODER = {"d_model": 32, "encoder_layers": 2, "encoder_attention_heads": 2,
                "encoder_ffn_dim": 32, "num_mel_bins": 80, "max_source_positions": 30}  # fmt: skip
TINY_TTS = {
    "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "ffn_dim": 16,
    "flow_size": 8, "spectrogram_bins": 9, "upsample_initial_channel": 8,
    "upsample_rates": [16, 16], "upsample_kernel_sizes": [32, 32], "resblock_kernel_sizes": [3],
    "resblock_dilation_sizes": [[1]], "depth_separable_num_layers": 1,
    "duration_predictor_filter_channels": 8, "duration_predictor_num_flows": 1,
    "prior_encoder_num_flows": 1, "prior_encoder_num_wavenet_layers": 1,
    "posterior_encoder_num_wavenet_layers": 1, "wavenet_kernel_size": 3,
}  # fmt: skip

SPECS = [
    TeacherSpec(
        "qwen-audio", "qwen-audio", "text",
        "Qwen2-Audio-7B-Instruct audio tower over MMS-TTS (eng) speech: frames [T,1280] (25 Hz), "
        "pooled [1280]",
        {"repo": ENCODER_REPO, "tts": TTS_REPO, "width": 1280, "encoder_cfg": REAL_ENCODER,
         "features": REAL_FEATURES},
    ),
    TeacherSpec(
        "qwen-audio-tiny", "qwen-audio", "text",
        "qwen-audio's pipeline at toy size (tiny VITS, 2-layer width-32 encoder, 3 s window), "
        "random weights; for tests",
        {"tts": "random", "tts_cfg": TINY_TTS, "width": 32, "encoder_cfg": TINY_ENCODER,
         "features": TINY_FEATURES},
    ),
]  # fmt: skip


def outputs_for(spec: TeacherSpec) -> dict[str, OutputSpec]:
    width = spec.config["width"]
    return {
        "frames": OutputSpec(
            (None, width), "Qwen2-Audio encoder last_hidden_state, valid frames only (ragged)"
        ),
        "pooled": OutputSpec((width,), "mean of the valid encoder frames"),
    }


def _hub_revision(file: Path) -> str | None:
    """The commit of a file in the HF cache (``.../snapshots/<commit>/name``)."""
    parent = file.parent
    return parent.name if parent.parent.name == "snapshots" else None


def load_audio_tower(location: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    """``Qwen2AudioEncoder`` with only the ``audio_tower.*`` tensors of a Qwen2-Audio checkpoint
    (a hub repo or a local directory). Returns the encoder and its weights identity."""
    from safetensors import safe_open
    from transformers.models.qwen2_audio.configuration_qwen2_audio import Qwen2AudioConfig
    from transformers.models.qwen2_audio.modeling_qwen2_audio import Qwen2AudioEncoder

    local = Path(location).expanduser()
    is_local = local.is_dir()

    def fetch(name: str) -> Path:
        if is_local:
            if not (local / name).is_file():
                raise FileNotFoundError(f"{local / name} does not exist")
            return local / name
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(location, name))

    hint = (
        "Download it once with network access (it is then cached; only config.json, the index "
        "and the shards holding the audio tower are fetched), or pass --weights "
        "/path/to/a/local/copy."
    )
    try:
        config_file = fetch("config.json")
    except Exception as e:  # noqa: BLE001 - hub, offline and file errors all mean "cannot load"
        raise FeatstoreError(f"cannot load {location!r}: {e}. {hint}") from None
    config = json.loads(config_file.read_text())
    if "audio_config" in config:
        audio_config = Qwen2AudioConfig(audio_config=config["audio_config"]).audio_config
    else:
        raise FeatstoreError(f"{location!r} is not a Qwen2-Audio checkpoint: its config.json has "
                             f"no audio_config.")  # fmt: skip
    try:
        index_file = fetch("model.safetensors.index.json")
        weight_map = json.loads(index_file.read_text())["weight_map"]
        shards = sorted({f for k, f in weight_map.items() if k.startswith(TOWER_PREFIXES)})
        read = [config_file, index_file]
    except Exception:  # noqa: BLE001 - no index: a single-file checkpoint
        shards, read = ["model.safetensors"], [config_file]
        if is_local:
            shards = sorted(f.name for f in local.glob("*.safetensors"))
            if not shards:
                raise FeatstoreError(f"{location!r} holds no *.safetensors weights.") from None
    files = []
    for shard in shards:
        try:
            files.append(fetch(shard))
        except Exception as e:  # noqa: BLE001
            raise FeatstoreError(f"cannot load {location!r}: {e}. {hint}") from None
    state: dict[str, torch.Tensor] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open has keys(), no __iter__
                prefix = next((p for p in TOWER_PREFIXES if key.startswith(p)), None)
                if prefix is not None:
                    state[key[len(prefix) :]] = f.get_tensor(key).float()
    if not state:
        raise FeatstoreError(
            f"{location!r} has no audio_tower.* weights: it is not a Qwen2-Audio checkpoint "
            f"(or not a complete one)."
        )
    with torch.device("meta"):
        encoder = Qwen2AudioEncoder(audio_config)
    expected = set(encoder.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise FeatstoreError(
            f"the audio_tower.* weights of {location!r} do not fit Qwen2AudioEncoder "
            f"(its config.json audio_config): missing {missing[:5]}, unexpected {unexpected[:5]}."
        )
    encoder.load_state_dict(state, strict=True, assign=True)
    if is_local:
        h = hashlib.sha256()
        for file in [*read, *files]:
            h.update(file.name.encode() + b"\0" + file_digest(file).encode())
        identity = {"kind": "path", "sha256": h.hexdigest()}
    else:
        identity = {"kind": "pretrained", "repo": location,
                    "revision": _hub_revision(config_file)}  # fmt: skip
    return encoder, identity


def _load_tts(spec: TeacherSpec, tts: str, seed: int):
    from transformers import VitsConfig, VitsModel, VitsTokenizer

    if tts == "random":
        vocab = bundled_char_vocab() / "vocab.json"
        tokenizer = VitsTokenizer(str(vocab), add_blank=True, normalize=True, phonemize=False)
        torch.manual_seed(seed)
        model = VitsModel(VitsConfig(**spec.config.get("tts_cfg", {}), vocab_size=len(CHAR_VOCAB)))
        return model, tokenizer, {"kind": "random", "seed": seed, "vocab": "featstore-chars-v1"}
    try:
        model = VitsModel.from_pretrained(tts)
        tokenizer = VitsTokenizer.from_pretrained(tts)
    except (OSError, ValueError) as e:
        raise FeatstoreError(
            f"cannot load the TTS {tts!r}: {e}. Download it once with network access (it is "
            f"then cached), or pass tts=/path/to/a/local/copy."
        ) from None
    if Path(tts).expanduser().is_dir():
        identity = {"kind": "path", "sha256": directory_digest(Path(tts).expanduser())}
    else:
        identity = {"kind": "pretrained", "repo": tts,
                    "revision": getattr(model.config, "_commit_hash", None)}  # fmt: skip
    return model, tokenizer, identity


TTS_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "ffn_dim",
            "flow_size", "spectrogram_bins", "upsample_initial_channel", "upsample_rates",
            "resblock_kernel_sizes", "use_stochastic_duration_prediction", "num_speakers",
            "speaking_rate", "noise_scale", "noise_scale_duration", "sampling_rate")  # fmt: skip
ENCODER_KEYS = ("d_model", "encoder_layers", "encoder_attention_heads", "encoder_ffn_dim",
                "num_mel_bins", "max_source_positions", "activation_function",
                "scale_embedding")  # fmt: skip


@register_family("qwen-audio", SPECS)
class QwenAudioTeacher(Teacher):
    """Options: ``tts`` (hub repo, local dir or "random"), ``tts_noise`` ("seeded"/"zero"),
    ``encoder_mask`` ("qwen2-audio"/"none"), ``text_normalizer`` ("none"/"numbers")."""

    hub_ids = True
    outputs_for = staticmethod(outputs_for)

    def __init__(
        self,
        spec: TeacherSpec,
        weights: Weights,
        tts: str | None = None,
        tts_noise: str = "seeded",
        encoder_mask: str = "qwen2-audio",
        text_normalizer: str = "none",
    ):
        from transformers import WhisperFeatureExtractor
        from transformers.models.qwen2_audio.configuration_qwen2_audio import (
            Qwen2AudioEncoderConfig,
        )
        from transformers.models.qwen2_audio.modeling_qwen2_audio import Qwen2AudioEncoder

        if tts_noise not in NOISE_MODES:
            raise FeatstoreError(
                f"unknown tts_noise {tts_noise!r}; choose {' or '.join(NOISE_MODES)}"
            )
        if encoder_mask not in ENCODER_MASKS:
            raise FeatstoreError(
                f"unknown encoder_mask {encoder_mask!r}; choose {' or '.join(ENCODER_MASKS)}"
            )
        if text_normalizer not in NORMALIZERS:
            raise FeatstoreError(f"unknown text_normalizer {text_normalizer!r}; choose "
                                 f"{' or '.join(NORMALIZERS)}")  # fmt: skip
        self.spec = spec
        self.outputs = outputs_for(spec)
        self.tts_noise, self.encoder_mask = tts_noise, encoder_mask

        vits, tokenizer, tts_id = _load_tts(spec, tts or spec.config["tts"], weights.seed)
        if tokenizer.phonemize or tokenizer.is_uroman or not tokenizer.normalize:
            raise FeatstoreError(
                "only MMS-TTS checkpoints that read characters directly are supported "
                "(tokenizer normalize=True, phonemize=False, is_uroman=False)."
            )
        if tts_noise == "zero":
            vits.noise_scale = vits.noise_scale_duration = 0.0

        if weights.kind == "random":
            torch.manual_seed(weights.seed)
            encoder = Qwen2AudioEncoder(Qwen2AudioEncoderConfig(**spec.config["encoder_cfg"]))
            enc_id = {"kind": "random", "seed": weights.seed}
        else:
            location = spec.config["repo"] if weights.kind == "pretrained" else weights.location
            encoder, enc_id = load_audio_tower(location)

        self.features = WhisperFeatureExtractor(**spec.config["features"])
        fe = self.features
        self._tts_config = {k: getattr(vits.config, k) for k in TTS_KEYS}
        self._encoder_config = {k: getattr(encoder.config, k) for k in ENCODER_KEYS}
        if encoder.config.d_model != spec.config["width"]:
            raise FeatstoreError(
                f"weights {weights.location or weights.kind!r} have d_model "
                f"{encoder.config.d_model}, but teacher {spec.name} is {spec.config['width']} wide."
            )
        if (encoder.config.num_mel_bins != fe.feature_size
                or 2 * encoder.config.max_source_positions != fe.nb_max_frames):  # fmt: skip
            raise FeatstoreError(
                f"the encoder wants {encoder.config.num_mel_bins} mels x "
                f"{2 * encoder.config.max_source_positions} frames, but teacher {spec.name}'s "
                f"features are {fe.feature_size} x {fe.nb_max_frames}."
            )
        if vits.config.sampling_rate != fe.sampling_rate:
            raise FeatstoreError(
                f"the TTS speaks at {vits.config.sampling_rate} Hz, but the features expect "
                f"{fe.sampling_rate} Hz."
            )
        self.model = torch.nn.ModuleDict({"tts": vits, "encoder": encoder}).eval()
        self.model.requires_grad_(False)
        self.weights = {"encoder": enc_id, "tts": tts_id}
        vocab_digest = hashlib.sha256(canonical_json(tokenizer.encoder).encode()).hexdigest()
        tok_id = {"class": "VitsTokenizer", "vocab_sha256": vocab_digest,
                  "add_blank": tokenizer.add_blank, "normalize": tokenizer.normalize}  # fmt: skip
        features_id = {"class": "WhisperFeatureExtractor", "feature_size": fe.feature_size,
                       "sampling_rate": fe.sampling_rate, "hop_length": fe.hop_length,
                       "n_fft": fe.n_fft, "chunk_length": fe.chunk_length,
                       "n_samples": fe.n_samples, "dither": fe.dither,
                       "padding_value": fe.padding_value}  # fmt: skip
        extra = {"features": features_id, "encoder_mask": encoder_mask}
        if text_normalizer != "none":  # absent from the key by default: keys stay as they were
            extra["text_normalizer"] = NORMALIZERS[text_normalizer]
        self.preprocessor = QwenAudioPreprocessor(tokenizer, tok_id, tts_noise, extra,
                                                  text_normalizer)  # fmt: skip

    def architecture(self) -> dict[str, Any]:
        return {"class": "VitsModel>WhisperFeatureExtractor>Qwen2AudioEncoder",
                "tts": self._tts_config, "encoder": self._encoder_config}  # fmt: skip

    def collate(self, items: list[Any]) -> list[Any]:
        return items

    def to(self, device: torch.device) -> QwenAudioTeacher:
        """The encoder moves; the TTS stays on the CPU (as in the seed), so the seeded VITS noise
        and hence the audio are the same on every machine and device."""
        self.model["encoder"].to(device)
        self.model["tts"].to("cpu")
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model["encoder"].parameters()).device

    def synthesize(self, input_ids: torch.Tensor, seed: int) -> torch.Tensor:
        """One sentence's waveform ``[n]`` (fp32, on the CPU), seeded and RNG-neutral."""
        tts = self.model["tts"]
        with torch.random.fork_rng(devices=[]), torch.autocast("cpu", enabled=False):
            torch.random.default_generator.manual_seed(seed)
            out = tts(input_ids=input_ids[None].cpu())
        return out.waveform[0, : int(out.sequence_lengths[0])].float()

    def log_mel(self, waveform: torch.Tensor) -> tuple[torch.Tensor, int]:
        """``input_features [1, mels, frames]`` and the number of valid frames ``L``."""
        fe = self.features
        with torch.autocast("cpu", enabled=False):
            out = fe(waveform.numpy(), sampling_rate=fe.sampling_rate, return_tensors="pt",
                     return_attention_mask=True)  # fmt: skip
        return out["input_features"], int(out["attention_mask"].sum())

    def encode(self, features: torch.Tensor, n_valid: int) -> torch.Tensor:
        """The valid encoder frames ``[T, width]`` of one sentence's features ``[1, mels, F]``."""
        from transformers.masking_utils import create_bidirectional_mask

        encoder = self.model["encoder"]
        mask = None
        if self.encoder_mask == "qwen2-audio":  # as Qwen2AudioModel.forward builds it
            n_conv = (n_valid - 1) // 2 + 1
            max_len = (features.shape[-1] - 2) // 2 + 1
            mask_2d = (torch.arange(max_len, device=self.device) < n_conv).long()[None]
            dummy = torch.zeros(1, max_len, 1, dtype=encoder.conv1.weight.dtype, device=self.device)
            mask = create_bidirectional_mask(
                config=encoder.config, inputs_embeds=dummy, attention_mask=mask_2d
            )
        hidden = encoder(input_features=features.to(self.device), attention_mask=mask)
        return hidden.last_hidden_state[0, : valid_frames(n_valid)]

    def forward(self, batch: list[dict[str, Any]], kinds: list[str]) -> dict[str, Any]:
        fe = self.features
        frames = []
        for item in batch:
            waveform = self.synthesize(item["input_ids"], item["seed"])
            seconds = len(waveform) / fe.sampling_rate
            if len(waveform) > fe.n_samples:
                raise SourceError(
                    f"sentence {_short(item['sentence'])!r} is {seconds:.2f} s of speech, longer "
                    f"than the encoder's {fe.chunk_length} s window; split it into shorter "
                    f"sentences (it would be truncated)."
                )
            features, n_valid = self.log_mel(waveform)
            if valid_frames(n_valid) < 1:
                raise SourceError(
                    f"sentence {_short(item['sentence'])!r} is {seconds * 1000:.0f} ms of speech, "
                    f"too short for one encoder frame."
                )
            frames.append(self.encode(features, n_valid))
        out: dict[str, Any] = {}
        if "frames" in kinds:
            out["frames"] = frames
        if "pooled" in kinds:
            out["pooled"] = torch.stack([f.float().mean(0) for f in frames])
        return out
