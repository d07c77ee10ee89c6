"""Loading open_clip models for the open_clip teacher families (image and text towers).

``pretrained`` uses ``open_clip.create_model(arch, pretrained=tag)`` (HF cache, offline mode);
``random`` builds the same ``CLIP`` class from the spec's config with a seeded initialisation;
a path loads a checkpoint file, keyed by its sha256.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import torch

from ..errors import FeatstoreError
from .base import TeacherSpec, Weights


def model_config(spec: TeacherSpec) -> dict[str, Any]:
    if "model_cfg" in spec.config:
        return spec.config["model_cfg"]
    from open_clip import get_model_config

    cfg = get_model_config(spec.config["arch"])
    if cfg is None:
        raise FeatstoreError(f"open_clip has no model config {spec.config['arch']!r}")
    return cfg


@contextlib.contextmanager
def _quiet_open_clip_errors():
    """open_clip logs ``ERROR:root:Failed to download…`` through the root logger before raising;
    featstore's own error (with how to fix it) is the one message the user should see."""
    root = logging.getLogger()
    drop = logging.Filter()
    drop.filter = lambda record: "open_clip" not in record.pathname  # type: ignore[method-assign]
    fallback = logging.NullHandler() if not root.handlers else None  # no basicConfig side effect
    root.addFilter(drop)
    if fallback:
        root.addHandler(fallback)
    try:
        yield
    finally:
        root.removeFilter(drop)
        if fallback:
            root.removeHandler(fallback)


def _load(arch: str, pretrained: str) -> torch.nn.Module:
    import open_clip

    try:
        with _quiet_open_clip_errors():
            return open_clip.create_model(arch, pretrained=pretrained)
    except (RuntimeError, OSError) as e:
        raise FeatstoreError(
            f"cannot load open_clip {arch} weights {pretrained!r}: {e}. Download them once with "
            f"network access (they are then cached; HF_HUB_OFFLINE=1 works after that), or pass "
            f"--weights /path/to/checkpoint."
        ) from None


def build_clip(
    spec: TeacherSpec, weights: Weights
) -> tuple[torch.nn.Module, dict[str, Any], dict[str, Any]]:
    """``(model, weights identity, model config)`` for a spec and resolved ``--weights``."""
    import open_clip

    cfg = model_config(spec)
    arch = spec.config.get("arch")
    if weights.kind == "pretrained":
        tag = spec.config["pretrained"]
        return _load(arch, tag), {"kind": "pretrained", "arch": arch, "tag": tag}, cfg
    if weights.kind == "random":
        torch.manual_seed(weights.seed)
        return open_clip.model.CLIP(**cfg), {"kind": "random", "seed": weights.seed}, cfg
    from ..hashing import file_digest

    path = Path(weights.location)
    if not path.is_file():
        raise FeatstoreError(
            f"--weights {weights.location!r} is neither 'pretrained', 'random' nor a checkpoint "
            f"file."
        )
    try:
        if "model_cfg" in spec.config:  # a config-defined variant: load into that config
            model = open_clip.model.CLIP(**cfg)
            open_clip.load_checkpoint(model, str(path))
        else:
            model = _load(arch, str(path))
    except FeatstoreError:
        raise
    except Exception as e:  # noqa: BLE001 - unpickling/shape errors all mean "not this model's"
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise FeatstoreError(
            f"--weights {path} is not a checkpoint of {spec.name} that open_clip can load "
            f"({type(e).__name__}: {first})."
        ) from None
    return model, {"kind": "file", "sha256": file_digest(path)}, cfg


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
