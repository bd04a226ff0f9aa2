"""Turning a CAM into pictures: heatmap at image size, JET colours, overlay, side-by-side panel.

numpy and Pillow only: the base install has no OpenCV. The results are OpenCV's, as the
runtime made them before (tests/test_visual.py compares with OpenCV where it is installed):
:func:`heatmap_at` resizes with ``cv2.resize(..., INTER_LINEAR)``'s arithmetic (within 1e-6),
:func:`colorize` is ``cv2.applyColorMap(..., COLORMAP_JET)`` (the same table, every level;
levels round half up, so an exact tie may take the next one), and :func:`overlay` is
``cv2.addWeighted`` (equal at the default alpha but for those ties).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from .cam import normalize
from .fonts import title_font
from .images import resize_map

DEFAULT_ALPHA = 0.4


def _jet_table() -> np.ndarray:
    """OpenCV's COLORMAP_JET as a (256, 3) RGB uint8 table.

    JET is piecewise linear: each channel is clip(1.5 - |4x - c|, 0, 1) with c = 3 (red),
    2 (green), 1 (blue), sampled at x = level / 255. OpenCV stores the sampled values as
    float32 and scales them by 255 in float32 with round-half-to-even; doing the same gives
    its table, except one level where its stored constant sits just below the tie.
    """
    x = np.arange(256, dtype=np.float64) / 255.0
    channels = [np.clip(1.5 - np.abs(4.0 * x - c), 0.0, 1.0) for c in (3.0, 2.0, 1.0)]
    scaled = np.stack(channels, axis=1).astype(np.float32) * np.float32(255.0)
    table = np.rint(scaled).astype(np.uint8)
    table[159, 2] = 1  # OpenCV's blue at level 159 is 1: its constant for 1.5/255 rounds down
    return table


#: JET as a 256-entry RGB table, also as the flat palette Pillow applies in C.
JET_RGB = _jet_table()
_JET_PALETTE = JET_RGB.tobytes()


def heatmap_at(cam: np.ndarray, height: int, width: int) -> np.ndarray:
    """The map normalised to [0, 1] and resized (bilinear) to ``height`` x ``width``."""
    resized = resize_map(normalize(cam), height, width)
    return np.clip(resized, 0.0, 1.0, out=resized)


def levels(heatmap: np.ndarray) -> np.ndarray:
    """A [0, 1] map as colour levels, uint8: round(255 * value) (half up; OpenCV's
    convertScaleAbs rounds exact ties to even), clipped to [0, 255]."""
    scaled = np.multiply(heatmap, np.float32(255.0), dtype=np.float32)
    scaled += np.float32(0.5)
    np.clip(scaled, 0.0, 255.0, out=scaled)
    return scaled.astype(np.uint8)


def levels_at(cam: np.ndarray, height: int, width: int) -> np.ndarray:
    """``levels(heatmap_at(cam, height, width))`` in two passes over the picture, not six.

    Resizing is linear with weights that sum to one, so the scaling moves to the small map
    (255 * v + 0.5 lies in [0.5, 255.5] there and after resizing: no clip, and the cast
    truncates); float rounding may move an exact tie to the next level."""
    scaled = normalize(cam) * np.float32(255.0) + np.float32(0.5)  # normalize gives float32
    return resize_map(scaled, height, width).astype(np.uint8)


def colorize(heatmap: np.ndarray) -> np.ndarray:
    """A [0, 1] map as an RGB uint8 picture with the JET colormap."""
    return colorize_levels(levels(heatmap))


def colorize_levels(lv: np.ndarray) -> np.ndarray:
    """Colour levels (uint8) as an RGB uint8 picture with the JET colormap."""
    return np.asarray(_jet_picture(lv))


def _jet_picture(lv: np.ndarray) -> Image.Image:
    """Levels as an RGB picture: a palette picture with the JET palette, converted in
    Pillow's C loops (a table lookup in numpy is five times slower)."""
    picture = Image.fromarray(np.ascontiguousarray(lv, dtype=np.uint8))  # (h, w) uint8: L
    picture.putpalette(_JET_PALETTE)  # L becomes P
    return picture.convert("RGB")


def rgb_view(image: np.ndarray, bands: tuple[int, int, int] = (0, 1, 2)) -> np.ndarray:
    """An image (uint8, H x W x C) as an RGB picture: the channels ``bands`` (0-based) as red,
    green and blue; an image of one or two channels shows its first as grey."""
    if image.shape[2] < 3:
        return np.repeat(image[:, :, :1], 3, axis=2)
    if image.shape[2] == 3 and bands == (0, 1, 2):
        return image
    return np.ascontiguousarray(image[:, :, list(bands)])


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = DEFAULT_ALPHA) -> np.ndarray:
    """Blend the coloured heatmap over ``image`` (uint8, H x W x C; more than three channels:
    the first three, see :func:`rgb_view`): alpha * heat + rest."""
    return blend(image, levels(heatmap), alpha)


def blend(image: np.ndarray, lv: np.ndarray, alpha: float = DEFAULT_ALPHA) -> np.ndarray:
    """The JET colours of levels ``lv`` blended over ``image`` (as :func:`overlay` takes it):
    alpha * colour + rest.

    Pillow's masked composite: integer arithmetic with exact rounding, so equal to OpenCV's
    ``addWeighted`` (which the runtime used before) wherever ``alpha`` * 255 is a whole number,
    as the default 0.4 is; otherwise alpha is taken to the nearest 1/255 (within one level).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], not {alpha}")
    rgb = rgb_view(image)
    colour = _jet_picture(lv)
    weight = Image.new("L", colour.size, round(alpha * 255))
    return np.asarray(Image.composite(colour, Image.fromarray(np.ascontiguousarray(rgb)), weight))


def fit_picture(picture: np.ndarray, height: int, width: int) -> np.ndarray:
    """A uint8 RGB picture resized for display (bilinear)."""
    if picture.shape[:2] == (height, width):
        return picture
    resized = Image.fromarray(picture).resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(resized)


#: Panels show each picture at least this many pixels high (photos of 150 px are enlarged),
#: but enlarge none past PANEL_MAX_WIDTH: a 3000 x 4 strip made 256 px high would be 192,000 px
#: wide, and its title's type as big (gigabytes).
PANEL_MIN_HEIGHT = 256
PANEL_MAX_WIDTH = 2048


def panel(image: np.ndarray, colours: np.ndarray, blended: np.ndarray, title: str) -> np.ndarray:
    """Original, coloured heatmap (:func:`colorize`) and overlay side by side under a title
    bar: an RGB uint8 picture.

    ``title`` may have several lines; the type grows with the panel, so a title stays
    readable at any ``--display-size``."""
    rgb = rgb_view(image)
    scale = max(rgb.shape[0], PANEL_MIN_HEIGHT) / rgb.shape[0]
    scale = min(scale, max(1.0, PANEL_MAX_WIDTH / rgb.shape[1]))
    h = max(1, round(rgb.shape[0] * scale))
    w = max(1, round(rgb.shape[1] * scale))
    gap = np.full((h, 6, 3), 255, np.uint8)
    pictures = [fit_picture(p, h, w) for p in (rgb, colours, blended)]
    row = np.concatenate([pictures[0], gap, pictures[1], gap, pictures[2]], axis=1)
    lines = title.splitlines() or [""]
    size = max(12, round(row.shape[1] / 45))
    bar = Image.new("RGB", (row.shape[1], round(size * 1.35) * len(lines) + size), (255, 255, 255))
    draw = ImageDraw.Draw(bar)
    for i, line in enumerate(lines):
        font, text = title_font(line, size)  # a font that has the letters, never boxes
        draw.text((size // 2, size // 2 + i * round(size * 1.35)), text, fill=(0, 0, 0), font=font)
    return np.concatenate([np.asarray(bar), row], axis=0)
