"""MindEye2 model: tiny real forwards, seed-size parameter counts on the meta device, the
original's residual wiring, optimizer groups, and a planted-signal retrieval run."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from heads import losses
from heads.zoo.mindeye.model import (
    BrainNetwork,
    MindEyeModel,
    MixerBlock,
    RidgeRegression,
    TextAlignHead,
    param_groups,
)

TOKENS, CLIP_DIM, TEXT_DIM, SUBJ1_VOXELS = 256, 1664, 768, 15724
OUT_DIM = TOKENS * CLIP_DIM  # 425984


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------- tiny real forwards


def test_ridge_per_subject_shapes():
    ridge = RidgeRegression([10, 7], hidden=6)
    assert ridge(torch.randn(3, 1, 10), 0).shape == (3, 1, 6)
    assert ridge(torch.randn(2, 1, 7), 1).shape == (2, 1, 6)
    with pytest.raises(RuntimeError):
        ridge(torch.randn(2, 1, 10), 1)  # subject 1 has 7 voxels


def test_mixer_block_layer_order():
    block = MixerBlock(5, dropout=0.15)
    assert isinstance(block[0], nn.LayerNorm) and block[0].normalized_shape == (5,)
    assert [type(m) for m in block[1]] == [nn.Linear, nn.GELU, nn.Dropout, nn.Linear]
    assert block[1][2].p == 0.15
    assert block(torch.randn(2, 3, 5)).shape == (2, 3, 5)


@pytest.mark.parametrize("seq_len", [1, 3])
@pytest.mark.parametrize("residual", ["original", "per_block"])
def test_brain_network_shapes_and_clip_proj_order(seq_len, residual):
    net = BrainNetwork(8, seq_len=seq_len, n_blocks=2, clip_tokens=3, clip_dim=5, residual=residual)
    backbone, clip_voxels = net(torch.randn(4, seq_len, 8))
    assert backbone.shape == clip_voxels.shape == (4, 3, 5)
    assert [type(m) for m in net.clip_proj] == [nn.LayerNorm, nn.GELU, nn.Linear] * 3
    assert len(net.mixer_blocks1) == len(net.mixer_blocks2) == 2
    assert net.mixer_blocks2[0][0].normalized_shape == (seq_len,)
    assert (net.backbone_linear.in_features, net.backbone_linear.out_features) == (8 * seq_len, 15)
    with pytest.raises(ValueError):
        net(torch.randn(4, seq_len, 9))


def test_text_align_head_is_mean_pool_then_mlp():
    head = TextAlignHead(token_dim=5, hidden=7, text_dim=3)
    tokens = torch.randn(2, 4, 5)
    out = head(tokens)
    assert out.shape == (2, 3)
    pooled = tokens.mean(dim=1)
    manual = head.fc2(
        F.gelu(head.fc1(F.layer_norm(pooled, (5,), head.norm.weight, head.norm.bias)))
    )
    torch.testing.assert_close(out, manual)


def test_model_concatenates_subjects_in_order():
    torch.manual_seed(0)
    model = MindEyeModel(
        [10, 12], hidden=8, n_blocks=2, clip_tokens=3, clip_dim=5, text_dim=4, text_hidden=6
    ).eval()
    a, b = torch.randn(2, 1, 10), torch.randn(3, 1, 12)
    out = model([a, b])
    assert out["backbone"].shape == out["clip_voxels"].shape == (5, 3, 5)
    assert out["text"].shape == (5, 4)
    alone = model([None, b])  # a skipped subject
    torch.testing.assert_close(out["clip_voxels"][2:], alone["clip_voxels"])
    torch.testing.assert_close(out["text"][2:], alone["text"])
    by_id = model([b], subject_ids=[1])
    torch.testing.assert_close(by_id["backbone"], alone["backbone"])
    with pytest.raises(ValueError):
        model([b, a])  # voxel counts do not match subjects 0, 1


def test_model_without_text_head():
    model = MindEyeModel([6], hidden=4, n_blocks=1, clip_tokens=2, clip_dim=3, text_dim=None)
    assert model.text_head is None
    assert model([torch.randn(2, 1, 6)])["text"] is None


def test_state_dict_keys_mirror_original_layout():
    model = MindEyeModel([6], hidden=4, n_blocks=1, clip_tokens=2, clip_dim=3, text_dim=None)
    keys = set(model.state_dict())
    expected = {
        "ridge.linears.0.weight",
        "ridge.linears.0.bias",
        "backbone.backbone_linear.weight",
        "backbone.backbone_linear.bias",
    }
    for mixer in ("mixer_blocks1", "mixer_blocks2"):
        for idx in ("0", "1.0", "1.3"):  # LayerNorm, first Linear, second Linear
            expected |= {f"backbone.{mixer}.0.{idx}.weight", f"backbone.{mixer}.0.{idx}.bias"}
    for idx in (0, 2, 3, 5, 6, 8):  # LN, Linear, LN, Linear, LN, Linear (GELUs hold nothing)
        expected |= {f"backbone.clip_proj.{idx}.weight", f"backbone.clip_proj.{idx}.bias"}
    assert keys == expected


# ---------------------------------------------------------------- the original's residual wiring


def test_original_wiring_matches_the_two_stream_recurrence():
    """x_k = b1_k(y_{k-1}) + x_{k-1};  y_k = b2_k(x_k^T)^T + y_{k-1}  (x_0 = y_0 = input)."""
    torch.manual_seed(1)
    net = BrainNetwork(6, seq_len=3, n_blocks=3, clip_tokens=2, clip_dim=4).eval()
    inp = torch.randn(2, 3, 6)
    x = y = inp
    for b1, b2 in zip(net.mixer_blocks1, net.mixer_blocks2, strict=True):
        x = b1(y) + x
        y = b2(x.transpose(1, 2)).transpose(1, 2) + y
    torch.testing.assert_close(net.mix(inp), y)

    per_block = BrainNetwork(
        6, seq_len=3, n_blocks=3, clip_tokens=2, clip_dim=4, residual="per_block"
    ).eval()
    per_block.load_state_dict(net.state_dict())
    z = inp
    for b1, b2 in zip(net.mixer_blocks1, net.mixer_blocks2, strict=True):
        z = z + b1(z)
        z = z + b2(z.transpose(1, 2)).transpose(1, 2)
    torch.testing.assert_close(per_block.mix(inp), z)


def _mixer1_grad(residual: str, seq_len: int) -> float:
    torch.manual_seed(2)
    net = BrainNetwork(6, seq_len=seq_len, n_blocks=2, clip_tokens=2, clip_dim=4, residual=residual)
    backbone, clip_voxels = net(torch.randn(3, seq_len, 6))
    (backbone.square().sum() + clip_voxels.square().sum()).backward()
    return sum(p.grad.abs().sum().item() for p in net.mixer_blocks1.parameters())


def test_original_wiring_leaves_mixer_blocks1_dead_at_seq_len_1():
    # LayerNorm(1) outputs its bias for any input, so block2 is constant and block1's output is
    # dropped: exactly zero gradient. (The published MindEye2 ran this way.)
    assert _mixer1_grad("original", seq_len=1) == 0.0
    assert _mixer1_grad("original", seq_len=2) > 0.0
    assert _mixer1_grad("per_block", seq_len=1) > 0.0


# ---------------------------------------------------------------- seed sizes on the meta device


def _mixer1(h: int) -> int:  # LN(h) + 2 Linear(h, h)
    return 2 * h + 2 * (h * h + h)


def _mixer2(s: int) -> int:
    return 2 * s + 2 * (s * s + s)


@pytest.mark.parametrize(
    ("hidden", "backbone_linear_params"),
    [(4096, 1_745_256_448), (1024, 436_633_600)],  # h*425984 + 425984, written out
)
def test_seed_size_parameter_counts_and_meta_forward(hidden, backbone_linear_params):
    with torch.device("meta"):
        model = MindEyeModel(
            [SUBJ1_VOXELS],
            hidden=hidden,
            n_blocks=4,
            clip_tokens=TOKENS,
            clip_dim=CLIP_DIM,
            text_dim=TEXT_DIM,
        )
    assert backbone_linear_params == hidden * OUT_DIM + OUT_DIM
    ridge = SUBJ1_VOXELS * hidden + hidden
    mixers = 4 * _mixer1(hidden) + 4 * _mixer2(1)
    clip_proj = 3 * (2 * CLIP_DIM + CLIP_DIM * CLIP_DIM + CLIP_DIM)
    text = 2 * CLIP_DIM + (CLIP_DIM * 2048 + 2048) + (2048 * TEXT_DIM + TEXT_DIM)
    bb = model.backbone
    assert n_params(model.ridge) == ridge
    assert n_params(bb.mixer_blocks1) == 4 * _mixer1(hidden)
    assert n_params(bb.mixer_blocks2) == 4 * _mixer2(1) == 24
    assert n_params(bb.backbone_linear) == backbone_linear_params
    assert n_params(bb.clip_proj) == clip_proj == 8_321_664
    assert n_params(model.text_head) == text == 4_986_880
    assert n_params(model) == ridge + mixers + backbone_linear_params + clip_proj + text
    assert all(p.requires_grad for p in model.parameters())

    out = model([torch.empty(2, 1, SUBJ1_VOXELS, device="meta")])
    assert out["backbone"].shape == out["clip_voxels"].shape == (2, TOKENS, CLIP_DIM)
    assert out["text"].shape == (2, TEXT_DIM)
    assert out["clip_voxels"].device.type == "meta"


def test_multi_subject_meta_ridge_counts():
    voxels = [15724, 14278, 15226, 13153, 13039, 17907, 12682, 14386]
    with torch.device("meta"):
        model = MindEyeModel(
            voxels, hidden=1024, n_blocks=4, clip_tokens=TOKENS, clip_dim=CLIP_DIM, text_dim=None
        )
    assert n_params(model.ridge) == sum(v * 1024 + 1024 for v in voxels)
    batch = [torch.empty(2, 1, v, device="meta") for v in voxels]
    assert model(batch)["clip_voxels"].shape == (16, TOKENS, CLIP_DIM)


# ---------------------------------------------------------------- optimizer groups


def test_param_groups_cover_everything_and_train_the_text_head():
    torch.manual_seed(3)
    model = MindEyeModel(
        [6], hidden=4, n_blocks=1, clip_tokens=2, clip_dim=3, text_dim=5, text_hidden=7
    )
    groups = param_groups(model, weight_decay=0.01)
    decay = {id(p) for p in groups[0]["params"]}
    no_decay = {id(p) for p in groups[1]["params"]}
    assert groups[0]["weight_decay"] == 0.01 and groups[1]["weight_decay"] == 0.0
    assert not decay & no_decay
    assert decay | no_decay == {id(p) for p in model.parameters()}
    assert all(p.ndim >= 2 for p in groups[0]["params"])
    for m in model.modules():
        if isinstance(m, nn.LayerNorm):
            assert id(m.weight) in no_decay and id(m.bias) in no_decay
        if isinstance(m, nn.Linear):
            assert id(m.weight) in decay and id(m.bias) in no_decay

    # The seed's bug: text_head never reached the optimizer. Here it is trained.
    opt = torch.optim.AdamW(groups, lr=1e-2)
    before = model.text_head.fc1.weight.detach().clone()
    out = model([torch.randn(4, 1, 6)])
    (out["text"].square().mean() + out["clip_voxels"].square().mean()).backward()
    opt.step()
    assert not torch.equal(before, model.text_head.fc1.weight)


# ---------------------------------------------------------------- planted signal


def test_planted_signal_is_retrieved_far_above_chance():
    """Voxels = fixed linear map of the target tokens + noise. BiMixCo for the first third of
    training, then SoftCLIP with the annealed temperature; held-out 100-way top-1 both ways."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    n_train, n_test, tokens, dim, n_vox = 512, 100, 4, 8, 64
    targets = torch.randn(n_train + n_test, tokens, dim, generator=g)
    mixing = torch.randn(tokens * dim, n_vox, generator=g) / (tokens * dim) ** 0.5
    voxels = targets.flatten(1) @ mixing + 0.5 * torch.randn(n_train + n_test, n_vox, generator=g)

    model = MindEyeModel(
        [n_vox], hidden=32, n_blocks=1, clip_tokens=tokens, clip_dim=dim, text_dim=None
    )
    opt = torch.optim.AdamW(param_groups(model, 1e-2), lr=3e-3)
    steps, batch = 300, 32
    mix_steps = steps // 3
    for step in range(steps):
        idx = torch.randperm(n_train, generator=g)[:batch]
        vox, tgt = voxels[idx].unsqueeze(1), F.normalize(targets[idx].flatten(1), dim=-1)
        if step < mix_steps:
            vox, perm, betas, select = losses.mixco(vox, generator=g)
        pred = F.normalize(model([vox])["clip_voxels"].flatten(1), dim=-1)
        if step < mix_steps:
            loss = losses.mixco_nce(pred, tgt, 0.006, perm=perm, betas=betas, select=select)
        else:
            frac = (step - mix_steps) / (steps - mix_steps - 1)
            loss = losses.soft_clip_loss(pred, tgt, losses.cosine_temperature(frac))
        opt.zero_grad()
        loss.backward()
        opt.step()

    model.eval()
    with torch.no_grad():
        pred = F.normalize(model([voxels[n_train:].unsqueeze(1)])["clip_voxels"].flatten(1), dim=-1)
    sim = pred @ F.normalize(targets[n_train:].flatten(1), dim=-1).T
    truth = torch.arange(n_test)
    image_to_brain = (sim.argmax(dim=0) == truth).float().mean().item()
    brain_to_image = (sim.argmax(dim=1) == truth).float().mean().item()
    chance = 1 / n_test
    assert brain_to_image > 10 * chance, brain_to_image
    assert image_to_brain > 10 * chance, image_to_brain
