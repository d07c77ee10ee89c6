"""Training-step benchmark: MindEye steps against cached targets (featstore) vs the alternatives.

What is measured (three sections; ``--only 1,3`` picks some)
    1. Step time, targets from the featstore entry vs the same targets in RAM.
       One MindEye model (``heads.zoo.mindeye.model.MindEyeModel``), the recipe's own loss code
       (``MindEye.loss``, BiMixCo phase by default) and AdamW, batch ``--batch``.
       Betas come from an HDF5 file through ``heads.data.nsd.Betas`` (lazy, as the head reads
       them) in both arms. Only the target source differs:
         store: ``entry.gather(entry.positions(image_ids))`` (as ``TrainTrials`` does),
         RAM:   ``ram[image_ids]`` (a numpy array holding the same rows; ids == rows here).
       Targets are bigG-shaped ``[N, 256, 1664]`` fp16, written with ``EntryWriter``. Both arms
       see the same batches; the run is split into short rounds and in each round both arms run
       the same slice of batches, order alternating (A,B / B,A), so drift in machine speed (a
       shared VM) hits both alike. Reported: median round step time per arm, the median target
       fetch time, and store/RAM as the median of per-round (paired) ratios.
       Two model variants: ``--clip-proj none`` (default for the main run) drops MindEye2's
       per-token ``clip_proj`` (3 x Linear(1664,1664) on every one of the 256 tokens, ~100
       GFLOP per step of 8: ~4 s on 2 CPU cores), leaving ridge -> mixer -> backbone_linear, so a
       step is short and the read path is a larger share of it (the stricter test). A few
       ``--full-rounds`` then repeat the comparison with the full architecture.
    2. Peak memory while training from an entry several times larger than the memory goal
       (``--mem-rows`` x 0.81 MiB, default ~9.5 GiB). Each run is a fresh child process (so
       nothing from section 1 is in its numbers) that trains ``--mem-steps`` random batches and
       samples ``/proc/self/status`` every ``--sample-ms`` (and after every backward/step):
       ``RssAnon`` (private anonymous memory: what the process really owns), ``RssFile``
       (file pages mapped into the process, here mostly the chunk memory maps: clean page-cache
       pages that the kernel can drop and re-read) and ``VmHWM`` (kernel-tracked peak of the
       total RSS). The run is done with the entry opened as the head opens it (``verify=True``:
       every chunk's CRC32 is checked on first touch, through the map) and with
       ``verify=False``; the trajectory shows RssFile against distinct chunks touched and maps
       open (the reader keeps at most 256; also counted from ``/proc/self/maps``).
    3. The seed's way vs cached, per epoch. Seed's way: each step reads its images from an
       NSD-style HDF5 (sorted fancy index), runs the teacher's ``preprocessor`` and
       ``forward(batch, ["tokens"])`` (``bigG-tiny``, random weights), then the same MindEye step.
       Cached: stage one (``featstore.extract``) runs the same teacher over the same images
       once (timed, reported as a one-time cost), and steps read the targets from the entry.
       Targets are then ``[256, 64]``; the model is the full MindEye architecture at that width.
       Epochs alternate between the two ways; reported: median epoch seconds and paired ratio.
       Then an ESTIMATE, not a measurement: what the ratio would be with the real bigG
       (vision tower params counted from open_clip's ViT-bigG-14 config on the meta device;
       forward ~ 2 x params x 257 tokens per image) against the FLOPs of a MindEye training step
       (forward + backward counted with ``torch.utils.flop_counter`` on the meta device),
       assuming both run at the same FLOP/s.

How to run
    python bench/train_step.py                     # all three sections, ~10 min on 2 cores
    python bench/train_step.py --only 2 --mem-rows 6000 --mem-steps 100
    python bench/train_step.py --clean             # delete the generated data (~11 GiB) after

    Data goes to ``--workdir``/train_step_data (default ``bench/out/``, git-ignored) and is
    reused by later runs with the same sizes. Results are printed as markdown tables and merged
    into ``<workdir>/train_step.json`` (sections not run keep their previous results).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import shutil
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import h5py
import numpy as np
import torch
from torch import nn

import featstore.reader  # (applies featstore's import fix-ups first)
from featstore.reader import Entry
from featstore.store import read_manifest
from featstore.writer import EntryWriter
from heads.data.nsd import Betas
from heads.head import Progress, decay_groups
from heads.registry import get_head, recipe
from heads.zoo.mindeye.head import MindEye
from heads.zoo.mindeye.model import MindEyeModel

BIGG_ROW = (256, 1664)
DTYPE = "float16"
GOAL_STEP_RATIO = 1.10
MAX_OPEN = 256  # featstore.reader.RawRows' default max_open
BIGG_TOKENS = 257  # 16 x 16 patches + CLS at 224 px, patch 14


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="MindEye training steps: featstore targets vs RAM, peak memory, teacher cost.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--only", default="1,2,3", help="sections to run, e.g. 1 or 1,3")
    p.add_argument("--workdir", type=Path, default=Path(__file__).parent / "out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clean", action="store_true", help="delete the generated data at the end")
    p.add_argument("--chunk-rows", type=int, default=32, help="rows per Zarr chunk (all entries)")
    g = p.add_argument_group("model (all sections)")
    g.add_argument("--batch", type=int, default=8)
    g.add_argument("--voxels", type=int, default=2048)
    g.add_argument("--hidden", type=int, default=64)
    g.add_argument("--n-blocks", type=int, default=1)
    g.add_argument("--phase", choices=["mixco", "softclip"], default="mixco",
                   help="which loss phase of the recipe the steps run")  # fmt: skip
    g = p.add_argument_group("section 1: store vs RAM")
    g.add_argument("--rows", type=int, default=2048, help="N of the [N,256,1664] fp16 entry")
    g.add_argument("--clip-proj", choices=["none", "full"], default="none",
                   help="main run: drop MindEye2's per-token clip_proj, or keep it")  # fmt: skip
    g.add_argument("--rounds", type=int, default=20, help="interleaved rounds (main run)")
    g.add_argument("--steps-per-round", type=int, default=2, help="steps per arm per round")
    g.add_argument("--full-rounds", type=int, default=4,
                   help="extra rounds (1 step per arm), full architecture; 0 = skip")  # fmt: skip
    g = p.add_argument_group("section 2: peak memory")
    g.add_argument("--mem-rows", type=int, default=12000, help="rows of the big entry")
    g.add_argument("--mem-steps", type=int, default=100, help="training steps per run")
    g.add_argument("--mem-verify", choices=["both", "on", "off"], default="both",
                   help="open with verify=True (as the head does), False, both")  # fmt: skip
    g.add_argument("--mem-goal-gib", type=float, default=2.0,
                   help="the memory goal the store is compared with (an assumption)")  # fmt: skip
    g.add_argument("--sample-ms", type=float, default=10.0, help="/proc sampling interval")
    g = p.add_argument_group("section 3: teacher every step vs cached")
    g.add_argument("--images", type=int, default=320, help="images (= train trials) per epoch")
    g.add_argument("--epochs", type=int, default=2, help="epochs per way (alternating)")
    g.add_argument("--teacher", default="bigG-tiny")
    return p.parse_args(argv)


# -- shared helpers -----------------------------------------------------------------------------
def proc_status() -> dict[str, int]:
    """Memory fields of /proc/self/status, in bytes."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem", "VmSwap"):
                out[key] = int(rest.split()[0]) * 1024
    return out


def gib(n: float) -> float:
    return n / 2**30


def fp16_block(seed: int, unit: int, shape: tuple[int, ...]) -> np.ndarray:
    """Deterministic random finite fp16 values (|x| in [0.125, 1), random sign), fast: drawn as
    bit patterns rather than through float32 normals (the entries are GiBs)."""
    rng = np.random.default_rng([seed, unit])
    bits = rng.integers(0x3000, 0x3C00, size=shape, dtype=np.uint16)
    bits |= (bits & 1) << 15  # low mantissa bit doubles as the sign
    return bits.view(np.float16)


def build_entry(
    data_dir: Path, name: str, n: int, row_shape: tuple[int, ...], chunk_rows: int, seed: int
) -> tuple[Path, float, bool]:
    """An uncompressed entry of ``n`` random fp16 rows (ids 0..n-1); reused when it matches."""
    entry_path = data_dir / "store" / name
    params = {"n": n, "row_shape": list(row_shape), "chunk_rows": chunk_rows, "seed": seed}
    params_file = data_dir / f"{name}.params.json"
    manifest = read_manifest(entry_path)
    if (params_file.is_file() and json.loads(params_file.read_text()) == params
            and manifest is not None and manifest.get("complete")):  # fmt: skip
        return entry_path, 0.0, True
    print(f"writing entry {name}: {n} x {row_shape} {DTYPE} "
          f"({gib(n * np.prod(row_shape) * 2):.2f} GiB) ...", flush=True)  # fmt: skip
    params_file.unlink(missing_ok=True)
    (data_dir / "store").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    writer = EntryWriter.create(
        entry_path, {"key": name, "teacher": "synthetic", "output": "tokens"},
        np.arange(n, dtype=np.int64), row_shape=row_shape, dtype=DTYPE, ragged=False,
        chunk_rows=chunk_rows,
    )  # fmt: skip
    for unit in range(writer.n_chunks):
        start, stop = writer.unit_rows(unit)
        writer.commit(unit, fp16_block(seed, unit, (stop - start, *row_shape)))
    writer.finalize({"bench": "train_step"})
    params_file.write_text(json.dumps(params))
    return entry_path, time.perf_counter() - t0, False


def build_betas(path: Path, n: int, voxels: int, seed: int) -> Path:
    """A betas HDF5 ``[n, voxels]`` fp32 (z-scored noise), as ``Betas`` reads it."""
    if path.is_file():
        with h5py.File(path, "r") as f:
            if f["betas"].shape == (n, voxels):
                return path
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 7])
    with h5py.File(path, "w") as f:
        f.create_dataset("betas", data=rng.standard_normal((n, voxels), dtype=np.float32))
    return path


def make_model(args: argparse.Namespace, row_shape: tuple[int, int], clip_proj: str) -> nn.Module:
    torch.manual_seed(args.seed)
    model = MindEyeModel(
        n_voxels=[args.voxels], hidden=args.hidden, n_blocks=args.n_blocks,
        clip_tokens=row_shape[0], clip_dim=row_shape[1], text_dim=None,
    )  # fmt: skip
    if clip_proj == "none":
        model.backbone.clip_proj = nn.Identity()
    return model.train()


class Stepper:
    """One optimizer step of the MindEye recipe: its own ``training_step`` (loss code), then
    zero_grad / backward / AdamW step as ``heads.train.train`` does them (fp32 on CPU, no
    grad clip: the recipe's defaults)."""

    def __init__(self, model: nn.Module, phase: str, on_backward: Callable[[], Any] | None = None):
        cfg = recipe(get_head("mindeye"))
        t = cfg["train"]
        self.model = model
        self.shim = SimpleNamespace(cfg=cfg)
        groups = [{**g, "weight_decay": g.get("weight_decay", t["weight_decay"])}
                  for g in decay_groups(model)]  # fmt: skip
        self.opt = torch.optim.AdamW(groups, lr=t["lr"], betas=tuple(t["betas"]), eps=t["eps"])
        # Progress decides the phase: epoch 0 of 100 is BiMixCo, epoch 99 SoftCLIP.
        self.progress = Progress(epoch=0 if phase == "mixco" else 99, step=0, epochs=100,
                                 steps_per_epoch=1, total_steps=100)  # fmt: skip
        self.on_backward = on_backward

    def __call__(self, voxels: np.ndarray, targets: np.ndarray) -> float:
        batch = {"voxels": [torch.from_numpy(voxels)], "targets": torch.from_numpy(targets),
                 "text": None, "negatives": None,
                 "covered": torch.zeros(len(voxels), dtype=torch.bool)}  # fmt: skip
        loss, _ = MindEye.loss(self.shim, self.model, batch, self.progress)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.on_backward is not None:
            self.on_backward()
        self.opt.step()
        value = loss.item()
        if not np.isfinite(value):
            raise SystemExit(f"loss became {value}")
        return value


def median_ratio(a: list[float], b: list[float]) -> float:
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def table(header: list[str], rows: list[list[Any]], align: str | None = None) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join(align or ["---"] + ["---:"] * (len(header) - 1)) + "|")
    for r in rows:
        print("| " + " | ".join(str(x) for x in r) + " |")


# -- section 1 ----------------------------------------------------------------------------------
def section1(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    print("\n## 1. Step time: targets from the featstore entry vs in RAM\n", flush=True)
    n, b = args.rows, args.batch
    entry_path, build_s, reused = build_entry(data_dir, "s1-bigG", n, BIGG_ROW, args.chunk_rows,
                                              args.seed)  # fmt: skip
    betas = Betas(build_betas(data_dir / "s1-betas.hdf5", n, args.voxels, args.seed))

    entry = Entry(entry_path)  # verify=True, as open_entry gives the head
    assert entry.zero_copy, "the benchmark entry should be memory-mappable"
    t0 = time.perf_counter()
    ram = np.empty((n, *BIGG_ROW), dtype=DTYPE)
    for s in range(0, n, 256):  # first touch: verifies every chunk, warms the page cache
        ram[s : s + 256] = entry.gather(np.arange(s, min(n, s + 256)))
    first_touch_s = time.perf_counter() - t0

    fetchers: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "store": lambda ids: entry.gather(entry.positions(ids)),
        "ram": lambda ids: ram[ids],
    }
    rng = np.random.default_rng(args.seed)
    trial_image = rng.permutation(n)  # trial t showed image trial_image[t]
    n_batches = max(args.rounds * args.steps_per_round, args.full_rounds) + 4
    order = np.concatenate([rng.permutation(n) for _ in range(-(-n_batches * b // n))])
    batches = order[: n_batches * b].reshape(n_batches, b)
    probe = trial_image[batches[0]]
    if not np.array_equal(fetchers["store"](probe), fetchers["ram"](probe)):
        raise SystemExit("store and RAM targets differ")

    def run_arm(step: Stepper, arm: str, part: np.ndarray) -> tuple[float, float]:
        """Mean seconds per step and per target fetch over the batches in ``part``."""
        fetch_s = 0.0
        t0 = time.perf_counter()
        for trials in part:
            voxels = betas.read(trials)
            t1 = time.perf_counter()
            targets = fetchers[arm](trial_image[trials])
            fetch_s += time.perf_counter() - t1
            step(voxels, targets)
        return (time.perf_counter() - t0) / len(part), fetch_s / len(part)

    def compare(clip_proj: str, rounds: int, k: int) -> dict[str, Any]:
        model = make_model(args, BIGG_ROW, clip_proj)
        step = Stepper(model, args.phase)
        for arm in ("store", "ram"):  # warm-up (allocator, AdamW state): not timed
            run_arm(step, arm, batches[-2:])
        res = {arm: {"step_s": [], "fetch_s": []} for arm in fetchers}
        load0 = os.getloadavg()[0]
        for r in range(rounds):
            part = batches[r * k : (r + 1) * k]
            for arm in ("store", "ram") if r % 2 == 0 else ("ram", "store"):
                s, f = run_arm(step, arm, part)
                res[arm]["step_s"].append(s)
                res[arm]["fetch_s"].append(f)
        st, ra = res["store"], res["ram"]
        return {
            "clip_proj": clip_proj, "rounds": rounds, "steps_per_round": k,
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "median_step_s": {a: statistics.median(v["step_s"]) for a, v in res.items()},
            "median_fetch_s": {a: statistics.median(v["fetch_s"]) for a, v in res.items()},
            "ratio_store_vs_ram_paired": median_ratio(st["step_s"], ra["step_s"]),
            "ratio_min_max": [min(x / y for x, y in zip(st["step_s"], ra["step_s"], strict=True)),
                              max(x / y for x, y in zip(st["step_s"], ra["step_s"], strict=True))],
            "rounds_data": res, "loadavg": [load0, os.getloadavg()[0]],
        }  # fmt: skip

    runs = [compare(args.clip_proj, args.rounds, args.steps_per_round)]
    if args.full_rounds > 0 and args.clip_proj != "full":
        runs.append(compare("full", args.full_rounds, 1))

    print(f"N={n} rows of {BIGG_ROW} {DTYPE} ({gib(ram.nbytes):.2f} GiB), batch {b}, "
          f"{args.voxels} voxels, hidden {args.hidden}, n_blocks {args.n_blocks}, "
          f"{args.phase} loss, AdamW; betas read lazily from HDF5 in both arms; "
          f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads; first touch of "
          f"the entry (CRC32 of all {n // args.chunk_rows} chunks + read) {first_touch_s:.1f} s, "
          f"before timing\n")  # fmt: skip
    rows = []
    for run in runs:
        label = ("MindEye minus clip_proj" if run["clip_proj"] == "none"
                 else "full MindEye (with clip_proj)")  # fmt: skip
        for arm in ("store", "ram"):
            src = ("featstore `entry.gather(entry.positions(ids))`" if arm == "store"
                   else "numpy array in RAM `ram[ids]`")  # fmt: skip
            ratio = (f"**{run['ratio_store_vs_ram_paired']:.3f}** "
                     f"(rounds {run['ratio_min_max'][0]:.2f}-{run['ratio_min_max'][1]:.2f})"
                     if arm == "store" else "1")  # fmt: skip
            rows.append([f"{label}, {run['params_m']:.1f} M params", src,
                         f"{run['rounds']} x {run['steps_per_round']}",
                         f"{run['median_step_s'][arm]:.3f}",
                         f"{1000 * run['median_fetch_s'][arm]:.2f}", ratio])  # fmt: skip
    table(["model", "target source", "rounds x steps", "step s (median round)",
           "target fetch ms (median)", "store/RAM (paired median)"], rows,
          ["---", "---", "---:", "---:", "---:", "---:"])  # fmt: skip
    main = runs[0]
    ok = main["ratio_store_vs_ram_paired"] <= GOAL_STEP_RATIO
    print(f"\nsummary: step time with featstore targets = {main['ratio_store_vs_ram_paired']:.3f}"
          f"x the RAM array's (paired median over {main['rounds']} rounds; goal <= "
          f"{GOAL_STEP_RATIO}: {'met' if ok else 'MISSED'}); the fetch itself is "
          f"{1000 * main['median_fetch_s']['store']:.1f} ms vs "
          f"{1000 * main['median_fetch_s']['ram']:.1f} ms of a "
          f"{main['median_step_s']['ram']:.2f} s step", flush=True)  # fmt: skip
    return {"n_rows": n, "build_s": build_s, "reused_data": reused,
            "first_touch_s": first_touch_s, "runs": runs, "goal": GOAL_STEP_RATIO,
            "goal_met": ok}  # fmt: skip


# -- section 2 ----------------------------------------------------------------------------------
class MemSampler(threading.Thread):
    """Samples /proc/self/status every ``interval`` s and keeps the peaks."""

    def __init__(self, interval: float):
        super().__init__(daemon=True)
        self.interval = interval
        self.peak: dict[str, int] = {}
        self.samples = 0
        self._lock = threading.Lock()
        self._stop_event = threading.Event()

    def sample(self) -> dict[str, int]:
        s = proc_status()
        with self._lock:
            self.samples += 1
            for k, v in s.items():
                self.peak[k] = max(self.peak.get(k, 0), v)
        return s

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def mapped_chunk_files(entry_dir: Path) -> int:
    """Distinct chunk files of the entry mapped in this process (from /proc/self/maps)."""
    prefix = str(entry_dir.resolve())
    with open("/proc/self/maps") as f:
        return len({line.split()[-1] for line in f if prefix in line})


def memory_child(job: dict[str, Any], out_file: str) -> None:
    """One training run in a fresh process; writes its measurements to ``out_file``."""
    torch.set_num_threads(job["threads"])
    args = SimpleNamespace(**job["args"])
    entry_path = Path(job["entry"])
    sampler = MemSampler(job["sample_ms"] / 1000)
    start = sampler.sample()
    betas = Betas(job["betas"])
    # The machine this section stands for has --mem-goal-gib of memory: the reader decides how
    # to read (featstore.reader._pages_budget) as it would there, so an entry 4.8x that size
    # is read row by row from disk and through per-chunk maps when cached, not as 2 MiB pages.
    featstore.reader._pages_budget = lambda: int(job["mem_goal_bytes"] * 0.5)
    entry = Entry(entry_path, verify=job["verify"])
    assert entry._rows.way != "pages"
    model = make_model(args, BIGG_ROW, "none")
    step = Stepper(model, args.phase, on_backward=sampler.sample)
    base = sampler.sample()  # model + optimizer built; no target read yet
    sampler.start()
    rng = np.random.default_rng([args.seed, 2])
    n, steps, b, cr = len(entry), job["steps"], args.batch, entry.chunk_rows
    checkpoints = sorted({int(x) for x in np.linspace(1, steps, 9).round()})
    rows_seen: set[int] = set()
    trajectory, times = [], []
    for i in range(1, steps + 1):
        trials = rng.choice(n, size=b, replace=False)  # trial = row = image here
        t0 = time.perf_counter()
        step(betas.read(trials), entry.gather(entry.positions(trials)))
        times.append(time.perf_counter() - t0)
        s = sampler.sample()
        rows_seen.update(trials.tolist())
        if i in checkpoints:
            trajectory.append({
                "step": i, "rows_touched": len(rows_seen),
                "chunks_touched": len({r // cr for r in rows_seen}),
                "maps_open": entry._rows.open_maps,  # the reader's own count
                "maps_in_proc": mapped_chunk_files(entry_path / "features"),
                "RssFile": s["RssFile"], "RssAnon": s["RssAnon"], "VmRSS": s["VmRSS"],
            })  # fmt: skip
    sampler.stop()
    end = proc_status()
    result = {"verify": job["verify"], "steps": steps, "start": start, "base": base, "end": end,
              "peak": sampler.peak, "samples": sampler.samples, "trajectory": trajectory,
              "median_step_s": statistics.median(times), "n_chunks": -(-n // cr),
              "chunk_bytes": cr * int(np.prod(BIGG_ROW)) * 2}  # fmt: skip
    Path(out_file).write_text(json.dumps(result))


def section2(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    print("\n## 2. Peak memory, training from an entry larger than the memory goal\n", flush=True)
    n = args.mem_rows
    entry_path, build_s, reused = build_entry(data_dir, "s2-bigG-big", n, BIGG_ROW,
                                              args.chunk_rows, args.seed)  # fmt: skip
    store_bytes = n * int(np.prod(BIGG_ROW)) * 2
    betas_path = build_betas(data_dir / "s2-betas.hdf5", n, args.voxels, args.seed)
    modes = {"both": [True, False], "on": [True], "off": [False]}[args.mem_verify]
    ctx = mp.get_context("spawn")
    results = []
    for verify in modes:
        out_file = data_dir / f"s2-child-{int(verify)}.json"
        out_file.unlink(missing_ok=True)
        job = {"args": {k: v for k, v in vars(args).items() if not isinstance(v, Path)},
               "entry": str(entry_path), "betas": str(betas_path), "verify": verify,
               "steps": args.mem_steps, "sample_ms": args.sample_ms,
               "mem_goal_bytes": int(args.mem_goal_gib * 2**30),
               "threads": torch.get_num_threads()}  # fmt: skip
        t0 = time.perf_counter()
        proc = ctx.Process(target=memory_child, args=(job, str(out_file)))
        proc.start()
        proc.join()
        if proc.exitcode != 0 or not out_file.is_file():
            raise SystemExit(f"memory child (verify={verify}) failed with exit code "
                             f"{proc.exitcode}")  # fmt: skip
        res = json.loads(out_file.read_text())
        res["wall_s"] = time.perf_counter() - t0
        results.append(res)
        print(f"  run verify={verify}: {res['steps']} steps in {res['wall_s']:.0f} s", flush=True)

    r0 = results[0]
    chunk_mib = r0["chunk_bytes"] / 2**20
    bound = min(MAX_OPEN, r0["n_chunks"]) * r0["chunk_bytes"]
    print(f"\nentry {n} x {BIGG_ROW} {DTYPE} = {gib(store_bytes):.2f} GiB "
          f"({store_bytes / 2**30 / args.mem_goal_gib:.1f}x the {args.mem_goal_gib:g} GiB memory "
          f"goal), {r0['n_chunks']} chunks of {args.chunk_rows} rows ({chunk_mib:.1f} MiB); "
          f"model hidden {args.hidden}, MindEye minus clip_proj, batch {args.batch}, random "
          f"batches; the reader keeps <= {MAX_OPEN} maps open, so mapped bytes are bounded "
          f"by {min(MAX_OPEN, r0['n_chunks'])} x {chunk_mib:.1f} MiB = {gib(bound):.2f} GiB\n"
          )  # fmt: skip
    rows = []
    for r in results:
        last = r["trajectory"][-1]
        rows.append([
            f"verify={r['verify']}", r["steps"], f"{last['chunks_touched']}/{r['n_chunks']}",
            f"{last['maps_open']} / {last['maps_in_proc']}",
            f"{gib(r['base']['RssAnon']):.2f}", f"**{gib(r['peak']['RssAnon']):.2f}**",
            f"{gib(r['base']['RssFile']):.2f}", f"**{gib(r['peak']['RssFile']):.2f}**",
            f"{gib(r['peak']['VmHWM']):.2f}", f"{r['median_step_s']:.2f}",
        ])  # fmt: skip
    table(["entry opened with", "steps", "chunks touched", "maps open (reader / /proc)",
           "RssAnon before GiB", "RssAnon peak GiB", "RssFile before GiB", "RssFile peak GiB",
           "VmHWM GiB", "step s (median)"], rows)  # fmt: skip
    print()
    for r in results:
        print(f"trajectory, verify={r['verify']}:\n")
        table(["step", "distinct rows touched", "distinct chunks touched", "maps open",
               "RssFile GiB", "RssFile - before, MiB per open map", "RssAnon GiB"],
              [[t["step"], t["rows_touched"], t["chunks_touched"], t["maps_open"],
                f"{gib(t['RssFile']):.2f}",
                f"{(t['RssFile'] - r['base']['RssFile']) / 2**20 / max(1, t['maps_open']):.1f}",
                f"{gib(t['RssAnon']):.2f}"] for t in r["trajectory"]])  # fmt: skip
        print()
    parts = []
    for r in results:
        grown = r["peak"]["RssFile"] - r["base"]["RssFile"]
        parts.append(f"verify={r['verify']}: RssAnon peak {gib(r['peak']['RssAnon']):.2f} GiB "
                     f"(+{gib(r['peak']['RssAnon'] - r['base']['RssAnon']):.2f} during training), "
                     f"RssFile +{gib(grown):.2f} GiB")  # fmt: skip
    print(
        "summary: " + "; ".join(parts) + f". Mapped file pages are capped by the {MAX_OPEN} "
        f"open maps ({gib(bound):.2f} GiB here), not by the {gib(store_bytes):.1f} GiB store; "
        f"they are clean page cache the kernel can reclaim, but they show in RSS.",
        flush=True,
    )
    print(
        "\nwhat the numbers mean: RssAnon is memory the process owns (model, AdamW state, "
        "activations, batches, allocator slack). RssFile is file pages mapped into it: read-only, "
        "clean page cache that the kernel drops under pressure and re-reads on the next touch; "
        "it counts in RSS (and VmHWM) but is not owned memory. An evicted map is unmapped, so "
        "RssFile is at most (maps open) x (chunk bytes); in practice only the rows read (plus "
        "kernel fault-around) stay mapped. The first-touch CRC32 (verify=True) reads chunk files "
        "with plain reads, not through the maps, so it adds nothing to RssFile.",
        flush=True,
    )
    return {"n_rows": n, "store_gib": gib(store_bytes), "goal_gib": args.mem_goal_gib,
            "build_s": build_s, "reused_data": reused, "max_open": MAX_OPEN,
            "map_bound_gib": gib(bound), "runs": results}  # fmt: skip


# -- section 3 ----------------------------------------------------------------------------------
def count_step_flops(voxels: int, hidden: int, n_blocks: int, tokens: int, dim: int, batch: int,
                     clip_proj: bool = True) -> int:  # fmt: skip
    """Forward + backward FLOPs of one MindEye BiMixCo step (meta device: nothing allocated)."""
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from heads.losses import mixco_nce

    with torch.device("meta"):
        model = MindEyeModel([voxels], hidden=hidden, n_blocks=n_blocks, clip_tokens=tokens,
                             clip_dim=dim, text_dim=None)  # fmt: skip
        if not clip_proj:
            model.backbone.clip_proj = nn.Identity()
        v = torch.randn(batch, 1, voxels)
        targ = torch.randn(batch, tokens * dim)
    counter = FlopCounterMode(display=False)
    with counter:
        out = model([v])
        pred = F.normalize(out["clip_voxels"].flatten(1), dim=-1)
        loss = mixco_nce(pred, F.normalize(targ, dim=-1), temp=0.006)
        loss.backward()
    return int(counter.get_total_flops())


def count_teacher_flops(teacher_name: str) -> tuple[int, int]:
    """(vision-tower params, counted forward FLOPs per 224 px image) on the meta device."""
    import open_clip
    from torch.utils.flop_counter import FlopCounterMode

    from featstore.teachers import get_spec
    from featstore.teachers.openclip_vision import model_config

    cfg = model_config(get_spec(teacher_name))
    with torch.device("meta"):
        visual = open_clip.model.CLIP(**cfg).visual
        x = torch.randn(1, 3, 224, 224)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        visual(x)
    return sum(p.numel() for p in visual.parameters()), int(counter.get_total_flops())


def section3(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    print("\n## 3. Teacher forward every step (the seed's way) vs cached targets\n", flush=True)
    from featstore import Store
    from featstore.extract import extract
    from featstore.sources import open_source
    from featstore.teachers import create_teacher
    from heads.zoo.mindeye.synthetic import write_images

    n, b = args.images, args.batch
    work = data_dir / "s3"
    images_path = work / "coco_images_224_float16.hdf5"
    marker = work / "images.params.json"
    params = {"n": n, "seed": args.seed}
    if not (marker.is_file() and json.loads(marker.read_text()) == params):
        work.mkdir(parents=True, exist_ok=True)
        write_images(work, n, args.seed)
        marker.write_text(json.dumps(params))
    betas = Betas(build_betas(work / "betas.hdf5", n, args.voxels, args.seed))

    teacher = create_teacher(args.teacher, weights="random")
    store_root = work / "store"
    shutil.rmtree(store_root, ignore_errors=True)  # stage one is timed fresh every run
    t0 = time.perf_counter()
    done = extract(teacher, open_source(images_path), Store(store_root), outputs=["tokens"],
                   batch_size=32, progress=False, log=lambda _: None)  # fmt: skip
    extract_s = time.perf_counter() - t0
    entry = Entry(done.entries[0].path)
    row_shape = tuple(entry.row_shape)

    rng = np.random.default_rng([args.seed, 3])
    trial_image = rng.permutation(n)
    steps = n // b
    h5 = h5py.File(images_path, "r")
    images_ds = h5["images"]
    teacher_s = [0.0]

    def seed_targets(ids: np.ndarray) -> np.ndarray:
        """The seed's way: images from the HDF5 (sorted, unique), teacher forward."""
        t0 = time.perf_counter()
        uniq, inverse = np.unique(ids, return_inverse=True)
        imgs = images_ds[uniq][inverse]
        x = torch.stack([teacher.preprocessor(img) for img in imgs])
        with torch.no_grad():
            tokens = teacher.forward(x, ["tokens"])["tokens"]
        teacher_s[0] += time.perf_counter() - t0
        return tokens.float().numpy()

    def cached_targets(ids: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        out = entry.gather(entry.positions(ids))
        teacher_s[0] += time.perf_counter() - t0
        return out

    ways = {"seed": seed_targets, "cached": cached_targets}
    probe = trial_image[:b]
    parity = float(np.abs(seed_targets(probe) - cached_targets(probe).astype(np.float32)).max())
    scale = float(np.abs(cached_targets(probe).astype(np.float32)).max())

    model = make_model(args, row_shape, "full")
    step = Stepper(model, args.phase)

    def epoch(way: str, e: int) -> tuple[float, float]:
        order = np.random.default_rng([args.seed, 4, e]).permutation(n)
        teacher_s[0] = 0.0
        t0 = time.perf_counter()
        for s in range(steps):
            trials = order[s * b : (s + 1) * b]
            step(betas.read(trials), ways[way](trial_image[trials]))
        return time.perf_counter() - t0, teacher_s[0]

    for way in ways:  # warm-up, not timed
        ways[way](probe)
        step(betas.read(np.arange(b)), ways[way](probe))
    res: dict[str, dict[str, list[float]]] = {w: {"epoch_s": [], "targets_s": []} for w in ways}
    for e in range(args.epochs):
        for way in ("seed", "cached") if e % 2 == 0 else ("cached", "seed"):
            total, tgt = epoch(way, e)
            res[way]["epoch_s"].append(total)
            res[way]["targets_s"].append(tgt)
    h5.close()
    med = {w: statistics.median(v["epoch_s"]) for w, v in res.items()}
    med_t = {w: statistics.median(v["targets_s"]) for w, v in res.items()}
    ratio = median_ratio(res["seed"]["epoch_s"], res["cached"]["epoch_s"])

    print(f"{n} images = {steps} steps of {b} per epoch, teacher {args.teacher} (random weights; "
          f"targets {row_shape}), full MindEye at that width (hidden {args.hidden}, n_blocks "
          f"{args.n_blocks}, {args.voxels} voxels), {args.phase} loss, AdamW; {args.epochs} "
          f"epochs per way, alternating. Parity: teacher output vs cached row max |diff| "
          f"{parity:.2e} (values up to {scale:.2f}; fp16 storage)\n")  # fmt: skip
    table(["way", "s / epoch (median)", "of which targets (teacher or read) s", "ratio"], [
        ["seed: HDF5 images -> preprocessor -> teacher forward, every step",
         f"{med['seed']:.2f}", f"{med_t['seed']:.2f}", f"**{ratio:.2f}x**"],
        ["cached: featstore entry (memory-mapped)", f"{med['cached']:.2f}",
         f"{med_t['cached']:.3f}", "1"],
        ["stage one, once: `featstore.extract` over the same images", f"{extract_s:.2f}",
         "", f"= {extract_s / med['cached']:.2f} cached epochs"],
    ], ["---", "---:", "---:", "---:"])  # fmt: skip
    print(
        f"\nsummary (measured): with the tiny teacher an epoch takes {ratio:.2f}x as long when "
        f"the teacher runs every step ({med['seed']:.2f} s vs {med['cached']:.2f} s)."
    )

    # ESTIMATE: the real bigG by FLOP counts.
    tiny_params, tiny_flops = count_teacher_flops(args.teacher)
    big_params, big_counted = count_teacher_flops("bigG")
    big_formula = 2 * big_params * BIGG_TOKENS
    tiny_step = count_step_flops(args.voxels, args.hidden, args.n_blocks, *row_shape, b)
    heads = {
        f"this bench's head at bigG width (hidden {args.hidden}, {args.n_blocks} block, "
        f"{args.voxels} voxels)": count_step_flops(args.voxels, args.hidden, args.n_blocks,
                                                    *BIGG_ROW, b),
        "recipe default (hidden 1024, 4 blocks, 15724 voxels = subj01)":
            count_step_flops(15724, 1024, 4, *BIGG_ROW, b),
        "hidden 4096, 4 blocks, 15724 voxels": count_step_flops(15724, 4096, 4, *BIGG_ROW, b),
    }  # fmt: skip
    predicted_tiny = 1 + b * tiny_flops / tiny_step
    print(f"\nESTIMATE (computed from FLOP counts, not measured): teacher forward per batch of "
          f"{b} vs one MindEye training step (forward + backward; AdamW and data loading left "
          f"out; same FLOP/s assumed for both; the head has no diffusion prior or blurry "
          f"branch, which MindEye2 trains too: with them the step is bigger and the ratio "
          f"smaller). bigG vision tower: {big_params / 1e9:.3f} B "
          f"params (open_clip ViT-bigG-14 config) -> 2 x params x {BIGG_TOKENS} = "
          f"{big_formula / 1e9:.0f} GFLOP per image (FlopCounterMode, attention included: "
          f"{big_counted / 1e9:.0f}).\n")  # fmt: skip
    est_rows = [
        [
            f"(check) {args.teacher} vs this section's head ([{row_shape[0]}, "
            f"{row_shape[1]}] targets)",
            f"{b * tiny_flops / 1e9:.2f}",
            f"{tiny_step / 1e9:.2f}",
            f"{predicted_tiny:.2f}x (measured: {ratio:.2f}x)",
        ]
    ]
    estimates = {}
    for name, flops in heads.items():
        est = 1 + b * big_formula / flops
        estimates[name] = {"step_flops": flops, "ratio": est}
        est_rows.append([f"bigG vs {name}", f"{b * big_formula / 1e9:,.0f}",
                         f"{flops / 1e9:,.0f}", f"**~{est:.0f}x**"])  # fmt: skip
    table(["teacher vs head", "teacher GFLOP / batch", "head step GFLOP", "seed/cached per epoch"],
          est_rows)  # fmt: skip
    rec = estimates["recipe default (hidden 1024, 4 blocks, 15724 voxels = subj01)"]["ratio"]
    print(f"\nsummary (estimate): by FLOPs the real bigG forward costs ~{rec - 1:.0f}x a MindEye "
          f"step at the recipe's default size, so an epoch with the teacher in the loop would "
          f"take ~{rec:.0f}x one with cached targets (the tiny check row shows how far FLOPs are "
          f"from wall time at toy sizes).", flush=True)  # fmt: skip
    return {
        "n_images": n, "steps_per_epoch": steps, "teacher": args.teacher,
        "target_row_shape": list(row_shape), "extract_s": extract_s, "parity_max_abs": parity,
        "epochs": res, "median_epoch_s": med, "median_targets_s": med_t,
        "ratio_seed_vs_cached_paired": ratio,
        "estimate": {
            "note": "computed from FLOP counts, not measured",
            "bigG_params": big_params, "bigG_flops_per_image_formula": big_formula,
            "bigG_flops_per_image_counted": big_counted, "tiny_teacher_params": tiny_params,
            "tiny_teacher_flops_per_image": tiny_flops, "tiny_step_flops": tiny_step,
            "tiny_predicted_ratio": predicted_tiny, "heads": estimates,
        },
    }  # fmt: skip


# -- main ---------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    only = {int(s) for s in args.only.split(",") if s.strip()}
    if not only <= {1, 2, 3}:
        raise SystemExit("--only takes sections 1, 2 and/or 3, e.g. --only 1,3")
    data_dir = args.workdir / "train_step_data"
    data_dir.mkdir(parents=True, exist_ok=True)
    out = args.workdir / "train_step.json"
    result = json.loads(out.read_text()) if out.is_file() else {}
    result.update(benchmark="train_step", env={
        "python": platform.python_version(), "platform": platform.platform(),
        "cpus": os.cpu_count(), "torch": torch.__version__, "numpy": np.__version__,
        "torch_threads": torch.get_num_threads()})  # fmt: skip
    t_start = time.perf_counter()
    sections = {1: section1, 2: section2, 3: section3}
    for k in sorted(only):
        t0 = time.perf_counter()
        res = sections[k](args, data_dir)
        res["args"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        res["section_s"] = time.perf_counter() - t0
        result[f"section{k}"] = res
        out.write_text(json.dumps(result, indent=2))
    print(f"\nresults written to {out} ({time.perf_counter() - t_start:.0f} s in all)")
    if args.clean:
        shutil.rmtree(data_dir, ignore_errors=True)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
