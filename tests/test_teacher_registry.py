"""The teacher registry: families register themselves (one file per family), one helper
resolves --weights, options are checked against the teacher's constructor, and the environment
fix-ups never reach beyond what featstore needs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from featstore.errors import FeatstoreError
from featstore.teachers import (
    OutputSpec,
    Preprocessor,
    Teacher,
    TeacherSpec,
    create_teacher,
    get_spec,
    list_teachers,
    register_family,
    teacher_options,
    teacher_outputs,
)
from featstore.teachers._numbers import normalize_numbers
from featstore_cli.featstore_app import app


class _Identity(Preprocessor):
    def identity(self):
        return {"kind": "identity"}

    def __call__(self, item):
        return torch.zeros(2)


@register_family(
    "test-constant",
    [
        TeacherSpec(
            "constant-tiny", "test-constant", "text", "a constant vector; for tests", {"dim": 3}
        )
    ],
)
class ConstantTeacher(Teacher):
    """A whole family in one class: registered by the decorator, nothing edited elsewhere."""

    @staticmethod
    def outputs_for(spec):
        return {"vec": OutputSpec((spec.config["dim"],), "a constant")}

    def __init__(self, spec, weights, scale: float = 1.0):
        self.spec, self.weights = spec, {"kind": weights.kind, "seed": weights.seed}
        self.outputs = self.outputs_for(spec)
        self.preprocessor = _Identity()
        self.model = torch.nn.Linear(1, 1)
        self.scale = float(scale)

    def architecture(self):
        return {"dim": self.spec.config["dim"]}

    def forward(self, batch, kinds):
        return {"vec": torch.full((len(batch), self.spec.config["dim"]), self.scale)}


def test_a_family_registers_itself_with_a_decorator():
    assert get_spec("constant-tiny").family == "test-constant"
    assert "constant-tiny" in [s.name for s in list_teachers()]
    assert teacher_outputs("constant-tiny")["vec"].shape == (3,)
    assert teacher_options("constant-tiny") == {"scale": 1.0}
    teacher = create_teacher("constant-tiny", scale=2)
    assert teacher.weights == {"kind": "random", "seed": 0} and teacher.scale == 2.0


def test_tiny_teachers_default_to_random_weights_and_real_ones_to_pretrained():
    assert create_teacher("bigG-tiny").weights == {"kind": "random", "seed": 0}
    with pytest.raises(FeatstoreError, match="bigG-tiny has no pretrained weights"):
        create_teacher("bigG-tiny", weights="pretrained")
    with pytest.raises(FeatstoreError, match="neither 'pretrained', 'random' nor a checkpoint"):
        create_teacher("bigG-tiny", weights="/no/such/file.pt")


def test_options_are_checked_against_the_constructor():
    with pytest.raises(FeatstoreError, match="clip-l-text-tiny takes no option 'preprocessing'"):
        create_teacher("clip-l-text-tiny", preprocessing="mindeye")
    with pytest.raises(FeatstoreError, match="unknown preprocessing 'fancy'"):
        create_teacher("bigG-tiny", preprocessing="fancy")
    assert create_teacher("bigG-tiny", preprocessing="mindeye").preprocessor.mode == "mindeye"


def test_import_featstore_never_imports_torchvision():
    """The fix-up declares two op schemas only when torchvision's compiled ops cannot load; it
    never imports torchvision itself (a working one is never touched)."""
    code = ("import sys, featstore; from featstore import _compat; "
            "print('torchvision' in sys.modules)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.split() == ["False"], out.stderr


def test_declared_torchvision_ops_fail_clearly():
    from featstore import _compat

    if not _compat.applied():
        pytest.skip("torchvision's compiled ops load here: nothing was declared")
    import torchvision

    with pytest.raises(RuntimeError, match="Couldn't load custom C.. ops"):  # torchvision's own
        torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)
    with pytest.raises(RuntimeError, match="torchvision's compiled ops could not load"):
        torch.ops.torchvision.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)  # the op itself


def test_bundled_files_live_in_the_users_cache():
    from featstore.teachers._bundled import bundled_dir
    from featstore.teachers.clip_text import bundled_clip_tokenizer_files

    folder = bundled_clip_tokenizer_files()
    assert folder.parent == bundled_dir()
    assert folder == Path(os.environ["XDG_CACHE_HOME"]) / "featstore" / "_bundled" / "clip-bpe-v1"
    assert (folder.parent.stat().st_mode & 0o077) == 0  # private to the user
    assert not list(folder.glob("*.tmp"))


def test_offline_pretrained_failure_prints_only_our_message(nsd_hdf5, store, monkeypatch):
    """Before: open_clip's `ERROR:root:Failed to download…` came first."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = CliRunner().invoke(app, ["extract", "-t", "bigG", "-s", str(nsd_hdf5),
                                      "--store", str(store.root), "-q"])  # fmt: skip
    assert result.exit_code == 1
    assert "ERROR:root" not in result.output
    assert (
        result.output.startswith("error: cannot load open_clip") and result.output.count("\n") == 1
    )  # one line: ours, with how to fix it


@pytest.mark.parametrize("text,spoken", [
    ("object number 0", "object number zero"),
    ("3.5% of 1,200 cats", "three point five percent of one thousand two hundred cats"),
    ("the 21st and 2nd", "the twenty first and second"),
    ("room 101 at 12", "room one hundred one at twelve"),
    ("no numbers", "no numbers"),
])  # fmt: skip
def test_numbers_become_words(text, spoken):
    assert normalize_numbers(text) == spoken
