"""OpenCLIP image towers: patch tokens and pooled embeddings (bigG for MindEye2, and friends).

Real weights come from ``open_clip.create_model(arch, pretrained=tag)`` (HF cache, offline mode,
or a local checkpoint path). ``weights="random"`` builds the same class from its config with a
seeded initialisation; tiny configs make CPU tests fast. Only the vision tower is kept in memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import FeatstoreError
from .base import OutputSpec, Preprocessor, Teacher, TeacherSpec

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


def model_config(spec: TeacherSpec) -> dict[str, Any]:
    if "model_cfg" in spec.config:
        return spec.config["model_cfg"]
    from open_clip import get_model_config

    cfg = get_model_config(spec.config["arch"])
    if cfg is None:
        raise FeatstoreError(f"open_clip has no model config {spec.config['arch']!r}")
    return cfg


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


class OpenClipVisionTeacher(Teacher):
    def __init__(
        self,
        spec: TeacherSpec,
        weights: str = "pretrained",
        preprocessing: str = "standard",
        seed: int = 0,
    ):
        import open_clip

        self.spec = spec
        self.outputs = outputs_for(spec)
        cfg = model_config(spec)
        arch = spec.config.get("arch")
        if weights == "pretrained":
            tag = spec.config.get("pretrained")
            if tag is None:
                raise FeatstoreError(
                    f"teacher {spec.name} has no pretrained weights; use --weights random "
                    f"or --weights PATH/TO/checkpoint"
                )
            model = _load(arch, tag)
            self.weights = {"kind": "pretrained", "arch": arch, "tag": tag}
        elif weights == "random":
            torch.manual_seed(seed)
            model = open_clip.model.CLIP(**cfg)
            self.weights = {"kind": "random", "seed": seed}
        else:
            from ..hashing import file_digest

            if not Path(weights).is_file():
                raise FeatstoreError(
                    f"--weights {weights!r} is neither 'pretrained', 'random' nor a "
                    f"checkpoint file."
                )
            if "model_cfg" in spec.config:  # a config-defined variant: load into that config
                model = open_clip.model.CLIP(**cfg)
                open_clip.load_checkpoint(model, weights)
            else:
                model = _load(arch, weights)
            self.weights = {"kind": "file", "sha256": file_digest(Path(weights))}
        self.model = model.visual.eval().requires_grad_(False)  # the text tower is not needed
        self.model.output_tokens = True
        self._cfg = cfg
        self.preprocessor = ClipImagePreprocessor(_vision_geometry(cfg)[0], preprocessing)

    def architecture(self) -> dict[str, Any]:
        return {"arch": self.spec.config.get("arch"), "vision_cfg": self._cfg["vision_cfg"],
                "embed_dim": self._cfg["embed_dim"]}  # fmt: skip

    def forward(self, batch: torch.Tensor, kinds: list[str]) -> dict[str, torch.Tensor]:
        pooled, tokens = self.model(batch.to(self.device, non_blocking=True))
        out = {"tokens": tokens, "embeds": pooled}
        return {k: out[k] for k in kinds}


def _load(arch: str, pretrained: str) -> torch.nn.Module:
    import open_clip

    try:
        return open_clip.create_model(arch, pretrained=pretrained)
    except (RuntimeError, OSError) as e:
        raise FeatstoreError(
            f"cannot load open_clip {arch} weights {pretrained!r}: {e}. Download them once with "
            f"network access (they are then cached; HF_HUB_OFFLINE=1 works after that), or pass "
            f"--weights /path/to/checkpoint."
        ) from None


def build(spec: TeacherSpec, **options: Any) -> OpenClipVisionTeacher:
    return OpenClipVisionTeacher(spec, **options)


def _tiny(patch: int, width: int, embed: int) -> dict[str, Any]:
    heads = max(1, width // 32)
    return {
        "embed_dim": embed,
        "vision_cfg": {"image_size": 224, "layers": 2, "width": width, "head_width": width // heads,
                       "mlp_ratio": 2.0, "patch_size": patch},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 1,
                     "layers": 1},
    }  # fmt: skip


SPECS = [
    TeacherSpec(
        "bigG", "openclip-vision", "image",
        "OpenCLIP ViT-bigG-14 (laion2b_s39b_b160k) image tower; MindEye2's target tokens",
        {"arch": "ViT-bigG-14", "pretrained": "laion2b_s39b_b160k",
         "outputs": ["tokens", "embeds"]},
    ),
    TeacherSpec(
        "bigG-tiny", "openclip-vision", "image",
        "bigG's architecture class at toy width (2 layers, width 64), random weights; for tests",
        {"arch": "ViT-bigG-14", "model_cfg": _tiny(14, 64, 32), "outputs": ["tokens", "embeds"]},
    ),
]  # fmt: skip
