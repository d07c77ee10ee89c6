"""Shared fixtures: tiny synthetic sources and tiny random-weight teachers (no model hub)."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# No test touches the user's real cache: featstore's bundled tokenizer files (and any library
# cache under XDG_CACHE_HOME) go to a temporary folder for this session.
_CACHE = tempfile.mkdtemp(prefix="pytest-xdg-cache-")
os.environ["XDG_CACHE_HOME"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, True)

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

import featstore.teachers  # noqa: E402,F401  (applies the torchvision import fix first)
from featstore.store import Store  # noqa: E402
from featstore.teachers import create_teacher  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_store_env(tmp_path, monkeypatch):
    """No test ever touches the user's real cache."""
    monkeypatch.setenv("FEATSTORE_DIR", str(tmp_path / "default-store"))


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "store")


def make_nsd_hdf5(path, n: int = 20, size: int = 224, seed: int = 0, dataset: str = "images"):
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        f.create_dataset(dataset, data=rng.random((n, 3, size, size)).astype(np.float16))
    return path


@pytest.fixture
def nsd_hdf5(tmp_path):
    return make_nsd_hdf5(tmp_path / "coco_images_224_float16.hdf5")


@pytest.fixture
def image_folder(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    for i in range(5):
        arr = (rng.random((40 + 8 * i, 56, 3)) * 255).astype(np.uint8)
        name = f"sub/img{i}.jpg" if i % 2 else f"img{i}.png"
        Image.fromarray(arr).save(folder / name)
    return folder


@pytest.fixture
def captions(tmp_path):
    path = tmp_path / "captions.jsonl"
    texts = ["a cat on a mat", "two dogs playing", "a red bus", "an empty street at night",
             "a bowl of fruit", "a man riding a horse", "snow on the mountains"]  # fmt: skip
    path.write_text("\n".join(json.dumps({"id": 100 + i, "text": t}) for i, t in enumerate(texts)))
    return path


@pytest.fixture(scope="session")
def bigg_tiny():
    return create_teacher("bigG-tiny", weights="random")


@pytest.fixture(scope="session")
def text_tiny():
    return create_teacher("clip-l-text-tiny", weights="random")
