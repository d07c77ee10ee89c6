"""Dataset sources built from tiny files in the original layouts: t15 sentences (Dryad HDF5),
COCO / Karpathy captions (+ NSD stimulus info), TVSD's things_imgs.mat (MATLAB v7.3) and entity
vocabularies. Ids, order, columns, selection, every bad input, and extraction end to end."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from PIL import Image

from featstore import open_entry
from featstore.errors import SourceError
from featstore.extract import extract
from featstore.sources.coco_captions import CocoCaptions
from featstore.sources.t15 import T15Sentences
from featstore.sources.tvsd import TvsdImages
from featstore.sources.vocabulary import Vocabulary
from featstore.store import Store


def run(teacher, source, tmp_path, **kw):
    store = Store(tmp_path / "s")
    result = extract(teacher, source, store, num_workers=0, progress=False,
                     log=lambda *_: None, batch_size=4, **kw)  # fmt: skip
    return open_entry(result.entries[0].key, store), result


# -- t15 (Dryad hdf5_data_final/<session>/data_<split>.hdf5) ----------------------------------


def write_t15(path, session, trials, labeled=True):
    """``trials``: [(block, trial, sentence)]; test files (labeled=False) carry no labels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        for n, (block, trial, sentence) in enumerate(trials):
            g = f.create_group(f"trial_{n:04d}")
            t = 5 + n
            g.create_dataset("input_features", data=rng.random((t, 512)).astype(np.float32))
            g.attrs["n_time_steps"] = t
            g.attrs["session"] = session
            g.attrs["block_num"] = block
            g.attrs["trial_num"] = trial
            if labeled:
                codes = np.zeros(500, np.int32)
                codes[: len(sentence)] = [ord(c) for c in sentence]
                g.create_dataset("transcription", data=codes)
                g.create_dataset("seq_class_ids", data=np.zeros(500, np.int32))
                g.attrs["seq_len"] = 3
                g.attrs["sentence_label"] = sentence
    return path


@pytest.fixture
def t15_dir(tmp_path):
    root = tmp_path / "hdf5_data_final"
    a, b = "t15.2023.08.11", "t15.2023.08.13"
    write_t15(root / b / "data_train.hdf5", b, [(1, 0, "Where is it")])
    write_t15(root / a / "data_train.hdf5", a, [(2, 0, "I am thirsty."), (2, 1, " You can see ")])
    write_t15(root / a / "data_val.hdf5", a, [(3, 4, "Bring it here")])
    write_t15(root / a / "data_test.hdf5", a, [(5, 0, ""), (5, 1, "")], labeled=False)
    # a label written as fixed-length bytes, as some writers do
    with h5py.File(root / a / "data_val.hdf5", "a") as f:
        g = f.create_group("trial_0001")
        g.attrs.update({"session": np.bytes_(a), "block_num": 3, "trial_num": 5,
                        "sentence_label": np.bytes_("Good morning")})  # fmt: skip
    return root


def test_t15_folder_ids_order_columns(t15_dir):
    src = T15Sentences(t15_dir)
    a, b = "t15.2023.08.11", "t15.2023.08.13"
    assert src.ids.dtype == object
    assert src.ids.tolist() == [f"{a}/train/trial_0000", f"{a}/train/trial_0001",
                                f"{a}/val/trial_0000", f"{a}/val/trial_0001",
                                f"{b}/train/trial_0000"]  # fmt: skip
    assert [src.load(i) for i in range(len(src))] == [
        "I am thirsty.", "You can see", "Bring it here", "Good morning", "Where is it"]  # fmt: skip
    assert src.skipped == 2  # the unlabeled test trials
    cols = src.columns()
    assert cols["session"].tolist() == [a, a, a, a, b]
    assert cols["block_num"].tolist() == [2, 2, 3, 3, 1]
    assert cols["trial_num"].tolist() == [0, 1, 4, 5, 0]
    assert cols["split"].tolist() == ["train", "train", "val", "val", "train"]
    assert cols["block_num"].dtype == np.int64
    assert src.fingerprint() == T15Sentences(t15_dir).fingerprint()  # deterministic


def test_t15_splits_and_single_file(t15_dir):
    assert len(T15Sentences(t15_dir, splits=("train",))) == 3
    assert len(T15Sentences(t15_dir, splits="val")) == 2
    one = T15Sentences(t15_dir / "t15.2023.08.11" / "data_val.hdf5")
    assert one.ids.tolist() == ["t15.2023.08.11/val/trial_0000", "t15.2023.08.11/val/trial_0001"]
    sub = T15Sentences(t15_dir).select(ids=["t15.2023.08.13/train/trial_0000",
                                            "t15.2023.08.11/val/trial_0000"])  # fmt: skip
    assert [sub.load(i) for i in range(2)] == ["Where is it", "Bring it here"]
    assert sub.columns()["block_num"].tolist() == [1, 3]
    rng = T15Sentences(t15_dir).select(row_range="1:3")
    assert rng.columns()["trial_num"].tolist() == [1, 4]


def test_t15_bad_inputs(t15_dir, tmp_path):
    test_file = t15_dir / "t15.2023.08.11" / "data_test.hdf5"
    with pytest.raises(SourceError, match="no sentence labels"):
        T15Sentences(test_file)
    with pytest.raises(SourceError, match="no sentence labels"):
        T15Sentences(t15_dir, splits=("test",))
    with pytest.raises(SourceError, match=r"no data_\{train,val,test\}.hdf5 files"):
        T15Sentences(_empty_dir(tmp_path))
    with pytest.raises(SourceError, match="does not exist"):
        T15Sentences(tmp_path / "nope")
    with pytest.raises(SourceError, match="splits is empty"):
        T15Sentences(t15_dir, splits=())
    bad = write_t15(tmp_path / "x" / "s1" / "data_train.hdf5", "s1", [(1, 0, "ok"), (1, 1, "  ")])
    with pytest.raises(SourceError, match=r"'s1/train/trial_0001' is empty"):
        T15Sentences(bad)
    junk = tmp_path / "y" / "data_train.hdf5"
    junk.parent.mkdir()
    junk.write_text("not hdf5")
    with pytest.raises(SourceError, match="not a readable HDF5 file"):
        T15Sentences(junk)
    with h5py.File(tmp_path / "z.hdf5", "w") as f:
        f.create_dataset("images", data=np.zeros(3))
    with pytest.raises(SourceError, match="no trial_XXXX groups"):
        T15Sentences(tmp_path / "z.hdf5")
    # two copies of one session collide on ids
    write_t15(tmp_path / "dup" / "a" / "data_train.hdf5", "s1", [(1, 0, "one")])
    write_t15(tmp_path / "dup" / "b" / "data_train.hdf5", "s1", [(1, 0, "two")])
    with pytest.raises(SourceError, match="trial ids repeat"):
        T15Sentences(tmp_path / "dup")


def _empty_dir(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    return d


# -- COCO captions / Karpathy / NSD stim info -------------------------------------------------

COCO = {
    "info": {"description": "COCO 2017 Dataset"},
    "licenses": [],
    "images": [{"id": 139, "file_name": "000000000139.jpg", "height": 426, "width": 640},
               {"id": 285, "file_name": "000000000285.jpg", "height": 640, "width": 586},
               {"id": 632, "file_name": "000000000632.jpg", "height": 483, "width": 640}],
    "annotations": [{"image_id": 285, "id": 900, "caption": "A big brown bear.\n"},
                    {"image_id": 139, "id": 40, "caption": " A room with a TV."},
                    {"image_id": 285, "id": 17, "caption": "A bear in the grass."},
                    {"image_id": 632, "id": 5, "caption": "A bedroom with a bed."},
                    {"image_id": 139, "id": 41, "caption": "A living room."}],
}  # fmt: skip


def karpathy(images):
    return {"dataset": "coco", "images": [
        {"filepath": "val2014", "sentids": [s[0] for s in sents], "filename": f"{cid}.jpg",
         "imgid": n, "split": split, "cocoid": cid,
         "sentences": [{"tokens": raw.lower().split(), "raw": raw, "imgid": n, "sentid": sid}
                       for sid, raw in sents]}
        for n, (cid, split, sents) in enumerate(images)]}  # fmt: skip


KARPATHY = karpathy([
    (139, "train", [(11, "A room with a TV."), (10, "A living room.")]),
    (285, "restval", [(20, "A bear in the grass.")]),
    (632, "val", [(30, "A bedroom with a bed.")]),
    (724, "test", [(40, "A stop sign.")]),
])  # fmt: skip


@pytest.fixture
def coco_json(tmp_path):
    path = tmp_path / "annotations" / "captions_train2017.json"
    path.parent.mkdir()
    path.write_text(json.dumps(COCO))
    return path


@pytest.fixture
def nsd_csv(tmp_path):
    """nsd_stim_info_merged.csv: a leading unnamed index column, then cocoId ... nsdId ..."""
    path = tmp_path / "nsd_stim_info_merged.csv"
    rows = [",cocoId,cocoSplit,cropBox,loss,nsdId,flagged,BOLD5000,shared1000,subject1",
            '0,632,val2017,"(0, 0, 0.1, 0.1)",0.0,0,False,False,False,0',
            '1,999,train2017,"(0, 0, 0, 0)",0.0,1,False,False,True,1',
            '2,139,train2017,"(0, 0, 0.2, 0)",0.1,2,False,True,False,1']  # fmt: skip
    path.write_text("\n".join(rows) + "\n")
    return path


def texts(src):
    return [src.load(i) for i in range(len(src))]


def test_coco_all_and_first(coco_json):
    src = CocoCaptions(coco_json)
    assert src.ids.tolist() == [40, 41, 17, 900, 5]  # by image id, then caption id
    assert src.ids.dtype == np.int64
    assert src.columns()["image_id"].tolist() == [139, 139, 285, 285, 632]
    assert texts(src)[0] == "A room with a TV." and texts(src)[3] == "A big brown bear."
    first = CocoCaptions(coco_json, per_image="first")
    assert first.ids.tolist() == [139, 285, 632]
    assert texts(first) == ["A room with a TV.", "A bear in the grass.", "A bedroom with a bed."]
    assert sorted(first.columns()) == ["caption_id", "image_id"]
    assert first.columns()["image_id"].tolist() == [139, 285, 632]
    assert first.columns()["caption_id"].tolist() == [40, 17, 5]
    sub = src.select(ids=[900, 5])
    assert texts(sub) == ["A big brown bear.", "A bedroom with a bed."]
    assert sub.columns()["image_id"].tolist() == [285, 632]
    assert src.select(row_range="2:4").columns()["image_id"].tolist() == [285, 285]


def test_coco_nsd_keys(coco_json, nsd_csv):
    first = CocoCaptions(coco_json, per_image="first", nsd_stim_info=nsd_csv)
    assert first.ids.tolist() == [0, 2]  # nsdId order; COCO 285 is not in NSD
    assert first.columns()["image_id"].tolist() == [632, 139]
    assert texts(first) == ["A bedroom with a bed.", "A room with a TV."]
    assert first.nsd_missing == 1  # cocoId 999 has no caption in this file
    every = CocoCaptions(coco_json, nsd_stim_info=nsd_csv)
    assert every.ids.tolist() == [5, 40, 41]
    assert every.columns()["nsd_id"].tolist() == [0, 2, 2]
    assert every.columns()["image_id"].tolist() == [632, 139, 139]
    assert first.select(ids=[2]).columns()["image_id"].tolist() == [139]


def test_coco_folder_of_caption_files(coco_json):
    val = {"images": [], "annotations": [{"image_id": 724, "id": 1, "caption": "A stop sign."}]}
    (coco_json.parent / "captions_val2017.json").write_text(json.dumps(val))
    (coco_json.parent / "instances_val2017.json").write_text("{}")  # not a captions file
    src = CocoCaptions(coco_json.parent, per_image="first")
    assert src.ids.tolist() == [139, 285, 632, 724]


def test_karpathy_splits(tmp_path, nsd_csv):
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps(KARPATHY))
    every = CocoCaptions(path)
    assert every.ids.tolist() == [10, 11, 20, 30, 40]
    assert every.columns()["split"].tolist() == ["train", "train", "restval", "val", "test"]
    train = CocoCaptions(path, split="train")
    assert train.ids.tolist() == [10, 11]  # restval is not train
    assert CocoCaptions(path, split="train+restval").ids.tolist() == [10, 11, 20]
    first = CocoCaptions(path, per_image="first", split="train")
    assert first.ids.tolist() == [139] and texts(first) == ["A living room."]  # lowest sentid
    nsd = CocoCaptions(path, per_image="first", nsd_stim_info=nsd_csv)
    assert nsd.ids.tolist() == [0, 2] and nsd.columns()["caption_id"].tolist() == [30, 10]


def test_coco_bad_inputs(tmp_path, coco_json, nsd_csv):
    def write(name, data):
        p = tmp_path / name
        p.write_text(data if isinstance(data, str) else json.dumps(data))
        return p

    no_caption = {"annotations": [{"id": 1, "image_id": 2}]}
    with pytest.raises(SourceError, match=r"captions JSON missing keys \['caption'\]") as e:
        CocoCaptions(write("a.json", no_caption))
    assert "a.json" in str(e.value) and "annotations[0]" in str(e.value)
    with pytest.raises(SourceError, match="captions JSON missing keys") as e:
        CocoCaptions(write("b.json", {"info": {}, "licenses": []}))
    assert "b.json" in str(e.value)
    kp = karpathy([(1, "train", [(1, "x")])])
    del kp["images"][0]["sentences"][0]["sentid"]
    with pytest.raises(SourceError, match=r"missing keys \['sentid'\].*sentences\[0\]"):
        CocoCaptions(write("c.json", kp))
    with pytest.raises(SourceError, match="missing keys"):
        CocoCaptions(write("d.json", [1, 2]))
    with pytest.raises(SourceError, match="cannot parse"):
        CocoCaptions(write("e.json", "{not json"))
    empty = {"annotations": [{"id": 7, "image_id": 2, "caption": "ok"},
                             {"id": 8, "image_id": 2, "caption": "   "}]}  # fmt: skip
    with pytest.raises(SourceError, match="caption 8 is empty"):
        CocoCaptions(write("f.json", empty))
    dup = {"annotations": [{"id": 7, "image_id": 2, "caption": "a"},
                           {"id": 7, "image_id": 3, "caption": "b"}]}  # fmt: skip
    with pytest.raises(SourceError, match=r"caption ids repeat \(first: \[7\]\)"):
        CocoCaptions(write("g.json", dup))
    bad_csv = write("stim.csv", "cocoId,nsd\n139,0\n")
    with pytest.raises(SourceError, match="lacks the columns nsdId and cocoId"):
        CocoCaptions(coco_json, nsd_stim_info=bad_csv)
    with pytest.raises(SourceError, match="does not exist"):
        CocoCaptions(coco_json, nsd_stim_info=tmp_path / "missing.csv")
    with pytest.raises(SourceError, match="not an integer"):
        CocoCaptions(coco_json, nsd_stim_info=write("n.csv", "nsdId,cocoId\nx,139\n"))
    with pytest.raises(SourceError, match="none of its images are in"):
        CocoCaptions(coco_json, nsd_stim_info=write("o.csv", "nsdId,cocoId\n0,5\n"))
    with pytest.raises(SourceError, match="per_image must be"):
        CocoCaptions(coco_json, per_image="one")
    with pytest.raises(SourceError, match="only to Karpathy"):
        CocoCaptions(coco_json, split="train")
    kp_path = write("dataset_coco.json", KARPATHY)
    with pytest.raises(SourceError, match=r"no images in split 'training'.*'restval'"):
        CocoCaptions(kp_path, split="training")
    with pytest.raises(SourceError, match="does not exist"):
        CocoCaptions(tmp_path / "nope.json")
    with pytest.raises(SourceError, match=r"no captions_\*.json"):
        CocoCaptions(_empty_dir(tmp_path))


# -- TVSD things_imgs.mat (MATLAB v7.3) --------------------------------------------------------

MAT_HEADER = (
    b"MATLAB 7.3 MAT-file, Platform: PCWIN64, Created on: Mon Jan  1 00:00:00 2024 "
    b"HDF5 schema 1.00 ."
)


def write_things_mat(path, train_paths, test_paths):
    """A things_imgs.mat laid out as MATLAB -v7.3 writes it: a 512-byte userblock with the MAT
    header, structs ``train_imgs``/``test_imgs`` whose field ``things_path`` is a cell of HDF5
    object references into ``#refs#``, each a transposed uint16 char array (n_chars, 1)."""
    with h5py.File(path, "w", userblock_size=512) as f:
        refs = f.create_group("#refs#")
        count = 0
        for name, paths, shape in (("train_imgs", train_paths, (1, -1)),
                                   ("test_imgs", test_paths, (-1, 1))):  # fmt: skip
            group = f.create_group(name)
            group.attrs["MATLAB_class"] = np.bytes_("struct")
            targets = []
            for p in paths:
                units = np.frombuffer(p.encode("utf-16-le"), dtype="<u2").reshape(-1, 1)
                ds = refs.create_dataset(f"r{count}", data=units)
                ds.attrs["MATLAB_class"] = np.bytes_("char")
                ds.attrs["MATLAB_int_decode"] = np.int32(2)
                targets.append(ds.ref)
                count += 1
            cell = group.create_dataset(
                "things_path", data=np.array(targets, dtype=h5py.ref_dtype).reshape(shape)
            )
            cell.attrs["MATLAB_class"] = np.bytes_("cell")
    with open(path, "r+b") as fh:
        header = MAT_HEADER.ljust(116) + b"\0" * 8 + b"\x00\x02" + b"IM"
        fh.write(header.ljust(512, b"\0"))
    return path


TRAIN = ["abacus\\abacus_01b.jpg", "aardvark\\aardvark_01b.jpg", "aardvark\\aardvark_02s.jpg"]
TEST = ["abacus\\abacus_05s.jpg"]


@pytest.fixture
def things(tmp_path):
    root = tmp_path / "THINGS" / "object_images"
    rng = np.random.default_rng(3)
    for rel in TRAIN + TEST + ["zebra\\zebra_01b.jpg"]:
        file = root / rel.replace("\\", "/")
        file.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((rng.random((20, 24, 3)) * 255).astype(np.uint8)).save(file)
    mat = write_things_mat(tmp_path / "things_imgs.mat", TRAIN, TEST)
    return mat, root


def test_tvsd_ids_in_mua_order(things):
    mat, root = things
    assert mat.read_bytes()[:10] == b"MATLAB 7.3"
    train = TvsdImages(mat, root)
    assert train.ids.tolist() == [p.replace("\\", "/") for p in TRAIN]  # not sorted
    assert train.ids.dtype == object
    image = train.load(1)
    assert image.mode == "RGB" and image.size == (24, 20)
    test = TvsdImages(mat, root, split="test")
    assert test.ids.tolist() == ["abacus/abacus_05s.jpg"]
    sub = train.select(ids=["aardvark/aardvark_02s.jpg", "abacus/abacus_01b.jpg"])
    assert sub.ids.tolist() == ["aardvark/aardvark_02s.jpg", "abacus/abacus_01b.jpg"]
    assert train.select(row_range="1:2").ids.tolist() == ["aardvark/aardvark_01b.jpg"]
    assert train.fingerprint() == TvsdImages(mat, root).fingerprint()
    assert train.fingerprint()["content"] != test.fingerprint()["content"]


def test_tvsd_bad_inputs(things, tmp_path):
    mat, root = things
    v5 = tmp_path / "v5.mat"
    v5.write_bytes(b"MATLAB 5.0 MAT-file, Platform: PCWIN64".ljust(128) + b"\0" * 64)
    with pytest.raises(SourceError, match=r"save\(.*'-v7.3'\)"):
        TvsdImages(v5, root)
    junk = tmp_path / "junk.mat"
    junk.write_bytes(b"\0" * 300)
    with pytest.raises(SourceError, match="not a MATLAB v7.3"):
        TvsdImages(junk, root)
    with h5py.File(tmp_path / "no_train.mat", "w") as f:
        f.create_group("test_imgs")
    with pytest.raises(SourceError, match="has no 'train_imgs'"):
        TvsdImages(tmp_path / "no_train.mat", root)
    with pytest.raises(SourceError, match="test_imgs has no field 'things_path'"):
        TvsdImages(tmp_path / "no_train.mat", root, split="test")
    missing = write_things_mat(tmp_path / "m.mat", TRAIN + ["cat\\cat_01b.jpg", "dog\\d.jpg"], [])
    with pytest.raises(SourceError, match=r"2 of 5 images .* \(first: \['cat/cat_01b.jpg'"):
        TvsdImages(missing, root)
    dup = write_things_mat(tmp_path / "d.mat", TRAIN + [TRAIN[0]], TEST)
    with pytest.raises(SourceError, match=r"1 image paths repeat.*abacus/abacus_01b.jpg"):
        TvsdImages(dup, root)
    with pytest.raises(SourceError, match="split must be"):
        TvsdImages(mat, root, split="val")
    with pytest.raises(SourceError, match="THINGS image folder"):
        TvsdImages(mat, tmp_path / "nowhere")
    with pytest.raises(SourceError, match="does not exist"):
        TvsdImages(tmp_path / "none.mat", root)
    (root / "abacus" / "abacus_01b.jpg").write_bytes(b"broken")
    with pytest.raises(SourceError, match="cannot decode image .*abacus_01b.jpg"):
        TvsdImages(mat, root).load(0)


def test_tvsd_nested_cells_and_matlab_empty(things, tmp_path):
    """A reference to a 1x1 cell holding the char array is followed; MATLAB's empty-char marker
    (uint64 dims with attribute MATLAB_empty) is an empty path, an error."""
    mat, root = things
    with h5py.File(mat, "r+") as f:
        cell = f["#refs#"].create_dataset("cell", data=np.array([[f["#refs#/r0"].ref]]))
        empty = f["#refs#"].create_dataset("empty", data=np.zeros(2, np.uint64))
        empty.attrs["MATLAB_class"] = np.bytes_("char")
        empty.attrs["MATLAB_empty"] = np.uint8(1)
        f["train_imgs/things_path"][0, 0] = cell.ref
        f["test_imgs/things_path"][0, 0] = empty.ref
    assert TvsdImages(mat, root).ids.tolist()[0] == "abacus/abacus_01b.jpg"
    with pytest.raises(SourceError, match=r"test_imgs/things_path\[0\] is an empty path"):
        TvsdImages(mat, root, split="test")


def test_tvsd_extract_end_to_end(things, tmp_path, bigg_tiny):
    mat, root = things
    entry, _ = run(bigg_tiny, TvsdImages(mat, root), tmp_path)
    assert entry.ids.tolist() == [p.replace("\\", "/") for p in TRAIN]
    assert entry.gather(np.arange(3)).shape[0] == 3


# -- vocabulary -------------------------------------------------------------------------------


def test_vocabulary_txt_and_json(tmp_path):
    txt = tmp_path / "vg_objects.txt"
    txt.write_text("person\n\n  dog \ntraffic light\n")
    voc = Vocabulary(txt)
    assert voc.ids.tolist() == ["person", "dog", "traffic light"] and voc.ids.dtype == object
    assert texts(voc) == ["person", "dog", "traffic light"]
    js = tmp_path / "vocab.json"
    js.write_text(json.dumps(["person", "dog", "traffic light"]))
    assert Vocabulary(js).ids.tolist() == voc.ids.tolist()
    assert Vocabulary(js).fingerprint() == voc.fingerprint()
    assert texts(voc.select(ids=["traffic light"])) == ["traffic light"]
    assert voc.columns() == {}


def test_vocabulary_bad_inputs(tmp_path):
    def write(name, text):
        p = tmp_path / name
        p.write_text(text)
        return p

    with pytest.raises(SourceError, match=r"2 entities repeat \(first: \['dog', 'cat'\]\)"):
        Vocabulary(write("a.txt", "dog\ncat\n dog\ncat\nbird\n"))
    with pytest.raises(SourceError, match="holds no entities"):
        Vocabulary(write("b.txt", "\n  \n"))
    with pytest.raises(SourceError, match="expected a JSON list of strings"):
        Vocabulary(write("c.json", '{"dog": 1}'))
    with pytest.raises(SourceError, match="item 1 is 3, not a string"):
        Vocabulary(write("d.json", '["dog", 3]'))
    with pytest.raises(SourceError, match="cannot parse"):
        Vocabulary(write("e.json", "[dog"))
    with pytest.raises(SourceError, match="does not exist"):
        Vocabulary(tmp_path / "none.txt")


# -- text sources end to end: entries keep ids and columns ------------------------------------


def test_text_sources_extract_end_to_end(t15_dir, coco_json, nsd_csv, tmp_path, text_tiny):
    entry, _ = run(text_tiny, T15Sentences(t15_dir), tmp_path)
    assert entry.ids.tolist()[0] == "t15.2023.08.11/train/trial_0000"
    assert entry.column("session").tolist()[-1] == "t15.2023.08.13"
    assert entry.column("block_num").tolist() == [2, 2, 3, 3, 1]

    src = CocoCaptions(coco_json, nsd_stim_info=nsd_csv).select(row_range="0:3")
    entry, _ = run(text_tiny, src, tmp_path)
    assert entry.ids.tolist() == [5, 40, 41]
    assert entry.column("image_id").tolist() == [632, 139, 139]
    assert entry.column("nsd_id").tolist() == [0, 2, 2]
    assert entry.column("image_id").dtype == np.int64

    voc = tmp_path / "vocab.txt"
    voc.write_text("person\ndog\n")
    entry, result = run(text_tiny, Vocabulary(voc), tmp_path)
    assert entry.ids.tolist() == ["person", "dog"]
    assert len(entry.gather(np.arange(2))) == 2
    again = extract(text_tiny, Vocabulary(voc), Store(tmp_path / "s"), num_workers=0,
                    progress=False, log=lambda *_: None, batch_size=4)  # fmt: skip
    assert again.entries[0].status == "cached"


def test_kind_is_detected_from_original_file_names(tmp_path):
    from featstore.sources import detect_kind

    (tmp_path / "t15.2023.08.11").mkdir()
    (tmp_path / "t15.2023.08.11" / "data_train.hdf5").write_bytes(b"")
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "captions_train2017.json").write_text("{}")
    (tmp_path / "imgs").mkdir()
    cases = {
        tmp_path / "t15.2023.08.11" / "data_train.hdf5": "t15-sentences",
        tmp_path: "t15-sentences",
        tmp_path / "annotations": "coco-captions",
        tmp_path / "annotations" / "captions_train2017.json": "coco-captions",
        tmp_path / "dataset_coco.json": "coco-captions",
        tmp_path / "things_imgs.mat": "tvsd-images",
        tmp_path / "coco_images_224_float16.hdf5": "nsd-images",
        tmp_path / "imgs": "image-folder",
        tmp_path / "captions.jsonl": "text-list",
    }
    for path, kind in cases.items():
        assert detect_kind(path) == kind, path


def test_a_registered_source_is_detected_and_opened_without_other_edits(tmp_path):
    from featstore.sources import SOURCES, Source, detect_kind, open_source, register_source

    @register_source
    class Lines(Source):  # one image path per line of a ".lines" file
        kind, modality = "test-lines", "image"

        @classmethod
        def detect(cls, path):
            return 50 if path.suffix == ".lines" else 0

        def __init__(self, path):
            names = path.read_text().split()
            super().__init__(path, np.asarray(names, dtype=object))

    try:
        listing = tmp_path / "shots.lines"
        listing.write_text("a.png\nb.png\n")
        assert detect_kind(listing) == "test-lines"
        assert open_source(listing).ids.tolist() == ["a.png", "b.png"]
        assert detect_kind(tmp_path / "captions.txt") == "text-list"  # others unchanged
    finally:
        del SOURCES["test-lines"]
