"""NeuroBridge's models: seed-size parameter counts (on the meta device), tokenization, the
rotary attention's invariances, masking, the losses on hand-checkable inputs, and loading a
seed-style state dict."""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F

from heads.losses.contrastive import clip_loss
from heads.zoo.neurobridge.head import adapter_loss, augment, electrode_mask
from heads.zoo.neurobridge.layers import (
    RotaryCrossAttention,
    RotarySelfAttention,
    RotaryTimeEmbedding,
)
from heads.zoo.neurobridge.model import (
    AlignmentModel,
    DiffusionAdapter,
    EncoderConfig,
    NeuroBridgeEncoder,
    PretrainModel,
    from_seed_state_dict,
    parameter_count,
)

TINY = EncoderConfig(
    n_electrodes=12, dim=8, depth=1, dim_head=4, cross_heads=2, self_heads=2, num_latents=3
)


def test_seed_sizes_on_meta():
    """The seed's numbers: encoder ~2.3M, alignment 3,299,648 (+ the temperature), masking
    decoder ~330K, adapter ~17.2M; all counted layer by layer in the docs."""
    with torch.device("meta"):
        align = AlignmentModel(EncoderConfig())
        pretrain = PretrainModel(EncoderConfig())
        adapter = DiffusionAdapter()
    assert parameter_count(align.encoder) == 2_308_032
    assert parameter_count(align) == 3_299_648 + 1  # + log_temperature
    assert parameter_count(pretrain.decoder) == 330_305
    assert parameter_count(pretrain) == 2_638_337
    assert parameter_count(adapter) == 17_190_912
    assert align.encoder.unit_emb.weight.shape == (1025, 64)  # NA row + 1024 electrodes


def test_shapes():
    torch.manual_seed(0)
    model = AlignmentModel(TINY, output_dim=5, readout_queries=2, projector_hidden=6).eval()
    out = model(torch.randn(4, 12))
    assert out["embedding"].shape == (4, 5)
    assert torch.allclose(out["embedding"].norm(dim=-1), torch.ones(4), atol=1e-5)
    assert out["temperature"].item() == pytest.approx(0.07)
    assert model.encoder(torch.randn(4, 12)).shape == (4, 3, 8)
    assert PretrainModel(TINY).eval()(torch.randn(4, 12)).shape == (4, 12)
    assert DiffusionAdapter(5, 8, 7, 2, 1)(torch.randn(3, 5)).shape == (3, 7, 8)


@pytest.mark.parametrize("rows,first_row", [("original", 0), ("vocab", 1)])
def test_tokenization_value_and_electrode(rows, first_row):
    """A token is Linear(1 → dim/2)(value) ‖ the electrode's embedding row; the seed's lookup
    puts electrode i at row i (electrode 0 on the zero padding row), ``vocab`` at row i + 1."""
    torch.manual_seed(0)
    cfg = EncoderConfig(**{**TINY.__dict__, "electrode_rows": rows})
    enc = NeuroBridgeEncoder(cfg)
    values = torch.randn(2, 12)
    tokens = enc.tokens(values)
    assert tokens.shape == (2, 12, 8)
    w, b = enc.input_value_map.weight[:, 0], enc.input_value_map.bias
    assert torch.allclose(tokens[..., :4], values[..., None] * w + b)
    table = enc.unit_emb.weight
    assert torch.equal(tokens[0, :, 4:], table[first_row : first_row + 12])
    assert torch.equal(table[0], torch.zeros(4))
    if rows == "original":
        assert torch.equal(tokens[1, 0, 4:], torch.zeros(4))  # the seed's electrode 0


def test_rotary_at_one_time_is_the_identity_for_self_attention():
    """Queries, keys and values at one shared time: the rotations cancel (POYO rotates values
    and turns the output back), so the latents' self-attention is plain attention."""
    torch.manual_seed(0)
    attention = RotarySelfAttention(8, 2, 4).eval()
    rot = RotaryTimeEmbedding(4, 2, 1e-4, 2.0627)
    x = torch.randn(3, 5, 8)
    turned = attention(x, rot(torch.full((3, 5), 0.05)))
    assert torch.allclose(turned, attention(x, None), atol=1e-6)


def test_rotary_cross_attention_turns_by_the_time_difference():
    """Latents at 0.05 reading tokens at 0: not the identity (a fixed relative rotation), and
    equal to shifting both times by the same amount."""
    torch.manual_seed(0)
    attention = RotaryCrossAttention(8, 2, 4).eval()
    rot = RotaryTimeEmbedding(4, 4, 1e-4, 2.0627)
    q, ctx = torch.randn(2, 3, 8), torch.randn(2, 6, 8)

    def at(tq, tk):
        return attention(q, ctx, rot(torch.full((2, 3), tq)), rot(torch.full((2, 6), tk)))

    assert (at(0.05, 0.0) - attention(q, ctx, None, None)).abs().max() > 1e-2
    # float32 angles reach t * 2π / t_min ≈ 3e4 rad here, hence the tolerance
    assert torch.allclose(at(0.05, 0.0), at(0.55, 0.5), atol=1e-3)
    assert torch.allclose(attention(q, ctx, rot(torch.full((2, 3), 0.05)), None), at(0.05, 0.0))


def test_hidden_electrodes_do_not_reach_the_latents():
    torch.manual_seed(0)
    enc = NeuroBridgeEncoder(TINY).eval()
    values = torch.randn(2, 12)
    keep = torch.ones(2, 12, dtype=torch.bool)
    keep[:, :4] = False
    changed = values.clone()
    changed[:, :4] = 100.0
    assert torch.allclose(enc(values, keep), enc(changed, keep), atol=1e-6)
    assert not torch.allclose(enc(values), enc(changed), atol=1e-3)


def test_electrode_mask_ratio_and_floor():
    torch.manual_seed(0)
    masked = electrode_mask(torch.Size([64, 1024]), 0.25, 0.5, torch.device("cpu"))
    assert masked.float().mean().item() == pytest.approx(0.25, abs=0.01)
    heavy = electrode_mask(torch.Size([8, 100]), 0.9, 0.5, torch.device("cpu"))
    assert ((~heavy).sum(1) >= 50).all()  # the seed's min_keep_ratio gives electrodes back


def test_augment_drops_then_adds_noise():
    torch.manual_seed(0)
    values = torch.ones(4, 1000)
    out, keep = augment(values, 0.15, 0.0)
    assert (1 - keep.float().mean()).item() == pytest.approx(0.15, abs=0.02)
    assert torch.equal(out, keep.float())
    out, keep = augment(values, 0.0, 0.1)
    assert keep is None and (out - values).std().item() == pytest.approx(0.1, abs=0.01)


def test_infonce_on_hand_checkable_inputs():
    """Orthonormal pairs at temperature 1: every row's softmax gives the match e/(e+1), so each
    direction is log(1 + 1/e); the symmetric loss is their mean."""
    a = torch.eye(2)
    expected = math.log(1 + math.exp(-1))
    assert clip_loss(a, a, 1.0).item() == pytest.approx(expected, rel=1e-6)
    b = F.normalize(torch.tensor([[1.0, 1.0], [0.0, 1.0]]), dim=-1)
    logits = a @ b.T / 0.5
    by_hand = -(logits.log_softmax(1).diagonal().mean() + logits.log_softmax(0).diagonal().mean())
    assert clip_loss(a, b, 0.5).item() == pytest.approx(by_hand.item() / 2, rel=1e-6)


def test_adapter_loss_parts():
    """Tokens whose mean is the input and that are pairwise orthogonal unit vectors: no
    preservation loss, no diversity, no norm penalty."""
    clip = torch.eye(4)[:2] * 3
    tokens = torch.stack([torch.eye(4), torch.eye(4)[[1, 0, 2, 3]]])  # mean ∝ e0+e1+e2+e3
    L = dict(adapter_preservation=1.0, adapter_diversity=0.1, adapter_contrastive=0.5)
    L.update(adapter_temp=0.1, adapter_norm=0.01)
    loss, parts = adapter_loss(tokens, clip, L)
    assert parts["cos_sim"].item() == pytest.approx(0.5)  # (e0+..+e3)/2 · e0
    assert parts["diversity"].item() == pytest.approx(0.0)
    assert parts["norm_reg"].item() == pytest.approx(0.0)
    expected = 0.5 + 0.5 * parts["contrastive"].item()
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_seed_state_dict_loads_by_name():
    """A state dict in the seed's layout (torch_brain keeps each vocabulary in it) loads into
    this head's models; a vocabulary out of row order is refused."""
    torch.manual_seed(0)
    model = AlignmentModel(TINY, output_dim=5)
    seed_style = OrderedDict(
        (k, v.clone()) for k, v in model.state_dict().items() if k != "log_temperature"
    )
    seed_style.pop("encoder.channels")
    vocab = OrderedDict([("NA", 0)] + [(f"monkeyF_ch{i:04d}", i + 1) for i in range(12)])
    seed_style["encoder.unit_emb.vocab"] = vocab
    fresh = AlignmentModel(TINY, output_dim=5)
    missing, unexpected = fresh.load_state_dict(from_seed_state_dict(seed_style), strict=False)
    assert sorted(missing) == ["encoder.channels", "log_temperature"] and not unexpected
    x = torch.randn(2, 12)
    assert torch.allclose(fresh.eval()(x)["embedding"], model.eval()(x)["embedding"])
    vocab.move_to_end("NA")
    with pytest.raises(ValueError, match="NA then the electrodes"):
        from_seed_state_dict(seed_style)
