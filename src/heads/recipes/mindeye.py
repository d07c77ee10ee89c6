"""MindEye2 (+ TextAlign): fMRI betas → bigG image tokens, trained against cached targets.

Targets come from featstore entries by NSD 73k image index, so no teacher runs during training
and batches with a repeated image are kept (the original skipped them: h5py needs unique
indices; memory-mapped entries do not). Differences from the seed are listed in
docs/heads/mindeye.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from featstore import Store, open_entry

from ..data.nsd import BETAS_ROW, IMAGE, Betas, read_trials, split_trials
from ..errors import HeadsError
from ..losses import info_nce, mixco_nce, mixco_per_subject, soft_clip_loss, soft_clip_temperature
from ..models.mindeye import MindEyeModel
from ..registry import HeadSpec, register_head
from ..train import Head, Progress


def _open_targets(key: str, store: Store, what: str):
    if not key:
        raise HeadsError(f"data.{what} is not set: give the key of a featstore entry "
                         f"(`featstore ls` lists them).")  # fmt: skip
    try:
        entry = open_entry(key, store)
    except Exception as e:  # noqa: BLE001 - reported with the config key that named it
        raise HeadsError(f"data.{what} = {key!r}: {e}") from None
    if entry.ragged:
        raise HeadsError(f"data.{what} = {key!r} is a ragged entry; MindEye needs fixed rows.")
    return entry


def _check_covered(entry, image_ids: np.ndarray, what: str) -> None:
    missing = image_ids[~entry.contains(image_ids)]
    if len(missing):
        raise HeadsError(
            f"{len(missing)} of {len(image_ids)} trial images are missing from data.{what} "
            f"({entry.key}, teacher {entry.manifest.get('teacher')}); first: "
            f"{missing[:5].tolist()}. Extract the targets over every image the trials use."
        )


class MindEyeHead(Head):
    def __init__(self, cfg: dict[str, Any]):
        self.cfg = cfg
        d, m, t = cfg["data"], cfg["model"], cfg["train"]
        store = Store(d["store"] or None)
        self.targets = _open_targets(d["image_targets"], store, "image_targets")
        if len(self.targets.row_shape) != 2:
            raise HeadsError(f"image targets have rows {self.targets.row_shape}; MindEye needs "
                             f"token rows [tokens, dim] (bigG `tokens`).")  # fmt: skip
        self.text = (_open_targets(d["text_targets"], store, "text_targets")
                     if d["text_targets"] else None)  # fmt: skip
        self.negatives = (_open_targets(d["hard_negatives"], store, "hard_negatives")
                          if d["hard_negatives"] else None)  # fmt: skip
        if len(d["trials"]) != len(d["betas"]) or not d["trials"]:
            raise HeadsError("data.trials and data.betas need one entry per subject "
                             f"(got {len(d['trials'])} and {len(d['betas'])}).")  # fmt: skip
        self.names = list(d["subject_names"]) or [f"subj{i + 1}" for i in range(len(d["trials"]))]
        self.subjects = []
        for name, trials_path, betas_path in zip(self.names, d["trials"], d["betas"], strict=True):
            split = split_trials(read_trials(trials_path), d["num_sessions"])
            betas = Betas(betas_path, preload=d["preload_betas"])
            used = np.concatenate([split.train[:, BETAS_ROW], *split.test_rows]).astype(np.int64)
            if used.size and used.max() >= len(betas):
                raise HeadsError(f"{name}: the trial table points at betas row {used.max()}, but "
                                 f"{betas.path} has {len(betas)} rows.")  # fmt: skip
            images = np.concatenate([split.train[:, IMAGE], split.test_images]).astype(np.int64)
            _check_covered(self.targets, np.unique(images), "image_targets")
            self.subjects.append({"name": name, "split": split, "betas": betas})
        self.n_voxels = [s["betas"].n_voxels for s in self.subjects]
        all_images = np.unique(np.concatenate([
            np.concatenate([s["split"].train[:, IMAGE], s["split"].test_images])
            for s in self.subjects
        ]).astype(np.int64))  # fmt: skip
        self._check_text(all_images)
        n_tokens, dim = self.targets.row_shape
        self.text_dim = self.text.row_shape[0] if self.text is not None else None
        try:
            self.model = MindEyeModel(
                n_voxels=self.n_voxels, hidden=m["hidden"], n_blocks=m["n_blocks"],
                clip_tokens=n_tokens, clip_dim=dim, text_dim=self.text_dim,
                text_hidden=m["text_hidden"], dropout=m["dropout"], residual=m["residual"],
            )  # fmt: skip
        except ValueError as e:
            raise HeadsError(f"model config: {e}") from None
        self.per_subject = t["batch_size"] // len(self.subjects)
        if self.per_subject < 1:
            raise HeadsError(f"train.batch_size {t['batch_size']} is smaller than the number of "
                             f"subjects ({len(self.subjects)}).")  # fmt: skip
        self.text_index = (
            {k: i for i, k in enumerate(self.text.ids.tolist())} if self.text is not None else {}
        )
        self.device = torch.device("cpu")

    def _check_text(self, images: np.ndarray) -> None:
        if self.text is None:
            return
        if len(self.text.row_shape) != 1:
            raise HeadsError(f"data.text_targets has rows {self.text.row_shape}; TextAlign needs "
                             f"one vector per image (e.g. clip-l-text `pooled`).")  # fmt: skip
        covered = self.text.contains(images)
        if not covered.any():
            raise HeadsError(
                f"data.text_targets ({self.text.key}) shares no ids with the trial images; its "
                f"ids look like {self.text.ids[:3].tolist()}, but TextAlign keys texts by NSD 73k "
                f"image index."
            )
        if self.negatives is not None:
            _check_covered(self.negatives, images[covered], "hard_negatives")

    # -- data -----------------------------------------------------------------------------------
    def steps_per_epoch(self) -> int:
        return min(len(s["split"].train) for s in self.subjects) // self.per_subject

    def _targets(self, image_ids: np.ndarray) -> np.ndarray:
        return self.targets.gather(self.targets.positions(image_ids))

    def _text(
        self, image_ids: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        if self.text is None:
            return np.zeros(len(image_ids), bool), None, None
        rows = np.array([self.text_index.get(int(i), -1) for i in image_ids])
        covered = rows >= 0
        if not covered.any():
            return covered, None, None
        pos = self.text.gather(rows[covered])
        neg = self.negatives.gather(self.negatives.positions(image_ids[covered])) if (
            self.negatives is not None) else None  # fmt: skip
        return covered, pos, neg

    def batches(self, epoch: int, rng: np.random.Generator):
        orders = [rng.permutation(len(s["split"].train)) for s in self.subjects]
        n = self.per_subject
        for step in range(self.steps_per_epoch()):
            voxels, images = [], []
            for s, order in zip(self.subjects, orders, strict=True):
                trials = s["split"].train[order[step * n : (step + 1) * n]]
                voxels.append(s["betas"].read(trials[:, BETAS_ROW].astype(np.int64)))
                images.append(trials[:, IMAGE].astype(np.int64))
            image_ids = np.concatenate(images)
            covered, text_pos, text_neg = self._text(image_ids)
            yield {"voxels": voxels, "targets": self._targets(image_ids), "covered": covered,
                   "text": text_pos, "negatives": text_neg}  # fmt: skip

    # -- loss -----------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], progress: Progress):
        L = self.cfg["loss"]
        dev = self.device
        voxels = [torch.from_numpy(v).to(dev).unsqueeze(1) for v in batch["voxels"]]
        targets = torch.from_numpy(batch["targets"]).to(dev).float()
        mixup_epochs = int(L["mixup_pct"] * progress.epochs)
        mixup = progress.epoch < mixup_epochs
        if mixup:
            voxels, perm, betas, select = mixco_per_subject(
                voxels, beta=L["mixco_beta"], s_thresh=L["mixco_s_thresh"]
            )
        out = self.model(voxels)
        pred = F.normalize(out["clip_voxels"].flatten(1).float(), dim=-1)
        targ = F.normalize(targets.flatten(1), dim=-1)
        if mixup:
            loss_clip = mixco_nce(pred, targ, temp=L["mixco_temp"], perm=perm, betas=betas,
                                  select=select)  # fmt: skip
        else:
            temp = soft_clip_temperature(
                progress.epoch, progress.epochs, L["mixup_pct"],
                L["softclip_temp_start"], L["softclip_temp_end"],
            )  # fmt: skip
            loss_clip = soft_clip_loss(pred, targ, temp=temp)
        loss = L["clip_scale"] * loss_clip
        parts = {"loss_clip": loss_clip.item(), "mixup": float(mixup)}
        covered = batch["covered"]
        if batch["text"] is not None and out["text"] is not None:
            mask = torch.from_numpy(covered).to(dev)
            t_pred = F.normalize(out["text"][mask].float(), dim=-1)
            t_pos = F.normalize(torch.from_numpy(batch["text"]).to(dev).float(), dim=-1)
            negs = batch["negatives"]
            negs = (F.normalize(torch.from_numpy(negs).to(dev).float(), dim=-1)
                    if negs is not None else None)  # fmt: skip
            loss_text = info_nce(t_pred, t_pos, L["text_temp"], negatives=negs)
            loss = loss + L["text_scale"] * loss_text
            parts["loss_text"] = loss_text.item()
        parts["text_covered"] = float(covered.mean()) if len(covered) else 0.0
        return loss, parts

    # -- evaluation -----------------------------------------------------------------------------
    @torch.no_grad()
    def test_embeddings(self, subject: int = 0) -> dict[str, Any]:
        """Outputs averaged over each test image's repeats, with the image's targets."""
        s = self.subjects[subject]
        split = s["split"]
        brain, text = [], []
        for rows in split.test_rows:
            v = torch.from_numpy(s["betas"].read(rows)).to(self.device).unsqueeze(1)
            backbone, clip_voxels = self.model.backbone(self.model.ridge(v, subject))
            brain.append(clip_voxels.float().mean(0))  # outputs averaged over repeats
            if self.model.text_head is not None:
                text.append(self.model.text_head(backbone).float().mean(0))
        images = split.test_images
        result = {
            "images": images,
            "brain": F.normalize(torch.stack(brain).flatten(1), dim=-1).cpu(),
            "targets": F.normalize(
                torch.from_numpy(self._targets(images)).float().flatten(1), dim=-1
            ),  # fmt: skip
        }
        covered, pos, _ = self._text(images)
        if text and pos is not None:
            result["text_covered"] = covered
            result["text_pred"] = F.normalize(
                torch.stack(text)[torch.from_numpy(covered)], dim=-1
            ).cpu()
            result["text_true"] = F.normalize(torch.from_numpy(pos).float(), dim=-1)
        return result

    def evaluate(self) -> dict[str, float]:
        e = self.cfg["eval"]
        emb = self.test_embeddings(0)
        scores = retrieval_scores(emb, way=e["quick_way"], draws=1, seed=e["seed"])
        return {k: v["mean"] for k, v in scores.items()}


def _top1(sim: torch.Tensor) -> float:
    """Share of rows whose best column is the diagonal."""
    return (sim.argmax(1) == torch.arange(len(sim))).float().mean().item()


def retrieval_scores(emb: dict[str, Any], way: int, draws: int, seed: int) -> dict[str, dict]:
    """N-way top-1 over random draws of test images: mean, 95% CI half-width, chance.

    ``image_retrieval``: for each brain embedding, is its image the most similar of the candidate
    images (MindEye2's "fwd", reported as image retrieval); ``brain_retrieval``: for each image, is
    its brain embedding the most similar of the candidates ("bwd"). ``text_retrieval``: TextAlign's
    predicted text feature against the true ones of covered images.
    """
    rng = np.random.default_rng(seed)
    n = len(emb["images"])
    k = min(way, n)
    image, brain, text = [], [], []
    n_text = len(emb["text_true"]) if "text_true" in emb else 0
    k_text = min(way, n_text)
    for _ in range(draws):
        pick = torch.from_numpy(rng.choice(n, size=k, replace=False))
        sim = emb["brain"][pick] @ emb["targets"][pick].T  # [brain, image]
        image.append(_top1(sim))  # rows: brain embeddings -> which image?
        brain.append(_top1(sim.T))  # rows: images -> which brain embedding?
        if k_text >= 2:
            tp = torch.from_numpy(rng.choice(n_text, size=k_text, replace=False))
            text.append(_top1(emb["text_pred"][tp] @ emb["text_true"][tp].T))

    def summary(values: list[float], way_: int) -> dict[str, float]:
        arr = np.asarray(values)
        ci = 1.96 * arr.std(ddof=1) / np.sqrt(len(arr)) if len(arr) > 1 else 0.0
        return {"mean": float(arr.mean()), "ci95": float(ci), "way": way_, "chance": 1 / way_}

    out = {"image_retrieval": summary(image, k), "brain_retrieval": summary(brain, k)}
    if text:
        out["text_retrieval"] = summary(text, k_text)
    return out


def final_evaluation(head: MindEyeHead, run_dir: Path) -> dict[str, Any]:
    """30 draws of 300-way retrieval per subject (mean ± 95% CI), TextAlign top-1; writes
    ``eval.json`` and ``plots/eval.png``."""
    import json

    e = head.cfg["eval"]
    head.model.eval()
    report: dict[str, Any] = {"subjects": {}}
    for i, s in enumerate(head.subjects):
        emb = head.test_embeddings(i)
        scores = retrieval_scores(emb, way=e["way"], draws=e["draws"], seed=e["seed"])
        scores["n_test_images"] = len(emb["images"])
        report["subjects"][s["name"]] = scores
        if i == 0:
            first = emb
    (Path(run_dir) / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    _plot_eval(head, first, report, Path(run_dir) / "plots" / "eval.png")
    return report


def _plot_eval(head: MindEyeHead, emb: dict[str, Any], report: dict[str, Any], out: Path) -> None:
    """Accuracy bars with CIs and chance, and (with data.images) test images beside the images
    retrieved for their brain embeddings."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name, scores = next(iter(report["subjects"].items()))
    metrics = [k for k in ("image_retrieval", "brain_retrieval", "text_retrieval") if k in scores]
    images_path = head.cfg["data"]["images"]
    rows = 4 if images_path else 0
    fig = plt.figure(figsize=(10, 3.2 + 1.6 * rows))
    ax = fig.add_subplot(1 + rows, 1, 1) if rows else fig.add_subplot(1, 1, 1)
    means = [scores[m]["mean"] for m in metrics]
    ax.bar(metrics, means, yerr=[scores[m]["ci95"] for m in metrics], capsize=4, color="#4c72b0")
    for j, m in enumerate(metrics):
        ax.hlines(scores[m]["chance"], j - 0.4, j + 0.4, colors="red", linestyles="--")
        ax.text(j, means[j] + 0.02, f"{means[j]:.1%} ({scores[m]['way']}-way)", ha="center")
    ax.set(ylim=(0, 1.1), ylabel="top-1", title=f"{name}: retrieval (red: chance)")
    if rows:
        import h5py

        sim = emb["brain"] @ emb["targets"].T
        best = sim.argsort(dim=1, descending=True)[:, :4]
        with h5py.File(images_path, "r") as f:
            data = f["images"]
            for r in range(min(rows, len(emb["images"]))):
                ids = [int(emb["images"][r])] + [int(emb["images"][c]) for c in best[r]]
                for c, image_id in enumerate(ids):
                    axi = fig.add_subplot(1 + rows, 5, 5 * (r + 1) + c + 1)
                    axi.imshow(np.clip(data[image_id].astype(np.float32).transpose(1, 2, 0), 0, 1))
                    axi.set_axis_off()
                    axi.set_title("seen" if c == 0 else f"retrieved {c}", fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def build(cfg: dict[str, Any]) -> MindEyeHead:
    return MindEyeHead(cfg)


register_head(
    HeadSpec(
        "mindeye",
        "MindEye2 ridge + MLP backbone to bigG tokens, with TextAlign (NSD fMRI)",
        Path(__file__).with_name("mindeye.toml"),
        build,
        final_evaluation,
    )
)
