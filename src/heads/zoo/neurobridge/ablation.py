"""Region ablation (the seed's Phase 3b) and SD-1.5 conditioning export, as library functions.

``run_ablation`` trains and evaluates one run per region (``all``, ``IT``, ``V4``, ``V1`` by
default) with the same recipe and overrides, under one folder; a region whose run already has
its ``eval.json`` is reused, an unfinished one is resumed, so an interrupted ablation continues.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ... import runs
from ...errors import ConfigError, RunDirError
from .evaluation import embed_mua, test_mua
from .plots import plot_ablation

COLUMNS = (
    "Region",
    "Electrodes",
    "Best Val Top-5",
    "Test N→I Top-1",
    "Test N→I Top-5",
    "Test N→I Top-10",
)


def run_ablation(
    regions: list[str],
    out_dir: Path,
    recipe: str = "default",
    config_files: list[Path] = (),
    overrides: list[str] = (),
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Train + evaluate one alignment run per region; returns one row per region and writes
    ``ablation.json``, ``ablation.md`` and ``ablation.png`` into ``out_dir``."""
    if not regions:
        raise ConfigError(
            "no region to train: give --region once per run, e.g. --region all --region IT."
        )
    out_dir = Path(out_dir)
    rows = []
    for region in regions:
        run_dir = out_dir / region.replace(",", "+")
        if not (run_dir / "eval.json").is_file():
            sets = [*overrides, f"data.region={json.dumps(region)}"]
            if runs.is_run(run_dir):
                plan = runs.plan_resume("neurobridge", run_dir)
            else:
                plan = runs.plan_training("neurobridge", recipe, config_files, sets, run_dir)
            if plan.cfg["model"]["kind"] != "align":
                raise ConfigError("the region ablation trains alignment runs (model.kind=align).")
            log(f"\n== region {region}: {run_dir}")
            runs.run_training(plan, progress=progress, log=log)
            runs.evaluate_run("neurobridge", run_dir)
        rows.append(_row(region, run_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "ablation.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out_dir / "ablation.md").write_text("\n".join(format_table(rows)) + "\n")
    plot_ablation(rows, out_dir / "ablation.png")
    return rows


def _row(region: str, run_dir: Path) -> dict[str, Any]:
    from ...tracking import read_metrics

    metrics = json.loads((run_dir / "eval.json").read_text())
    val = [r["val_top5"] for r in read_metrics(run_dir) if r.get("eval") and "val_top5" in r]
    return {
        "region": region,
        "electrodes": int(sum(metrics["electrodes"].values())),
        "best_val_top5": max(val) if val else float("nan"),
        **{k: metrics[k] for k in ("n2i_top1", "n2i_top5", "n2i_top10") if k in metrics},
        "run": str(run_dir),
    }


def format_table(rows: list[dict[str, Any]]) -> list[str]:
    """The seed's region table (Markdown)."""

    def pct(value: Any) -> str:
        return "—" if value is None or np.isnan(value) else f"{value:.1%}"

    out = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = [r["region"], str(r["electrodes"]), pct(r["best_val_top5"])]
        cells += [pct(r.get(f"n2i_top{k}")) for k in (1, 5, 10)]
        out.append("| " + " | ".join(cells) + " |")
    return out


@torch.no_grad()
def export_conditioning(align_run: Path, adapter_run: Path, out: Path) -> dict[str, Any]:
    """SD-1.5 prompt conditioning ``[test images, 77, 768]`` for the test MUA: the alignment
    run's neural CLIP embeddings through the adapter run. Writes ``out`` (safetensors:
    ``conditioning``, ``neural_embeddings``) and ``out`` with ``.json`` (the THINGS ids)."""
    from safetensors.torch import save_file

    head, model, _ = runs.load_trained("neurobridge", align_run)
    adapter_head, adapter, _ = runs.load_trained("neurobridge", adapter_run)
    if head.kind != "align" or adapter_head.kind != "adapter":
        raise RunDirError(
            f"give an alignment run then an adapter run ({align_run} is {head.kind!r}, "
            f"{adapter_run} is {adapter_head.kind!r})."
        )
    neural = embed_mua(model, test_mua(head), head.cfg["eval"]["batch_size"])
    want = adapter.clip_proj.in_features
    if neural.shape[1] != want:
        raise RunDirError(
            f"the alignment run gives {neural.shape[1]}-d embeddings but the adapter takes {want}."
        )
    device = next(adapter.parameters()).device
    conditioning = adapter(neural.to(device)).float().cpu()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        {"conditioning": conditioning.contiguous(), "neural_embeddings": neural.contiguous()},
        str(out),
    )
    ids = out.with_suffix(".json")
    ids.write_text(json.dumps({"ids": head.test_ids}, indent=1) + "\n")
    return {"conditioning": list(conditioning.shape), "files": [out, ids]}
