"""brain2text's optional frozen LLM with tiny random causal LMs and a tokenizer trained offline:
the loss against a plain per-trial forward, greedy generation against a manual loop, beam
search against every sequence of a tiny vocabulary, Qwen2-Audio checkpoints
(language model + multi-modal projector, no audio tower), and a run whose only gradient comes
through the frozen LM, evaluated with WER/CER."""

from __future__ import annotations

import csv

import pytest
import torch
import torch.nn.functional as F

from heads import config as config_mod
from heads import get_head, recipe, runs
from heads.checkpoint import read_weights, weights_file
from heads.train import train
from heads.zoo.brain2text.llm import FrozenLM, load_frozen_lm, load_tokenizer
from heads.zoo.brain2text.synthetic import WORDS, write_dataset

PROMPT_BEFORE, PROMPT_AFTER = "audio :", "say ."


def quiet(*_):
    pass


def tiny_qwen2(vocab: int):
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       max_position_embeddings=256, tie_word_embeddings=False)  # fmt: skip


def save_tokenizer(path):
    """A word-level tokenizer trained offline on the demo's words and the prompts."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    texts = [w.capitalize() for w in WORDS] + list(WORDS) + [PROMPT_BEFORE, PROMPT_AFTER]
    tok.train_from_iterator(
        texts, trainers.WordLevelTrainer(special_tokens=["<pad>", "<eos>", "<unk>"])
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                   unk_token="<unk>")  # fmt: skip
    fast.save_pretrained(path)
    return fast


@pytest.fixture(scope="module")
def causal_lm(tmp_path_factory):
    from transformers import Qwen2ForCausalLM

    path = tmp_path_factory.mktemp("lm")
    tokenizer = save_tokenizer(path)
    torch.manual_seed(0)
    Qwen2ForCausalLM(tiny_qwen2(len(tokenizer))).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def qwen2_audio(tmp_path_factory):
    from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

    path = tmp_path_factory.mktemp("qwen2audio")
    tokenizer = save_tokenizer(path)
    config = Qwen2AudioConfig(
        audio_config={"d_model": 16, "encoder_layers": 1, "encoder_attention_heads": 2,
                      "encoder_ffn_dim": 16, "num_mel_bins": 8, "max_source_positions": 16},
        text_config=tiny_qwen2(len(tokenizer)).to_dict(),
    )  # fmt: skip
    torch.manual_seed(1)
    model = Qwen2AudioForConditionalGeneration(config).eval()
    model.save_pretrained(path)
    return path, model


def frozen(path, audio_dim=12):
    tok = load_tokenizer(str(path))
    lm, projector, pretrained = load_frozen_lm(str(path), "float32", audio_dim)
    before = tok(PROMPT_BEFORE, add_special_tokens=False)["input_ids"]
    after = tok(PROMPT_AFTER, add_special_tokens=False)["input_ids"]
    return FrozenLM(lm, projector, before, after, tok.pad_token_id, tok.eos_token_id), tok


def test_loss_equals_a_plain_forward_of_each_trial_alone(causal_lm):
    torch.manual_seed(0)
    llm, tok = frozen(causal_lm)
    emb, lengths = torch.randn(2, 6, 12), torch.tensor([6, 3])
    texts = [tok(t, add_special_tokens=False)["input_ids"] for t in ("the cat", "we go home now")]
    texts = [t + [tok.eos_token_id] for t in texts]
    ids = torch.zeros(2, 5, dtype=torch.long)
    for b, t in enumerate(texts):
        ids[b, : len(t)] = torch.tensor(t)
    loss = llm(emb, lengths, {"ids": ids, "lengths": torch.tensor([len(t) for t in texts])})
    total, count = 0.0, 0
    prefixes = llm.prefix(emb, lengths)
    for b, t in enumerate(texts):
        target = torch.tensor(t)
        inputs = torch.cat([prefixes[b], llm.lm.get_input_embeddings()(target)])[None]
        logits = llm.lm(inputs_embeds=inputs).logits[0, -len(t) - 1 : -1]
        total += F.cross_entropy(logits, target, reduction="sum").item()
        count += len(t)
    assert loss.item() == pytest.approx(total / count, rel=1e-5)
    assert len(prefixes[1]) == len(llm.before) + 3 + len(llm.after)  # valid patches only


def test_greedy_generation_matches_a_manual_loop(causal_lm):
    torch.manual_seed(1)
    llm, tok = frozen(causal_lm)
    emb, lengths = torch.randn(2, 5, 12), torch.tensor([5, 2])
    texts = llm.generate(emb, lengths, tok, num_beams=1, max_new_tokens=4)
    for b in range(2):
        seq = llm.prefix(emb, lengths)[b][None]
        out = []
        for _ in range(4):
            nxt = int(llm.lm(inputs_embeds=seq).logits[0, -1].argmax())
            if nxt == tok.eos_token_id:
                break
            out.append(nxt)
            seq = torch.cat([seq, llm.lm.get_input_embeddings()(torch.tensor([[nxt]]))], 1)
        assert texts[b] == tok.decode(out, skip_special_tokens=True).strip()


class IdTokenizer:
    """Decodes ids as ``w<id>`` words, pad (0) and eos (1) skipped, as batch_decode does."""

    def batch_decode(self, rows, skip_special_tokens=True):
        return [" ".join(f"w{int(i)}" for i in row if int(i) > 1) for row in rows]


@torch.no_grad()
def every_sequence(lm, prefix, steps, eos):
    """``[(score, tokens)]`` of every sequence of up to ``steps`` new tokens after ``prefix``
    (ended by eos or by the length limit), best first; score = sum of log-probs / length."""
    embed, vocab, scored = lm.get_input_embeddings(), lm.config.vocab_size, []

    def extend(tokens, total):
        seq = torch.cat([prefix, embed(torch.tensor(tokens, dtype=torch.long))])
        log_probs = lm(inputs_embeds=seq[None]).logits[0, -1].float().log_softmax(-1)
        for t in range(vocab):
            new, s = [*tokens, t], total + log_probs[t].item()
            if t == eos or len(new) == steps:
                scored.append((s / len(new), new))
            else:
                extend(new, s)

    extend([], 0.0)
    return sorted(scored, reverse=True)


def test_beam_search_finds_the_best_sequence_of_a_tiny_vocabulary():
    """Vocabulary 6 (pad 0, eos 1), 3 new tokens, 36 = 6^2 beams: every prefix of length <= 2
    stays in the beam, so beam search is exhaustive and must return the best-scoring sequence
    by transformers' default ranking (sum of log-probs / generated length, eos included;
    ``length_penalty`` 1). The best is found here by scoring every sequence, trial by trial."""
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(0)
    config = tiny_qwen2(6)
    config.initializer_range = 0.1  # less flat next-token distributions: no near-ties
    lm = Qwen2ForCausalLM(config).eval().requires_grad_(False)
    llm = FrozenLM(lm, torch.nn.Linear(12, 32), [2, 3], [4], pad_id=0, eos_id=1)
    emb, lengths = torch.randn(3, 5, 12), torch.tensor([5, 2, 4])
    tok, steps = IdTokenizer(), 3
    beams = llm.generate(emb, lengths, tok, num_beams=6 ** (steps - 1), max_new_tokens=steps)
    greedy = llm.generate(emb, lengths, tok, num_beams=1, max_new_tokens=steps)
    with torch.no_grad():
        prefixes = llm.prefix(emb, lengths)  # each trial alone, no padding
    differs = 0
    for b, prefix in enumerate(prefixes):
        scored = every_sequence(lm, prefix, steps, eos=1)
        assert scored[0][0] - scored[1][0] > 1e-3  # a clear winner, no float tie
        best = tok.batch_decode([scored[0][1]])[0]
        assert beams[b] == best
        differs += greedy[b] != best
    assert differs  # a search that fell back to greedy decoding would fail


def test_qwen2_audio_checkpoint_gives_its_language_model_and_frozen_projector(qwen2_audio):
    path, original = qwen2_audio
    lm, projector, pretrained = load_frozen_lm(str(path), "float32", 16)
    assert pretrained and not projector.weight.requires_grad
    assert not any(p.requires_grad for p in lm.parameters())
    assert torch.equal(projector.weight, original.model.multi_modal_projector.linear.weight)
    assert not any("audio" in n for n, _ in lm.named_parameters())
    torch.manual_seed(2)
    audio_like = torch.randn(1, 4, 16)
    inputs = projector(audio_like)
    expected = original(inputs_embeds=original.model.multi_modal_projector(audio_like)).logits
    assert torch.allclose(lm(inputs_embeds=inputs).logits, expected, atol=1e-5)
    with pytest.raises(Exception, match="takes 16-d audio embeddings"):
        load_frozen_lm(str(path), "float32", 1280)


def test_a_run_trained_only_through_the_frozen_lm(causal_lm, tmp_path):
    root = write_dataset(tmp_path / "hdf5_data_final", ("t15.2023.08.11", "t15.2023.08.13"),
                         {"train": 6, "val": 2}, n_channels=8)  # fmt: skip
    sets = {
        "data": {"root": str(root), "batches_per_epoch": 2, "days_per_batch": 2},
        "model": {"n_input_features": 8, "n_units": 16, "n_layers": 1, "patch_size": 4,
                  "patch_stride": 2, "rnn_dropout": 0.0, "audio_dim": 12},
        "loss": {"alpha": 0.0, "beta": 1.0, "gamma": 0.0},
        "llm": {"model": str(causal_lm), "dtype": "float32", "prompt_before": PROMPT_BEFORE,
                "prompt_after": PROMPT_AFTER},
        "eval": {"max_new_tokens": 4},
        "train": {"steps": 2, "batch_size": 4, "num_workers": 0, "log_every": 1,
                  "warmup_steps": 0, "best_metric": "val_wer"},
    }  # fmt: skip
    cfg = config_mod.merge(recipe(get_head("brain2text")), sets)
    head = get_head("brain2text")(cfg)
    starts = []  # the weights the run starts from (built seeded by the loop), not a fresh draw
    build = head.build_model

    def recording_build():
        model = build()
        starts.append({k: v.clone() for k, v in model.state_dict().items() if "gru" in k})
        return model

    head.build_model = recording_build
    summary = train(head, cfg, tmp_path / "run", progress=False, log=quiet)
    assert len(starts) == 1 and len(starts[0]) == 4  # GRU weight_ih/hh, bias_ih/hh
    assert {"val_llm_loss", "val_wer", "val_cer"} <= set(summary)
    saved = read_weights(weights_file(tmp_path / "run"))
    assert "llm.projector.weight" in saved  # a new projector trains (not a Qwen2-Audio one)
    assert not any(k.startswith("llm.lm.") for k in saved)  # the frozen LM is never saved
    # the only loss is the LLM's: every GRU tensor moved, so its gradient came through the LM
    assert all(not torch.equal(saved[k], v) for k, v in starts[0].items())
    report, _ = runs.evaluate_run("brain2text", tmp_path / "run")
    assert report.metrics["val_wer"] >= 0 and report.metrics["val_cer"] >= 0
    with (tmp_path / "run" / "predictions_val.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and "pred_text" in rows[0] and "pred_phonemes" not in rows[0]
