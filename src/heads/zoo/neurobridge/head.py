"""NeuroBridge on TVSD: macaque MUA → CLIP ViT-L/14 image space, trained against cached targets.

One head, three model kinds (``model.kind``, one recipe each):

- ``align`` (recipes ``default`` = the seed's V2, ``v1``, ``finetune`` = V3): symmetric InfoNCE
  with a learnable temperature between the projected MUA and the images' CLIP embeddings;
- ``pretrain``: mask 25% of electrodes, reconstruct them (MSE on masked electrodes only);
- ``adapter``: the seed's DiffusionAdapter, trained on the CLIP image embeddings alone.

MUA rows pair with the featstore entries by position and by id (THINGS paths from
``things_imgs.mat``). Differences from the seed are listed in docs/heads/neurobridge.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from featstore import Store
from featstore.errors import FeatstoreError
from featstore.sources.tvsd import read_things_paths

from ...data.entries import open_config_entry
from ...data.tvsd import NormMUA, Selection, monkey_from_path, select_electrodes
from ...distributed import gather_with_grad
from ...errors import ConfigError, DataError
from ...head import Head, Progress
from ...losses.contrastive import clip_loss
from ...losses.sequence import masked_mse
from ...registry import register_head
from ...report import Report
from .model import AlignmentModel, DiffusionAdapter, EncoderConfig, PretrainModel

KINDS = ("align", "pretrain", "adapter")


@dataclass(frozen=True)
class Split:
    """Row indices of the train file's images: training rows and held-out validation rows."""

    train: np.ndarray
    val: np.ndarray


def seeded_split(ids: list[str], fraction: float, by: str, seed: int) -> Split:
    """Hold out ``fraction`` of the rows for validation.

    ``by="image"`` is the seed's ``torch.utils.data.random_split(dataset, [n - n_val, n_val],
    generator=manual_seed(seed))`` exactly (same rows, same order); ``by="concept"`` holds out
    ``int(fraction * concepts)`` whole concepts (the folder part of the THINGS path), chosen by
    the same seeded permutation, so no validation concept is seen in training."""
    n = len(ids)
    generator = torch.Generator().manual_seed(seed)
    if by == "image":
        order = torch.randperm(n, generator=generator).numpy()
        n_val = int(n * fraction)
        return Split(order[: n - n_val], order[n - n_val :])
    concepts = np.array([i.split("/")[0] for i in ids], dtype=object)
    names = np.unique(concepts)
    order = torch.randperm(len(names), generator=generator).numpy()
    held = set(names[order[: int(len(names) * fraction)]].tolist())
    is_val = np.array([c in held for c in concepts])
    return Split(np.flatnonzero(~is_val), np.flatnonzero(is_val))


class MuaRows(torch.utils.data.Dataset):
    """Training rows: MUA of the selected electrodes (in RAM) and/or their CLIP targets
    (memory-mapped featstore rows at the same positions). ``__getitems__`` builds a batch."""

    def __init__(self, rows: np.ndarray, mua: np.ndarray | None, targets: Any | None) -> None:
        self.rows, self.mua, self.targets = rows, mua, targets

    def __len__(self) -> int:
        return len(self.rows)

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        rows = self.rows[np.asarray(indices, dtype=np.int64)]
        batch = {}
        if self.mua is not None:
            batch["mua"] = torch.from_numpy(self.mua[rows])
        if self.targets is not None:
            batch["targets"] = torch.from_numpy(np.asarray(self.targets.gather(rows)))
        return batch


def _open_entry(key: str, store: Store, what: str):
    hint = "give the key of a clip-l-image `embeds` entry (`featstore ls` lists them)."
    entry = open_config_entry(key, store, f"data.{what}", hint)
    if entry.ragged or len(entry.row_shape) != 1:
        raise DataError(
            f"data.{what} = {key!r} has rows {entry.row_shape}; NeuroBridge needs one vector "
            f"per image (clip-l-image `embeds`)."
        )
    return entry


def _check_pairing(entry, ids: list[str], what: str, split: str) -> None:
    """Rows pair by position and id: same length, same ids in the same order."""
    if len(entry) != len(ids):
        raise DataError(
            f"data.{what} ({entry.key}) has {len(entry)} rows but the {split} MUA has "
            f"{len(ids)} images; extract the {split} split of things_imgs.mat "
            f"(--source-option split={split})."
        )
    have = [str(i) for i in entry.ids.tolist()]
    wrong = [i for i, (a, b) in enumerate(zip(have, ids, strict=True)) if a != b]
    if wrong:
        i = wrong[0]
        raise DataError(
            f"data.{what} ({entry.key}) does not pair with the {split} MUA rows: {len(wrong)} "
            f"ids differ, first at row {i} ({have[i]!r} vs {ids[i]!r} in things_imgs.mat); "
            f"extract it from this monkey's things_imgs.mat without --ids/--range."
        )


@register_head(
    "neurobridge",
    "NeuroBridge CaPOYO Perceiver: macaque MUA (TVSD) -> CLIP ViT-L/14 image space",
)
class NeuroBridge(Head):
    """NeuroBridge's alignment, masking pretraining and diffusion adapter on TVSD."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__(cfg)
        d, m, L = cfg["data"], cfg["model"], cfg["loss"]
        self.kind = m["kind"]
        if self.kind not in KINDS:
            raise ConfigError(f"model.kind={self.kind!r}: use {', '.join(KINDS)}.")
        self._check_numbers(d, m, L, cfg["eval"])
        store = Store(d["store"] or None)
        self.selection: Selection | None = None
        self.mua: NormMUA | None = None
        self.train_mua = None
        needs_mua = self.kind != "adapter"
        self.train_ids = self.test_ids = None
        if needs_mua or d["normmua"]:
            self._open_mua(d)
        self.targets = self.test_targets = None
        if self.kind != "pretrain":
            self.targets = _open_entry(d["train_targets"], store, "train_targets")
            if self.train_ids is not None:
                _check_pairing(self.targets, self.train_ids, "train_targets", "train")
        if self.kind == "align":
            self.test_targets = _open_entry(d["test_targets"], store, "test_targets")
            _check_pairing(self.test_targets, self.test_ids, "test_targets", "test")
            if self.test_targets.row_shape != self.targets.row_shape:
                raise DataError(
                    f"data.train_targets rows {self.targets.row_shape} and data.test_targets "
                    f"rows {self.test_targets.row_shape} differ; extract both with one teacher."
                )
        if self.kind == "adapter" and m["adapter_hidden"] != self.targets.row_shape[0]:
            raise ConfigError(
                f"model.adapter_hidden={m['adapter_hidden']} must equal the target width "
                f"{self.targets.row_shape[0]}: the seed's objective compares the mean output "
                f"token with the input CLIP embedding (both 768 for CLIP-L and SD-1.5)."
            )
        ids = self.train_ids or [str(i) for i in self.targets.ids.tolist()]
        self.split = seeded_split(ids, d["val_fraction"], d["val_split"], d["split_seed"])
        if len(self.split.val) < 2 or len(self.split.train) < 2:
            raise ConfigError(
                f"data.val_fraction={d['val_fraction']} leaves {len(self.split.train)} training "
                f"and {len(self.split.val)} validation images; both need at least 2."
            )
        if needs_mua:
            self.train_mua = self.mua.read("train_MUA", self.selection.channels)
        self.dataset = MuaRows(
            self.split.train,
            self.train_mua,
            self.targets if self.kind != "pretrain" else None,
        )

    @staticmethod
    def _check_numbers(d: dict, m: dict, L: dict, e: dict) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ConfigError(message)

        need(0 < d["val_fraction"] < 1, f"data.val_fraction={d['val_fraction']}: use (0, 1).")
        need(
            d["val_split"] in ("image", "concept"),
            f"data.val_split={d['val_split']!r}: use image (the seed's) or concept.",
        )
        need(
            0 <= L["electrode_dropout"] < 1,
            f"loss.electrode_dropout={L['electrode_dropout']}: use [0, 1).",
        )
        need(L["noise_std"] >= 0, f"loss.noise_std={L['noise_std']} is negative.")
        need(0 < L["mask_ratio"] < 1, f"loss.mask_ratio={L['mask_ratio']}: use (0, 1).")
        need(
            0 <= L["min_keep_ratio"] < 1,
            f"loss.min_keep_ratio={L['min_keep_ratio']}: use [0, 1).",
        )
        need(m["temperature"] > 0, f"model.temperature={m['temperature']} must be positive.")
        need(
            m["electrode_rows"] in ("original", "vocab"),
            f"model.electrode_rows={m['electrode_rows']!r}: use original (the seed's) or vocab.",
        )
        need(m["freeze_encoder_epochs"] >= 0, "model.freeze_encoder_epochs cannot be negative.")
        need(e["batch_size"] >= 2, f"eval.batch_size={e['batch_size']}: use 2 or more.")

    def _open_mua(self, d: dict) -> None:
        if not d["normmua"]:
            raise ConfigError(
                "data.normmua is not set: give TVSD's monkey{F,N}/THINGS_normMUA.mat."
            )
        path = Path(d["normmua"])
        self.mua = NormMUA.open(path)
        monkey = d["monkey"].removeprefix("monkey") or monkey_from_path(path)
        if monkey not in ("F", "N"):
            raise ConfigError(
                f"data.monkey={d['monkey']!r}: use F or N (the channel-to-area map differs "
                f"between the monkeys); it could not be read from the path {path}."
            )
        things = (
            Path(d["things_imgs"])
            if d["things_imgs"]
            else path.parent / "_logs" / "things_imgs.mat"
        )
        if not things.is_file():
            raise DataError(
                f"{things} does not exist; set data.things_imgs to this monkey's "
                f"_logs/things_imgs.mat (it names the image of every MUA row)."
            )
        try:
            self.train_ids = read_things_paths(things, "train")
            self.test_ids = read_things_paths(things, "test")
        except FeatstoreError as e:
            raise DataError(str(e)) from None
        for split, ids, n in (
            ("train", self.train_ids, self.mua.n_train),
            ("test", self.test_ids, self.mua.n_test),
        ):
            if len(ids) != n:
                raise DataError(
                    f"{things} lists {len(ids)} {split} images but {path} has {n} {split} MUA "
                    f"rows; use the two files of the same monkey."
                )
        self.selection = select_electrodes(
            self.mua,
            monkey,
            d["region"],
            d["snr_threshold"],
            d["reliab_threshold"],
            d["drop_nan_electrodes"],
        )

    # -- model ------------------------------------------------------------------------------------
    def encoder_config(self) -> EncoderConfig:
        m = self.cfg["model"]
        try:
            return EncoderConfig(
                n_electrodes=len(self.selection.channels),
                **{k: m[k] for k in ENCODER_KEYS},
            )
        except ValueError as e:
            raise ConfigError(f"model config: {e}") from None

    def build_model(self) -> nn.Module:
        m = self.cfg["model"]
        if self.kind == "adapter":
            return DiffusionAdapter(
                self.targets.row_shape[0],
                m["adapter_hidden"],
                m["adapter_tokens"],
                m["adapter_heads"],
                m["adapter_depth"],
            )
        channels = torch.from_numpy(self.selection.channels)
        if self.kind == "pretrain":
            return PretrainModel(self.encoder_config(), m["decoder_heads"], channels)
        return AlignmentModel(
            self.encoder_config(),
            output_dim=self.targets.row_shape[0],
            readout_queries=m["readout_queries"],
            readout_heads=m["readout_heads"],
            projector_hidden=m["projector_hidden"],
            temperature=m["temperature"],
            learn_temperature=m["learn_temperature"],
            channels=channels,
        )

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """Decay on every parameter (the seed's AdamW over ``model.parameters()``); the encoder
        can be held still for the first ``model.freeze_encoder_epochs`` (the seed's V3)."""
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        encoder = [p for n, p in named if n.startswith("encoder.")]
        rest = [p for n, p in named if not n.startswith("encoder.")]
        groups = [
            {
                "name": "encoder",
                "params": encoder,
                "frozen_epochs": self.cfg["model"]["freeze_encoder_epochs"],
            },
            {"name": "rest", "params": rest},
        ]
        return [g for g in groups if g["params"]]

    # -- data -------------------------------------------------------------------------------------
    def train_dataset(self) -> MuaRows:
        return self.dataset

    def collate(self, items: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return items  # MuaRows.__getitems__ already assembles the batch

    # -- loss -------------------------------------------------------------------------------------
    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor], progress: Progress):
        L = self.cfg["loss"]
        if self.kind == "adapter":
            clip = F.normalize(batch["targets"].float(), dim=-1)
            return adapter_loss(model(clip), clip, L)
        values = batch["mua"].float()
        if self.kind == "pretrain":
            masked = electrode_mask(
                values.shape, L["mask_ratio"], L["min_keep_ratio"], values.device
            )
            predicted = model(values.masked_fill(masked, 0.0), ~masked).float()
            loss = masked_mse(predicted, values, masked)
            parts = {
                "mask_fraction": masked.float().mean().detach(),
                "all_mse": F.mse_loss(predicted, values).detach(),
            }
            return loss, parts
        values, keep = augment(values, L["electrode_dropout"], L["noise_std"])
        out = model(values, keep)
        neural = gather_with_grad(out["embedding"].float())
        targets = gather_with_grad(F.normalize(batch["targets"].float(), dim=-1))
        loss = clip_loss(neural, targets, out["temperature"].float())
        return loss, {"temperature": out["temperature"].detach().float()}

    # -- evaluation -------------------------------------------------------------------------------
    def validate(self, model: nn.Module) -> dict[str, float]:
        from .evaluation import validate

        return validate(self, model)

    def evaluate(self, model: nn.Module, run_dir: Path) -> Report:
        from .evaluation import final_evaluation

        return final_evaluation(self, model, Path(run_dir))

    @classmethod
    def demo(cls, workdir: Path, progress: bool = True, log=print) -> Report:
        from .demo import run_demo

        return run_demo(workdir, progress=progress, log=log)


ENCODER_KEYS = (
    "dim",
    "depth",
    "dim_head",
    "cross_heads",
    "self_heads",
    "num_latents",
    "ffn_dropout",
    "lin_dropout",
    "atn_dropout",
    "emb_init_scale",
    "t_min",
    "t_max",
    "input_time",
    "latent_time",
    "electrode_rows",
)


def augment(
    values: torch.Tensor, dropout: float, noise_std: float
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The seed's V2 augmentation: each electrode dropped with probability ``dropout`` (value
    zeroed and hidden from the attention), then Gaussian noise of ``noise_std`` on every value."""
    keep = None
    if dropout > 0:
        keep = torch.rand(values.shape, device=values.device) > dropout
        values = values * keep
    if noise_std > 0:
        values = values + torch.randn_like(values) * noise_std
    return values, keep


def electrode_mask(
    shape: torch.Size,
    ratio: float,
    min_keep: float,
    device: torch.device,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Masked electrodes ``[B, N]``: each independently with probability ``ratio``; a row that
    would keep fewer than ``min_keep · N`` gets random masked ones back (the seed's rule)."""
    masked = torch.rand(shape, device=device, generator=generator) < ratio
    floor = int(shape[1] * min_keep)
    give_back = (floor - (~masked).sum(1, keepdim=True)).clamp_min(0)  # [B, 1], often 0
    # a random order of each row's masked electrodes (kept ones last); the first give_back of
    # them are unmasked: all on the device, no host sync in the training step
    order = torch.rand(shape, device=device, generator=generator).masked_fill(~masked, 2.0)
    rank = order.argsort(1).argsort(1)
    return masked & (rank >= give_back)


def adapter_loss(tokens: torch.Tensor, clip: torch.Tensor, L: dict) -> tuple[torch.Tensor, dict]:
    """The seed's adapter objective on CLIP image embeddings (no text targets): preservation
    ``1 - cos(mean token, input)``, token diversity (mean off-diagonal token cosine), symmetric
    InfoNCE of the mean token against the inputs at ``adapter_temp``, and a token-norm penalty
    ``mean((|token| - 1)²)``; weights ``adapter_*``."""
    tokens = tokens.float()
    mean_token = F.normalize(tokens.mean(dim=1), dim=-1)
    clip = F.normalize(clip, dim=-1)
    cos = (mean_token * clip).sum(-1)
    preservation = 1.0 - cos.mean()
    unit = F.normalize(tokens, dim=-1)
    n = tokens.shape[1]
    pairwise = unit @ unit.transpose(1, 2)
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=tokens.device)
    diversity = pairwise[:, off_diagonal].mean()
    contrastive = clip_loss(mean_token, clip, L["adapter_temp"])
    norm_reg = ((tokens.norm(dim=-1) - 1.0) ** 2).mean()
    loss = (
        L["adapter_preservation"] * preservation
        + L["adapter_diversity"] * diversity
        + L["adapter_contrastive"] * contrastive
        + L["adapter_norm"] * norm_reg
    )
    parts = {
        "cos_sim": cos.mean().detach(),
        "diversity": diversity.detach(),
        "contrastive": contrastive.detach(),
        "norm_reg": norm_reg.detach(),
    }
    return loss, parts
