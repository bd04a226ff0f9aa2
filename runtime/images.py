"""Decoding and resizing: the one preprocessing path shared by serving and training.

Everything the model sees goes through :func:`load_image` then :func:`resize_to`. Scaling and
normalisation are inside the ONNX graph, so this module only produces uint8 pixels.
"""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path
from typing import TypeAlias

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

#: What the API accepts as one image.
ImageInput: TypeAlias = "str | os.PathLike[str] | Image.Image | np.ndarray"

#: Refuse images that declare more pixels than this before decoding them (decompression bombs).
DEFAULT_MAX_PIXELS = 64_000_000


def describe(source: object) -> str:
    """A short name for an input, used in results and error messages."""
    if isinstance(source, str | os.PathLike):
        return os.fsdecode(source)
    if isinstance(source, Image.Image):
        return f"<PIL {source.mode} {source.width}x{source.height}>"
    if isinstance(source, np.ndarray):
        return f"<array {'x'.join(map(str, source.shape))} {source.dtype}>"
    return f"<{type(source).__name__}>"


def load_image(
    source: ImageInput, *, channels: int = 3, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Return ``source`` as a uint8 array of shape (H, W, channels), RGB or grayscale.

    ``source`` is a path, a PIL image or a uint8 array (H x W, H x W x 1, 3 or 4). Photos are
    turned upright from their EXIF orientation. Raises :class:`ImageError` naming the input
    and the reason when it cannot be used.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, not {channels}")
    name = describe(source)
    if isinstance(source, np.ndarray):
        return _from_array(source, channels, name)
    if isinstance(source, Image.Image):
        return _from_pil(source, channels, name, max_pixels)
    if isinstance(source, str | os.PathLike):
        return _from_path(Path(source), channels, name, max_pixels)
    raise ImageError(name, f"unsupported input type {type(source).__name__}")


def resize_to(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a uint8 (H, W, C) image to (height, width, C); area when shrinking, else bilinear."""
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image
    shrinking = height * width < h * w
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    out = cv2.resize(image, (width, height), interpolation=interpolation)
    return out.reshape(height, width, image.shape[2])


def _from_path(path: Path, channels: int, name: str, max_pixels: int) -> np.ndarray:
    if not path.exists():
        reason = "broken symbolic link" if path.is_symlink() else "no such file"
        raise ImageError(name, reason)
    if path.is_dir():
        raise ImageError(name, "is a directory, not an image")
    try:
        with Image.open(path) as img:
            return _from_pil(img, channels, name, max_pixels)
    except Image.DecompressionBombError as exc:
        # Pillow's own guard, at a higher limit than ours, fired while reading the header.
        declared = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{declared.group(1)} pixels" if declared else "too many pixels"
        raise ImageError(name, f"image declares {size}, over the limit of {max_pixels}") from None
    except UnidentifiedImageError:
        raise ImageError(name, "not an image (unrecognised format)") from None
    except PermissionError:
        raise ImageError(name, "permission denied") from None
    except OSError as exc:
        if exc.errno is not None:  # the file system's error (I/O error, name too long, ...)
            raise ImageError(name, f"cannot read: {exc.strerror}") from None
        raise ImageError(name, f"truncated or corrupt image ({exc})") from None
    except _DECODER_ERRORS as exc:
        raise ImageError(name, f"corrupt image ({type(exc).__name__}: {exc})") from None


# Pillow's decoders signal damaged files with more than OSError (found by fuzzing, e.g.
# ValueError "tile cannot extend outside image" from a mutated TIFF). These come from
# parsing untrusted bytes and become the documented ImageError; anything else propagates.
_DECODER_ERRORS = (
    ValueError,
    SyntaxError,
    EOFError,
    IndexError,
    KeyError,
    TypeError,
    struct.error,
    ZeroDivisionError,
)


def _from_pil(img: Image.Image, channels: int, name: str, max_pixels: int) -> np.ndarray:
    if img.width * img.height > max_pixels:
        raise ImageError(
            name,
            f"image declares {img.width}x{img.height} pixels, over the limit of {max_pixels}",
        )
    if img.width < 1 or img.height < 1:
        raise ImageError(name, "image is empty")
    try:
        img.load()
        img = ImageOps.exif_transpose(img) or img
        if img.mode.startswith("I;16") or img.mode == "I":
            # 16/32-bit grayscale: scale to 8 bits rather than letting PIL clip at 255.
            arr16 = np.asarray(img, dtype=np.float64)
            top = arr16.max()
            arr8 = (arr16 * (255.0 / top) if top > 0 else arr16).round().astype(np.uint8)
            img = Image.fromarray(arr8)
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            # Composite transparency onto white instead of exposing undefined colour values.
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            img = Image.alpha_composite(background, rgba)
        converted = img.convert("L" if channels == 1 else "RGB")
    except Image.DecompressionBombError as exc:
        raise ImageError(name, f"refused as a decompression bomb: {exc}") from None
    except OSError as exc:
        raise ImageError(name, f"truncated or corrupt image ({exc})") from None
    except _DECODER_ERRORS as exc:
        raise ImageError(name, f"corrupt image ({type(exc).__name__}: {exc})") from None
    arr = np.asarray(converted, dtype=np.uint8)
    return arr.reshape(arr.shape[0], arr.shape[1], channels)


def _from_array(arr: np.ndarray, channels: int, name: str) -> np.ndarray:
    if arr.dtype != np.uint8:
        raise ImageError(name, f"arrays must be uint8 pixels, not {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4) or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ImageError(name, "arrays must have shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)")
    if arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if channels == 3 and arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif channels == 1 and arr.shape[2] == 3:
        # The same luma weights as the file path's PIL conversion.
        arr = np.asarray(Image.fromarray(np.ascontiguousarray(arr)).convert("L"))[:, :, None]
    return np.ascontiguousarray(arr)
