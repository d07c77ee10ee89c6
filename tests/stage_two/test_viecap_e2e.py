"""ViECap end to end on tiny synthetic COCO-layout data: train, resume, evaluate, caption, and
the errors bad input gets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from featstore import Store
from featstore.extract import extract
from featstore.sources import open_source
from featstore.teachers import create_teacher
from featstore_cli.heads_app import app, mount_head_commands
from heads import ConfigError, DataError, runs
from heads import checkpoint as ckpt
from heads.tracking import read_metrics

runner = CliRunner()


def quiet(*_):
    pass


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from heads.zoo.viecap.demo import prepare

    root = tmp_path_factory.mktemp("viecap")
    cfg = prepare(root, log=quiet, n_train=24, n_val=4, n_test=4)
    sets = {
        "data.val_captions": 10,
        "model.lm_layers": 1,
        "model.lm_width": 32,
        "model.num_layers": 1,
        "train.epochs": 2,
        "train.batch_size": 20,
        "train.warmup_steps": 2,
        "train.log_every": 1,
        "eval.meteor": False,
        "eval.beam_width": 2,
        "eval.max_length": 12,
    }
    flat = {f"{s}.{k}": v for s, section in cfg.items() for k, v in section.items()}
    flat.update(sets)
    return {"root": root, "sets": [f"{k}={json.dumps(v)}" for k, v in flat.items()], "cfg": cfg}


def plan(data, tmp_path, *extra, name="run"):
    return runs.plan_training("viecap", overrides=[*data["sets"], *extra], run_dir=tmp_path / name)


def train(p, **kw):
    return runs.run_training(p, progress=False, log=quiet, **kw)


def test_trains_resumes_exactly_and_evaluates(data, tmp_path):
    straight = plan(data, tmp_path, name="straight")
    summary = train(straight)
    records = read_metrics(straight.run_dir)
    losses = [r["train_loss"] for r in records if "train_loss" in r]
    assert len(losses) == 2 and losses[1] < losses[0]  # 6 steps per epoch
    assert "val_loss" in summary
    cut = plan(data, tmp_path, name="cut")
    train(cut, stop_after_epoch=1)
    train(runs.plan_resume("viecap", cut.run_dir))
    a = ckpt.read_weights(ckpt.weights_file(straight.run_dir))
    b = ckpt.read_weights(ckpt.weights_file(cut.run_dir))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # masks, noise too
    assert "gpt.transformer.wte.weight" in a and "mapping_network.prefix_const" in a

    report, _ = runs.evaluate_run("viecap", straight.run_dir)
    m = report.metrics
    assert m["n_images"] == 4 and m["split"] == "test"
    assert {"BLEU-4", "ROUGE-L", "CIDEr"} <= set(m) and "METEOR" in m["unavailable"]
    results = json.loads((straight.run_dir / "eval" / "test_results.json").read_text())
    assert [set(r) for r in results] == [{"image_id", "caption"}] * 4  # COCO results format
    per_image = json.loads((straight.run_dir / "eval" / "test_captions.json").read_text())
    assert {"entities", "probs", "references", "scores", "file"} <= set(per_image[0])
    assert (straight.run_dir / "plots" / "captions.png").stat().st_size > 0


def test_frozen_lm_trains_only_the_mapping(data, tmp_path):
    p = plan(data, tmp_path, "model.frozen_lm=true", "train.epochs=1")
    train(p)
    saved = ckpt.read_weights(ckpt.weights_file(p.run_dir))
    assert saved and all(k.startswith("mapping_network.") for k in saved)
    head, model, _ = runs.load_trained("viecap", p.run_dir)  # the LM comes back from the config
    model.train()
    assert not model.gpt.training and model.mapping_network.training


def test_masking_draws_depend_on_seed_epoch_and_caption_only(data, tmp_path):
    p = plan(data, tmp_path)
    head = p.head(p.cfg)
    ds = head.train_dataset()
    n = len(ds)
    one = ds.__getitems__([n + 3, n + 5])  # epoch 1, captions 3 and 5
    alone = ds.__getitems__([n + 5])
    assert torch.equal(one["tokens"][1, : alone["tokens"].shape[1]], alone["tokens"][0])
    plan0 = head.batch_plan(0, np.random.default_rng(0), 20, n)
    assert all(0 <= i < n for b in plan0 for i in b)
    assert all(
        n <= i < 2 * n for b in head.batch_plan(1, np.random.default_rng(0), 20, n) for i in b
    )


def test_entities_of_other_splits_reuse_the_cache(data, tmp_path, monkeypatch):
    """A second run over another subset of the captions tags only the captions it adds."""
    from heads.zoo.viecap import entities as ent

    objects = tmp_path / "objects.txt"  # a vocabulary of this test's own: a sidecar of its own
    words = Path(data["cfg"]["data"]["objects"]).read_text().split()
    objects.write_text("\n".join([*words, "zebra"]) + "\n")
    tagged = []
    real = ent.vocabulary_nouns
    monkeypatch.setattr(ent, "vocabulary_nouns", lambda t, o: tagged.append(t) or real(t, o))

    def head_of(*extra):
        tagged.clear()
        p = plan(data, tmp_path, f"data.objects={json.dumps(str(objects))}",
                 'data.entity_tagger="vocabulary"', *extra)  # fmt: skip
        head = p.head(p.cfg)
        return head, {r: head.entities[r] for r in head.train_rows.tolist()}, len(tagged)

    first, train_entities, n = head_of('data.train_splits="train"', "data.val_captions=0")
    assert n == len(first.train_rows) == 120
    second, again, n = head_of('data.train_splits="train+val"', 'data.val_splits="test"')
    assert n == 20 + 10  # the val captions now trained on, 10 test captions for validation
    assert {r: again[r] for r in train_entities} == train_entities
    assert any(train_entities.values())
    _, _, n = head_of('data.train_splits="train+val"', 'data.val_splits="test"')
    assert n == 0


def test_an_empty_detection_vocabulary_is_a_clear_error(data, tmp_path, monkeypatch):
    from featstore import open_entry
    from featstore.errors import SourceError
    from heads.zoo.viecap import head as head_mod
    from heads.zoo.viecap.evaluation import caption_vectors

    empty = tmp_path / "categories.json"
    empty.write_text("[]")
    with pytest.raises(SourceError, match="holds no entities"):  # featstore refuses to extract it
        open_source(empty, kind="vocabulary")
    store = Store(data["cfg"]["data"]["store"])
    real = open_entry(data["cfg"]["eval"]["vocab_entry"], store)

    class NoRows:  # a zero-row vocab entry, as a store written by other tools could hold
        key, row_shape, ids = real.key, real.row_shape, real.ids[:0]

        def __len__(self):
            return 0

        def gather(self, rows):
            return real.gather(rows)

    opened = head_mod.open_feature_entry
    monkeypatch.setattr(
        head_mod,
        "open_feature_entry",
        lambda key, st, what: NoRows() if what == "eval.vocab_entry" else opened(key, st, what),
    )
    p = plan(data, tmp_path)
    head = p.head(p.cfg)
    model = head.build_model().eval()
    features = np.ones((2, head.text.row_shape[0]), np.float32)
    with pytest.raises(DataError, match=r"eval.vocab_entry \(\w+\) holds no entities"):
        caption_vectors(head, model, features)
    head.cfg["eval"]["use_entities"] = False  # the way out the error names
    assert len(caption_vectors(head, model, features)) == 2


def colourful(png) -> int:
    """Pixels of a grid that are neither white, grey nor black: the (flat colour) images."""
    from PIL import Image

    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    return int((rgb.max(-1) - rgb.min(-1) > 40).sum())


def test_caption_command_on_a_folder_and_an_entry(data, tmp_path):
    p = plan(data, tmp_path, "train.epochs=1")
    train(p)
    mount_head_commands()
    images = data["root"] / "val2014"
    result = runner.invoke(app, ["caption", "viecap", str(p.run_dir), "--images", str(images)])
    assert result.exit_code == 0, result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("COCO_val2014_")]
    assert len(lines) == 4 and "wrote" in result.output.splitlines()[-1]
    saved = json.loads((p.run_dir / "captions" / "val2014.json").read_text())
    assert {"id", "caption", "entities", "probs"} <= set(saved[0])
    assert "and val2014.png" in result.output
    assert colourful(p.run_dir / "captions" / "val2014.png") > 1000  # the images are drawn
    key = data["cfg"]["eval"]["image_entry"]
    greedy = runner.invoke(
        app, ["caption", "viecap", str(p.run_dir), "--entry", key, "--greedy", "--no-entities",
              "--out", str(tmp_path / "greedy.json")]
    )  # fmt: skip
    assert greedy.exit_code == 0, greedy.output
    assert colourful(tmp_path / "greedy.png") > 1000  # the entry's source folder is known
    from heads.zoo.viecap.evaluation import caption_grid

    text_only = caption_grid([{"file": s["id"], **s} for s in saved], None, tmp_path, "t.png")
    assert colourful(text_only) == 0  # no folder: captions and entities only
    both = runner.invoke(
        app, ["caption", "viecap", str(p.run_dir), "--entry", key, "--images", str(images)]
    )
    assert both.exit_code == 1 and "exactly one of --images DIR or --entry KEY" in both.output


def test_caption_ids_missing_from_the_entry(data, tmp_path):
    store = Store(data["cfg"]["data"]["store"])
    captions = data["cfg"]["data"]["captions"]
    part = extract(
        create_teacher("vitb32-text-tiny", weights="random"),
        open_source(captions, ids=list(range(0, 40))),
        store,
        progress=False,
        log=quiet,
    )
    p = plan(data, tmp_path, f"data.text_entry={json.dumps(part.entries[0].key)}")
    with pytest.raises(DataError, match=r"80 of 120 train\+restval caption ids are missing"):
        p.head(p.cfg)


def test_bad_inputs_are_one_clear_error(data, tmp_path):
    def head_of(*extra):
        p = plan(data, tmp_path, *extra)
        return p.head(p.cfg)

    with pytest.raises(ConfigError, match="data.captions is not set"):
        head_of('data.captions=""')
    with pytest.raises(ConfigError, match="data.text_entry is not set"):
        head_of('data.text_entry=""')
    empty = tmp_path / "objects.txt"
    empty.write_text("\n")
    with pytest.raises(DataError, match="holds no single-word objects"):
        head_of(f"data.objects={json.dumps(str(empty))}")
    with pytest.raises(DataError, match="120 of 120 .* caption ids are missing"):
        head_of(f"data.text_entry={json.dumps(data['cfg']['eval']['image_entry'])}")
    # images without features: an image entry over part of the folder
    store = Store(data["cfg"]["data"]["store"])
    some = extract(
        create_teacher("vitb32-image-tiny", weights="random"),
        open_source(data["root"] / "val2014", kind="image-folder").select(row_range="0:2"),
        store,
        progress=False,
        log=quiet,
    )
    from heads.zoo.viecap.evaluation import match_images

    head = head_of()
    from featstore import open_entry

    test_ids = list(head.captions.references("test"))
    with pytest.raises(DataError, match="2 of 4 images have no features in eval.image_entry"):
        match_images(open_entry(some.entries[0].key, store), head.captions.files, test_ids)
    result = runner.invoke(app, ["train", "viecap", "--set", "model.prompt_order=sideways",
                                 *[x for s in data["sets"] for x in ("--set", s)],
                                 "--run-dir", str(tmp_path / "bad")])  # fmt: skip
    assert result.exit_code == 1 and "prompt_order" in result.output
    assert not (tmp_path / "bad").exists()
