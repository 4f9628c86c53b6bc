"""Videos and contact sheets a person can open: MP4 (H.264 via imageio-ffmpeg) and PNG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def write_video(path: str | Path, frames: Sequence[np.ndarray], fps: float) -> Path:
    """Write uint8 RGB frames (all the same shape) as an MP4."""
    import imageio.v3 as iio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stack = np.stack(frames)
    # Most H.264 players want sides that are multiples of 16 (the codec's macro block); pad with
    # black rather than let the writer rescale the frames (and warn about it).
    height, width = stack.shape[1], stack.shape[2]
    stack = np.pad(stack, ((0, 0), (0, -height % 16), (0, -width % 16), (0, 0)))
    iio.imwrite(path, stack, fps=fps, codec="libx264", macro_block_size=1)
    return path


def side_by_side(images: Sequence[np.ndarray], gap: int = 2) -> np.ndarray:
    """Concatenate same-height images horizontally with a thin black gap."""
    height = images[0].shape[0]
    spacer = np.zeros((height, gap, 3), dtype=np.uint8)
    parts: list[np.ndarray] = []
    for index, image in enumerate(images):
        if index:
            parts.append(spacer)
        parts.append(image)
    return np.concatenate(parts, axis=1)


def contact_sheet(
    tiles: Sequence[Sequence[np.ndarray]],
    row_labels: Sequence[str] | None = None,
    scale: int = 1,
    label_height: int = 14,
) -> np.ndarray:
    """A grid of uint8 RGB tiles (rows of equal-size images), each row optionally labelled above."""
    rows = []
    for index, row in enumerate(tiles):
        strip = side_by_side(list(row))
        if scale > 1:
            strip = np.repeat(np.repeat(strip, scale, axis=0), scale, axis=1)
        if row_labels is not None:
            canvas = Image.new("RGB", (strip.shape[1], label_height), (255, 255, 255))
            ImageDraw.Draw(canvas).text((2, 1), row_labels[index], fill=(0, 0, 0))
            strip = np.concatenate([np.asarray(canvas), strip], axis=0)
        rows.append(strip)
    width = max(row.shape[1] for row in rows)
    padded = [np.pad(row, ((0, 0), (0, width - row.shape[1]), (0, 0)), constant_values=255) for row in rows]
    return np.concatenate(padded, axis=0)


def save_png(path: str | Path, image: np.ndarray) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path
