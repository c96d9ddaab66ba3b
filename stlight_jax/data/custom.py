"""User arrays: .npy/.npz of (N, T, H, W, C) or (N, T, C, H, W) with a declared value range."""

from __future__ import annotations

import zipfile

import numpy as np

from stlight_jax.config import schema
from stlight_jax.data import common


def _open(path: str) -> dict[str, np.ndarray]:
    common.check_data_file(path)
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
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: cannot read ({e})") from e
    except ValueError as e:
        if str(e).startswith(path):
            raise
        raise ValueError(f"{path}: cannot read ({e})") from e
    raise ValueError(f"{path}: custom data must be an .npy or .npz file")


class CustomArrays(common.ArrayDataset):
    """Samples' first frames_in frames are inputs and the next frames_out the targets.

    Without a stored `test` array (a lone .npy, or an .npz of `train` and maybe `val`), the
    last num_val training samples are held out as the test set and, without a stored `val`,
    the num_val before them as the validation set, so training's final test pass has data.
    """

    def __init__(self, config):
        d = config.data
        path = d.path
        if not path:
            raise ValueError("custom data needs config.data.path (.npy or .npz)")
        if d.layout not in schema.LAYOUTS:
            choices = " or ".join(map(repr, schema.LAYOUTS))
            raise ValueError(f"config.data.layout must be {choices}, got {d.layout!r}")
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
            common.check_real(a.dtype, where)
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
        self._held_out_test = 0
        if "test" not in parts:
            self._held_out_test = self._check_held_out(config, path, parts)
            parts["train"] -= self._held_out_test  # the base class cuts val from the rest
            parts["test"] = 0
        super().__init__(config, parts, "custom arrays", path)
        if self._held_out_test:
            n = len(self._arrays["train"])
            self._rows["test"] = ("train", n - self._held_out_test, n)

    @staticmethod
    def _check_held_out(config, path: str, parts: dict[str, int]) -> int:
        """The number of training samples held out as the test set (no stored `test`)."""
        n_val, n = int(config.data.num_val), parts["train"]
        if n_val <= 0:
            raise ValueError(
                f"{path}: no test array, and config.data.num_val={n_val} holds no samples out "
                "for testing; set num_val > 0 (the last num_val samples become the test set) "
                "or save an .npz with train and test arrays"
            )
        held = n_val if "val" in parts else 2 * n_val
        if held >= n:
            what = "test" if "val" in parts else "test and the num_val before them validation"
            raise ValueError(
                f"{path}: config.data.num_val={n_val} leaves no training samples out of {n} "
                f"(the last num_val samples are {what}); lower num_val or add samples"
            )
        return n_val

    def describe(self, split: str) -> str:
        text = super().describe(split)
        if split == "test" and self._held_out_test:
            text += f"; test = last {self._held_out_test} training samples, held out"
        return text

    def eval_size(self, split: str) -> int:
        n = super().eval_size(split)
        if n == 0:
            raise ValueError(
                f"{self.where}: no {split} samples; store a non-empty {split!r} array in an "
                ".npz (or drop it: then num_val training samples are held out for it)"
            )
        return n

    def read(self, part: str, row: int) -> np.ndarray:
        seq = np.asarray(self._arrays[part][row, : self.num_frames], dtype=np.float32)
        if self.layout == "NTCHW":
            seq = seq.transpose(0, 2, 3, 1)
        return (seq - self.lo) * np.float32(self.scale)
