"""ViECap's model: a transformer mapping network from one CLIP vector to soft-prompt tokens, in
front of a causal language model (GPT-2 by default) that reads ``[soft ; hard prompt ; caption]``.

Submodule names follow the original (``mapping_network.linear``, ``.prefix_const``,
``.transformer.layers.N.{norm1, attn.to_queries, attn.to_keys_values, attn.project, norm2,
mlp.fc1, mlp.fc2}``, ``gpt.*``), so an original checkpoint loads with ``load_state_dict``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ConfigError

PROMPT_ORDERS = ("soft_first", "hard_first", "hard_only", "soft_only")


def check_prompt_order(order: str) -> None:
    if order not in PROMPT_ORDERS:
        raise ConfigError(f"model.prompt_order = {order!r}; use one of {', '.join(PROMPT_ORDERS)}.")


class MlpTransformer(nn.Module):
    """Linear → ReLU → Linear (biases on both)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.relu(self.fc1(x)))


class MultiHeadAttention(nn.Module):
    """Self-attention with bias-free query and fused key/value projections and a biased output
    projection (the original's layout: the first half of ``to_keys_values`` is the keys)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"mapping width {dim} is not divisible by {num_heads} heads.")
        self.num_heads = num_heads
        self.to_queries = nn.Linear(dim, dim, bias=False)
        self.to_keys_values = nn.Linear(dim, 2 * dim, bias=False)
        self.project = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        h = self.num_heads
        q = self.to_queries(x).view(b, n, h, d // h).transpose(1, 2)
        k, v = self.to_keys_values(x).view(b, n, 2, h, d // h).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q·k / sqrt(d_head)) · v
        return self.project(out.transpose(1, 2).reshape(b, n, d))


class TransformerLayer(nn.Module):
    """Pre-LN block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MlpTransformer(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    def __init__(self, dim: int, num_layers: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            *(TransformerLayer(dim, num_heads, mlp_ratio) for _ in range(num_layers))
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class MappingNetwork(nn.Module):
    """CLIP vector ``[B, clip_dim]`` → ``prefix_length`` soft tokens ``[B, P, d_model]``.

    The vector is projected to ``clip_length`` tokens, followed by ``prefix_length`` learned
    tokens (``randn`` init); after the transformer only the learned tokens' outputs are kept.
    """

    def __init__(
        self,
        clip_dim: int = 512,
        d_model: int = 768,
        clip_length: int = 10,
        prefix_length: int = 10,
        num_layers: int = 8,
        num_heads: int = 8,
        mlp_ratio: float = 2.0,
    ) -> None:
        super().__init__()
        self.clip_length = clip_length
        self.linear = nn.Linear(clip_dim, clip_length * d_model)
        self.prefix_const = nn.Parameter(torch.randn(prefix_length, d_model))
        self.transformer = Transformer(d_model, num_layers, num_heads, mlp_ratio)

    def forward(self, x: Tensor) -> Tensor:
        projected = self.linear(x).view(x.shape[0], self.clip_length, -1)
        prefix = self.prefix_const.unsqueeze(0).expand(x.shape[0], -1, -1)
        out = self.transformer(torch.cat((projected, prefix.to(projected.dtype)), dim=1))
        return out[:, self.clip_length :]


class ViECapModel(nn.Module):
    """Mapping network + causal LM over ``[soft ; hard prompt ; caption]`` (or another order).

    ``forward(features, tokens, prompt_lengths, attention_mask)``: ``tokens [B, L]`` hold each
    sample's hard prompt (``prompt_lengths[b]`` tokens) followed by its caption and padding; the
    soft tokens go first (``soft_first``), after the hard prompt (``hard_first``), nowhere
    (``hard_only``); ``soft_only`` has no hard prompt (all prompt lengths 0). Returns the LM's
    logits over the whole input sequence.
    """

    def __init__(
        self, lm: nn.Module, mapping: MappingNetwork, prompt_order: str, frozen_lm: bool = False
    ) -> None:
        super().__init__()
        check_prompt_order(prompt_order)
        self.gpt = lm
        self.mapping_network = mapping
        self.prompt_order = prompt_order
        self.frozen_lm = frozen_lm

    def train(self, mode: bool = True) -> ViECapModel:
        """A frozen LM stays in eval mode (no dropout), as the original's ClipCaptionPrefix."""
        super().train(mode)
        if self.frozen_lm:
            self.gpt.eval()
        return self

    @property
    def soft_length(self) -> int:
        """Soft tokens in the LM's input (0 for ``hard_only``)."""
        return 0 if self.prompt_order == "hard_only" else self.mapping_network.prefix_const.shape[0]

    def word_embed(self, tokens: Tensor) -> Tensor:
        return self.gpt.get_input_embeddings()(tokens)

    def input_embeddings(
        self, features: Tensor, tokens: Tensor, prompt_lengths: Tensor | None = None
    ) -> Tensor:
        """The LM's input sequence ``[B, soft_length + L, d]``."""
        words = self.word_embed(tokens)
        if self.prompt_order == "hard_only":
            return words
        soft = self.mapping_network(features).to(words.dtype)
        embeds = torch.cat((soft, words), dim=1)
        if self.prompt_order != "hard_first" or prompt_lengths is None:
            return embeds
        # [hard_b ; soft ; rest_b]: a per-sample permutation of [soft ; hard_b ; rest_b]
        p, n = soft.shape[1], embeds.shape[1]
        pos = torch.arange(n, device=embeds.device).expand(len(embeds), n)
        lengths = prompt_lengths.to(embeds.device).unsqueeze(1)
        order = torch.where(
            pos < lengths, pos + p, torch.where(pos < lengths + p, pos - lengths, pos)
        )
        return embeds.gather(1, order.unsqueeze(-1).expand(-1, -1, embeds.shape[-1]))

    def forward(
        self,
        features: Tensor,
        tokens: Tensor,
        prompt_lengths: Tensor | None = None,
        attention_mask: Tensor | None = None,
    ) -> Tensor:
        embeds = self.input_embeddings(features, tokens, prompt_lengths)
        out = self.gpt(inputs_embeds=embeds.to(self.gpt.dtype), attention_mask=attention_mask)
        return out.logits


# -- language model and tokenizer --------------------------------------------------------------
def load_tokenizer(name_or_path: str) -> Any:
    """A transformers tokenizer by hub name, local folder, or ``tokenizer.json`` file."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    try:
        if str(name_or_path).endswith(".json") and Path(name_or_path).is_file():
            tok = PreTrainedTokenizerFast(tokenizer_file=str(name_or_path))
        else:
            tok = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"cannot load the tokenizer {name_or_path!r}: {_one_line(e)} Give a hub name "
            f"(cached, or with network access), a local folder, or a tokenizer.json file as "
            f"model.tokenizer."
        ) from None
    if tok.eos_token is None:
        tok.eos_token = tok.convert_ids_to_tokens(0)
    return tok


def load_language_model(
    name_or_path: str,
    weights: str = "pretrained",
    vocab_size: int | None = None,
    eos_id: int | None = None,
    layers: int = 0,
    width: int = 0,
    heads: int = 0,
) -> nn.Module:
    """A causal LM: ``pretrained`` weights by hub name or local path, or ``random``: the same
    architecture (its config from the path, or transformers' default config of a model type such
    as ``gpt2``) with a seeded init, optionally shrunk (``layers``/``width``/``heads`` > 0)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if weights == "pretrained":
        try:
            return AutoModelForCausalLM.from_pretrained(name_or_path)
        except (OSError, ValueError) as e:
            raise ConfigError(
                f"cannot load the language model {name_or_path!r}: {_one_line(e)} Download it "
                f"once with network access (HF cache; HF_HUB_OFFLINE=1 then works), give a local "
                f"folder, or use model.lm_weights = 'random' for a test run."
            ) from None
    if weights != "random":
        raise ConfigError(f"model.lm_weights = {weights!r}; use 'pretrained' or 'random'.")
    if os.path.isdir(name_or_path):
        config = AutoConfig.from_pretrained(name_or_path)
    else:
        try:
            config = AutoConfig.for_model(name_or_path)
        except ValueError:
            raise ConfigError(
                f"model.lm_weights = 'random' needs a model type (gpt2, opt, llama, ...) or a "
                f"local folder with config.json as model.language_model, not {name_or_path!r}."
            ) from None
    overrides = {
        "vocab_size": vocab_size,
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
        "num_hidden_layers": layers or None,
        "hidden_size": width or None,
        "num_attention_heads": heads or None,
    }
    for key, value in overrides.items():
        if value is not None:
            setattr(config, key, value)
    if width and hasattr(config, "n_inner"):
        config.n_inner = None  # GPT-2: 4 x width
    return AutoModelForCausalLM.from_config(config)


def _one_line(error: Exception) -> str:
    text = " ".join(str(error).split())
    return text if text.endswith(".") else text + "."
