"""Loading open_clip models for the open_clip teacher families (image and text towers).

``pretrained`` uses ``open_clip.create_model(arch, pretrained=tag)`` (HF cache, offline mode);
``random`` builds the same ``CLIP`` class from the spec's config with a seeded initialisation;
a path loads a checkpoint file, keyed by its sha256.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import FeatstoreError
from .base import TeacherSpec


def model_config(spec: TeacherSpec) -> dict[str, Any]:
    if "model_cfg" in spec.config:
        return spec.config["model_cfg"]
    from open_clip import get_model_config

    cfg = get_model_config(spec.config["arch"])
    if cfg is None:
        raise FeatstoreError(f"open_clip has no model config {spec.config['arch']!r}")
    return cfg


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


def build_clip(
    spec: TeacherSpec, weights: str, seed: int
) -> tuple[torch.nn.Module, dict[str, Any], dict[str, Any]]:
    """``(model, weights identity, model config)`` for a spec and a ``--weights`` value."""
    import open_clip

    cfg = model_config(spec)
    arch = spec.config.get("arch")
    if weights == "pretrained":
        tag = spec.config.get("pretrained")
        if tag is None:
            raise FeatstoreError(
                f"teacher {spec.name} has no pretrained weights; use --weights random "
                f"or --weights PATH/TO/checkpoint"
            )
        return _load(arch, tag), {"kind": "pretrained", "arch": arch, "tag": tag}, cfg
    if weights == "random":
        torch.manual_seed(seed)
        return open_clip.model.CLIP(**cfg), {"kind": "random", "seed": seed}, cfg
    from ..hashing import file_digest

    if not Path(weights).is_file():
        raise FeatstoreError(
            f"--weights {weights!r} is neither 'pretrained', 'random' nor a checkpoint file."
        )
    if "model_cfg" in spec.config:  # a config-defined variant: load into that config
        model = open_clip.model.CLIP(**cfg)
        open_clip.load_checkpoint(model, weights)
    else:
        model = _load(arch, weights)
    return model, {"kind": "file", "sha256": file_digest(Path(weights))}, cfg


def tiny_config(
    patch: int, width: int, embed: int, text_width: int = 32, quick_gelu: bool = False
) -> dict[str, Any]:
    """A toy open_clip ``CLIP`` config (2 vision and 2 text layers) for tests. ``quick_gelu``
    matches the OpenAI-weight architectures (their ``-quickgelu`` configs)."""
    heads = max(1, width // 32)
    extra = {"quick_gelu": True} if quick_gelu else {}
    return {
        **extra,
        "embed_dim": embed,
        "vision_cfg": {"image_size": 224, "layers": 2, "width": width, "head_width": width // heads,
                       "mlp_ratio": 2.0, "patch_size": patch},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": text_width,
                     "heads": max(1, text_width // 16), "layers": 2},
    }  # fmt: skip
