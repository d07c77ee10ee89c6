"""Token sequences of ViECap's training: hard prompt + caption, padding, attention and loss masks.

One sample's LM input is ``[soft (S) ; hard prompt (p) ; caption (c) ; padding]``. The caption is
cut to ``caption_length`` tokens first, then prompt + caption to ``2·E − 1 + 5 + caption_length``
tokens (E = max entities, 5 = the prompt template's length), as the original does. The
attention mask covers soft, prompt and caption tokens; the loss covers caption tokens only:
position ``t`` predicts token ``t + 1`` (``heads.losses.masked_lm_loss``), so the last prompt
token predicts the caption's first. Batches are padded to their longest sample, not to the fixed
maximum: with right padding and the attention mask the logits of real tokens are the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

PROMPT_HEAD, PROMPT_TAIL, NO_ENTITIES = "There are", " in image.", " something"
TEMPLATE_LENGTH = 5  # tokens of "There are ... in image." with GPT-2's BPE


def hard_prompt(entities: Sequence[str]) -> str:
    """``There are person, dog in image.`` (``There are something in image.`` for none)."""
    middle = ",".join(f" {e}" for e in entities) if entities else NO_ENTITIES
    return PROMPT_HEAD + middle + PROMPT_TAIL


def caption_length(lengths: np.ndarray) -> int:
    """The original's caption length: min(mean + 10·std, max) of the token counts."""
    lengths = np.asarray(lengths, dtype=np.float64)
    if len(lengths) < 2:
        return int(lengths.max())
    return int(min(int(lengths.mean() + 10 * lengths.std(ddof=1)), int(lengths.max())))


@dataclass
class TokenTable:
    """Token ids of many texts in one flat array (``ids[offsets[i]:offsets[i+1]]``)."""

    ids: np.ndarray
    offsets: np.ndarray

    @classmethod
    def encode(cls, tokenizer, texts: Sequence[str], chunk: int = 65536) -> TokenTable:
        parts, lengths = [], []
        for i in range(0, len(texts), chunk):
            enc = tokenizer(list(texts[i : i + chunk]), add_special_tokens=False)["input_ids"]
            parts += [np.asarray(e, dtype=np.int32) for e in enc]
            lengths += [len(e) for e in enc]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        ids = np.concatenate(parts) if parts else np.zeros(0, np.int32)
        return cls(ids, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i] : self.offsets[i + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


@dataclass(frozen=True)
class SequenceLayout:
    """Lengths that shape every training sequence."""

    soft_length: int  # soft tokens before the text (0 for hard_only)
    caption_length: int  # captions are cut to this many tokens
    max_entities: int = 10
    use_hard_prompt: bool = True

    @property
    def text_length(self) -> int:
        """Longest prompt + caption: 2·E − 1 + 5 + caption_length."""
        return 2 * self.max_entities - 1 + TEMPLATE_LENGTH + self.caption_length

    def build(
        self, prompts: Sequence[Sequence[int]], captions: Sequence[Sequence[int]], pad_id: int = 0
    ) -> dict[str, torch.Tensor]:
        """``tokens [B, T]``, ``prompt_lengths [B]``, ``attention_mask [B, S+T]``, ``labels``
        and ``loss_mask [B, S+T]`` (labels at soft positions are 0 and never used)."""
        rows = []
        for prompt, caption in zip(prompts, captions, strict=True):
            prompt = list(prompt) if self.use_hard_prompt else []
            text = (prompt + list(caption[: self.caption_length]))[: self.text_length]
            rows.append((text, min(len(prompt), len(text))))
        t = max(len(text) for text, _ in rows)
        s = self.soft_length
        b = len(rows)
        tokens = torch.full((b, t), pad_id, dtype=torch.long)
        attention = torch.zeros((b, s + t), dtype=torch.long)
        loss_mask = torch.zeros((b, s + t), dtype=torch.bool)
        for i, (text, p) in enumerate(rows):
            tokens[i, : len(text)] = torch.tensor(text, dtype=torch.long)
            attention[i, : s + len(text)] = 1
            loss_mask[i, s + p : s + len(text)] = True
        labels = torch.cat((torch.zeros((b, s), dtype=torch.long), tokens), dim=1)
        return {
            "tokens": tokens,
            "prompt_lengths": torch.tensor([p for _, p in rows], dtype=torch.long),
            "attention_mask": attention,
            "labels": labels,
            "loss_mask": loss_mask,
        }
