"""Losses checked against values worked out by hand, and MixCo's sampling semantics."""

from __future__ import annotations

import math

import pytest
import torch

from heads import losses

# Two unit vectors each: p1=(1,0), p2=(0,1); t1=(1,0), t2=(0.6,0.8). At temp 0.5:
#   preds @ targs.T / temp = [[2, 1.2], [0, 1.6]]     targs @ targs.T / temp = [[2, 1.2], [1.2, 2]]
PREDS = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
TARGS = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)
TEMP = 0.5


def lse(*xs: float) -> float:
    return math.log(sum(math.exp(x) for x in xs))


def close(actual: torch.Tensor, expected: float) -> None:
    assert actual.item() == pytest.approx(expected, rel=1e-9, abs=1e-12)


# ---------------------------------------------------------------- soft_clip_loss


def test_soft_clip_loss_by_hand():
    # label rows: softmax([2, 1.2]) and softmax([1.2, 2])
    q_hi = math.exp(2) / (math.exp(2) + math.exp(1.2))
    q_lo = 1 - q_hi
    # brain -> clip: rows of [[2, 1.2], [0, 1.6]]
    l_r0 = -(q_hi * (2 - lse(2, 1.2)) + q_lo * (1.2 - lse(2, 1.2)))
    l_r1 = -(q_lo * (0 - lse(0, 1.6)) + q_hi * (1.6 - lse(0, 1.6)))
    # clip -> brain: rows of the transpose [[2, 0], [1.2, 1.6]]
    l_c0 = -(q_hi * (2 - lse(2, 0)) + q_lo * (0 - lse(2, 0)))
    l_c1 = -(q_lo * (1.2 - lse(1.2, 1.6)) + q_hi * (1.6 - lse(1.2, 1.6)))
    expected = ((l_r0 + l_r1) / 2 + (l_c0 + l_c1) / 2) / 2
    close(losses.soft_clip_loss(PREDS, TARGS, TEMP), expected)


def test_soft_clip_loss_perfect_prediction_is_label_entropy():
    # preds == targs: the loss is the entropy of the label distribution (both directions equal).
    q_hi = math.exp(2) / (math.exp(2) + math.exp(1.2))
    entropy = -(q_hi * math.log(q_hi) + (1 - q_hi) * math.log(1 - q_hi))
    close(losses.soft_clip_loss(TARGS, TARGS, TEMP), entropy)


# ---------------------------------------------------------------- mixco_nce


def test_mixco_nce_without_perm_is_bidirectional_infonce():
    forward = ((lse(2, 1.2) - 2) + (lse(0, 1.6) - 1.6)) / 2
    backward = ((lse(2, 0) - 2) + (lse(1.2, 1.6) - 1.6)) / 2
    close(losses.mixco_nce(PREDS, TARGS, TEMP), (forward + backward) / 2)
    close(losses.mixco_nce(PREDS, TARGS, TEMP, bidirectional=False), forward)


def test_mixco_nce_soft_labels_by_hand():
    # perm = [1, 0], betas = [0.6, 1] (row 1 not selected) -> labels [[0.6, 0.4], [0, 1]]
    perm, betas = torch.tensor([1, 0]), torch.tensor([0.6, 1.0], dtype=torch.float64)
    l0, l1 = lse(2, 1.2), lse(0, 1.6)
    forward = (-(0.6 * (2 - l0) + 0.4 * (1.2 - l0)) + -(1.0 * (1.6 - l1))) / 2
    r0, r1 = lse(2, 0), lse(1.2, 1.6)  # transpose rows; labels.T = [[0.6, 0], [0.4, 1]]
    backward = (-(0.6 * (2 - r0)) + -(0.4 * (1.2 - r1) + 1.0 * (1.6 - r1))) / 2
    got = losses.mixco_nce(PREDS, TARGS, TEMP, perm=perm, betas=betas)
    close(got, (forward + backward) / 2)
    # select forces betas[~select] = 1 whatever was passed
    select = torch.tensor([True, False])
    betas_dirty = torch.tensor([0.6, 0.3], dtype=torch.float64)
    close(losses.mixco_nce(PREDS, TARGS, TEMP, perm, betas_dirty, select), (forward + backward) / 2)


def test_mixco_nce_fixed_point_keeps_full_label_mass():
    # 3x3, logits = 2*I. perm = [1, 0, 2]: row 2 maps to itself. betas = [0.7, 1, 0.4].
    # labels = [[.7, .3, 0], [0, 1, 0], [0, 0, .4 + .6]]; every row sums to 1, so each row's
    # loss is lse(2,0,0) - 2 * labels[i,i]; the columns carry the same diagonal.
    eye = torch.eye(3, dtype=torch.float64)
    perm, betas = torch.tensor([1, 0, 2]), torch.tensor([0.7, 1.0, 0.4], dtype=torch.float64)
    big = lse(2, 0, 0)
    forward = (3 * big - 2 * (0.7 + 1.0 + 1.0)) / 3
    backward = ((0.7 * big - 2 * 0.7) + (1.3 * big - 2 * 1.0) + (1.0 * big - 2 * 1.0)) / 3
    got = losses.mixco_nce(eye, eye, TEMP, perm=perm, betas=betas)
    close(got, (forward + backward) / 2)


def test_mixco_nce_with_nothing_selected_equals_plain_infonce():
    g = torch.Generator().manual_seed(0)
    p = torch.nn.functional.normalize(torch.randn(6, 5, generator=g), dim=-1)
    t = torch.nn.functional.normalize(torch.randn(6, 5, generator=g), dim=-1)
    perm = torch.randperm(6, generator=g)
    got = losses.mixco_nce(p, t, 0.1, perm=perm, betas=torch.ones(6), select=torch.zeros(6) > 1)
    torch.testing.assert_close(got, losses.mixco_nce(p, t, 0.1))


# ---------------------------------------------------------------- info_nce


def test_info_nce_by_hand():
    expected = ((lse(2, 1.2) - 2) + (lse(0, 1.6) - 1.6)) / 2  # one direction only
    close(losses.info_nce(PREDS, TARGS, TEMP), expected)


def test_info_nce_with_shared_and_per_row_negatives():
    shared = torch.tensor([[0.0, 1.0]], dtype=torch.float64)  # scores 0 for p1, 2 for p2
    expected = ((lse(2, 1.2, 0) - 2) + (lse(0, 1.6, 2) - 1.6)) / 2
    close(losses.info_nce(PREDS, TARGS, TEMP, negatives=shared), expected)
    per_row = torch.tensor([[[0.0, 1.0]], [[1.0, 0.0]]], dtype=torch.float64)  # both score 0
    expected = ((lse(2, 1.2, 0) - 2) + (lse(0, 1.6, 0) - 1.6)) / 2
    close(losses.info_nce(PREDS, TARGS, TEMP, negatives=per_row), expected)


# ---------------------------------------------------------------- mixco sampling


def test_mixco_semantics_with_seeded_generator():
    vox = torch.randn(64, 1, 7, generator=torch.Generator().manual_seed(5))
    original = vox.clone()
    mixed, perm, betas, select = losses.mixco(vox, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(vox, original)  # not modified in place
    assert sorted(perm.tolist()) == list(range(64))
    assert betas.dtype == torch.float32 and betas.shape == (64,) and select.dtype == torch.bool
    assert 0 < int(select.sum()) < 64
    assert torch.all(betas[~select] == 1)
    assert torch.all((betas[select] >= 0) & (betas[select] <= 1))
    # Beta(0.15, 0.15) is U-shaped: most draws sit near 0 or 1
    assert (torch.minimum(betas[select], 1 - betas[select]) < 0.1).float().mean() > 0.5
    torch.testing.assert_close(mixed[~select], vox[~select])
    b = betas[select].reshape(-1, 1, 1)
    torch.testing.assert_close(mixed[select], vox[select] * b + vox[perm][select] * (1 - b))

    again = losses.mixco(vox, generator=torch.Generator().manual_seed(1))
    for x, y in zip((mixed, perm, betas, select), again, strict=True):
        assert torch.equal(x, y)
    other = losses.mixco(vox, generator=torch.Generator().manual_seed(2))
    assert not torch.equal(other[1], perm)


def test_mixco_threshold_and_given_perm():
    vox = torch.randn(32, 1, 3)
    _, _, betas, select = losses.mixco(vox, s_thresh=0.0, generator=torch.Generator())
    assert not select.any() and torch.all(betas == 1)
    perm = torch.arange(32).flip(0)
    mixed, got_perm, _, select = losses.mixco(vox, s_thresh=1.0, perm=perm)
    assert select.all() and torch.equal(got_perm, perm)
    with pytest.raises(ValueError):
        losses.mixco(vox, perm=torch.arange(5))


def test_mixco_per_subject_keeps_perm_in_block_with_offsets():
    sizes = (3, 5)
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        blocks = [torch.randn(3, 1, 4), torch.randn(5, 1, 6)]  # different voxel counts
        mixed, perm, betas, select = losses.mixco_per_subject(blocks, generator=g)
        assert [m.shape for m in mixed] == [b.shape for b in blocks]
        assert perm.shape == betas.shape == select.shape == (8,)
        assert sorted(perm[:3].tolist()) == [0, 1, 2]
        assert sorted(perm[3:].tolist()) == [3, 4, 5, 6, 7]
        assert all(3 <= int(p) < 8 for p in perm[3:])
        assert torch.all(betas[~select] == 1)
        offset = 0
        for block, out, n in zip(blocks, mixed, sizes, strict=True):
            local_perm = perm[offset : offset + n] - offset
            b = betas[offset : offset + n].reshape(-1, 1, 1)
            torch.testing.assert_close(out, block * b + block[local_perm] * (1 - b))
            offset += n


def test_mixco_per_subject_labels_match_global_perm():
    # With equal voxel counts the global perm must describe the mix of the concatenated batch.
    g = torch.Generator().manual_seed(3)
    blocks = [torch.randn(3, 1, 4), torch.randn(5, 1, 4)]
    mixed, perm, betas, _ = losses.mixco_per_subject(blocks, generator=g)
    cat, out = torch.cat(blocks), torch.cat(mixed)
    b = betas.reshape(-1, 1, 1)
    torch.testing.assert_close(out, cat * b + cat[perm] * (1 - b))


# ---------------------------------------------------------------- temperature schedule


def test_cosine_temperature_endpoints_and_midpoint():
    assert losses.cosine_temperature(0.0) == pytest.approx(0.004)
    assert losses.cosine_temperature(1.0) == pytest.approx(0.0075)
    assert losses.cosine_temperature(0.5) == pytest.approx((0.004 + 0.0075) / 2)
    # cos(pi/3) = 1/2 -> end + (start - end) * 3/4
    assert losses.cosine_temperature(1 / 3) == pytest.approx(0.0075 - 0.0035 * 0.75)
    assert losses.cosine_temperature(-1) == losses.cosine_temperature(0)
    assert losses.cosine_temperature(2) == losses.cosine_temperature(1)


def test_soft_clip_temperature_follows_mindeye_indexing():
    # 150 epochs, mixup_pct .33: BiMixCo for epochs 0..48, SoftCLIP for 49..149 (101 values).
    assert losses.soft_clip_temperature(49, 150) == pytest.approx(0.004)
    assert losses.soft_clip_temperature(149, 150) == pytest.approx(0.0075)
    assert losses.soft_clip_temperature(99, 150) == pytest.approx(0.00575)
    i, n = 10, 101
    by_hand = 0.0075 + (0.004 - 0.0075) / 2 * (1 + math.cos(math.pi * i / (n - 1)))
    assert losses.soft_clip_temperature(49 + i, 150) == pytest.approx(by_hand)
    assert losses.soft_clip_temperature(0, 1, mixup_pct=0.33) == pytest.approx(0.004)


def test_ctc_loss_reductions_by_hand():
    from heads.losses.sequence import ctc_loss

    # Uniform logits over {blank, 1, 2}: every frame has probability 1/3 per class.
    logits = torch.zeros(2, 2, 3)
    targets = torch.tensor([[1, 0], [1, 2]])
    lengths, target_lengths = torch.tensor([2, 2]), torch.tensor([1, 2])
    # [1] in 2 frames: paths "1 1", "1 -", "- 1" -> 3/9; [1, 2]: only "1 2" -> 1/9.
    per = ctc_loss(logits, lengths, targets, target_lengths, reduction="none")
    assert per.tolist() == pytest.approx([math.log(3), math.log(9)], rel=1e-5)
    seq = ctc_loss(logits, lengths, targets, target_lengths, reduction="sequence_mean")
    assert float(seq) == pytest.approx(1.5 * math.log(3), rel=1e-5)
    mean = ctc_loss(logits, lengths, targets, target_lengths)  # each divided by its length
    assert float(mean) == pytest.approx(math.log(3), rel=1e-5)
    short = torch.tensor([2, 1])  # the second target cannot fit in one frame
    kept = ctc_loss(logits, short, targets, target_lengths, reduction="none")
    assert kept[1] == 0 and torch.isinf(
        ctc_loss(logits, short, targets, target_lengths, reduction="none", zero_infinity=False)[1]
    )
    with pytest.raises(ValueError, match="reduction 'sum'"):
        ctc_loss(logits, lengths, targets, target_lengths, reduction="sum")
