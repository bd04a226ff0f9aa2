"""Resizing: uint8 images to a model's input, float maps to an image's size.

OpenCV's arithmetic in numpy and Pillow (the base install has no OpenCV): :func:`resize_to`
is INTER_AREA where an image shrinks and INTER_LINEAR where it grows, :func:`resize_map` is
INTER_LINEAR. tests/test_images.py and tests/test_visual.py compare with OpenCV.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image


def resize_to(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a uint8 (H, W, C) image to (height, width, C), as OpenCV did before.

    Where the image shrinks, pixel-area averaging in numpy (OpenCV's INTER_AREA, which the
    shipped models were trained with: equal but for rare ties); where it grows, Pillow's
    bilinear filter (OpenCV's INTER_LINEAR within one level). tests/test_images.py compares.
    """
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image
    if height <= h and width <= w:
        rows = _area_axis0(image, height)  # (height, w, C)
        out = _area_axis0(np.ascontiguousarray(rows.transpose(1, 0, 2)), width)
        return np.floor(out.transpose(1, 0, 2) + 0.5).astype(np.uint8)  # half up, as OpenCV
    if height >= h and width >= w:
        return _bilinear(image, height, width)
    # One axis shrinks, the other grows: each axis with its own filter.
    if height < h:
        return resize_to(resize_to(image, h, width), height, width)
    return resize_to(resize_to(image, height, w), height, width)


# Area averaging (OpenCV's INTER_AREA): output pixel j of ``size`` covers the input interval
# [j * scale, (j + 1) * scale), scale = n / size; each input pixel counts by the share of it
# inside. Along axis 0 of a contiguous array, so every step reads whole rows; the columns
# are done the same way on the transposed (already shrunk) array.

#: Up to this many input rows per output row, one vectorised multiply-add per row offset;
#: beyond, one integer sum per output row (fewer passes over a large image).
_MAX_TAPS = 8


def _area_axis0(a: np.ndarray, size: int) -> np.ndarray:
    """``a`` (n, ...) uint8 or float32 shrunk to ``size`` along axis 0: float32."""
    n = a.shape[0]
    flat = a.reshape(n, -1)  # 2-D: numpy broadcasts a weight column over long rows fastest
    if n % size == 0:  # whole blocks of k rows
        k = n // size
        block = np.uint32 if a.dtype == np.uint8 else np.float32
        out = flat.reshape(size, k, -1).sum(axis=1, dtype=block).astype(np.float32) / np.float32(k)
        return out.reshape(size, *a.shape[1:])
    index, weights = _area_taps(n, size)
    if index.shape[1] <= _MAX_TAPS:
        out = np.zeros((size, flat.shape[1]), np.float32)
        for tap in range(index.shape[1]):
            out += weights[:, tap, None] * flat[index[:, tap]]
        return out.reshape(size, *a.shape[1:])
    scale = n / size
    edges = np.arange(size + 1) * scale
    edges[-1] = n
    lo = np.ceil(edges[:-1]).astype(np.int64)  # first whole row of each footprint
    hi = np.floor(edges[1:]).astype(np.int64)  # one past its last whole row
    acc = np.float32 if a.dtype != np.uint8 else np.uint16 if scale < 250 else np.uint32
    out = np.stack(
        [np.add.reduce(flat[i:j], axis=0, dtype=acc) for i, j in zip(lo, hi, strict=True)]
    )
    out = out.astype(np.float32)
    left = (lo - edges[:-1]).astype(np.float32)  # share of the row before the first whole one
    (at,) = np.nonzero(left > 0)
    out[at] += left[at, None] * flat[lo[at] - 1]
    right = (edges[1:] - hi).astype(np.float32)  # share of the row after the last whole one
    (at,) = np.nonzero((right > 0) & (hi < n))
    out[at] += right[at, None] * flat[hi[at]]
    out /= np.float32(scale)
    return out.reshape(size, *a.shape[1:])


@lru_cache(maxsize=64)
def _area_taps(n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The input pixels each output pixel's footprint touches and their shares of it, as
    (size, taps) arrays (unused taps repeat a covered pixel with weight 0)."""
    scale = n / size
    edges = np.arange(size + 1) * scale
    edges[-1] = n
    spans = []
    for j in range(size):
        pixels = np.arange(int(np.floor(edges[j])), min(int(np.ceil(edges[j + 1])), n))
        overlap = np.minimum(pixels + 1, edges[j + 1]) - np.maximum(pixels, edges[j])
        spans.append((pixels, overlap / scale))
    taps = max(len(p) for p, _ in spans)
    index = np.zeros((size, taps), np.int64)
    weights = np.zeros((size, taps), np.float32)
    for j, (pixels, share) in enumerate(spans):
        index[j] = pixels[0]
        index[j, : len(pixels)] = pixels
        weights[j, : len(pixels)] = share
    index.setflags(write=False)
    weights.setflags(write=False)
    return index, weights


def _bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Enlarge with Pillow's bilinear filter, band by band where Pillow has no mode."""
    channels = image.shape[2]
    if channels not in (1, 3):  # multispectral: Pillow's 8-bit modes hold 1 or 3 bands
        return np.concatenate(
            [_bilinear(image[:, :, b : b + 1], height, width) for b in range(channels)], axis=2
        )
    picture = Image.fromarray(np.ascontiguousarray(image[:, :, 0] if channels == 1 else image))
    resized = picture.resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(resized).reshape(height, width, channels)


@lru_cache(maxsize=64)
def _linear_taps(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """OpenCV's INTER_LINEAR along one axis: for each output pixel, its left and right input
    pixels and the right one's weight. Pixel centres aligned (x = (i + 0.5) * in / out - 0.5),
    edges clamped, all in float32 as OpenCV computes them."""
    scale = 1.0 / (size_out / size_in)  # as OpenCV computes it
    x = ((np.arange(size_out) + 0.5) * scale - 0.5).astype(np.float32)
    left = np.floor(x).astype(np.int64)
    frac = x - left
    outside = (left < 0) | (left >= size_in - 1)
    left = np.clip(left, 0, size_in - 1)
    frac = np.where(outside, np.float32(0.0), frac).astype(np.float32)
    right = np.minimum(left + 1, size_in - 1)
    for arr in (left, right, frac):
        arr.setflags(write=False)
    return left, right, frac


@lru_cache(maxsize=64)
def _linear_weights(size_in: int, size_out: int) -> np.ndarray:
    """The same as a (size_out, size_in) matrix (read-only: it is cached)."""
    left, right, frac = _linear_taps(size_in, size_out)
    weights = np.zeros((size_out, size_in), np.float32)
    rows = np.arange(size_out)
    np.add.at(weights, (rows, left), 1.0 - frac)
    np.add.at(weights, (rows, right), frac)
    weights.setflags(write=False)
    return weights


@lru_cache(maxsize=64)
def _column_weights(size_in: int, size_out: int) -> np.ndarray:
    """:func:`_linear_weights` transposed, contiguous: einsum's loop is ten times slower on
    the strided transpose."""
    weights = np.ascontiguousarray(_linear_weights(size_in, size_out).T)
    weights.setflags(write=False)
    return weights


def resize_map(maps: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of float maps, (h, w) or a stack (..., h, w), to (..., height, width).

    OpenCV's INTER_LINEAR (``cv2.resize(m, (width, height), interpolation=cv2.INTER_LINEAR)``):
    the rows by a small matrix product (the maps have a few rows), then the columns. A CAM has
    a few columns too (5 or 10), so that is a product with a (w, width) matrix of weights, in
    numpy's own einsum loop (one pass over the output, at OpenCV's speed for a full-size
    heatmap of a large photo). Wider maps take each output pixel as its left neighbour plus
    the weighted step to its right one. No BLAS: its threads cost more than they save on one
    large thin product, and far more when the machine is busy.
    """
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive, not {height} x {width}")
    arr = np.asarray(maps, dtype=np.float32)
    h, w = arr.shape[-2:]
    if (h, w) == (height, width):
        return arr.copy()
    rows = np.matmul(_linear_weights(h, height), arr)  # (..., height, w)
    if w <= _NARROW:
        return np.einsum("...hk,kw->...hw", rows, _column_weights(w, width))
    left, _, frac = _linear_taps(w, width)
    step = np.zeros_like(rows)  # to the right neighbour; 0 at the clamped right edge
    step[..., :-1] = rows[..., 1:] - rows[..., :-1]
    out = rows[..., left]
    out += step[..., left] * frac
    return out


#: Maps at most this wide are resized by a product with the weights (see :func:`resize_map`):
#: it costs ``w`` multiply-adds per output pixel against a fixed cost of the other way.
_NARROW = 16
