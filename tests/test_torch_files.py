"""PyTorch weights files read into the network (weights/torch_files.py): half precision
imports as float32, and an empty or damaged file says why it cannot be read, in one line."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from stlight_jax.config import files as config_io
from stlight_jax.models import create_model
from stlight_jax.weights import torch_files as convert
from tests import tiny_weights


@pytest.mark.parametrize("dtype", [ml_dtypes.bfloat16, np.float16], ids=["bfloat16", "float16"])
def test_half_precision_weights_import_as_float32(config, tmp_path, dtype):
    from flax import nnx
    from safetensors.numpy import save_file

    path = str(tmp_path / "half.safetensors")
    save_file(tiny_weights.state_dict(config, dtype), path)
    model = create_model(config_io.model_config(config), seed=0)
    convert.load_into_model(model, convert.load_state_dict_file(path), source=path)
    assert tiny_weights.floating_dtypes(nnx.state(model, nnx.Param)) == {np.dtype(np.float32)}
    assert tiny_weights.floating_dtypes(nnx.state(model, nnx.BatchStat)) == {np.dtype(np.float32)}
    # The values too: each the file's half-precision value, exactly, in float32.
    half = tiny_weights.state_dict(config, dtype)
    got = convert.model_state_dict(model)
    assert got.keys() == half.keys()
    for key, value in half.items():
        np.testing.assert_array_equal(got[key], value.astype(got[key].dtype), err_msg=key)
        assert value.dtype == dtype or not np.issubdtype(value.dtype, np.floating), key


def test_empty_weights_files_say_why_they_cannot_be_read(tmp_path):
    pytest.importorskip("torch", reason="reading a .pth needs the PyTorch CPU wheel")
    for name, kind in (("empty.pth", "a torch checkpoint"), ("empty.safetensors", ".safetensors")):
        path = tmp_path / name
        path.write_bytes(b"")
        with pytest.raises(ValueError) as err:
            convert.load_state_dict_file(str(path))
        msg = str(err.value)
        assert f"cannot read {str(path)!r} as {kind}: the file is empty (0 bytes;" in msg
        assert "\n" not in msg


def test_damaged_weights_files_say_why_they_cannot_be_read(config, tmp_path):
    """Non-empty but damaged .safetensors: cut short, a garbled header, not one at all."""
    from safetensors.numpy import save_file

    good = tmp_path / "good.safetensors"
    save_file(tiny_weights.state_dict(config, np.float32), str(good))
    raw = good.read_bytes()
    garbled = bytearray(raw)
    garbled[8:40] = bytes(32)  # the JSON header's first bytes
    damaged = {
        "cut.safetensors": (raw[: len(raw) // 2], "file not fully covered"),
        "garbled.safetensors": (bytes(garbled), "invalid JSON in header"),
        "text.safetensors": (b"not weights " * 40, "header too large"),
    }
    for name, (content, reason) in damaged.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(ValueError) as err:
            convert.load_state_dict_file(str(path))
        msg = str(err.value)
        assert f"cannot read {str(path)!r} as .safetensors:" in msg and reason in msg, msg
        assert "\n" not in msg
