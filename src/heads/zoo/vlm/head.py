"""minimind-v on cached ViT-B/16 patch tokens: projector pretraining, SFT, evaluation.

Stage one cached the frozen vision tower (``featstore extract -t vitb16-patch -s images/``:
``[196, 768]`` per image, id = path relative to the folder). This head reads minimind-v's chat
JSONL, splices each image's projected patch tokens into the LLM's input and trains with the
masked next-token loss. ``model.train_llm = false`` (the default recipe) is minimind-v's
``train_pretrain_vlm.py`` (only ``VisionProj`` trains); the ``sft`` recipe is
``train_sft_vlm.py`` (LLM + projector). Differences from minimind-v: docs/heads/vlm.md.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from featstore import Entry, Store

from ...checkpoint import weights_file
from ...data.chat_jsonl import ChatEncoder, ChatSample, pad_batch, read_chat_jsonl
from ...data.entries import open_config_entry
from ...errors import ConfigError, DataError
from ...head import Head, Progress
from ...losses.sequence import masked_lm_loss
from ...registry import register_head
from ...report import Report
from .model import VisionLanguageModel, llm_config, llm_location, load_llm, load_tokenizer

PROJECTOR_WEIGHT = "vision_proj.vision_proj.0.weight"


def make_encoder(tokenizer: Any, data: dict[str, Any]) -> ChatEncoder:
    """The chat encoder that ``data`` (the config's data section) describes."""
    return ChatEncoder(
        tokenizer,
        max_length=data["max_seq_len"],
        image_tag=data["image_tag"],
        image_token=data["image_token"],
        image_tokens=data["image_tokens"],
        assistant_start=data["assistant_start"],
        turn_end=data["turn_end"],
    )


def open_patches(key: str, store: Store, image_tokens: int, what: str = "data.patches") -> Entry:
    """The featstore entry of patch tokens, checked: fixed rows of ``[image_tokens, width]``."""
    hint = (
        "give the key of the image folder's patch-token entry "
        "(`featstore extract -t vitb16-patch -s IMAGES`; `featstore ls` lists keys)."
    )
    entry = open_config_entry(key, store, what, hint)
    shape = entry.row_shape
    if entry.ragged or len(shape) != 2 or shape[0] != image_tokens:
        raise DataError(
            f"{what} = {entry.key} (teacher {entry.manifest.get('teacher')}) has rows "
            f"{'ragged' if entry.ragged else list(shape)}; the VLM needs patch tokens "
            f"[{image_tokens}, width] per image (vitb16-patch `patches`)."
        )
    return entry


def check_images(entry: Entry, samples: list[ChatSample], path: str, what: str) -> None:
    """Every image the samples name has a row in ``entry``."""
    names = np.asarray(sorted({n for s in samples for n in s.images}), dtype=object)
    if not len(names):
        return
    missing = names[~entry.contains(names)]
    if len(missing):
        raise DataError(
            f"{len(missing)} of {len(names)} images named in {path} are missing from {what} "
            f"(entry {entry.key}, teacher {entry.manifest.get('teacher')}, ids like "
            f"{entry.ids[:2].tolist()}); first: {missing[:5].tolist()}. Extract the patches "
            f"over the folder that holds them (ids are paths relative to it)."
        )


def check_projector(source: str | Path, vision_hidden: int, hidden: int, llm: str) -> None:
    """``--init-from``'s projector must map this run's patch width to this LLM's width."""
    from safetensors import safe_open

    source = Path(source)
    path = weights_file(source) if source.is_dir() else source
    with safe_open(str(path), "pt") as f:
        names = set(f.keys())
        if PROJECTOR_WEIGHT not in names:
            return  # no projector to carry over: the framework reports what is left at init
        out_dim, in_dim = f.get_slice(PROJECTOR_WEIGHT).get_shape()
    if (in_dim, out_dim) != (vision_hidden, hidden):
        raise ConfigError(
            f"--init-from {source}: its projector maps {in_dim} -> {out_dim}, but here the "
            f"patch tokens are {vision_hidden} wide and the LLM {llm!r} has hidden size "
            f"{hidden}. Use the LLM and the vision teacher of that run (or --init-skip "
            f"'vision_proj.*' to start the projector afresh)."
        )


class ChatBatches(torch.utils.data.Dataset):
    """Conversations → padded token batches with their images' patch tokens.

    ``__getitems__`` tokenizes a micro-batch (minimind-v tokenizes per sample in its Dataset
    too), pads it to its longest sample and gathers the patch tokens of the images that
    survived truncation, in order, from the memory-mapped entry.
    """

    def __init__(self, samples: list[ChatSample], encoder: ChatEncoder, entry: Entry) -> None:
        self.samples, self.encoder, self.entry = samples, encoder, entry

    def __len__(self) -> int:
        return len(self.samples)

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        samples = [self.samples[i] for i in indices]
        encoded = [self.encoder.encode(s) for s in samples]
        batch = pad_batch(encoded, self.encoder.pad_id)
        kept = [s.images[: len(e.image_starts)] for s, e in zip(samples, encoded, strict=True)]
        return {
            "input_ids": torch.from_numpy(batch["input_ids"]),
            "targets": torch.from_numpy(batch["targets"]),
            "image_starts": torch.from_numpy(batch["image_starts"]),
            "patches": torch.from_numpy(self.patches([n for names in kept for n in names])),
        }

    def patches(self, names: list[str]) -> np.ndarray:
        """``[len(names), T, width]`` patch tokens of the named images, in order."""
        if not names:
            return np.zeros((0, *self.entry.row_shape), dtype=self.entry.dtype)
        return self.entry.gather(self.entry.positions(np.asarray(names, dtype=object)))


@register_head(
    "vlm", "minimind-v: a small LLM + VisionProj on cached ViT-B/16 patch tokens (chat JSONL)"
)
class Vlm(Head):
    """minimind-v's two stages (projector pretraining, SFT) on cached patch tokens."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__(cfg)
        d, m = cfg["data"], cfg["model"]
        # The fast tokenizer's own threads would deadlock in forked DataLoader workers.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        if not d["train"]:
            raise ConfigError(
                "data.train is not set: give minimind-v's chat JSONL (pretrain_data.jsonl for "
                "stage 1, sft_data.jsonl for the sft recipe)."
            )
        if m["llm_weights"] not in ("pretrained", "random"):
            raise ConfigError(f"model.llm_weights={m['llm_weights']!r}: use pretrained or random.")
        self.tokenizer = load_tokenizer(
            m["tokenizer"] or llm_location(m["llm"]), m["trust_remote_code"]
        )
        self.encoder = make_encoder(self.tokenizer, d)
        self.train_samples = read_chat_jsonl(d["train"], d["image_tag"])
        self.val_samples = read_chat_jsonl(d["val"], d["image_tag"]) if d["val"] else []
        for sample in (*self.train_samples, *self.val_samples):
            self.encoder.check(sample)
        store = Store(d["store"] or None)
        self.entry = open_patches(d["patches"], store, d["image_tokens"])
        check_images(self.entry, self.train_samples, d["train"], "data.patches")
        self.val_entry = self.entry
        if self.val_samples:
            if d["val_patches"]:
                self.val_entry = open_patches(
                    d["val_patches"], store, d["image_tokens"], "data.val_patches"
                )
            what = "data.val_patches" if d["val_patches"] else "data.patches"
            check_images(self.val_entry, self.val_samples, d["val"], what)
            if self.val_entry.row_shape != self.entry.row_shape:
                raise DataError(
                    f"data.val_patches rows are {list(self.val_entry.row_shape)} but the "
                    f"training patches are {list(self.entry.row_shape)}: use the same teacher."
                )
        self.vision_hidden = int(self.entry.row_shape[1])
        config = llm_config(m["llm"], m["trust_remote_code"])
        self.hidden = int(config.hidden_size)
        if len(self.tokenizer) > config.vocab_size:
            raise ConfigError(
                f"the tokenizer has {len(self.tokenizer)} tokens but the LLM {m['llm']!r} "
                f"embeds {config.vocab_size}: use the LLM's own tokenizer (model.tokenizer)."
            )
        if cfg["train"]["init_from"]:
            check_projector(cfg["train"]["init_from"], self.vision_hidden, self.hidden, m["llm"])
        self.train_data = ChatBatches(self.train_samples, self.encoder, self.entry)
        self.val_data = ChatBatches(self.val_samples, self.encoder, self.val_entry)

    # -- model ------------------------------------------------------------------------------------
    def build_model(self) -> VisionLanguageModel:
        m = self.cfg["model"]
        llm = load_llm(m["llm"], m["llm_weights"], m["trust_remote_code"], m["llm_seed"])
        return VisionLanguageModel(llm, self.vision_hidden)

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """minimind-v's AdamW: one weight decay (train.weight_decay, torch's 0.01 default) on
        every trainable tensor; the LLM is frozen in stage 1 (``model.train_llm = false``)."""
        return [
            {
                "name": "llm",
                "params": list(model.llm.parameters()),
                "frozen": not self.cfg["model"]["train_llm"],
            },
            {"name": "vision_proj", "params": list(model.vision_proj.parameters())},
        ]

    # -- data -------------------------------------------------------------------------------------
    def train_dataset(self) -> ChatBatches:
        return self.train_data

    def collate(self, items: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return items  # ChatBatches.__getitems__ already assembles the batch

    # -- loss -------------------------------------------------------------------------------------
    def loss(
        self, model: nn.Module, batch: dict[str, torch.Tensor], progress: Progress
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """minimind-v's loss: token cross-entropy x loss mask, summed / mask count."""
        logits = model(batch["input_ids"], batch["patches"], batch["image_starts"])
        loss = masked_lm_loss(logits, batch["input_ids"], batch["targets"])
        return loss, {}

    # -- evaluation -------------------------------------------------------------------------------
    def validate(self, model: nn.Module) -> dict[str, float]:
        """Held-out loss and perplexity over ``data.val`` (nothing without it)."""
        from .evaluation import held_out_loss

        if not self.val_samples:
            return {}
        found = held_out_loss(model, self.val_data, self.cfg["eval"]["batch_size"])
        return {k: found[k] for k in ("val_loss", "val_ppl")}

    def evaluate(self, model: nn.Module, run_dir: Path) -> Report:
        from .evaluation import final_evaluation

        return final_evaluation(self, model, Path(run_dir))

    @classmethod
    def demo(cls, workdir: Path, progress: bool = True, log=print) -> Report:
        from .demo import run_demo

        return run_demo(workdir, progress=progress, log=log)
