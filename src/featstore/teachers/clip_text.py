"""CLIP text encoders through transformers (CLIP ViT-L/14 text for SD-1.5 and TextAlign).

Outputs: ``pooled`` — the projected text embedding (``text_embeds``, what CLIP retrieval uses);
``hidden`` — ``last_hidden_state [77, width]`` after the final layer norm, padded to 77 tokens
with the tokenizer's pad token, exactly the SD-1.5 conditioning.

Real weights: ``CLIPTextModelWithProjection.from_pretrained(repo)`` and that repo's tokenizer.
``weights="random"`` builds the model from a (tiny) config and, because no hub is needed, a CLIP
tokenizer from the BPE vocabulary that ships inside open_clip (the same 49,408-token vocabulary).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import torch

from ..errors import FeatstoreError
from . import register_family
from ._bundled import bundled_files
from ._hf import load_pretrained
from .base import OutputSpec, Preprocessor, Teacher, TeacherSpec, Weights

CONTEXT_LENGTH = 77


def bundled_clip_tokenizer_files() -> Path:
    """vocab.json + merges.txt for transformers' CLIPTokenizer, built from open_clip's BPE file
    (in the user's cache, see ``_bundled``)."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    def merges() -> list[tuple[str, ...]]:
        with gzip.open(default_bpe()) as f:
            lines = f.read().decode("utf-8").split("\n")
        return [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]

    def vocab_json() -> str:
        vocab = list(bytes_to_unicode().values())
        vocab += [v + "</w>" for v in vocab] + ["".join(m) for m in merges()]
        vocab += ["<|startoftext|>", "<|endoftext|>"]
        return json.dumps({t: i for i, t in enumerate(vocab)})

    def merges_txt() -> str:
        return "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges())

    return bundled_files("clip-bpe-v1", {"vocab.json": vocab_json, "merges.txt": merges_txt})


class ClipTextPreprocessor(Preprocessor):
    """Text → token ids ``[77]`` (padded with the pad token, truncated at 77)."""

    def __init__(self, tokenizer, tokenizer_id: dict[str, Any]):
        self.tokenizer = tokenizer
        self.tokenizer_id = tokenizer_id

    def identity(self) -> dict[str, Any]:
        return {"tokenizer": self.tokenizer_id, "context_length": CONTEXT_LENGTH,
                "padding": "max_length", "truncation": True}  # fmt: skip

    def __call__(self, item: str) -> torch.Tensor:
        enc = self.tokenizer(
            item, padding="max_length", max_length=CONTEXT_LENGTH, truncation=True,
            return_tensors="pt",
        )  # fmt: skip
        return enc["input_ids"][0]


TINY_TEXT = {
    "vocab_size": 49408,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "max_position_embeddings": 77,
    "projection_dim": 16,
}

SPECS = [
    TeacherSpec(
        "clip-l-text", "clip-text", "text",
        "CLIP ViT-L/14 text encoder (openai/clip-vit-large-patch14): pooled [768], hidden [77,768]",
        {"repo": "openai/clip-vit-large-patch14", "width": 768, "projection_dim": 768,
         "model_cfg": {"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072,
                       "num_hidden_layers": 12, "num_attention_heads": 12,
                       "max_position_embeddings": 77, "projection_dim": 768,
                       "hidden_act": "quick_gelu"}},
    ),
    TeacherSpec(
        "clip-l-text-tiny", "clip-text", "text",
        "clip-l-text's architecture at toy width (2 layers, width 32), random weights; for tests",
        {"model_cfg": TINY_TEXT, "width": 32, "projection_dim": 16},
    ),
]  # fmt: skip


def text_config(spec: TeacherSpec) -> dict[str, Any]:
    if "model_cfg" in spec.config:
        return spec.config["model_cfg"]
    from transformers import CLIPTextConfig

    return CLIPTextConfig.from_pretrained(spec.config["repo"]).to_dict()


def outputs_for(spec: TeacherSpec) -> dict[str, OutputSpec]:
    width, proj = spec.config["width"], spec.config["projection_dim"]
    return {
        "pooled": OutputSpec((proj,), "projected pooled text embedding (text_embeds)"),
        "hidden": OutputSpec((CONTEXT_LENGTH, width), "last_hidden_state (SD-1.5 conditioning)"),
    }


@register_family("clip-text", SPECS)
class ClipTextTeacher(Teacher):
    hub_ids = True
    outputs_for = staticmethod(outputs_for)

    def __init__(self, spec: TeacherSpec, weights: Weights):
        from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

        self.spec = spec
        self.outputs = outputs_for(spec)
        if weights.kind == "random":
            torch.manual_seed(weights.seed)
            config = CLIPTextConfig(**spec.config["model_cfg"])
            model = CLIPTextModelWithProjection(config)
            files = bundled_clip_tokenizer_files()
            tokenizer = CLIPTokenizer(str(files / "vocab.json"), str(files / "merges.txt"))
            self.weights = {"kind": "random", "seed": weights.seed}
            tok_id = {"kind": "open_clip-bpe", "vocab_size": len(tokenizer)}
        else:
            (model, tokenizer), self.weights = load_pretrained(
                spec, weights, CLIPTextModelWithProjection, CLIPTokenizer
            )
            tok_id = {"kind": "hf", **{k: v for k, v in self.weights.items() if k != "kind"}}
        self.model = model.eval().requires_grad_(False)
        self._config = {k: v for k, v in model.config.to_dict().items()
                        if k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                 "intermediate_size", "projection_dim", "vocab_size",
                                 "max_position_embeddings", "hidden_act")}  # fmt: skip
        if self._config["hidden_size"] != spec.config["width"] or (
            self._config["projection_dim"] != spec.config["projection_dim"]
        ):
            raise FeatstoreError(
                f"weights {weights.location or weights.kind!r} do not match teacher "
                f"{spec.name}'s widths"
            )
        self.preprocessor = ClipTextPreprocessor(tokenizer, tok_id)

    def architecture(self) -> dict[str, Any]:
        return {"class": "CLIPTextModelWithProjection", **self._config}

    def forward(self, batch: torch.Tensor, kinds: list[str]) -> dict[str, torch.Tensor]:
        out = self.model(input_ids=batch.to(self.device, non_blocking=True))
        return {k: {"pooled": out.text_embeds, "hidden": out.last_hidden_state}[k] for k in kinds}
