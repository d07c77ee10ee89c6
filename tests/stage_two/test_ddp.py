"""DDP for real: `torchrun --nproc-per-node 2` with gloo on CPU against one process with the same
global batch, and a 2-rank run stopped and resumed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from heads import checkpoint as ckpt
from heads import runs
from heads.tracking import read_metrics

SCRIPT = Path(__file__).with_name("probe_head.py")
ARGS = ["--set", "train.epochs=3", "--set", "train.log_every=1", "-q"]


def torchrun(nproc: int, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        str(SCRIPT),
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def sets(probe) -> list[str]:
    return [x for o in probe.overrides for x in ("--set", o)]


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory, probe_entry):
    """One uninterrupted 2-rank run (shared by the tests below)."""
    from .probe_head import Probe  # noqa: F401  (registers the head in this process)

    run = tmp_path_factory.mktemp("ddp") / "two"
    overrides = [
        f"data.entry={json.dumps(probe_entry['entry'])}",
        f"data.store={json.dumps(probe_entry['store'])}",
        "train.batch_size=8",
    ]
    done = torchrun(
        2,
        "train",
        "probe",
        "--run-dir",
        str(run),
        *ARGS,
        *[x for o in overrides for x in ("--set", o)],
    )
    return run, done


def test_two_ranks_match_one_process_with_the_same_global_batch(probe, tmp_path, two_rank_run):
    run2, done = two_rank_run
    assert done.stdout.count("run: ") == 1  # rank 0 alone prints
    assert "x 2 ranks" in done.stdout
    assert json.loads((run2 / "run.json").read_text())["world_size"] == 2
    one = runs.plan_training(
        "probe",
        overrides=[*probe.overrides, "train.epochs=3", "train.log_every=1"],
        run_dir=tmp_path / "one",
    )
    runs.run_training(one, progress=False, log=lambda *_: None)
    a = [(r["step"], r["loss"], r["mse"]) for r in read_metrics(one.run_dir) if "loss" in r]
    b = [(r["step"], r["loss"], r["mse"]) for r in read_metrics(run2) if "loss" in r]
    assert len(a) == len(b) == 27
    assert [x[0] for x in a] == [x[0] for x in b]
    assert [v for x in a for v in x[1:]] == pytest.approx([v for x in b for v in x[1:]], rel=1e-5)
    # each rank saw half of every global batch: the logged row count is the per-rank mean
    assert {r["batch_rows"] for r in read_metrics(run2) if "loss" in r} == {4.0}
    w1 = ckpt.read_weights(one.run_dir / ckpt.FINAL_WEIGHTS)
    w2 = ckpt.read_weights(run2 / ckpt.FINAL_WEIGHTS)
    assert all(torch.allclose(w1[k], w2[k], atol=1e-6, rtol=0) for k in w1)


def test_a_two_rank_run_resumes_exactly(probe, tmp_path, two_rank_run):
    run2, _ = two_rank_run
    run = tmp_path / "cut"
    torchrun(
        2, "train", "probe", "--run-dir", str(run), *ARGS, *sets(probe), "--stop-after-epoch", "1"
    )
    assert torch.load(run / ckpt.LAST, weights_only=False)["state"]["step"] == 9
    done = torchrun(2, "train", "probe", "--resume", str(run), "-q")
    assert "resumed" in done.stdout
    w_full = ckpt.read_weights(run2 / ckpt.FINAL_WEIGHTS)
    w_cut = ckpt.read_weights(run / ckpt.FINAL_WEIGHTS)
    assert all(torch.equal(w_full[k], w_cut[k]) for k in w_full)
    assert read_metrics(run)[-1]["step"] == 27


def test_one_rank_trains_the_plain_module_unless_asked_and_both_equal_one_process(probe, tmp_path):
    one = runs.plan_training(
        "probe", overrides=[*probe.overrides, "train.epochs=3"], run_dir=tmp_path / "one"
    )
    runs.run_training(one, progress=False, log=lambda *_: None)
    w1 = ckpt.read_weights(one.run_dir / ckpt.FINAL_WEIGHTS)
    for flag, wrapped in (("false", False), ("true", True)):
        run = tmp_path / f"ddp-{flag}"
        done = torchrun(1, "train", "probe", "--run-dir", str(run), *ARGS, *sets(probe),
                        "--set", f"train.ddp_one_rank={flag}")  # fmt: skip
        assert ("x 1 ranks (DDP)" in done.stdout) == wrapped, done.stdout
        w = ckpt.read_weights(run / ckpt.FINAL_WEIGHTS)
        assert all(torch.allclose(w1[k], w[k], atol=1e-6, rtol=0) for k in w1)
