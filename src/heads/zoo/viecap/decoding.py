"""Captioning an image feature: entity detection, the prefix, beam search and greedy decoding.

Entity detection is ViECap's: ``softmax(normalize(image) · normalize(vocab)ᵀ / 0.01)`` over the
vocabulary embeddings, the top ``k`` (3) kept while their probability is at least the threshold
(0.4 in-domain, 0.2 cross-domain). Beam search ranks beams by their mean token log-probability,
as the original (ClipCap's) does: a finished beam (its last token "." or " .") keeps its score
and length; the best beam is returned, its final "." included. Many images are decoded at once
(left-padded prefixes with their position ids, and a key/value cache), which gives the same
captions as decoding one image at a time (tested).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .batching import hard_prompt
from .model import ViECapModel

STOP_TEXTS = (".", " .")


@dataclass
class Detection:
    entities: list[str]
    probs: list[float]


def detect_entities(
    image_features: Tensor,
    vocab_embeddings: Tensor,
    names: Sequence[str],
    top_k: int = 3,
    threshold: float = 0.4,
    temperature: float = 0.01,
) -> list[Detection]:
    """The vocabulary entries each image shows: top ``top_k`` of the softmax over the vocabulary,
    stopping at the first below ``threshold``."""
    image = F.normalize(image_features.float(), dim=-1)
    vocab = F.normalize(vocab_embeddings.float().to(image.device), dim=-1)
    probs = (image @ vocab.T / temperature).softmax(dim=-1)
    top, idx = probs.topk(min(top_k, len(names)), dim=-1)
    out = []
    for p_row, i_row in zip(top.tolist(), idx.tolist(), strict=True):
        keep = next((j for j, p in enumerate(p_row) if p < threshold), len(p_row))
        out.append(Detection([names[i] for i in i_row[:keep]], p_row[:keep]))
    return out


def prefix_embeddings(
    model: ViECapModel,
    tokenizer,
    image_features: Tensor,
    entities: Sequence[Sequence[str]] | None,
) -> list[Tensor]:
    """Each image's LM input before the caption: ``[soft ; hard]`` in the model's order
    (``entities=None`` or ``soft_only``: the soft prompt alone)."""
    features = F.normalize(image_features.float(), dim=-1)
    order = model.prompt_order
    soft = model.mapping_network(features) if order != "hard_only" else None
    out = []
    for i in range(len(features)):
        if entities is None or order == "soft_only":
            out.append(soft[i])
            continue
        ids = tokenizer(hard_prompt(entities[i]), add_special_tokens=False)["input_ids"]
        hard = model.word_embed(torch.tensor(ids, device=features.device))
        if order == "hard_only":
            out.append(hard)
        elif order == "hard_first":
            out.append(torch.cat((hard, soft[i].to(hard.dtype)), dim=0))
        else:
            out.append(torch.cat((soft[i].to(hard.dtype), hard), dim=0))
    return out


def stop_token_ids(tokenizer) -> list[int]:
    """The last token of "." and " ." (the original's stop tokens)."""
    return sorted({tokenizer(t, add_special_tokens=False)["input_ids"][-1] for t in STOP_TEXTS})


@torch.no_grad()
def beam_search(
    lm,
    prefixes: Sequence[Tensor],
    stop_ids: Sequence[int],
    beam_width: int = 5,
    max_length: int = 64,
    pad_id: int = 0,
) -> list[list[int]]:
    """Best continuation of each prefix ``[L_i, d]`` by mean log-probability (``beam_width=1``
    is greedy decoding). Returns token ids, the stop token included when one was reached."""
    device = prefixes[0].device
    b, w = len(prefixes), beam_width
    lengths = torch.tensor([len(p) for p in prefixes], device=device)
    longest = int(lengths.max())
    embeds = prefixes[0].new_zeros((b, longest, prefixes[0].shape[-1]))
    mask = torch.zeros((b, longest), dtype=torch.long, device=device)
    for i, p in enumerate(prefixes):  # left padding: the prefixes end together
        embeds[i, longest - len(p) :] = p
        mask[i, longest - len(p) :] = 1
    positions = (mask.cumsum(1) - 1).clamp_min(0)
    out = lm(
        inputs_embeds=embeds.to(lm.dtype),
        attention_mask=mask,
        position_ids=positions,
        use_cache=True,
    )
    logp = out.logits[:, -1].float().log_softmax(-1)  # [B, V]
    vocab = logp.shape[-1]
    scores, tokens = logp.topk(min(w, vocab), dim=-1)  # [B, W] summed log-probs, first tokens
    if w > vocab:  # wider than the vocabulary: the extra beams start dead (-inf, finished)
        scores = F.pad(scores, (0, w - vocab), value=float("-inf"))
        tokens = F.pad(tokens, (0, w - vocab), value=pad_id)
    cache_arg = (
        "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"
    )
    cache = _cache_of(out)
    cache.batch_repeat_interleave(w)
    mask = mask.repeat_interleave(w, dim=0)
    next_pos = lengths.repeat_interleave(w)  # position of the next token
    stops = torch.tensor(list(stop_ids), device=device)
    seqs = tokens.reshape(b * w, 1)
    steps = torch.ones(b, w, device=device)  # tokens counted in each beam's mean
    stopped = torch.isin(tokens, stops) | scores.isinf()
    offsets = (torch.arange(b, device=device) * w).unsqueeze(1)
    embed = lm.get_input_embeddings()
    for _ in range(max_length - 1):
        if bool(stopped.all()):
            break
        mask = torch.cat((mask, mask.new_ones((b * w, 1))), dim=1)
        out = lm(
            inputs_embeds=embed(seqs[:, -1:]),
            attention_mask=mask,
            position_ids=next_pos.unsqueeze(1),
            use_cache=True,
            **{cache_arg: cache},
        )
        cache, next_pos = _cache_of(out), next_pos + 1
        logp = out.logits[:, -1].float().log_softmax(-1).view(b, w, vocab)
        finished = stopped.unsqueeze(-1)
        logp = torch.where(finished, torch.full_like(logp, float("-inf")), logp)
        logp[..., pad_id] = torch.where(stopped, 0.0, logp[..., pad_id])
        new_steps = steps + (~stopped).float()
        mean = (scores.unsqueeze(-1) + logp) / new_steps.unsqueeze(-1)  # [B, W, V]
        best, flat = mean.view(b, w * vocab).topk(w, dim=-1)
        source, token = flat // vocab, flat % vocab
        steps = new_steps.gather(1, source)
        scores = best * steps
        stopped = stopped.gather(1, source) | torch.isin(token, stops)
        rows = (source + offsets).view(-1)
        cache.reorder_cache(rows)
        seqs = torch.cat((seqs[rows], token.view(-1, 1)), dim=1)
    best = (scores / steps).argmax(dim=-1)
    picked = seqs.view(b, w, -1)[torch.arange(b, device=device), best]
    counts = steps[torch.arange(b, device=device), best].long()
    return [row[:n].tolist() for row, n in zip(picked, counts.tolist(), strict=True)]


def _cache_of(output):
    """The key/value cache of an LM output (``cache`` in transformers 5, formerly
    ``past_key_values``)."""
    cache = output.get("cache") if "cache" in output else None
    return cache if cache is not None else output.past_key_values


@torch.no_grad()
def caption_features(
    model: ViECapModel,
    tokenizer,
    image_features: Tensor,
    detections: Sequence[Detection] | None,
    beam_width: int = 5,
    max_length: int = 64,
    batch_size: int = 32,
) -> list[str]:
    """Captions of image features (``detections=None``: soft prompt only)."""
    stop_ids = stop_token_ids(tokenizer)
    captions = []
    for start in range(0, len(image_features), batch_size):
        chunk = image_features[start : start + batch_size]
        ents = None
        if detections is not None:
            ents = [d.entities for d in detections[start : start + batch_size]]
        prefixes = prefix_embeddings(model, tokenizer, chunk, ents)
        ids = beam_search(model.gpt, prefixes, stop_ids, beam_width, max_length)
        captions += [tokenizer.decode(t, skip_special_tokens=True).strip() for t in ids]
    return captions
