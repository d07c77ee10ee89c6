"""brain2text: intracortical speech decoding (t15) with the GRU baseline, CTC phonemes, alignment
to cached Qwen2-Audio frames and an optional frozen LLM (docs/heads/brain2text.md).

Loss = ``alpha * align + beta * llm + gamma * ctc``. The audio targets come from a featstore
``qwen-audio`` ``frames`` entry over the same trials (ids ``session/split/trial_XXXX``), so no TTS
or audio encoder runs during training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from featstore import Store

from ...data.entries import open_config_entry
from ...data.t15 import (
    N_CLASSES,
    TrialReader,
    TrialTable,
    find_sessions,
    missing_labels,
    scan_split,
)
from ...errors import ConfigError, DataError
from ...head import Head, Progress
from ...losses.alignment import COMMON_LENGTHS, aligned_loss, batch_aligned_loss
from ...losses.sequence import ctc_loss
from ...registry import register_head
from ...report import Report
from .augment import augment, smooth
from .data import Trials, day_batches
from .model import Brain2TextModel

AUDIO_FAMILY = "qwen-audio"


def open_audio(key: str, store: Store):
    """The audio entry, checked: a ragged ``frames`` entry of the qwen-audio teacher family."""
    entry = open_config_entry(key, store, "data.audio")
    m = entry.manifest
    family = (m.get("key_inputs") or {}).get("family", "")
    teacher = m.get("teacher", "")
    if family != AUDIO_FAMILY and not str(teacher).startswith(AUDIO_FAMILY):
        raise DataError(
            f"data.audio = {key!r} holds {teacher!r} features; brain2text aligns to the "
            f"qwen-audio teacher's frames (`featstore extract -t qwen-audio -s "
            f"hdf5_data_final/ -o frames`)."
        )
    if not entry.ragged or m.get("output") != "frames" or len(entry.row_shape) != 1:
        raise DataError(
            f"data.audio = {key!r} is the {m.get('output')!r} output (rows {entry.row_shape}, "
            f"{m.get('layout')}); use the ragged `frames` output [T, D]."
        )
    return entry


@register_head(
    "brain2text",
    "t15 speech decoding: GRU baseline, CTC phonemes, alignment to cached Qwen2-Audio frames, "
    "optional frozen LLM",
)
class Brain2Text(Head):
    """Day layers → patches → GRU → CTC phonemes / audio-space embedding (+ frozen LLM text)."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__(cfg)
        d, m, L = cfg["data"], cfg["model"], cfg["loss"]
        self.alpha, self.beta, self.gamma = L["alpha"], L["beta"], L["gamma"]
        self._check_config()
        if not d["root"]:
            raise ConfigError("data.root is not set: give the Dryad hdf5_data_final folder.")
        found = find_sessions(d["root"])
        with_train = [s for s, files in found.items() if "train" in files]
        if not d["sessions"]:
            # resolved once and saved in the run's config, so evaluation maps days the same way
            d["sessions"] = with_train
        self.sessions = list(d["sessions"])
        unknown = [s for s in self.sessions if s not in found]
        if unknown:
            raise DataError(
                f"data.sessions names {len(unknown)} session(s) without files under "
                f"{d['root']} (first: {unknown[:3]})."
            )
        self.day_of = {s: i for i, s in enumerate(self.sessions)}
        self.found = found
        used = {s: found[s] for s in self.sessions}
        self.train_table = self._usable(scan_split(used, "train", self.day_of), "train")
        self.val_table = self._usable(scan_split(used, "val", self.day_of), "val")
        if not len(self.train_table):
            raise DataError(f"no training trials in the {len(self.sessions)} session(s).")
        for table in (self.train_table, self.val_table):
            if len(table) and not table.labelled:
                raise missing_labels(table, int(np.flatnonzero(table.seq_len < 0)[0]))
        channels = self.train_set_channels()
        if channels != m["n_input_features"]:
            raise ConfigError(
                f"the trials have {channels} feature channels ({self.train_table.where(0)}), but "
                f"model.n_input_features={m['n_input_features']}; set it to {channels}."
            )
        self.audio = None
        if self.alpha > 0:
            if not d["audio"]:
                raise ConfigError(
                    "loss.alpha > 0 aligns to cached audio frames, but data.audio is not set: "
                    "give the key of a qwen-audio `frames` entry (`featstore ls`), or set "
                    "loss.alpha=0."
                )
            self.audio = open_audio(d["audio"], Store(d["store"] or None))
            for table in (self.train_table, self.val_table):
                self._check_covered(table)
        self.audio_dim = self.audio.row_shape[0] if self.audio is not None else m["audio_dim"]
        self.tokenizer = None
        self.prompt: tuple[list[int], list[int]] = ([], [])
        if self.beta > 0:
            from .llm import load_tokenizer

            self.tokenizer = load_tokenizer(cfg["llm"]["model"])
            tok = self.tokenizer
            self.prompt = (
                tok(cfg["llm"]["prompt_before"], add_special_tokens=False)["input_ids"],
                tok(cfg["llm"]["prompt_after"], add_special_tokens=False)["input_ids"],
            )
        tokenize = self.tokenize if self.beta > 0 else None
        self.train_set = Trials(self.train_table, self.audio, tokenize)
        self.val_set = Trials(self.val_table, self.audio, tokenize)

    def train_set_channels(self) -> int:
        """Feature channels of the first training trial (t15: 512)."""
        reader = TrialReader(self.train_table)
        try:
            return reader.channels(0)
        finally:
            reader.close()

    def eval_dataset(self, split: str) -> Trials:
        """The trials ``heads eval`` decodes; test files have no labels (predictions only)."""
        if split == "train":
            return self.train_set
        if split == "val":
            return self.val_set
        used = {s: self.found[s] for s in self.sessions}
        unknown = sorted(s for s, f in self.found.items() if split in f and s not in self.day_of)
        if unknown:
            raise DataError(
                f"{len(unknown)} session(s) with {split} files were not trained on, so they have "
                f"no day layer (first: {unknown[:3]}); evaluate them with a run that includes them."
            )
        table = self._usable(scan_split(used, split, self.day_of), split)
        return Trials(table, labels=table.labelled)

    # -- checks -----------------------------------------------------------------------------------
    def _check_config(self) -> None:
        cfg, L, m = self.cfg, self.cfg["loss"], self.cfg["model"]
        if min(self.alpha, self.beta, self.gamma) < 0 or not (
            self.alpha or self.beta or self.gamma
        ):
            raise ConfigError(
                f"loss.alpha={self.alpha}, loss.beta={self.beta}, loss.gamma={self.gamma}: the "
                f"weights must be >= 0 and at least one positive."
            )
        if L["align_length"] not in COMMON_LENGTHS:
            raise ConfigError(f"loss.align_length: use one of {', '.join(COMMON_LENGTHS)}.")
        if L["align"] not in ("cosine", "mse") or L["align_scope"] not in ("trial", "batch"):
            raise ConfigError("loss.align: cosine or mse; loss.align_scope: trial or batch.")
        if m["patch_size"] < 0 or (m["patch_size"] > 0 and m["patch_stride"] < 1):
            raise ConfigError("model.patch_size must be >= 0 and model.patch_stride >= 1.")
        if m["n_classes"] != N_CLASSES:
            raise ConfigError(f"model.n_classes: t15 has {N_CLASSES} classes (blank + 39 + SIL).")
        best = cfg["train"]["best_metric"]
        if best and best not in self.val_metric_names():
            raise ConfigError(
                f"train.best_metric={best!r} is not reported with these loss weights "
                f"(validation reports: {', '.join(self.val_metric_names())})."
            )
        if self.cfg["eval"]["split"] not in ("val", "test", "train"):
            raise ConfigError("eval.split: val, test or train.")

    def val_metric_names(self) -> list[str]:
        names = []
        if self.gamma > 0:
            names += ["val_per", "val_ctc_loss"]
        if self.alpha > 0:
            names.append("val_align_loss")
        if self.beta > 0:
            names += ["val_llm_loss", "val_wer", "val_cer"]
        return names

    def _usable(self, table: TrialTable, split: str) -> TrialTable:
        """Trials with at least one patch; shorter ones are an error unless skipped on request.

        Training trials must keep a patch after the largest random cut (``augment.random_cut``
        - 1 leading steps, one cut for the whole batch as in the baseline, never shortened per
        trial): ``n >= patch_size + max cut``. Evaluation cuts nothing: ``n >= patch_size``."""
        size = self.cfg["model"]["patch_size"]
        cut = max(self.cfg["augment"]["random_cut"] - 1, 0) if split == "train" else 0
        need = max(size, 1) + cut
        short = table.n_time_steps < need
        if not short.any():
            return table
        first = int(np.flatnonzero(short)[0])
        what = f"one patch ({size} steps)"
        if cut:
            what = f"one patch after the random cut ({size} + {cut} = {need} steps)"
        if not self.cfg["data"]["skip_short_trials"]:
            raise DataError(
                f"{int(short.sum())} {split} trial(s) are shorter than {what}; first: "
                f"{table.where(first)} with {table.n_time_steps[first]} steps. Set "
                f"data.skip_short_trials=true to leave them out."
            )
        return table.subset(~short)

    def _check_covered(self, table: TrialTable) -> None:
        if not len(table):
            return
        missing = table.ids[~self.audio.contains(table.ids)]
        if len(missing):
            raise DataError(
                f"{len(missing)} of {len(table)} {table.split} trials have no cached audio in "
                f"entry {self.audio.key} (first: {missing[:3].tolist()}). Extract the qwen-audio "
                f"frames over the same hdf5_data_final folder (train and val splits)."
            )

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Transcript token ids followed by the end token."""
        tok = self.tokenizer
        ids = tok(list(texts), add_special_tokens=False)["input_ids"]
        return [[*i, tok.eos_token_id] for i in ids]

    # -- model ------------------------------------------------------------------------------------
    def build_model(self) -> Brain2TextModel:
        m = self.cfg["model"]
        llm = None
        if self.beta > 0:
            from .llm import FrozenLM, load_frozen_lm

            c = self.cfg["llm"]
            lm, projector, _ = load_frozen_lm(c["model"], c["dtype"], self.audio_dim)
            tok = self.tokenizer
            pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
            llm = FrozenLM(lm, projector, *self.prompt, pad_id=pad_id, eos_id=tok.eos_token_id)
        return Brain2TextModel(
            n_days=len(self.sessions),
            neural_dim=m["n_input_features"],
            n_units=m["n_units"],
            n_layers=m["n_layers"],
            n_classes=m["n_classes"],
            rnn_dropout=m["rnn_dropout"],
            input_dropout=m["input_dropout"],
            patch_size=m["patch_size"],
            patch_stride=m["patch_stride"],
            audio_dim=self.audio_dim,
            ctc_head=self.gamma > 0,
            projector=self.alpha > 0,
            llm=llm,
        )

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """The baseline's groups: day layers (own LR scale, no decay), biases (no decay), the rest
        (``train.weight_decay``, h0 and LayerNorm weights included)."""
        o = self.cfg["optim"]
        day, bias, rest = [], [], []
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            if name.startswith("day_"):
                day.append(p)
            elif "bias" in name.rsplit(".", 1)[-1]:
                bias.append(p)
            else:
                rest.append(p)
        groups = [
            {"name": "day", "params": day, "lr_scale": o["day_lr_scale"],
             "weight_decay": o["day_weight_decay"]},
            {"name": "bias", "params": bias, "weight_decay": 0.0},
            {"name": "other", "params": rest},
        ]  # fmt: skip
        return [g for g in groups if g["params"]]

    # -- data -------------------------------------------------------------------------------------
    def train_dataset(self) -> Trials:
        return self.train_set

    def collate(self, items: dict[str, Any]) -> dict[str, Any]:
        return items  # Trials.__getitems__ already assembles the batch

    def batch_plan(self, epoch: int, rng: np.random.Generator, batch_size: int, n_samples: int):
        d = self.cfg["data"]
        n = d["batches_per_epoch"] or max(1, n_samples // batch_size)
        return day_batches(self.train_table.day, rng, n, batch_size, d["days_per_batch"])

    # -- loss -------------------------------------------------------------------------------------
    def prepare(self, batch: dict[str, Any], train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Features after the baseline's transforms (noise, offset, cut: training only; smoothing
        always) and the trials' lengths after the cut."""
        a = self.cfg["augment"]
        x, n = batch["features"], batch["n_time_steps"]
        if train:
            x, n = augment(x, n, a["white_noise_std"], a["constant_offset_std"], a["random_cut"])
        if a["smooth_data"]:
            x = smooth(x, a["smooth_kernel_std"], a["smooth_kernel_size"])
        return x, n

    def loss(self, model: nn.Module, batch: dict[str, Any], progress: Progress):
        x, n = self.prepare(batch, train=True)
        return self.terms(self.forward(model, batch, x, n), batch)

    def forward(self, model: nn.Module, batch: dict[str, Any], x, n) -> dict[str, torch.Tensor]:
        text = batch.get("text") if self.beta > 0 else None
        return model(x, batch["day"], n, text=text)

    def terms(self, out: dict[str, Any], batch: dict[str, Any]) -> tuple[torch.Tensor, dict]:
        """``alpha * align + beta * llm + gamma * ctc`` and its parts, from the model's outputs."""
        L = self.cfg["loss"]
        total = torch.zeros((), device=out["lengths"].device)
        parts: dict[str, Any] = {}
        if self.gamma > 0:
            ctc = ctc_loss(  # the baseline's: per-trial sums, averaged over the batch
                out["logits"], out["lengths"], batch["phonemes"], batch["phoneme_lengths"],
                reduction="sequence_mean", zero_infinity=L["ctc_zero_infinity"],
            )  # fmt: skip
            total = total + self.gamma * ctc
            parts["loss_ctc"] = ctc.detach()
        if self.alpha > 0:
            if L["align_scope"] == "batch":
                align = batch_aligned_loss(
                    out["embedding"], batch["audio"], batch["audio_lengths"], L["align"]
                )
            else:
                align = aligned_loss(
                    out["embedding"], out["lengths"], batch["audio"], batch["audio_lengths"],
                    L["align_length"], L["align"],
                )  # fmt: skip
            total = total + self.alpha * align
            parts["loss_align"] = align.detach()
        if self.beta > 0:
            total = total + self.beta * out["llm_loss"]
            parts["loss_llm"] = out["llm_loss"].detach()
        return total, parts

    # -- evaluation -------------------------------------------------------------------------------
    def validate(self, model: nn.Module) -> dict[str, float]:
        from .evaluation import decode_split

        result = decode_split(self, model, self.val_set, generate=self.beta > 0)
        return {k: v for k, v in result.metrics.items() if k in self.val_metric_names()}

    def evaluate(self, model: nn.Module, run_dir: Path) -> Report:
        from .evaluation import final_evaluation

        return final_evaluation(self, model, Path(run_dir))

    @classmethod
    def demo(cls, workdir: Path, progress: bool = True, log=print) -> Report:
        from .demo import run_demo

        return run_demo(workdir, progress=progress, log=log)
