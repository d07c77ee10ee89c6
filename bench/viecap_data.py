"""ViECap data benchmark at the seed's scale (566,747 captions x 512 fp16, synthetic rows).

What is measured
    1. Step time, caption features from the featstore entry vs the same rows in RAM. One ViECap
       step (``ViECapModel`` with ViECap's mapping network at width ``--width`` in front of a
       random GPT-2 of that width, the head's noise injection and ``masked_lm_loss``, AdamW),
       batch 80, token batches prebuilt once (tokenization is the same in both arms). Only the
       feature source differs: ``entry.gather(rows)`` (as ``ViECap.make_batch``) vs ``ram[rows]``.
       Rounds alternate the order of the two arms over the same batches; reported: median step
       time per arm and the median of the per-round paired ratios (store / RAM). A small model
       makes the read a larger share of the step (the stricter test); the seed's GPT-2 step is
       ~100x longer.
    2. The seed's loading (``pickle.load`` of ``[[entities, caption, tensor(512, fp16)], ...]``,
       the layout of ``coco_texts_features_ViT-B32.pickle``) vs opening the entry and indexing
       its ids (``open_entry`` + ``positions`` of every caption id), each in a fresh child
       process: wall time and peak RSS (``VmHWM``).

How to run
    python bench/viecap_data.py                      # ~5 min on 2 cores; data in bench/out/
    python bench/viecap_data.py --only 2 --clean
"""

from __future__ import annotations

import argparse
import json
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import env_info, finish, warm_page_cache  # noqa: E402

N_CAPTIONS, DIM, BATCH = 566_747, 512, 80
WORDS = ["dog", "cat", "man", "bus", "tree", "kite", "boat", "car", "bench", "horse"]


def write_entry(data_dir: Path, n: int) -> Path:
    from featstore.store import read_manifest
    from featstore.writer import EntryWriter

    path = data_dir / "store" / "captions"
    manifest = read_manifest(path)
    if manifest is not None and manifest.get("complete") and manifest["n_rows"] == n:
        return path
    writer = EntryWriter.create(
        path,
        {"key": "captions", "teacher": "synthetic", "output": "embeds"},
        np.arange(n, dtype=np.int64) * 3 + 7,  # caption ids are not row numbers
        row_shape=(DIM,),
        dtype="float16",
        ragged=False,
        chunk_rows=32768,
    )
    for unit in range(writer.n_chunks):
        start, stop = writer.unit_rows(unit)
        rng = np.random.default_rng([0, unit])
        writer.commit(unit, rng.standard_normal((stop - start, DIM), dtype=np.float32).astype("f2"))
    writer.finalize({"bench": "viecap_data"})
    return path


def write_pickle(data_dir: Path, n: int) -> Path:
    import torch

    path = data_dir / "coco_texts_features_ViT-B32.pickle"
    if path.is_file():
        return path
    rng = np.random.default_rng(1)
    feats = torch.from_numpy(rng.standard_normal((n, DIM), dtype=np.float32).astype("f2"))
    items = []
    for i in range(n):
        a, b = WORDS[i % 10], WORDS[(i * 7 + 3) % 10]
        items.append([[a, b], f"A {a} next to a {b} in the park.", feats[i].clone()])
    with open(path, "wb") as fh:
        pickle.dump(items, fh)
    return path


CHILD = {
    "pickle": """
import pickle, sys, time
import torch
t = time.perf_counter()
with open(sys.argv[1], "rb") as fh:
    data = pickle.load(fh)
feats = [d[2] for d in data]
print(time.perf_counter() - t, len(feats))
""",
    "entry": """
import sys, time
import featstore
t = time.perf_counter()
entry = featstore.open_entry(sys.argv[1])
rows = entry.positions(entry.ids)
print(time.perf_counter() - t, len(rows))
""",
}


def child(kind: str, path: Path) -> dict:
    code = CHILD[kind] + "\nprint(open('/proc/self/status').read())"
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr)
    first, *rest = out.stdout.splitlines()
    hwm = next(int(ln.split()[1]) for ln in rest if ln.startswith("VmHWM"))
    return {"seconds": float(first.split()[0]), "peak_rss_mib": hwm / 1024}


def step_time(entry_path: Path, rounds: int, steps: int, width: int) -> dict:
    import torch

    import featstore
    from heads.losses.sequence import masked_lm_loss
    from heads.zoo.viecap.batching import SequenceLayout
    from heads.zoo.viecap.head import noise_injection
    from heads.zoo.viecap.model import MappingNetwork, ViECapModel, load_language_model

    entry = featstore.open_entry(str(entry_path))
    ram = entry.gather(np.arange(len(entry)))  # the same rows, in RAM
    torch.manual_seed(0)
    lm = load_language_model("gpt2", "random", vocab_size=1000, layers=2, width=width, heads=4)
    model = ViECapModel(lm, MappingNetwork(DIM, width, num_layers=2, num_heads=4), "soft_first")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    rng = np.random.default_rng(0)
    layout = SequenceLayout(10, 20)
    tokens = layout.build(
        [rng.integers(1, 1000, 7).tolist() for _ in range(BATCH)],
        [rng.integers(1, 1000, rng.integers(8, 20)).tolist() for _ in range(BATCH)],
    )
    batches = [rng.integers(0, len(entry), BATCH) for _ in range(rounds * steps)]

    def step(features: np.ndarray) -> None:
        x = noise_injection(torch.from_numpy(features).float(), 0.016)
        logits = model(x, tokens["tokens"], tokens["prompt_lengths"], tokens["attention_mask"])
        masked_lm_loss(logits, tokens["labels"], tokens["loss_mask"]).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    arms = {"store": lambda rows: entry.gather(rows), "ram": lambda rows: ram[rows]}
    for rows in batches[:3]:
        step(arms["store"](rows))  # warm-up (chunk checks, allocator)
    times: dict[str, list[float]] = {"store": [], "ram": []}
    for r in range(rounds):
        chunk = batches[r * steps : (r + 1) * steps]
        for name in ("store", "ram") if r % 2 == 0 else ("ram", "store"):
            t = time.perf_counter()
            for rows in chunk:
                step(arms[name](rows))
            times[name].append((time.perf_counter() - t) / steps)
    ratios = [s / m for s, m in zip(times["store"], times["ram"], strict=True)]
    fetch, sample = {}, [batches[i % len(batches)] for i in range(500)]
    for name, get in arms.items():  # the feature fetch alone, 500 batches
        t = time.perf_counter()
        for rows in sample:
            get(rows)
        fetch[f"fetch_us_{name}"] = 1e6 * (time.perf_counter() - t) / len(sample)
    return {
        **fetch,
        "step_ms_store": 1e3 * float(np.median(times["store"])),
        "step_ms_ram": 1e3 * float(np.median(times["ram"])),
        "ratio_store_over_ram": float(np.median(ratios)),
        "rounds": rounds,
        "steps_per_round": steps,
        "width": width,
        "batch": BATCH,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path(__file__).parent / "out")
    ap.add_argument("--n", type=int, default=N_CAPTIONS)
    ap.add_argument("--only", default="1,2")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--clean", action="store_true")
    args = ap.parse_args()
    data_dir = args.workdir / "viecap_data"
    entry = write_entry(data_dir, args.n)
    warm_page_cache([entry])
    result: dict = {"n_captions": args.n, "env": env_info()}
    with open("/proc/loadavg") as fh:
        result["load_before"] = fh.read().split()[:3]
    if "1" in args.only:
        result["step"] = step_time(entry, args.rounds, args.steps, args.width)
        print(json.dumps(result["step"], indent=1), flush=True)
    if "2" in args.only:
        pkl = write_pickle(data_dir, args.n)
        warm_page_cache([pkl])
        result["load"] = {
            "pickle": {**child("pickle", pkl), "file_mib": pkl.stat().st_size / 2**20},
            "entry": child("entry", entry),
        }
        print(json.dumps(result["load"], indent=1), flush=True)
    with open("/proc/loadavg") as fh:
        result["load_after"] = fh.read().split()[:3]
    finish(result, args.workdir, "viecap_data", data_dir, args.clean)


if __name__ == "__main__":
    main()
