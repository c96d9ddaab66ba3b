"""TaxiBJ from OpenSTL's `dataset.npz`: X_/Y_train, X_/Y_test of (N, 4, 2, 32, 32) on [-1, 1]."""

from __future__ import annotations

import zipfile

import numpy as np

from stlight_jax.data import common

_KEYS = ("X_train", "Y_train", "X_test", "Y_test")


class TaxiBJ(common.ArrayDataset):
    """Inputs are the last frames_in of X, targets the first frames_out of Y, mapped by (x+1)/2."""

    def __init__(self, config):
        path = config.data.path
        if not path:
            raise ValueError("TaxiBJ needs config.data.path (OpenSTL's dataset.npz)")
        common.check_data_file(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                self._arrays = {k: z[k] for k in z.files if k in _KEYS}
                found = sorted(z.files)
        except (OSError, EOFError, ValueError, zipfile.BadZipFile) as e:
            raise ValueError(f"{path}: cannot read as .npz ({e})") from e
        missing = [k for k in _KEYS if k not in self._arrays]
        if missing:
            raise ValueError(
                f"{path}: TaxiBJ needs arrays {list(_KEYS)}, missing {missing} (found {found})"
            )
        m = config.model
        for k, a in self._arrays.items():
            where = f"{path}: {k}"
            if a.ndim != 5:
                raise ValueError(f"{where} must be (N, T, C, H, W), got shape {a.shape}")
            need = m.frames_in if k.startswith("X") else m.frames_out
            field = "frames_in" if k.startswith("X") else "frames_out"
            if a.shape[1] < need:
                raise ValueError(f"{where} has {a.shape[1]} frames but config.model.{field}={need}")
            common.check_frames_size_channels(
                config, where, m.frames_in + m.frames_out, a.shape[3:], a.shape[2]
            )
            common.check_range(a, -1.0, 1.0, where)
        for s in ("train", "test"):
            nx, ny = len(self._arrays[f"X_{s}"]), len(self._arrays[f"Y_{s}"])
            if nx != ny:
                raise ValueError(f"{path}: X_{s} has {nx} samples but Y_{s} has {ny}")
        parts = {s: len(self._arrays[f"X_{s}"]) for s in ("train", "test")}
        super().__init__(config, parts, "TaxiBJ", path)

    def read(self, part: str, row: int) -> np.ndarray:
        m = self.config.model
        x = self._arrays[f"X_{part}"][row, -m.frames_in :]
        y = self._arrays[f"Y_{part}"][row, : m.frames_out]
        seq = np.concatenate([x, y]).astype(np.float32)  # (T, C, H, W)
        return ((seq + 1.0) / 2.0).transpose(0, 2, 3, 1)
