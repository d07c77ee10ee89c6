"""minimind-v's model on cached patch tokens: a causal LM + VisionProj, images spliced in.

The vision tower (CLIP ViT-B/16) ran once in stage one; its patch tokens ``[196, 768]`` come
from the featstore entry. ``VisionProj`` maps them to the LLM's width and they replace the
embeddings of each image's placeholder run (``"@" * 196``) after the embedding lookup: the
sequence length never changes.

The LLM is a transformers causal LM. MiniMind (minimind-v's LLM) is a Llama-architecture
decoder, so it is built as ``LlamaForCausalLM``: same layers, same parameter names
(``model.layers.N.self_attn.q_proj.weight``, ...), same outputs as MiniMind's own code. This
module holds it as ``llm``; :func:`to_minimind_v_names` / :func:`from_minimind_v_names` map
state dicts to and from minimind-v's flat names (``model.*``, ``lm_head.weight``,
``vision_proj.vision_proj.0.*``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...errors import ConfigError


class VisionProj(nn.Module):
    """minimind-v's projector: one Linear (with bias) from the vision width to the LLM's,
    applied to every patch token (``vision_proj.0`` inside, as in minimind-v)."""

    def __init__(self, ve_hidden_size: int = 768, hidden_size: int = 512) -> None:
        super().__init__()
        self.vision_proj = nn.Sequential(nn.Linear(ve_hidden_size, hidden_size))

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.vision_proj(patches)


def splice_images(
    embeds: torch.Tensor, images: torch.Tensor, image_starts: torch.Tensor
) -> torch.Tensor:
    """``embeds [B, L, H]`` with image k's tokens ``images[k] [T, H]`` written over positions
    ``image_starts[k] = (row, start)`` .. ``start + T - 1``; out of place, so gradients reach
    both the projector and the surrounding text embeddings. No host sync: the chat encoder
    guarantees every run lies inside its row."""
    n, t, _ = images.shape
    if image_starts.shape != (n, 2):
        raise ValueError(f"{n} images but image_starts has shape {tuple(image_starts.shape)}")
    rows = image_starts[:, :1].expand(n, t)
    cols = image_starts[:, 1:] + torch.arange(t, device=embeds.device)
    return embeds.index_put((rows.reshape(-1), cols.reshape(-1)), images.reshape(n * t, -1))


class VisionLanguageModel(nn.Module):
    """minimind-v's ``MiniMindVLM`` without its frozen vision tower: ``llm`` + ``vision_proj``.

    ``forward(input_ids, patches, image_starts)`` → next-token logits ``[B, L, vocab]``.
    """

    def __init__(self, llm: nn.Module, vision_hidden: int) -> None:
        super().__init__()
        self.llm = llm
        self.vision_proj = VisionProj(vision_hidden, llm_hidden_size(llm))

    def embed(
        self,
        input_ids: torch.Tensor,
        patches: torch.Tensor | None = None,
        image_starts: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token embeddings with the projected images spliced in."""
        embeds = self.llm.get_input_embeddings()(input_ids)
        if patches is None or not len(patches):
            return embeds
        weight = self.vision_proj.vision_proj[0].weight
        images = self.vision_proj(patches.to(weight.dtype)).to(embeds.dtype)
        return splice_images(embeds, images, image_starts)

    def forward(
        self,
        input_ids: torch.Tensor,
        patches: torch.Tensor | None = None,
        image_starts: torch.Tensor | None = None,
    ) -> torch.Tensor:
        embeds = self.embed(input_ids, patches, image_starts)
        return self.llm(inputs_embeds=embeds, use_cache=False).logits


def llm_hidden_size(llm: nn.Module) -> int:
    return int(llm.get_input_embeddings().embedding_dim)


# -- the LLM ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class LlmPreset:
    """A named LLM: its hub repo (the released weights) and its Llama config."""

    repo: str
    config: dict[str, Any]


def _minimind(hidden: int, layers: int) -> dict[str, Any]:
    """MiniMind's config in Llama terms (minimind's MiniMindConfig defaults; the intermediate
    size is 64 * ceil(hidden * 8/3 / 64), as MiniMind's FeedForward computes it)."""
    return {
        "vocab_size": 6400,
        "hidden_size": hidden,
        "intermediate_size": 64 * -(-int(hidden * 8 / 3) // 64),
        "num_hidden_layers": layers,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "hidden_act": "silu",
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-5,
        "rope_theta": 1e6,
        "tie_word_embeddings": True,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
    }


LLM_PRESETS = {
    # MiniMind2-Small, 25.8 M: minimind-v's default LLM (MiniMind2-V, hidden 512)
    "minimind2-small": LlmPreset("jingyaogong/MiniMind2-Small", _minimind(512, 8)),
    # MiniMind2, 104 M: minimind-v's larger variant (hidden 768, 16 layers)
    "minimind2": LlmPreset("jingyaogong/MiniMind2", _minimind(768, 16)),
}


def llm_location(name: str) -> str:
    """Where an LLM (and by default its tokenizer) loads from: a preset's repo, or as given."""
    return LLM_PRESETS[name].repo if name in LLM_PRESETS else name


def llm_config(name: str, trust_remote_code: bool = False) -> Any:
    """The LLM's transformers config (a preset's, or read from its hub repo / directory)."""
    from transformers import AutoConfig, LlamaConfig

    if name in LLM_PRESETS:
        return LlamaConfig(**LLM_PRESETS[name].config)
    try:
        return AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"model.llm={name!r}: cannot read its config ({e}). {_LOAD_HINT}"
        ) from None


_LOAD_HINT = (
    "Give a hub id (downloaded once with network access, then cached), a local directory in "
    "transformers format, or a preset (" + ", ".join(LLM_PRESETS) + ")."
)


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """No load reports or progress bars from transformers while loading."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        hf_logging.enable_progress_bar()


def load_llm(
    name: str, weights: str = "pretrained", trust_remote_code: bool = False, seed: int = 0
) -> nn.Module:
    """The causal LM ``name``: ``weights="pretrained"`` loads its weights (a preset loads its
    repo's weights into the Llama architecture, whatever class the repo names); ``"random"``
    builds its architecture with random weights drawn from ``seed`` (the global RNG is left as
    it was, so the rest of the model is initialised as without this call)."""
    if weights not in ("pretrained", "random"):
        raise ConfigError(f"model.llm_weights={weights!r}: use pretrained or random.")
    config = llm_config(name, trust_remote_code)
    with quiet_transformers():
        return _load_llm(name, weights, config, trust_remote_code, seed)


def _load_llm(
    name: str, weights: str, config: Any, trust_remote_code: bool, seed: int
) -> nn.Module:
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    if weights == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if name in LLM_PRESETS:
                return LlamaForCausalLM(config)
            return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    try:
        if name in LLM_PRESETS:
            model, info = LlamaForCausalLM.from_pretrained(
                llm_location(name), config=config, output_loading_info=True
            )
            missing = [k for k in info["missing_keys"] if k != "lm_head.weight"]
            if missing:
                raise ConfigError(
                    f"{llm_location(name)} lacks {len(missing)} of MiniMind's tensors "
                    f"(first: {missing[:3]}); it is not a {name} checkpoint."
                )
            return model
        return AutoModelForCausalLM.from_pretrained(name, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise ConfigError(f"cannot load the LLM {name!r}: {e}. {_LOAD_HINT}") from None


def load_tokenizer(name: str, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot load the tokenizer {name!r}: {e}. {_LOAD_HINT}") from None


# -- minimind-v's parameter names ---------------------------------------------------------------
def to_minimind_v_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``llm.model.*`` → ``model.*`` (minimind-v's ``MiniMindVLM`` names); projector unchanged."""
    return {k.removeprefix("llm."): v for k, v in state.items()}


def from_minimind_v_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """minimind-v's ``MiniMindVLM`` state dict (e.g. ``sft_vlm_512.pth``) → this module's names;
    its ``vision_encoder.*`` tensors (the CLIP tower, cached here) are left out."""
    return {
        (k if k.startswith("vision_proj.") else f"llm.{k}"): v
        for k, v in state.items()
        if not k.startswith("vision_encoder.")
    }


def load_minimind_v_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """A minimind-v ``.pth`` (``pretrain_vlm_512.pth``, ``sft_vlm_512.pth``) in this module's
    names, as fp32 tensors (minimind-v saves half precision)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v.float() for k, v in from_minimind_v_names(state).items()}
