"""KITTI -> Caltech on small files written here in every layout users have, and its errors."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from stlight_jax import data
from stlight_jax.configs.common import get_base_config
from stlight_jax.data import kitticaltech

SIZE = (8, 10)  # (H, W); the real frames are 128x160


def _config(tmp_path, root, frames=(2, 1), **d):
    c = get_base_config()
    c.data.name, c.data.path, c.data.data_dir = "kitticaltech", str(root), str(tmp_path / "c")
    c.data.batch_size, c.data.eval_batch_size, c.data.num_val = 2, 4, 0
    c.model.frames_in, c.model.frames_out = frames
    c.model.image_size, c.model.channels = SIZE, 3
    for k, v in d.items():
        setattr(c.data, k, v)
    return c


def _frames(n, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, *SIZE, 3), dtype=np.uint8)


def _write_hkl(path, array, style):
    """An .hkl as each hickle generation laid it out (the array is the first dataset)."""
    with h5py.File(path, "w") as f:
        if style == "hickle2":  # root attributes current hickle rejects, array at /data_0
            f.attrs["VERSION"], f.attrs["CLASS"], f.attrs["type"] = "2", "hickle", ["hickle"]
            f.create_dataset("data_0", data=array)
        elif style == "hickle3":
            f.attrs["VERSION"] = "3.4.9"
            f.create_group("data").create_dataset("data_0", data=array)
        else:  # hickle >= 4
            f.attrs["HICKLE_VERSION"] = "5.0.2"
            f.create_dataset("data", data=array)


def _sources(names, kind):
    if kind == "bytes":
        return np.array([n.encode() for n in names], dtype="S")
    return np.array(names, dtype=h5py.string_dtype())


def _kitti_root(tmp_path, style="hickle2", kind="bytes", with_val=True):
    root = tmp_path / "data"
    (root / "kitti_hkl").mkdir(parents=True)
    (root / "caltech").mkdir()
    # 11 train frames from three drives: a (4 frames), b (2), c (5).
    train = _frames(11, 0)
    names = ["a"] * 4 + ["b"] * 2 + ["c"] * 5
    _write_hkl(root / "kitti_hkl/X_train.hkl", train, style)
    _write_hkl(root / "kitti_hkl/sources_train.hkl", _sources(names, kind), style)
    val = _frames(6, 1)
    if with_val:
        _write_hkl(root / "kitti_hkl/X_val.hkl", val, style)
        _write_hkl(root / "kitti_hkl/sources_val.hkl", _sources(["v"] * 6, kind), style)
    test = _frames(9, 2)
    np.save(root / "caltech/data_cache.npy", test)
    np.save(root / "caltech/indices_cache.npy", np.array([6, 3, 0], np.int32))
    return root, train, val, test


def test_window_rule_never_crosses_a_source():
    # Backward scan, windows of 3: c 8-10, then 7 back to 3 each span two sources, then a 1-3.
    names = ["a"] * 4 + ["b"] * 2 + ["c"] * 5
    starts = kitticaltech.source_windows(names, 3)
    assert starts.tolist() == [8, 1]
    for s in starts:
        assert len(set(names[s : s + 3])) == 1
    assert kitticaltech.source_windows(["x"] * 9, 3).tolist() == [6, 3, 0]
    assert kitticaltech.source_windows(["x", "y"], 3).tolist() == []


@pytest.mark.parametrize(
    "style,kind", [("hickle2", "bytes"), ("hickle3", "str"), ("hickle4", "bytes")]
)
def test_hkl_layouts_train_val_and_caltech_test(tmp_path, style, kind):
    root, train, val, test = _kitti_root(tmp_path, style, kind)
    c = _config(tmp_path, root)
    assert data.steps_per_epoch(c) == 1  # windows starting at 8 and 1
    got = next(data.create_train_iterator(c))
    seqs = np.concatenate([got["inputs"], got["targets"]], axis=1)
    want = {s: train[s : s + 3] / np.float32(255) for s in (8, 1)}
    found = sorted(s for s, w in want.items() for q in seqs if np.array_equal(q, w))
    assert found == [1, 8]
    v = list(data.create_eval_iterator(c, "val"))  # windows 3..5 and 0..2 of X_val
    assert sum(b["mask"].sum() for b in v) == 2
    np.testing.assert_array_equal(v[0]["inputs"][0], val[3:5] / np.float32(255))
    t = list(data.create_eval_iterator(c, "test"))
    assert t[0]["mask"].tolist() == [1, 1, 1, 0]
    np.testing.assert_array_equal(t[0]["targets"][0, 0], test[8] / np.float32(255))
    np.testing.assert_array_equal(t[0]["inputs"][2], test[0:2] / np.float32(255))
    assert "stored validation split" in data.describe_source(c, "val")


def test_without_x_val_validation_is_the_test_split(tmp_path):
    root, *_ = _kitti_root(tmp_path, with_val=False)
    c = _config(tmp_path, root)
    assert "the test split (num_val=0" in data.describe_source(c, "val")


def test_openstl_npy_layout_float_and_uint8(tmp_path):
    root = tmp_path / "data"
    (root / "kitticaltech_npy").mkdir(parents=True)
    train = np.random.default_rng(0).random((7, *SIZE, 3)).astype(np.float32)
    test = _frames(5, 3)
    np.save(root / "kitticaltech_npy/train_data.npy", train)
    np.save(root / "kitticaltech_npy/train_idx.npy", np.array([0, 2, 4], np.int64))
    np.save(root / "kitticaltech_npy/test_data.npy", test)
    np.save(root / "kitticaltech_npy/test_idx.npy", np.array([2], np.int64))
    c = _config(tmp_path, root)
    assert data.steps_per_epoch(c) == 1
    t = next(iter(data.create_eval_iterator(c, "test")))
    np.testing.assert_array_equal(t["inputs"][0], test[2:4] / np.float32(255))
    v = list(data.create_eval_iterator(c, "val"))
    assert sum(b["mask"].sum() for b in v) == 1  # the test split, as OpenSTL validated
    b = next(data.create_train_iterator(c))
    assert any(np.array_equal(b["inputs"][0], train[s : s + 2]) for s in (0, 2, 4))


def test_errors_name_the_file(tmp_path):
    root, *_ = _kitti_root(tmp_path)
    c = _config(tmp_path, root, frames=(8, 4))
    with pytest.raises(ValueError, match=r"X_train.hkl: no source has 12 consecutive frames"):
        data.steps_per_epoch(c)
    c = _config(tmp_path, root)
    c.model.image_size = (16, 16)
    with pytest.raises(ValueError, match=r"X_train.hkl: frames are 8x10 but .*\(16, 16\)"):
        data.steps_per_epoch(c)
    _write_hkl(root / "kitti_hkl/sources_train.hkl", _sources(["a"] * 3, "bytes"), "hickle2")
    with pytest.raises(ValueError, match=r"sources_train.hkl: has 3 source names but .* 11"):
        data.steps_per_epoch(_config(tmp_path, root))
    (root / "kitti_hkl/sources_train.hkl").write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match=r"sources_train.hkl: cannot read as HDF5/.hkl"):
        data.steps_per_epoch(_config(tmp_path, root))
    root, *_ = _kitti_root(tmp_path / "b")
    np.save(root / "caltech/indices_cache.npy", np.array([0, 7], np.int32))
    with pytest.raises(ValueError, match=r"indices_cache.npy: window starts span \[0, 7\] but"):
        data.steps_per_epoch(_config(tmp_path, root))
    (root / "caltech/data_cache.npy").unlink()
    with pytest.raises(ValueError, match=r"data_cache.npy: file not found"):
        data.steps_per_epoch(_config(tmp_path, root))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"holds neither kitti_hkl/ nor kitticaltech_npy/"):
        data.steps_per_epoch(_config(tmp_path, tmp_path / "empty"))
    root = tmp_path / "f"
    (root / "kitticaltech_npy").mkdir(parents=True)
    np.save(root / "kitticaltech_npy/train_data.npy", np.full((4, *SIZE, 3), 1.5, np.float32))
    np.save(root / "kitticaltech_npy/train_idx.npy", np.array([0]))
    np.save(root / "kitticaltech_npy/test_data.npy", _frames(4, 0))
    np.save(root / "kitticaltech_npy/test_idx.npy", np.array([0]))
    with pytest.raises(ValueError, match=r"train_data.npy \(float frames\): values span \[1.5"):
        data.steps_per_epoch(_config(tmp_path, root))
    nan = np.full((4, *SIZE, 3), 0.5, np.float32)
    nan[2, 1, 1, 0] = np.nan
    np.save(root / "kitticaltech_npy/train_data.npy", nan)
    with pytest.raises(ValueError, match=r"train_data.npy \(float frames\): train sample 2 holds"):
        data.steps_per_epoch(_config(tmp_path, root))


def test_worker_processes_reopen_the_hkl_file(tmp_path):
    root, train, *_ = _kitti_root(tmp_path)
    c = _config(tmp_path, root, worker_count=1)
    b = next(data.create_train_iterator(c))
    assert b["inputs"].shape == (2, 2, *SIZE, 3)
