"""The optional frozen LLM decoder (the seed's ``beta`` term): brain tokens → text.

The brain embedding ``[P, 1280]`` (the Qwen2-Audio encoder's output space) goes through a
projector to the LLM's width and sits between two prompt pieces; the transcript follows:

    [prompt_before ; brain tokens (the trial's valid patches) ; prompt_after] → transcript <eos>

Cross-entropy is taken on the transcript tokens and the end token only. Rows are left-padded (with
explicit position ids), so every row ends at the same position and logits are computed only for
the last ``max target + 1`` positions — never ``[B, L, vocab]`` for a 156k vocabulary.

Loading (``location``: a hub id or a local directory):

- a Qwen2-Audio checkpoint (``model_type == "qwen2_audio"``, the default
  ``Qwen/Qwen2-Audio-7B-Instruct``): its language model is built alone as a causal LM and its
  ``multi_modal_projector`` (Linear 1280 → 4096) is the projector, both frozen; the audio tower is
  never loaded.
- any other causal LM: ``AutoModelForCausalLM``, frozen, with a new trainable projector.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ConfigError

QWEN2_AUDIO = "qwen2_audio"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TOKENIZER_FILES = ["*.json", "*.txt", "*.model", "*.tiktoken"]


def resolve(location: str) -> Path:
    """A local directory, or the hub snapshot of ``location`` (config, tokenizer, safetensors)."""
    local = Path(location).expanduser()
    if local.is_dir():
        return local
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(location, allow_patterns=[*TOKENIZER_FILES, "*.safetensors"]))
    except Exception as e:  # noqa: BLE001 - hub, offline and file errors all mean "cannot load"
        raise ConfigError(
            f"llm.model = {location!r}: cannot load it ({type(e).__name__}: {e}). Download it "
            f"once with network access (it is then cached), or give a local directory."
        ) from None


def model_type(path: Path) -> str:
    config = path / "config.json"
    if not config.is_file():
        raise ConfigError(f"llm.model: {path} has no config.json; is it a transformers model?")
    return json.loads(config.read_text()).get("model_type", "")


def load_tokenizer(location: str):
    from transformers import AutoTokenizer

    path = resolve(location)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as e:
        raise ConfigError(f"llm.model = {location!r}: cannot load its tokenizer: {e}") from None
    if tokenizer.eos_token_id is None:
        raise ConfigError(f"llm.model = {location!r}: its tokenizer has no end token (eos).")
    return tokenizer


@contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Build modules with their parameters on the meta device (no memory, no init: a 7B LM costs
    nothing until its tensors are assigned) while buffers such as rotary frequencies are computed
    as usual (accelerate's ``init_empty_weights(include_buffers=False)``)."""
    register = nn.Module.register_parameter

    def on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register(module, name, param)
        if param is not None:
            moved = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
            module._parameters[name] = moved

    nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def _qwen2_audio_parts(path: Path, dtype: torch.dtype) -> tuple[nn.Module, nn.Linear]:
    """The language model of a Qwen2-Audio checkpoint as a causal LM, and its projector; only
    the tensors they need are read (checkpoints name them ``language_model.model.*`` /
    ``language_model.lm_head.*``, or, saved by transformers 5, ``model.language_model.*`` /
    ``lm_head.*``)."""
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(path))
    renames = (
        ("language_model.model.", "lm.model."),
        ("model.language_model.", "lm.model."),
        ("language_model.lm_head.", "lm.lm_head."),
        ("lm_head.", "lm.lm_head."),
        ("multi_modal_projector.linear.", "projector."),
        ("model.multi_modal_projector.linear.", "projector."),
    )
    state: dict[str, Tensor] = {}
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open has keys(), no __iter__
                for old, new in renames:
                    if key.startswith(old):
                        state[new + key[len(old) :]] = f.get_tensor(key).to(dtype)
                        break
    with parameters_on_meta():
        lm = AutoModelForCausalLM.from_config(config.text_config, dtype=dtype)
        projector = nn.Linear(config.audio_config.d_model, config.text_config.hidden_size)
    parts = nn.ModuleDict({"lm": lm, "projector": projector})
    expected = set(parts.state_dict())
    tied = getattr(config.text_config, "tie_word_embeddings", False)
    if tied:
        expected.discard("lm.lm_head.weight")
    missing = sorted(expected - set(state))
    if missing:
        raise ConfigError(
            f"llm.model: {path} is a Qwen2-Audio config, but its safetensors lack {len(missing)} "
            f"language-model/projector tensors (first: {missing[:3]})."
        )
    parts.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False,
                          assign=True)  # fmt: skip
    if tied:
        lm.tie_weights()
    return lm, projector


def load_frozen_lm(location: str, dtype: str, audio_dim: int) -> tuple[nn.Module, nn.Linear, bool]:
    """``(causal LM, projector, projector_is_pretrained)``; the LM's parameters are frozen."""
    if dtype not in DTYPES:
        raise ConfigError(f"llm.dtype = {dtype!r}: use one of {', '.join(DTYPES)}.")
    path = resolve(location)
    kind = model_type(path)
    if kind == QWEN2_AUDIO:
        lm, projector = _qwen2_audio_parts(path, DTYPES[dtype])
        pretrained = True
    else:
        from transformers import AutoModelForCausalLM

        try:
            lm = AutoModelForCausalLM.from_pretrained(str(path), dtype=DTYPES[dtype])
        except (OSError, ValueError) as e:
            raise ConfigError(f"llm.model = {location!r}: cannot load a causal LM: {e}") from None
        projector = nn.Linear(audio_dim, lm.config.hidden_size)
        pretrained = False
    if projector.in_features != audio_dim:
        raise ConfigError(
            f"llm.model = {location!r}: its projector takes {projector.in_features}-d audio "
            f"embeddings, but the brain embedding (the audio entry's width) is {audio_dim}-d."
        )
    lm.requires_grad_(False).eval()
    if pretrained:
        projector.requires_grad_(False)
    return lm, projector, pretrained


class FrozenLM(nn.Module):
    """Projector + frozen causal LM around fixed prompt pieces (token ids as buffers)."""

    def __init__(
        self,
        lm: nn.Module,
        projector: nn.Linear,
        before: list[int],
        after: list[int],
        pad_id: int,
        eos_id: int,
    ) -> None:
        super().__init__()
        self.lm, self.projector = lm, projector
        self.register_buffer("before", torch.tensor(before, dtype=torch.long), persistent=False)
        self.register_buffer("after", torch.tensor(after, dtype=torch.long), persistent=False)
        self.pad_id, self.eos_id = pad_id, eos_id

    def train(self, mode: bool = True) -> FrozenLM:
        super().train(mode)
        self.lm.eval()  # frozen: never dropout
        return self

    def _embed(self, ids: Tensor) -> Tensor:
        return self.lm.get_input_embeddings()(ids)

    def prefix(self, embedding: Tensor, lengths: Tensor) -> list[Tensor]:
        """Per trial: ``[before ; projected valid brain tokens ; after]`` as embeddings."""
        brain = self.projector(embedding.to(self.projector.weight.dtype))
        before, after = self._embed(self.before), self._embed(self.after)
        brain = brain.to(before.dtype)
        return [
            torch.cat([before, brain[b, : int(n)], after]) for b, n in enumerate(lengths.tolist())
        ]

    @staticmethod
    def left_pad(rows: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Rows ``[L_i, H]`` → ``([B, L, H], mask [B, L])``, padded on the left with zeros."""
        longest = max(len(r) for r in rows)
        out = rows[0].new_zeros(len(rows), longest, rows[0].shape[-1])
        mask = torch.zeros(len(rows), longest, dtype=torch.long, device=rows[0].device)
        for b, r in enumerate(rows):
            out[b, longest - len(r) :] = r
            mask[b, longest - len(r) :] = 1
        return out, mask

    def forward(self, embedding: Tensor, lengths: Tensor, text: dict[str, Tensor]) -> Tensor:
        """Mean cross-entropy over every transcript token and end token of the batch."""
        ids, n_text = text["ids"], text["lengths"]
        rows = [
            torch.cat([p, self._embed(ids[b, : int(n)])])
            for b, (p, n) in enumerate(
                zip(self.prefix(embedding, lengths), n_text.tolist(), strict=True)
            )
        ]
        inputs, mask = self.left_pad(rows)
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        keep = int(n_text.max()) + 1  # the last prefix position predicts the first target token
        hidden = self.lm.base_model(
            inputs_embeds=inputs, attention_mask=mask, position_ids=positions
        ).last_hidden_state[:, -keep:-1]
        logits = self.lm.get_output_embeddings()(hidden).float()  # [B, max target, V]
        # row b's targets fill the last n_b of the kept positions
        width = keep - 1
        j = torch.arange(width, device=ids.device).unsqueeze(0)
        start = width - n_text.to(ids.device).unsqueeze(1)
        valid = j >= start
        index = (j - start).clamp_min(0)
        targets = torch.where(valid, ids.gather(1, index.clamp_max(ids.shape[1] - 1)), -100)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))

    @torch.no_grad()
    def generate(
        self,
        embedding: Tensor,
        lengths: Tensor,
        tokenizer: Any,
        num_beams: int = 1,
        max_new_tokens: int = 40,
    ) -> list[str]:
        """Greedy (``num_beams=1``) or beam-search transcripts (transformers' ``generate``)."""
        inputs, mask = self.left_pad(self.prefix(embedding, lengths))
        out = self.lm.generate(
            inputs_embeds=inputs,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            do_sample=False,
            eos_token_id=self.eos_id,
            pad_token_id=self.pad_id,
        )
        return [t.strip() for t in tokenizer.batch_decode(out, skip_special_tokens=True)]
