"""brain2text evaluation: PER by greedy CTC decoding, WER/CER of LLM text, predictions, plots."""

from __future__ import annotations

import csv
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ...data.t15 import missing_labels, phoneme_string
from ...errors import DataError
from ...metrics.sequence import ctc_greedy_decode, edit_distance, error_rate
from ...metrics.text import text_error_rates
from ...report import Report
from ...tracking import read_metrics
from ...train import resolve_precision, to_device
from .data import Trials

if TYPE_CHECKING:
    from .head import Brain2Text

BATCH = 64  # the baseline's validation batches: one session, at most 64 trials


@dataclass
class Decoded:
    metrics: dict[str, float]
    rows: list[dict[str, Any]] = field(default_factory=list)
    sessions: dict[str, float] = field(default_factory=dict)  # PER per session


def _autocast(head: Brain2Text, device: torch.device):
    precision, dtype = resolve_precision(head.cfg["train"]["precision"], device)
    if dtype is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


@torch.no_grad()
def decode_split(
    head: Brain2Text, model: nn.Module, dataset: Trials, generate: bool, labels: bool = True
) -> Decoded:
    """Decode every trial of ``dataset`` (session batches, file order, smoothing only): phonemes
    by greedy CTC (argmax → merge repeats → drop blanks), text through the LLM when
    ``generate``; with ``labels``, PER (:func:`heads.metrics.sequence.error_rate`: total edit
    distance / total true phonemes, over the split and per session), the CTC and alignment
    losses (means over batches, as the baseline) and WER/CER (jiwer, corpus level). ``labels`` on
    a split without them (test) is :func:`heads.data.t15.missing_labels`'s error."""
    e, t = head.cfg["eval"], dataset.table
    if labels and len(t) and not t.labelled:
        raise missing_labels(t, int(np.flatnonzero(t.seq_len < 0)[0]))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    sums: dict[str, list[float]] = {}
    true_seqs: dict[int, list[list[int]]] = {}  # per session (day): references ...
    pred_seqs: dict[int, list[list[int]]] = {}  # ... and greedy decodes
    rows_out: list[dict[str, Any]] = []
    refs, hyps = [], []
    for rows in dataset.session_batches(BATCH):
        batch = to_device(dataset.__getitems__(rows), device)
        with _autocast(head, device):
            x, n = head.prepare(batch, train=False)
            out = head.forward(model, batch, x, n) if labels else model(x, batch["day"], n)
            if labels:
                for k, v in head.terms(out, batch)[1].items():
                    sums.setdefault(k.replace("loss_", "val_") + "_loss", []).append(float(v))
            texts = (
                model.generate(x, batch["day"], n, tokenizer=head.tokenizer,
                               num_beams=e["num_beams"], max_new_tokens=e["max_new_tokens"])
                if generate else [None] * len(rows)
            )  # fmt: skip
        decoded = ctc_greedy_decode(out["logits"], out["lengths"]) if "logits" in out else None
        for j, row in enumerate(rows):
            record: dict[str, Any] = {
                "id": t.ids[row],
                "session": head.sessions[int(t.day[row])],
            }
            if labels:
                record["sentence"] = dataset.reader.transcription(row)
            if decoded is not None:
                record["pred_phonemes"] = phoneme_string(decoded[j])
            if labels and decoded is not None:
                true = dataset.reader.phonemes(row).tolist()
                record.update(
                    true_phonemes=phoneme_string(true),
                    edit_distance=edit_distance(true, decoded[j]),
                )
                true_seqs.setdefault(int(t.day[row]), []).append(true)
                pred_seqs.setdefault(int(t.day[row]), []).append(decoded[j])
            if generate:
                record["pred_text"] = texts[j]
                if labels:
                    refs.append(record["sentence"])
                    hyps.append(texts[j])
            rows_out.append(record)
    model.train(was_training)
    metrics = {k: float(np.mean(v)) for k, v in sums.items()}
    if true_seqs:
        metrics["val_per"] = error_rate(
            [r for refs_ in true_seqs.values() for r in refs_],
            [h for hyps_ in pred_seqs.values() for h in hyps_],
        )
    if labels and generate and refs:
        rates = text_error_rates(refs, hyps)
        metrics["val_wer"], metrics["val_cer"] = rates["wer"], rates["cer"]
    sessions = {head.sessions[d]: error_rate(true_seqs[d], pred_seqs[d]) for d in true_seqs}
    return Decoded(metrics, rows_out, sessions)


def final_evaluation(head: Brain2Text, model: nn.Module, run_dir: Path) -> Report:
    """``heads eval brain2text RUN``: the ``eval.split`` trials decoded; ``eval.json``, a
    per-trial predictions CSV and ``plots/eval.png``. Test files have no labels: predictions
    only."""
    split = head.cfg["eval"]["split"]
    dataset = head.eval_dataset(split)
    labelled = dataset.labels
    if not len(dataset):
        raise DataError(
            f"no {split} trials in the run's sessions under {head.cfg['data']['root']}."
        )
    result = decode_split(head, model, dataset, generate=head.beta > 0, labels=labelled)
    metrics = {k.replace("val_", f"{split}_"): v for k, v in result.metrics.items()}
    metrics[f"{split}_trials"] = len(dataset)
    lines = [f"{split}: {len(dataset)} trials in {len(set(dataset.table.day.tolist()))} sessions"]
    if not labelled:
        lines.append(f"{split} files carry no labels: predictions only (no PER/WER)")
    for key, value in metrics.items():
        if key.endswith(("_per", "_wer", "_cer")):
            lines.append(f"{key}: {value:.2%}")
        elif key.endswith("_loss"):
            lines.append(f"{key}: {value:.4f}")
    if result.sessions:
        metrics[f"{split}_per_by_session"] = result.sessions
    report = Report(head.name, metrics, lines)
    report.save(run_dir / f"eval_{split}.json")
    report.files.append(write_predictions(result.rows, run_dir / f"predictions_{split}.csv"))
    report.files.append(
        plot_evaluation(run_dir, result.rows, run_dir / "plots" / f"eval_{split}.png")
    )
    return report


def write_predictions(rows: list[dict[str, Any]], path: Path) -> Path:
    """One CSV row per trial: id, session, the reference (if any) and the predictions."""
    columns = [c for c in ("id", "session", "sentence", "pred_text", "true_phonemes",
                           "pred_phonemes", "edit_distance") if rows and c in rows[0]]  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)
    return path


def plot_evaluation(
    run_dir: Path, rows: list[dict[str, Any]], out: Path, examples: int = 6
) -> Path:
    """PER (and WER) over training from metrics.jsonl, and a few decoded examples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evals = [r for r in read_metrics(run_dir) if r.get("eval")]
    fig, (curve, text) = plt.subplots(2, 1, figsize=(11, 8), height_ratios=[1, 1.2])
    for key, label in (("val_per", "PER"), ("val_wer", "WER"), ("val_cer", "CER")):
        points = [(r["step"], r[key]) for r in evals if key in r]
        if points:
            steps, values = zip(*points, strict=True)
            curve.plot(steps, values, marker="o", label=f"val {label}")
    curve.set(xlabel="step", ylabel="error rate", title="validation error over training")
    if curve.lines:
        curve.legend()
    text.axis("off")
    lines = []
    for r in rows[:examples]:
        lines.append(f"{r['id']}")
        if "sentence" in r:
            lines.append(f"  said:      {r['sentence']}")
        if "true_phonemes" in r:
            lines.append(f"  phonemes:  {r['true_phonemes']}")
        if "pred_phonemes" in r:
            lines.append(f"  decoded:   {r['pred_phonemes']}")
        if r.get("pred_text") is not None:
            lines.append(f"  LLM text:  {r['pred_text']}")
    text.text(0, 1, "\n".join(lines), family="monospace", fontsize=7, va="top")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
