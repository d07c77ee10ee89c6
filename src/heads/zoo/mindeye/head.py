"""MindEye2 (+ TextAlign): fMRI betas → bigG image tokens, trained against cached targets.

Targets come from featstore entries by NSD 73k image index, so no teacher runs during training
and batches with a repeated image are kept (the original skipped them: h5py needs unique
indices; memory-mapped entries do not). Differences from the seed are listed in
docs/heads/mindeye.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from featstore import Store

from ...data.entries import open_config_entry, require_ids
from ...data.nsd import BETAS_ROW, IMAGE, Betas, read_trials, split_trials
from ...errors import ConfigError, DataError
from ...head import Head, Progress
from ...losses import info_nce, mixco_nce, mixco_per_subject, soft_clip_loss, soft_clip_temperature
from ...registry import register_head
from ...report import Report
from .evaluation import final_evaluation, retrieval_scores, test_embeddings
from .model import MindEyeModel


def _open_targets(key: str, store: Store, what: str):
    entry = open_config_entry(key, store, f"data.{what}")
    if entry.ragged:
        raise DataError(f"data.{what} = {key!r} is a ragged entry; MindEye needs fixed rows.")
    return entry


def _check_covered(entry, image_ids: np.ndarray, what: str) -> None:
    fix = "Extract the targets over every image the trials use."
    require_ids(entry, image_ids, "trial images", f"data.{what}", fix)


class TrainTrials(torch.utils.data.Dataset):
    """Every subject's training trials as one index space (``offsets[s] + row``).

    ``__getitems__`` assembles a whole batch: betas per subject (in subject order, each
    subject's rows in the order asked), the images' bigG tokens and, where covered, their text
    features. Safe in DataLoader workers (betas files and entry maps reopen per process).
    """

    def __init__(self, subjects: list[dict], targets, text, negatives) -> None:
        self.subjects, self.targets, self.text, self.negatives = subjects, targets, text, negatives
        sizes = [len(s["split"].train) for s in subjects]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.text_index = {k: i for i, k in enumerate(text.ids.tolist())} if text else {}

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitems__(self, indices: list[int]) -> dict[str, Any]:
        idx = np.asarray(indices, dtype=np.int64)
        subject = np.searchsorted(self.offsets, idx, side="right") - 1
        voxels, images = [], []
        for s, info in enumerate(self.subjects):
            trials = info["split"].train[idx[subject == s] - self.offsets[s]]
            voxels.append(
                torch.from_numpy(info["betas"].read(trials[:, BETAS_ROW].astype(np.int64)))
            )
            images.append(trials[:, IMAGE].astype(np.int64))
        image_ids = np.concatenate(images)
        covered, text, negatives = self.text_features(image_ids)
        return {
            "voxels": voxels,
            "targets": torch.from_numpy(self.targets.gather(self.targets.positions(image_ids))),
            "covered": torch.from_numpy(covered),
            "text": None if text is None else torch.from_numpy(text),
            "negatives": None if negatives is None else torch.from_numpy(negatives),
        }

    def text_features(self, image_ids: np.ndarray):
        """(covered mask, text rows of covered images or None, their hard negatives or None)."""
        if self.text is None:
            return np.zeros(len(image_ids), bool), None, None
        rows = np.array([self.text_index.get(int(i), -1) for i in image_ids], dtype=np.int64)
        covered = rows >= 0
        if not covered.any():
            return covered, None, None
        negatives = None
        if self.negatives is not None:
            negatives = self.negatives.gather(self.negatives.positions(image_ids[covered]))
        return covered, self.text.gather(rows[covered]), negatives


@register_head("mindeye", "MindEye2 ridge + MLP backbone to bigG tokens, with TextAlign (NSD fMRI)")
class MindEye(Head):
    """MindEye2's retrieval pathway with TextAlign, on NSD betas and cached bigG tokens."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__(cfg)
        d, t = cfg["data"], cfg["train"]
        store = Store(d["store"] or None)
        self.targets = _open_targets(d["image_targets"], store, "image_targets")
        if len(self.targets.row_shape) != 2:
            raise DataError(
                f"image targets have rows {self.targets.row_shape}; MindEye needs "
                f"token rows [tokens, dim] (bigG `tokens`)."
            )
        self.text = (
            _open_targets(d["text_targets"], store, "text_targets") if d["text_targets"] else None
        )
        self.negatives = (
            _open_targets(d["hard_negatives"], store, "hard_negatives")
            if d["hard_negatives"]
            else None
        )
        if len(d["trials"]) != len(d["betas"]) or not d["trials"]:
            raise ConfigError(
                "data.trials and data.betas need one entry per subject "
                f"(got {len(d['trials'])} and {len(d['betas'])})."
            )
        self.names = list(d["subject_names"]) or [f"subj{i + 1}" for i in range(len(d["trials"]))]
        self.subjects = []
        for name, trials_path, betas_path in zip(self.names, d["trials"], d["betas"], strict=True):
            split = split_trials(read_trials(trials_path), d["num_sessions"])
            betas = Betas(betas_path, preload=d["preload_betas"])
            used = np.concatenate([split.train[:, BETAS_ROW], *split.test_rows]).astype(np.int64)
            if used.size and used.max() >= len(betas):
                raise DataError(
                    f"{name}: the trial table points at betas row {used.max()}, but "
                    f"{betas.path} has {len(betas)} rows."
                )
            images = np.concatenate([split.train[:, IMAGE], split.test_images]).astype(np.int64)
            _check_covered(self.targets, np.unique(images), "image_targets")
            self.subjects.append({"name": name, "split": split, "betas": betas})
        self.n_voxels = [s["betas"].n_voxels for s in self.subjects]
        all_images = np.unique(
            np.concatenate(
                [
                    np.concatenate([s["split"].train[:, IMAGE], s["split"].test_images])
                    for s in self.subjects
                ]
            ).astype(np.int64)
        )
        self._check_text(all_images)
        e = cfg["eval"]
        if e["draws_rng"] not in ("original", "numpy"):
            raise ConfigError(f"eval.draws_rng={e['draws_rng']!r}: use original or numpy.")
        if e["repeats"] not in ("mean", "original"):
            raise ConfigError(f"eval.repeats={e['repeats']!r}: use mean or original.")
        self.per_subject = t["batch_size"] // len(self.subjects)
        if self.per_subject < 1:
            raise ConfigError(
                f"train.batch_size {t['batch_size']} is smaller than the number of "
                f"subjects ({len(self.subjects)})."
            )
        self.dataset = TrainTrials(self.subjects, self.targets, self.text, self.negatives)

    def _check_text(self, images: np.ndarray) -> None:
        if self.text is None:
            return
        if len(self.text.row_shape) != 1:
            raise DataError(
                f"data.text_targets has rows {self.text.row_shape}; TextAlign needs "
                f"one vector per image (e.g. clip-l-text `pooled`)."
            )
        covered = self.text.contains(images)
        if not covered.any():
            raise DataError(
                f"data.text_targets ({self.text.key}) shares no ids with the trial images; its "
                f"ids look like {self.text.ids[:3].tolist()}, but TextAlign keys texts by NSD 73k "
                f"image index."
            )
        if self.negatives is not None:
            _check_covered(self.negatives, images[covered], "hard_negatives")

    # -- model ------------------------------------------------------------------------------------
    def build_model(self) -> MindEyeModel:
        m = self.cfg["model"]
        n_tokens, dim = self.targets.row_shape
        try:
            return MindEyeModel(
                n_voxels=self.n_voxels,
                hidden=m["hidden"],
                n_blocks=m["n_blocks"],
                clip_tokens=n_tokens,
                clip_dim=dim,
                text_dim=self.text.row_shape[0] if self.text is not None else None,
                text_hidden=m["text_hidden"],
                dropout=m["dropout"],
                residual=m["residual"],
            )
        except ValueError as e:
            raise ConfigError(f"model config: {e}") from None

    # -- data -------------------------------------------------------------------------------------
    def train_dataset(self) -> TrainTrials:
        return self.dataset

    def collate(self, items: dict[str, Any]) -> dict[str, Any]:
        return items  # TrainTrials.__getitems__ already assembles the batch

    def samples_per_epoch(self) -> int:
        """``train.samples_per_epoch``, or MindEye2's rule: 750 x num_sessions for one subject,
        750 x 40 for several (Train.ipynb's ``num_samples_per_epoch``)."""
        explicit = self.cfg["train"]["samples_per_epoch"]
        if explicit:
            return explicit
        return 750 * (40 if len(self.subjects) > 1 else self.cfg["data"]["num_sessions"])

    def batch_plan(self, epoch: int, rng: np.random.Generator, batch_size: int, n_samples: int):
        """``samples_per_epoch // batch_size`` steps; each takes ``batch_size // n_subjects``
        trials from every subject's stream of fresh permutations (wrapped as needed, like the
        original's resampled webdataset streams)."""
        sizes = np.diff(self.dataset.offsets)
        n = self.per_subject
        steps = self.samples_per_epoch() // (n * len(sizes))  # the original's iterations
        orders = [[rng.permutation(size)] for size in sizes]  # one each first, in subject order
        for order, size in zip(orders, sizes, strict=True):
            while len(order) * size < steps * n:
                order.append(rng.permutation(size))
        streams = [np.concatenate(order) for order in orders]
        offsets = self.dataset.offsets
        return [
            np.concatenate(
                [offsets[s] + stream[step * n : (step + 1) * n] for s, stream in enumerate(streams)]
            ).tolist()
            for step in range(steps)
        ]

    def split_batch(self, batch: list[int], parts: int) -> list[list[int]]:
        """Every micro-batch gets an equal share of each subject's block."""
        n = self.per_subject
        if n % parts:
            raise ConfigError(
                f"{n} trials per subject per step cannot be split into {parts} "
                f"ranks x accumulation steps; make train.batch_size // subjects "
                f"a multiple of {parts}."
            )
        blocks = [batch[s * n : (s + 1) * n] for s in range(len(self.subjects))]
        k = n // parts
        return [sum((b[p * k : (p + 1) * k] for b in blocks), []) for p in range(parts)]

    # -- loss -------------------------------------------------------------------------------------
    def loss(self, model: nn.Module, batch: dict[str, Any], progress: Progress):
        L = self.cfg["loss"]
        voxels = [v.unsqueeze(1) for v in batch["voxels"]]
        targets = batch["targets"].float()
        mixup_epochs = int(L["mixup_pct"] * progress.epochs)
        mixup = progress.epoch < mixup_epochs
        if mixup:
            voxels, perm, betas, select = mixco_per_subject(
                voxels, beta=L["mixco_beta"], s_thresh=L["mixco_s_thresh"]
            )
        out = model(voxels)
        pred = F.normalize(out["clip_voxels"].flatten(1).float(), dim=-1)
        targ = F.normalize(targets.flatten(1), dim=-1)
        if mixup:
            loss_clip = mixco_nce(
                pred, targ, temp=L["mixco_temp"], perm=perm, betas=betas, select=select
            )
        else:
            temp = soft_clip_temperature(
                progress.epoch,
                progress.epochs,
                L["mixup_pct"],
                L["softclip_temp_start"],
                L["softclip_temp_end"],
            )
            loss_clip = soft_clip_loss(pred, targ, temp=temp)
        loss = L["clip_scale"] * loss_clip
        parts = {"loss_clip": loss_clip.detach(), "mixup": float(mixup)}
        covered = batch["covered"]
        if batch["text"] is not None and out["text"] is not None:
            t_pred = F.normalize(out["text"][covered].float(), dim=-1)
            t_pos = F.normalize(batch["text"].float(), dim=-1)
            negs = batch["negatives"]
            negs = F.normalize(negs.float(), dim=-1) if negs is not None else None
            loss_text = info_nce(t_pred, t_pos, L["text_temp"], negatives=negs)
            loss = loss + L["text_scale"] * loss_text
            parts["loss_text"] = loss_text.detach()
        parts["text_covered"] = covered.float().mean() if len(covered) else 0.0
        return loss, parts

    # -- evaluation -------------------------------------------------------------------------------
    def validate(self, model: nn.Module) -> dict[str, float]:
        """One draw of ``eval.quick_way`` on the first subject (the same draw every time)."""
        e = self.cfg["eval"]
        emb = test_embeddings(self, model, 0)
        scores = retrieval_scores(emb, e["quick_way"], 1, e["seed"], e["draws_rng"])
        return {k: v["mean"] for k, v in scores.items()}

    def evaluate(self, model: nn.Module, run_dir: Path) -> Report:
        return final_evaluation(self, model, Path(run_dir))

    @classmethod
    def demo(cls, workdir: Path, progress: bool = True, log=print) -> Report:
        from .demo import run_demo

        return run_demo(workdir, progress=progress, log=log)
