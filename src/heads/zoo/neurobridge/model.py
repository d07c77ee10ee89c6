"""NeuroBridge's models, layer for layer as the seed built them (parameter names included).

- :class:`NeuroBridgeEncoder`: CaPOYO tokens (one per electrode: value projection ‖ electrode
  embedding) → cross-attention into learned latents → self-attention × depth.
- :class:`AlignmentModel`: encoder → :class:`NeuralReadout` (learned queries cross-attend to the
  latents) → :class:`NeuralProjector` (mean-pool → MLP → LayerNorm → L2) into CLIP space, with
  InfoNCE's learnable temperature.
- :class:`PretrainModel`: encoder → :class:`MaskingDecoder` (one query per electrode) → values.
- :class:`DiffusionAdapter`: one CLIP-space vector → 77 SD-1.5 conditioning tokens.

Every token of a time-averaged MUA vector shares one timestamp (``input_time``) and the latents
sit at ``latent_time``, as in the seed's data pipeline; the rotary embeddings of both are fixed
buffers, so the Perceiver sees a constant relative rotation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import (
    ElectrodeEmbedding,
    RotaryCrossAttention,
    RotarySelfAttention,
    RotaryTimeEmbedding,
    prenorm_feedforward,
)


@dataclass(frozen=True)
class EncoderConfig:
    """The seed's ``NeuroBridgeEncoder`` arguments (defaults = the seed's)."""

    n_electrodes: int = 1024
    dim: int = 128
    depth: int = 6
    dim_head: int = 64
    cross_heads: int = 2
    self_heads: int = 4
    num_latents: int = 8
    ffn_dropout: float = 0.2
    lin_dropout: float = 0.4
    atn_dropout: float = 0.0
    emb_init_scale: float = 0.02
    t_min: float = 1e-4
    t_max: float = 2.0627
    input_time: float = 0.0  # the seed's input_timestamps (all zero)
    latent_time: float = 0.05  # the seed's latent_timestamps (latent_step / 2)
    electrode_rows: str = "original"

    def __post_init__(self) -> None:
        if self.dim % 2:
            raise ValueError(f"dim {self.dim} must be even (value and electrode halves)")
        if self.n_electrodes < 1:
            raise ValueError("no electrodes selected")


def rotary_at(
    rotary: RotaryTimeEmbedding, time: float, batch: int, n: int, like: Tensor
) -> Tensor | None:
    """The rotary embedding of ``n`` tokens at ``time``; None at time 0 (the identity)."""
    if time == 0:
        return None
    return rotary(torch.full((batch, n), time, device=like.device, dtype=torch.float32))


class NeuroBridgeEncoder(nn.Module):
    """MUA vector ``[B, N]`` → latents ``[B, num_latents, dim]`` (CaPOYO tokenization)."""

    def __init__(self, cfg: EncoderConfig, channels: Tensor | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        half = cfg.dim // 2
        # the recording channels of the selected electrodes, saved with the weights (a run
        # records which electrodes it was trained on)
        channels = torch.arange(cfg.n_electrodes) if channels is None else channels
        if channels.shape != (cfg.n_electrodes,):
            raise ValueError(f"{len(channels)} channels for {cfg.n_electrodes} electrodes")
        self.register_buffer("channels", channels.to(torch.int64).clone())
        self.input_value_map = nn.Linear(1, half)
        nn.init.trunc_normal_(self.input_value_map.weight, 0, cfg.emb_init_scale)
        nn.init.zeros_(self.input_value_map.bias)
        self.unit_emb = ElectrodeEmbedding(
            cfg.n_electrodes, half, cfg.emb_init_scale, cfg.electrode_rows
        )
        self.latent_emb = nn.Embedding(cfg.num_latents, cfg.dim)
        nn.init.normal_(self.latent_emb.weight, std=cfg.emb_init_scale)
        self.rotary_emb = RotaryTimeEmbedding(cfg.dim_head, cfg.dim_head // 2, cfg.t_min, cfg.t_max)
        self.dropout = nn.Dropout(cfg.lin_dropout)
        self.enc_atn = RotaryCrossAttention(cfg.dim, cfg.cross_heads, cfg.dim_head, cfg.atn_dropout)
        self.enc_ffn = prenorm_feedforward(cfg.dim, cfg.ffn_dropout)
        self.proc_layers = nn.ModuleList(
            nn.ModuleList(
                [
                    RotarySelfAttention(cfg.dim, cfg.self_heads, cfg.dim_head, cfg.atn_dropout),
                    prenorm_feedforward(cfg.dim, cfg.ffn_dropout),
                ]
            )
            for _ in range(cfg.depth)
        )
        self.latent_norm = nn.LayerNorm(cfg.dim)
        self.register_buffer("electrode_index", torch.arange(cfg.n_electrodes), persistent=False)
        self.register_buffer("latent_index", torch.arange(cfg.num_latents), persistent=False)

    def tokens(self, values: Tensor) -> Tensor:
        """One token per electrode: ``Linear(1 → dim/2)(value) ‖ embedding(electrode)``."""
        value_half = self.input_value_map(values.unsqueeze(-1))
        electrode_half = self.unit_emb(self.electrode_index).expand(values.shape[0], -1, -1)
        return torch.cat((value_half, electrode_half.to(value_half.dtype)), dim=-1)

    def forward(self, values: Tensor, keep: Tensor | None = None) -> Tensor:
        """``values [B, N]`` (one per selected electrode); ``keep [B, N]`` (optional): False
        hides an electrode from the cross-attention (dropped or masked)."""
        b, n = values.shape
        inputs = self.tokens(values)
        latents = self.latent_emb(self.latent_index).expand(b, -1, -1)
        latent_rot = rotary_at(self.rotary_emb, self.cfg.latent_time, b, latents.shape[1], values)
        input_rot = rotary_at(self.rotary_emb, self.cfg.input_time, b, n, values)
        latents = latents + self.enc_atn(latents, inputs, latent_rot, input_rot, keep)
        latents = latents + self.enc_ffn(latents)
        for attention, feedforward in self.proc_layers:
            latents = latents + self.dropout(attention(latents, latent_rot))
            latents = latents + self.dropout(feedforward(latents))
        return self.latent_norm(latents)


class NeuralReadout(nn.Module):
    """Learned queries cross-attend (``nn.MultiheadAttention``) to the latents, then an FFN."""

    def __init__(
        self, dim: int = 128, n_queries: int = 8, n_heads: int = 2, ffn_dropout: float = 0.2
    ) -> None:
        super().__init__()
        self.queries = nn.Parameter(torch.randn(n_queries, dim) * 0.02)
        self.cross_attn = nn.MultiheadAttention(dim, n_heads, batch_first=True)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = prenorm_feedforward(dim, ffn_dropout)

    def forward(self, latents: Tensor) -> Tensor:
        queries = self.queries.unsqueeze(0).expand(latents.shape[0], -1, -1)
        attended, _ = self.cross_attn(self.norm1(queries), latents, latents, need_weights=False)
        queries = queries + attended
        return queries + self.ffn(queries)


class NeuralProjector(nn.Module):
    """Mean over readout tokens → Linear/LN/GELU ×2 → Linear → LayerNorm → L2-normalize."""

    def __init__(self, input_dim: int = 128, hidden: int = 512, output_dim: int = 768) -> None:
        super().__init__()
        self.projector = nn.Sequential(
            nn.Linear(input_dim, hidden),
            nn.LayerNorm(hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.LayerNorm(hidden),
            nn.GELU(),
            nn.Linear(hidden, output_dim),
        )
        self.output_norm = nn.LayerNorm(output_dim)

    def forward(self, tokens: Tensor) -> Tensor:
        return F.normalize(self.output_norm(self.projector(tokens.mean(dim=1))), dim=-1)


class AlignmentModel(nn.Module):
    """MUA → unit vector in CLIP image space (+ the loss's learnable temperature)."""

    def __init__(
        self,
        encoder: EncoderConfig,
        output_dim: int = 768,
        readout_queries: int = 8,
        readout_heads: int = 2,
        projector_hidden: int = 512,
        temperature: float = 0.07,
        learn_temperature: bool = True,
        channels: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.encoder = NeuroBridgeEncoder(encoder, channels)
        self.readout = NeuralReadout(
            encoder.dim, readout_queries, readout_heads, ffn_dropout=encoder.ffn_dropout
        )
        self.projector = NeuralProjector(encoder.dim, projector_hidden, output_dim)
        log_t = torch.tensor(float(temperature)).log()
        if learn_temperature:
            self.log_temperature = nn.Parameter(log_t)
        else:
            self.register_buffer("log_temperature", log_t)

    def embed(self, values: Tensor, keep: Tensor | None = None) -> Tensor:
        return self.projector(self.readout(self.encoder(values, keep)))

    def forward(self, values: Tensor, keep: Tensor | None = None) -> dict[str, Tensor]:
        return {"embedding": self.embed(values, keep), "temperature": self.log_temperature.exp()}


class MaskingDecoder(nn.Module):
    """One query per electrode (zero value half ‖ its own electrode embedding) cross-attends to
    the latents; → LayerNorm → Linear(dim → 1): the predicted value of every electrode."""

    def __init__(self, encoder: EncoderConfig, heads: int = 2) -> None:
        super().__init__()
        cfg = encoder
        self.cfg = cfg
        half = cfg.dim // 2
        self.query_unit_emb = ElectrodeEmbedding(
            cfg.n_electrodes, half, cfg.emb_init_scale, cfg.electrode_rows
        )
        self.query_value_proj = nn.Linear(1, half)  # sees zeros: only its bias reaches the query
        nn.init.zeros_(self.query_value_proj.weight)
        nn.init.zeros_(self.query_value_proj.bias)
        self.rotary_emb = RotaryTimeEmbedding(cfg.dim_head, cfg.dim_head // 2, cfg.t_min, cfg.t_max)
        self.cross_attn = RotaryCrossAttention(cfg.dim, heads, cfg.dim_head, cfg.atn_dropout)
        self.cross_ffn = prenorm_feedforward(cfg.dim, cfg.ffn_dropout)
        self.output_norm = nn.LayerNorm(cfg.dim)
        self.output_proj = nn.Linear(cfg.dim, 1)
        nn.init.zeros_(self.output_proj.bias)
        self.register_buffer("electrode_index", torch.arange(cfg.n_electrodes), persistent=False)

    def forward(self, latents: Tensor) -> Tensor:
        b, n = latents.shape[0], self.cfg.n_electrodes
        zeros = latents.new_zeros(b, n, 1)
        electrodes = self.query_unit_emb(self.electrode_index).expand(b, -1, -1)
        queries = torch.cat((self.query_value_proj(zeros), electrodes.to(zeros.dtype)), dim=-1)
        query_rot = rotary_at(self.rotary_emb, self.cfg.input_time, b, n, latents)
        latent_rot = rotary_at(self.rotary_emb, self.cfg.latent_time, b, latents.shape[1], latents)
        decoded = queries + self.cross_attn(queries, latents, query_rot, latent_rot)
        decoded = decoded + self.cross_ffn(decoded)
        return self.output_proj(self.output_norm(decoded)).squeeze(-1)


class PretrainModel(nn.Module):
    """Masked-electrode reconstruction: encoder over the kept electrodes → every value."""

    def __init__(
        self, encoder: EncoderConfig, decoder_heads: int = 2, channels: Tensor | None = None
    ) -> None:
        super().__init__()
        self.encoder = NeuroBridgeEncoder(encoder, channels)
        self.decoder = MaskingDecoder(encoder, decoder_heads)

    def forward(self, values: Tensor, keep: Tensor | None = None) -> Tensor:
        return self.decoder(self.encoder(values, keep))


class RefinerLayer(nn.ModuleList):
    """Pre-norm self-attention + GELU MLP; the seed's ``[norm, attention, norm, mlp]`` list."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__(
            [
                nn.LayerNorm(dim),
                nn.MultiheadAttention(dim, heads, batch_first=True),
                nn.LayerNorm(dim),
                nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)),
            ]
        )

    def forward(self, tokens: Tensor) -> Tensor:
        norm1, attention, norm2, mlp = self
        normed = norm1(tokens)
        tokens = tokens + attention(normed, normed, normed, need_weights=False)[0]
        return tokens + mlp(norm2(tokens))


class DiffusionAdapter(nn.Module):
    """A CLIP-space vector ``[B, D]`` → ``[B, n_tokens, hidden]`` SD-1.5 prompt conditioning:
    learned queries cross-attend to the projected vector, then ``depth`` refiner layers."""

    def __init__(
        self,
        clip_dim: int = 768,
        hidden: int = 768,
        n_tokens: int = 77,
        heads: int = 8,
        depth: int = 2,
    ) -> None:
        super().__init__()
        self.query_tokens = nn.Parameter(torch.randn(n_tokens, hidden) * 0.02)
        self.clip_proj = nn.Linear(clip_dim, hidden)
        self.cross_attn = nn.MultiheadAttention(hidden, heads, batch_first=True)
        self.cross_norm = nn.LayerNorm(hidden)
        self.refiner = nn.ModuleList(RefinerLayer(hidden, heads) for _ in range(depth))
        self.output_norm = nn.LayerNorm(hidden)

    def forward(self, embedding: Tensor) -> Tensor:
        context = self.clip_proj(embedding).unsqueeze(1)
        queries = self.query_tokens.unsqueeze(0).expand(embedding.shape[0], -1, -1)
        attended, _ = self.cross_attn(
            self.cross_norm(queries), context, context, need_weights=False
        )
        tokens = queries + attended
        for layer in self.refiner:
            tokens = layer(tokens)
        return self.output_norm(tokens)


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def from_seed_state_dict(state: dict) -> dict[str, Tensor]:
    """A seed checkpoint's ``model_state_dict`` as tensors this head loads: drops the
    ``*.vocab`` entries (torch_brain keeps the electrode vocabulary, an ``OrderedDict``, in the
    state dict) after checking that each lists the electrodes in order (``NA`` first)."""
    out = {}
    for name, value in state.items():
        if name.endswith(".vocab"):
            words = list(value) if value is not None else []
            rows = [value[w] for w in words] if words else []
            if words[:1] != ["NA"] or rows != list(range(len(words))):
                raise ValueError(f"{name}: expected NA then the electrodes in row order")
            continue
        out[name] = value
    return out
