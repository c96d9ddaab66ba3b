"""KTH from OpenSTL's frame folders: root/<action>/personXX_<action>_dN_uncomp/image_NNNN.png.

Persons 1-16 train, 17-25 test; windows of frames_in + frames_out frames, found with OpenSTL's
backward scan (non-overlapping for 4 actions, stride 3 for jogging/running) and cached as JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile

import numpy as np

from stlight_jax.data import common

CATEGORY_1 = ("boxing", "handclapping", "handwaving", "walking")  # non-overlapping windows
CATEGORY_2 = ("jogging", "running")  # windows every 3 frames
TRAIN_PERSONS = tuple(f"{i:02d}" for i in range(1, 17))
TEST_PERSONS = tuple(f"{i:02d}" for i in range(17, 26))


def _stamp(root: str) -> dict[str, int]:
    # Adding or removing a video changes its action directory's mtime, which invalidates the cache.
    out = {}
    for c in CATEGORY_1 + CATEGORY_2:
        p = os.path.join(root, c)
        if os.path.isdir(p):
            out[c] = os.stat(p).st_mtime_ns
    return out


def scan_windows(root: str, persons: tuple[str, ...], seq_len: int) -> dict:
    """OpenSTL's `DataProcess.load_data` index, without reading any image."""
    videos, frames, marks, numbers, category = [], {}, [], [], []
    for c in CATEGORY_1 + CATEGORY_2:
        c_path = os.path.join(root, c)
        if not os.path.isdir(c_path):
            continue
        # Sorted (OpenSTL uses raw listdir order), so the index does not depend on the filesystem.
        for v in sorted(os.listdir(c_path)):
            if v[6:8] not in persons or not os.path.isdir(os.path.join(c_path, v)):
                continue
            rel = f"{c}/{v}"
            names = sorted(f for f in os.listdir(os.path.join(c_path, v)) if f.startswith("image"))
            videos.append(rel)
            frames[rel] = names
            for n in names:
                marks.append(len(videos) - 1)
                try:
                    numbers.append(int(n[6:10]))
                except ValueError as e:
                    raise ValueError(
                        f"{os.path.join(c_path, v, n)}: KTH frame names must be image_NNNN.*"
                    ) from e
                category.append(1 if c in CATEGORY_1 else 2)
    windows = []
    index = len(marks) - 1
    while index >= seq_len - 1:
        first = index - seq_len + 1
        if marks[index] == marks[first] and numbers[index] - numbers[first] == seq_len - 1:
            windows.append(first)
            index -= seq_len - 1 if category[index] == 1 else 2
        index -= 1
    # Store (video, position within the video's sorted frame list) per window.
    starts, pos = [], 0
    offsets = {}
    for k, rel in enumerate(videos):
        offsets[k] = pos
        pos += len(frames[rel])
    for w in windows:
        starts.append([marks[w], w - offsets[marks[w]]])
    return {"videos": videos, "frames": frames, "windows": starts}


def load_index(root: str, persons: tuple[str, ...], seq_len: int, cache_dir: str) -> dict:
    """The window index from the JSON cache in `cache_dir`, rebuilt when the root changed."""
    key = hashlib.sha1(f"{os.path.abspath(root)}|{persons}|{seq_len}".encode()).hexdigest()[:12]
    path = os.path.join(cache_dir, f"kth_index_{seq_len}_{key}.json")
    stamp = _stamp(root)
    if os.path.isfile(path):
        try:
            with open(path) as f:
                cached = json.load(f)
            if cached.get("stamp") == stamp:
                return cached
        except (OSError, ValueError):
            pass  # a corrupt cache is rebuilt below
    index = scan_windows(root, persons, seq_len)
    index["stamp"] = stamp
    try:
        os.makedirs(cache_dir, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".json.tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(index, f)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only data_dir only costs a rescan next time
    return index


def _resize_weights(n_in: int, n_out: int) -> np.ndarray:
    """cv2.INTER_LINEAR as a matrix: half-pixel centres, clamped at the borders, no antialias."""
    w = np.zeros((n_out, n_in), np.float32)
    scale = n_in / n_out
    for i in range(n_out):
        f = (i + 0.5) * scale - 0.5
        s = int(np.floor(f))
        f -= s
        if s < 0:
            s, f = 0, 0.0
        if s >= n_in - 1:
            s, f = n_in - 1, 0.0
        w[i, s] += 1.0 - f
        if f:
            w[i, s + 1] += f
    return w


def resize_bilinear(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """float32 (H, W) -> size, like OpenSTL's cv2.resize(frame, (w, h)) on float32 frames."""
    h, w = img.shape
    if (h, w) == tuple(size):
        return img.astype(np.float32)
    return _resize_weights(h, size[0]) @ img.astype(np.float32) @ _resize_weights(w, size[1]).T


class KTH(common.ArrayDataset):
    """Grey frames read lazily per window, resized to config.model.image_size, / 255."""

    def __init__(self, config):
        root = config.data.path
        if not root:
            raise ValueError("KTH needs config.data.path (the root holding boxing/, running/, ...)")
        if not os.path.isdir(root):
            raise ValueError(f"{root}: config.data.path is not a directory")
        m = config.model
        if m.channels != 1:
            raise ValueError(
                f"{root}: KTH frames are grey (1 channel) but config.model.channels={m.channels}"
            )
        self.root = root
        self.size = tuple(int(s) for s in m.image_size)
        common.check_patch(config, self.size, root)
        seq_len = m.frames_in + m.frames_out
        self._index = {
            "train": load_index(root, TRAIN_PERSONS, seq_len, config.data.data_dir),
            "test": load_index(root, TEST_PERSONS, seq_len, config.data.data_dir),
        }
        for part, persons in (("train", TRAIN_PERSONS), ("test", TEST_PERSONS)):
            if not self._index[part]["windows"]:
                raise ValueError(
                    f"{root}: no {seq_len}-frame windows (frames_in + frames_out = "
                    f"{m.frames_in} + {m.frames_out}) for persons {persons[0]}-{persons[-1]} "
                    f"in {', '.join(CATEGORY_1 + CATEGORY_2)}"
                )
        parts = {p: len(ix["windows"]) for p, ix in self._index.items()}
        super().__init__(config, parts, "KTH", root)

    def _frame(self, path: str) -> np.ndarray:
        from PIL import Image  # pillow is a runtime dependency; only KTH needs it

        try:
            with Image.open(path) as im:
                a = np.asarray(im)
        except OSError as e:
            raise ValueError(f"{path}: cannot read KTH frame ({e})") from e
        if a.ndim == 3:
            a = a[:, :, 0]  # OpenSTL keeps the first channel of the (grey) RGB frames
        return resize_bilinear(a, self.size) / np.float32(255.0)

    def read(self, part: str, row: int) -> np.ndarray:
        ix = self._index[part]
        video, start = ix["windows"][row]
        rel = ix["videos"][video]
        names = ix["frames"][rel][start : start + self.num_frames]
        frames = [self._frame(os.path.join(self.root, rel, n)) for n in names]
        return np.stack(frames)[..., None]
