"""Answering: the prompt's embeddings with images spliced in, then transformers' ``generate``
(KV cache, temperature, top-p, streaming) from those embeddings.

minimind-v splices images only on the first forward (``start_pos == 0``); generating from
``inputs_embeds`` does the same: the images enter once, through the prompt, and a generated
"@" is just a token.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import TextStreamer

from ...data.chat_jsonl import ChatEncoder, Encoded
from .model import VisionLanguageModel


class _Echo(TextStreamer):
    """Streams each finished piece of generated text to ``write`` (the prompt is skipped)."""

    def __init__(self, tokenizer: Any, write: Callable[[str], None]) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.write = write

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        self.write(text)


@torch.no_grad()
def generate(
    model: VisionLanguageModel,
    encoder: ChatEncoder,
    prompts: list[Encoded],
    patches: torch.Tensor | None,
    max_new_tokens: int = 512,
    temperature: float = 0.0,
    top_p: float = 1.0,
    write: Callable[[str], None] | None = None,
) -> list[str]:
    """Answers to ``prompts`` (from :meth:`ChatEncoder.prompt`), whose images' patch tokens are
    ``patches`` in prompt order. Prompts are left-padded into one batch. ``temperature = 0``
    is greedy; otherwise sampling with ``temperature`` and ``top_p``. ``write`` streams the
    text of a single prompt as it is generated."""
    if write is not None and len(prompts) != 1:
        raise ValueError("streaming answers one prompt at a time")
    device = next(model.parameters()).device
    length = max(len(p.ids) for p in prompts)
    ids = torch.full((len(prompts), length), encoder.pad_id, dtype=torch.long)
    attention = torch.zeros((len(prompts), length), dtype=torch.long)
    starts = []
    for row, p in enumerate(prompts):
        pad = length - len(p.ids)
        ids[row, pad:] = torch.from_numpy(p.ids)
        attention[row, pad:] = 1
        starts += [(row, pad + s) for s in p.image_starts]
    starts_t = torch.tensor(starts, dtype=torch.long).reshape(-1, 2)
    patches = None if patches is None else patches.to(device)
    embeds = model.embed(ids.to(device), patches, starts_t.to(device))
    sampling = (
        {"do_sample": True, "temperature": temperature, "top_p": top_p}
        if temperature > 0
        else {"do_sample": False}
    )
    stops = sorted({encoder.end_token_id, *_eos_ids(encoder.tokenizer)})
    out = model.llm.generate(
        inputs_embeds=embeds,
        attention_mask=attention.to(device),
        max_new_tokens=max_new_tokens,
        eos_token_id=stops,
        pad_token_id=encoder.pad_id,
        streamer=_Echo(encoder.tokenizer, write) if write else None,
        **sampling,
    )
    return encoder.tokenizer.batch_decode(out, skip_special_tokens=True)


def _eos_ids(tokenizer: Any) -> list[int]:
    return [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
