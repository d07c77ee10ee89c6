"""brain2text units: seed-size shapes and counts (meta device), patching, smoothing taps, the
random cut, CTC decoding and PER by hand, the baseline CTC reduction, per-trial alignment and its
masking, the seed's batch alignment, day-layer routing, original checkpoints, text error rates
(parameter groups: test_brain2text_e2e.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from heads.losses.alignment import aligned_loss, batch_aligned_loss, resample
from heads.losses.sequence import ctc_loss
from heads.metrics.sequence import ctc_greedy_decode, error_rate
from heads.metrics.text import normalize_sentence, text_error_rates
from heads.zoo.brain2text.augment import augment, gaussian_kernel, smooth
from heads.zoo.brain2text.model import Brain2TextModel, original_state_dict, patch_count

REFERENCE_TAPS = [0.02763, 0.06628, 0.12383, 0.18017, 0.20416, 0.18017, 0.12383, 0.06628, 0.02763]


def tiny(**kw):
    defaults = dict(n_days=3, neural_dim=6, n_units=8, n_layers=2, patch_size=3, patch_stride=2,
                    audio_dim=5, rnn_dropout=0.0, input_dropout=0.0)  # fmt: skip
    return Brain2TextModel(**{**defaults, **kw})


# ------------------------------------------------------------------ seed sizes on the meta device
def test_seed_size_counts_and_shapes_on_meta():
    with torch.device("meta"):
        model = Brain2TextModel(n_days=45)
    counts = {n: p.numel() for n, p in model.named_parameters()}
    day = sum(v for k, v in counts.items() if k.startswith("day_"))
    baseline = sum(v for k, v in counts.items() if not k.startswith("projector"))
    assert day == 45 * (512 * 512 + 512) == 11_819_520  # "11.8M day-specific"
    gru_l0 = 3 * 768 * (7168 + 768) + 2 * 3 * 768
    gru_rest = 4 * (3 * 768 * (768 + 768) + 2 * 3 * 768)
    assert baseline == day + gru_l0 + gru_rest + (768 * 41 + 41) + 768 == 44_315_177  # "44.3M"
    assert counts["projector.0.weight"] == 768 * 1280 and counts["projector.1.weight"] == 1280
    x = torch.empty(2, 544, 512, device="meta")
    out = model(x, torch.zeros(2, dtype=torch.long, device="meta"), torch.tensor([544, 500]))
    assert out["logits"].shape == (2, 133, 41)  # P = (544 - 14) // 4 + 1
    assert out["embedding"].shape == (2, 133, 1280)
    assert out["lengths"].tolist() == [133, 122]


def test_parameter_names_are_the_originals():
    names = [n for n, _ in tiny(n_layers=1).named_parameters()]
    assert names == [
        "h0", "day_weights.0", "day_weights.1", "day_weights.2", "day_biases.0", "day_biases.1",
        "day_biases.2", "gru.weight_ih_l0", "gru.weight_hh_l0", "gru.bias_ih_l0", "gru.bias_hh_l0",
        "out.weight", "out.bias", "projector.0.weight", "projector.0.bias", "projector.1.weight",
        "projector.1.bias",
    ]  # fmt: skip


def test_original_checkpoints_load_after_renaming():
    source = tiny()
    compiled = {f"_orig_mod.{k}": v.clone() for k, v in source.state_dict().items()}
    seed = {f"brain_encoder.{k}": v for k, v in source.state_dict().items() if "out." not in k}
    seed["llm_decoder.projector.linear.weight"] = torch.zeros(3, 3)  # frozen seed parts: dropped
    target = tiny()
    target.load_state_dict(original_state_dict(compiled))
    pairs = zip(source.state_dict().values(), target.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    assert set(original_state_dict(seed)) == set(source.state_dict()) - {"out.weight", "out.bias"}


# ------------------------------------------------------------------------------------ patching
@pytest.mark.parametrize("n,expected", [(544, 133), (14, 1), (17, 1), (18, 2), (13, 0), (3, 0)])
def test_patch_count_formula(n, expected):
    assert patch_count(n, 14, 4) == expected
    assert patch_count(torch.tensor([n]), 14, 4).tolist() == [expected]


def test_patches_concatenate_consecutive_steps_in_time_order():
    model = tiny(patch_size=3, patch_stride=2)
    x = torch.arange(2 * 9 * 6, dtype=torch.float32).reshape(2, 9, 6)
    p = model.patches(x)
    assert p.shape == (2, patch_count(9, 3, 2), 18)
    for b in range(2):
        for k in range(p.shape[1]):
            assert torch.equal(p[b, k], x[b, 2 * k : 2 * k + 3].reshape(-1))


# ------------------------------------------------------------------------------- transforms
def test_smoothing_kernel_taps_and_same_padding():
    assert gaussian_kernel(2.0, 100) == pytest.approx(REFERENCE_TAPS, abs=5e-6)
    assert sum(gaussian_kernel()) == pytest.approx(1.0)
    impulse = torch.zeros(1, 21, 2)
    impulse[0, 10] = 1.0
    out = smooth(impulse)
    assert out.shape == impulse.shape
    assert out[0, 6:15, 0].tolist() == pytest.approx(REFERENCE_TAPS, abs=5e-6)
    assert out[0, :6].abs().sum() == 0 and out[0, 15:].abs().sum() == 0


def test_smoothing_matches_scipy_when_available():
    ndimage = pytest.importorskip("scipy.ndimage")
    impulse = np.zeros(100, dtype=np.float32)
    impulse[50] = 1
    k = ndimage.gaussian_filter1d(impulse, 3.0)
    k = k[k > 0.01]
    assert gaussian_kernel(3.0, 100) == pytest.approx((k / k.sum()).tolist(), abs=1e-7)


def test_random_cut_draws_0_to_2_steps_per_batch():
    x, n = torch.zeros(3, 20, 4), torch.tensor([20, 15, 10])
    cuts = set()
    rng = np.random.RandomState(0)
    for _ in range(60):
        y, m = augment(x, n, 0.0, 0.0, 3, rng=rng)
        cut = 20 - y.shape[1]
        assert (n - m).tolist() == [cut] * 3  # one value for the whole batch
        cuts.add(cut)
    assert cuts == {0, 1, 2}


def test_noise_and_offset_have_the_configured_scales():
    torch.manual_seed(0)
    x = torch.zeros(64, 200, 32)
    noisy, _ = augment(x, torch.full((64,), 200), 1.0, 0.0, 0)
    offset, _ = augment(x, torch.full((64,), 200), 0.0, 0.2, 0)
    assert noisy.std().item() == pytest.approx(1.0, rel=0.02)
    assert torch.equal(offset, offset[:, :1].expand_as(offset))  # constant over time
    assert offset[:, 0].std().item() == pytest.approx(0.2, rel=0.1)


# -------------------------------------------------------------------------------- CTC and PER
def one_hot_path(path, classes=5):
    return F.one_hot(torch.tensor(path), classes).float().unsqueeze(0) * 10


def test_greedy_ctc_decode_collapses_then_drops_blanks():
    assert ctc_greedy_decode(one_hot_path([1, 1, 0, 1, 2, 2, 0, 0])) == [[1, 1, 2]]
    assert ctc_greedy_decode(one_hot_path([3, 0, 3])) == [[3, 3]]  # "A _ A": two A's
    assert ctc_greedy_decode(one_hot_path([3, 3, 3])) == [[3]]
    assert ctc_greedy_decode(one_hot_path([2, 2, 4, 4]), torch.tensor([2])) == [[2]]  # length


def test_per_is_total_edits_over_total_reference_phonemes():
    refs = [[1, 2, 3, 4], [5, 6]]
    hyps = [[1, 3, 4], [5, 7, 6]]  # one deletion, one insertion
    assert error_rate(refs, hyps) == pytest.approx(2 / 6)


def test_ctc_is_the_per_trial_sum_averaged_over_the_batch():
    torch.manual_seed(0)
    logits = torch.randn(3, 12, 6)
    lengths, targets = torch.tensor([12, 10, 8]), torch.tensor([[1, 2, 3], [4, 4, 0], [5, 0, 0]])
    target_lengths = torch.tensor([3, 2, 1])
    ours = ctc_loss(logits, lengths, targets, target_lengths, reduction="sequence_mean",
                    zero_infinity=False)  # fmt: skip
    lp = logits.log_softmax(-1).transpose(0, 1)
    total = F.ctc_loss(lp, targets, lengths, target_lengths, reduction="sum")
    assert ours.item() == pytest.approx(total.item() / 3, rel=1e-6)
    impossible = ctc_loss(logits[:1], torch.tensor([2]), targets[:1], torch.tensor([3]),
                          reduction="sequence_mean", zero_infinity=False)  # fmt: skip
    assert torch.isinf(impossible)  # the baseline's zero_infinity=False


# ------------------------------------------------------------------------------------ alignment
def test_resample_equals_interpolate_on_each_trial_alone():
    torch.manual_seed(0)
    x = torch.randn(3, 9, 4)
    lengths, out_lengths = torch.tensor([9, 5, 3]), torch.tensor([4, 7, 3])
    y = resample(x, lengths, out_lengths)
    assert y.shape == (3, 7, 4)
    for b in range(3):
        n, m = int(lengths[b]), int(out_lengths[b])
        ref = F.interpolate(x[b : b + 1, :n].transpose(1, 2), size=m, mode="linear",
                            align_corners=False).transpose(1, 2)[0]  # fmt: skip
        assert torch.allclose(y[b, :m], ref, atol=1e-6)
        assert y[b, m:].abs().sum() == 0


def test_alignment_ignores_padding_and_takes_the_shorter_length():
    torch.manual_seed(0)
    brain, audio = torch.randn(2, 10, 8), torch.randn(2, 6, 8)
    b_len, a_len = torch.tensor([10, 4]), torch.tensor([6, 6])
    loss = aligned_loss(brain, b_len, audio, a_len)
    garbage = brain.clone()
    garbage[1, 4:] = 1e3  # beyond trial 1's valid patches
    assert aligned_loss(garbage, b_len, audio, a_len).item() == pytest.approx(loss.item())
    # trial 1: 4 patches vs 6 frames -> both resampled to 4
    same = aligned_loss(audio[:, :4], torch.tensor([4, 4]), audio[:, :4], torch.tensor([4, 4]))
    assert same.item() == pytest.approx(0.0, abs=1e-6)
    assert aligned_loss(-audio, a_len, audio, a_len).item() == pytest.approx(2.0, abs=1e-6)
    manual = []
    for b in range(2):
        n = min(int(b_len[b]), int(a_len[b]))
        xb = F.interpolate(brain[b : b + 1, : b_len[b]].transpose(1, 2), size=n, mode="linear")
        yb = F.interpolate(audio[b : b + 1, : a_len[b]].transpose(1, 2), size=n, mode="linear")
        manual.append(1 - F.cosine_similarity(xb[0].T, yb[0].T, dim=-1))
    assert loss.item() == pytest.approx(torch.cat(manual).mean().item(), rel=1e-5)


def test_batch_alignment_reproduces_the_seeds_arithmetic():
    torch.manual_seed(0)
    brain, audio = torch.randn(2, 7, 3), torch.randn(2, 5, 3)
    a_len = torch.tensor([5, 3])
    loss = batch_aligned_loss(brain, audio, a_len, "mse")
    b = F.interpolate(brain.transpose(1, 2), size=5, mode="linear").transpose(1, 2)
    mask = torch.tensor([[1.0] * 5, [1.0] * 3 + [0.0] * 2])
    expected = (((b - audio) ** 2).mean(-1) * mask).sum() / (mask.sum() + 1e-8)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


# -------------------------------------------------------------------------------- day layers
def test_each_trial_goes_through_its_own_day_layer():
    torch.manual_seed(0)
    model = tiny()
    with torch.no_grad():
        for d in range(3):
            model.day_weights[d].copy_(torch.randn(6, 6))
            model.day_biases[d].copy_(torch.randn(1, 6))
    x, day = torch.randn(4, 5, 6), torch.tensor([2, 0, 2, 1])
    out = model.day_layer(x, day)
    for b in range(4):
        d = int(day[b])
        expected = F.softsign(x[b] @ model.day_weights[d] + model.day_biases[d])
        assert torch.allclose(out[b], expected, atol=1e-6)
    out[:2].sum().backward()  # trials of days 2 and 0 only
    assert model.day_weights[1].grad is None or model.day_weights[1].grad.abs().sum() == 0
    assert model.day_weights[0].grad.abs().sum() > 0 and model.day_weights[2].grad.abs().sum() > 0


# ------------------------------------------------------------------------------------- text
def test_sentence_normalisation_is_the_baselines():
    assert normalize_sentence("I'm  going home, NOW!") == "i'm going home now"
    assert normalize_sentence("co--operate") == "cooperate"
    assert normalize_sentence("going -- home") == "going - home"  # the original's order of rules
    assert normalize_sentence("Well- then 'tis") == "well then'tis"


def test_wer_and_cer_are_corpus_level_and_handle_empty_references():
    rates = text_error_rates(["the cat sat", "a dog"], ["the cat", "a big dog"])
    assert rates["wer"] == pytest.approx(2 / 5)  # one deletion + one insertion over 5 words
    assert rates["cer"] == pytest.approx((4 + 4) / (11 + 5))
    with_empty = text_error_rates(["", "a dog"], ["oh no", "a dog"])
    assert with_empty["wer"] == pytest.approx(2 / 2)  # two insertions over two reference words
    assert text_error_rates([""], [""]) == {"wer": 0.0, "cer": 0.0}
    assert text_error_rates(["Hello, world."], ["hello world"])["wer"] == 0.0


def test_recipes_name_the_baseline_and_the_seed():
    from heads import get_head, recipe
    from heads.registry import recipe_names

    head = get_head("brain2text")
    assert recipe_names(head) == ["default", "baseline", "seed"]
    default, baseline, seed = (recipe(head, n) for n in ("default", "baseline", "seed"))
    assert (default["loss"]["alpha"], default["loss"]["beta"], default["loss"]["gamma"]) == (
        1,
        0,
        1,
    )
    assert baseline["loss"]["alpha"] == 0 and baseline["train"] == default["train"]
    assert (seed["loss"]["beta"], seed["loss"]["gamma"], seed["train"]["best_metric"]) == (
        1,
        0,
        "val_wer",
    )
    t = default["train"]
    assert (t["steps"], t["batch_size"], t["lr"], t["min_lr"], t["warmup_steps"]) == (
        120_000, 64, 5e-3, 1e-4, 1000)  # fmt: skip
    assert (t["eps"], t["weight_decay"], t["grad_clip"], t["scheduler"]) == (
        0.1,
        1e-3,
        10,
        "cosine",
    )


def test_the_recipes_lr_schedule_is_the_baselines():
    """Linear warmup over 1,000 steps, cosine 5e-3 -> 1e-4 at step 120,000 (rnn_trainer's
    lr_lambda), for the day group too."""
    import math

    from heads import get_head, recipe
    from heads.config import TrainConfig
    from heads.train import build_scheduler

    t = TrainConfig.from_dict(recipe(get_head("brain2text"))["train"])
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.AdamW([{"params": [params[0]]}, {"params": [params[1]]}], lr=t.lr)
    sched = build_scheduler(opt, t, total_steps=t.steps, epochs=120)

    def baseline(step, lo=1e-4 / 5e-3, warmup=1000, decay=120_000):
        if step < warmup:
            return step / warmup
        if step < decay:
            cos = 0.5 * (1 + math.cos(math.pi * (step - warmup) / (decay - warmup)))
            return max(lo, lo + (1 - lo) * cos)
        return lo

    for step in (0, 1, 500, 999, 1000, 1001, 30_000, 60_500, 119_999, 120_000):
        factor = sched.lr_lambdas[0](step)
        assert factor == pytest.approx(baseline(step), rel=1e-9, abs=1e-12), step
        assert sched.lr_lambdas[1](step) == factor
