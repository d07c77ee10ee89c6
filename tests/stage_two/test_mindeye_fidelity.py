"""MindEye2 where it changes published numbers: retrieval directions against an independent
re-statement of the original's arithmetic, its evaluation draws and CI, its epoch length and its
repeat padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from heads.metrics.retrieval import Z95
from heads.zoo.mindeye.evaluation import draw_subsets, repeat_weights, retrieval_scores


def original_batchwise_cosine_similarity(Z, B):
    """MindEyeV2 utils.batchwise_cosine_similarity, restated: the result is transposed."""
    Z, B = Z.flatten(1), B.flatten(1).T
    return ((Z @ B) / (Z.norm(dim=1, keepdim=True) @ B.norm(dim=0, keepdim=True))).T


def original_topk1(similarities, labels):
    """MindEyeV2 utils.topk at k=1: the last column of an ascending argsort per row."""
    return (torch.argsort(similarities, dim=1)[:, -1] == labels).float().mean().item()


def test_directions_follow_the_original_arithmetic():
    gen = torch.Generator().manual_seed(3)
    clip = torch.randn(40, 6, 4, generator=gen)  # image targets (tokens)
    # brain embeddings: noisy, with a shared "hub" direction so the two directions differ
    brain = (
        clip
        + 1.3 * torch.randn(40, 6, 4, generator=gen)
        + 2.0 * torch.randn(1, 6, 4, generator=gen)
    )
    labels = torch.arange(40)
    # final_evaluations: fwd_sim = bcs(clip_voxels, clip_image)  ("image retrieval", published)
    fwd = original_topk1(original_batchwise_cosine_similarity(brain, clip), labels)
    bwd = original_topk1(original_batchwise_cosine_similarity(clip, brain), labels)
    assert fwd != bwd  # a case where the labels matter
    norm = torch.nn.functional.normalize
    emb = {"images": np.arange(40), "brain": norm(brain.flatten(1), dim=-1),
           "targets": norm(clip.flatten(1), dim=-1)}  # fmt: skip
    scores = retrieval_scores(emb, way=40, draws=1, seed=0)
    assert scores["image_retrieval"]["mean"] == pytest.approx(fwd)
    assert scores["brain_retrieval"]["mean"] == pytest.approx(bwd)


def test_original_draws_and_confidence_interval():
    state = np.random.get_state()
    try:  # the original: seed_everything(42), then 30 x np.random.choice on the global RNG
        np.random.seed(42)
        expected = [np.random.choice(np.arange(1000), size=300, replace=False) for _ in range(30)]
    finally:
        np.random.set_state(state)
    got = draw_subsets(1000, 300, 30, 42, "original")
    assert all(np.array_equal(a, b) for a, b in zip(got, expected, strict=True))
    other = draw_subsets(1000, 300, 30, 42, "numpy")
    assert not np.array_equal(other[0], expected[0])
    assert len(draw_subsets(40, 300, 2, 42, "original")[0]) == 40  # fewer images: all of them
    # CI: scipy.stats.norm.interval(0.95, mean, np.std(x) / sqrt(n)), np.std with ddof=0
    torch.manual_seed(0)
    emb = {"images": np.arange(50), "brain": torch.nn.functional.normalize(torch.randn(50, 8)),
           "targets": torch.nn.functional.normalize(torch.randn(50, 8))}  # fmt: skip
    scores = retrieval_scores(emb, way=20, draws=30, seed=42)
    values = []
    for pick in draw_subsets(50, 20, 30, 42, "original"):
        sim = original_batchwise_cosine_similarity(emb["brain"][pick], emb["targets"][pick])
        values.append(original_topk1(sim, torch.arange(20)))
    assert scores["image_retrieval"]["mean"] == pytest.approx(np.mean(values))
    half = Z95 * np.std(values) / np.sqrt(30)
    assert scores["image_retrieval"]["ci95"] == pytest.approx(half)
    stats = pytest.importorskip("scipy.stats")
    low, high = stats.norm.interval(0.95, loc=np.mean(values), scale=np.std(values) / np.sqrt(30))
    assert (high - low) / 2 == pytest.approx(half)


def test_repeat_padding_rules():
    assert repeat_weights(2, "original").tolist() == pytest.approx([2 / 3, 1 / 3])  # [a, a, b]
    assert repeat_weights(2, "mean").tolist() == [0.5, 0.5]
    assert repeat_weights(1, "original").tolist() == [1.0]  # [a, a, a]
    assert repeat_weights(3, "original").tolist() == pytest.approx([1 / 3] * 3)


def test_a_way_covering_the_whole_test_set_is_one_draw_without_a_ci():
    from heads.report import percent_line

    torch.manual_seed(0)
    emb = {"images": np.arange(12), "brain": torch.nn.functional.normalize(torch.randn(12, 8)),
           "targets": torch.nn.functional.normalize(torch.randn(12, 8))}  # fmt: skip
    whole = retrieval_scores(emb, way=300, draws=30, seed=42)["image_retrieval"]
    sim = original_batchwise_cosine_similarity(emb["brain"], emb["targets"])
    assert whole["mean"] == pytest.approx(original_topk1(sim, torch.arange(12)))
    assert whole["whole_set"] and whole["ci95"] == 0 and whole["way"] == 12
    assert percent_line("image_retrieval", whole).endswith(
        "(12-way: all test items, one draw; chance 8.3%)"
    )
    part = retrieval_scores(emb, way=6, draws=30, seed=42)["image_retrieval"]
    assert not part["whole_set"] and " ± " in percent_line("image_retrieval", part)
