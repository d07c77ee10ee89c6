"""Any Zarr v3 reader opens every array of every entry: each tiny teacher over each source kind
of its modality (every output), opened with tensorstore's zarr3 driver and with dask, equals
zarr-python. (Before: every string array - ids of text and path sources, string columns - failed
in tensorstore: ``data_type "string"`` is a zarr-python extension, not core Zarr v3.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from PIL import Image

from featstore import open_entry
from featstore.extract import extract
from featstore.sources import open_source
from featstore.store import Store
from featstore.teachers import create_teacher, list_teachers

ts = pytest.importorskip("tensorstore")
da = pytest.importorskip("dask.array")

TEACHERS = [s.name for s in list_teachers() if s.name.endswith("-tiny")]


def _sources(root: Path) -> dict[str, tuple[str, Path, dict]]:
    """Tiny files of every source kind: name -> (modality, path, source options)."""
    from conftest import make_nsd_hdf5
    from test_sources_more import COCO, TEST, TRAIN, write_t15, write_things_mat

    rng = np.random.default_rng(0)
    folder = root / "folder"
    (folder / "sub").mkdir(parents=True)
    for i, name in enumerate(["a.png", "sub/b.jpg", "c.png"]):
        Image.fromarray((rng.random((30 + 4 * i, 40, 3)) * 255).astype(np.uint8)).save(
            folder / name
        )
    things = root / "THINGS"
    for rel in TRAIN + TEST:
        file = things / rel.replace("\\", "/")
        file.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((rng.random((20, 24, 3)) * 255).astype(np.uint8)).save(file)
    texts = root / "texts.jsonl"
    texts.write_text("".join(json.dumps({"id": f"cap-{i}", "text": t}) + "\n"
                             for i, t in enumerate(["a red bus", "two dogs", "snow"])))  # fmt: skip
    coco = root / "annotations" / "captions_train2017.json"
    coco.parent.mkdir()
    coco.write_text(json.dumps(COCO))
    vocab = root / "vocab.txt"
    vocab.write_text("person\ndog\nbus\n")
    t15 = root / "hdf5_data_final"
    write_t15(t15 / "t15.2023.08.11" / "data_train.hdf5", "t15.2023.08.11",
              [(1, 0, "Where is it"), (1, 1, "I am here")])  # fmt: skip
    return {
        "nsd-images": ("image", make_nsd_hdf5(root / "images.hdf5", n=4), {}),
        "image-folder": ("image", folder, {}),
        "tvsd-images": ("image", write_things_mat(root / "things_imgs.mat", TRAIN, TEST),
                        {"images_root": str(things)}),
        "text-list": ("text", texts, {}),
        "t15-sentences": ("text", t15, {}),
        "coco-captions": ("text", coco, {}),
        "vocabulary": ("text", vocab, {}),
    }  # fmt: skip


@pytest.fixture(scope="module")
def every_entry(tmp_path_factory) -> tuple[Store, list[str]]:
    root = tmp_path_factory.mktemp("portability")
    store = Store(root / "store")
    keys = []
    sources = _sources(root)
    for name in TEACHERS:
        teacher = create_teacher(name, weights="random")
        for kind, (modality, path, options) in sources.items():
            if modality != teacher.modality:
                continue
            result = extract(teacher, open_source(path, kind=kind, **options), store,
                             outputs=list(teacher.outputs), batch_size=8, num_workers=0,
                             progress=False, log=lambda *_: None)  # fmt: skip
            keys += [e.key for e in result.entries]
    bigg = create_teacher("bigG-tiny", weights="random")
    keys += [e.key for e in extract(bigg, open_source(sources["image-folder"][1]), store,
                                    outputs=["embeds"], compression="lz4", num_workers=0,
                                    progress=False, log=lambda *_: None).entries]  # fmt: skip
    return store, keys


def test_every_array_opens_in_tensorstore_and_dask(every_entry):
    store, keys = every_entry
    assert len(keys) >= 4 * 3 + 4 * 4  # every tiny teacher over every source of its modality
    seen_dtypes = set()
    for key in keys:
        arrays = [p.parent for p in store.entry_path(key).rglob("zarr.json")
                  if json.loads(p.read_text())["node_type"] == "array"]  # fmt: skip
        for path in arrays:
            want = zarr.open_array(str(path), mode="r")[...]
            spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path)}}
            got_ts = ts.open(spec, read=True).result().read().result()
            got_da = da.from_zarr(str(path)).compute()
            assert got_ts.dtype == want.dtype and got_da.dtype == want.dtype, path
            np.testing.assert_array_equal(got_ts, want, err_msg=str(path))
            np.testing.assert_array_equal(got_da, want, err_msg=str(path))
            seen_dtypes.add(str(want.dtype))
    assert {"uint8", "int64", "uint32", "float16"} <= seen_dtypes


def test_strings_decode_to_the_source_ids(every_entry):
    store, keys = every_entry
    by_kind = {}
    for key in keys:
        e = open_entry(key, store)
        by_kind.setdefault(e.meta.source["kind"], e)
    assert by_kind["text-list"].ids.tolist() == ["cap-0", "cap-1", "cap-2"]
    assert by_kind["image-folder"].ids.tolist() == ["a.png", "c.png", "sub/b.jpg"]
    t15 = by_kind["t15-sentences"]
    assert t15.column("split").tolist() == ["train", "train"]
    # the same strings straight from the Zarr arrays, without featstore
    group = zarr.open_group(str(t15.path), mode="r")
    utf8, offsets = group["ids/utf8"][:], group["ids/offsets"][:]
    first = utf8[offsets[0] : offsets[1]].tobytes().decode("utf-8")
    assert first == "t15.2023.08.11/train/trial_0000"
