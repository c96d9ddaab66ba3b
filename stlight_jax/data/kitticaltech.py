"""KITTI -> Caltech as OpenSTL prepares it: train on KITTI's .hkl frames, test on Caltech frames.

`config.data.path` is the root holding either `kitti_hkl/` (X_train.hkl + sources_train.hkl,
optionally X_val.hkl + sources_val.hkl) with `caltech/` (data_cache.npy + indices_cache.npy,
or Caltech Pedestrian's own `set*/V*.seq` videos), or OpenSTL's prepared
`kitticaltech_npy/{train,test}_{data,idx}.npy`, or only Caltech's `set*/V*.seq` (in the root
or in `caltech/`: a test split, for evaluation). `norpix_seq.read_seq` decodes the .seq
videos (struct and Pillow); `caltech_from_seqs` prepares them as OpenSTL does (every 3rd frame,
height 128, centre-cropped to width 160) in RGB, the order of the KITTI frames (its docstring
says why OpenSTL's own cache is BGR). Frames are stored
(N, H, W, C) RGB, uint8 (divided by 255) or float on [0, 1]. The .hkl files are read with h5py
directly: most copies were written by an old hickle that current hickle refuses to open.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile

import numpy as np

from stlight_jax.data import common, norpix_seq

HKL_DIR = "kitti_hkl"
CALTECH_DIR = "caltech"
NPY_DIR = "kitticaltech_npy"


def source_windows(sources, seq_len: int) -> np.ndarray:
    """OpenSTL's (PredNet's) window starts: a backward scan from the last frame; at index i, if
    frame i and frame i - seq_len + 1 come from the same source, a window starts there and the
    scan jumps back a whole window, else it steps back one frame. Windows never cross sources
    and never overlap."""
    starts = []
    index = len(sources) - 1
    while index >= seq_len - 1:
        if sources[index] == sources[index - seq_len + 1]:
            starts.append(index - seq_len + 1)
            index -= seq_len - 1
        index -= 1
    return np.asarray(starts, np.int64)


def _first_dataset(f, where: str):
    """The first HDF5 dataset in `f` (depth first, names sorted). hickle 2 stored the array as
    `data_0` at the root, hickle 3 inside a `data` group, hickle >= 4 as `data`: all are the
    file's first dataset, which is why no hickle is needed to read them."""
    found = []

    def visit(name, obj):
        import h5py

        if isinstance(obj, h5py.Dataset):
            found.append(name)
            return True  # stops the walk
        return None

    f.visititems(visit)
    if not found:
        raise ValueError(f"{where}: the HDF5 file holds no dataset")
    return f[found[0]]


def read_hkl_sources(path: str) -> list:
    """The per-frame source names of a sources_*.hkl file, as str (bytes are decoded)."""
    with _open_h5(path) as f:
        values = _first_dataset(f, path)[()]
    values = np.atleast_1d(values)
    if values.ndim != 1:
        raise ValueError(f"{path}: expected one source name per frame, got shape {values.shape}")
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values.tolist()]


def _open_h5(path: str):
    try:
        import h5py  # a runtime dependency; only this dataset needs it
    except ImportError as e:  # pragma: no cover - h5py is in requirements.txt
        raise ValueError(f"{path}: reading .hkl files needs h5py (pip install h5py)") from e
    if not os.path.isfile(path):
        raise ValueError(f"{path}: file not found under config.data.path")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise ValueError(f"{path}: cannot read as HDF5/.hkl ({e})") from e


class _HklFrames:
    """Lazy (N, H, W, C) frames of an X_*.hkl file. The h5py handle is reopened in each
    process (handles cannot be pickled into Grain's worker processes)."""

    def __init__(self, path: str):
        self.path = path
        self._file = None
        ds = self._dataset()
        self.shape, self.dtype, self.ndim = ds.shape, ds.dtype, ds.ndim

    def _dataset(self):
        if self._file is None:
            self._file = _open_h5(self.path)
        return _first_dataset(self._file, self.path)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> np.ndarray:
        return self._dataset()[index]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_file": None}


def _load_npy(path: str) -> np.ndarray:
    if not os.path.exists(path):
        raise ValueError(f"{path}: file not found under config.data.path")
    common.check_data_file(path, "a file under config.data.path")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, EOFError, ValueError) as e:
        raise ValueError(f"{path}: cannot read as .npy ({e})") from e


def _check_indices(idx: np.ndarray, n_frames: int, seq_len: int, where: str) -> np.ndarray:
    idx = np.asarray(idx)
    if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(
            f"{where}: expected a 1-D integer array of window starts, got {idx.dtype} {idx.shape}"
        )
    if len(idx) == 0:
        raise ValueError(f"{where}: holds no window starts")
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0 or hi + seq_len > n_frames:
        raise ValueError(
            f"{where}: window starts span [{lo}, {hi}] but {seq_len}-frame windows (frames_in + "
            f"frames_out) must fit in the {n_frames} frames"
        )
    return idx.astype(np.int64)


class KittiCaltech(common.ArrayDataset):
    """Windows of frames_in + frames_out consecutive frames; inputs first, then targets."""

    def __init__(self, config):
        root = config.data.path
        if not root:
            raise ValueError(
                f"KITTI -> Caltech needs config.data.path (the root holding {HKL_DIR}/ and "
                f"{CALTECH_DIR}/, or {NPY_DIR}/)"
            )
        if not os.path.isdir(root):
            raise ValueError(f"{root}: config.data.path is not a directory")
        m = config.model
        self.seq_len = m.frames_in + m.frames_out
        self._frames: dict[str, object] = {}
        self._starts: dict[str, np.ndarray] = {}
        hkl, npy = os.path.join(root, HKL_DIR), os.path.join(root, NPY_DIR)
        cal = os.path.join(root, CALTECH_DIR)
        seqs = find_caltech_seqs(cal) or find_caltech_seqs(root)  # .seq wins over a cache
        if os.path.isdir(hkl):
            self._from_hkl(hkl)
            if seqs:
                self.layout = f"{HKL_DIR}/ + Caltech set*/V*.seq"
                self._from_seqs(config, seqs)
            else:
                self.layout = f"{HKL_DIR}/ + {CALTECH_DIR}/"
                self._add(
                    "test",
                    os.path.join(cal, "data_cache.npy"),
                    os.path.join(cal, "indices_cache.npy"),
                )
        elif seqs and not os.path.isdir(npy):
            self.layout = "Caltech set*/V*.seq only: a test split, no KITTI training frames"
            self._from_seqs(config, seqs)
            self._frames["train"] = self._frames["test"]
            self._starts["train"] = np.zeros(0, np.int64)
        elif os.path.isdir(npy):
            self.layout = f"{NPY_DIR}/"
            for part in ("train", "test"):
                self._add(
                    part,
                    os.path.join(npy, f"{part}_data.npy"),
                    os.path.join(npy, f"{part}_idx.npy"),
                )
        else:
            raise ValueError(
                f"{root}: config.data.path holds neither {HKL_DIR}/ nor {NPY_DIR}/ (OpenSTL's "
                "KITTI -> Caltech layouts) nor Caltech's set*/V*.seq videos"
            )
        for part, frames in self._frames.items():
            self._check_frames(config, part, frames)
        parts = {p: len(s) for p, s in self._starts.items()}
        super().__init__(config, parts, "KITTI -> Caltech", f"{root} ({self.layout})")

    def _from_hkl(self, hkl: str) -> None:
        for part in ("train", "val"):
            x = os.path.join(hkl, f"X_{part}.hkl")
            src = os.path.join(hkl, f"sources_{part}.hkl")
            if part == "val" and not os.path.exists(x):
                continue  # no stored validation split: ArrayDataset falls back to num_val
            frames = _HklFrames(x)
            sources = read_hkl_sources(src)
            if len(sources) != len(frames):
                raise ValueError(
                    f"{src}: has {len(sources)} source names but {x} has {len(frames)} frames"
                )
            starts = source_windows(sources, self.seq_len)
            if len(starts) == 0:
                raise ValueError(
                    f"{x}: no source has {self.seq_len} consecutive frames (frames_in + frames_out)"
                )
            self._frames[part], self._starts[part] = frames, starts

    def _from_seqs(self, config, files: list[str]) -> None:
        size = tuple(int(v) for v in config.model.image_size)
        cache_dir = os.path.join(config.data.data_dir, "caltech_seq")
        frames, sources = caltech_from_seqs(files, size, cache_dir)
        starts = source_windows(sources, self.seq_len)
        if len(starts) == 0:
            raise ValueError(
                f"{os.path.dirname(os.path.dirname(files[0]))}: no Caltech video has "
                f"{self.seq_len} kept frames (frames_in + frames_out; every 3rd frame is kept)"
            )
        self._frames["test"], self._starts["test"] = frames, starts

    def _add(self, part: str, data_path: str, idx_path: str) -> None:
        frames = _load_npy(data_path)
        if frames.ndim != 4:
            raise ValueError(f"{data_path}: expected (N, H, W, C) frames, got shape {frames.shape}")
        self._frames[part] = frames
        self._starts[part] = _check_indices(
            _load_npy(idx_path), len(frames), self.seq_len, idx_path
        )

    def _check_frames(self, config, part: str, frames) -> None:
        where = getattr(frames, "path", None) or getattr(frames, "filename", None) or part
        if frames.ndim != 4:
            raise ValueError(f"{where}: expected (N, H, W, C) frames, got shape {frames.shape}")
        common.check_frames_size_channels(
            config, where, self.seq_len, tuple(frames.shape[1:3]), frames.shape[3]
        )
        if frames.dtype != np.uint8:
            if not np.issubdtype(frames.dtype, np.floating):
                raise ValueError(f"{where}: frames must be uint8 or float, got {frames.dtype}")
            common.check_range(frames, 0.0, 1.0, f"{where} (float frames)", part)

    def read(self, part: str, row: int) -> np.ndarray:
        start = int(self._starts[part][row])
        seq = np.asarray(self._frames[part][start : start + self.seq_len])
        if seq.dtype == np.uint8:
            return common.U8_TO_UNIT[seq]
        return seq.astype(np.float32)


def caltech_kept_frames(num_frames: int) -> range:
    """OpenSTL keeps a frame when its 1-based count is a multiple of 3: indices 2, 5, 8, ..."""
    return range(2, num_frames, 3)


def resize_crop_caltech(frames: np.ndarray, size: tuple[int, int] = (128, 160)) -> np.ndarray:
    """OpenSTL's `process_im` (PredNet's), then its uint8 cache: resize to height H keeping the
    aspect (width rounded), centre-crop width W, `x / 255 * 255` cast to uint8 (truncated).

    The resize is scikit-image's `resize(..., preserve_range=True)` with its defaults (order 1,
    anti-aliasing on when shrinking: a Gaussian of sigma (scale - 1) / 2, mode 'mirror', then
    `ndimage.zoom` with grid_mode), written with scipy so it is no runtime dependency; tests
    compare it with scikit-image. `frames`: uint8 (N, h, w, C); returns uint8 (N, H, W, C)."""
    from scipy import ndimage

    h, w = frames.shape[1:3]
    out_h, out_w = size
    new_w = int(np.round(out_h / h * w))
    if new_w < out_w:
        raise ValueError(
            f"{h}x{w} frames resized to height {out_h} are {new_w} wide, narrower than {out_w}"
        )
    d = int((new_w - out_w) / 2)
    factors = (h / out_h, w / new_w)
    sigma = tuple(max(0.0, (f - 1) / 2) for f in factors) + (0.0,)
    out = np.empty((len(frames), out_h, out_w, frames.shape[3]), np.uint8)
    for k, frame in enumerate(frames):
        x = frame.astype(np.float64)
        if any(sigma):
            x = ndimage.gaussian_filter(x, sigma, mode="mirror")
        x = ndimage.zoom(x, (out_h / h, new_w / w, 1), order=1, mode="mirror", grid_mode=True)[
            :, d : d + out_w
        ]
        x = np.clip(x, frame.min(), frame.max())  # skimage clips to the input's range
        out[k] = (x / 255.0 * 255).astype(np.uint8)
    return out


def find_caltech_seqs(folder: str) -> list[str]:
    """Caltech's `set*/V*.seq` files under `folder`, sorted (set06/V000.seq, ...)."""
    found = []
    for sub in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        d = os.path.join(folder, sub)
        if sub.lower().startswith("set") and os.path.isdir(d):
            for name in sorted(os.listdir(d)):
                if name.lower().endswith(".seq") and name[:1] in "Vv":
                    found.append(os.path.join(d, name))
    return found


def caltech_from_seqs(
    files: list[str], image_size: tuple[int, int], cache_dir: str
) -> tuple[np.ndarray, list[str]]:
    """Caltech test frames from .seq files as OpenSTL prepares them: every 3rd frame
    (`caltech_kept_frames`), resized and centre-cropped to `image_size` (`resize_crop_caltech`),
    uint8 RGB. Returns (N, H, W, 3) frames, cached as .npy in `cache_dir` (rebuilt when a file
    changes; a read-only cache_dir only costs a rebuild), and each frame's source (its set and
    video, so windows never cross videos).

    RGB, where OpenSTL's cache is BGR: OpenSTL reads the .seq files with OpenCV, which decodes
    to BGR, and never swaps, while its KITTI training frames (PredNet's .hkl) are RGB, so its
    models meet Caltech with red and blue exchanged. The paper reports Figure 4 as a plot with
    no numbers, so there is no figure that only BGR would reproduce; RGB tests what the section
    claims, a model trained on KITTI generalising to Caltech. `caltech/data_cache.npy` written
    by OpenSTL is read as it is (BGR): reverse its last axis to compare like with like."""
    root_of = [os.path.basename(os.path.dirname(f)) + "/" + os.path.basename(f) for f in files]
    infos = [norpix_seq.scan_seq(f) for f in files]
    stamp = [[os.path.abspath(f), os.path.getsize(f), os.stat(f).st_mtime_ns] for f in files]
    key = hashlib.sha1(json.dumps([stamp, list(image_size), "rgb"]).encode()).hexdigest()[:12]
    path = os.path.join(cache_dir, f"caltech_seq_{image_size[0]}x{image_size[1]}_{key}.npy")
    kept = [len(caltech_kept_frames(info.num_frames)) for info in infos]
    sources = [name for name, k in zip(root_of, kept, strict=True) for _ in range(k)]
    if os.path.isfile(path):
        try:
            frames = np.load(path, mmap_mode="r", allow_pickle=False)
            if frames.shape == (sum(kept), *image_size, 3):
                return frames, sources
        except (OSError, ValueError, EOFError):
            pass  # rebuilt below
    try:
        os.makedirs(cache_dir, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".npy.tmp")
        os.close(fd)
    except OSError:
        tmp = None
    shape = (sum(kept), *image_size, 3)
    frames = (
        np.lib.format.open_memmap(tmp, "w+", np.uint8, shape) if tmp else np.empty(shape, np.uint8)
    )
    try:
        at = 0
        for f, info, k in zip(files, infos, kept, strict=True):
            for chunk in range(0, k, 64):  # bounded memory: 64 full-size frames at a time
                idx = caltech_kept_frames(info.num_frames)[chunk : chunk + 64]
                frames[at : at + len(idx)] = resize_crop_caltech(
                    norpix_seq.read_seq(f, idx), image_size
                )
                at += len(idx)
    except BaseException:
        if tmp:
            del frames
            os.remove(tmp)
        raise
    if tmp:
        frames.flush()
        del frames
        os.replace(tmp, path)
        frames = np.load(path, mmap_mode="r", allow_pickle=False)
    return frames, sources
