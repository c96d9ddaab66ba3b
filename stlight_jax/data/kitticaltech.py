"""KITTI -> Caltech as OpenSTL prepares it: train on KITTI's .hkl frames, test on Caltech frames.

`config.data.path` is the root holding either `kitti_hkl/` (X_train.hkl + sources_train.hkl,
optionally X_val.hkl + sources_val.hkl) with `caltech/` (data_cache.npy + indices_cache.npy),
or OpenSTL's prepared `kitticaltech_npy/{train,test}_{data,idx}.npy`. Frames are stored
(N, H, W, C) RGB, uint8 (divided by 255) or float on [0, 1]. The .hkl files are read with h5py
directly: most copies were written by an old hickle that current hickle refuses to open.
"""

from __future__ import annotations

import os

import numpy as np

from stlight_jax.data import common

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
        if os.path.isdir(hkl):
            self.layout = f"{HKL_DIR}/ + {CALTECH_DIR}/"
            self._from_hkl(hkl)
            cal = os.path.join(root, CALTECH_DIR)
            self._add(
                "test", os.path.join(cal, "data_cache.npy"), os.path.join(cal, "indices_cache.npy")
            )
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
                "KITTI -> Caltech layouts)"
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
