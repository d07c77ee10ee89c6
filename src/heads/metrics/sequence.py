"""Sequence metrics: greedy CTC decoding and edit-distance error rates (PER)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def ctc_greedy_decode(
    logits: Tensor, lengths: Tensor | None = None, blank: int = 0
) -> list[list[int]]:
    """Best path: argmax per frame → merge repeats → drop blanks, per sequence (first
    ``lengths[b]`` frames of ``logits [B, T, C]``)."""
    best = logits.argmax(-1).cpu()
    lengths = lengths.cpu().tolist() if lengths is not None else [best.shape[1]] * best.shape[0]
    out = []
    for row, n in zip(best, lengths, strict=True):
        seq = torch.unique_consecutive(row[: int(n)]).tolist()
        out.append([s for s in seq if s != blank])
    return out


def edit_distance(ref: Sequence, hyp: Sequence) -> int:
    """Levenshtein distance (substitutions, insertions, deletions each cost 1)."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def error_rate(refs: Sequence[Sequence], hyps: Sequence[Sequence]) -> float:
    """Corpus error rate: total edit distance / total reference length (PER for phonemes)."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    total = sum(len(r) for r in refs)
    errors = sum(edit_distance(r, h) for r, h in zip(refs, hyps, strict=True))
    return errors / total if total else float(errors > 0)
