"""A trained VLM outside training: load it (from a run or an export), give it new images through
the same featstore teacher, export it in transformers' format.

An export is one directory that ``save_pretrained`` wrote: ``config.json`` (the LLM's config
plus a ``vlm`` section naming the vision teacher, its weights and preprocessing, and the
placeholder scheme), ``model.safetensors`` with minimind-v's tensor names (``model.*``,
``vision_proj.vision_proj.0.*``; ``AutoModelForCausalLM.from_pretrained`` loads the LLM from it
and ignores the projector), ``generation_config.json`` and the tokenizer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from featstore import Entry, Store
from featstore.hashing import canonical_json
from featstore.teachers import Teacher, create_teacher

from ... import checkpoint as ckpt_mod
from ...data.chat_jsonl import ChatEncoder
from ...errors import ConfigError, DataError, RunDirError
from ...runs import read_run
from ...train import resolve_device
from .head import make_encoder, open_patches
from .model import (
    VisionLanguageModel,
    llm_hidden_size,
    llm_location,
    load_llm,
    load_tokenizer,
    quiet_transformers,
    to_minimind_v_names,
)

IDENTITY_KEYS = ("teacher", "family", "architecture", "weights", "preprocessing")


@dataclass
class LoadedVlm:
    """A trained model with what it needs to answer: its chat encoder and its vision teacher's
    identity (``vision["identity"]``); ``entry`` is the run's patch entry (None for exports)."""

    model: VisionLanguageModel
    encoder: ChatEncoder
    vision: dict[str, Any]
    entry: Entry | None = None
    source: str = ""


def load_vlm(path: str | Path, weights: str = "auto", device: str = "auto") -> LoadedVlm:
    """A run directory (its ``auto``/``best``/``last`` weights) or an export directory."""
    path = Path(path)
    if (path / "config.json").is_file() and "vlm" in json.loads((path / "config.json").read_text()):
        return load_export(path, device)
    return load_run(path, weights, device)


def load_run(run_dir: Path, weights: str = "auto", device: str = "auto") -> LoadedVlm:
    """The trained model of a ``vlm`` run, rebuilt from its config without reading its chat
    data (the frozen LLM comes back from ``model.llm``, as in training)."""
    cfg, info = read_run(run_dir)
    if info.get("head", "vlm") != "vlm":
        raise RunDirError(f"{run_dir} is a {info['head']!r} run, not 'vlm'.")
    d, m = cfg["data"], cfg["model"]
    tokenizer = load_tokenizer(m["tokenizer"] or llm_location(m["llm"]), m["trust_remote_code"])
    entry = open_patches(d["patches"], Store(d["store"] or None), d["image_tokens"])
    path = ckpt_mod.weights_file(run_dir, weights)
    llm = load_llm(m["llm"], m["llm_weights"], m["trust_remote_code"], m["llm_seed"])
    model = VisionLanguageModel(llm, int(entry.row_shape[1]))
    model.llm.requires_grad_(m["train_llm"])  # frozen tensors are not in the run's weights
    ckpt_mod.load_trainable_state(model, ckpt_mod.read_weights(path), str(path))
    model.requires_grad_(False)
    vision = vision_info(entry)
    model.to(resolve_device(device)).eval()
    source = entry.manifest.get("source", {}).get("path", "")
    return LoadedVlm(model, make_encoder(tokenizer, d), vision, entry, source)


def vision_info(entry: Entry) -> dict[str, Any]:
    """What a model trained on ``entry`` expects of new images: the teacher's identity
    (architecture, weights, preprocessing), the output and its dtype."""
    inputs = entry.manifest["key_inputs"]
    return {
        "identity": {k: inputs[k] for k in IDENTITY_KEYS},
        "output": inputs["output"],
        "dtype": inputs["dtype"],
        "normalize": inputs.get("normalize", "none"),
        "width": int(entry.row_shape[1]),
        "entry": entry.key,
    }


# -- images -------------------------------------------------------------------------------------
def vision_teacher(vision: dict[str, Any], weights: str = "auto") -> Teacher:
    """The featstore teacher that made the training patches, rebuilt to encode new images;
    ``weights="auto"`` takes them from its recorded identity. A teacher whose identity differs
    (other weights, other preprocessing) is refused: its tokens are not what the model saw."""
    identity = vision["identity"]
    recorded = identity["weights"]
    options: dict[str, Any] = {}
    if weights == "auto":
        kind = recorded.get("kind")
        if kind == "random":
            weights, options = "random", {"seed": recorded.get("seed", 0)}
        elif kind == "pretrained":
            weights = "pretrained"
        elif kind == "hub":
            weights = recorded["repo"]
        else:
            raise ConfigError(
                f"the training patches were made by {identity['teacher']} with a local copy of "
                f"its weights (sha256 {str(recorded.get('sha256'))[:12]}...); give that copy "
                f"with --vision-weights PATH."
            )
    elif recorded.get("kind") == "random":
        options = {"seed": recorded.get("seed", 0)}
    teacher = create_teacher(identity["teacher"], weights=weights, **options)
    if canonical_json(teacher.identity()) != canonical_json(identity):
        raise ConfigError(
            f"the vision teacher {identity['teacher']} with weights {weights!r} is not the one "
            f"that made the training patches (recorded weights {recorded}); its patch tokens "
            f"would differ from what the model learned on. Use the same weights."
        )
    return teacher


class ImageEncoder:
    """Image files → patch tokens ``[T, width]``: the training entry's row when the file is one
    of its images (same folder, same relative path), else computed by the same teacher and
    rounded to the entry's dtype, as extraction would have stored it."""

    def __init__(self, loaded: LoadedVlm, weights: str = "auto") -> None:
        self.loaded, self.weights = loaded, weights
        self._teacher = None

    def __call__(self, path: str | Path) -> tuple[torch.Tensor, str]:
        """``(patches, how)`` with ``how`` = "cached (entry KEY)" or "computed (TEACHER)"."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"image {path} does not exist.")
        cached = self._cached(path)
        if cached is not None:
            return cached, f"cached (entry {self.loaded.entry.key})"
        return self._computed(path), f"computed ({self.loaded.vision['identity']['teacher']})"

    def _cached(self, path: Path) -> torch.Tensor | None:
        entry, source = self.loaded.entry, self.loaded.source
        if entry is None or not source:
            return None
        try:
            rel = path.resolve().relative_to(Path(source).resolve()).as_posix()
        except ValueError:
            return None
        ids = np.asarray([rel], dtype=object)
        if not entry.contains(ids)[0]:
            return None
        return torch.from_numpy(entry.gather(entry.positions(ids))[0])

    def _computed(self, path: Path) -> torch.Tensor:
        from PIL import Image

        if self._teacher is None:
            with quiet_transformers():
                self._teacher = vision_teacher(self.loaded.vision, self.weights)
        vision = self.loaded.vision
        if vision["output"] not in self._teacher.outputs or vision["normalize"] != "none":
            raise ConfigError(
                f"new images cannot be encoded like entry {vision['entry']} "
                f"(output {vision['output']}, normalize {vision['normalize']})."
            )
        with Image.open(path) as image:
            pixels = self._teacher.preprocessor(image.convert("RGB"))
        with torch.no_grad():
            out = self._teacher.forward(pixels[None], [vision["output"]])[vision["output"]]
        return out[0].float().cpu().to(getattr(torch, vision["dtype"]))


# -- export -------------------------------------------------------------------------------------
def export(loaded: LoadedVlm, out_dir: str | Path, dtype: str = "float32") -> Path:
    """``save_pretrained`` the LLM + projector (minimind-v's tensor names) with a config that
    names the vision teacher, and the tokenizer. Refuses a non-empty ``out_dir``."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise RunDirError(f"{out_dir} is not empty; export into a new directory.")
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ConfigError(f"--dtype {dtype!r}: use float32, bfloat16 or float16.")
    model, encoder = loaded.model, loaded.encoder
    state = {
        k: v.detach().to("cpu", getattr(torch, dtype)).contiguous()
        for k, v in to_minimind_v_names(model.state_dict()).items()
    }
    config = model.llm.config
    config.vlm = {
        **encoder.settings(),
        "image_token_id": int(encoder.image_token_id),
        "vision_hidden_size": int(loaded.vision["width"]),
        "vision": loaded.vision,
    }
    try:
        with quiet_transformers():
            model.llm.save_pretrained(out_dir, state_dict=state)
    finally:
        del config.vlm
    encoder.tokenizer.save_pretrained(out_dir)
    return out_dir


def load_export(path: Path, device: str = "auto") -> LoadedVlm:
    """An export directory back as a model, its encoder and its vision teacher's identity."""
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path)
    settings = getattr(config, "vlm", None)
    if not isinstance(settings, dict):
        raise RunDirError(f"{path} is not a VLM export (its config.json has no 'vlm' section).")
    with quiet_transformers():
        llm = AutoModelForCausalLM.from_pretrained(path)
    projector = {}
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            keys = list(f.keys())
            names = [k for k in keys if k.startswith("vision_proj.")]
            projector.update({k: f.get_tensor(k) for k in names})
    width = int(settings["vision_hidden_size"])
    weight = projector.get("vision_proj.vision_proj.0.weight")
    if weight is None:
        raise RunDirError(f"{path} holds no vision_proj tensors; it is an LLM, not a VLM export.")
    if tuple(weight.shape) != (llm_hidden_size(llm), width):
        raise ConfigError(
            f"{path}: the projector maps {weight.shape[1]} -> {weight.shape[0]}, but the "
            f"LLM's hidden size is {llm_hidden_size(llm)} and the patch tokens are {width} "
            f"wide; the export is inconsistent."
        )
    model = VisionLanguageModel(llm, width)
    model.vision_proj.load_state_dict(
        {k.removeprefix("vision_proj."): v for k, v in projector.items()}
    )
    model.float().requires_grad_(False).to(resolve_device(device)).eval()
    tokenizer = load_tokenizer(str(path))
    encoder = make_encoder(tokenizer, settings)
    return LoadedVlm(model, encoder, settings["vision"])
