"""NeuroBridge end to end on synthetic TVSD files in the original layouts: alignment, region
selection, the validation split, early stopping, pretraining → alignment with --init-from,
the adapter and its conditioning export, the region ablation, and the bad inputs."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from featstore_cli.heads_app import app, mount_head_commands
from heads import config as config_mod
from heads import get_head, recipe, runs
from heads.checkpoint import read_weights
from heads.data.tvsd import NormMUA, select_electrodes
from heads.errors import ConfigError, DataError, HeadsError
from heads.head import Progress
from heads.tracking import read_metrics
from heads.train import train
from heads.zoo.neurobridge.demo import DemoSize, prepare, run_demo, write_toml
from heads.zoo.neurobridge.head import electrode_mask, seeded_split
from heads.zoo.neurobridge.synthetic import planted_mua, write_normmua, write_things_imgs

runner = CliRunner()
N_TRAIN, N_TEST = 60, 12
TINY = {
    "model": {"dim": 16, "depth": 1, "dim_head": 8, "self_heads": 2, "num_latents": 4,
              "readout_queries": 2, "projector_hidden": 16, "adapter_hidden": 24,
              "adapter_tokens": 4, "adapter_heads": 2, "adapter_depth": 1},
    "train": {"epochs": 2, "batch_size": 24, "log_every": 1, "lr": 1e-3},
    "eval": {"batch_size": 16},
}  # fmt: skip


def quiet(*_):
    pass


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Synthetic THINGS images, things_imgs.mat and THINGS_normMUA.mat; stage one run."""
    root = tmp_path_factory.mktemp("tvsd")
    sections = prepare(root, log=quiet, n_train=N_TRAIN, n_test=N_TEST)
    for name, values in TINY.items():
        sections.setdefault(name, {}).update(values)
    return root, sections


def make_cfg(dataset, recipe_name="default", **changes):
    _, sections = dataset
    cfg = config_mod.merge(recipe(get_head("neurobridge"), recipe_name), sections)
    return config_mod.merge(cfg, changes)


def quiet_train(cfg, run_dir, **kw):
    head = get_head("neurobridge")(cfg)
    return head, train(head, cfg, run_dir, progress=False, log=quiet, **kw)


@pytest.fixture(scope="module")
def align_run(data, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "align"
    head, summary = quiet_train(make_cfg(data), run)
    return run, head, summary


def test_alignment_trains_and_evaluates(align_run):
    run, head, summary = align_run
    records = [r for r in read_metrics(run) if r.get("eval")]
    assert len(records) == 2
    assert {"val_top1", "val_top5", "val_loss", "val_n2i_top5_all"} <= set(records[-1])
    assert summary["best"] == max(r["val_top5"] for r in records)
    steps = [r for r in read_metrics(run) if "loss" in r and "temperature" in r]
    assert steps and np.isfinite(steps[-1]["loss"])
    result = runner.invoke(app, ["eval", "neurobridge", str(run)])
    assert result.exit_code == 0, result.output
    assert "neural -> image: top-1" in result.output and "electrodes: 1024" in result.output
    metrics = json.loads((run / "eval.json").read_text())
    for k in ("n2i_top1", "n2i_top5", "n2i_top10", "i2n_top1", "i2n_top5", "i2n_top10"):
        assert 0 <= metrics[k] <= 1
    assert metrics["n_images"] == N_TEST
    assert metrics["electrodes"] == {"V1": 512, "V4": 192, "IT": 320}
    assert (run / "plots" / "retrieval.png").stat().st_size > 10_000  # bars + image grid
    saved = read_weights(run / "best.safetensors")["encoder.channels"]
    assert torch.equal(saved, torch.arange(1024))


def test_validation_matches_the_seed_definition():
    """val_top5: in-batch retrieval over the validation rows in batches of eval.batch_size,
    both directions averaged, then averaged over batches."""
    from heads.zoo.neurobridge.evaluation import in_batch_retrieval

    neural = torch.eye(6)
    image = torch.eye(6)[[1, 0, 2, 3, 4, 5]]  # first two swapped
    out = in_batch_retrieval(neural, image, batch_size=3)
    # batch 1: rows 0,1 miss top-1 both ways (1/3 right); batch 2: all right
    assert out["val_top1"] == pytest.approx((1 / 3 + 1) / 2)
    assert out["val_top5"] == 1.0  # k clipped to the batch of 3


def test_area_order_per_monkey(data):
    root, _ = data
    mua = NormMUA.open(root / "TVSD" / "monkeyF" / "THINGS_normMUA.mat")
    f_it = select_electrodes(mua, "F", "IT")
    assert f_it.channels.tolist() == list(range(512, 832))
    assert select_electrodes(mua, "F", "V4").channels.tolist() == list(range(832, 1024))
    n_v4 = select_electrodes(mua, "N", "V4")
    assert n_v4.channels.tolist() == list(range(512, 768))
    both = select_electrodes(mua, "N", "V4,IT")
    assert both.channels.tolist() == list(range(512, 1024))
    assert both.counts() == {"V4": 256, "IT": 256}
    assert len(select_electrodes(mua, "F", "all").channels) == 1024
    with pytest.raises(ConfigError, match="unknown area 'MT'"):
        select_electrodes(mua, "F", "MT")
    # quality: the planted SNR is highest in IT (lowest noise), lowest in V1
    good = select_electrodes(mua, "F", "all", snr_threshold=1.3)
    assert set(good.counts()) == {"IT"}
    reliable = select_electrodes(mua, "F", "all", reliab_threshold=0.5)
    assert set(reliable.counts()) == {"IT"}
    assert len(select_electrodes(mua, "F", "all", reliab_threshold=0.15).channels) == 1024
    with pytest.raises(DataError, match="no electrode of monkey F passes"):
        select_electrodes(mua, "F", "V1", snr_threshold=1.3)


def test_region_run_records_its_electrodes(data, tmp_path):
    cfg = make_cfg(data, data={"region": "V4"}, train={"epochs": 1})
    head, _ = quiet_train(cfg, tmp_path / "v4")
    assert head.selection.channels.tolist() == list(range(832, 1024))
    saved = read_weights(tmp_path / "v4" / "model.safetensors")
    assert saved["encoder.channels"].tolist() == list(range(832, 1024))
    assert saved["encoder.unit_emb.weight"].shape == (193, 8)


def test_split_by_image_is_the_seeds_random_split_and_by_concept_is_disjoint():
    ids = [f"c{i % 7}/c{i % 7}_{i:02d}b.jpg" for i in range(50)]
    split = seeded_split(ids, 0.1, "image", 42)
    train_part, val_part = torch.utils.data.random_split(
        range(50), [45, 5], generator=torch.Generator().manual_seed(42)
    )
    assert split.train.tolist() == list(train_part.indices)
    assert split.val.tolist() == list(val_part.indices)
    by_concept = seeded_split(ids, 0.3, "concept", 42)
    held = {ids[i].split("/")[0] for i in by_concept.val}
    assert len(held) == 2 and not held & {ids[i].split("/")[0] for i in by_concept.train}


def test_masking_loss_counts_only_masked_electrodes(data):
    """The pretraining loss: 25% of electrodes masked (zeroed and hidden), MSE on those only."""
    head = get_head("neurobridge")(make_cfg(data, "pretrain"))
    seen = {}

    class Fixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.pred = torch.nn.Parameter(torch.zeros(16, 1024))

        def forward(self, values, keep):
            seen.update(values=values, keep=keep)
            return self.pred

    batch = head.train_dataset().__getitems__(list(range(16)))
    model = Fixed()
    torch.manual_seed(3)
    loss, parts = head.loss(model, batch, Progress(0, 0, 1, 1, 1))
    loss.backward()
    torch.manual_seed(3)
    masked = electrode_mask(torch.Size([16, 1024]), 0.25, 0.5, torch.device("cpu"))
    assert torch.equal(seen["keep"], ~masked)
    assert (seen["values"][masked] == 0).all()
    assert (model.pred.grad[~masked] == 0).all() and (model.pred.grad[masked] != 0).all()
    assert loss.item() == pytest.approx((batch["mua"][masked] ** 2).mean().item(), rel=1e-5)
    assert parts["mask_fraction"].item() == pytest.approx(0.25, abs=0.02)


def test_early_stopping(data, tmp_path):
    """A run that cannot improve stops after train.patience evaluations."""
    cfg = make_cfg(data, train={"epochs": 8, "lr": 1e-12, "min_lr": 0.0, "patience": 2})
    _, summary = quiet_train(cfg, tmp_path / "stop")
    evals = [r for r in read_metrics(tmp_path / "stop") if r.get("eval")]
    assert len(evals) == 3 and summary["step"] < 8 * (54 // 24)


def test_pretrain_then_align_with_init_from(data, tmp_path):
    """Pretraining, then alignment from its encoder (--init-from; the recipe skips decoder.*),
    the encoder held still for its first epoch (the finetune recipe, the seed's V3)."""
    root, sections = data
    config = write_toml(sections, tmp_path / "tiny.toml")
    pre = runs.plan_training(
        "neurobridge", "pretrain", [config], ["train.epochs=1"], tmp_path / "pre"
    )
    runs.run_training(pre, progress=False, log=quiet)
    assert "val_masked_mse" in read_metrics(tmp_path / "pre")[-1]
    result = runner.invoke(app, ["eval", "neurobridge", str(tmp_path / "pre")])
    assert result.exit_code == 0 and "test masked MSE" in result.output, result.output
    plan = runs.plan_training(
        "neurobridge",
        "finetune",
        [config],
        ["train.epochs=1", "model.freeze_encoder_epochs=1"],
        tmp_path / "align",
        init_from=str(tmp_path / "pre"),
    )
    assert plan.cfg["train"]["init_skip"] == ["decoder.*"]  # the finetune recipe's
    runs.run_training(plan, progress=False, log=quiet)
    before = read_weights(tmp_path / "pre" / "best.safetensors")
    after = read_weights(tmp_path / "align" / "model.safetensors")
    encoder = [k for k in after if k.startswith("encoder.")]
    assert encoder and all(torch.equal(before[k], after[k]) for k in encoder)
    with pytest.raises(HeadsError, match="decoder"):  # without --init-skip: named, refused
        plan = runs.plan_training(
            "neurobridge", "default", [config], ["train.epochs=1"], tmp_path / "again",
            init_from=str(tmp_path / "pre"),
        )  # fmt: skip
        runs.run_training(plan, progress=False, log=quiet)


def test_adapter_and_conditioning_export(data, align_run, tmp_path):
    """The adapter recipe trains on the CLIP image embeddings; `heads condition` runs the
    alignment run's test embeddings through it: one [tokens, hidden] tensor per test image."""
    mount_head_commands()
    root, sections = data
    config = write_toml(sections, tmp_path / "tiny.toml")
    plan = runs.plan_training(
        "neurobridge", "adapter", [config], ["train.epochs=1"], tmp_path / "adapter"
    )
    runs.run_training(plan, progress=False, log=quiet)
    assert "val_cos_sim" in read_metrics(tmp_path / "adapter")[-1]
    out = tmp_path / "cond.safetensors"
    result = runner.invoke(
        app, ["condition", "neurobridge", str(align_run[0]), str(tmp_path / "adapter"),
              "--out", str(out)]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    tensors = read_weights(out)
    assert tensors["conditioning"].shape == (N_TEST, 4, 24)
    assert tensors["neural_embeddings"].shape[0] == N_TEST
    assert len(json.loads(out.with_suffix(".json").read_text())["ids"]) == N_TEST


def test_ablation_command_prints_the_seed_table(data, tmp_path):
    mount_head_commands()
    config = write_toml(data[1], tmp_path / "tiny.toml")
    out = tmp_path / "ablation"
    args = ["ablate", "neurobridge", "--region", "IT", "--region", "V1", "-c", str(config),
            "--set", "train.epochs=1", "--out-dir", str(out), "-q"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "| Region | Electrodes | Best Val Top-5 | Test N→I Top-1 |" in result.output
    assert "| IT | 320 |" in result.output and "| V1 | 512 |" in result.output
    rows = json.loads((out / "ablation.json").read_text())
    assert [r["region"] for r in rows] == ["IT", "V1"]
    assert (out / "ablation.png").is_file()
    again = runner.invoke(app, args)  # finished runs are reused, not retrained
    assert again.exit_code == 0 and "== region" not in again.output


# -- bad inputs ---------------------------------------------------------------------------------
def _copy_tvsd(root, tmp_path):
    dst = tmp_path / "TVSD"
    shutil.copytree(root / "TVSD", dst)
    return dst / "monkeyF"


def _rewrite_mua(monkey, **arrays):
    path = monkey / "THINGS_normMUA.mat"
    with h5py.File(path, "r") as f:
        current = {k: f[k][()] for k in f if not k.startswith("#")}
    current.update(arrays)
    write_normmua(path, {k: v for k, v in current.items() if v is not None})


def bad_v5(monkey):
    (monkey / "THINGS_normMUA.mat").write_bytes(
        b"MATLAB 5.0 MAT-file, Platform: PCWIN64".ljust(128)
    )


def bad_not_mat(monkey):
    (monkey / "THINGS_normMUA.mat").write_text("hello")


def bad_missing_field(monkey):
    _rewrite_mua(monkey, train_MUA=None)


def bad_shape(monkey):
    _rewrite_mua(monkey, test_MUA=np.zeros((1024, N_TEST), np.float32))


def bad_nan(monkey):
    with h5py.File(monkey / "THINGS_normMUA.mat", "r") as f:
        train = f["train_MUA"][()]
    train[3, 700] = np.nan
    _rewrite_mua(monkey, train_MUA=train)


def bad_rows(monkey):
    _rewrite_mua(monkey, train_MUA=np.zeros((N_TRAIN - 1, 1024), np.float32))


def bad_order(monkey):
    from featstore.sources.tvsd import read_things_paths

    path = monkey / "_logs" / "things_imgs.mat"
    train, test = read_things_paths(path, "train"), read_things_paths(path, "test")
    train[0], train[1] = train[1], train[0]
    write_things_imgs(path, train, test)


def bad_test_order(monkey):
    from featstore.sources.tvsd import read_things_paths

    path = monkey / "_logs" / "things_imgs.mat"
    train, test = read_things_paths(path, "train"), read_things_paths(path, "test")
    test[4], test[7] = test[7], test[4]
    write_things_imgs(path, train, test)


def bad_no_things(monkey):
    (monkey / "_logs" / "things_imgs.mat").unlink()


def bad_no_reliab(monkey):
    _rewrite_mua(monkey, reliab=None)


BAD = [
    (bad_v5, {}, "MATLAB v5/v7 MAT-file"),
    (bad_not_mat, {}, "not a MATLAB v7.3"),
    (bad_missing_field, {}, "has no train_MUA"),
    (bad_shape, {}, r"test_MUA has shape \[1024, 12\]"),
    (bad_nan, {}, "NaN/inf values on 1 electrodes \\(channels \\[700\\]\\)"),
    (bad_rows, {}, "lists 60 train images but .* has 59 train MUA rows"),
    (bad_order, {}, "does not pair with the train MUA rows: 2 ids differ, first at row 0"),
    (bad_test_order, {}, "does not pair with the test MUA rows: 2 ids differ, first at row 4"),
    (bad_no_things, {}, "things_imgs.mat does not exist"),
    (bad_no_reliab, {"data": {"reliab_threshold": 0.3}}, "has no 'reliab'"),
    (None, {"data": {"region": "V2"}}, "unknown area 'V2'"),
    (None, {"data": {"monkey": "X"}}, "data.monkey='X': use F or N"),
    (None, {"data": {"train_targets": ""}}, "data.train_targets is not set"),
    (None, {"data": {"train_targets": "nope"}}, "data.train_targets = 'nope'"),
    (None, {"model": {"kind": "decode"}}, "model.kind='decode'"),
    (None, {"loss": {"electrode_dropout": 1.0}}, "loss.electrode_dropout=1.0"),
    (None, {"data": {"val_split": "session"}}, "data.val_split='session'"),
]


@pytest.mark.parametrize("damage,changes,message", BAD)
def test_bad_inputs_are_one_clear_error(data, tmp_path, damage, changes, message):
    root, _ = data
    cfg = make_cfg(data, **changes)
    if damage is not None:
        monkey = _copy_tvsd(root, tmp_path)
        damage(monkey)
        cfg["data"]["normmua"] = str(monkey / "THINGS_normMUA.mat")
    with pytest.raises(HeadsError, match=message):
        get_head("neurobridge")(cfg)


def test_mismatched_targets_are_refused(data):
    _, sections = data
    swapped = {"train_targets": sections["data"]["test_targets"]}
    with pytest.raises(DataError, match="has 12 rows but the train MUA has 60 images"):
        get_head("neurobridge")(make_cfg(data, data=swapped))
    swapped = {"test_targets": sections["data"]["train_targets"]}
    with pytest.raises(DataError, match="test_targets .* has 60 rows but the test MUA has 12"):
        get_head("neurobridge")(make_cfg(data, data=swapped))


def test_eval_refuses_a_changed_electrode_set(data, tmp_path):
    """A run trained on the electrodes that passed an SNR threshold is not evaluated on another
    set of as many electrodes (the file's quality fields changed since): one clear error."""
    from heads.zoo.neurobridge.evaluation import check_channels

    root, _ = data
    monkey = _copy_tvsd(root, tmp_path)
    good = np.zeros((1, 1024))
    good[0, :320] = 2.0  # the first 320 V1 channels pass snr_threshold=1
    _rewrite_mua(monkey, SNR_max=good)
    changes = {"normmua": str(monkey / "THINGS_normMUA.mat"), "snr_threshold": 1.0}
    quiet_train(make_cfg(data, data=changes, train={"epochs": 1}), tmp_path / "run")
    report, _ = runs.evaluate_run("neurobridge", tmp_path / "run")  # unchanged file: evaluates
    assert report.metrics["electrodes"] == {"V1": 320}
    _rewrite_mua(monkey, SNR_max=np.roll(good, 512))  # now IT's 320 channels pass instead
    with pytest.raises(DataError, match="trained on 320 electrodes .* now selects 320"):
        runs.evaluate_run("neurobridge", tmp_path / "run")
    head, model, _ = runs.load_trained("neurobridge", tmp_path / "run")
    assert head.selection.channels.tolist() == list(range(512, 832))
    with pytest.raises(DataError, match="quality fields changed"):
        check_channels(head, model)


def test_ablation_needs_a_region(tmp_path):
    from heads.zoo.neurobridge.ablation import run_ablation

    with pytest.raises(ConfigError, match="no region to train: give --region"):
        run_ablation([], tmp_path)


def test_cli_error_leaves_no_run(data, tmp_path):
    config = write_toml(data[1], tmp_path / "tiny.toml")
    run = tmp_path / "never"
    result = runner.invoke(
        app, ["train", "neurobridge", "-c", str(config), "--set", "data.region=V9",
              "--run-dir", str(run)]
    )  # fmt: skip
    assert result.exit_code == 1
    assert "error: data.region='V9': unknown area 'V9'" in result.output
    assert not run.exists()


def test_planted_signal_orders_the_areas():
    """The demo's MUA: a linear read-out of the embeddings from each area's channels recovers
    them best from IT, then V4, then V1 (what the ablation must find)."""
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((1100, 24))
    mua = planted_mua(emb, 1000)
    from heads.data.tvsd import AREAS

    def fit(area):  # ridge regression from the area's channels back to the embeddings
        start, stop = AREAS["F"][area]
        x, y = mua["train_MUA"][:, start:stop], emb[:1000]
        w = np.linalg.solve(x.T @ x + 100 * np.eye(stop - start), x.T @ y)
        pred = mua["test_MUA"][:, start:stop] @ w
        return np.corrcoef(pred.ravel(), emb[1000:].ravel())[0, 1]

    scores = {a: fit(a) for a in ("IT", "V4", "V1")}
    assert scores["IT"] > scores["V4"] > scores["V1"] > 0


def test_the_demo_learns_in_the_planted_area_order(tmp_path):
    """The demo's whole pipeline (synthetic files, stage one, the ablation) at a reduced size:
    300 training and 50 test images, 25 epochs, IT and V1 only (about 30 s on one thread).
    Checked with data seeds 0, 1, 2: IT test top-5 58-68%, V1 20-38% (chance 10%)."""
    size = DemoSize(n_train=300, n_test=50, epochs=25, seed=0)
    report = run_demo(tmp_path, progress=False, log=quiet, size=size, regions=("IT", "V1"))
    rows = {r["region"]: r for r in report.metrics["ablation"]}
    chance = 5 / size.n_test
    assert rows["IT"]["n2i_top5"] >= 4 * chance
    assert rows["IT"]["n2i_top5"] >= rows["V1"]["n2i_top5"] + 0.1
    assert rows["IT"]["best_val_top5"] > rows["V1"]["best_val_top5"]
    assert "chance: top-1 2%, top-5 10%, top-10 20%" in report.lines


def test_test_mua_from_repeats(data):
    """eval.average_reps: the test MUA is the mean of test_MUA_reps (which test_MUA holds)."""
    from heads.zoo.neurobridge.evaluation import test_mua

    head = get_head("neurobridge")(make_cfg(data, eval={"average_reps": True}))
    plain = get_head("neurobridge")(make_cfg(data))
    assert head.mua.n_reps == 30
    assert np.allclose(test_mua(head), test_mua(plain), atol=1e-5)
