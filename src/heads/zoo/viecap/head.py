"""ViECap: a text-only trained, entity-aware CLIP-prefix captioner (GPT-2), on cached CLIP text
features of COCO captions.

Training reads each caption's CLIP ViT-B/32 text feature from a featstore entry by caption id,
normalizes it and adds Gaussian noise (the text-to-image gap), maps it to soft prompt tokens and
teaches the LM to write the caption after the hard prompt "There are <entities> in image." (each
entity dropped with p = 0.4). At inference the image feature replaces the text feature and the
entities come from the image (``decoding``). Differences from the original are listed in
docs/heads/viecap.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from featstore import Store

from ...data.coco_karpathy import CocoCaptions, normalize_caption, read_coco_captions
from ...data.entries import open_config_entry, require_ids
from ...errors import ConfigError, DataError
from ...head import Head, Progress, decay_groups
from ...losses.sequence import masked_lm_loss
from ...registry import register_head
from ...report import Report
from .batching import SequenceLayout, TokenTable, caption_length, hard_prompt
from .entities import EntityTable, load_object_vocabulary, mask_entities
from .model import (
    MappingNetwork,
    ViECapModel,
    check_prompt_order,
    load_language_model,
    load_tokenizer,
)


def noise_injection(x: torch.Tensor, variance: float) -> torch.Tensor:
    """``normalize(normalize(x) + N(0, variance))`` (ViECap / CapDec); identity for 0."""
    if variance <= 0:
        return x
    x = F.normalize(x, dim=-1)
    return F.normalize(x + torch.randn_like(x) * variance**0.5, dim=-1)


def open_feature_entry(key: str, store: Store, what: str):
    """A featstore entry named by a config key, with one clear error when it cannot be used."""
    entry = open_config_entry(key, store, what)
    if entry.ragged or len(entry.row_shape) != 1:
        raise DataError(
            f"{what} = {key!r} has rows {entry.row_shape}; ViECap needs one vector per item "
            f"(a vitb32-text / vitb32-image / vitb32-vocab `embeds` entry)."
        )
    return entry


class CaptionSet(torch.utils.data.Dataset):
    """Training captions. Index ``epoch · N + i`` is caption ``i`` in that epoch: its entity
    masking draws come from ``(seed, epoch, i)`` alone, so they do not depend on batch
    composition, ranks, DataLoader workers or resumption."""

    def __init__(self, head: ViECap, rows: np.ndarray, seed: int) -> None:
        self.head, self.rows, self.seed = head, rows, seed

    def __len__(self) -> int:
        return len(self.rows)

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        n = len(self.rows)
        idx = np.asarray(indices, dtype=np.int64)
        epochs, picks = idx // n, self.rows[idx % n]
        p = self.head.cfg["loss"]["mask_probability"]
        entities = [
            mask_entities(self.head.entities[r], p, np.random.default_rng((self.seed, e, r)))
            for e, r in zip(epochs.tolist(), picks.tolist(), strict=True)
        ]
        return self.head.make_batch(picks, entities)


@register_head("viecap", "ViECap: entity-aware CLIP-prefix captioner, text-only trained (GPT-2)")
class ViECap(Head):
    """Soft prompt from a CLIP text feature + entity hard prompt → GPT-2 caption."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__(cfg)
        d, m = cfg["data"], cfg["model"]
        self.store = Store(d["store"] or None)
        check_prompt_order(m["prompt_order"])
        if not d["captions"]:
            raise ConfigError(
                "data.captions is not set: give Karpathy's dataset_coco.json (the file the "
                "text entry was extracted from)."
            )
        if not d["objects"]:
            raise ConfigError(
                "data.objects is not set: give the object vocabulary for training entities "
                "(e.g. Visual Genome's objects, one per line or a JSON list)."
            )
        self.captions: CocoCaptions = read_coco_captions(d["captions"])
        self.text = open_feature_entry(d["text_entry"], self.store, "data.text_entry")
        self.objects = load_object_vocabulary(d["objects"])
        self.train_rows = self.captions.select(d["train_splits"])
        self._check_covered(self.train_rows, d["train_splits"])
        self.val_rows = np.zeros(0, np.int64)
        if d["val_splits"] and d["val_captions"] > 0:
            val = self.captions.select(d["val_splits"])
            val = val[self.text.contains(self.captions.caption_ids[val])]
            self.val_rows = val[: d["val_captions"]]
        # every caption row -> its feature row (only rows that are used are looked up)
        used = np.concatenate([self.train_rows, self.val_rows])
        self.feature_row = np.full(len(self.captions.caption_ids), -1, dtype=np.int64)
        self.feature_row[used] = self.text.positions(self.captions.caption_ids[used])
        self.tokenizer = load_tokenizer(m["tokenizer"] or m["language_model"])
        texts = [normalize_caption(t) for t in self.captions.texts]
        self.tokens = TokenTable.encode(self.tokenizer, [texts[r] for r in used])
        self.token_row = np.full(len(texts), -1, dtype=np.int64)
        self.token_row[used] = np.arange(len(used))
        self.entities = _EntityLookup(
            EntityTable.build(
                [texts[r] for r in used],
                self.objects,
                d["entity_tagger"],
                d["max_entities"],
                cache_dir=self.store.root / "sidecars",
                ids=self.captions.caption_ids[used],
            ),
            used,
            len(texts),
        )
        lengths = self.tokens.lengths()[: len(self.train_rows)]
        self.caption_length = d["caption_length"] or caption_length(lengths)
        self.layout = SequenceLayout(
            soft_length=0 if m["prompt_order"] == "hard_only" else m["prefix_length"],
            caption_length=self.caption_length,
            max_entities=d["max_entities"],
            use_hard_prompt=m["prompt_order"] != "soft_only",
        )
        self.dataset = CaptionSet(self, self.train_rows, cfg["train"]["seed"])

    def _check_covered(self, rows: np.ndarray, splits: str) -> None:
        fix = (
            f"Extract it over the same captions file: "
            f"featstore extract -t vitb32-text -s {self.captions.path}"
        )
        ids = self.captions.caption_ids[rows]
        require_ids(self.text, ids, f"{splits} caption ids", "data.text_entry", fix)

    # -- batches ----------------------------------------------------------------------------------
    def make_batch(self, rows: np.ndarray, entities: list[list[str]]) -> dict[str, torch.Tensor]:
        """Features, tokens and masks of caption ``rows`` with these (masked) entities."""
        prompts = self.tokenizer([hard_prompt(e) for e in entities], add_special_tokens=False)
        captions = [self.tokens[self.token_row[r]] for r in rows.tolist()]
        batch = self.layout.build(prompts["input_ids"], captions)
        feats = self.text.gather(self.feature_row[rows])
        batch["features"] = torch.from_numpy(np.ascontiguousarray(feats))
        return batch

    # -- model ------------------------------------------------------------------------------------
    def build_model(self) -> ViECapModel:
        m = self.cfg["model"]
        lm = load_language_model(
            m["language_model"],
            m["lm_weights"],
            vocab_size=len(self.tokenizer) if m["lm_weights"] == "random" else None,
            eos_id=self.tokenizer.eos_token_id if m["lm_weights"] == "random" else None,
            layers=m["lm_layers"],
            width=m["lm_width"],
            heads=m["lm_heads"],
        )
        mapping = MappingNetwork(
            clip_dim=self.text.row_shape[0],
            d_model=lm.get_input_embeddings().embedding_dim,
            clip_length=m["clip_length"],
            prefix_length=m["prefix_length"],
            num_layers=m["num_layers"],
            num_heads=m["num_heads"],
            mlp_ratio=m["mlp_ratio"],
        )
        return ViECapModel(lm, mapping, m["prompt_order"], frozen_lm=m["frozen_lm"])

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        mapping = decay_groups(model, list(model.mapping_network.named_parameters()), "mapping_")
        lm = list(model.gpt.parameters())
        if self.cfg["model"]["frozen_lm"]:
            return [{"name": "lm", "params": lm, "frozen": True}, *mapping]
        return [*mapping, *decay_groups(model, list(model.gpt.named_parameters()), "lm_")]

    # -- data -------------------------------------------------------------------------------------
    def train_dataset(self) -> CaptionSet:
        return self.dataset

    def collate(self, items: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return items  # CaptionSet.__getitems__ builds the batch

    def batch_plan(self, epoch: int, rng: np.random.Generator, batch_size: int, n_samples: int):
        """Shuffled full batches (the last partial one dropped, as the seed's DataLoader), as
        ``epoch · N + i`` indices (see :class:`CaptionSet`)."""
        base = super().batch_plan(epoch, rng, batch_size, n_samples)
        return [[epoch * n_samples + i for i in batch] for batch in base]

    # -- loss -------------------------------------------------------------------------------------
    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor], progress: Progress):
        features = batch["features"].float()
        if self.cfg["model"]["normalize_prefix"]:
            features = F.normalize(features, dim=-1)
        features = noise_injection(features, self.cfg["loss"]["noise_variance"])
        logits = model(features, batch["tokens"], batch["prompt_lengths"], batch["attention_mask"])
        loss = masked_lm_loss(logits, batch["labels"], batch["loss_mask"])
        return loss, {"caption_tokens": batch["loss_mask"].sum(1).float().mean()}

    # -- evaluation -------------------------------------------------------------------------------
    def validate(self, model: nn.Module) -> dict[str, float]:
        """Caption loss on validation captions (their text features, noise on, no masking)."""
        if not len(self.val_rows):
            return {}
        device = next(model.parameters()).device
        size = self.cfg["eval"]["batch_size"]
        total, count = 0.0, 0
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(self.cfg["eval"]["seed"])  # the same noise at every validation
            for start in range(0, len(self.val_rows), size):
                rows = self.val_rows[start : start + size]
                batch = self.make_batch(rows, [self.entities[r] for r in rows.tolist()])
                batch = {k: v.to(device) for k, v in batch.items()}
                loss, _ = self.loss(model, batch, None)
                n = int(batch["loss_mask"].sum())
                total, count = total + float(loss) * n, count + n
        return {"val_loss": total / max(1, count)}

    def evaluate(self, model: nn.Module, run_dir: Path) -> Report:
        from .evaluation import evaluate_split

        return evaluate_split(self, model, Path(run_dir))

    @classmethod
    def demo(cls, workdir: Path, progress: bool = True, log=print) -> Report:
        from .demo import run_demo

        return run_demo(Path(workdir), progress=progress, log=log)


class _EntityLookup:
    """Entities by caption row (the table holds only the rows in use)."""

    def __init__(self, table: EntityTable, rows: np.ndarray, n: int) -> None:
        self.table = table
        self.index = np.full(n, -1, dtype=np.int64)
        self.index[rows] = np.arange(len(rows))

    @property
    def method(self) -> str:
        return self.table.method

    def __getitem__(self, row: int) -> list[str]:
        return self.table.entities[self.index[row]]
