"""CLIP vision towers through transformers: patch tokens for minimind-v (ViT-B/16).

``patches``: ``vision_model(pixel_values).last_hidden_state[:, 1:]`` — the patch tokens after the
encoder (before ``post_layernorm``, which transformers applies to the pooled CLS only), CLS
dropped: ``[196, 768]`` for ViT-B/16 at 224 px. This is exactly what minimind-v splices into its
LLM. Preprocessing is the checkpoint's ``CLIPImageProcessor`` (its defaults for random weights).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import FeatstoreError
from . import register_family
from ._hf import load_pretrained
from .base import OutputSpec, Preprocessor, Teacher, TeacherSpec, Weights


class HfClipImagePreprocessor(Preprocessor):
    """PIL images or float tensors ``[3,H,W]`` in [0,1] → ``pixel_values [3,S,S]``."""

    def __init__(self, processor):
        self.processor = processor

    def identity(self) -> dict[str, Any]:
        p = self.processor
        return {"processor": type(p).__name__, "size": dict(p.size), "crop_size": dict(p.crop_size),
                "resample": int(p.resample), "mean": list(p.image_mean),
                "std": list(p.image_std)}  # fmt: skip

    def __call__(self, item: Any) -> torch.Tensor:
        if isinstance(item, torch.Tensor | np.ndarray):
            arr = np.asarray(item, dtype=np.float32)
            out = self.processor(images=arr, do_rescale=False, input_data_format="channels_first",
                                 return_tensors="pt")  # fmt: skip
        else:
            out = self.processor(images=item.convert("RGB"), return_tensors="pt")
        return out["pixel_values"][0]


SPECS = [
    TeacherSpec("vitb16-patch", "clip-vision-hf", "image",
                "CLIP ViT-B/16 (openai/clip-vit-base-patch16) patch tokens; minimind-v's input",
                {"repo": "openai/clip-vit-base-patch16", "image_size": 224, "patch_size": 16,
                 "width": 768,
                 "model_cfg": {"hidden_size": 768, "intermediate_size": 3072,
                               "num_hidden_layers": 12, "num_attention_heads": 12,
                               "image_size": 224, "patch_size": 16,
                               "hidden_act": "quick_gelu"}}),
    TeacherSpec("vitb16-patch-tiny", "clip-vision-hf", "image",
                "vitb16-patch's architecture at toy width (2 layers, width 32); for tests",
                {"image_size": 224, "patch_size": 16, "width": 32,
                 "model_cfg": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                               "num_attention_heads": 2, "image_size": 224, "patch_size": 16}}),
]  # fmt: skip


def outputs_for(spec: TeacherSpec) -> dict[str, OutputSpec]:
    c = spec.config
    n = (c["image_size"] // c["patch_size"]) ** 2
    return {"patches": OutputSpec((n, c["width"]), "last_hidden_state[:, 1:] (CLS dropped)")}


@register_family("clip-vision-hf", SPECS)
class HfClipVisionTeacher(Teacher):
    hub_ids = True
    outputs_for = staticmethod(outputs_for)

    def __init__(self, spec: TeacherSpec, weights: Weights):
        from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

        self.spec = spec
        self.outputs = outputs_for(spec)
        if weights.kind == "random":
            torch.manual_seed(weights.seed)
            model = CLIPVisionModel(CLIPVisionConfig(**spec.config["model_cfg"]))
            processor = CLIPImageProcessor()  # the OpenAI CLIP defaults: 224, bicubic, crop
            self.weights = {"kind": "random", "seed": weights.seed}
        else:
            (model, processor), self.weights = load_pretrained(
                spec, weights, CLIPVisionModel, CLIPImageProcessor
            )
        cfg = model.config
        if cfg.hidden_size != spec.config["width"] or cfg.patch_size != spec.config["patch_size"]:
            raise FeatstoreError(
                f"weights {weights.location or weights.kind!r} do not match teacher "
                f"{spec.name}'s shape"
            )
        self.model = model.eval().requires_grad_(False)
        self.preprocessor = HfClipImagePreprocessor(processor)

    def architecture(self) -> dict[str, Any]:
        c = self.model.config
        return {"class": "CLIPVisionModel", "hidden_size": c.hidden_size,
                "num_hidden_layers": c.num_hidden_layers, "patch_size": c.patch_size,
                "image_size": c.image_size, "intermediate_size": c.intermediate_size}  # fmt: skip

    def forward(self, batch: torch.Tensor, kinds: list[str]) -> dict[str, torch.Tensor]:
        out = self.model(pixel_values=batch.to(self.device, non_blocking=True))
        return {"patches": out.last_hidden_state[:, 1:]}
