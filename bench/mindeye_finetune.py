"""MindEye2's pretrain → fine-tune flow on labelled-synthetic subjects sharing one latent.

What is measured
    ``heads.zoo.mindeye.transfer.compare``: synthetic NSD-like subjects whose betas encode the
    same latent of each image (a fixed random projection of its bigG-tiny tokens) through each
    subject's own voxel map plus noise. Pretrain MindEye on ``--pretrain`` subjects (all
    sessions), then train one new subject on ONE session twice: from scratch, and with the
    ``finetune`` recipe from the pretrained run (``--init-from``: all but the new ridge's
    weights). Reported: each run's test retrieval (N-way, N = test images).

How to run
    python bench/mindeye_finetune.py                 # 160 images, 3 + 1 subjects; minutes on CPU
    python bench/mindeye_finetune.py --noise 0.5 --sessions 8
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from heads.zoo.mindeye.transfer import compare


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=160)
    p.add_argument("--test", type=int, default=32)
    p.add_argument("--pretrain", type=int, default=3)
    p.add_argument("--sessions", type=int, default=4)
    p.add_argument("--noise", type=float, default=0.25)
    p.add_argument("--latent", type=int, default=12)
    p.add_argument("--pretrain-epochs", type=int, default=20)
    p.add_argument("--finetune-epochs", type=int, default=40)
    p.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "out" / "mindeye_finetune.json"
    )
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        r = compare(
            Path(work),
            args.images,
            args.test,
            args.pretrain,
            args.sessions,
            args.noise,
            args.latent,
            args.pretrain_epochs,
            args.finetune_epochs,
        )
    s = r["setup"]
    print(
        f"\n{s['n_pretrain']} pretraining subjects x {s['sessions']} sessions; the new subject: "
        f"1 session = {s['trials_in_one_session']} trials; {s['n_test']}-way test retrieval\n"
    )
    print("| new subject, 1 session | image retrieval | brain retrieval |")
    print("|---|---:|---:|")
    for name in ("scratch", "finetune"):
        print(f"| {name} | {r[name]['image_retrieval']:.1%} | {r[name]['brain_retrieval']:.1%} |")
    pre = ", ".join(f"{k} {v['image_retrieval']:.1%}" for k, v in r["pretrain"].items())
    print(f"\npretraining run (first subject validated, all evaluated): {pre}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(r, indent=2))
    return r


if __name__ == "__main__":
    main()
