"""Pictures of predictions: labelled PNG strips, truth-vs-prediction GIFs, lead-time plots.

Frames are (T, H, W, C) float arrays on the model's [0, 1] scale; values are clipped for display.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

LABEL_W = 80  # left column holding the row names of a strip
HEADER_H = 14  # text line above each row of cells (frame indices), and above each GIF panel
PAD = 2  # gap between cells and around the picture
BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)


STRIP_MIN_CELL = 64  # px: 16x16 frames are unreadable at 1:1
GIF_MIN_CELL = 128  # px: a GIF panel's header ('prediction t=15') must fit above one frame


def auto_scale(image_size: tuple[int, int], min_cell: int = STRIP_MIN_CELL) -> int:
    """Integer upscale so a displayed frame is about `min_cell` px or more on its long side."""
    return max(1, min_cell // max(image_size))


def cell_size(image_size: tuple[int, int], channels: int, scale: int) -> tuple[int, int]:
    """(height, width) of one displayed frame: channels other than 1 or 3 sit side by side."""
    h, w = image_size
    tiles = 1 if channels in (1, 3) else channels
    return h * scale, w * tiles * scale


def strip_size(
    num_columns: int, num_rows: int, image_size: tuple[int, int], channels: int, scale: int
) -> tuple[int, int]:
    """(width, height) in pixels of `sample_strip`'s picture."""
    ch, cw = cell_size(image_size, channels, scale)
    return LABEL_W + num_columns * (cw + PAD) + PAD, num_rows * (HEADER_H + ch + PAD) + PAD


def gif_size(
    num_panels: int, image_size: tuple[int, int], channels: int, scale: int
) -> tuple[int, int]:
    """(width, height) in pixels of a GIF written by `save_gif`."""
    ch, cw = cell_size(image_size, channels, scale)
    return num_panels * (cw + PAD) + PAD, HEADER_H + ch + PAD


def frame_to_rgb(frame: np.ndarray, scale: int = 1) -> np.ndarray:
    """(H, W, C) on [0, 1] -> (H*s, W*s*tiles, 3) uint8; 1 channel is grey, 3 are RGB."""
    frame = np.clip(np.nan_to_num(np.asarray(frame, np.float32)), 0.0, 1.0)
    c = frame.shape[-1]
    if c == 3:
        rgb = frame
    else:
        # One grey tile per channel (e.g. TaxiBJ inflow | outflow).
        grey = np.concatenate([frame[..., k] for k in range(c)], axis=1)
        rgb = np.repeat(grey[..., None], 3, axis=-1)
    out = np.rint(rgb * 255.0).astype(np.uint8)
    if scale > 1:
        out = np.repeat(np.repeat(out, scale, axis=0), scale, axis=1)
    return out


def error_to_rgb(err: np.ndarray, scale: int = 1) -> np.ndarray:
    """|pred - true| of shape (H, W, C) through the 'inferno' colour map (0 black, >=1 yellow)."""
    from matplotlib import colormaps

    err = np.clip(np.nan_to_num(np.abs(np.asarray(err, np.float32)), nan=1.0), 0.0, 1.0)
    c = err.shape[-1]
    # RGB data: one error map (channel mean); otherwise one tile per channel, as frame_to_rgb.
    grey = err.mean(axis=-1) if c == 3 else np.concatenate([err[..., k] for k in range(c)], axis=1)
    out = (colormaps["inferno"](grey)[..., :3] * 255.0).round().astype(np.uint8)
    if scale > 1:
        out = np.repeat(np.repeat(out, scale, axis=0), scale, axis=1)
    return out


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default()


def sample_strip(
    rows: Sequence[tuple[str, np.ndarray, Sequence[int]]],
    error_rows: Sequence[int] = (),
    scale: int | None = None,
) -> Image.Image:
    """A labelled grid: one row per (name, frames (T, H, W, C), frame indices).

    Rows whose position is in `error_rows` hold |error| frames and are drawn in colour.
    Each cell has its frame index above it, so lead times can be read off the picture.
    """
    first = rows[0][1]
    image_size, channels = first.shape[1:3], first.shape[3]
    scale = scale or auto_scale(image_size)
    ch, cw = cell_size(image_size, channels, scale)
    num_columns = max(len(frames) for _, frames, _ in rows)
    width, height = strip_size(num_columns, len(rows), image_size, channels, scale)
    img = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(img)
    font = _font()
    for r, (name, frames, indices) in enumerate(rows):
        if len(indices) != len(frames):
            raise ValueError(f"row {name!r}: {len(frames)} frames but {len(indices)} indices")
        y = PAD + r * (HEADER_H + ch + PAD)
        draw.text((PAD, y + HEADER_H + ch // 2 - 6), name, fill=TEXT, font=font)
        for k, (frame, index) in enumerate(zip(frames, indices, strict=True)):
            x = LABEL_W + PAD + k * (cw + PAD)
            draw.text((x, y + 1), f"t={index}", fill=TEXT, font=font)
            rgb = error_to_rgb(frame, scale) if r in error_rows else frame_to_rgb(frame, scale)
            img.paste(Image.fromarray(rgb), (x, y + HEADER_H))
    return img


def cell_origin(row: int, column: int, image_size, channels: int, scale: int) -> tuple[int, int]:
    """(x, y) of the top-left pixel of a strip cell: lets callers (and tests) crop a frame."""
    ch, cw = cell_size(image_size, channels, scale)
    return LABEL_W + PAD + column * (cw + PAD), PAD + row * (HEADER_H + ch + PAD) + HEADER_H


def save_gif(
    path: str,
    panels: Sequence[tuple[str, np.ndarray]],
    indices: Sequence[int],
    captions: Sequence[str] | None = None,
    scale: int | None = None,
    duration_ms: int = 200,
) -> None:
    """An animated GIF with `panels` [(title, frames (T, H, W, C))] side by side, one frame per t.

    The header of each panel reads '<title> t=<index>' (or '<caption> t=<index>' when
    `captions[t]` is given, e.g. 'input' while the frames shown are observed ones).
    """
    frames0 = panels[0][1]
    image_size, channels = frames0.shape[1:3], frames0.shape[3]
    scale = scale or auto_scale(image_size, GIF_MIN_CELL)
    ch, cw = cell_size(image_size, channels, scale)
    width, height = gif_size(len(panels), image_size, channels, scale)
    font = _font()
    images = []
    for t, index in enumerate(indices):
        img = Image.new("RGB", (width, height), BACKGROUND)
        draw = ImageDraw.Draw(img)
        for p, (title, frames) in enumerate(panels):
            x = PAD + p * (cw + PAD)
            label = captions[t] if captions and captions[t] else title
            draw.text((x, 1), f"{label} t={index}", fill=TEXT, font=font)
            img.paste(Image.fromarray(frame_to_rgb(frames[t], scale)), (x, HEADER_H))
        images.append(img)
    # Every frame carries its own t label, so none are identical and Pillow keeps them all.
    images[0].save(
        path, save_all=True, append_images=images[1:], duration=duration_ms, loop=0, optimize=False
    )


def plot_lead_time(
    path: str,
    per_frame: Mapping[str, Mapping[str, Sequence[float]]],
    first_lead: int = 1,
    title: str = "",
) -> None:
    """One panel per metric against lead time, a line per predictor ('model', 'last_frame', ...).

    `per_frame[predictor][metric]` is a list over lead times. Non-finite values (an exact
    frame's PSNR) are left out of the line rather than stretching the axis to infinity.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(per_frame)
    metric_names = [m for m in ("mse", "mae", "ssim", "psnr") if m in per_frame[names[0]]]
    labels = {"mse": "MSE (per-frame sum)", "mae": "MAE (per-frame sum)", "ssim": "SSIM"}
    labels["psnr"] = "PSNR (dB)"
    cols = 2
    nrows = math.ceil(len(metric_names) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5 * cols, 3.2 * nrows), squeeze=False)
    for ax, metric in zip(axes.flat, metric_names, strict=False):
        for name in names:
            values = np.asarray(per_frame[name][metric], np.float64)
            values = np.where(np.isfinite(values), values, np.nan)
            lead = np.arange(first_lead, first_lead + len(values))
            ax.plot(lead, values, marker="o", markersize=3, label=name)
        ax.set_xlabel("lead time (frames after the last input)")
        ax.set_ylabel(labels.get(metric, metric))
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(metric_names) :]:
        ax.axis("off")
    axes.flat[0].legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _frame_indices(start: int, count: int) -> list[int]:
    return list(range(start, start + count))


def write_sample_pictures(
    out_dir: str,
    index: int,
    inputs: np.ndarray,
    targets: np.ndarray | None,
    pred: np.ndarray,
    pred_captions: list[str] | None = None,
    prefix: str = "sample",
) -> dict[str, str]:
    """`<prefix>_<i>.png` (input | truth | prediction | |error| rows) and `<prefix>_<i>.gif`.

    Without targets (predict mode) the strip has input and prediction rows and the GIF shows
    the inputs followed by the forecast.
    """
    t_in, t_out = inputs.shape[0], pred.shape[0]
    in_idx = _frame_indices(1, t_in)
    out_idx = _frame_indices(t_in + 1, t_out)
    rows = [("input", inputs, in_idx)]
    error_rows: tuple[int, ...] = ()
    if targets is not None:
        rows += [("truth", targets, out_idx), ("prediction", pred, out_idx)]
        rows.append(("|error|", np.abs(pred - targets), out_idx))
        error_rows = (3,)
    else:
        rows.append(("prediction", pred, out_idx))
    png = os.path.join(out_dir, f"{prefix}_{index:03d}.png")
    sample_strip(rows, error_rows=error_rows).save(png)
    gif = os.path.join(out_dir, f"{prefix}_{index:03d}.gif")
    captions = ["input"] * t_in + (pred_captions or [""] * t_out)
    pred_seq = np.concatenate([inputs, pred])
    if targets is not None:
        panels = [("truth", np.concatenate([inputs, targets])), ("prediction", pred_seq)]
    else:
        panels = [("prediction", pred_seq)]
    save_gif(gif, panels, in_idx + out_idx, captions)
    return {"png": os.path.basename(png), "gif": os.path.basename(gif)}
