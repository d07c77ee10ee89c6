"""Training-loop overhead: the framework's step vs a bare hand-written torch loop.

What is measured
    The same MLP (``--dim`` → ``--hidden`` → ``--dim``, GELU), the same in-RAM data, the same
    batches (batch ``--batch``), AdamW, fp32 on CPU, ``torch.set_num_threads(--threads)``:

    (a) bare: ``for idx in batches: loss = mse(model(x[idx]), y[idx]); zero_grad; backward;
        step`` — nothing else;
    (b) framework: ``heads.train`` on a head holding the same tensors (DataLoader with the loop's
        batch sampler, device copy, autocast context, loss sums kept on the device, LambdaLR
        scheduler step, a step record every 10 steps, progress display off).

    Both record ``time.perf_counter()`` at every step start; a run's step time is the median gap
    after 5 warm-up steps (set-up, checkpoints and plots are not counted). ``--rounds`` rounds
    alternate (a) and (b); the ratio is the median of the per-round ratios, so drift in machine
    speed (a shared VM) hits both alike. Goal: framework / bare <= 1.05.

How to run
    python bench/loop_overhead.py                  # dim 512, hidden 2048, batch 64
    python bench/loop_overhead.py --hidden 256 --batch 16    # a smaller step: overhead shows more
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import env_info, finish
from _mlp_head import MLPHead, config, make_data, make_model, step_seconds

from heads.data.sampling import epoch_rng
from heads.train import seed_everything, train


def bare_loop(args: argparse.Namespace) -> float:
    x, y = make_data(args.n, args.dim)
    seed_everything(0)
    model = make_model(args.dim, args.hidden)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    order = epoch_rng(0, 0).permutation(args.n)
    stamps = []
    for step in range(args.steps):
        stamps.append(time.perf_counter())
        idx = torch.from_numpy(order[step * args.batch : (step + 1) * args.batch])
        loss = torch.nn.functional.mse_loss(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step_seconds(stamps)


def framework_loop(args: argparse.Namespace) -> float:
    cfg = config(args.n, args.dim, args.hidden, steps=args.steps, batch_size=args.batch)
    head = MLPHead(cfg)
    with tempfile.TemporaryDirectory() as run:
        train(head, cfg, Path(run), progress=False, log=lambda *_: None)
    return step_seconds(head.stamps)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workdir", type=Path, default=Path(__file__).parent / "out")
    args = p.parse_args(argv)
    args.n = args.batch * args.steps
    torch.set_num_threads(args.threads)
    bare, framework, ratios = [], [], []
    for r in range(args.rounds):
        first, second = (bare_loop, framework_loop) if r % 2 == 0 else (framework_loop, bare_loop)
        a = first(args)
        b = second(args)
        b_s, f_s = (a, b) if first is bare_loop else (b, a)
        bare.append(b_s)
        framework.append(f_s)
        ratios.append(f_s / b_s)
        print(f"round {r + 1}: bare {b_s * 1e3:.2f} ms, framework {f_s * 1e3:.2f} ms, "
              f"ratio {f_s / b_s:.3f}", file=sys.stderr)  # fmt: skip
    ratio = statistics.median(ratios)
    print(f"\nMLP {args.dim}-{args.hidden}-{args.dim}, batch {args.batch}, {args.steps} steps x "
          f"{args.rounds} rounds, {args.threads} torch thread(s)\n")  # fmt: skip
    print("| loop | step ms (median round) | framework / bare (paired median) |")
    print("|---|---:|---:|")
    print(f"| bare torch loop | {statistics.median(bare) * 1e3:.2f} | 1 |")
    print(f"| heads.train | {statistics.median(framework) * 1e3:.2f} | **{ratio:.3f}** "
          f"(rounds {min(ratios):.3f}-{max(ratios):.3f}) |")  # fmt: skip
    print(f"\ngoal <= 1.05: {'met' if ratio <= 1.05 else 'MISSED'}")
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "bare_s": bare,
              "framework_s": framework, "ratios": ratios, "ratio": ratio,
              "env": env_info(torch=torch.__version__)}  # fmt: skip
    return finish(result, args.workdir, "loop_overhead", args.workdir, clean=False)


if __name__ == "__main__":
    main()
