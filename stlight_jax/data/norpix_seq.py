"""Norpix `.seq` videos, the container of Caltech Pedestrian: `scan_seq` reads the header and
finds every frame's bytes (the format has no index), `read_seq` decodes frames to uint8 RGB
with struct and Pillow (no OpenCV). A truncated or damaged file is a one-line ValueError naming
the file and the frame.
"""

from __future__ import annotations

import dataclasses
import os
import struct

import numpy as np

from stlight_jax.data import common

# Caltech Pedestrian as distributed: Norpix .seq videos (set06-set10/V*.seq for the test split).
# Layout, little-endian (Piotr Dollar's toolbox, videos/seqReaderPlugin.m, reads the same): a
# 1024-byte header (uint32 0xFEED; "Norpix seq" in UTF-16 at byte 4; uint32 header size at 32;
# at 548 nine uint32: width, height, bitDepth, bitDepthReal, imageSizeBytes, imageFormat,
# numFrames, 0, trueImageSize; float64 fps at 584). Raw frames (imageFormat 100 grey, 200
# BGR) lie every trueImageSize bytes from 1024. Compressed frames (102 grey / 201 colour JPEG,
# 1 grey / 2 colour PNG) follow one another: uint32 n (counting itself), n - 4 bytes of image,
# an 8-byte timestamp and, in some files, 8 more bytes (then the uint32 after frame 0's
# timestamp is 0, where a next frame's size would be). There is no index: the file is scanned.
SEQ_HEADER_BYTES = 1024
SEQ_FORMATS = {  # imageFormat -> (encoding, channels stored)
    100: ("raw", 1),
    200: ("raw", 3),
    102: ("jpeg", 1),
    201: ("jpeg", 3),
    1: ("png", 1),
    2: ("png", 3),
}
_MAGIC = {"jpeg": b"\xff\xd8", "png": b"\x89PNG"}


@dataclasses.dataclass(frozen=True)
class SeqInfo:
    """A scanned .seq file: its header fields and the byte range of every frame's image."""

    path: str
    width: int
    height: int
    image_format: int
    header_frames: int  # numFrames as the header says; `len(offsets)` is what the scan found
    fps: float
    trailer: int  # bytes after each compressed image: 8 or 16 (0 for raw)
    offsets: tuple[tuple[int, int], ...]  # (start, length) of each frame's image bytes

    @property
    def num_frames(self) -> int:
        return len(self.offsets)


def scan_seq(path: str) -> SeqInfo:
    """Reads the header and walks the frames (no decoding): one-line ValueError naming the
    file, and the frame where the walk fails, for anything else than a whole .seq."""
    common.check_data_file(path, "a Caltech .seq file")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(SEQ_HEADER_BYTES)
        if len(head) < SEQ_HEADER_BYTES:
            raise ValueError(
                f"{path}: {size} bytes, shorter than a .seq header ({SEQ_HEADER_BYTES} bytes)"
            )
        magic, name = (
            struct.unpack_from("<I", head, 0)[0],
            head[4:24].decode("utf-16-le", "replace"),
        )
        if magic != 0xFEED or name != "Norpix seq":
            raise ValueError(f"{path}: not a Norpix .seq file (no 0xFEED / 'Norpix seq' header)")
        width, height, _, depth_real, image_bytes, fmt, n_header, _, true_size = struct.unpack_from(
            "<9I", head, 548
        )
        fps = struct.unpack_from("<d", head, 584)[0]
        if fmt not in SEQ_FORMATS:
            raise ValueError(
                f"{path}: imageFormat {fmt} is not supported (JPEG 102/201, PNG 1/2, raw 100/200)"
            )
        kind, channels = SEQ_FORMATS[fmt]
        if width == 0 or height == 0:
            raise ValueError(f"{path}: the header gives a {width}x{height} frame size")
        if kind == "raw":
            offsets = _scan_raw(path, size, width * height * channels, image_bytes, true_size)
            trailer = 0
        else:
            offsets, trailer = _scan_compressed(path, f, size)
    if not offsets:
        raise ValueError(f"{path}: holds no frames (the header says {n_header})")
    return SeqInfo(path, width, height, fmt, n_header, fps, trailer, tuple(offsets))


def _scan_raw(path, size, want, image_bytes, true_size):
    if image_bytes != want or true_size < want:
        raise ValueError(
            f"{path}: raw frames of {want} bytes, but the header gives imageSizeBytes "
            f"{image_bytes} and trueImageSize {true_size}"
        )
    offsets, start = [], SEQ_HEADER_BYTES
    while start < size:
        if start + want > size:
            raise ValueError(
                f"{path}: frame {len(offsets)} is cut off ({size - start} of its {want} bytes)"
            )
        offsets.append((start, want))
        start += true_size
    return offsets


def _scan_compressed(path, f, size):
    def u32(at):
        f.seek(at)
        b = f.read(4)
        return struct.unpack("<I", b)[0] if len(b) == 4 else None

    offsets, start, trailer = [], SEQ_HEADER_BYTES, 8
    while start < size:
        i = len(offsets)
        n = u32(start)
        if n is None or start + n > size:
            have = size - start - 4
            raise ValueError(
                f"{path}: frame {i} is cut off (the file ends {max(have, 0)} bytes into it"
                + (f", which says it has {n - 4})" if n is not None else ")")
            )
        if n <= 4:
            raise ValueError(f"{path}: frame {i} is damaged (its size field reads {n})")
        offsets.append((start + 4, n - 4))
        if i == 0 and u32(start + n + 8) == 0:
            trailer = 16  # 8 bytes after the timestamp; a next frame's size is never 0
        start += n + trailer
    return offsets, trailer


def read_seq(path: str, frames=None) -> np.ndarray:
    """uint8 (N, H, W, 3) RGB frames of a Norpix .seq file (all, or the indices in `frames`).

    JPEG and PNG frames are decoded with Pillow, raw ones read as stored (BGR for 200, which is
    flipped to RGB); grey formats are repeated over the three channels. A truncated or damaged
    file is a one-line ValueError naming the file and the frame."""
    import io

    from PIL import Image

    info = scan_seq(path)
    kind, channels = SEQ_FORMATS[info.image_format]
    n = info.num_frames
    wanted = range(n) if frames is None else [int(i) for i in frames]
    for i in wanted:
        if not 0 <= i < n:
            raise ValueError(f"{path}: frame {i} asked for, but the file holds {n} frames")
    out = np.empty((len(wanted), info.height, info.width, 3), np.uint8)
    with open(path, "rb") as f:
        for k, i in enumerate(wanted):
            start, length = info.offsets[i]
            f.seek(start)
            raw = f.read(length)
            if kind == "raw":
                img = np.frombuffer(raw, np.uint8).reshape(info.height, info.width, channels)
                out[k] = img[..., ::-1] if channels == 3 else img  # stored BGR; grey broadcast
                continue
            if not raw.startswith(_MAGIC[kind]):
                raise ValueError(
                    f"{path}: frame {i} is damaged (not a {kind.upper()} image: starts with "
                    f"{raw[:4].hex()})"
                )
            try:
                with Image.open(io.BytesIO(raw)) as im:
                    im.load()
                    img = np.asarray(im.convert("RGB"))
            except (OSError, ValueError, SyntaxError) as e:
                raise ValueError(f"{path}: frame {i} is damaged ({kind.upper()}: {e})") from e
            if img.shape[:2] != (info.height, info.width):
                raise ValueError(
                    f"{path}: frame {i} is {img.shape[1]}x{img.shape[0]}, but the header "
                    f"says {info.width}x{info.height}"
                )
            out[k] = img
    return out
