"""TaxiBJ, KTH and custom arrays on small synthetic files, including their error messages."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from stlight_jax import data
from stlight_jax.configs.common import get_base_config
from stlight_jax.data import kth
from stlight_jax.training import loop as train
from tests.cli_runs import assert_one_line_error, run_script


def _config(tmp_path, name, path, frames=(4, 4), size=(32, 32), channels=2, **d):
    c = get_base_config()
    c.data.name, c.data.path, c.data.data_dir = name, str(path), str(tmp_path / "cache")
    c.data.batch_size, c.data.eval_batch_size, c.data.num_val = 4, 4, 2
    c.model.frames_in, c.model.frames_out = frames
    c.model.image_size, c.model.channels = size, channels
    for k, v in d.items():
        setattr(c.data, k, v)
    return c


def _taxibj(path, n_train=11, n_test=3, lo=-1.0):
    rng = np.random.default_rng(0)
    arrays = {
        f"{xy}_{s}": rng.uniform(lo, 1.0, (n, 4, 2, 32, 32)).astype(np.float32)
        for s, n in (("train", n_train), ("test", n_test))
        for xy in "XY"
    }
    np.savez(path, **arrays)
    return arrays


def test_taxibj_layout_scale_and_splits(tmp_path):
    arrays = _taxibj(tmp_path / "dataset.npz")
    c = _config(tmp_path, "taxibj", tmp_path / "dataset.npz")
    assert data.steps_per_epoch(c) == 2  # 11 - 2 held out = 9 -> 2 batches of 4
    seen = []
    it = data.create_train_iterator(c)
    for _ in range(2):
        b = next(it)
        assert b["inputs"].shape == (4, 4, 32, 32, 2)
        seen += [b["inputs"][j] for j in range(4)]
    # Each training sample is (X+1)/2 of one of the first 9 rows, NTCHW -> NTHWC, no repeats.
    want = [(arrays["X_train"][r].transpose(0, 2, 3, 1) + 1) / 2 for r in range(9)]
    rows = [next(r for r in range(9) if np.allclose(s, want[r])) for s in seen]
    assert len(set(rows)) == 8
    val = list(data.create_eval_iterator(c, "val"))
    np.testing.assert_allclose(
        val[0]["targets"][1], (arrays["Y_train"][10].transpose(0, 2, 3, 1) + 1) / 2, rtol=1e-6
    )
    assert val[0]["mask"].tolist() == [1, 1, 0, 0]
    assert "rows 9-10" in data.describe_source(c, "val")
    # Epochs reshuffle.
    e1 = [next(it)["inputs"] for _ in range(2)]
    assert not all(np.array_equal(a, b) for a, b in zip(e1, [seen[0:4], seen[4:8]], strict=True))


def test_taxibj_errors(tmp_path):
    p = tmp_path / "dataset.npz"
    _taxibj(p, lo=-1.5)
    c = _config(tmp_path, "taxibj", p)
    with pytest.raises(
        ValueError, match=r"X_train: values span \[-1.4\d*, .*declared range is \[-1, 1\]"
    ):
        data.steps_per_epoch(c)
    _taxibj(p)
    c.model.frames_in = 6
    with pytest.raises(ValueError, match="X_train has 4 frames but config.model.frames_in=6"):
        data.steps_per_epoch(c)
    c.model.frames_in, c.model.image_size = 4, (64, 64)
    with pytest.raises(
        ValueError, match=r"frames are 32x32 but config.model.image_size=\(64, 64\)"
    ):
        data.steps_per_epoch(c)
    c.data.path = str(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match="missing.npz: config.data.path does not exist"):
        data.steps_per_epoch(c)
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    c.data.path = str(tmp_path / "broken.npz")
    with pytest.raises(ValueError, match="broken.npz: cannot read"):
        data.steps_per_epoch(c)


def test_custom_arrays_layouts_range_and_sharding(tmp_path):
    n, t = 14, 6
    # Sample i is filled with i, so batches reveal which samples they hold.
    arr = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None, None], (n, t, 1, 8, 8))
    np.save(tmp_path / "x.npy", np.ascontiguousarray(arr))
    c = _config(
        tmp_path,
        "custom",
        tmp_path / "x.npy",
        frames=(2, 3),
        size=(8, 8),
        channels=1,
        layout="NTCHW",
        value_range=(0, 20),
        batch_size=4,
        num_val=2,
    )
    # A lone array: rows 0-9 train, 10-11 validation, 12-13 test (num_val=2 each).
    assert data.steps_per_epoch(c) == 2
    shards = [data.create_train_iterator(c, p, 2) for p in range(2)]
    whole = data.create_train_iterator(c)
    for _epoch in range(2):
        ids = []
        for _ in range(2):
            g = next(whole)
            parts = [next(s) for s in shards]
            assert g["inputs"].shape == (4, 2, 8, 8, 1) and g["targets"].shape == (4, 3, 8, 8, 1)
            np.testing.assert_array_equal(np.concatenate([p["inputs"] for p in parts]), g["inputs"])
            ids += np.rint(g["inputs"][:, 0, 0, 0, 0] * 20).astype(int).tolist()
        assert len(set(ids)) == 8 and set(ids) <= set(range(10))  # never the held-out 10-13
    val = next(iter(data.create_eval_iterator(c, "val")))
    np.testing.assert_allclose(val["inputs"][:2, 0, 0, 0, 0], [10 / 20, 11 / 20])
    test = next(iter(data.create_eval_iterator(c, "test")))
    np.testing.assert_allclose(test["inputs"][:2, 0, 0, 0, 0], [12 / 20, 13 / 20])
    assert test["mask"].tolist() == [1, 1, 0, 0]
    assert "(train rows 12-13); test = last 2 training samples, held out" in (
        data.describe_source(c, "test")
    )
    for it in (whole, *shards):
        it.close()

    def save_fresh(name, array):
        # A new file each time: prefetch threads may still read the memmapped x.npy, and
        # truncating a mapped file under them is a SIGBUS.
        (tmp_path / name).mkdir()
        np.save(tmp_path / name / "x.npy", array)
        c.data.path = str(tmp_path / name / "x.npy")

    save_fresh("shifted", np.ascontiguousarray(arr) + 30)
    with pytest.raises(
        ValueError, match=r"x.npy \(config.data.value_range\): values span \[30, 43\]"
    ):
        data.steps_per_epoch(c)
    c.data.layout = "NTHWC"
    with pytest.raises(
        ValueError, match=r"x.npy: frames are 1x8 but config.model.image_size=\(8, 8\)"
    ):
        data.steps_per_epoch(c)
    save_fresh("short", np.zeros((3, 4, 8, 8, 1)))
    with pytest.raises(ValueError, match=r"has 4 frames \(layout NTHWC\) but .* = 2 \+ 3 = 5"):
        data.steps_per_epoch(c)
    save_fresh("four_d", np.zeros((3, 4, 8, 8)))
    with pytest.raises(ValueError, match=r"x.npy must be 5-D NTHWC .*\(3, 4, 8, 8\)"):
        data.steps_per_epoch(c)
    np.savez(tmp_path / "y.npz", train=np.zeros((5, 5, 8, 8, 1)), test=np.ones((2, 5, 8, 8, 1)))
    c.data.path, c.data.value_range = str(tmp_path / "y.npz"), (0, 1)
    test = list(data.create_eval_iterator(c, "test"))
    assert len(test) == 1 and test[0]["mask"].tolist() == [1, 1, 0, 0]
    assert test[0]["targets"][:2].min() == 1.0


def _kth_root(tmp_path, frames=35, size=(24, 32)):
    rng = np.random.default_rng(0)
    root = tmp_path / "kth"
    for action in ("boxing", "running"):
        for person in ("01", "02", "17"):
            d = root / action / f"person{person}_{action}_d1_uncomp"
            d.mkdir(parents=True)
            for f in range(1, frames + 1):
                img = rng.integers(0, 256, size + (3,), dtype=np.uint8)
                Image.fromarray(img).save(d / f"image_{f:04d}.png")
    return root


def test_kth_window_rule_split_and_cache(tmp_path):
    root = _kth_root(tmp_path)
    c = _config(tmp_path, "kth", root, frames=(4, 6), size=(16, 16), channels=1, num_val=0)
    ix = kth.load_index(str(root), kth.TRAIN_PERSONS, 10, c.data.data_dir)
    # Backward scan from each video's end: boxing (non-overlapping) takes frames 26-35, 16-25,
    # 6-15; running (stride 3) takes windows ending at 35, 32, ..., 11 (9 windows).
    starts = {}
    for v, s in ix["windows"]:
        starts.setdefault(ix["videos"][v], []).append(s)
    assert starts["boxing/person01_boxing_d1_uncomp"] == [25, 15, 5]
    assert starts["running/person02_running_d1_uncomp"] == [25, 22, 19, 16, 13, 10, 7, 4, 1]
    assert all("person17" not in v for v in ix["videos"])
    assert len(list((tmp_path / "cache").glob("kth_index_10_*.json"))) == 1
    assert data.steps_per_epoch(c) == (2 * 3 + 2 * 9) // 4
    b = next(data.create_train_iterator(c))
    assert (
        b["inputs"].shape == (4, 4, 16, 16, 1) and 0 <= b["inputs"].min() <= b["inputs"].max() <= 1
    )
    test = list(data.create_eval_iterator(c, "test"))  # person 17 only: 3 + 9 windows
    assert sum(x["mask"].sum() for x in test) == 12
    assert "the test split (num_val=0" in data.describe_source(c, "val")
    # The first test window is person17 running frames 26-35 (first in the scan order).
    frame = np.asarray(Image.open(root / "running/person17_running_d1_uncomp/image_0026.png"))
    want = kth.resize_bilinear(frame[:, :, 0], (16, 16)) / 255
    np.testing.assert_allclose(test[0]["inputs"][0, 0, ..., 0], want, rtol=1e-6)


# cv2.resize(INTER_LINEAR) on a KTH frame (120 x 160 -> 128 x 128), stored from
# opencv-python-headless 5.1.0 (Dec 2026; opencv is not a dependency; regenerate with
# cv2.resize on the same inputs). Its weights, read by resizing one-hot rows: output
# column 4k + r of 160 -> 128 mixes input columns 5k + r and 5k + r + 1 with ((7 - 2r) / 8,
# (1 + 2r) / 8); output row i of 120 -> 128 is input row 0 for i = 0, row 119 for i = 127, and
# otherwise f = (30 i - 1) / 32 split as floor(f) with weight 1 - frac(f), the next with frac(f).
# And cv2's output for the integer pattern below at a few pixels, with its sum.
CV2_KTH_PATTERN = {
    (0, 0): 12.625,
    (0, 127): 174.375,
    (127, 0): 63.625,
    (127, 127): 225.375,
    (1, 1): 173.65234375,
    (5, 9): 103.96484375,
    (37, 64): 145.86328125,
    (64, 37): 160.0390625,
    (100, 3): 57.0625,
    (126, 126): 76.80859375,
    (63, 101): 108.0625,
}
CV2_KTH_PATTERN_SUM = 2088203.25


def _cv2_weights_160_to_128() -> np.ndarray:
    w = np.zeros((128, 160))
    for k in range(32):
        for r in range(4):
            w[4 * k + r, 5 * k + r : 5 * k + r + 2] = (7 - 2 * r) / 8, (1 + 2 * r) / 8
    return w


def _cv2_weights_120_to_128() -> np.ndarray:
    w = np.zeros((128, 120))
    w[0, 0] = w[127, 119] = 1
    for i in range(1, 127):
        s, frac = divmod(30 * i - 1, 32)
        w[i, s : s + 2] = 1 - frac / 32, frac / 32
    return w


def test_kth_resize_matches_stored_cv2_values():
    w_cols, w_rows = _cv2_weights_160_to_128(), _cv2_weights_120_to_128()
    assert (w_cols[:2, :3] == [[0.875, 0.125, 0], [0, 0.625, 0.375]]).all()  # as cv2 gave them
    assert (w_rows[1, :2] == [0.09375, 0.90625]).all() and (
        w_rows[126, 118:] == [0.90625, 0.09375]
    ).all()
    np.testing.assert_array_equal(kth._resize_weights(160, 128), w_cols)
    np.testing.assert_array_equal(kth._resize_weights(120, 128), w_rows)
    i, j = np.mgrid[:120, :160]
    pattern = ((37 * i + 101 * j + (i * j) % 17) % 256).astype(np.float32)
    got = kth.resize_bilinear(pattern, (128, 128))
    for pixel, want in CV2_KTH_PATTERN.items():
        assert got[pixel] == pytest.approx(want, abs=1e-3), pixel
    assert got.astype(np.float64).sum() == pytest.approx(CV2_KTH_PATTERN_SUM, abs=0.5)


def test_resize_matches_cv2_linear_convention():
    # Upsampling 2 -> 4 with half-pixel centres and clamped borders: [a, .75a+.25b, .25a+.75b, b].
    img = np.array([[0.0, 4.0]], np.float32).repeat(2, 0)
    np.testing.assert_allclose(kth.resize_bilinear(img, (2, 4))[0], [0, 1, 3, 4])
    cv2 = pytest.importorskip("cv2", reason="opencv is not a dependency; compared when present")
    x = np.random.default_rng(0).uniform(0, 255, (120, 160)).astype(np.float32)
    np.testing.assert_allclose(
        kth.resize_bilinear(x, (128, 128)), cv2.resize(x, (128, 128)), atol=1e-3
    )


def test_kth_errors(tmp_path):
    root = _kth_root(tmp_path, frames=8)
    c = _config(tmp_path, "kth", root, frames=(4, 6), size=(16, 16), channels=1)
    with pytest.raises(
        ValueError, match=r"no 10-frame windows \(frames_in \+ frames_out = 4 \+ 6\)"
    ):
        data.steps_per_epoch(c)
    c.data.path = str(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="nowhere: config.data.path is not a directory"):
        data.steps_per_epoch(c)


def test_kth_10_to_40_uses_50_frame_windows_and_the_same_split(tmp_path):
    from stlight_jax.configs import kth40

    root = _kth_root(tmp_path, frames=105, size=(8, 8))
    c = kth40.get_config("S")
    c.data.path, c.data.data_dir = str(root), str(tmp_path / "cache")
    c.model.image_size, c.model.dim, c.model.depth = (8, 8), 16, 2
    c.data.batch_size = c.data.eval_batch_size = 4
    # 105 frames: boxing takes frames 56-105 and 6-55; running (stride 3) windows end at
    # 105, 102, ..., 51 (19 windows). Persons 01 and 02 train, 17 tests.
    ix = kth.load_index(str(root), kth.TRAIN_PERSONS, 50, c.data.data_dir)
    starts = {}
    for v, s in ix["windows"]:
        starts.setdefault(ix["videos"][v], []).append(s)
    assert starts["boxing/person01_boxing_d1_uncomp"] == [55, 5]
    assert len(starts["running/person02_running_d1_uncomp"]) == 19
    assert data.steps_per_epoch(c) == (2 * 2 + 2 * 19) // 4
    b = next(data.create_train_iterator(c))
    assert b["inputs"].shape == (4, 10, 8, 8, 1) and b["targets"].shape == (4, 40, 8, 8, 1)
    test = list(data.create_eval_iterator(c, "test"))
    assert sum(x["mask"].sum() for x in test) == 2 + 19


def test_degenerate_data_files_are_refused_in_one_line_naming_the_file(tmp_path):
    """Issue 22: a zero-byte file, a directory, complex values: each one line naming the file,
    raised while the dataset is opened (before any training)."""
    c = _config(tmp_path, "custom", tmp_path / "x.npy", frames=(2, 2), size=(8, 8), channels=1)
    cases = []
    (tmp_path / "empty.npy").write_bytes(b"")
    cases.append(("custom", "empty.npy", r"empty.npy: config.data.path is an empty file \(0 b"))
    (tmp_path / "empty.npz").write_bytes(b"")
    cases.append(("taxibj", "empty.npz", r"empty.npz: config.data.path is an empty file"))
    (tmp_path / "adir.npy").mkdir()
    cases.append(("custom", "adir.npy", r"adir.npy: config.data.path is a directory"))
    cases.append(("taxibj", "adir.npy", r"adir.npy: config.data.path is a directory"))
    np.save(tmp_path / "complex.npy", np.full((9, 4, 8, 8, 1), 0.5 + 0.25j, np.complex64))
    cases.append(("custom", "complex.npy", r"complex.npy: holds complex numbers \(dtype compl"))
    z = np.zeros((9, 4, 8, 8, 1))
    np.savez(tmp_path / "complex.npz", train=z, test=z[:2].astype(np.complex128))
    cases.append(("custom", "complex.npz", r"complex.npz: test: holds complex numbers"))
    arrays = {f"{xy}_{s}": np.zeros((3, 4, 2, 32, 32)) for s in ("train", "test") for xy in "XY"}
    arrays["Y_test"] = arrays["Y_test"] + 0j
    np.savez(tmp_path / "taxibj.npz", **arrays)
    cases.append(("taxibj", "taxibj.npz", r"taxibj.npz: Y_test: holds complex numbers"))
    (tmp_path / "trunc.npy").write_bytes(b"\x93NUMPY\x01")
    cases.append(("custom", "trunc.npy", r"trunc.npy: cannot read"))
    for name, file, pattern in cases:
        c.data.name, c.data.path = name, str(tmp_path / file)
        if name == "taxibj":
            c.model.image_size, c.model.channels = (32, 32), 2
        else:
            c.model.image_size, c.model.channels = (8, 8), 1
        with pytest.raises(ValueError, match=pattern) as err:
            data.steps_per_epoch(c)
        assert "\n" not in str(err.value), file


def test_lone_array_holds_out_a_test_set_or_is_refused_before_training(tmp_path):
    """A lone .npy (configs/custom.py's usage) has a test set for training's final test pass:
    its last num_val samples; too few samples, or num_val=0, are refused when it is opened."""
    np.save(tmp_path / "x.npy", np.zeros((9, 4, 8, 8, 1), np.float32))
    c = _config(tmp_path, "custom", tmp_path / "x.npy", frames=(2, 2), size=(8, 8), channels=1)
    c.data.num_val = 2
    assert data.get_dataset(c).eval_size("test") == 2
    assert data.get_dataset(c).eval_size("val") == 2 and data.steps_per_epoch(c) == 1
    c.data.num_val = 0
    with pytest.raises(ValueError, match=r"x.npy: no test array, and config.data.num_val=0"):
        data.steps_per_epoch(c)
    c.data.num_val = 5
    with pytest.raises(ValueError, match=r"num_val=5 leaves no training samples out of 9"):
        data.steps_per_epoch(c)
    # An .npz of train and val: the test set is the last num_val training samples.
    np.savez(tmp_path / "tv.npz", train=np.zeros((9, 4, 8, 8, 1)), val=np.ones((3, 4, 8, 8, 1)))
    c.data.path, c.data.num_val = str(tmp_path / "tv.npz"), 4
    ds = data.get_dataset(c)
    assert (ds.train_size, ds.eval_size("val"), ds.eval_size("test")) == (5, 3, 4)


# ---------------------------------------------------------------------------------------------
# Non-finite data is refused at load, naming the file, the split and the first bad index.


def test_nan_in_custom_val_split_is_refused(config, tmp_path):
    with np.load(config.data.path) as z:
        parts = {k: z[k].copy() for k in z.files}
    parts["val"][5, 2, 3, 4, 0] = np.nan
    parts["val"][6, 0, 0, 0, 0] = np.inf
    np.savez(config.data.path, **parts)
    with pytest.raises(ValueError) as err:
        data.steps_per_epoch(config)
    msg = str(err.value)
    assert "data.npz: val" in msg and "sample 5" in msg and "(5, 2, 3, 4, 0)" in msg
    assert "nan" in msg and "\n" not in msg


def test_inf_in_lone_custom_array_is_refused(config, tmp_path):
    with np.load(config.data.path) as z:
        train_part = z["train"].copy()
    train_part[31, 7, 15, 15, 0] = -np.inf
    config.data.path = str(tmp_path / "lone.npy")
    np.save(config.data.path, train_part)
    with pytest.raises(ValueError, match=r"lone.npy .*train part, sample 31 .*-inf.*\(31, 7"):
        data.steps_per_epoch(config)


def test_nan_in_taxibj_is_refused(tmp_path):
    from stlight_jax.configs.common import get_base_config

    rng = np.random.default_rng(1)
    arrays = {
        f"{xy}_{s}": rng.uniform(-1, 1, (n, 4, 2, 32, 32)).astype(np.float32)
        for s, n in (("train", 6), ("test", 3))
        for xy in "XY"
    }
    arrays["Y_test"][2, 1, 0, 7, 9] = np.nan
    path = str(tmp_path / "dataset.npz")
    np.savez(path, **arrays)
    c = get_base_config()
    c.data.name, c.data.path, c.data.num_val = "taxibj", path, 2
    c.model.frames_in, c.model.frames_out, c.model.image_size, c.model.channels = 4, 4, (32, 32), 2
    with pytest.raises(ValueError, match=r"dataset.npz: Y_test: sample 2 .*nan.*\(2, 1, 0, 7, 9\)"):
        data.steps_per_epoch(c)


# ---------------------------------------------------------------------------------------------
# Degenerate data: one line before any training, in train.py and predict mode; a lone .npy.


@pytest.mark.slow  # three command-line runs: ~40 s on 2 cores
def test_degenerate_data_is_one_line_before_training_in_train_and_predict(
    config, weights, tmp_path
):
    empty = tmp_path / "empty.npy"
    empty.write_bytes(b"")
    workdir = tmp_path / "run"
    proc = run_script(
        ["train.py"], f"--config=tests/tiny_config.py:{empty}", f"--workdir={workdir}"
    )
    assert_one_line_error(proc, "train.py", f"{empty}: config.data.path is an empty file")
    assert not os.path.exists(workdir / "checkpoints")
    np.save(tmp_path / "complex.npy", np.full((1, 4, 16, 16, 1), 0.5 + 0j, np.complex64))
    predict = ["--mode=predict", f"--config=tests/tiny_config.py:{config.data.path}"]
    for name, needle in (
        ("empty.npy", f"{empty}: --input is an empty file (0 bytes)"),
        ("complex.npy", "complex.npy: input dtype complex64 is not supported"),
    ):
        proc = run_script(
            ["evaluate.py"],
            *predict,
            f"--weights={weights}",
            f"--input={tmp_path / name}",
            f"--out={tmp_path / 'pred'}",
        )
        assert_one_line_error(proc, "evaluate.py", needle)
    assert not os.path.exists(tmp_path / "pred" / "predictions.npy")


def test_lone_npy_trains_and_scores_its_held_out_test_set(config, tmp_path):
    """configs/custom.py's usage, a lone .npy, ends with test metrics (its last num_val
    samples), instead of failing "no test samples" after every epoch."""
    with np.load(config.data.path) as z:
        lone = np.concatenate([z["train"], z["val"], z["test"]])  # 48 samples
    config.data.path = str(tmp_path / "lone.npy")
    np.save(config.data.path, lone)
    config.num_epochs = 1  # 48 - 8 test - 8 val = 32 training samples: 4 steps
    result = train.train_and_evaluate(config, str(tmp_path / "run"))
    assert result["model"]["num_samples"] == 8, result
