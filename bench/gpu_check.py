"""One-command GPU check: both stages on CUDA, parity and throughput, one table, < 10 minutes.

What it checks (``python bench/gpu_check.py`` on a machine with an NVIDIA GPU)
    1. Extraction on CUDA, for the real-size ``bigG`` (ViT-bigG-14 image tower), ``qwen-audio``
       (MMS-TTS-sized VITS + the Qwen2-Audio encoder) and ``vitb16-patch`` architectures, all with
       seeded random weights (no model hub needed) over labelled-synthetic inputs (NSD-style
       scenes; their captions for the audio teacher):
       - the featstore pipeline in bf16 and in fp32 (two stores): items/s, the share of its wall
         time spent inside the teacher's forward, peak GPU memory;
       - a bare loop over the same items in RAM (preprocess, collate, forward under bf16
         autocast, fp16 copy to the host): items/s; goal pipeline / bare >= 0.95;
       - parity: the stored bf16 rows against the bare loop's rows (the same model on the same
         device): max |diff| and mean cosine; bf16 against fp32 stored rows.
    2. Training on CUDA: MindEye2 at the seed's size (hidden 1024, 4 blocks, 15,724 voxels) on
       the bigG tokens stage one just wrote, for ``--steps`` steps of batch 8: step time, the
       share of each step spent waiting for data (goal < 2%), peak memory; bf16 against fp32
       losses over the first 20 steps; then the same head under ``torchrun --nproc-per-node 1``
       (NCCL) to prove the DDP path.
    3. One markdown table on stdout and everything as JSON (``--workdir``/gpu_check.json).

    Without CUDA it prints ``no CUDA: skipped`` and exits 0. ``--device cpu --tiny`` runs the
    same code paths on the CPU with the toy teachers and a small MindEye (the test suite does).

How to run
    python bench/gpu_check.py                        # on the GPU machine
    python bench/gpu_check.py --device cpu --tiny    # the same code, toy sizes, any machine
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

import featstore  # noqa: F401  (applies featstore's import fix-ups first)
from featstore import Store, open_entry
from featstore.demo import write_scenes
from featstore.extract import extract
from featstore.sources import open_source
from featstore.teachers import create_teacher

HERE = Path(__file__).resolve().parent
REAL = {
    "bigG": ("tokens", 512, 32, {}),
    "qwen-audio": ("frames", 24, 8, {"tts": "random"}),
    "vitb16-patch": ("patches", 512, 64, {}),
}
TINY = {
    "bigG-tiny": ("tokens", 16, 8, {}),
    "qwen-audio-tiny": ("frames", 6, 3, {}),
    "vitb16-patch-tiny": ("patches", 16, 8, {}),
}


def quiet(*_: Any) -> None:
    pass


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


class TimedForward:
    """Wraps ``teacher.forward`` and sums its wall time (synchronized: the outputs go to the
    host right after, so this adds no wait the pipeline would not have)."""

    def __init__(self, teacher: Any, device: torch.device) -> None:
        self.teacher, self.device, self.seconds = teacher, device, 0.0
        self.inner = teacher.forward

    def __enter__(self) -> TimedForward:
        def timed(batch: Any, kinds: list[str]) -> Any:
            t0 = time.perf_counter()
            out = self.inner(batch, kinds)
            sync(self.device)
            self.seconds += time.perf_counter() - t0
            return out

        self.teacher.forward = timed
        return self

    def __exit__(self, *exc: Any) -> None:
        self.teacher.forward = self.inner


def rows_of(value: Any) -> list[np.ndarray]:
    """A teacher output (a batch tensor or a list of ragged tensors) as fp16 host rows."""
    items = value if isinstance(value, list) else list(value)
    return [v.float().cpu().numpy().astype(np.float16) for v in items]


def bare_loop(teacher: Any, items: list, output: str, batch: int, device: torch.device) -> tuple:
    """Preprocess, collate, forward under bf16 autocast, fp16 to the host: ``(rows, seconds)``."""
    rows = []
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if device.type == "cuda"
        else nullcontext()
    )
    sync(device)
    t0 = time.perf_counter()
    with torch.inference_mode(), autocast:
        for i in range(0, len(items), batch):
            inputs = teacher.collate([teacher.preprocessor(x) for x in items[i : i + batch]])
            rows += rows_of(teacher.forward(inputs, [output])[output])
    sync(device)
    return rows, time.perf_counter() - t0


def compare(a: list[np.ndarray], b: list[np.ndarray]) -> dict[str, float]:
    """max |a - b| and the mean cosine between corresponding rows (flattened)."""
    diff = max(
        float(np.abs(x.astype(np.float32) - y.astype(np.float32)).max())
        for x, y in zip(a, b, strict=True)
    )
    cos = [
        float(
            np.dot(x.ravel().astype(np.float64), y.ravel().astype(np.float64))
            / (np.linalg.norm(x.astype(np.float64)) * np.linalg.norm(y.astype(np.float64)) + 1e-12)
        )
        for x, y in zip(a, b, strict=True)
    ]
    return {"max_abs_diff": diff, "mean_cosine": float(np.mean(cos))}


def check_extraction(name: str, spec: tuple, device: torch.device, work: Path) -> dict:
    output, n, batch, options = spec
    t0 = time.perf_counter()
    teacher = create_teacher(name, weights="random", **options)
    build_s = time.perf_counter() - t0
    images, captions, _ = write_scenes(work / "inputs", max(n, 16), seed=0)
    source = open_source(captions if teacher.modality == "text" else images, row_range=f"0:{n}")
    runs: dict[str, dict] = {}
    for precision in ("bf16", "fp32"):
        store = Store(work / f"store-{name}-{precision}")
        reset_peak(device)
        with TimedForward(teacher, device) as timer:
            started = time.perf_counter()
            result = extract(
                teacher,
                source,
                store,
                outputs=[output],
                batch_size=batch,
                device=str(device),
                precision=precision,
                progress=False,
                log=quiet,
            )
            wall = time.perf_counter() - started
        entry = open_entry(result.entries[0].key, store)
        runs[precision] = {
            "items_per_s": n / wall,
            "engine_items_per_s": n / max(result.seconds, 1e-9),
            "forward_share": timer.seconds / wall,
            "peak_gib": peak_gib(device),
            "rows": [np.asarray(r) for r in entry.gather(np.arange(n))],
            "key": entry.key,
        }
    items = [source.load(i) for i in range(n)]
    teacher.to(device)
    bare_loop(teacher, items[:batch], output, batch, device)  # warm-up (kernels, allocator)
    bare_rows, bare_s = bare_loop(teacher, items, output, batch, device)
    bf16, fp32 = runs["bf16"], runs["fp32"]
    return {
        "teacher": name,
        "output": output,
        "n": n,
        "batch": batch,
        "build_s": build_s,
        "params_m": sum(p.numel() for p in teacher.model.parameters()) / 1e6,
        "bare_items_per_s": n / bare_s,
        "pipeline_items_per_s": bf16["items_per_s"],
        "pipeline_vs_bare": bf16["items_per_s"] / (n / bare_s),
        "engine_vs_bare": bf16["engine_items_per_s"] / (n / bare_s),
        "fp32_items_per_s": fp32["items_per_s"],
        "forward_share": bf16["forward_share"],
        "peak_gib": bf16["peak_gib"],
        "fp32_peak_gib": fp32["peak_gib"],
        "stored_vs_direct": compare(bf16["rows"], bare_rows)
        if device.type == "cuda"
        else compare(fp32["rows"], bare_rows),
        "bf16_vs_fp32": compare(bf16["rows"], fp32["rows"]),
        "store": str(work / f"store-{name}-bf16"),
        "key": bf16["key"],
    }


def write_subject(
    work: Path, n_images: int, voxels: int, sessions: int = 3, seed: int = 0
) -> tuple[Path, Path]:
    """Random betas and a trial table in MindEye's layout: the last eighth of the images are the
    shared test images (3 repeats), the rest training trials (noise: this measures speed)."""
    rng = np.random.default_rng(seed)
    n_test = max(2, n_images // 8)
    train = rng.integers(0, n_images - n_test, size=sessions * 700)
    test = np.repeat(np.arange(n_images - n_test, n_images), 3)
    images = np.concatenate([train, test])
    table = np.full((len(images), 17), -1.0)
    table[:, 0] = images
    table[:, 2] = np.minimum(np.arange(len(images)) // 750 + 1, sessions)
    table[:, 5] = np.arange(len(images))
    table[:, 16] = np.r_[np.zeros(len(train)), np.ones(len(test))]
    np.save(work / "trials.npy", table)
    with h5py.File(work / "betas.hdf5", "w") as f:
        f.create_dataset("betas", data=rng.standard_normal((len(images), voxels), dtype=np.float32))
    return work / "trials.npy", work / "betas.hdf5"


def mindeye_overrides(
    store: str,
    key: str,
    trials: Path,
    betas: Path,
    tiny: bool,
    steps: int,
    precision: str,
    device: str,
) -> list[str]:
    return [
        f"data.store={json.dumps(store)}",
        f"data.image_targets={json.dumps(key)}",
        f"data.trials={json.dumps([str(trials)])}",
        f"data.betas={json.dumps([str(betas)])}",
        "data.num_sessions=3",
        f"model.hidden={64 if tiny else 1024}",
        f"train.steps={steps}",
        f"train.samples_per_epoch={8 * steps}",
        "train.log_every=1",
        "train.eval_every=0",
        "train.tensorboard=false",
        f"train.precision={precision}",
        f"train.device={device}",
        f"train.num_workers={0 if tiny else 4}",
    ]


def train_run(overrides: list[str], run: Path) -> list[dict]:
    from heads import runs
    from heads.tracking import read_metrics

    plan = runs.plan_training("mindeye", overrides=overrides, run_dir=run)
    runs.run_training(plan, progress=False, log=quiet)
    return read_metrics(run)


def check_training(bigg: dict, device: torch.device, work: Path, tiny: bool, steps: int) -> dict:
    entry = open_entry(bigg["key"], Store(bigg["store"]))
    trials, betas = write_subject(work, len(entry), 200 if tiny else 15724)
    dev = "cpu" if device.type == "cpu" else str(device)
    precision = "bf16" if device.type == "cuda" else "fp32"
    args = (bigg["store"], bigg["key"], trials, betas, tiny)
    reset_peak(device)
    records = train_run(mindeye_overrides(*args, steps, precision, dev), work / "run-speed")
    peak = peak_gib(device)
    timed = [r for r in records if "loss" in r]
    start = min(5, len(timed) - 2)
    step_s = (timed[-1]["seconds"] - timed[start]["seconds"]) / (
        timed[-1]["step"] - timed[start]["step"]
    )
    epoch = [r for r in records if "data_wait" in r][-1]
    short = min(20, steps)
    losses = {}
    for p in ("bf16", "fp32") if device.type == "cuda" else ("fp32",):
        got = train_run(mindeye_overrides(*args, short, p, dev), work / f"run-{p}")
        losses[p] = [r["loss"] for r in got if "loss" in r]
    agree = None
    if "bf16" in losses:
        a, b = np.array(losses["bf16"]), np.array(losses["fp32"])
        agree = float(np.max(np.abs(a - b) / np.abs(b)))
    return {
        "steps": steps,
        "step_s": step_s,
        "samples_per_s": 8 / step_s,
        "data_wait_share": epoch["data_wait"],
        "peak_gib": peak,
        "bf16_vs_fp32_max_rel_loss_diff": agree,
        "precision": precision,
        "params_m": None,
    }


def check_ddp(bigg: dict, device: torch.device, work: Path, tiny: bool) -> dict:
    """``torchrun --nproc-per-node 1 -m heads train mindeye`` (NCCL on CUDA, gloo on CPU)."""
    trials, betas = work / "trials.npy", work / "betas.hdf5"
    dev = "cpu" if device.type == "cpu" else "cuda"
    overrides = mindeye_overrides(bigg["store"], bigg["key"], trials, betas, tiny, 10, "auto", dev)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=1",
        "-m",
        "heads",
        "train",
        "mindeye",
        "--run-dir",
        str(work / "run-ddp"),
        "-q",
        *[x for o in overrides for x in ("--set", o)],
        "--set",
        "train.ddp_one_rank=true",  # one rank would otherwise train the plain module
    ]
    t0 = time.perf_counter()
    done = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "4"}
    )
    ok = done.returncode == 0 and "x 1 ranks (DDP)" in done.stdout
    return {
        "ok": ok,
        "seconds": time.perf_counter() - t0,
        "backend": "nccl" if dev == "cuda" else "gloo",
        "tail": (done.stdout + done.stderr)[-2000:] if not ok else "",
    }


def fmt(value: Any, spec: str = ".3g") -> str:
    return "—" if value is None else format(value, spec)


def row(*cells: Any) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def print_table(result: dict) -> None:
    print(f"\n## GPU check: {result['env']['device_name']} (torch {result['env']['torch']})\n")
    print(
        row(
            "teacher",
            "params (M)",
            "pipeline items/s",
            "bare items/s",
            "pipeline / bare",
            "in forward",
            "fp32 items/s",
            "peak GiB",
            "stored vs direct (max diff, cos)",
            "bf16 vs fp32 (max diff, cos)",
        )
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for e in result["extraction"]:
        sd, bf = e["stored_vs_direct"], e["bf16_vs_fp32"]
        print(
            row(
                f"{e['teacher']} `{e['output']}`",
                f"{e['params_m']:.0f}",
                f"{e['pipeline_items_per_s']:.1f}",
                f"{e['bare_items_per_s']:.1f}",
                f"**{e['pipeline_vs_bare']:.3f}**",
                f"{e['forward_share']:.1%}",
                f"{e['fp32_items_per_s']:.1f}",
                fmt(e["peak_gib"]),
                f"{sd['max_abs_diff']:.3g}, {sd['mean_cosine']:.5f}",
                f"{bf['max_abs_diff']:.3g}, {bf['mean_cosine']:.5f}",
            )
        )
    t, d = result["training"], result["ddp"]
    print("\n| MindEye (seed size) | value | goal |")
    print("|---|---:|---|")
    step = f"{t['step_s'] * 1e3:.1f} ms ({t['samples_per_s']:.0f} samples/s)"
    print(row(f"step time ({t['precision']}, batch 8)", step, ""))
    print(row("data-wait share of a step", f"**{t['data_wait_share']:.2%}**", "< 2%"))
    print(row("peak GPU memory", f"{fmt(t['peak_gib'])} GiB", ""))
    agree = fmt(t["bf16_vs_fp32_max_rel_loss_diff"])
    print(row("bf16 vs fp32 loss, first 20 steps (max relative diff)", agree, ""))
    ran = f"{'ran' if d['ok'] else 'FAILED'} in {d['seconds']:.0f} s"
    print(row(f"torchrun --nproc-per-node 1 ({d['backend']})", ran, "runs"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    p.add_argument("--tiny", action="store_true", help="toy teachers and sizes (CPU tests)")
    p.add_argument("--steps", type=int, default=None, help="MindEye steps (300; 12 with --tiny)")
    p.add_argument("--workdir", type=Path, default=HERE / "out" / "gpu_check")
    p.add_argument("--only", default="", help="teachers to check, comma-separated (default: all)")
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            "no CUDA: skipped (run `python bench/gpu_check.py` on a machine with an NVIDIA GPU; "
            "`--device cpu --tiny` runs the same code paths here)"
        )
        return 0
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    steps = args.steps or (12 if args.tiny else 300)
    args.workdir.mkdir(parents=True, exist_ok=True)
    teachers = TINY if args.tiny else REAL
    if args.only:
        teachers = {k: v for k, v in teachers.items() if k in args.only.split(",")}
    started = time.perf_counter()
    env = {
        "torch": torch.__version__,
        "device": str(device),
        "cpus": os.cpu_count(),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
        "cuda": torch.version.cuda,
        "bf16": device.type == "cuda" and torch.cuda.is_bf16_supported(),
    }
    result: dict[str, Any] = {"env": env, "extraction": []}
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    for name, spec in teachers.items():
        log(f"extraction: {name} ...")
        result["extraction"].append(check_extraction(name, spec, device, args.workdir))
    bigg = next(e for e in result["extraction"] if e["teacher"].startswith("bigG"))
    log("training: MindEye ...")
    result["training"] = check_training(bigg, device, args.workdir, args.tiny, steps)
    log("training: torchrun --nproc-per-node 1 ...")
    result["ddp"] = check_ddp(bigg, device, args.workdir, args.tiny)
    result["seconds"] = time.perf_counter() - started
    print_table(result)
    print(f"\n{result['seconds']:.0f} s in all; JSON: {args.workdir / 'gpu_check.json'}")
    (args.workdir / "gpu_check.json").write_text(json.dumps(result, indent=2, default=str))
    return 0 if result["ddp"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
