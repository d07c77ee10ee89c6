"""The vlm head end to end on labelled-synthetic data in minimind-v's layouts (an image folder,
chat JSONL, a vitb16-patch-tiny entry, an offline tokenizer and a tiny Llama LLM saved as a
transformers directory): the model at seed size, the splice, both stages, checkpoints, resume,
export, chat, evaluation and the bad inputs the issue lists."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from typer.testing import CliRunner

from featstore_cli.heads_app import app, mount_head_commands
from heads import config as config_mod
from heads import get_head, recipe
from heads.checkpoint import LAST, read_weights, weights_file
from heads.errors import ConfigError
from heads.head import Progress
from heads.runs import load_trained
from heads.train import build_model, optimizer_groups, train
from heads.zoo.vlm import synthetic as syn
from heads.zoo.vlm.demo import DemoSize, prepare, run_demo
from heads.zoo.vlm.generation import generate
from heads.zoo.vlm.model import (
    LLM_PRESETS,
    VisionProj,
    from_minimind_v_names,
    llm_config,
    load_minimind_v_checkpoint,
    to_minimind_v_names,
)
from heads.zoo.vlm.runtime import ImageEncoder, export, load_export, load_run

runner = CliRunner()
TINY = DemoSize(n_train=16, n_val=5, pairs=2, hidden=32, layers=1, batch_size=4)


def quiet(*_):
    pass


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """16 training + 4 held-out images, stage one run, the tiny LLM at ``llm-init``."""
    root = tmp_path_factory.mktemp("vlm")
    prepared = prepare(root, TINY, log=quiet)
    overrides = prepared["overrides"]
    overrides["data"]["train"] = str(prepared["files"]["pretrain"])
    overrides["model"] = {"llm": str(root / "llm-init")}
    overrides["train"].update(epochs=1, lr=1e-2, min_lr=1e-3, log_every=1, tensorboard=False)
    overrides["eval"] = {"batch_size": 4, "max_new_tokens": 6}
    return root, prepared["files"], overrides


def make_cfg(overrides, recipe_name="default", **changes):
    cfg = config_mod.merge(recipe(get_head("vlm"), recipe_name), overrides)
    return config_mod.merge(cfg, changes)


def changed(overrides, section, **values):
    """``overrides`` with ``section``'s keys set (a copy)."""
    out = json.loads(json.dumps(overrides))
    out.setdefault(section, {}).update(values)
    return out


def quiet_train(cfg, run_dir, **kw):
    head = get_head("vlm")(cfg)
    return train(head, cfg, run_dir, progress=False, log=quiet, **kw)


@pytest.fixture(scope="module")
def stages(data, tmp_path_factory):
    """Stage 1 (projector only) and stage 2 (sft recipe, --init-from stage 1), one epoch each."""
    root, files, overrides = data
    runs = tmp_path_factory.mktemp("runs")
    quiet_train(make_cfg(overrides), runs / "s1")
    sft = make_cfg(
        overrides,
        "sft",
        data={"train": str(files["sft"])},
        train={"init_from": str(runs / "s1"), "lr": 1e-2, "min_lr": 1e-3, "batch_size": 4},
    )
    quiet_train(sft, runs / "s2")
    return runs / "s1", runs / "s2"


def first_batch(head, n=4):
    return head.train_dataset().__getitems__(list(range(n)))


# -- the model ---------------------------------------------------------------------------------
def test_minimind_at_seed_size_matches_the_reference_counts():
    """MiniMind2-Small as LlamaForCausalLM: 25,829,888 parameters (tied embeddings), minimind-v's
    VisionProj 768 -> 512 with bias: 393,728; the layer names of minimind's own model."""
    from transformers import LlamaForCausalLM

    config = llm_config("minimind2-small")
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (512, 8, 8)
    assert (config.num_key_value_heads, config.intermediate_size, config.vocab_size) == (
        2,
        1408,
        6400,
    )
    assert config.rope_parameters["rope_theta"] == 1e6 and config.rms_norm_eps == 1e-5
    with torch.device("meta"):
        llm = LlamaForCausalLM(config)
        proj = VisionProj(768, 512)
    assert sum(p.numel() for p in llm.parameters()) == 25_829_888
    assert sum(p.numel() for p in proj.parameters()) == 393_728
    assert llm.lm_head.weight is llm.model.embed_tokens.weight
    names = set(llm.state_dict())
    for name in ("layers.7.self_attn.k_proj", "layers.0.mlp.gate_proj", "norm", "embed_tokens"):
        assert f"model.{name}.weight" in names
    assert llm.model.layers[0].self_attn.k_proj.weight.shape == (128, 512)  # 2 KV heads x 64
    assert set(proj.state_dict()) == {"vision_proj.0.weight", "vision_proj.0.bias"}
    with torch.device("meta"):
        big = LlamaForCausalLM(llm_config("minimind2"))  # MiniMind2, "104M"
    assert sum(p.numel() for p in big.parameters()) == 104_030_976
    assert LLM_PRESETS["minimind2"].config["intermediate_size"] == 2048


def test_stage_recipes_by_their_names():
    """vlm-pretrain is the default recipe (also `-r pretrain`); vlm-sft is `-r sft`."""
    head = get_head("vlm")
    assert recipe(head, "pretrain") == recipe(head)
    assert recipe(head)["model"]["train_llm"] is False
    assert recipe(head, "sft")["model"]["train_llm"] is True


def test_splice_positions_several_images_and_length(data):
    root, files, overrides = data
    head = get_head("vlm")(make_cfg(overrides, data={"train": str(files["sft"])}))
    model = build_model(head, 0).eval()
    pair = next(i for i, s in enumerate(head.train_samples) if len(s.images) == 2)
    batch = head.train_dataset().__getitems__([0, pair])
    ids, starts, patches = batch["input_ids"], batch["image_starts"], batch["patches"].float()
    assert starts[:, 0].tolist() == [0, 1, 1] and len(patches) == 3
    embeds = model.embed(ids, patches, starts)
    assert embeds.shape == (*ids.shape, TINY.hidden)  # sequence length unchanged
    text = model.llm.get_input_embeddings()(ids)
    projected = model.vision_proj(patches)
    placed = torch.zeros(ids.shape, dtype=torch.bool)
    for k, (row, start) in enumerate(starts.tolist()):
        assert (ids[row, start : start + 196] == head.encoder.image_token_id).all()
        assert torch.equal(embeds[row, start : start + 196], projected[k])
        placed[row, start : start + 196] = True
    assert torch.equal(embeds[~placed], text[~placed])
    assert starts[2, 1] == starts[1, 1] + 197  # "<image>\n<image>": a newline between the runs
    # causal: logits before the first image do not depend on it, logits after do
    with torch.no_grad():
        a = model(ids, patches, starts)
        b = model(ids, patches + 1.0, starts)
    first = int(starts[1, 1])
    assert torch.equal(a[1, :first], b[1, :first])
    assert not torch.allclose(a[1, first + 196 :], b[1, first + 196 :])


def test_stage_one_gradient_reaches_only_the_projector(data):
    root, files, overrides = data
    cfg = make_cfg(overrides)
    head = get_head("vlm")(cfg)
    model = build_model(head, 0)
    groups, _ = optimizer_groups(head, model, config_mod.TrainConfig.from_dict(cfg["train"]))
    trained = {id(p) for g in groups for p in g["params"]}
    assert trained == {id(p) for p in model.vision_proj.parameters()}
    loss, _ = head.loss(model, first_batch(head), Progress(0, 0, 1, 1, 1))
    loss.backward()
    assert all(p.grad is None for p in model.llm.parameters())
    assert all(
        p.grad is not None and p.grad.abs().sum() > 0 for p in model.vision_proj.parameters()
    )


def test_loss_equals_minimind_v_fixed_length_formulation(data):
    """Padding to the batch instead of to max_seq_len changes nothing: minimind-v's
    X = ids[:-1], Y = ids[1:] on max_seq_len-padded rows, (CE * mask[1:]).sum() / mask.sum()."""
    root, files, overrides = data
    head = get_head("vlm")(make_cfg(overrides, data={"train": str(files["sft"])}))
    model = build_model(head, 0).eval()
    batch = first_batch(head)
    with torch.no_grad():
        ours = head.loss(model, batch, Progress(0, 0, 1, 1, 1))[0]
        length = head.encoder.max_length
        ids = F.pad(batch["input_ids"], (0, length - batch["input_ids"].shape[1]))
        mask = F.pad(batch["targets"], (0, length - batch["targets"].shape[1])).float()
        x, y = ids[:, :-1], ids[:, 1:]
        logits = model(x, batch["patches"], batch["image_starts"])
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="none")
        theirs = (ce.view_as(y) * mask[:, 1:]).sum() / mask[:, 1:].sum()
    assert float(ours) == pytest.approx(float(theirs), rel=1e-5)


def test_batched_generation_equals_one_at_a_time(stages, data):
    loaded = load_run(stages[1], device="cpu")
    enc = loaded.encoder
    prompts = [
        enc.prompt(["<image>\nWhat shape is this?"]),
        enc.prompt(["Say something."]),
        enc.prompt(["<image>\n<image>\nWhat are the two shapes?"]),
    ]
    patches = torch.randn(3, 196, 32).half()
    one = [
        generate(loaded.model, enc, [prompts[0]], patches[:1], max_new_tokens=6)[0],
        generate(loaded.model, enc, [prompts[1]], None, max_new_tokens=6)[0],
        generate(loaded.model, enc, [prompts[2]], patches[1:], max_new_tokens=6)[0],
    ]
    assert generate(loaded.model, enc, prompts, patches, max_new_tokens=6) == one
    pieces = []
    streamed = generate(loaded.model, enc, prompts[:1], patches[:1], 6, write=pieces.append)
    assert "".join(pieces) == streamed[0] == one[0]


def test_original_parameter_names_round_trip(stages, tmp_path):
    state = read_weights(weights_file(stages[1]))
    original = to_minimind_v_names(state)
    assert "model.layers.0.self_attn.q_proj.weight" in original
    assert "vision_proj.vision_proj.0.weight" in original
    original["vision_encoder.vision_model.embeddings.patch_embedding.weight"] = torch.zeros(1)
    back = from_minimind_v_names(original)
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)
    # a minimind-v checkpoint file (half precision, its names) loads into the model
    torch.save({k: v.half() for k, v in original.items()}, tmp_path / "sft_vlm_32.pth")
    loaded = load_minimind_v_checkpoint(tmp_path / "sft_vlm_32.pth")
    model = load_run(stages[1], device="cpu").model
    model.load_state_dict(loaded)
    assert torch.equal(
        model.state_dict()["vision_proj.vision_proj.0.bias"],
        state["vision_proj.vision_proj.0.bias"].half().float(),
    )


# -- training, checkpoints, resume ---------------------------------------------------------------
def test_checkpoints_hold_only_trainable_weights_and_never_the_vision_tower(stages):
    s1, s2 = stages
    stage1 = read_weights(weights_file(s1))
    assert set(stage1) == {"vision_proj.vision_proj.0.weight", "vision_proj.vision_proj.0.bias"}
    assert set(torch.load(s1 / LAST, weights_only=False)["model"]) == set(stage1)
    stage2 = read_weights(weights_file(s2))
    assert "llm.model.layers.0.mlp.up_proj.weight" in stage2 and set(stage1) < set(stage2)
    assert not [k for k in stage2 if "vision_model" in k or "vision_encoder" in k]
    assert torch.equal(stage2["llm.lm_head.weight"], stage2["llm.model.embed_tokens.weight"])


def test_stage_two_starts_from_stage_one_and_the_llm_from_its_directory(stages, data, tmp_path):
    """A stage-2 run whose steps cannot move a weight (lr 1e-30, no decay: at most ~1e-29, which
    shows only on entries that start at 0, as the padding row) ends where it started: stage 1's
    trained projector (not a fresh one) and model.llm's weights."""
    from transformers import AutoModelForCausalLM

    s1, s2 = stages
    root, files, overrides = data
    still = {"init_from": str(s1), "lr": 1e-30, "min_lr": 0.0, "weight_decay": 0.0}
    cfg = make_cfg(overrides, "sft", data={"train": str(files["sft"])}, train=still)
    quiet_train(cfg, tmp_path / "s2")
    start = read_weights(weights_file(tmp_path / "s2"))
    projector = read_weights(weights_file(s1))
    fresh = build_model(get_head("vlm")(cfg), cfg["train"]["seed"]).state_dict()
    assert set(projector) == {k for k in start if k.startswith("vision_proj.")}

    def same(a, b):
        return (a - b).abs().max().item() <= 1e-25

    for name, value in projector.items():
        assert same(start[name], value), name
        assert not same(fresh[name], value), name  # stage 1 moved it
    llm = AutoModelForCausalLM.from_pretrained(root / "llm-init").state_dict()
    assert {f"llm.{k}" for k in llm} == set(start) - set(projector)
    for name, value in llm.items():
        assert same(start[f"llm.{name}"], value), name
    head, model, _ = load_trained("vlm", s1)
    init = load_run(s1, device="cpu")  # rebuilt without reading the chat data
    for name, value in model.state_dict().items():
        assert torch.equal(value, init.model.state_dict()[name]), name
    log = (s2 / "config.json").read_text()
    assert json.loads(log)["train"]["init_from"] == str(s1)


def test_resume_continues_exactly_and_learning_shows(data, tmp_path):
    root, files, overrides = data
    schedule = {"epochs": 3, "lr": 1e-2, "min_lr": 1e-3, "batch_size": 4}
    cfg = make_cfg(overrides, "sft", data={"train": str(files["sft"])}, train=schedule)
    quiet_train(cfg, tmp_path / "straight")
    quiet_train(cfg, tmp_path / "cut", stop_after_epoch=1)
    quiet_train(cfg, tmp_path / "cut", resume=True)
    a = read_weights(weights_file(tmp_path / "straight"))
    b = read_weights(weights_file(tmp_path / "cut"))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    evals = [
        json.loads(line)["val_loss"]
        for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
        if '"eval": true' in line
    ]
    assert len(evals) == 3 and evals[-1] < evals[0]


# -- export, chat, evaluation --------------------------------------------------------------------
def test_export_and_reload_round_trip(stages, tmp_path):
    from transformers import AutoModelForCausalLM

    run = load_run(stages[1], device="cpu")
    out = export(run, tmp_path / "exported")
    config = json.loads((out / "config.json").read_text())
    assert config["vlm"]["vision"]["identity"]["teacher"] == "vitb16-patch-tiny"
    assert config["vlm"]["image_tokens"] == 196 and config["vlm"]["vision_hidden_size"] == 32
    names = set(load_file(str(out / "model.safetensors")))
    assert {"model.norm.weight", "vision_proj.vision_proj.0.bias"} <= names
    back = load_export(out, device="cpu")
    enc = back.encoder.prompt(["<image>\nWhat shape is this?"])
    ids = torch.from_numpy(enc.ids)[None]
    starts = torch.tensor([[0, enc.image_starts[0]]])
    patches = torch.randn(1, 196, 32)
    with torch.no_grad():
        assert torch.equal(run.model(ids, patches, starts), back.model(ids, patches, starts))
        llm_only = AutoModelForCausalLM.from_pretrained(out)  # plain transformers: the LLM alone
        assert torch.equal(llm_only(ids).logits, run.model.llm(ids).logits)
    with pytest.raises(Exception, match="not empty"):
        export(run, out)


def test_chat_reads_cached_patches_or_computes_them_with_the_same_teacher(stages, data, tmp_path):
    root, files, overrides = data
    held_out = json.loads(files["val"].read_text().splitlines()[0])
    image = root / "images" / held_out["image"]
    loaded = load_run(stages[1], device="cpu")
    cached, how = ImageEncoder(loaded)(image)
    assert how.startswith("cached (entry")
    copy = tmp_path / "elsewhere.jpg"
    copy.write_bytes(image.read_bytes())
    computed, how = ImageEncoder(loaded)(copy)
    assert how == "computed (vitb16-patch-tiny)"
    assert computed.dtype == cached.dtype == torch.float16
    torch.testing.assert_close(computed.float(), cached.float(), atol=2e-3, rtol=1e-3)
    mount_head_commands()
    args = ["chat", "vlm", str(stages[1]), "--image", str(copy), "What shape is this?"]
    result = runner.invoke(app, [*args, "--temperature", "0", "--max-new-tokens", "5"])
    assert result.exit_code == 0, result.output
    assert "patch tokens computed (vitb16-patch-tiny)" in result.output
    sampled = runner.invoke(app, [*args, "--seed", "3", "--max-new-tokens", "5"])
    assert (
        sampled.exit_code == 0
        and sampled.output
        == runner.invoke(app, [*args, "--seed", "3", "--max-new-tokens", "5"]).output
    )
    two_tags = runner.invoke(app, [*args[:5], "<image> <image> which?"])
    assert two_tags.exit_code == 1 and "2 <image> tags but 1 --image files" in two_tags.output
    out = tmp_path / "exp"
    assert runner.invoke(app, ["export", "vlm", str(stages[1]), str(out)]).exit_code == 0
    from_export = runner.invoke(app, ["chat", "vlm", str(out), "-i", str(image), "Hi?"])
    assert from_export.exit_code == 0 and "computed (vitb16-patch-tiny)" in from_export.output


def test_eval_reports_loss_answers_and_a_figure(stages):
    result = runner.invoke(app, ["eval", "vlm", str(stages[1])])
    assert result.exit_code == 0, result.output
    assert "held-out loss" in result.output and "short answers (15)" in result.output
    report = json.loads((stages[1] / "eval.json").read_text())
    assert report["val_ppl"] == pytest.approx(np.exp(report["val_loss"]))
    assert set(report["by_question"]) == {
        "What shape is this?",
        "What colour is the shape?",
        "What colour is the background?",
    }
    assert (stages[1] / "plots" / "answers.png").stat().st_size > 1000
    answers = [json.loads(x) for x in (stages[1] / "answers.jsonl").read_text().splitlines()]
    assert report["exact_match"] == pytest.approx(np.mean([a["exact"] for a in answers]))


def test_the_demo_answers_held_out_colours_above_chance(tmp_path):
    """The demo's whole pipeline (data, stage one, the text LLM, stage 1, stage 2, eval) at a
    reduced size: 120 training and 24 held-out images, 10 SFT epochs at batch 8 (~30 s on one
    thread). Checked with seeds 0, 1, 2: colour exact match 50%, 81%, 94% (chance 1 in 6)."""
    size = DemoSize(
        n_train=120, n_val=24, pairs=0, text_epochs=2, stage1_epochs=1, stage2_epochs=10,
        batch_size=8, seed=0,
    )  # fmt: skip
    report = run_demo(tmp_path, progress=False, log=quiet, size=size)
    by_question = report.metrics["by_question"]
    colours = [by_question[f"What colour is the {part}?"] for part in ("shape", "background")]
    assert [c["answers"] for c in colours] == [24, 24]
    chance = 1 / 6
    assert all(c["exact_match"] > chance for c in colours)
    assert np.mean([c["exact_match"] for c in colours]) > 2 * chance


# -- bad inputs ------------------------------------------------------------------------------------
def cli_train(overrides, run_dir, *extra):
    sets = []
    for section, values in overrides.items():
        sets += [x for k, v in values.items() for x in ("--set", f"{section}.{k}={json.dumps(v)}")]
    return runner.invoke(app, ["train", "vlm", "--run-dir", str(run_dir), "-q", *sets, *extra])


def test_a_sample_whose_placeholder_count_does_not_match(data, tmp_path):
    root, files, overrides = data
    bad = tmp_path / "bad.jsonl"
    turns = syn.turn("<image>\n<image>\nWhat?", "A cat.")
    record = {"conversations": turns, "image": "img_0000.jpg"}
    bad.write_text(json.dumps(record) + "\n")
    result = cli_train(changed(overrides, "data", train=str(bad)), tmp_path / "r")
    assert result.exit_code == 1
    assert f"{bad} line 1: 2 <image> tags but 1 images (img_0000.jpg)" in result.output
    assert not (tmp_path / "r").exists()


def test_images_missing_from_the_entry(data, tmp_path):
    root, files, overrides = data
    bad = tmp_path / "more.jsonl"
    lines = [
        {"conversations": syn.turn("<image>\nWhat?", "x"), "image": name}
        for name in ("img_0000.jpg", "nope/a.jpg", "nope/b.jpg")
    ]
    bad.write_text("".join(json.dumps(x) + "\n" for x in lines))
    result = cli_train(changed(overrides, "data", train=str(bad)), tmp_path / "r")
    key = overrides["data"]["patches"]
    assert result.exit_code == 1 and not (tmp_path / "r").exists()
    assert "2 of 3 images named in" in result.output
    assert f"(entry {key}, teacher vitb16-patch-tiny" in result.output
    assert "first: ['nope/a.jpg', 'nope/b.jpg']" in result.output


def test_an_llm_whose_hidden_size_does_not_fit_the_projector(data, stages, tmp_path):
    root, files, overrides = data
    tokenizer = get_head("vlm")(make_cfg(overrides)).tokenizer
    other = syn.write_tiny_llm(tmp_path / "wide", tokenizer, hidden=48, layers=1)
    wide = changed(overrides, "model", llm=str(other))
    result = cli_train(wide, tmp_path / "r", "--init-from", str(stages[0]))
    assert result.exit_code == 1 and not (tmp_path / "r").exists()
    assert "its projector maps 32 -> 32, but here the patch tokens are 32 wide and" in result.output
    assert "has hidden size 48" in result.output


def test_other_bad_config(data, tmp_path):
    root, files, overrides = data
    for (section, key, value), message in [
        (("data", "patches", ""), "data.patches is not set"),
        (("data", "patches", "nokey"), "data.patches = 'nokey': no entry 'nokey' in the store"),
        (("data", "train", ""), "data.train is not set"),
        (("model", "llm", str(tmp_path / "none")), "cannot load the tokenizer"),
        (("data", "image_token", "ab"), "the placeholder must be one token"),
        (("model", "llm_weights", "fresh"), "model.llm_weights='fresh'"),
    ]:
        change = {key: value}
        result = cli_train(changed(overrides, section, **change), tmp_path / "r")
        assert result.exit_code == 1 and message in result.output, (change, result.output)
        assert not (tmp_path / "r").exists()
    with pytest.raises(ConfigError, match="cannot load the LLM"):
        from heads.zoo.vlm.model import load_llm

        load_llm("minimind2-small", "pretrained")  # no hub here: one clear error
