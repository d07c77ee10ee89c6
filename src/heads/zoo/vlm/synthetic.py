"""Labelled-synthetic data for the demo and the tests, in minimind-v's file layouts.

- Images: a large coloured shape on a coloured background, written as JPEG into an image
  folder, like minimind-v's ``pretrain_images/`` and ``sft_images/``.
- Conversations: minimind-v's JSONL. The answers are a function of the image
  ("What shape is this?" → "A red circle."), so answering held-out images correctly measures
  learning; chance is 1 in 18 for the full answer (6 shape colours x 3 shapes).
- A byte-level BPE tokenizer trained offline on the data's own text, with MiniMind's special
  tokens (``<|endoftext|>`` 0, ``<|im_start|>`` 1, ``<|im_end|>`` 2), a ChatML chat template and
  "@" as an unmerged placeholder token; and a tiny random-weight Llama LLM saved beside it in
  transformers' format, so training loads it through the real path (a local directory).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

# ChatML as MiniMind's tokenizer renders it (default system prompt included); our own template.
CHATML_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' -%}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' -}}"
    "{%- set turns = messages[1:] -%}"
    "{%- else -%}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant<|im_end|>\\n' -}}"
    "{%- set turns = messages -%}"
    "{%- endif -%}"
    "{%- for message in turns -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
DESCRIBE = ["Describe this picture.", "What do you see?", "Describe the image briefly."]


@dataclass(frozen=True)
class Scene:
    """One synthetic image's file name and what it shows."""

    name: str
    color: str
    shape: str
    background: str

    @property
    def caption(self) -> str:
        return f"A {self.color} {self.shape} on a {self.background} background."


SHAPES = ("circle", "square", "triangle")


def draw_scene(rng: np.random.Generator, size: int = 224) -> tuple[Image.Image, Scene]:
    """A shape of one colour on a background of another, at a random place, with a little pixel
    noise. Every shape has the same half-width (``size // 3.5``), so the shapes differ in how
    many patches they cover (square > circle > triangle) as well as in their outline."""
    from PIL import ImageDraw

    from featstore.demo import COLORS

    names = list(COLORS)
    color, background = (names[i] for i in rng.choice(len(names), size=2, replace=False))
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    r = int(size / 3.5)
    cx, cy = (int(v) for v in rng.integers(r, size - r, size=2))
    image = Image.new("RGB", (size, size), COLORS[background])
    draw = ImageDraw.Draw(image)
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=COLORS[color])
    elif shape == "square":
        draw.rectangle(box, fill=COLORS[color])
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=COLORS[color])
    noisy = np.asarray(image, dtype=np.float32) + rng.normal(0, 6, (size, size, 3))
    pixels = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    return pixels, Scene("", color, shape, background)


def write_images(folder: Path, n: int, seed: int = 0, prefix: str = "img") -> list[Scene]:
    """``n`` scenes as JPEG files in ``folder``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    scenes = []
    for i in range(n):
        pixels, scene = draw_scene(rng)
        scene = Scene(f"{prefix}_{i:04d}.jpg", scene.color, scene.shape, scene.background)
        pixels.save(folder / scene.name, quality=95)
        scenes.append(scene)
    return scenes


def turn(user: str, assistant: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


def questions(scene: Scene) -> list[tuple[str, str]]:
    """(question, answer) pairs about one scene."""
    return [
        ("What shape is this?", f"A {scene.color} {scene.shape}."),
        ("What colour is the shape?", f"{scene.color.capitalize()}."),
        ("What colour is the background?", f"{scene.background.capitalize()}."),
    ]


def pretrain_records(scenes: list[Scene], seed: int = 0) -> list[dict[str, Any]]:
    """Captioning, as minimind-v's pretrain data: ``<image>`` + a request → the caption."""
    rng = np.random.default_rng(seed)
    return [
        {
            "conversations": turn(f"<image>\n{DESCRIBE[rng.integers(len(DESCRIBE))]}", s.caption),
            "image": s.name,
        }
        for s in scenes
    ]


def sft_records(scenes: list[Scene], seed: int = 0, pairs: int = 0) -> list[dict[str, Any]]:
    """One conversation per scene: its three questions in a random order, the image given in
    the first; plus ``pairs`` two-image samples ("What are the two shapes?")."""
    rng = np.random.default_rng(seed)
    records = []
    for s in scenes:
        asked = [questions(s)[i] for i in rng.permutation(3)]
        conversation = [t for q, a in asked for t in turn(q, a)]
        conversation[0]["content"] = f"<image>\n{conversation[0]['content']}"
        records.append({"conversations": conversation, "image": s.name})
    for _ in range(pairs):
        a, b = (scenes[i] for i in rng.choice(len(scenes), size=2, replace=False))
        answer = f"A {a.color} {a.shape} and a {b.color} {b.shape}."
        records.append(
            {
                "conversations": turn("<image>\n<image>\nWhat are the two shapes?", answer),
                "image": f"{a.name}, {b.name}",
            }
        )
    return records


def question_records(scenes: list[Scene]) -> list[dict[str, Any]]:
    """One sample per question (held-out data: the last turn is the reference answer)."""
    return [
        {"conversations": turn(f"<image>\n{q}", a), "image": s.name}
        for s in scenes
        for q, a in questions(s)
    ]


def text_records(scenes: list[Scene]) -> list[dict[str, Any]]:
    """Text-only conversations (no image): the same questions about a scene described in words.
    The demo's stand-in for MiniMind's own text pretraining: the LLM learns to answer from
    what it reads, before the projector learns to show it images."""
    return [
        {"conversations": turn(f"{s.caption}\n{q}", a)}
        for s in scenes
        for q, a in [(DESCRIBE[0], s.caption), *questions(s)]
    ]


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


def train_tokenizer(texts: list[str], out_dir: Path, vocab_size: int = 512) -> Any:
    """A byte-level BPE tokenizer trained on ``texts`` (no network), saved to ``out_dir`` as a
    ``PreTrainedTokenizerFast`` with MiniMind's special tokens and the ChatML template. "@"
    never occurs in the training text, so it is one unmerged byte token (the placeholder)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if any("@" in t for t in texts):
        raise ValueError("the placeholder '@' must not occur in the tokenizer's training text")
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def write_tiny_llm(
    out_dir: Path,
    tokenizer: Any,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    seed: int = 0,
) -> Path:
    """A random-weight Llama decoder with MiniMind's layout at toy size (SwiGLU, RMSNorm,
    RoPE θ 1e6, tied embeddings, no biases), saved with ``tokenizer`` in transformers' format."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from .model import quiet_transformers

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=64 * -(-int(hidden * 8 / 3) // 64),
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        rope_theta=1e6,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    with quiet_transformers():
        model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def corpus(records: list[dict[str, Any]]) -> list[str]:
    """The text of conversations (image tags left out), for tokenizer training."""
    return [t["content"].replace("<image>", "") for r in records for t in r["conversations"]] + [
        "system",
        "user",
        "assistant",
        "You are a helpful assistant",
    ]
