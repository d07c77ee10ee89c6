"""Fixtures of the framework tests: a small featstore entry and the test-only probe head."""

from __future__ import annotations

import json

import pytest
import torch

from featstore import Store
from featstore.extract import extract
from featstore.sources import open_source
from featstore.teachers import create_teacher

WORDS = ["red", "blue", "green", "cat", "dog", "bus", "tree", "house", "boat", "bird", "sky", "sea"]


def quiet(*_):
    pass


@pytest.fixture(autouse=True)
def one_thread():
    """Stage two's tests train tiny models: intra-op threads only add synchronisation (and are
    ~10x slower on a busy 2-core machine). Subprocess tests set OMP_NUM_THREADS themselves."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def probe_entry(tmp_path_factory):
    """96 tiny-teacher text features [16] (labelled synthetic captions) in a fresh store."""
    root = tmp_path_factory.mktemp("probe")
    texts = root / "texts.jsonl"
    lines = [
        {"id": i, "text": f"a {WORDS[i % 12]} {WORDS[(i * 5 + 3) % 12]} near the {WORDS[i // 12]}"}
        for i in range(96)
    ]
    texts.write_text("\n".join(json.dumps(x) for x in lines))
    store = Store(root / "store")
    result = extract(
        create_teacher("clip-l-text-tiny", weights="random"),
        open_source(texts),
        store,
        outputs=["pooled"],
        progress=False,
        log=quiet,
    )
    return {"store": str(store.root), "entry": result.entries[0].key}


@pytest.fixture
def probe(probe_entry):
    """The probe head class with its test hooks reset; ``probe.overrides`` point at the entry."""
    from .probe_head import Probe

    saved = {
        k: getattr(Probe, k)
        for k in (
            "crash_at_step",
            "scripted",
            "freeze_body",
            "hold_body_epochs",
            "readout_lr_scale",
        )
    }
    Probe.seen_weights = []
    Probe.overrides = [
        f"data.entry={json.dumps(probe_entry['entry'])}",
        f"data.store={json.dumps(probe_entry['store'])}",
        "train.batch_size=8",
    ]
    yield Probe
    for k, v in saved.items():
        setattr(Probe, k, v)
