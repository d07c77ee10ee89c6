"""The one-command GPU check runs its CUDA code paths on the CPU (toy sizes) and skips cleanly
without CUDA."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_it_skips_cleanly():
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("no CUDA: skipped")


def test_same_code_paths_on_cpu(tmp_path):
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [e["teacher"] for e in result["extraction"]] == [
        "bigG-tiny",
        "qwen-audio-tiny",
        "vitb16-patch-tiny",
    ]
    for e in result["extraction"]:
        # the stored rows are the direct forward's, up to fp16 rounding
        assert e["stored_vs_direct"]["mean_cosine"] > 0.9999, e
        assert e["bf16_vs_fp32"]["mean_cosine"] > 0.99, e
        assert 0 < e["forward_share"] <= 1 and e["pipeline_items_per_s"] > 0
    t = result["training"]
    assert t["step_s"] > 0 and 0 <= t["data_wait_share"] < 1
    assert result["ddp"]["ok"] and result["ddp"]["backend"] == "gloo"
    assert "| data-wait share of a step |" in done.stdout
