"""minimind-v's chat JSONL: reading it, and turning a conversation into training tokens.

One sample per line, the same format for the pretrain and the SFT files::

    {"conversations": [{"role": "user", "content": "<image>\\nWhat shape is this?"},
                       {"role": "assistant", "content": "A red circle."}],
     "image": "a.jpg"}                          # several images: "a.jpg, b.jpg"

Roles go by turn position (even = user, odd = assistant), as in minimind-v; a ``role`` that
contradicts its position is an error rather than a silently mis-trained turn. Each ``<image>``
tag stands for one listed image, in order.

:class:`ChatEncoder` renders a conversation with the tokenizer's chat template, with each tag
replaced by the placeholder run (minimind-v: ``"@" * 196``), and returns the token ids, the
training-target mask (assistant spans, minimind-v's rule) and where each image's run starts.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError

ROLES = ("user", "assistant")


@dataclass(frozen=True)
class ChatSample:
    """One conversation: its turns' contents (user first, alternating) and image ids."""

    source: str  # "file.jsonl line N", for error messages
    turns: tuple[str, ...]
    images: tuple[str, ...]


def read_chat_jsonl(path: str | Path, image_tag: str = "<image>") -> list[ChatSample]:
    """Every sample of a minimind-v JSONL file, checked: well-formed turns, roles by position,
    one listed image per ``image_tag``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"chat data file {path} does not exist.")
    samples = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                samples.append(_parse_line(line, f"{path} line {number}", image_tag))
    if not samples:
        raise DataError(f"{path} holds no conversations.")
    return samples


def _parse_line(line: str, where: str, image_tag: str) -> ChatSample:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: not valid JSON ({e}).") from None
    turns = record.get("conversations") if isinstance(record, dict) else None
    if not isinstance(turns, list) or not turns:
        raise DataError(f'{where}: needs a non-empty "conversations" list.')
    contents = []
    for i, turn in enumerate(turns):
        content = turn.get("content") if isinstance(turn, dict) else None
        if not isinstance(content, str):
            raise DataError(f'{where}: turn {i + 1} needs a string "content".')
        role = turn.get("role", ROLES[i % 2])
        if role != ROLES[i % 2]:
            raise DataError(
                f"{where}: turn {i + 1} has role {role!r}, but turns alternate user, assistant "
                f"(minimind-v assigns roles by position)."
            )
        contents.append(content)
    field = record.get("image", "")
    if not isinstance(field, str):
        raise DataError(f'{where}: "image" must be a string ("a.jpg" or "a.jpg, b.jpg").')
    images = tuple(name.strip() for name in field.split(",") if name.strip())
    tags = sum(c.count(image_tag) for c in contents)
    if tags != len(images):
        raise DataError(
            f"{where}: {tags} {image_tag} tags but {len(images)} images "
            f"({', '.join(images) or 'none'}); list one image per tag, comma-separated."
        )
    return ChatSample(where, tuple(contents), images)


@dataclass
class Encoded:
    """A tokenized conversation. ``targets[t]``: token ``t`` is trained on (predicted from the
    tokens before it). ``image_starts[k]``: where image k's placeholder run begins; images cut
    off by truncation are dropped, so ``len(image_starts)`` images are used."""

    ids: np.ndarray  # int64 [L]
    targets: np.ndarray  # bool [L]
    image_starts: list[int]


class ChatEncoder:
    """Conversations → token ids, target mask and image positions, minimind-v's way.

    - Each image tag becomes ``image_token * image_tokens`` in the text before templating,
      so the placeholder ids come from the tokenizer (``"@"`` → id 34 in MiniMind's).
    - Targets (minimind-v's ``_generate_loss_mask``): after each ``assistant_start`` token
      sequence, skip one token (the newline), then every token through the next ``turn_end``
      sequence and one token after it (the newline).
    - ``max_length`` truncation never cuts into an image's run (or ends on one): the cut moves
      back to the run's start and that image is dropped.
    """

    def __init__(
        self,
        tokenizer: Any,
        max_length: int = 640,
        image_tag: str = "<image>",
        image_token: str = "@",
        image_tokens: int = 196,
        assistant_start: str = "<|im_start|>assistant",
        turn_end: str = "<|im_end|>",
    ) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.image_tag = image_tag
        self.image_token = image_token
        self.image_tokens = image_tokens
        self.assistant_start = assistant_start
        self.turn_end = turn_end
        self.placeholder = image_token * image_tokens
        if importlib.util.find_spec("jinja2") is None:
            raise ConfigError(
                "chat templates need jinja2: pip install 'featstore-heads[vlm]' (or jinja2)."
            )
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError(
                "the tokenizer has no chat template; use one that has (MiniMind's ChatML) or "
                "set its chat_template."
            )
        ids = self._ids(self.placeholder)
        if len(ids) != image_tokens or len(set(ids)) != 1:
            raise ConfigError(
                f"data.image_token={image_token!r} x {image_tokens} tokenizes into {len(ids)} "
                f"ids ({len(set(ids))} distinct); the placeholder must be one token that never "
                f"merges (MiniMind's '@' is id 34). Choose another data.image_token."
            )
        self.image_token_id = ids[0]
        self.start_ids = np.asarray(self._ids(assistant_start), dtype=np.int64)
        self.end_ids = np.asarray(self._ids(turn_end), dtype=np.int64)
        if not len(self.start_ids) or not len(self.end_ids):
            raise ConfigError("data.assistant_start and data.turn_end must not be empty.")
        self.end_token_id = int(self.end_ids[0])
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        if max_length < image_tokens + 2:
            raise ConfigError(
                f"data.max_seq_len={max_length} cannot hold one image ({image_tokens} tokens)."
            )

    def settings(self) -> dict[str, Any]:
        """The options this encoder was made with, under their config names (``data.*``)."""
        return {
            "max_seq_len": self.max_length,
            "image_tag": self.image_tag,
            "image_token": self.image_token,
            "image_tokens": self.image_tokens,
            "assistant_start": self.assistant_start,
            "turn_end": self.turn_end,
        }

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def messages(self, turns: tuple[str, ...] | list[str]) -> list[dict[str, str]]:
        return [
            {"role": ROLES[i % 2], "content": t.replace(self.image_tag, self.placeholder)}
            for i, t in enumerate(turns)
        ]

    def render(self, turns: tuple[str, ...] | list[str], generation_prompt: bool = False) -> str:
        """The chat-template text (placeholders in place of image tags)."""
        return self.tokenizer.apply_chat_template(
            self.messages(turns), tokenize=False, add_generation_prompt=generation_prompt
        )

    def check(self, sample: ChatSample) -> None:
        """Cheap text checks before any tokenizing: a placeholder character touching an image
        tag would merge into that image's run."""
        for content in sample.turns:
            if self.image_tag + self.image_token in content or (
                self.image_token + self.image_tag in content
            ):
                raise DataError(
                    f"{sample.source}: {self.image_token!r} touches an {self.image_tag} tag, so "
                    f"it would join the image's placeholder run; put a space between them."
                )

    def encode(self, sample: ChatSample) -> Encoded:
        """A training sample: ids (truncated to ``max_length``), targets, image starts."""
        ids = np.asarray(self._ids(self.render(sample.turns)), dtype=np.int64)
        starts = self.image_runs(ids, len(sample.images), sample.source)
        cut = len(ids)
        if cut > self.max_length:
            cut = self.max_length
            for s in starts:  # never cut into a run, nor end on one
                if s < cut <= s + self.image_tokens:
                    cut = s
                    break
        ids = ids[:cut]
        return Encoded(
            ids, self.target_mask(ids), [s for s in starts if s + self.image_tokens <= cut]
        )

    def prompt(self, turns: tuple[str, ...] | list[str], source: str = "prompt") -> Encoded:
        """Generation input: the conversation so far (ending with a user turn) and the
        assistant header; nothing is truncated."""
        n_images = sum(t.count(self.image_tag) for t in turns)
        ids = np.asarray(self._ids(self.render(turns, generation_prompt=True)), dtype=np.int64)
        starts = self.image_runs(ids, n_images, source)
        return Encoded(ids, np.zeros(len(ids), dtype=bool), starts)

    def image_runs(self, ids: np.ndarray, n_images: int, source: str) -> list[int]:
        """Start of each image's placeholder run. A run of k x ``image_tokens`` placeholders is
        k adjacent images; shorter runs are ordinary text (a literal "@")."""
        is_ph = np.concatenate([[False], ids == self.image_token_id, [False]])
        edges = np.flatnonzero(np.diff(is_ph.astype(np.int8)))
        starts = []
        for begin, end in zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True):
            length = end - begin
            if length < self.image_tokens:
                continue
            if length % self.image_tokens:
                raise DataError(
                    f"{source}: a placeholder run of {length} tokens is not a whole number of "
                    f"images ({self.image_tokens} each): the text puts the placeholder "
                    f"character next to an image tag. Remove it from the text."
                )
            starts += range(begin, end, self.image_tokens)
        if len(starts) != n_images:
            raise DataError(
                f"{source}: {len(starts)} placeholder runs for {n_images} images; the tokenizer "
                f"merges the placeholder with the text around it."
            )
        return starts

    def target_mask(self, ids: np.ndarray) -> np.ndarray:
        """minimind-v's loss mask over ``ids``, as one boolean per token."""
        mask = np.zeros(len(ids), dtype=bool)
        starts = _find(ids, self.start_ids)
        ends = _find(ids, self.end_ids)
        position = 0
        for s in starts.tolist():
            if s < position:
                continue  # inside the previous assistant span
            first = s + len(self.start_ids)
            later = ends[ends >= first]
            end = int(later[0]) if len(later) else len(ids)
            last = end + len(self.end_ids) + 1 if len(later) else len(ids)
            mask[first + 1 : last] = True
            position = end + len(self.end_ids) if len(later) else len(ids)
        return mask


def _find(ids: np.ndarray, pattern: np.ndarray) -> np.ndarray:
    """Start positions of ``pattern`` in ``ids``."""
    k = len(pattern)
    if len(ids) < k:
        return np.zeros(0, dtype=np.int64)
    windows = np.lib.stride_tricks.sliding_window_view(ids, k)
    return np.flatnonzero((windows == pattern).all(axis=1))


def pad_batch(encoded: list[Encoded], pad_id: int) -> dict[str, np.ndarray]:
    """Right-pad to the longest sample: ``input_ids``, ``targets`` ``[B, L]`` and
    ``image_starts [N, 2]`` (row, start) for the N images, in sample order. Causal attention
    never looks right, so padding to the batch (not to ``max_length``) changes no logit."""
    length = max(len(e.ids) for e in encoded)
    ids = np.full((len(encoded), length), pad_id, dtype=np.int64)
    targets = np.zeros((len(encoded), length), dtype=bool)
    starts = []
    for row, e in enumerate(encoded):
        ids[row, : len(e.ids)] = e.ids
        targets[row, : len(e.targets)] = e.targets
        starts += [(row, s) for s in e.image_starts]
    return {
        "input_ids": ids,
        "targets": targets,
        "image_starts": np.asarray(starts, dtype=np.int64).reshape(-1, 2),
    }
