"""Caltech Pedestrian's Norpix .seq videos: the reader on a real clip and on variants written
here (8-byte trailers, PNG, raw, cut-off and damaged files), OpenSTL's preprocessing, the test
split built from set*/V*.seq folders, and evaluate.py on it."""

from __future__ import annotations

import io
import os
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from stlight_jax.configs.common import get_base_config
from stlight_jax.data import kitticaltech as kc
from stlight_jax.data import norpix_seq

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A real 30-frame clip from Piotr Dollar's toolbox (BSD; tests/data/caltech/LICENSE-bsd.txt):
# 640x480 JPEG frames (imageFormat 201) with 16-byte trailers, the Caltech videos' container.
CLIP = os.path.join(REPO, "tests", "data", "caltech", "peds30.seq")


def _jpegs(n=None):
    """The clip's JPEG frames as stored, read independently of norpix_seq.scan_seq (16-byte
    trailers)."""
    data, out, at = open(CLIP, "rb").read(), [], 1024
    while at < len(data) and (n is None or len(out) < n):
        size = struct.unpack_from("<I", data, at)[0]
        out.append(data[at + 4 : at + size])
        at += size + 16
    return out


def _pil(b):
    return np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))


def _write_seq(path, frames, fmt, size=(640, 480), trailer=8, header_frames=None, depth=24):
    """A .seq file as Norpix lays it out: `frames` are encoded bytes (compressed formats) or
    uint8 arrays (raw: stored as given, so pass BGR for 200)."""
    w, h = size
    ch = depth // 8
    head = bytearray(1024)
    struct.pack_into("<I", head, 0, 0xFEED)
    head[4:24] = "Norpix seq".encode("utf-16-le")
    struct.pack_into("<iI", head, 28, 3, 1024)
    true_size = w * h * ch + 512
    n = len(frames) if header_frames is None else header_frames
    struct.pack_into("<9I", head, 548, w, h, depth, 8, w * h * ch, fmt, n, 0, true_size)
    struct.pack_into("<d", head, 584, 30.0)
    body = bytearray()
    for k, f in enumerate(frames):
        if fmt in (100, 200):
            raw = np.ascontiguousarray(f).tobytes()
            body += raw + struct.pack("<IH", 1, k) + bytes(true_size - len(raw) - 6)
        else:
            body += struct.pack("<I", len(f) + 4) + f + struct.pack("<IHxx", 1, k)
            body += bytes(trailer - 8)
    with open(path, "wb") as fh:
        fh.write(bytes(head) + bytes(body))
    return str(path)


def test_real_clip():
    info = norpix_seq.scan_seq(CLIP)
    assert (info.width, info.height, info.image_format) == (640, 480, 201)
    assert info.num_frames == info.header_frames == 30 and info.trailer == 16
    assert info.fps == pytest.approx(30.303, abs=1e-3)
    frames = norpix_seq.read_seq(CLIP)
    assert frames.shape == (30, 480, 640, 3) and frames.dtype == np.uint8
    jpegs = _jpegs()
    assert len(jpegs) == 30
    # RGB as Pillow decodes the stored JPEGs (OpenCV would give BGR: the channels reversed).
    for i in (0, 17, 29):
        np.testing.assert_array_equal(frames[i], _pil(jpegs[i]))
    assert np.abs(frames[0].astype(int) - frames[0, ..., ::-1]).max() > 50  # not grey
    assert not np.array_equal(frames[0], frames[29])  # a video, not one frame repeated
    np.testing.assert_array_equal(norpix_seq.read_seq(CLIP, [29, 2]), frames[[29, 2]])


def test_variants_8_byte_trailers_png_raw(tmp_path):
    jpegs = _jpegs(4)
    want = np.stack([_pil(b) for b in jpegs])
    p8 = _write_seq(tmp_path / "t8.seq", jpegs, 201, trailer=8)
    assert norpix_seq.scan_seq(p8).trailer == 8
    np.testing.assert_array_equal(norpix_seq.read_seq(p8), want)
    p16 = _write_seq(tmp_path / "t16.seq", jpegs, 201, trailer=16, header_frames=99)
    assert norpix_seq.scan_seq(p16).num_frames == 4  # from the scan; the header's 99 is wrong
    np.testing.assert_array_equal(norpix_seq.read_seq(p16), want)

    def png(a):
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        return buf.getvalue()

    np.testing.assert_array_equal(
        norpix_seq.read_seq(_write_seq(tmp_path / "c.seq", [png(a) for a in want], 2)), want
    )
    grey = want[..., 1]
    grey_png = _write_seq(tmp_path / "g.seq", [png(a) for a in grey], 1, depth=8)
    np.testing.assert_array_equal(norpix_seq.read_seq(grey_png), np.repeat(grey[..., None], 3, -1))
    # Raw colour frames are stored BGR (Norpix order); read_seq returns RGB.
    raw = _write_seq(tmp_path / "r.seq", [a[..., ::-1] for a in want], 200)
    assert norpix_seq.scan_seq(raw).num_frames == 4
    np.testing.assert_array_equal(norpix_seq.read_seq(raw), want)
    mono = _write_seq(tmp_path / "m.seq", list(grey), 100, depth=8)
    np.testing.assert_array_equal(norpix_seq.read_seq(mono), np.repeat(grey[..., None], 3, -1))
    # A grey JPEG (102) decodes to the same grey in all three channels.
    buf = io.BytesIO()
    Image.fromarray(grey[0]).save(buf, format="JPEG")
    out = norpix_seq.read_seq(_write_seq(tmp_path / "gj.seq", [buf.getvalue()], 102, depth=8))
    assert out.shape == (1, 480, 640, 3) and (out[..., 0] == out[..., 2]).all()


def _one_line(match, fn, *args):
    with pytest.raises(ValueError, match=match) as e:
        fn(*args)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_cut_off_and_damaged_files_name_the_file_and_frame(tmp_path):
    data = open(CLIP, "rb").read()
    cut = tmp_path / "cut.seq"
    cut.write_bytes(data[: len(data) - 5000])  # inside frame 29's JPEG
    msg = _one_line("frame 29 is cut off", norpix_seq.read_seq, str(cut))
    assert msg.startswith(f"{cut}: ")
    cut.write_bytes(data[: 1024 + 2])  # inside frame 0's size field
    _one_line(f"{cut}: frame 0 is cut off", norpix_seq.scan_seq, str(cut))
    jpegs = _jpegs(3)
    raw = [_pil(b)[..., ::-1] for b in jpegs]
    rawp = _write_seq(tmp_path / "r.seq", raw, 200)
    blob = open(rawp, "rb").read()
    open(rawp, "wb").write(blob[: 1024 + 2 * (640 * 480 * 3 + 512) + 1000])
    _one_line(f"{rawp}: frame 2 is cut off", norpix_seq.read_seq, rawp)
    bad = _write_seq(tmp_path / "bad.seq", [jpegs[0], b"\x00" * 100, jpegs[2]], 201)
    assert norpix_seq.read_seq(bad, [0, 2]).shape == (2, 480, 640, 3)
    _one_line(f"{bad}: frame 1 is damaged \\(not a JPEG", norpix_seq.read_seq, bad)
    half = _write_seq(tmp_path / "half.seq", [jpegs[0], jpegs[1][: len(jpegs[1]) // 2]], 201)
    _one_line(f"{half}: frame 1 is damaged \\(JPEG", norpix_seq.read_seq, half)
    small = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(small, format="JPEG")
    wrong = _write_seq(tmp_path / "wrong.seq", [small.getvalue()], 201)
    _one_line(f"{wrong}: frame 0 is 8x8, but the header says 640x480", norpix_seq.read_seq, wrong)
    _one_line(f"{bad}: frame 3 asked for, but the file holds 3", norpix_seq.read_seq, bad, [3])
    zero = _write_seq(tmp_path / "zero.seq", [jpegs[0]], 201)
    blob = bytearray(open(zero, "rb").read())
    struct.pack_into("<I", blob, 1024, 2)
    open(zero, "wb").write(bytes(blob))
    _one_line(f"{zero}: frame 0 is damaged \\(its size field reads 2\\)", norpix_seq.scan_seq, zero)
    header_only = tmp_path / "empty.seq"
    header_only.write_bytes(data[:1024])
    _one_line(
        f"{header_only}: holds no frames \\(the header says 30\\)",
        norpix_seq.scan_seq,
        str(header_only),
    )
    short = tmp_path / "short.seq"
    short.write_bytes(data[:100])
    _one_line(f"{short}: 100 bytes, shorter than a .seq header", norpix_seq.scan_seq, str(short))
    notseq = tmp_path / "x.seq"
    notseq.write_bytes(b"\x00" * 2000)
    _one_line(f"{notseq}: not a Norpix .seq file", norpix_seq.scan_seq, str(notseq))
    fmt = bytearray(data[:40000])
    struct.pack_into("<I", fmt, 548 + 20, 101)
    other = tmp_path / "bayer.seq"
    other.write_bytes(bytes(fmt))
    _one_line(f"{other}: imageFormat 101 is not supported", norpix_seq.scan_seq, str(other))
    _one_line(
        f"{tmp_path / 'none.seq'}: a Caltech .seq file does not exist",
        norpix_seq.scan_seq,
        str(tmp_path / "none.seq"),
    )


def test_preprocessing_is_openstls():
    assert list(kc.caltech_kept_frames(10)) == [2, 5, 8]  # OpenSTL's 1-based count % 3 == 0
    frames = norpix_seq.read_seq(CLIP, [2, 5])
    out = kc.resize_crop_caltech(frames)
    assert out.shape == (2, 128, 160, 3) and out.dtype == np.uint8
    skimage = pytest.importorskip("skimage.transform", reason="OpenSTL's process_im uses it")
    for frame, got in zip(frames, out, strict=True):
        # OpenSTL's process_im (PredNet's), then its cache: x / 255 * 255 cast to uint8.
        im = skimage.resize(frame, (128, int(np.round(128 / 480 * 640))), preserve_range=True)
        d = int((im.shape[1] - 160) / 2)
        want = (im[:, d : d + 160] / 255.0 * 255).astype(np.uint8)
        np.testing.assert_array_equal(got, want)


SIZE = (16, 20)  # (H, W): 480x640 resized to height 16 is 21 wide, centre-cropped to 20


def _config(tmp_path, root):
    c = get_base_config()
    c.data.name, c.data.path, c.data.data_dir = "kitticaltech", str(root), str(tmp_path / "c")
    c.data.batch_size, c.data.eval_batch_size, c.data.num_val = 2, 2, 0
    c.model.frames_in, c.model.frames_out = 2, 1
    c.model.image_size, c.model.channels, c.model.patch = SIZE, 3, 4
    c.model.dim, c.model.depth = 16, 2
    return c


def _seq_root(tmp_path, inside_caltech=False):
    root = tmp_path / "data"
    base = root / "caltech" if inside_caltech else root
    for rel in ("set06/V000.seq", "set07/V001.seq"):
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(CLIP, base / rel)
    (base / "set06" / "V000.vbb").write_text("annotations are not read")
    return root


def test_test_split_from_seq_folders(tmp_path):
    from stlight_jax.data import pipeline

    root = _seq_root(tmp_path)
    ds = kc.KittiCaltech(_config(tmp_path, root))
    # 30 frames -> 10 kept per video; windows of 3 from each video's end: 7, 4, 1 (+10).
    assert ds.eval_size("test") == 6 and ds.train_size == 0
    assert "set*/V*.seq only" in ds.describe("test")
    kept = norpix_seq.read_seq(CLIP, range(2, 30, 3))
    want = kc.resize_crop_caltech(kept, SIZE) / np.float32(255)
    got = np.stack([ds.eval_sample("test", i) for i in range(6)])
    assert got.shape == (6, 3, *SIZE, 3) and got.dtype == np.float32
    for k, start in enumerate([7, 4, 1]):
        np.testing.assert_allclose(got[k], want[start : start + 3], atol=1e-7)
        np.testing.assert_allclose(got[k + 3], want[start : start + 3], atol=1e-7)
    cache = os.listdir(tmp_path / "c" / "caltech_seq")
    assert len(cache) == 1 and cache[0].endswith(".npy")  # no temp file left behind
    stamp = os.stat(tmp_path / "c" / "caltech_seq" / cache[0]).st_mtime_ns
    again = kc.KittiCaltech(_config(tmp_path, root))
    np.testing.assert_array_equal(again.eval_sample("test", 5), got[5])
    assert os.stat(tmp_path / "c" / "caltech_seq" / cache[0]).st_mtime_ns == stamp  # reused
    # Training needs KITTI: a .seq-only root says so in one line.
    with pytest.raises(ValueError, match="0 training samples are fewer than"):
        pipeline.steps_per_epoch(_config(tmp_path, root))
    # Beside kitti_hkl/: KITTI trains, the .seq files in caltech/ are the test split.
    root2 = _seq_root(tmp_path / "b", inside_caltech=True)
    assert kc.KittiCaltech(_config(tmp_path, root2)).eval_size("test") == 6
    import h5py

    (root2 / "kitti_hkl").mkdir()
    with h5py.File(root2 / "kitti_hkl" / "X_train.hkl", "w") as f:
        f.create_dataset("data", data=np.zeros((9, *SIZE, 3), np.uint8))
    with h5py.File(root2 / "kitti_hkl" / "sources_train.hkl", "w") as f:
        f.create_dataset("data", data=np.array([b"a"] * 9))
    both = kc.KittiCaltech(_config(tmp_path, root2))
    assert both.train_size == 3 and both.eval_size("test") == 6
    assert "kitti_hkl/ + Caltech set*/V*.seq" in both.describe("test")
    c = _config(tmp_path, root)
    c.model.frames_in = 10
    with pytest.raises(ValueError, match="no Caltech video has 11 kept frames"):
        kc.KittiCaltech(c)


@pytest.mark.slow  # an evaluate.py run: ~13 s on 2 cores
def test_evaluate_on_a_tiny_seq_set(tmp_path):
    """evaluate.py scores a model (random weights, written as a PyTorch state_dict) on the
    test split built from set*/V*.seq folders."""
    from stlight_jax.weights import torch_files as convert
    from stlight_jax.weights.loading import model_config
    from stlight_jax.weights.param_table import expected_torch_shapes

    root = _seq_root(tmp_path)
    rng = np.random.default_rng(0)
    state = {}
    for key, shape in expected_torch_shapes(model_config(_config(tmp_path, root))).items():
        if key.endswith("num_batches_tracked"):
            state[key] = np.zeros(shape, np.int64)
        elif key.endswith("running_var"):
            state[key] = np.ones(shape, np.float32)
        else:
            state[key] = (0.1 * rng.standard_normal(shape)).astype(np.float32)
    weights = tmp_path / "w.safetensors"
    convert.save_state_dict_file(state, str(weights))
    over = {
        "data.path": root, "data.data_dir": tmp_path / "c", "data.eval_batch_size": 4,
        "model.frames_in": 2, "model.frames_out": 1, "model.image_size": "(16,20)",
        "model.dim": 16, "model.depth": 2, "model.patch": 4,
    }  # fmt: skip
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "evaluate.py"), "--config=configs/kitticaltech.py:1M"]
        + [f"--config.{k}={v}" for k, v in over.items()]
        + [f"--weights={weights}", f"--out={tmp_path / 'eval'}", "--num_samples=0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    m = json.load(open(tmp_path / "eval" / "metrics.json"))
    assert m["num_samples"] == 6 and m["split"] == "test"
    assert "set*/V*.seq" in m["data_source"]
    # The last-frame baseline on real video: small but not zero.
    assert 0 < m["metrics"]["last_frame"]["mse"] < m["metrics"]["zeros"]["mse"]
