"""The brain-to-text model: the t15 GRU baseline, layer for layer, with the seed's heads.

``day_weights``/``day_biases`` (one 512×512 affine map per session, softsign, dropout) →
patching (14 steps, stride 4, concatenated) → ``gru`` (5 layers, 768 units, learned ``h0``) →

- ``out``: Linear(768, 41), CTC phoneme logits (the published baseline);
- ``projector``: Linear(768, 1280) + LayerNorm, the seed's brain embedding in the Qwen2-Audio
  encoder's output space (aligned to cached audio frames, and fed to the optional frozen LLM).

Parameter names are the originals' (``GRUDecoder``: ``day_weights.N``, ``gru.*``, ``out.*``,
``h0``; the seed's ``BrainEncoder``: ``projector.0/1``), so their checkpoints load after
:func:`original_state_dict` strips the ``_orig_mod.``/``module.``/``brain_encoder.`` prefixes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


def patch_count(n_time_steps: Tensor | int, size: int, stride: int) -> Tensor | int:
    """Patches of a trial of ``n`` steps: ``floor((n - size) / stride) + 1`` (0 when ``n < size``),
    computed as the baseline does (float division, truncated toward zero)."""
    if size <= 0:
        return n_time_steps
    if isinstance(n_time_steps, Tensor):
        return ((n_time_steps - size) / stride + 1).to(torch.int64).clamp_min(0)
    return max(0, int((n_time_steps - size) / stride + 1))


class Brain2TextModel(nn.Module):
    """Day layers → patches → GRU → CTC head and/or embedding projector (+ optional frozen LLM).

    ``forward(features [B,T,C], day [B], n_time_steps [B])`` returns a dict with ``lengths`` (valid
    patches per trial), ``logits [B,P,n_classes]`` (with a CTC head) and ``embedding
    [B,P,audio_dim]`` (with a projector); with ``text`` (``{"ids" [B, L], "lengths" [B]}``, the
    transcripts' token ids) and an LLM also ``llm_loss``.
    """

    def __init__(
        self,
        n_days: int,
        neural_dim: int = 512,
        n_units: int = 768,
        n_layers: int = 5,
        n_classes: int = 41,
        rnn_dropout: float = 0.4,
        input_dropout: float = 0.2,
        patch_size: int = 14,
        patch_stride: int = 4,
        audio_dim: int = 1280,
        ctc_head: bool = True,
        projector: bool = True,
        llm: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if n_days < 1:
            raise ValueError("the model needs at least one day (session)")
        if patch_size < 0 or (patch_size > 0 and patch_stride < 1):
            raise ValueError(f"patch_size {patch_size} / patch_stride {patch_stride}")
        self.neural_dim, self.n_units, self.n_layers = neural_dim, n_units, n_layers
        self.patch_size, self.patch_stride = patch_size, patch_stride
        self.input_dropout = input_dropout
        self.day_layer_activation = nn.Softsign()
        self.day_weights = nn.ParameterList(
            [nn.Parameter(torch.eye(neural_dim)) for _ in range(n_days)]
        )
        self.day_biases = nn.ParameterList(
            [nn.Parameter(torch.zeros(1, neural_dim)) for _ in range(n_days)]
        )
        self.day_layer_dropout = nn.Dropout(input_dropout)
        self.gru = nn.GRU(
            neural_dim * max(1, patch_size),
            n_units,
            num_layers=n_layers,
            dropout=rnn_dropout,
            batch_first=True,
        )
        for name, param in self.gru.named_parameters():
            if "weight_hh" in name:
                nn.init.orthogonal_(param)
            if "weight_ih" in name:
                nn.init.xavier_uniform_(param)
        self.out = nn.Linear(n_units, n_classes) if ctc_head else None
        if self.out is not None:
            nn.init.xavier_uniform_(self.out.weight)
        # created after ``out`` as in the original, so the same seed gives the same h0
        self.h0 = nn.Parameter(nn.init.xavier_uniform_(torch.zeros(1, 1, n_units)))
        self.projector = (
            nn.Sequential(nn.Linear(n_units, audio_dim), nn.LayerNorm(audio_dim))
            if projector or llm is not None
            else None
        )
        self.llm = llm

    # -- the encoder ------------------------------------------------------------------------------
    def day_layer(self, x: Tensor, day: Tensor) -> Tensor:
        """``softsign(x @ W[day] + b[day])`` per trial, then dropout (the original's einsum over
        per-trial stacked day matrices, as one batched matmul)."""
        weights = torch.stack(tuple(self.day_weights))[day]  # [B, C, C]
        biases = torch.stack(tuple(self.day_biases))[day]  # [B, 1, C]
        out = self.day_layer_activation(torch.baddbmm(biases, x, weights))
        return self.day_layer_dropout(out) if self.input_dropout > 0 else out

    def patches(self, x: Tensor) -> Tensor:
        """``[B, T, C]`` → ``[B, P, size*C]``, each patch its ``size`` steps in time order."""
        if self.patch_size <= 0:
            return x
        b = x.shape[0]
        x = x.unfold(1, self.patch_size, self.patch_stride)  # [B, P, C, size]
        return x.transpose(2, 3).reshape(b, x.shape[1], -1)

    def encode(self, features: Tensor, day: Tensor) -> Tensor:
        """GRU outputs ``[B, P, n_units]``."""
        x = self.patches(self.day_layer(features, day))
        h0 = self.h0.expand(self.n_layers, x.shape[0], self.n_units).contiguous()
        out, _ = self.gru(x, h0)
        return out

    def lengths(self, n_time_steps: Tensor) -> Tensor:
        return patch_count(n_time_steps, self.patch_size, self.patch_stride)

    def forward(
        self, features: Tensor, day: Tensor, n_time_steps: Tensor, text: Any = None
    ) -> dict[str, Tensor]:
        hidden = self.encode(features, day)
        out: dict[str, Tensor] = {"lengths": self.lengths(n_time_steps)}
        if self.out is not None:
            out["logits"] = self.out(hidden)
        if self.projector is not None:
            out["embedding"] = self.projector(hidden)
        if text is not None:
            if self.llm is None:
                raise ValueError("text given, but the model has no LLM")
            out["llm_loss"] = self.llm(out["embedding"], out["lengths"], text)
        return out

    @torch.no_grad()
    def generate(
        self, features: Tensor, day: Tensor, n_time_steps: Tensor, **options: Any
    ) -> list[str]:
        """Text from brain tokens through the frozen LLM (greedy, or beam with ``num_beams``)."""
        if self.llm is None:
            raise ValueError("the model has no LLM")
        hidden = self.encode(features, day)
        return self.llm.generate(self.projector(hidden), self.lengths(n_time_steps), **options)


ORIGINAL_PREFIXES = ("_orig_mod.", "module.", "brain_encoder.")


def original_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A baseline (``GRUDecoder``, torch.compile'd or DataParallel) or seed (``Brain2TextModel``)
    state dict with our names: leading ``_orig_mod.``, ``module.`` and ``brain_encoder.`` go;
    the seed's frozen LLM and audio tensors are dropped."""
    out = {}
    for key, value in state.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in ORIGINAL_PREFIXES:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix) :], True
        if key.split(".")[0] in ("day_weights", "day_biases", "gru", "out", "h0", "projector"):
            out[key] = value
    return out
