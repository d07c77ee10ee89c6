"""NSD readers: trial tables in every layout, the split, lazy betas, bad inputs."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from heads.data.nsd import Betas, read_trials, split_trials
from heads.errors import HeadsError
from heads.zoo.mindeye.synthetic import write_subject


@pytest.fixture
def subject(tmp_path):
    tokens = np.random.default_rng(0).standard_normal((30, 4, 8)).astype(np.float16)
    betas, wds = write_subject(tmp_path, tokens, n_test_images=6, n_voxels=50, sessions=3)
    return betas, wds


def test_trial_table_from_tars_npy_and_csv(subject, tmp_path):
    _, wds = subject
    table = read_trials(wds)  # the original webdataset layout: wds/subj01/{train,test}/0.tar
    assert table.shape == (24 + 6 * 3, 17)
    np.save(tmp_path / "behav.npy", table)
    np.testing.assert_array_equal(read_trials(tmp_path / "behav.npy"), table)
    header = ",".join(f"c{i}" for i in range(17))
    np.savetxt(tmp_path / "behav.csv", table, delimiter=",", header=header, comments="")
    np.testing.assert_array_equal(read_trials(tmp_path / "behav.csv"), table)
    np.testing.assert_array_equal(read_trials(wds / "test" / "0.tar"), table[table[:, 16] == 1])


def test_split_follows_mindeye(subject):
    _, wds = subject
    table = read_trials(wds)
    split = split_trials(table, num_sessions=3)
    assert len(split.train) == 24 and (split.train[:, 16] == 0).all()
    assert split.test_images.tolist() == list(range(24, 30))
    assert all(len(rows) == 3 for rows in split.test_rows)  # repeats grouped per image
    for image, rows in zip(split.test_images, split.test_rows, strict=True):
        assert set(table[np.isin(table[:, 5], rows), 0]) == {image}
    first = split_trials(table, num_sessions=1)
    assert set(first.train[:, 2]) == {1.0} and len(first.test_images) == 6
    with pytest.raises(HeadsError, match="num_sessions=4, but the trial table has 3 sessions"):
        split_trials(table, num_sessions=4)


def test_betas_lazy_reads_keep_order_and_repeats(subject):
    path, _ = subject
    betas = Betas(path)
    with h5py.File(path) as f:
        full = f["betas"][:]
    rows = np.array([7, 2, 7, 40])
    np.testing.assert_array_equal(betas.read(rows), full[rows])
    np.testing.assert_array_equal(Betas(path, preload=True).read(rows), full[rows])
    assert betas.n_voxels == 50 and len(betas) == 42


def test_nonfinite_betas_name_where(tmp_path):
    path = tmp_path / "betas.hdf5"
    data = np.zeros((5, 4), np.float32)
    data[3, 2] = np.nan
    with h5py.File(path, "w") as f:
        f.create_dataset("betas", data=data)
    betas = Betas(path)
    betas.read(np.array([0, 1]))
    with pytest.raises(HeadsError, match="betas row 3, voxel 2 is nan"):
        betas.read(np.array([1, 3]))


@pytest.mark.parametrize(
    "content,needle",
    [
        ("missing", "does not exist"),
        ("no-dataset", "no dataset 'betas'"),
        ("3d", "expected [trials, voxels]"),
    ],
)
def test_bad_betas_files(tmp_path, content, needle):
    path = tmp_path / "b.hdf5"
    if content != "missing":
        with h5py.File(path, "w") as f:
            f.create_dataset(
                "x" if content == "no-dataset" else "betas",
                data=np.zeros((2, 3, 4) if content == "3d" else (2, 3)),
            )
    with pytest.raises(HeadsError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        Betas(path)


def test_bad_trial_tables(tmp_path):
    np.save(tmp_path / "short.npy", np.zeros((4, 12)))
    with pytest.raises(HeadsError, match=r"shape \(4, 12\); expected \[n, 17\]"):
        read_trials(tmp_path / "short.npy")
    (tmp_path / "empty").mkdir()
    with pytest.raises(HeadsError, match="no webdataset .tar files"):
        read_trials(tmp_path / "empty")
