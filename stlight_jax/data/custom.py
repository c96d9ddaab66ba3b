"""User arrays: .npy/.npz of (N, T, H, W, C) or (N, T, C, H, W) with a declared value range."""

from __future__ import annotations

import os
import zipfile

import numpy as np

from stlight_jax.data import common


def _open(path: str) -> dict[str, np.ndarray]:
    if not os.path.isfile(path):
        raise ValueError(f"{path}: config.data.path does not exist")
    try:
        if path.endswith(".npy"):
            return {"train": np.load(path, mmap_mode="r", allow_pickle=False)}
        if path.endswith(".npz"):
            with np.load(path, allow_pickle=False) as z:
                files = list(z.files)
                if files == ["arr_0"]:
                    return {"train": z["arr_0"]}
                unknown = set(files) - set(common.SPLITS)
                if unknown or "train" not in files:
                    raise ValueError(
                        f"{path}: an .npz needs arrays named train (and optionally val, test), "
                        f"found {sorted(files)}"
                    )
                return {k: z[k] for k in files}
    except (OSError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: cannot read ({e})") from e
    except ValueError as e:
        if str(e).startswith(path):
            raise
        raise ValueError(f"{path}: cannot read ({e})") from e
    raise ValueError(f"{path}: custom data must be an .npy or .npz file")


class CustomArrays(common.ArrayDataset):
    """Samples' first frames_in frames are inputs and the next frames_out the targets.

    A lone array is the training part; its last num_val samples are held out for validation,
    and evaluation on 'test' needs a `test` array in an .npz.
    """

    def __init__(self, config):
        d = config.data
        path = d.path
        if not path:
            raise ValueError("custom data needs config.data.path (.npy or .npz)")
        if d.layout not in ("NTHWC", "NTCHW"):
            raise ValueError(f"config.data.layout must be 'NTHWC' or 'NTCHW', got {d.layout!r}")
        self.layout = d.layout
        lo, hi = (float(v) for v in d.value_range)
        if not hi > lo:
            raise ValueError(f"config.data.value_range={tuple(d.value_range)} must have lo < hi")
        self.lo, self.scale = lo, 1.0 / (hi - lo)
        self._arrays = _open(path)
        for k, a in self._arrays.items():
            where = f"{path}: {k}" if len(self._arrays) > 1 else path
            if a.ndim != 5:
                raise ValueError(
                    f"{where} must be 5-D {d.layout} (config.data.layout), got shape {a.shape}"
                )
            if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
                raise ValueError(f"{where} has non-numeric dtype {a.dtype}")
            if d.layout == "NTHWC":
                size, ch = a.shape[2:4], a.shape[4]
            else:
                size, ch = a.shape[3:5], a.shape[2]
            common.check_frames_size_channels(
                config, where, a.shape[1], size, ch, frames_what=f" (layout {d.layout})"
            )
            part = "" if len(self._arrays) > 1 else f"{k} part,"
            common.check_range(a, lo, hi, f"{where} (config.data.value_range)", part=part)
        parts = {k: len(a) for k, a in self._arrays.items()}
        if "test" not in parts:
            parts["test"] = 0
        super().__init__(config, parts, "custom arrays", path)

    def eval_size(self, split: str) -> int:
        n = super().eval_size(split)
        if n == 0:
            raise ValueError(
                f"{self.where}: no {split} samples; put a 'test' array in an .npz (or set "
                "config.data.num_val > 0 to hold out training samples for validation)"
            )
        return n

    def read(self, part: str, row: int) -> np.ndarray:
        seq = np.asarray(self._arrays[part][row, : self.num_frames], dtype=np.float32)
        if self.layout == "NTCHW":
            seq = seq.transpose(0, 2, 3, 1)
        return (seq - self.lo) * np.float32(self.scale)
