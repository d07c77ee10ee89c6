"""OpenCLIP text towers: caption embeddings and prompt-ensembled vocabulary embeddings (ViECap).

``embeds``: ``encode_text`` of each text, projected ``[embed_dim]``. A ``*-vocab`` teacher reads
entity words and returns ViECap's vocabulary embedding: each word in 7 prompt templates,
``encode_text``, each L2-normalized, averaged, and normalized again. Tokenization uses
open_clip's bundled tokenizer (no download).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from . import register_family
from ._openclip import build_clip, tiny_config
from .base import OutputSpec, Preprocessor, Teacher, TeacherSpec, Weights

VIECAP_TEMPLATES = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)


class OpenClipTokenizer(Preprocessor):
    """Text → ``[77]`` token ids; with templates, a word → ``[n_templates, 77]``."""

    def __init__(self, arch: str, templates: tuple[str, ...] = ()):
        self.arch, self.templates = arch, tuple(templates)
        self._tokenizer = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_tokenizer": None}

    def identity(self) -> dict[str, Any]:
        return {"tokenizer": "open_clip-bpe", "context_length": 77, "templates": self.templates}

    def __call__(self, item: str) -> torch.Tensor:
        if self._tokenizer is None:
            import open_clip

            self._tokenizer = open_clip.get_tokenizer(self.arch)
        texts = [t.format(item) for t in self.templates] if self.templates else [item]
        ids = self._tokenizer(texts)
        return ids if self.templates else ids[0]


_TINY = tiny_config(32, 32, 16, quick_gelu=True)
SPECS = [
    TeacherSpec("vitb32-text", "openclip-text", "text",
                "CLIP ViT-B/32 (OpenAI weights) encode_text of captions; ViECap's training feature",
                {"arch": "ViT-B-32-quickgelu", "pretrained": "openai"}),
    TeacherSpec("vitb32-vocab", "openclip-text", "text",
                "CLIP ViT-B/32 vocabulary embeddings: ViECap's 7 prompt templates, averaged",
                {"arch": "ViT-B-32-quickgelu", "pretrained": "openai",
                 "templates": VIECAP_TEMPLATES}),
    TeacherSpec("vitb32-text-tiny", "openclip-text", "text",
                "vitb32-text's architecture class at toy width, random weights; for tests",
                {"arch": "ViT-B-32-quickgelu", "model_cfg": _TINY}),
    TeacherSpec("vitb32-vocab-tiny", "openclip-text", "text",
                "vitb32-vocab at toy width, random weights; for tests",
                {"arch": "ViT-B-32-quickgelu", "model_cfg": _TINY, "templates": VIECAP_TEMPLATES}),
]  # fmt: skip


def outputs_for(spec: TeacherSpec) -> dict[str, OutputSpec]:
    from ._openclip import model_config

    embed = model_config(spec)["embed_dim"]
    if spec.config.get("templates"):
        return {"embeds": OutputSpec((embed,), "prompt-ensembled word embedding, L2-normalized")}
    return {"embeds": OutputSpec((embed,), "projected text embedding (encode_text)")}


@register_family("openclip-text", SPECS)
class OpenClipTextTeacher(Teacher):
    outputs_for = staticmethod(outputs_for)

    def __init__(self, spec: TeacherSpec, weights: Weights):
        self.spec = spec
        self.outputs = outputs_for(spec)
        model, self.weights, self._cfg = build_clip(spec, weights)
        model.visual = None  # only the text tower is used
        self.model = model.eval().requires_grad_(False)
        self.templates = tuple(spec.config.get("templates", ()))
        self.preprocessor = OpenClipTokenizer(spec.config["arch"], self.templates)

    def architecture(self) -> dict[str, Any]:
        return {"arch": self.spec.config["arch"], "text_cfg": self._cfg["text_cfg"],
                "embed_dim": self._cfg["embed_dim"],
                "quick_gelu": bool(self._cfg.get("quick_gelu", False))}  # fmt: skip

    @property
    def device(self) -> torch.device:
        return self.model.token_embedding.weight.device

    def forward(self, batch: torch.Tensor, kinds: list[str]) -> dict[str, torch.Tensor]:
        ids = batch.to(self.device, non_blocking=True)
        if not self.templates:
            return {"embeds": self.model.encode_text(ids)}
        b, t, n = ids.shape
        per_template = F.normalize(self.model.encode_text(ids.reshape(b * t, n)).float(), dim=-1)
        return {"embeds": F.normalize(per_template.reshape(b, t, -1).mean(1), dim=-1)}
