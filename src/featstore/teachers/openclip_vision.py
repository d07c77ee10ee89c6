"""OpenCLIP image towers: patch tokens and pooled embeddings (bigG for MindEye2, and friends).

Real weights come from ``open_clip.create_model(arch, pretrained=tag)`` (HF cache, offline mode,
or a local checkpoint path). ``weights="random"`` builds the same class from its config with a
seeded initialisation; tiny configs make CPU tests fast. Only the vision tower is kept in memory.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import FeatstoreError
from . import register_family
from ._openclip import build_clip, model_config, tiny_config
from .base import OutputSpec, Preprocessor, Teacher, TeacherSpec, Weights

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
PREPROCESSING_MODES = ("standard", "mindeye")


class ClipImagePreprocessor(Preprocessor):
    """Images (PIL, or float tensors ``[3,H,W]`` in [0,1]) → normalized ``[3,S,S]`` tensors.

    ``standard``: resize the short side to S (bicubic, antialiased), center-crop, normalize — the
    open_clip eval transform (PIL inputs use open_clip's own transform, so results match it).
    ``mindeye``: MindEye2's quirk: resize to S, then ``x = (x + 1) / 2`` so CLIP sees [0.5, 1],
    then normalize. Kept for parity with its published numbers; a different cache key.
    """

    def __init__(self, image_size: int, mode: str = "standard"):
        if mode not in PREPROCESSING_MODES:
            raise FeatstoreError(
                f"unknown preprocessing {mode!r}; choose one of {', '.join(PREPROCESSING_MODES)}"
            )
        self.image_size = image_size
        self.mode = mode
        self._pil_transform = None

    def identity(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "image_size": self.image_size,
            "resize": "short-side" if self.mode == "standard" else "square",
            "crop": "center" if self.mode == "standard" else "none",
            "interpolation": "bicubic-antialias",
            "mean": OPENAI_MEAN,
            "std": OPENAI_STD,
        }

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_pil_transform": None}

    def _from_pil(self, image) -> torch.Tensor:
        if self.mode == "standard":
            if self._pil_transform is None:
                from open_clip.transform import image_transform

                self._pil_transform = image_transform(
                    self.image_size, is_train=False, mean=OPENAI_MEAN, std=OPENAI_STD
                )
            return self._pil_transform(image)
        x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)
        return self._from_tensor(x.permute(2, 0, 1))

    def _from_tensor(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        s = self.image_size
        if self.mode == "standard":
            h, w = x.shape[-2:]
            if (h, w) != (s, s):
                scale = s / min(h, w)
                size = (max(s, round(h * scale)), max(s, round(w * scale)))
                x = F.interpolate(x[None], size=size, mode="bicubic", antialias=True)[0]
                top, left = (x.shape[-2] - s) // 2, (x.shape[-1] - s) // 2
                x = x[:, top : top + s, left : left + s]
        else:
            if tuple(x.shape[-2:]) != (s, s):
                x = F.interpolate(x[None], size=(s, s), mode="bicubic", antialias=True)[0]
            x = (x + 1) / 2
        mean = torch.tensor(OPENAI_MEAN).view(3, 1, 1)
        std = torch.tensor(OPENAI_STD).view(3, 1, 1)
        return (x - mean) / std

    def __call__(self, item: Any) -> torch.Tensor:
        if isinstance(item, torch.Tensor):
            return self._from_tensor(item)
        if isinstance(item, np.ndarray):
            return self._from_tensor(torch.from_numpy(item))
        return self._from_pil(item)


def _vision_geometry(model_cfg: dict[str, Any]) -> tuple[int, int, int, int]:
    """(image_size, patch_size, width, embed_dim) from an open_clip model config."""
    v = model_cfg["vision_cfg"]
    return v["image_size"], v["patch_size"], v["width"], model_cfg["embed_dim"]


SPECS = [
    TeacherSpec(
        "bigG", "openclip-vision", "image",
        "OpenCLIP ViT-bigG-14 (laion2b_s39b_b160k) image tower; MindEye2's target tokens",
        {"arch": "ViT-bigG-14", "pretrained": "laion2b_s39b_b160k",
         "outputs": ["tokens", "embeds"]},
    ),
    TeacherSpec(
        "clip-l-image", "openclip-vision", "image",
        "CLIP ViT-L/14 (OpenAI weights) image embedding; NeuroBridge's target",
        {"arch": "ViT-L-14-quickgelu", "pretrained": "openai", "outputs": ["embeds", "tokens"]},
    ),
    TeacherSpec(
        "vitb32-image", "openclip-vision", "image",
        "CLIP ViT-B/32 (OpenAI weights) encode_image; ViECap's inference-time image feature",
        {"arch": "ViT-B-32-quickgelu", "pretrained": "openai", "outputs": ["embeds", "tokens"]},
    ),
    TeacherSpec(
        "bigG-tiny", "openclip-vision", "image",
        "bigG's architecture class at toy width (2 layers, width 64), random weights; for tests",
        {"arch": "ViT-bigG-14", "model_cfg": tiny_config(14, 64, 32),
         "outputs": ["tokens", "embeds"]},
    ),
    TeacherSpec(
        "clip-l-image-tiny", "openclip-vision", "image",
        "clip-l-image's architecture class at toy width, random weights; for tests",
        {"arch": "ViT-L-14-quickgelu", "model_cfg": tiny_config(14, 32, 24, quick_gelu=True),
         "outputs": ["embeds", "tokens"]},
    ),
    TeacherSpec(
        "vitb32-image-tiny", "openclip-vision", "image",
        "vitb32-image's architecture class at toy width, random weights; for tests",
        {"arch": "ViT-B-32-quickgelu", "model_cfg": tiny_config(32, 32, 16, quick_gelu=True),
         "outputs": ["embeds", "tokens"]},
    ),
]  # fmt: skip


def outputs_for(spec: TeacherSpec) -> dict[str, OutputSpec]:
    size, patch, width, embed = _vision_geometry(model_config(spec))
    n_tokens = (size // patch) ** 2
    outputs = {
        "tokens": OutputSpec(
            (n_tokens, width), "patch tokens after ln_post, CLS dropped, unprojected"
        ),
        "embeds": OutputSpec((embed,), "pooled, projected image embedding (encode_image)"),
    }
    order = spec.config.get("outputs", list(outputs))
    return {k: outputs[k] for k in order}


@register_family("openclip-vision", SPECS)
class OpenClipVisionTeacher(Teacher):
    """``preprocessing``: "standard" (open_clip's eval transform) or "mindeye"."""

    outputs_for = staticmethod(outputs_for)

    def __init__(self, spec: TeacherSpec, weights: Weights, preprocessing: str = "standard"):
        self.spec = spec
        self.outputs = outputs_for(spec)
        model, self.weights, cfg = build_clip(spec, weights)
        self.model = model.visual.eval().requires_grad_(False)  # the text tower is not needed
        self.model.output_tokens = True
        self._cfg = cfg
        self.preprocessor = ClipImagePreprocessor(_vision_geometry(cfg)[0], preprocessing)

    def architecture(self) -> dict[str, Any]:
        return {"arch": self.spec.config.get("arch"), "vision_cfg": self._cfg["vision_cfg"],
                "embed_dim": self._cfg["embed_dim"],
                "quick_gelu": bool(self._cfg.get("quick_gelu", False))}  # fmt: skip

    def forward(self, batch: torch.Tensor, kinds: list[str]) -> dict[str, torch.Tensor]:
        pooled, tokens = self.model(batch.to(self.device, non_blocking=True))
        out = {"tokens": tokens, "embeds": pooled}
        return {k: out[k] for k in kinds}
