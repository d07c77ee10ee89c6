"""Held-out evaluation: loss and perplexity over the assistant tokens, answer accuracy on short
reference answers, and a figure of a few images with their generated answers.

minimind-v publishes no quantitative benchmark (its eval script prints answers to a folder of
images); these metrics are ours. Answers are generated greedily by default (``eval.temperature
= 0``), so a score is a function of the weights.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ...losses.sequence import masked_lm_loss
from ...report import Report
from ...train import to_device
from .generation import generate

if TYPE_CHECKING:
    from .head import ChatBatches, Vlm

REPEATED_QUESTION = 5  # a question asked this often gets its own accuracy line


@torch.no_grad()
def held_out_loss(model: nn.Module, data: ChatBatches, batch_size: int) -> dict[str, float]:
    """Mean cross-entropy over every target token of ``data`` (not a mean of batch means), and
    its perplexity."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(data), batch_size):
        batch = to_device(
            data.__getitems__(list(range(start, min(start + batch_size, len(data))))), device
        )
        logits = model(batch["input_ids"], batch["patches"], batch["image_starts"])
        n = int(batch["targets"][:, 1:].sum())
        total += float(masked_lm_loss(logits, batch["input_ids"], batch["targets"])) * n
        count += n
    loss = total / max(count, 1)
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0)), "val_tokens": float(count)}


def normalize_answer(text: str) -> str:
    """Lower case, single spaces, no surrounding punctuation: "A red circle." ~ "a red circle"."""
    text = re.sub(r"\s+", " ", text.lower()).strip()
    return text.strip(" .,!?;:'\"。！？")


def short_answer_items(data: ChatBatches, max_words: int, limit: int) -> list[int]:
    """Held-out samples whose last turn is an assistant answer of at most ``max_words`` words
    (the first ``limit``; 0 = all)."""
    keep = [
        i
        for i, s in enumerate(data.samples)
        if len(s.turns) % 2 == 0 and 0 < len(s.turns[-1].split()) <= max_words
    ]
    return keep[:limit] if limit else keep


@torch.no_grad()
def answer_accuracy(head: Vlm, model: nn.Module) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Generate an answer for every short-answer held-out sample (its turns up to the last
    user turn) and score it: exact match and "contains the reference" after normalization."""
    e = head.cfg["eval"]
    data = head.val_data
    items = short_answer_items(data, e["max_answer_words"], e["max_answers"])
    results = []
    for start in range(0, len(items), e["batch_size"]):
        chunk = [data.samples[i] for i in items[start : start + e["batch_size"]]]
        prompts = [head.encoder.prompt(s.turns[:-1], s.source) for s in chunk]
        patches = torch.from_numpy(data.patches([n for s in chunk for n in s.images]))
        answers = generate(
            model,
            head.encoder,
            prompts,
            patches,
            max_new_tokens=e["max_new_tokens"],
            temperature=e["temperature"],
            top_p=e["top_p"],
        )
        for sample, answer in zip(chunk, answers, strict=True):
            got, want = normalize_answer(answer), normalize_answer(sample.turns[-1])
            results.append(
                {
                    "source": sample.source,
                    "images": list(sample.images),
                    "question": sample.turns[-2],
                    "reference": sample.turns[-1],
                    "answer": answer.strip(),
                    "exact": got == want,
                    "contains": want in got,
                }
            )
    if not results:
        return {}, []
    metrics: dict[str, Any] = {"answers": float(len(results)), **_scores(results)}
    by_question: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        question = " ".join(r["question"].replace(head.encoder.image_tag, " ").split())
        by_question.setdefault(question, []).append(r)
    repeated = {q: rs for q, rs in by_question.items() if len(rs) >= REPEATED_QUESTION}
    if repeated:
        metrics["by_question"] = {
            q: {"answers": len(rs), **_scores(rs)}
            for q, rs in sorted(repeated.items(), key=lambda item: -len(item[1]))[:10]
        }
    return metrics, results


def _scores(results: list[dict[str, Any]]) -> dict[str, float]:
    return {
        "exact_match": float(np.mean([r["exact"] for r in results])),
        "contains": float(np.mean([r["contains"] for r in results])),
    }


def final_evaluation(head: Vlm, model: nn.Module, run_dir: Path) -> Report:
    """``heads eval vlm``: held-out loss/perplexity, short-answer accuracy, ``eval.json``,
    ``answers.jsonl`` and ``plots/answers.png``."""
    import json

    if not head.val_samples:
        lines = ["no held-out data: set data.val to a JSONL in minimind-v's format"]
        report = Report("vlm", {}, lines)
        report.save(run_dir / "eval.json")
        return report
    metrics: dict[str, Any] = held_out_loss(model, head.val_data, head.cfg["eval"]["batch_size"])
    lines = [
        f"held-out loss {metrics['val_loss']:.4f} (perplexity {metrics['val_ppl']:.3g}) over "
        f"{int(metrics['val_tokens'])} assistant tokens of {len(head.val_samples)} samples"
    ]
    scores, results = answer_accuracy(head, model)
    metrics.update(scores)
    files = []
    if results:
        lines.append(
            f"short answers ({int(scores['answers'])}): exact match {scores['exact_match']:.1%}, "
            f"contains the reference {scores['contains']:.1%}"
        )
        for question, s in scores.get("by_question", {}).items():
            lines.append(
                f"  {question!r} ({s['answers']}): exact {s['exact_match']:.1%}, "
                f"contains {s['contains']:.1%}"
            )
        answers = run_dir / "answers.jsonl"
        answers.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in results))
        files.append(answers)
        figure = plot_answers(head, results, run_dir / "plots" / "answers.png")
        if figure is not None:
            files.append(figure)
    else:
        lines.append(
            f"no held-out answer has at most {head.cfg['eval']['max_answer_words']} words: "
            f"accuracy not scored (eval.max_answer_words)"
        )
    report = Report("vlm", metrics, lines, files)
    report.save(run_dir / "eval.json")
    return report


def image_folder(head: Vlm) -> Path | None:
    """Where the held-out images are: ``data.images``, else the folder the entry was made from."""
    configured = head.cfg["data"]["images"]
    folder = Path(configured or head.val_entry.manifest.get("source", {}).get("path", ""))
    return folder if str(folder) and folder.is_dir() else None


def plot_answers(head: Vlm, results: list[dict[str, Any]], out: Path) -> Path | None:
    """A grid of the first ``eval.figure_samples`` answered images, each with its questions,
    the generated answers and, where an answer is not exact, the reference (in red)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    folder = image_folder(head)
    panels: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        if r["images"] and (
            r["images"][0] in panels or len(panels) < head.cfg["eval"]["figure_samples"]
        ):
            panels.setdefault(r["images"][0], []).append(r)
    if folder is None or not panels:
        return None
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 4.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, (name, answered) in zip(axes.flat, panels.items(), strict=False):
        if (folder / name).is_file():
            with Image.open(folder / name) as im:
                ax.imshow(im.convert("RGB"))
        lines = []
        for r in answered[:4]:
            question = " ".join(r["question"].replace(head.encoder.image_tag, " ").split())
            lines.append(f"{question[:38]} → {r['answer'][:30]}")
            if not r["exact"]:
                lines.append(f"    (reference: {r['reference'][:30]})")
        exact = all(r["exact"] for r in answered)
        ax.set_title("\n".join(lines), fontsize=7, color="green" if exact else "red")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
