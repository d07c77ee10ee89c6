"""Batches of t15 trials for the brain2text head: the baseline's day-mixed sampling, padded
features, phoneme labels, cached audio frames and (with an LLM) tokenized transcripts."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ...data.t15 import TrialReader, TrialTable, missing_labels
from ...errors import DataError


def day_batches(
    days: np.ndarray,
    rng: np.random.Generator,
    n_batches: int,
    batch_size: int,
    days_per_batch: int,
) -> list[list[int]]:
    """The baseline's training batches: ``days_per_batch`` distinct days drawn uniformly, then
    ``ceil(batch_size / days_per_batch)`` trials per day drawn with replacement; surplus trials
    come off the end of randomly chosen days. Returns row indices into ``days``."""
    by_day = {int(d): np.flatnonzero(days == d) for d in np.unique(days)}
    keys = np.array(sorted(by_day))
    if days_per_batch > len(keys):
        raise DataError(
            f"data.days_per_batch={days_per_batch}, but the training data has {len(keys)} "
            f"sessions; lower data.days_per_batch."
        )
    per_day = math.ceil(batch_size / days_per_batch)
    out = []
    for _ in range(n_batches):
        chosen = rng.choice(keys, size=days_per_batch, replace=False)
        picks = {
            int(d): list(rng.choice(by_day[int(d)], size=per_day, replace=True)) for d in chosen
        }
        for _ in range(per_day * days_per_batch - batch_size):
            picks[int(rng.choice(chosen))].pop()
        out.append([int(r) for d in chosen for r in picks[int(d)]])
    return out


def pad(arrays: list[np.ndarray], dtype: Any = None) -> np.ndarray:
    """``[n_i, ...]`` arrays → ``[B, max n, ...]`` with zeros after each."""
    longest = max((len(a) for a in arrays), default=0)
    out = np.zeros((len(arrays), longest, *arrays[0].shape[1:]), dtype=dtype or arrays[0].dtype)
    for i, a in enumerate(arrays):
        out[i, : len(a)] = a
    return out


class Trials(torch.utils.data.Dataset):
    """The trials of one split; ``__getitems__`` assembles a padded batch (a dict of tensors).

    ``audio`` (a ragged featstore entry) adds ``audio [B, T_a, D]`` and ``audio_lengths``;
    ``tokenize`` (texts → lists of ids) adds ``text = {"ids", "lengths"}``; ``labels`` adds
    ``phonemes [B, S]`` and ``phoneme_lengths`` (a split without labels, such as test, is then
    an error).
    """

    def __init__(
        self,
        table: TrialTable,
        audio: Any = None,
        tokenize: Any = None,
        labels: bool = True,
    ) -> None:
        if labels and len(table) and not table.labelled:
            raise missing_labels(table, int(np.flatnonzero(table.seq_len < 0)[0]))
        self.table, self.audio, self.tokenize, self.labels = table, audio, tokenize, labels
        self.reader = TrialReader(table)
        self.audio_rows = audio.positions(table.ids) if audio is not None else None

    def __len__(self) -> int:
        return len(self.table)

    def __getitems__(self, rows: list[int]) -> dict[str, Any]:
        rows = [int(r) for r in rows]
        t = self.table
        features = [self.reader.features(r) for r in rows]
        batch: dict[str, Any] = {
            "features": torch.from_numpy(pad(features, np.float32)),
            "n_time_steps": torch.from_numpy(t.n_time_steps[rows]),
            "day": torch.from_numpy(t.day[rows]),
            "rows": torch.tensor(rows, dtype=torch.int64),
        }
        if self.labels:
            phones = [self.reader.phonemes(r) for r in rows]
            batch["phonemes"] = torch.from_numpy(pad(phones, np.int64))
            batch["phoneme_lengths"] = torch.tensor([len(p) for p in phones], dtype=torch.int64)
        if self.audio is not None:
            frames, lengths = self.audio.gather_padded(self.audio_rows[rows])
            batch["audio"] = torch.from_numpy(frames)
            batch["audio_lengths"] = torch.from_numpy(lengths)
        if self.tokenize is not None:
            ids = self.tokenize([self.reader.transcription(r) for r in rows])
            batch["text"] = {
                "ids": torch.from_numpy(pad([np.asarray(i, dtype=np.int64) for i in ids])),
                "lengths": torch.tensor([len(i) for i in ids], dtype=torch.int64),
            }
        return batch

    def __getitem__(self, row: int) -> dict[str, Any]:
        return self.__getitems__([row])

    def session_batches(self, batch_size: int) -> list[list[int]]:
        """Evaluation batches: each session's trials in file order, at most ``batch_size`` each
        (the baseline's validation batches)."""
        out = []
        for d in dict.fromkeys(self.table.day.tolist()):
            rows = np.flatnonzero(self.table.day == d).tolist()
            out += [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
        return out
