"""MindEye2's retrieval pathway (+ the TextAlign head), layer for layer.

Checked against the public MedARC-AI/MindEyeV2 code (our own code; facts only):

* ``src/models.py`` @ 53bdcf1a, ``class BrainNetwork``:
  - ``mixer_block1(h)`` = ``Sequential(LayerNorm(h), Sequential(Linear(h,h), GELU, Dropout,
    Linear(h,h)))``; ``mixer_block2(seq_len)`` is the same over ``seq_len``, applied to the
    ``[B, h, seq_len]`` transpose.
  - ``backbone_linear = Linear(h*seq_len, 256*1664)``, reshaped to ``[B, -1, clip_size]``.
  - ``clip_proj = projector(clip_size, clip_size, h=clip_size)`` = 3 x ``[LayerNorm, GELU,
    Linear]`` (LayerNorm FIRST, then GELU, then Linear), applied per token.
  - forward keeps two residual streams (see :class:`BrainNetwork`, ``residual="original"``).
* ``src/Train.py`` @ 0541a41a: ``RidgeRegression`` = one ``Linear(V_s, h)`` per subject, applied
  to ``[B, seq, V_s]``; "ridge" is only AdamW's weight decay 1e-2.

State-dict keys mirror the original (``ridge.linears.{s}.*``;
``backbone.mixer_blocks{1,2}.{i}.0.*`` = LN, ``.1.0.*`` / ``.1.3.*`` = Linears;
``backbone.backbone_linear.*``; ``backbone.clip_proj.{0,2,3,5,6,8}.*``), so a MindEye2 checkpoint
loads with ``strict=False`` (its blurry/prior keys are then ignored).

Left out on purpose: the blurry branch (``blin1``/``bupsampler``/``b_maps_projector`` -> SD-VAE
latents ``[B,4,28,28]``) and the diffusion prior; only the retrieval (``clip_voxels``) and
``backbone`` outputs are produced.

TextAlign: ``TextAlignHead`` maps the ``backbone`` tokens to a CLIP-L text vector. The seed script
never gave ``text_head`` to its optimizer, so the head stayed at its random init while still
back-propagating into the backbone. Here it is an ordinary submodule: an optimizer built from
``model.parameters()`` (or :func:`param_groups`) trains it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

Residual = Literal["original", "per_block"]


class RidgeRegression(nn.Module):
    """One ``Linear(n_voxels[s], hidden)`` per subject: ``[B, seq, V_s] -> [B, seq, hidden]``."""

    def __init__(self, n_voxels: Sequence[int], hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.linears = nn.ModuleList(nn.Linear(int(v), hidden) for v in n_voxels)

    def forward(self, x: Tensor, subject: int) -> Tensor:
        return self.linears[subject](x)


class MixerBlock(nn.Sequential):
    """``LayerNorm(dim) -> Linear(dim,dim) -> GELU -> Dropout -> Linear(dim,dim)`` (no residual;
    :class:`BrainNetwork` adds it). Index layout ``[0]=LN, [1]=MLP`` matches the original."""

    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__(
            nn.LayerNorm(dim),
            nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, dim)),
        )


def clip_projector(dim: int) -> nn.Sequential:
    """MindEye2's ``projector(dim, dim, h=dim)``: 3 x ``[LayerNorm, GELU, Linear(dim, dim)]``."""
    layers: list[nn.Module] = []
    for _ in range(3):
        layers += [nn.LayerNorm(dim), nn.GELU(), nn.Linear(dim, dim)]
    return nn.Sequential(*layers)


class BrainNetwork(nn.Module):
    """MLP-Mixer backbone: ``[B, seq_len, hidden] -> (backbone, clip_voxels)``, each
    ``[B, clip_tokens, clip_dim]``.

    ``residual="original"`` reproduces MindEye2's forward exactly. It carries two residual
    streams, ``r1`` (after each ``mixer_blocks1``) and ``r2`` (after each ``mixer_blocks2``)::

        x_k = block1_k(y_{k-1}) + x_{k-1}            # x_0 = y_0 = input
        y_k = block2_k(x_k^T)^T + y_{k-1}            # output: y_n_blocks

    so ``block1``'s output reaches the result only through ``block2``. At ``seq_len == 1``,
    ``LayerNorm(1)`` returns its bias whatever the input, so ``block2`` emits a constant and the
    whole mixer reduces to ``input + constant``: ``mixer_blocks1`` get exactly zero gradient and
    the published model is effectively ridge -> backbone_linear -> clip_proj.
    ``residual="per_block"`` is the textbook mixer (``x = x + block(x)`` for both blocks) where
    ``mixer_blocks1`` do act at ``seq_len == 1``. Same parameters either way.
    """

    def __init__(
        self,
        hidden: int,
        seq_len: int = 1,
        n_blocks: int = 4,
        dropout: float = 0.15,
        clip_tokens: int = 256,
        clip_dim: int = 1664,
        residual: Residual = "original",
    ) -> None:
        super().__init__()
        if residual not in ("original", "per_block"):
            raise ValueError(f"residual must be 'original' or 'per_block', not {residual!r}")
        self.hidden, self.seq_len = hidden, seq_len
        self.clip_tokens, self.clip_dim = clip_tokens, clip_dim
        self.residual = residual
        self.mixer_blocks1 = nn.ModuleList(MixerBlock(hidden, dropout) for _ in range(n_blocks))
        self.mixer_blocks2 = nn.ModuleList(MixerBlock(seq_len, dropout) for _ in range(n_blocks))
        self.backbone_linear = nn.Linear(hidden * seq_len, clip_tokens * clip_dim)
        self.clip_proj = clip_projector(clip_dim)

    def mix(self, x: Tensor) -> Tensor:
        """The mixer stack alone: ``[B, seq_len, hidden] -> [B, seq_len, hidden]``."""
        blocks = zip(self.mixer_blocks1, self.mixer_blocks2, strict=True)
        if self.residual == "per_block":
            for block1, block2 in blocks:
                x = x + block1(x)
                x = x + block2(x.transpose(1, 2)).transpose(1, 2)
            return x
        res1, res2 = x, x.transpose(1, 2)
        for block1, block2 in blocks:
            x = block1(x) + res1
            res1 = x
            x = block2(x.transpose(1, 2)) + res2
            res2 = x
            x = x.transpose(1, 2)
        return x

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.dim() != 3 or x.shape[1:] != (self.seq_len, self.hidden):
            raise ValueError(f"expected [B, {self.seq_len}, {self.hidden}], got {list(x.shape)}")
        x = self.mix(x).reshape(x.shape[0], -1)
        backbone = self.backbone_linear(x).reshape(x.shape[0], self.clip_tokens, self.clip_dim)
        return backbone, self.clip_proj(backbone)


class TextAlignHead(nn.Module):
    """Mean-pool tokens -> ``LayerNorm(token_dim) -> Linear(token_dim, hidden) -> GELU ->
    Linear(hidden, text_dim)``: ``[B, T, token_dim] -> [B, text_dim]`` (unnormalized)."""

    def __init__(self, token_dim: int = 1664, hidden: int = 2048, text_dim: int = 768) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(token_dim)
        self.fc1 = nn.Linear(token_dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, text_dim)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(self.norm(tokens.mean(dim=1)))))


class MindEyeModel(nn.Module):
    """Per-subject ridge -> shared :class:`BrainNetwork` -> optional :class:`TextAlignHead`.

    ``forward(voxels_per_subject)`` takes one ``[B_s, 1, V_s]`` tensor per subject (``None`` or
    ``B_s == 0`` to skip one), runs subject ``s``'s ridge on it (``subject_ids`` overrides which
    ridge each list entry uses) and concatenates the results in list order, so output row ``i``
    is the ``i``-th row of the concatenated batch. Returns ``dict(backbone=[B,T,D],
    clip_voxels=[B,T,D], text=[B,text_dim] | None)``; ``text`` is computed from ``backbone``.
    Every parameter is trainable; there is nothing to add to an optimizer by hand.
    """

    def __init__(
        self,
        n_voxels: Sequence[int],
        hidden: int,
        n_blocks: int,
        clip_tokens: int,
        clip_dim: int,
        text_dim: int | None,
        text_hidden: int = 2048,
        dropout: float = 0.15,
        residual: Residual = "original",
    ) -> None:
        super().__init__()
        self.n_voxels = [int(v) for v in n_voxels]
        self.ridge = RidgeRegression(self.n_voxels, hidden)
        self.backbone = BrainNetwork(
            hidden,
            seq_len=1,
            n_blocks=n_blocks,
            dropout=dropout,
            clip_tokens=clip_tokens,
            clip_dim=clip_dim,
            residual=residual,
        )
        self.text_head = (
            TextAlignHead(clip_dim, text_hidden, text_dim) if text_dim is not None else None
        )

    def forward(
        self,
        voxels_per_subject: Sequence[Tensor | None],
        subject_ids: Sequence[int] | None = None,
    ) -> dict[str, Tensor | None]:
        if subject_ids is None:
            subject_ids = range(len(voxels_per_subject))
        if len(subject_ids) != len(voxels_per_subject):
            raise ValueError("subject_ids and voxels_per_subject differ in length")
        hidden = []
        for s, vox in zip(subject_ids, voxels_per_subject, strict=True):
            if vox is None or vox.shape[0] == 0:
                continue
            if vox.dim() != 3 or vox.shape[-1] != self.n_voxels[s]:
                raise ValueError(
                    f"subject {s}: expected [B, 1, {self.n_voxels[s]}], got {list(vox.shape)}"
                )
            hidden.append(self.ridge(vox, s))
        if not hidden:
            raise ValueError("no voxels given")
        backbone, clip_voxels = self.backbone(torch.cat(hidden, dim=0))
        text = self.text_head(backbone) if self.text_head is not None else None
        return {"backbone": backbone, "clip_voxels": clip_voxels, "text": text}


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: ``weight_decay`` on matrices, 0 on every 1-d parameter (biases, LayerNorm
    weights and biases). Covers all trainable parameters, text head included.

    (The original's ``no_decay`` name match never hit ``LayerNorm.weight`` inside its Sequentials
    and decayed the ridge biases; this is the conventional grouping instead.)
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]
