"""The stage-two framework through a second head defined only in the tests (a linear probe):
recipes, training, resume, evaluation, accumulation, step-based runs, early stopping, best
weights, --init-from, frozen groups, run-directory safety and the CLI."""

from __future__ import annotations

import io
import json

import pytest
import torch
from typer.testing import CliRunner

from featstore_cli.heads_app import app, mount_head_commands
from heads import (
    ConfigError,
    Head,
    RunDirError,
    get_head,
    recipe,
    register_command,
    register_head,
    runs,
)
from heads import checkpoint as ckpt
from heads.errors import HeadsError
from heads.registry import recipe_names
from heads.tracking import ProgressDisplay, read_metrics

runner = CliRunner()


def quiet(*_):
    pass


def plan(probe, tmp_path, *sets, name="run", **kw):
    return runs.plan_training(
        "probe", config_files=[], overrides=[*probe.overrides, *sets], run_dir=tmp_path / name, **kw
    )


def train(p, **kw):
    return runs.run_training(p, progress=False, log=quiet, **kw)


def weights(run_dir, which="last"):
    return ckpt.read_weights(ckpt.weights_file(run_dir, which))


def equal(a, b, atol=0.0):
    return set(a) == set(b) and all(torch.allclose(a[k], b[k], atol=atol, rtol=0) for k in a)


def test_three_key_recipe_trains_resumes_and_evaluates(probe, tmp_path):
    cfg = recipe(get_head("probe"))
    assert cfg["train"]["lr"] == 0.05 and cfg["train"]["epochs"] == 1  # the loop's default
    assert recipe_names(get_head("probe")) == ["default", "long"]
    straight = train(plan(probe, tmp_path, "train.epochs=4", name="straight"))
    p = plan(probe, tmp_path, "train.epochs=4", name="cut")
    train(p, stop_after_epoch=2)
    assert [r["epoch"] for r in read_metrics(p.run_dir) if "train_loss" in r] == [1, 2]
    resumed = train(runs.plan_resume("probe", p.run_dir))
    assert resumed == straight
    assert equal(weights(tmp_path / "straight"), weights(p.run_dir))
    steps = [r["step"] for r in read_metrics(p.run_dir) if "loss" in r]
    assert steps == sorted(set(steps))  # no step logged twice
    head, model, _ = runs.load_trained("probe", p.run_dir)
    report = head.evaluate(model, p.run_dir)
    evals = [r["val_mse"] for r in read_metrics(p.run_dir) if r.get("eval")]
    assert len(evals) == 4 and evals[-1] < 0.5 * evals[0]  # the planted signal is learned
    assert report.metrics["val_mse"] == pytest.approx(evals[-1], rel=1e-5)
    assert report.format()[-1] == f"wrote {p.run_dir / 'eval.json'}"


def test_named_recipe_and_run_dir_naming(probe, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = runs.plan_training("probe", "long", [], probe.overrides)
    assert p.cfg["train"]["epochs"] == 6 and p.run_dir.name.startswith("probe-long-")
    with pytest.raises(ConfigError, match=r"no recipe 'short' \(recipes: default, long\)"):
        runs.plan_training("probe", "short", [], probe.overrides)


def test_cli_trains_and_evaluates_a_non_retrieval_head(probe, tmp_path):
    run = tmp_path / "run"
    args = ["train", "probe", "--run-dir", str(run), "-q", "--set", "train.epochs=2"]
    result = runner.invoke(app, args + [x for o in probe.overrides for x in ("--set", o)])
    assert result.exit_code == 0, result.output
    assert f"run: {run}" in result.output and json.loads(result.output.splitlines()[-1])["step"]
    result = runner.invoke(app, ["eval", "probe", str(run)])
    assert result.exit_code == 0, result.output
    assert "val_mse:" in result.output and f"wrote {run / 'eval.json'}" in result.output
    listing = runner.invoke(app, ["list"]).output
    assert "probe" in listing and "recipes: default, long" in listing
    wrong = runner.invoke(app, ["eval", "mindeye", str(run)])
    assert wrong.exit_code == 1 and "is a 'probe' run, not 'mindeye'" in wrong.output
    no_splits = runner.invoke(app, ["eval", "probe", str(run), "--split", "test"])
    assert no_splits.exit_code == 1 and "unknown config key 'eval" in no_splits.output


def test_gradient_accumulation_equals_the_full_batch(probe, tmp_path):
    full = plan(probe, tmp_path, "train.batch_size=8", "train.epochs=2", name="full")
    accum = plan(
        probe, tmp_path, "train.batch_size=8", "train.grad_accum=2", "train.epochs=2", name="accum"
    )
    train(full)
    train(accum)
    assert equal(weights(full.run_dir), weights(accum.run_dir), atol=1e-6)
    a = [r["loss"] for r in read_metrics(full.run_dir) if "loss" in r]
    b = [r["loss"] for r in read_metrics(accum.run_dir) if "loss" in r]
    assert a == pytest.approx(b, rel=1e-5)


def test_step_based_run_resumes_mid_epoch_exactly(probe, tmp_path):
    sets = [
        "train.steps=13",
        "train.checkpoint_every_steps=4",
        "train.log_every=1",
        "train.scheduler=cosine",
        "train.warmup_steps=3",
    ]
    straight = plan(probe, tmp_path, *sets, name="straight")
    summary = train(straight)
    assert summary["step"] == 13 and summary["epochs"] == 2  # 9 steps per epoch
    killed = plan(probe, tmp_path, *sets, name="killed")
    probe.crash_at_step = 6  # dies mid-epoch; the step-4 checkpoint survives
    with pytest.raises(KeyboardInterrupt):
        train(killed)
    assert torch.load(killed.run_dir / ckpt.LAST, weights_only=False)["state"]["step"] == 4
    probe.crash_at_step = None
    train(runs.plan_resume("probe", killed.run_dir))
    assert equal(weights(straight.run_dir), weights(killed.run_dir))
    timing = ("epoch_seconds", "data_wait", "seconds")
    untimed = [[{k: v for k, v in r.items() if k not in timing} for r in read_metrics(run)]
               for run in (straight.run_dir, killed.run_dir)]  # fmt: skip
    assert untimed[0] == untimed[1]


def test_early_stopping_keeps_the_best_weights(probe, tmp_path):
    probe.scripted = [0.1, 0.5, 0.4, 0.3, 0.2, 0.9]
    p = plan(
        probe,
        tmp_path,
        "train.epochs=3",
        "train.eval_every_steps=2",
        'train.best_metric="val_score"',
        "train.patience=2",
    )
    summary = train(p)
    assert (summary["step"], summary["best"], summary["best_step"]) == (8, 0.5, 4)
    assert [r["val_score"] for r in read_metrics(p.run_dir) if r.get("eval")] == [
        0.1,
        0.5,
        0.4,
        0.3,
    ]
    assert equal(weights(p.run_dir, "best"), probe.seen_weights[1])  # the weights at step 4
    assert not equal(weights(p.run_dir, "best"), weights(p.run_dir, "last"))
    assert ckpt.weights_file(p.run_dir) == p.run_dir / ckpt.BEST_WEIGHTS  # eval picks best
    logs = []
    runs.run_training(runs.plan_resume("probe", p.run_dir), progress=False, log=logs.append)
    assert any("already finished (early stop at step 8" in line for line in logs)


def test_best_metric_lower_is_better_and_unknown_metric(probe, tmp_path):
    probe.scripted = [0.5, 0.2, 0.3]
    p = plan(
        probe, tmp_path, "train.epochs=3", 'train.best_metric="val_score"', 'train.best_mode="min"'
    )
    assert train(p)["best_step"] == 18  # epochs of 9 steps: the second evaluation
    bad = plan(probe, tmp_path, 'train.best_metric="val_acc"', name="bad")
    with pytest.raises(
        ConfigError,
        match=r"best_metric='val_acc' is not a validation metric of "
        r"'probe' \(it reports: val_score\)",
    ):
        train(bad)


def test_init_from_with_and_without_skips(probe, tmp_path):
    source = plan(probe, tmp_path, name="source")
    train(source)
    trained = weights(source.run_dir)
    head = get_head("probe")(source.cfg)
    from heads.train import build_model

    model = build_model(head, 0)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    assert ckpt.init_from(model, source.run_dir) == []
    assert equal(model.state_dict(), trained)
    model = build_model(head, 0)
    kept = ckpt.init_from(model, source.run_dir, skip=["readout.*"])
    assert kept == ["readout.bias", "readout.weight"]
    state = model.state_dict()
    assert torch.equal(state["body.weight"], trained["body.weight"])
    assert torch.equal(state["readout.weight"], fresh["readout.weight"])
    # through the CLI options: recorded in the run's config
    p = plan(probe, tmp_path, name="child", init_from=str(source.run_dir), init_skip=["readout.*"])
    assert p.cfg["train"]["init_from"] == str(source.run_dir)
    train(p)
    with pytest.raises(ConfigError, match="--init-from .*nowhere: no such run"):
        plan(probe, tmp_path, name="x", init_from=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match=r"train.init_skip \(recipe 'default'.*--init-from RUN"):
        plan(probe, tmp_path, 'train.init_skip=["readout.*"]', name="y")
    with pytest.raises(ConfigError, match=r"^--init-skip names tensors"):
        plan(probe, tmp_path, name="z", init_skip=["readout.*"])


def test_init_from_names_mismatched_and_unknown_tensors(probe, tmp_path):
    from safetensors.torch import save_file

    from heads.train import build_model

    odd = tmp_path / "odd.safetensors"
    save_file({"body.weight": torch.zeros(2, 2), "encoder.x": torch.zeros(3)}, str(odd))
    model = build_model(get_head("probe")(plan(probe, tmp_path).cfg), 0)
    with pytest.raises(
        RunDirError,
        match=r"1 tensors have other shapes \(body.weight: \[2, 2\] "
        r"there, \[16, 16\] here\) and 1 tensors are not in this "
        r"model \(encoder.x\).*--init-skip",
    ):
        ckpt.init_from(model, odd)
    ckpt.init_from(model, odd, skip=["body.*", "encoder.*"])  # nothing left to refuse


def test_frozen_groups_do_not_move_and_are_not_saved(probe, tmp_path):
    from heads.train import build_model

    probe.freeze_body = True
    p = plan(probe, tmp_path, "train.epochs=2")
    init = build_model(get_head("probe")(p.cfg), 0).state_dict()
    summary_log = []
    runs.run_training(p, progress=False, log=summary_log.append)
    assert any("(0.03 M frozen)" in line or "M frozen" in line for line in summary_log)
    saved = weights(p.run_dir)
    assert set(saved) == {"readout.weight", "readout.bias"}
    _, model, _ = runs.load_trained("probe", p.run_dir)  # body rebuilt from the seeded init
    assert torch.equal(model.state_dict()["body.weight"], init["body.weight"])
    assert not torch.equal(model.state_dict()["readout.weight"], init["readout.weight"])


def test_held_group_waits_for_its_epochs_and_lr_scale(probe, tmp_path):
    from heads.train import build_model

    probe.hold_body_epochs, probe.readout_lr_scale = 1, 0.5
    p = plan(probe, tmp_path, "train.epochs=2")
    init = build_model(get_head("probe")(p.cfg), 0).state_dict()
    train(p, stop_after_epoch=1)
    state = torch.load(p.run_dir / ckpt.LAST, weights_only=False)
    assert torch.equal(state["model"]["body.weight"], init["body.weight"])
    assert not torch.equal(state["model"]["readout.weight"], init["readout.weight"])
    assert [g["lr"] for g in state["optimizer"]["param_groups"]] == [0.05, 0.025]
    train(runs.plan_resume("probe", p.run_dir))
    assert not torch.equal(weights(p.run_dir)["body.weight"], init["body.weight"])


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("train.epochs=0", "set train.epochs >= 1"),
        ("train.epochs=-1", "set train.epochs >= 1"),
        ('train.scheduler="sideways"', "scheduler='sideways' is unknown; use constant, cosine"),
        ("train.lrr=0.1", "unknown config key 'train.lrr'; did you mean 'lr'?"),
        ('train.device="cuda:0"', "no CUDA device is available"),
        ('train.device="gpu"', "device='gpu': use auto, cpu, cuda or cuda:N"),
        ('train.precision="fp8"', "precision='fp8' is unknown; use auto, fp32, bf16, fp16"),
        ("train.patience=3", "patience needs train.best_metric"),
        ('train.batch_size="8"', "'train.batch_size' expects a int"),
        ("train.grad_accum=3", "batch_size=8 is not divisible by train.grad_accum=3"),
    ],
)
def test_bad_config_fails_before_anything_is_written(probe, tmp_path, setting, message):
    if "cuda" in setting and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    run = tmp_path / "run"
    args = ["train", "probe", "--run-dir", str(run)]
    sets = [x for o in [*probe.overrides, setting] for x in ("--set", o)]
    result = runner.invoke(app, args + sets)
    assert result.exit_code == 1 and message in result.output, result.output
    assert not run.exists()


def test_run_killed_before_its_first_checkpoint_can_resume(probe, tmp_path):
    p = plan(probe, tmp_path)
    probe.crash_at_step = 3
    with pytest.raises(KeyboardInterrupt):
        train(p)
    assert runs.is_run(p.run_dir) and not (p.run_dir / ckpt.LAST).exists()
    with pytest.raises(
        RunDirError,
        match=r"already holds a run; continue it with `heads train "
        r"probe --resume",
    ):
        plan(probe, tmp_path)
    with pytest.raises(RunDirError, match="It was stopped before the end: continue it"):
        runs.load_trained("probe", p.run_dir)
    probe.crash_at_step = None
    logs = []
    runs.run_training(runs.plan_resume("probe", p.run_dir), progress=False, log=logs.append)
    assert any("has no checkpoint yet" in line for line in logs)
    straight = plan(probe, tmp_path, name="straight")
    train(straight)
    assert equal(weights(p.run_dir), weights(straight.run_dir))
    assert len([r for r in read_metrics(p.run_dir) if "loss" in r]) == 1  # steps 1-2 dropped


def test_resume_refuses_a_changed_computation(probe, tmp_path):
    p = plan(probe, tmp_path)
    train(p)
    with pytest.raises(ConfigError, match=r"train.lr: 0.05 -> 0.1.*--init-from"):
        runs.plan_resume("probe", p.run_dir, [], ["train.lr=0.1"])
    assert runs.plan_resume("probe", p.run_dir, [], ["train.log_every=1"]).resume


def test_a_bug_in_head_code_keeps_its_traceback(probe, tmp_path, monkeypatch):
    def broken(self, model, batch, progress):
        return {}["missing"]

    monkeypatch.setattr(probe, "loss", broken)
    args = ["train", "probe", "--run-dir", str(tmp_path / "r"), "-q"]
    result = runner.invoke(app, args + [x for o in probe.overrides for x in ("--set", o)])
    assert result.exit_code != 0 and isinstance(result.exception, KeyError)
    assert "error:" not in result.output


def test_tensorboard_event_files_beside_metrics(probe, tmp_path):
    pytest.importorskip("tensorboard")
    p = plan(probe, tmp_path)
    train(p)
    events = list((p.run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    off = plan(probe, tmp_path, "train.tensorboard=false", name="off")
    train(off)
    assert not (off.run_dir / "tensorboard").exists()


def test_progress_prints_plain_lines_when_not_a_terminal():
    stream = io.StringIO()
    bar = ProgressDisplay(3, "epoch 1/2", True, stream=stream, every_seconds=0)
    for _ in range(3):
        bar.update(1, loss="0.5")
    bar.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3 and "\r" not in stream.getvalue()
    assert lines[-1].startswith("epoch 1/2: 3/3 (") and lines[-1].endswith("loss 0.5)")


def test_registry_rules_and_head_commands(probe):
    with pytest.raises(TypeError, match="decorates a heads.Head subclass"):
        register_head("x")(object)

    with pytest.raises(ValueError, match="'probe' is already registered"):

        @register_head("probe")
        class Other(Head):
            pass

    with pytest.raises(HeadsError, match="unknown head 'nope'. Known heads: .*mindeye.*probe"):
        get_head("nope")

    @register_command("hello", "probe")
    def hello(name: str) -> None:
        """Say hello (a head's own verb)."""
        print(f"hello {name}")

    @register_command("hello", "mindeye")  # another head, the same verb
    def hello_mindeye() -> None:
        print("hello from mindeye")

    with pytest.raises(ValueError, match="`heads hello probe` is already registered"):
        register_command("hello", "probe")(lambda: None)
    mount_head_commands()
    mount_head_commands()  # idempotent
    result = runner.invoke(app, ["hello", "probe", "you"])
    assert result.exit_code == 0 and "hello you" in result.output
    assert "hello from mindeye" in runner.invoke(app, ["hello", "mindeye"]).output
    assert "probe" in runner.invoke(app, ["hello", "--help"]).output


def test_torch_compile_switch_trains_the_same(probe, tmp_path):
    eager = plan(probe, tmp_path, "train.epochs=1", name="eager")
    compiled = plan(probe, tmp_path, "train.epochs=1", "train.compile=true", name="compiled")
    train(eager)
    train(compiled)
    a = [r["loss"] for r in read_metrics(eager.run_dir) if "loss" in r]
    b = [r["loss"] for r in read_metrics(compiled.run_dir) if "loss" in r]
    assert a == pytest.approx(b, rel=1e-4)
    assert equal(weights(eager.run_dir), weights(compiled.run_dir), atol=1e-5)


def test_keep_epoch_weights_keeps_each_epoch_and_eval_can_pick_one(probe, tmp_path):
    run = tmp_path / "run"
    train(plan(probe, tmp_path, "train.epochs=3", "train.keep_epoch_weights=true", name="run"))
    kept = sorted(p.name for p in (run / "weights").iterdir())
    assert kept == [f"epoch-00{i}.safetensors" for i in (1, 2, 3)]
    assert equal(weights(run, "epoch-3"), weights(run, "last"))
    assert not equal(weights(run, "epoch-1"), weights(run, "last"))
    _, path = runs.evaluate_run("probe", run, weights="epoch-1")
    assert path == run / "weights" / "epoch-001.safetensors"
    with pytest.raises(RunDirError, match="kept no epoch-9 weights; kept: epoch-001, epoch-002"):
        runs.evaluate_run("probe", run, weights="epoch-9")
    train(plan(probe, tmp_path, "train.epochs=1", name="plain"))
    assert not (tmp_path / "plain" / "weights").exists()  # off by default
