"""brain2text end to end on synthetic t15 files in the Dryad layout, with qwen-audio-tiny frames:
batches, training, exact resume, evaluation (val and the label-less test split), validation PER
on hand-checked decodes, the parameter groups, the day map saved in the run, and every bad input
the issue lists (short trials, with the random cut, included)."""

from __future__ import annotations

import csv
import json
import shutil

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from featstore import Store
from featstore.extract import extract
from featstore.sources import open_source
from featstore.teachers import create_teacher
from featstore_cli.heads_app import app
from heads import config as config_mod
from heads import get_head, recipe, runs
from heads.checkpoint import read_weights, weights_file
from heads.errors import ConfigError, DataError
from heads.train import train
from heads.zoo.brain2text.demo import prepare
from heads.zoo.brain2text.synthetic import write_dataset

runner = CliRunner()
SESSIONS = ("t15.2023.08.11", "t15.2023.08.13", "t15.2023.08.18")
SMALL = {
    "model": {"n_units": 16, "n_layers": 1, "patch_size": 4, "patch_stride": 2, "rnn_dropout": 0.0},
    "data": {"batches_per_epoch": 2, "days_per_batch": 2},
    "train": {"steps": 4, "batch_size": 4, "num_workers": 0, "log_every": 1, "warmup_steps": 0},
}


def quiet(*_):
    pass


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """3 sessions x (8 train, 3 val, 2 test) trials of 16 channels; stage one already run."""
    root = tmp_path_factory.mktemp("t15")
    trials = {"train": 8, "val": 3, "test": 2}
    overrides = prepare(root, log=quiet, sessions=SESSIONS, trials=trials, n_channels=16)
    return root, deep_update(overrides, SMALL)


def deep_update(base, update):
    out = {**base}
    for key, value in update.items():
        out[key] = deep_update(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


def make_cfg(overrides, *sets):
    cfg = config_mod.merge(recipe(get_head("brain2text")), overrides)
    return config_mod.resolve(cfg, [], list(sets))


def head_of(cfg):
    return get_head("brain2text")(cfg)


def run(cfg, run_dir, **kw):
    return train(head_of(cfg), cfg, run_dir, progress=False, log=quiet, **kw)


def test_batches_mix_days_and_match_the_audio_ids(dataset):
    _, overrides = dataset
    head = head_of(make_cfg(overrides, "train.batch_size=6"))
    plan = head.batch_plan(0, np.random.default_rng(0), 6, len(head.train_set))
    assert len(plan) == 2 and all(len(b) == 6 for b in plan)
    for rows in plan:
        days = head.train_table.day[rows]
        assert len(set(days.tolist())) == 2 and (days[:3] == days[0]).all()  # 3 trials per day
    batch = head.train_set.__getitems__(plan[0])
    t = head.train_table
    assert batch["features"].shape == (6, int(t.n_time_steps[plan[0]].max()), 16)
    assert batch["n_time_steps"].tolist() == t.n_time_steps[plan[0]].tolist()
    for j, row in enumerate(plan[0]):
        frames = head.audio.by_id(t.ids[row])
        assert batch["audio_lengths"][j] == len(frames)
        assert np.array_equal(batch["audio"][j, : len(frames)].numpy(), frames)
        n = int(batch["phoneme_lengths"][j])
        with h5py.File(t.files[t.file[row]]) as f:
            assert (
                batch["phonemes"][j, :n].tolist() == f[t.group[row]]["seq_class_ids"][:n].tolist()
            )
    assert head.sessions == list(SESSIONS)  # day = position in the sorted session list


def test_train_resume_and_evaluate(dataset, tmp_path):
    _, overrides = dataset
    cfg = make_cfg(overrides)
    straight = run(cfg, tmp_path / "straight")
    cut = tmp_path / "cut"
    run(make_cfg(overrides), cut, stop_after_epoch=1)
    saved = json.loads((cut / "config.json").read_text())
    assert saved["data"]["sessions"] == list(SESSIONS)  # the day map travels with the run
    resumed = runs.run_training(runs.plan_resume("brain2text", cut), progress=False, log=quiet)
    assert resumed == straight
    a, b = read_weights(weights_file(tmp_path / "straight")), read_weights(weights_file(cut))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert {"val_per", "val_ctc_loss", "val_align_loss", "best"} <= set(straight)

    report, _ = runs.evaluate_run("brain2text", cut)
    m = report.metrics
    assert (
        m["val_trials"] == 9 and m["val_per"] >= 0 and set(m["val_per_by_session"]) == set(SESSIONS)
    )
    with (cut / "predictions_val.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 9 and rows[0]["id"] == "t15.2023.08.11/val/trial_0000"
    assert rows[0]["sentence"].endswith(".") and rows[0]["true_phonemes"]
    assert (cut / "plots" / "eval_val.png").stat().st_size > 0

    result = runner.invoke(app, ["eval", "brain2text", str(cut)])
    assert result.exit_code == 0, result.output
    assert (
        f"val_per: {m['val_per']:.2%}" in result.output and "predictions_val.csv" in result.output
    )

    test, _ = runs.evaluate_run("brain2text", cut, ["eval.split=test"])
    assert "test_per" not in test.metrics and test.metrics["test_trials"] == 6
    assert any("no labels" in line for line in test.lines)
    with (cut / "predictions_test.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and "sentence" not in rows[0] and "pred_phonemes" in rows[0]


def test_ctc_only_baseline_needs_no_audio_entry(dataset, tmp_path):
    _, overrides = dataset
    cfg = make_cfg(overrides, "loss.alpha=0", 'data.audio=""')
    summary = run(cfg, tmp_path / "ctc")
    names = set(read_weights(weights_file(tmp_path / "ctc")))
    assert "val_align_loss" not in summary and not any(n.startswith("projector") for n in names)


# ------------------------------------------------------------------------------- bad inputs
def copy_root(dataset, tmp_path):
    root, overrides = dataset
    new = tmp_path / "hdf5_data_final"
    shutil.copytree(overrides["data"]["root"], new)
    return new, deep_update(overrides, {"data": {"root": str(new)}})


def test_trials_without_cached_audio(dataset, tmp_path):
    new, overrides = copy_root(dataset, tmp_path)
    write_dataset(tmp_path / "extra", ("t15.2024.01.01",), {"train": 5}, 16, seed=3)
    shutil.copytree(tmp_path / "extra" / "t15.2024.01.01", new / "t15.2024.01.01")
    with pytest.raises(DataError) as e:
        head_of(make_cfg(overrides))
    msg = str(e.value)
    key = overrides["data"]["audio"]
    assert "5 of 29 train trials have no cached audio" in msg and key in msg
    assert "t15.2024.01.01/train/trial_0000" in msg


def test_audio_entry_of_the_wrong_teacher_or_shape(dataset, tmp_path):
    root, overrides = dataset
    store = Store(overrides["data"]["store"])
    source = open_source(overrides["data"]["root"])
    pooled = extract(create_teacher("qwen-audio-tiny", weights="random"), source, store,
                     outputs=["pooled"], progress=False, log=quiet).entries[0].key  # fmt: skip
    with pytest.raises(DataError, match=r"'pooled' output .*use the ragged `frames` output"):
        head_of(make_cfg(overrides, f'data.audio="{pooled}"'))
    text = extract(create_teacher("clip-l-text-tiny", weights="random"), source, store,
                   outputs=["pooled"], progress=False, log=quiet).entries[0].key  # fmt: skip
    with pytest.raises(DataError, match="holds 'clip-l-text-tiny' features"):
        head_of(make_cfg(overrides, f'data.audio="{text}"'))
    with pytest.raises(ConfigError, match="data.audio is not set"):
        head_of(make_cfg(overrides, 'data.audio=""'))


def test_trial_shorter_than_one_patch(dataset, tmp_path):
    new, overrides = copy_root(dataset, tmp_path)
    path = new / SESSIONS[1] / "data_train.hdf5"
    with h5py.File(path, "a") as f:
        f["trial_0002"].attrs["n_time_steps"] = 3
    with pytest.raises(DataError) as e:
        head_of(make_cfg(overrides))
    assert "1 train trial(s) are shorter than one patch after the random cut" in str(e.value)
    assert f"{path} (trial_0002) with 3 steps" in str(e.value)
    head = head_of(make_cfg(overrides, "data.skip_short_trials=true", "loss.alpha=0"))
    assert len(head.train_table) == 23


def test_training_trials_keep_a_patch_after_the_largest_random_cut(dataset, tmp_path, monkeypatch):
    """Patch 14, cut up to 2: a 15-step training trial would be left with 13 steps (0 patches,
    an infinite CTC loss), so training needs 16; validation cuts nothing and keeps 14."""
    new, overrides = copy_root(dataset, tmp_path)
    train_file, val_file = (
        new / SESSIONS[1] / "data_train.hdf5",
        new / SESSIONS[0] / "data_val.hdf5",
    )
    with h5py.File(train_file, "a") as f:
        f["trial_0002"].attrs["n_time_steps"] = 15
    with h5py.File(val_file, "a") as f:
        f["trial_0001"].attrs["n_time_steps"] = 14
    sets = ("model.patch_size=14", "model.patch_stride=4")
    with pytest.raises(DataError) as e:
        head_of(make_cfg(overrides, *sets))
    assert (
        "1 train trial(s) are shorter than one patch after the random cut (14 + 2 = 16 steps); "
        f"first: {train_file} (trial_0002) with 15 steps"
    ) in str(e.value)
    skipping = head_of(make_cfg(overrides, *sets, "data.skip_short_trials=true"))
    assert len(skipping.train_table) == 23 and len(skipping.val_table) == 9  # val keeps its 14

    with h5py.File(train_file, "a") as f:
        f["trial_0002"].attrs["n_time_steps"] = 16
    head = head_of(make_cfg(overrides, *sets))
    row = int(np.flatnonzero(head.train_table.ids == f"{SESSIONS[1]}/train/trial_0002")[0])
    batch = head.train_set.__getitems__([row])
    monkeypatch.setattr(np.random, "randint", lambda low, high: high - 1)  # the largest cut
    x, n = head.prepare(batch, train=True)
    assert x.shape[1] == n.item() == 14
    assert head.build_model()(x, batch["day"], n)["lengths"].tolist() == [1]


def test_parameter_groups_are_the_baselines(dataset):
    """Day layers: their own LR scale and decay; every bias: no decay; the rest (h0 and the
    LayerNorm weight included): train.weight_decay. As AdamW groups, through the loop."""
    from heads.config import TrainConfig
    from heads.train import optimizer_groups

    _, overrides = dataset
    cfg = make_cfg(overrides, "optim.day_lr_scale=0.5", "optim.day_weight_decay=0.01")
    head = head_of(cfg)
    model = head.build_model()
    name_of = {id(p): n for n, p in model.named_parameters()}
    groups, held = optimizer_groups(head, model, TrainConfig.from_dict(cfg["train"]))
    assert held == []
    got = {g["name"]: ({name_of[id(p)] for p in g["params"]}, g["lr"], g["weight_decay"])
           for g in groups}  # fmt: skip
    days = {f"day_{kind}.{d}" for kind in ("weights", "biases") for d in range(3)}
    biases = {"gru.bias_ih_l0", "gru.bias_hh_l0", "out.bias", "projector.0.bias",
              "projector.1.bias"}  # fmt: skip
    rest = {"h0", "gru.weight_ih_l0", "gru.weight_hh_l0", "out.weight", "projector.0.weight",
            "projector.1.weight"}  # fmt: skip
    assert got == {
        "day": (days, 5e-3 * 0.5, 0.01),
        "bias": (biases, 5e-3, 0.0),
        "other": (rest, 5e-3, 1e-3),
    }
    assert days | biases | rest == set(name_of.values())  # every trainable tensor


def test_nan_features_name_the_file_and_trial(dataset, tmp_path):
    new, overrides = copy_root(dataset, tmp_path)
    path = new / SESSIONS[0] / "data_train.hdf5"
    with h5py.File(path, "a") as f:
        f["trial_0001/input_features"][5, 3] = np.nan
    head = head_of(make_cfg(overrides))
    with pytest.raises(DataError, match=r"trial_0001\): input_features holds NaN or inf .*step 5"):
        head.train_set.__getitems__([0, 1])


def test_unknown_session_at_evaluation_and_a_val_file_without_labels(dataset, tmp_path):
    new, overrides = copy_root(dataset, tmp_path)
    head = head_of(make_cfg(overrides))
    write_dataset(tmp_path / "extra", ("t15.2025.01.01",), {"test": 2}, 16, seed=4)
    shutil.copytree(tmp_path / "extra" / "t15.2025.01.01", new / "t15.2025.01.01")
    head = head_of(make_cfg(overrides, f"data.sessions={json.dumps(list(SESSIONS))}"))
    with pytest.raises(DataError, match=r"were not trained on.*t15\.2025\.01\.01"):
        head.eval_dataset("test")
    shutil.copy(new / SESSIONS[0] / "data_test.hdf5", new / SESSIONS[0] / "data_val.hdf5")
    with pytest.raises(DataError, match=r"in the val split has no labels .*only test files"):
        head_of(make_cfg(overrides, "loss.alpha=0"))


def test_labels_asked_of_the_test_split_are_one_clear_error(dataset):
    from heads.zoo.brain2text.data import Trials
    from heads.zoo.brain2text.evaluation import decode_split

    _, overrides = dataset
    head = head_of(make_cfg(overrides))
    test = head.eval_dataset("test")
    assert not test.labels and len(test) == 6  # what heads eval uses: predictions only
    where = f"{test.table.where(0)}: labels were asked of the test split, which has none"
    calls = {
        "phonemes": lambda: test.reader.phonemes(0),
        "transcription": lambda: test.reader.transcription(0),
        "batch with labels": lambda: Trials(test.table, labels=True),
        "PER of the test split": lambda: decode_split(head, head.build_model(), test, False, True),
    }
    for what, call in calls.items():
        with pytest.raises(DataError) as e:
            call()
        assert str(e.value).startswith(where), what
        assert "predictions only (eval.split=test)" in str(e.value), what


def write_paths(path, session, trials):
    """A t15 file whose features are one-hot CTC paths: ``trials`` = [(frame labels, true
    phonemes)], each label held for 3 steps, 41 channels (the classes)."""
    with h5py.File(path, "w") as f:
        for i, (frames, phones) in enumerate(trials):
            x = np.zeros((3 * len(frames), 41), dtype=np.float32)
            x[np.arange(len(x)), np.repeat(frames, 3)] = 10.0
            g = f.create_group(f"trial_{i:04d}")
            g.create_dataset("input_features", data=x)
            g.create_dataset("seq_class_ids", data=np.array(phones + [0] * 4, dtype=np.int32))
            g.create_dataset("transcription", data=np.array([ord("a"), 0], dtype=np.int32))
            g.attrs.update(n_time_steps=len(x), seq_len=len(phones), session=session)
            g.attrs["sentence_label"] = "a"


class PathModel(torch.nn.Module):
    """Logits = features: each trial decodes to the path written in its file."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, day, n_time_steps, text=None):
        return {"logits": x, "lengths": n_time_steps}


def test_validation_per_on_hand_checked_decodes(tmp_path):
    """decode_split's PER, per trial, per session and over the split, on paths decoded by hand:
    1 deletion in 4, "5 _ 5 6" -> 5 5 6 (1 insertion in 2: merge, then drop blanks), and 1
    substitution in 2 -> PER 3 / 8; sessions 2 / 6 and 1 / 2."""
    from heads.zoo.brain2text.evaluation import decode_split

    a, b = SESSIONS[:2]
    for session in (a, b):
        (tmp_path / session).mkdir()
        write_paths(tmp_path / session / "data_train.hdf5", session, [([1, 2], [1, 2])])
    write_paths(tmp_path / a / "data_val.hdf5", a,
                [([1, 1, 0, 3, 4], [1, 2, 3, 4]), ([5, 0, 5, 6, 0], [5, 6])])  # fmt: skip
    write_paths(tmp_path / b / "data_val.hdf5", b, [([8, 40], [7, 40])])
    cfg = make_cfg({}, f"data.root={json.dumps(str(tmp_path))}", "loss.alpha=0",
                   "model.n_input_features=41", "model.patch_size=0",
                   "augment.smooth_data=false", "data.days_per_batch=2")  # fmt: skip
    head = head_of(cfg)
    result = decode_split(head, PathModel(), head.val_set, generate=False)
    assert [r["edit_distance"] for r in result.rows] == [1, 1, 1]
    assert [r["pred_phonemes"] for r in result.rows] == ["AA AH AO", "AW AW AY", "CH |"]
    assert result.metrics["val_per"] == pytest.approx(3 / 8)
    assert result.sessions == pytest.approx({a: 2 / 6, b: 1 / 2})
    assert np.isfinite(result.metrics["val_ctc_loss"])


def test_config_errors_come_before_the_run_directory(dataset, tmp_path):
    _, overrides = dataset
    with pytest.raises(ConfigError, match="'val_per' is not reported"):
        head_of(make_cfg(overrides, "loss.gamma=0"))
    with pytest.raises(ConfigError, match="at least one positive"):
        head_of(make_cfg(overrides, "loss.gamma=0", "loss.alpha=0"))
    with pytest.raises(
        ConfigError, match=r"have 16 feature channels .*model.n_input_features=512; set it to 16"
    ):
        head_of(make_cfg(overrides, "model.n_input_features=512"))
    with pytest.raises(DataError, match="data.days_per_batch=5, but the training data has 3"):
        run(make_cfg(overrides, "data.days_per_batch=5"), tmp_path / "days")
    result = runner.invoke(
        app, ["train", "brain2text", "--run-dir", str(tmp_path / "cli"), "-q",
              "--set", f"data.root={tmp_path / 'nowhere'}"],
    )  # fmt: skip
    assert result.exit_code == 1
    assert "error: t15 data folder" in result.output and "does not exist" in result.output
    assert not (tmp_path / "cli").exists()
