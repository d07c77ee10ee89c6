"""brain2text training-step benchmark: cached ragged audio targets vs the alternatives.

What is measured (``--only 1,2`` picks sections)
    1. Step time with the ragged audio targets served from the featstore entry vs the same
       targets in RAM: same model, same batches, the head's own loss (CTC + alignment) and AdamW.
       Neural features come lazily from the synthetic t15 HDF5 files in both arms (as the head
       reads them); only the audio source differs:
         store: ``entry.gather_padded(entry rows of the batch's trial ids)`` (``Trials``),
         RAM:   the same frames held as a list of numpy arrays, padded per batch.
       The entry has ``[T_i, 1280]`` fp16 frames, T_i uniform in [50, 250] (2-10 s at 25 Hz),
       written with ``EntryWriter`` (random values: only the read path matters here). Rounds
       alternate the arms (A,B / B,A); reported: median round step time per arm and store/RAM as
       the median of per-round (paired) ratios. Goal: <= 1.10.
    2. The seed's way vs cached, per 100 steps. Seed's way: each step speaks the batch's
       sentences with the teacher (``qwen-audio-tiny``: MMS-TTS -> Whisper features -> Qwen2-Audio
       encoder, random weights) and pads the frames, then takes the same step. Cached: stage one
       (``featstore.extract``) ran the same teacher once (timed, a one-time cost) and steps read
       the frames from the entry. Then an ESTIMATE, not a measurement, for the real models:
       Qwen2-Audio encoder FLOPs per sentence (``torch.utils.flop_counter`` on the meta device,
       the real config, one 30 s window) against a seed-size baseline step (analytic GRU + day
       layer FLOPs, forward + backward = 3x forward), at equal FLOP/s; MMS-TTS runs on the CPU in
       the seed and is not counted (it only makes the seed's way slower).

How to run
    python bench/brain2text_step.py                     # both sections
    python bench/brain2text_step.py --only 1 --rounds 8
    Data goes to ``--workdir``/brain2text_data (default ``bench/out/``); results are printed as
    markdown tables and written to ``<workdir>/brain2text_step.json``. The load average is
    recorded with every figure (the VM is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import featstore  # noqa: F401  (applies featstore's import fix-ups first)
from featstore import Store, open_entry
from featstore.extract import extract
from featstore.sources import open_source
from featstore.teachers import create_teacher
from featstore.writer import EntryWriter
from heads import config as config_mod
from heads.head import Progress
from heads.registry import get_head, recipe
from heads.zoo.brain2text.data import Trials
from heads.zoo.brain2text.synthetic import SESSIONS, write_dataset

sys.path.insert(0, str(Path(__file__).parent))
from _common import env_info, finish  # noqa: E402

GOAL = 1.10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", type=Path, default=Path(__file__).parent / "out")
    p.add_argument("--only", default="1,2")
    p.add_argument("--trials", type=int, default=96, help="train trials per session (4 sessions)")
    p.add_argument("--channels", type=int, default=512)
    p.add_argument("--units", type=int, default=256, help="GRU units (seed: 768)")
    p.add_argument("--layers", type=int, default=2, help="GRU layers (seed: 5)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps-per-round", type=int, default=3)
    p.add_argument("--seed-steps", type=int, default=4, help="section 2: steps per way per round")
    p.add_argument("--seed-rounds", type=int, default=2)
    p.add_argument("--clean", action="store_true")
    return p.parse_args(argv)


def load() -> float:
    return round(os.getloadavg()[0], 2)


def table(header: list[str], rows: list[list[Any]]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    for r in rows:
        print("| " + " | ".join(str(x) for x in r) + " |")


class RamFrames:
    """The entry's frames as a list of arrays in RAM, with the entry's batch interface."""

    def __init__(self, entry) -> None:
        self.entry = entry
        self.items = [entry[i] for i in range(len(entry))]

    def positions(self, ids):
        return self.entry.positions(ids)

    def gather_padded(self, rows):
        items = [self.items[int(r)] for r in rows]
        lengths = np.array([len(x) for x in items], dtype=np.int64)
        out = np.zeros((len(items), int(lengths.max()), items[0].shape[1]), dtype=items[0].dtype)
        for j, x in enumerate(items):
            out[j, : len(x)] = x
        return out, lengths


def dataset(args: argparse.Namespace, data_dir: Path) -> Path:
    root = data_dir / "hdf5_data_final"
    stamp = data_dir / "dataset.json"
    params = {"trials": args.trials, "channels": args.channels}
    if not (stamp.is_file() and json.loads(stamp.read_text()) == params):
        write_dataset(root, SESSIONS, {"train": args.trials, "val": 4}, args.channels, seed=1)
        stamp.write_text(json.dumps(params))
    return root


def random_audio_entry(root: Path, store: Store, width: int = 1280) -> str:
    """A ragged ``frames`` entry over every labelled trial, random fp16 frames (ids as the
    qwen-audio teacher keys them)."""
    ids = open_source(root).ids
    key = f"bench-b2t-random-{len(ids)}-{width}"
    path = store.root / key
    if (path / "zarr.json").is_file():
        try:
            return open_entry(key, store).key
        except Exception:  # noqa: BLE001 - an incomplete leftover: rewrite it
            pass
    rng = np.random.default_rng(0)
    lengths = rng.integers(50, 251, len(ids))
    manifest = {"key": key, "teacher": "qwen-audio", "output": "frames",
                "key_inputs": {"family": "qwen-audio", "bench": "random frames"}}  # fmt: skip
    writer = EntryWriter.create(path, manifest, np.asarray(ids, dtype=object), (width,),
                                "float16", ragged=True, chunk_rows=64)  # fmt: skip
    for unit in range(writer.n_chunks):
        start, stop = writer.unit_rows(unit)
        writer.commit(unit, [rng.standard_normal((int(n), width)).astype(np.float16)
                             for n in lengths[start:stop]])  # fmt: skip
    writer.finalize({"bench": "brain2text_step"})
    return key


def make_head(args, root: Path, store: Store, key: str, batch: int):
    cfg = config_mod.merge(recipe(get_head("brain2text")), {
        "data": {"root": str(root), "store": str(store.root), "audio": key},
        "model": {"n_input_features": args.channels, "n_units": args.units,
                  "n_layers": args.layers},
        "train": {"batch_size": batch, "num_workers": 0},
    })  # fmt: skip
    head = get_head("brain2text")(cfg)
    torch.manual_seed(0)
    model = head.build_model()
    groups = head.param_groups(model)
    opt = torch.optim.AdamW([{"params": g["params"]} for g in groups], lr=1e-3, eps=0.1)
    return head, model, opt


def step(head, model, opt, batch) -> None:
    loss, _ = head.loss(model, batch, Progress(0, 0, 1, 1, 1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
    opt.step()
    opt.zero_grad(set_to_none=True)


# -- section 1 ----------------------------------------------------------------------------------
def section1(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    print("\n## 1. Step time: ragged audio targets from the store vs in RAM\n", flush=True)
    root = dataset(args, data_dir)
    store = Store(data_dir / "store")
    key = random_audio_entry(root, store)
    head, model, opt = make_head(args, root, store, key, args.batch)
    entry = head.audio
    arms = {"store": head.train_set, "ram": Trials(head.train_table, RamFrames(entry))}
    n = args.rounds * args.steps_per_round + 2
    plan = head.batch_plan(0, np.random.default_rng(0), args.batch, len(head.train_set))
    plan = (plan * (n // len(plan) + 1))[:n]
    a = arms["store"].__getitems__(plan[0])
    b = arms["ram"].__getitems__(plan[0])
    assert torch.equal(a["audio"], b["audio"]), "store and RAM frames differ"
    for arm in arms.values():  # warm-up: allocator, AdamW state, page cache
        step(head, model, opt, arm.__getitems__(plan[-1]))
    res = {arm: {"step_s": [], "fetch_s": []} for arm in arms}
    load0 = load()
    for r in range(args.rounds):
        part = plan[r * args.steps_per_round : (r + 1) * args.steps_per_round]
        for arm in ("store", "ram") if r % 2 == 0 else ("ram", "store"):
            fetch = 0.0
            t0 = time.perf_counter()
            for rows in part:
                t1 = time.perf_counter()
                frames = arms[arm].audio.gather_padded(arms[arm].audio_rows[rows])
                fetch += time.perf_counter() - t1
                del frames
                step(head, model, opt, arms[arm].__getitems__(rows))
            # the step reads the frames itself; the separate timed read is left out
            res[arm]["step_s"].append((time.perf_counter() - t0 - fetch) / len(part))
            res[arm]["fetch_s"].append(fetch / len(part))
    ratios = [s / r for s, r in zip(res["store"]["step_s"], res["ram"]["step_s"], strict=True)]
    out = {
        "batch": args.batch, "units": args.units, "layers": args.layers,
        "channels": args.channels, "entry_rows": len(entry),
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "median_step_s": {k: statistics.median(v["step_s"]) for k, v in res.items()},
        "median_fetch_ms": {k: 1000 * statistics.median(v["fetch_s"]) for k, v in res.items()},
        "ratio_paired_median": statistics.median(ratios),
        "ratio_min_max": [min(ratios), max(ratios)], "rounds": res,
        "loadavg": [load0, load()], "goal": GOAL,
    }  # fmt: skip
    out["goal_met"] = out["ratio_paired_median"] <= GOAL
    print(f"{len(entry)} trials, frames [T in 50-250, 1280] fp16; batch {args.batch}, GRU "
          f"{args.units} x {args.layers}, {args.channels} channels, {out['params_m']:.1f} M "
          f"params, CTC + alignment, AdamW; load average {out['loadavg']}\n")  # fmt: skip
    table(["audio source", "step s (median round)", "frames fetch ms (median)", "store/RAM"], [
        ["featstore `entry.gather_padded(rows)`", f"{out['median_step_s']['store']:.3f}",
         f"{out['median_fetch_ms']['store']:.2f}",
         f"**{out['ratio_paired_median']:.3f}** ({min(ratios):.2f}-{max(ratios):.2f})"],
        ["list of arrays in RAM, padded", f"{out['median_step_s']['ram']:.3f}",
         f"{out['median_fetch_ms']['ram']:.2f}", "1"],
    ])  # fmt: skip
    print(
        f"\nsummary: store/RAM step time {out['ratio_paired_median']:.3f} (goal <= {GOAL}: "
        f"{'met' if out['goal_met'] else 'MISSED'})",
        flush=True,
    )
    return out


# -- section 2 ----------------------------------------------------------------------------------
def encoder_flops_per_sentence() -> float:
    """Forward FLOPs of the real Qwen2-Audio encoder on one [1, 128, 3000] window (meta)."""
    from torch.utils.flop_counter import FlopCounterMode
    from transformers.models.qwen2_audio.configuration_qwen2_audio import (
        Qwen2AudioEncoderConfig,
    )
    from transformers.models.qwen2_audio.modeling_qwen2_audio import Qwen2AudioEncoder

    from featstore.teachers.qwen_audio import REAL_ENCODER

    with torch.device("meta"):
        encoder = Qwen2AudioEncoder(Qwen2AudioEncoderConfig(**REAL_ENCODER))
        x = torch.empty(1, 128, 3000)
        with FlopCounterMode(display=False) as counter:
            encoder(input_features=x)
    return float(counter.get_total_flops())


def real_size_tts_seconds(sentences: list[str]) -> dict[str, float]:
    """CPU seconds per sentence of an MMS-TTS-size VITS (``VitsConfig()`` defaults are
    facebook/mms-tts-eng's architecture; random weights: no hub here), fp32, as the seed runs it."""
    from transformers import VitsConfig, VitsModel, VitsTokenizer

    from featstore.teachers.qwen_audio import CHAR_VOCAB, bundled_char_vocab

    torch.manual_seed(0)
    model = VitsModel(VitsConfig(vocab_size=len(CHAR_VOCAB))).eval()
    tok = VitsTokenizer(str(bundled_char_vocab() / "vocab.json"), add_blank=True, phonemize=False)
    wall, cpu, audio = 0.0, 0.0, 0.0
    for text in sentences:
        ids = tok(text.lower().strip("."), return_tensors="pt")["input_ids"]
        t0, c0 = time.perf_counter(), time.process_time()
        with torch.no_grad():
            out = model(input_ids=ids)
        wall += time.perf_counter() - t0
        cpu += time.process_time() - c0
        audio += float(out.sequence_lengths[0]) / model.config.sampling_rate
    n = len(sentences)
    return {"params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "wall_s_per_sentence": wall / n, "cpu_s_per_sentence": cpu / n,
            "audio_s_per_sentence": audio / n}  # fmt: skip


def baseline_step_flops(batch: int = 64, t: int = 544, days_dim: int = 512) -> float:
    """Forward + backward (3x forward) FLOPs of a seed-size baseline step: day layer, GRU
    (gates 3H x (I + H) per step and layer), output layer."""
    p = (t - 14) // 4 + 1
    h, i0 = 768, 14 * days_dim
    gru = 2 * 3 * h * (i0 + h) + 4 * 2 * 3 * h * (h + h)
    forward = batch * (t * 2 * days_dim * days_dim + p * (gru + 2 * h * 41))
    return 3.0 * forward


def section2(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    print("\n## 2. The seed's way (TTS + audio encoder every batch) vs cached, per 100 steps\n",
          flush=True)  # fmt: skip
    root = dataset(args, data_dir)
    store = Store(data_dir / "store-tiny")
    teacher = create_teacher("qwen-audio-tiny", weights="random")
    t0 = time.perf_counter()
    result = extract(teacher, open_source(root), store, outputs=["frames"], batch_size=32,
                     progress=False, log=lambda *_: None)  # fmt: skip
    stage_one_s = time.perf_counter() - t0
    head, model, opt = make_head(args, root, store, result.entries[0].key, args.batch)
    dataset_ = head.train_set
    reader = dataset_.reader

    def seed_batch(rows):
        batch = Trials(head.train_table, None, labels=True).__getitems__(rows)
        items = [teacher.preprocessor(reader.transcription(r)) for r in rows]
        with torch.no_grad():
            frames = teacher.forward(items, ["frames"])["frames"]
        lengths = torch.tensor([len(f) for f in frames])
        padded = torch.zeros(len(frames), int(lengths.max()), frames[0].shape[1])
        for j, f in enumerate(frames):
            padded[j, : len(f)] = f.float()
        batch["audio"], batch["audio_lengths"] = padded.half(), lengths
        return batch

    ways = {"seed": seed_batch, "cached": dataset_.__getitems__}
    plan = head.batch_plan(0, np.random.default_rng(1), args.batch, len(dataset_))
    k = args.seed_steps
    plan = (plan * (2 * k * args.seed_rounds // len(plan) + 2))[: 2 * k * args.seed_rounds + 1]
    step(head, model, opt, dataset_.__getitems__(plan[-1]))  # warm-up
    times = {w: [] for w in ways}
    load0 = load()
    for r in range(args.seed_rounds):
        for w in ("seed", "cached") if r % 2 == 0 else ("cached", "seed"):
            part = plan[(2 * r + (w == "cached")) * k : (2 * r + (w == "cached") + 1) * k]
            t0 = time.perf_counter()
            for rows in part:
                step(head, model, opt, ways[w](rows))
            times[w].append((time.perf_counter() - t0) / len(part))
    per100 = {w: 100 * statistics.median(v) for w, v in times.items()}
    ratio = statistics.median(s / c for s, c in zip(times["seed"], times["cached"], strict=True))
    enc = encoder_flops_per_sentence()
    step_flops = baseline_step_flops()
    teacher_flops = 64 * enc
    estimate = (teacher_flops + step_flops) / step_flops
    tts = real_size_tts_seconds([reader.transcription(r) for r in plan[0][:4]])
    out = {
        "stage_one_s": stage_one_s, "stage_one_items": len(head.audio),
        "per_100_steps_s": per100, "ratio_seed_vs_cached": ratio,
        "rounds": times, "batch": args.batch, "loadavg": [load0, load()],
        "estimate": {"encoder_tflop_per_sentence": enc / 1e12,
                     "teacher_tflop_per_batch_64": teacher_flops / 1e12,
                     "baseline_step_tflop_batch_64": step_flops / 1e12,
                     "ratio_seed_vs_cached": estimate, "mms_tts_size_cpu": tts},
    }  # fmt: skip
    print(f"qwen-audio-tiny, batch {args.batch}, GRU {args.units} x {args.layers}; stage one "
          f"(once): {stage_one_s:.1f} s for {out['stage_one_items']} sentences; load average "
          f"{out['loadavg']}\n")  # fmt: skip
    table(["way", "s per 100 steps (median round)", "seed/cached"], [
        ["seed: TTS + encoder on every batch", f"{per100['seed']:.1f}", f"**{ratio:.2f}**"],
        ["cached: featstore entry", f"{per100['cached']:.1f}", "1"],
    ])  # fmt: skip
    print(
        f"\nestimate for the real models (equal FLOP/s, TTS not counted): Qwen2-Audio encoder "
        f"{enc / 1e12:.2f} TFLOP per sentence (30 s window) -> {teacher_flops / 1e12:.0f} "
        f"TFLOP per batch of 64; seed-size baseline step {step_flops / 1e12:.2f} TFLOP "
        f"(fwd+bwd) -> the seed's way ~{estimate:.0f}x the cached step",
        flush=True,
    )
    print(f"MMS-TTS-size VITS ({tts['params_m']:.1f} M params, random weights) on this CPU: "
          f"{tts['cpu_s_per_sentence']:.2f} s CPU ({tts['wall_s_per_sentence']:.2f} s wall) per "
          f"sentence of {tts['audio_s_per_sentence']:.1f} s audio -> "
          f"{64 * tts['cpu_s_per_sentence']:.0f} CPU-s per batch of 64", flush=True)  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    data_dir = args.workdir / "brain2text_data"
    data_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    out_file = args.workdir / "brain2text_step.json"
    result = json.loads(out_file.read_text()) if out_file.is_file() else {}
    result["env"] = env_info(torch=torch.__version__, threads=str(torch.get_num_threads()))
    only = {s.strip() for s in args.only.split(",")}
    if "1" in only:
        result["section1"] = section1(args, data_dir)
    if "2" in only:
        result["section2"] = section2(args, data_dir)
    return finish(result, args.workdir, "brain2text_step", data_dir, args.clean)


if __name__ == "__main__":
    main()
