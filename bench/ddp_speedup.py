"""DDP throughput on this machine: 2 ranks x 1 thread vs 1 rank x 1 thread (gloo, CPU).

What is measured
    ``torchrun --standalone --nproc-per-node N`` runs ``heads.train`` on the benchmark MLP head
    (``--dim`` → ``--hidden`` → ``--dim``), every rank with ``OMP_NUM_THREADS=1`` and a
    micro-batch of ``--batch`` rows (global batch = ``--batch`` x N: weak scaling, as when a
    user adds GPUs). Rank 0 times its steps from inside the loss (median gap after warm-up), so
    start-up, checkpoints and plots are not counted. Samples/s = global batch / step time.
    Goal: 2 ranks >= 1.7x the samples/s of 1 rank. ``--rounds`` alternate the two.

    Two references put the ratio in context, in the same rounds: the CPUs' parallel ceiling
    (two independent hand-written loops, no communication, each 1 thread: what 2 ranks could
    reach if gradients were free to average) and a hand-written DDP loop (plain
    ``DistributedDataParallel`` + AdamW, no framework): what the framework's DDP compares with.

How to run
    python bench/ddp_speedup.py
    python bench/ddp_speedup.py --hidden 4096 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def worker(args: argparse.Namespace) -> None:
    """One rank (started by torchrun): train, then rank 0 writes its step time."""
    import torch

    sys.path.insert(0, str(HERE))
    from _mlp_head import MLPHead, config, step_seconds

    from heads.train import train

    torch.set_num_threads(1)
    world = int(os.environ["WORLD_SIZE"])
    cfg = config(args.batch * world * args.steps, args.dim, args.hidden, steps=args.steps,
                 batch_size=args.batch * world)  # fmt: skip
    head = MLPHead(cfg)
    train(head, cfg, Path(args.run_dir), progress=False, log=lambda *_: None)
    if int(os.environ["RANK"]) == 0:
        seconds = step_seconds(head.stamps)
        Path(args.out).write_text(
            json.dumps(
                {"step_s": seconds, "world": world, "samples_per_s": args.batch * world / seconds}
            )
        )


def bare_worker(args: argparse.Namespace) -> None:
    """One rank of the hand-written references: DDP (``--bare ddp``) or no communication at all
    (``--bare independent``: every rank trains its own copy)."""
    import time

    import numpy as np
    import torch

    sys.path.insert(0, str(HERE))
    from _mlp_head import make_data, make_model

    torch.set_num_threads(1)
    world = int(os.environ["WORLD_SIZE"])
    model = make_model(args.dim, args.hidden)
    if args.bare == "ddp" and world > 1:
        import torch.distributed as dist

        dist.init_process_group("gloo")
        model = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, y = make_data(args.batch * args.steps, args.dim)
    stamps = []
    for step in range(args.steps):
        stamps.append(time.perf_counter())
        rows = slice(step * args.batch, (step + 1) * args.batch)
        loss = torch.nn.functional.mse_loss(model(x[rows]), y[rows])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    seconds = float(np.median(np.diff(np.asarray(stamps[5:]))))
    if int(os.environ["RANK"]) == 0:
        Path(args.out).write_text(
            json.dumps(
                {"step_s": seconds, "world": world, "samples_per_s": args.batch * world / seconds}
            )
        )


def launch(n: int, args: argparse.Namespace, bare: str = "") -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={n}",
            __file__,
            "--worker",
            "--out",
            str(out),
            "--run-dir",
            str(Path(tmp) / "run"),
            "--dim",
            str(args.dim),
            "--hidden",
            str(args.hidden),
            "--batch",
            str(args.batch),
            "--steps",
            str(args.steps),
        ] + (["--bare", bare] if bare else [])
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)  # fmt: skip
        return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> dict | None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--batch", type=int, default=64, help="rows per rank per step")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workdir", type=Path, default=HERE / "out")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--run-dir", help=argparse.SUPPRESS)
    p.add_argument("--bare", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return bare_worker(args) if args.bare else worker(args)
    from _common import env_info, finish

    runs = {  # name: (ranks, hand-written mode)
        "framework, 1 rank": (1, ""), "framework, 2 ranks (DDP)": (2, ""),
        "hand-written, 1 process": (1, "ddp"), "hand-written DDP, 2 ranks": (2, "ddp"),
        "hand-written, 2 independent processes (ceiling)": (2, "independent"),
    }  # fmt: skip
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(args.rounds):
        names = list(runs) if r % 2 == 0 else list(reversed(runs))
        for name in names:
            rates[name].append(launch(*runs[name][:1], args, bare=runs[name][1])["samples_per_s"])
        print(f"round {r + 1}: " + ", ".join(f"{n} {rates[n][-1]:.0f}/s" for n in runs),
              file=sys.stderr)  # fmt: skip

    def speedup(two: str, one: str) -> list[float]:
        return [a / b for a, b in zip(rates[two], rates[one], strict=True)]

    ratios = speedup("framework, 2 ranks (DDP)", "framework, 1 rank")
    ratio = statistics.median(ratios)
    baseline = {"framework, 2 ranks (DDP)": "framework, 1 rank"}
    for name in ("hand-written DDP, 2 ranks", "hand-written, 2 independent processes (ceiling)"):
        baseline[name] = "hand-written, 1 process"
    vs_one = {name: speedup(name, baseline[name]) if name in baseline else None for name in runs}
    print(f"\nMLP {args.dim}-{args.hidden}-{args.dim}, {args.batch} rows per rank per step, "
          f"gloo on CPU, 1 thread per rank, {args.rounds} rounds\n")  # fmt: skip
    print("| run | samples/s (median round) | vs 1 process (paired median, range) |")
    print("|---|---:|---:|")
    for name, rs in vs_one.items():
        cell = "1" if rs is None else (
            f"**{statistics.median(rs):.2f}x** ({min(rs):.2f}-{max(rs):.2f})")  # fmt: skip
        print(f"| {name} | {statistics.median(rates[name]):.0f} | {cell} |")
    print(f"\ngoal >= 1.7x: {'met' if ratio >= 1.7 else 'MISSED'} ({os.cpu_count()} CPUs)")
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "rates": rates,
              "ratios": ratios, "ratio": ratio, "env": env_info()}  # fmt: skip
    return finish(result, args.workdir, "ddp_speedup", args.workdir, clean=False)


if __name__ == "__main__":
    main()
