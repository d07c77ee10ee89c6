"""DDP throughput on this machine: 2 ranks x 1 thread vs 1 rank x 1 thread (gloo, CPU).

What is measured
    ``torchrun --standalone --nproc-per-node N`` runs ``heads.train`` on the benchmark MLP head
    (``--dim`` → ``--hidden`` → ``--dim``), every rank with ``OMP_NUM_THREADS=1`` and a
    micro-batch of ``--batch`` rows (global batch = ``--batch`` x N: weak scaling, as when a
    user adds GPUs). Rank 0 times its steps from inside the loss (median gap after warm-up), so
    start-up, checkpoints and plots are not counted. Samples/s = global batch / step time.
    Goal: 2 ranks >= 1.7x the samples/s of 1 rank. ``--rounds`` alternate the two.

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


def launch(n: int, args: argparse.Namespace) -> dict:
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
        ]
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
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    from _common import env_info, finish

    one, two, ratios = [], [], []
    for r in range(args.rounds):
        order = (1, 2) if r % 2 == 0 else (2, 1)
        got = {n: launch(n, args)["samples_per_s"] for n in order}
        one.append(got[1])
        two.append(got[2])
        ratios.append(got[2] / got[1])
        print(f"round {r + 1}: 1 rank {got[1]:.0f}/s, 2 ranks {got[2]:.0f}/s, "
              f"x{ratios[-1]:.2f}", file=sys.stderr)  # fmt: skip
    ratio = statistics.median(ratios)
    print(f"\nMLP {args.dim}-{args.hidden}-{args.dim}, {args.batch} rows per rank per step, "
          f"gloo on CPU, 1 thread per rank, {args.rounds} rounds\n")  # fmt: skip
    print("| ranks | samples/s (median round) | speed-up (paired median) |")
    print("|---:|---:|---:|")
    print(f"| 1 | {statistics.median(one):.0f} | 1 |")
    print(f"| 2 | {statistics.median(two):.0f} | **{ratio:.2f}x** "
          f"(rounds {min(ratios):.2f}-{max(ratios):.2f}) |")  # fmt: skip
    print(f"\ngoal >= 1.7x: {'met' if ratio >= 1.7 else 'MISSED'} ({os.cpu_count()} CPUs)")
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "one": one, "two": two,
              "ratios": ratios, "ratio": ratio, "env": env_info()}  # fmt: skip
    return finish(result, args.workdir, "ddp_speedup", args.workdir, clean=False)


if __name__ == "__main__":
    main()
