"""The CaPOYO building blocks NeuroBridge uses: rotary time embedding, rotary cross- and
self-attention, the GEGLU feed-forward and the electrode embedding.

Written for this head after POYO/CaPOYO's ``torch_brain.nn`` as the seed used it (the seed's
fork of neuro-galaxy/torch_brain): the same arithmetic and the same submodule names, so a seed
state dict loads by name (``to_q``, ``to_kv``, ``to_out``, ``norm_context``, ``net.0``, ...).
The PyPI package is not a dependency: it pulls in ray, pynwb and pandas, and its current
``torch_brain.nn`` no longer has the ``FeedForward`` and ``Embedding`` the seed built on
(docs/heads/neurobridge.md, "torch-brain").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def logspace_periods(n: int, t_min: float, t_max: float) -> Tensor:
    """``n`` periods spaced logarithmically from ``t_min`` to ``t_max`` (both included)."""
    if not 0 < t_min < t_max:
        raise ValueError(f"need 0 < t_min < t_max, got t_min={t_min}, t_max={t_max}")
    fractions = torch.linspace(0, 1.0, n, dtype=torch.float32)
    low, high = torch.tensor(t_min).log(), torch.tensor(t_max).log()
    return torch.exp(torch.lerp(low, high, fractions))


class RotaryTimeEmbedding(nn.Module):
    """RoPE over time: the first ``rotate_dim`` dims of each head turn by ``t · omega``.

    ``forward(t)`` gives ``[..., 2 * head_dim]`` = (cos, sin) of the angles, each repeated for
    the pair of dims it turns; :meth:`rotate` applies it, :meth:`invert` turns it back.
    """

    omega: Tensor

    def __init__(self, head_dim: int, rotate_dim: int, t_min: float, t_max: float) -> None:
        super().__init__()
        if rotate_dim % 2 or rotate_dim > head_dim:
            raise ValueError(f"rotate_dim {rotate_dim} must be even and <= head_dim {head_dim}")
        omega = torch.zeros(head_dim // 2)
        omega[: rotate_dim // 2] = 2 * torch.pi / logspace_periods(rotate_dim // 2, t_min, t_max)
        self.register_buffer("omega", omega)

    @torch.no_grad()
    def forward(self, timestamps: Tensor) -> Tensor:
        angles = (timestamps[..., None] * self.omega).repeat_interleave(2, dim=-1)
        return torch.cat((angles.cos(), angles.sin()), dim=-1)

    @staticmethod
    def rotate(x: Tensor, rotary: Tensor) -> Tensor:
        """``x [B, H, N, D]`` turned by ``rotary [B, N, 2D]``."""
        cos, sin = rotary.unsqueeze(1).to(x.dtype).chunk(2, dim=-1)
        pairs = x.unflatten(-1, (-1, 2))
        half_turn = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
        return x * cos + half_turn * sin

    @staticmethod
    def invert(rotary: Tensor) -> Tensor:
        """The embedding of ``-t``."""
        cos, sin = rotary.chunk(2, dim=-1)
        return torch.cat((cos, -sin), dim=-1)


def rotary_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    q_rotary: Tensor | None,
    kv_rotary: Tensor | None,
    heads: int,
    mask: Tensor | None,
    dropout: float,
) -> Tensor:
    """Multi-head attention with RoPE on queries, keys and values (the values turned back to
    the query's time afterwards, as POYO's ``rotate_value=True``). A rotary of ``None`` is time
    0, the identity (NeuroBridge's 1024 electrode tokens: skipping it saves most of a step).
    ``mask [B, N_kv]``: True where a key may be attended to."""
    q, k, v = (t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in (q, k, v))
    if q_rotary is not None:
        q = RotaryTimeEmbedding.rotate(q, q_rotary)
    if kv_rotary is not None:
        k = RotaryTimeEmbedding.rotate(k, kv_rotary)
        v = RotaryTimeEmbedding.rotate(v, kv_rotary)
    attn_mask = None if mask is None else mask[:, None, None, :]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout)
    if q_rotary is not None:
        out = RotaryTimeEmbedding.rotate(out, RotaryTimeEmbedding.invert(q_rotary))
    return out.transpose(1, 2).flatten(-2)


class RotaryCrossAttention(nn.Module):
    """Pre-norm cross-attention (queries and context normed apart) with rotary time."""

    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float = 0.0) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads, self.dropout = heads, dropout
        self.norm = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim)

    def forward(
        self,
        x: Tensor,
        context: Tensor,
        x_rotary: Tensor | None,
        context_rotary: Tensor | None,
        context_mask: Tensor | None = None,
    ) -> Tensor:
        q = self.to_q(self.norm(x))
        k, v = self.to_kv(self.norm_context(context)).chunk(2, dim=-1)
        drop = self.dropout if self.training else 0.0
        out = rotary_attention(q, k, v, x_rotary, context_rotary, self.heads, context_mask, drop)
        return self.to_out(out)


class RotarySelfAttention(nn.Module):
    """Pre-norm self-attention with rotary time."""

    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float = 0.0) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads, self.dropout = heads, dropout
        self.norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim)

    def forward(self, x: Tensor, rotary: Tensor | None) -> Tensor:
        q, k, v = self.to_qkv(self.norm(x)).chunk(3, dim=-1)
        drop = self.dropout if self.training else 0.0
        return self.to_out(rotary_attention(q, k, v, rotary, rotary, self.heads, None, drop))


class GEGLU(nn.Module):
    """``x * gelu(gate)`` over the two halves of the last dim (Shazeer 2020)."""

    def forward(self, x: Tensor) -> Tensor:
        x, gate = x.chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    """Linear → GEGLU → dropout → linear, hidden width ``mult · dim``."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.2) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, dim * mult * 2),
            GEGLU(),
            nn.Dropout(dropout),
            nn.Linear(dim * mult, dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def prenorm_feedforward(dim: int, dropout: float) -> nn.Sequential:
    """``LayerNorm → FeedForward``, the residual branch after every attention block."""
    return nn.Sequential(nn.LayerNorm(dim), FeedForward(dim, dropout=dropout))


class ElectrodeEmbedding(nn.Module):
    """One learned vector per selected electrode, in a table with a zero padding row 0 (the
    layout of torch_brain's ``InfiniteVocabEmbedding`` after ``initialize_vocab``: ``NA`` = 0,
    then the electrodes; weight ``[n + 1, dim]``).

    ``rows="original"`` looks electrode ``i`` up at row ``i``, as the seed did (it passed local
    indices ``0..n-1`` to a table whose row 0 is padding, so its first electrode read the fixed
    zero row and the last row was never used); ``rows="vocab"`` at row ``i + 1``, the vocabulary's
    own mapping, which gives every electrode a trainable vector.
    """

    def __init__(self, n_electrodes: int, dim: int, init_scale: float, rows: str) -> None:
        super().__init__()
        if rows not in ("original", "vocab"):
            raise ValueError(f"electrode rows must be 'original' or 'vocab', not {rows!r}")
        self.weight = nn.Parameter(torch.empty(n_electrodes + 1, dim))
        self.offset = 0 if rows == "original" else 1
        nn.init.normal_(self.weight, std=init_scale)
        with torch.no_grad():
            self.weight[0].zero_()

    def forward(self, index: Tensor) -> Tensor:
        return F.embedding(index + self.offset, self.weight, padding_idx=0)
