"""Decoding and resizing: the one preprocessing path shared by serving and training.

Everything the model sees goes through :func:`load_image` (Pillow's decoders) then
:func:`resize_to` (Pillow's resampling); :func:`load_still` is the two in one call. Every
entry point that takes a still picture (the API, ``classify``, ``batch``, ``evaluate``, the
camera and ``tiles`` when given a photo) decodes and resizes it here, so the same photo gets
the same confidence everywhere. Scaling and normalisation are inside the ONNX graph, so this
module only produces uint8 pixels. No OpenCV: the base install has none.

Models that take bands rather than photos (other than 1 or 3 channels, or trained on raster
chips: see :func:`scenecam_edge.bands.is_raster_model`) get their inputs' band values through
:mod:`scenecam_edge.bands`, stretched exactly as ``tiles`` stretches a scene: TIFFs read with
rasterio, ``.npy`` arrays, and other files' bands as Pillow decodes them (RGBA: 4 bands).
"""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path
from typing import TypeAlias

import numpy as np
from PIL import Image, ImageOps, TiffImagePlugin, UnidentifiedImageError

from . import bands, rasters
from .bands import RASTER_SUFFIXES, Stretch, is_raster_model
from .errors import ImageError, MissingExtraError
from .fileio import not_regular_reason
from .names import too_long
from .resize import resize_map as resize_map
from .resize import resize_to as resize_to

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
    source: ImageInput,
    *,
    channels: int = 3,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    stretch: Stretch | None = None,
) -> np.ndarray:
    """Return ``source`` as a uint8 array of shape (H, W, channels).

    ``source`` is a path (an image, a TIFF/GeoTIFF or a ``.npy`` array), a PIL image or an
    array. For photo models (1 or 3 channels, no ``stretch``) arrays are uint8 pixels (H x W,
    H x W x 1, 3 or 4), photos are turned upright from their EXIF orientation and made grey or
    RGB. For band models (see :func:`~scenecam_edge.bands.is_raster_model`) the input's bands
    must be the model's; their values are stretched with ``stretch`` (the manifest's
    ``band_stretch``) as ``tiles`` does. Raises :class:`ImageError` naming the input and the
    reason when it cannot be used; :class:`MissingExtraError` when a band model's TIFF needs
    rasterio and it is not installed.
    """
    if channels < 1:
        raise ValueError(f"channels must be at least 1, not {channels}")
    name = describe(source)
    if isinstance(source, np.ndarray):
        return _from_values(source, channels, name, stretch)
    if isinstance(source, Image.Image):
        return _from_pil(source, channels, name, max_pixels, stretch)
    if isinstance(source, str | os.PathLike):
        return _from_path(Path(source), channels, name, max_pixels, stretch)
    raise ImageError(name, f"unsupported input type {type(source).__name__}")


def load_still(
    source: ImageInput,
    height: int,
    width: int,
    *,
    channels: int = 3,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    stretch: Stretch | None = None,
) -> np.ndarray:
    """A still picture as the model sees it: :func:`load_image` then :func:`resize_to`.

    The one decode-and-resize path for stills; a loaded model's
    :meth:`scenecam_edge.SceneCam.load_image` plus ``predict`` do the same in two steps (the
    full-size image is kept there for its heatmap).
    """
    image = load_image(source, channels=channels, max_pixels=max_pixels, stretch=stretch)
    return resize_to(image, height, width)


def _from_path(
    path: Path, channels: int, name: str, max_pixels: int, stretch: Stretch | None
) -> np.ndarray:
    if (too_long_reason := too_long(path)) is not None:
        raise ImageError(name, too_long_reason)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        _check_path(path, name)
        return _from_npy(path, channels, name, max_pixels, stretch)
    if suffix in RASTER_SUFFIXES and is_raster_model(channels, stretch):
        _check_path(path, name)
        return rasters.read_still(path, channels, stretch, max_pixels)
    try:
        img = open_image(path, name, max_pixels)
    except _Unrecognised:
        if suffix in RASTER_SUFFIXES:  # 16-bit colour, 5+ bands: Pillow has no mode for them
            return _raster_for_photo_model(path, channels, name, max_pixels)
        raise
    with img:
        return _from_pil(img, channels, name, max_pixels, stretch)


class _Unrecognised(ImageError):
    """Pillow does not know the format (a TIFF may still be a raster rasterio reads)."""


def _check_path(path: Path, name: str) -> None:
    """Refuse what is not a regular file before anything opens it (a FIFO would block)."""
    if not path.exists():
        raise ImageError(name, "broken symbolic link" if path.is_symlink() else "no such file")
    if path.is_dir():
        raise ImageError(name, "is a directory, not an image")
    if (reason := not_regular_reason(path)) is not None:
        raise ImageError(name, reason)


def open_image(
    path: str | os.PathLike[str], name: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """The one guarded way a file is opened with Pillow: special files refused by type,
    the header's pixel count checked against ``max_pixels`` before any decoding, every
    decoder failure an :class:`ImageError` naming the file (``name``, default the path).
    The caller closes the image (``with open_image(...) as img``)."""
    path = Path(path)
    name = describe(path) if name is None else name
    _check_path(path, name)
    try:
        img = Image.open(path)
    except Image.DecompressionBombError as exc:
        # Pillow's own guard, at a higher limit than ours, fired while reading the header.
        declared = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{declared.group(1)} pixels" if declared else "too many pixels"
        if declared and int(declared.group(1)) <= max_pixels:  # within ours, over Pillow's
            limit = f"{2 * (Image.MAX_IMAGE_PIXELS or 0)}, Pillow's own"
        else:
            limit = str(max_pixels)
        raise ImageError(name, f"image declares {size}, over the limit of {limit}") from None
    except UnidentifiedImageError:
        raise _Unrecognised(name, "not an image (unrecognised format)") from None
    except PermissionError:
        raise ImageError(name, "permission denied") from None
    except OSError as exc:
        if exc.errno is not None:  # the file system's error (I/O error, name too long, ...)
            raise ImageError(name, f"cannot read: {exc.strerror}") from None
        raise ImageError(name, f"truncated or corrupt image ({exc})") from None
    except _DECODER_ERRORS as exc:
        raise ImageError(name, f"corrupt image ({type(exc).__name__}: {exc})") from None
    if img.width * img.height > max_pixels:
        img.close()
        raise ImageError(
            name,
            f"image declares {img.width}x{img.height} pixels, over the limit of {max_pixels}",
        )
    return img


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


def _from_pil(
    img: Image.Image, channels: int, name: str, max_pixels: int, stretch: Stretch | None
) -> np.ndarray:
    if img.width * img.height > max_pixels:
        raise ImageError(
            name,
            f"image declares {img.width}x{img.height} pixels, over the limit of {max_pixels}",
        )
    if img.width < 1 or img.height < 1:
        raise ImageError(name, "image is empty")
    raster = is_raster_model(channels, stretch)
    if not raster and (count := _tiff_bands(img)) > 3:  # Pillow would drop the extra bands
        bands.check_count(name, count, channels)
    try:
        img.load()
        img = ImageOps.exif_transpose(img) or img
        if raster:
            if img.mode not in _BAND_MODES:  # palette, bilevel, CMYK...: as a photo's colours
                img = img.convert(
                    "L" if img.mode == "1" else "RGBA" if img.has_transparency_data else "RGB"
                )
            values = np.asarray(img)
        else:
            converted = _photo_pixels(img, channels)
    except Image.DecompressionBombError as exc:
        raise ImageError(name, f"refused as a decompression bomb: {exc}") from None
    except OSError as exc:
        raise ImageError(name, f"truncated or corrupt image ({exc})") from None
    except _DECODER_ERRORS as exc:
        raise ImageError(name, f"corrupt image ({type(exc).__name__}: {exc})") from None
    if raster:
        return bands.still_from_values(values, channels, stretch, name)
    arr = np.asarray(converted, dtype=np.uint8)
    return arr.reshape(arr.shape[0], arr.shape[1], channels)


#: Pillow modes whose values are a band model's band values as they are (RGBA: 4 bands).
_BAND_MODES = frozenset({"L", "LA", "RGB", "RGBA", "I", "I;16", "I;16B", "I;16L", "F"})


def _photo_pixels(img: Image.Image, channels: int) -> Image.Image:
    """A decoded photo as grey or RGB: 16/32-bit grey scaled to 8 bits by its maximum,
    transparency composited onto white."""
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
    return img.convert("L" if channels == 1 else "RGB")


def _tiff_bands(img: Image.Image) -> int:
    """A TIFF's bands other than alpha, from its header (Pillow opens a TIFF of RGB and an
    unspecified fourth band as RGB, silently); 0 for other images."""
    if not isinstance(img, TiffImagePlugin.TiffImageFile):
        return 0
    samples = img.tag_v2.get(TiffImagePlugin.SAMPLESPERPIXEL, 1)
    extra = img.tag_v2.get(TiffImagePlugin.EXTRASAMPLES, ())
    extra = extra if isinstance(extra, tuple) else (extra,)
    return int(samples) - sum(1 for kind in extra if kind in (1, 2))  # 1, 2: alpha


def _raster_for_photo_model(path: Path, channels: int, name: str, max_pixels: int) -> np.ndarray:
    """A TIFF Pillow cannot decode (16-bit colour, many bands) for a photo model: read with
    rasterio when installed, as ``tiles`` reads a scene; else an error naming the extra."""
    try:
        return rasters.read_still(path, channels, None, max_pixels)
    except MissingExtraError as exc:
        raise ImageError(
            name, f"not an image Pillow reads; if it is a multi-band or 16-bit raster, {exc.reason}"
        ) from None


def _from_npy(
    path: Path, channels: int, name: str, max_pixels: int, stretch: Stretch | None
) -> np.ndarray:
    """A ``.npy`` array, (H, W) or (H, W, bands), read as the same array given to the API.

    Its header's shape and type are checked first (every dimension, the pixels against
    ``max_pixels``, the bands against the model): a few-kilobyte sparse file declaring
    billions of elements is refused before a byte of data is read or mapped."""
    fmt = np.lib.format
    try:
        with open(path, "rb") as f:
            version = fmt.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = fmt.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = fmt.read_array_header_2_0(f)
            else:
                raise ValueError(f".npy format version {version[0]}.{version[1]} is not read")
        _check_array_shape(tuple(shape), np.dtype(dtype), channels, name, max_pixels, stretch)
        arr = np.array(np.load(path, mmap_mode="r", allow_pickle=False))
    except (ValueError, OSError, EOFError) as exc:
        raise ImageError(name, f"not a readable .npy array ({bands.first_line(exc)})") from None
    return _from_values(arr, channels, name, stretch)


def _check_array_shape(
    shape: tuple[int, ...],
    dtype: np.dtype,
    channels: int,
    name: str,
    max_pixels: int,
    stretch: Stretch | None,
) -> None:
    """Refuse a shape no model takes, or one over the pixel limit, from the shape alone."""
    shown = str(shape)
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise ImageError(name, f"arrays must have shape (H, W) or (H, W, bands), not {shown}")
    h, w = shape[:2]
    if h * w > max_pixels:
        raise ImageError(name, f"array of {w}x{h} pixels, over the limit of {max_pixels}")
    count = shape[2] if len(shape) == 3 else 1
    if is_raster_model(channels, stretch):
        bands.check_count(name, count, channels)
        if dtype.kind not in "uif":
            raise ImageError(name, f"arrays must hold numbers, not {dtype}")
    elif count not in (1, 3, 4) or dtype != np.uint8:
        raise ImageError(
            name,
            f"arrays must be uint8 pixels (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), not "
            f"{shown} {dtype}",
        )


def _from_values(arr: np.ndarray, channels: int, name: str, stretch: Stretch | None) -> np.ndarray:
    if is_raster_model(channels, stretch):
        return bands.still_from_values(arr, channels, stretch, name)
    return _from_array(arr, channels, name)


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


#: How far an input may be from the model's input before a note says so: colour into a
#: grey model, enlarged more than MISMATCH_FACTOR, or an aspect ratio off by more than
#: ASPECT_FACTOR (panoramas, strips; ordinary 4:3 and 16:9 photos are not noted).
MISMATCH_FACTOR = 2.0
ASPECT_FACTOR = 3.0
#: :func:`mismatch` reads only a header: no pixel limit of its own (Pillow's guard stays).
_HEADER_ONLY = 2**63


def mismatch(path: str | os.PathLike[str], channels: int, height: int, width: int) -> str | None:
    """Why the image at ``path`` is far from what a model taking (height, width, channels)
    was trained on, from its header alone; None when it is not (or cannot be read: decoding
    reports that). Serving still converts and resizes it; the caller says so."""
    try:
        with open_image(path, max_pixels=_HEADER_ONLY) as img:
            mode, (w, h) = img.mode, img.size
    except ImageError:  # decoding reports it; a note has nothing to add
        return None
    if channels == 1 and mode not in ("1", "L", "LA", "I", "I;16", "F"):
        return f"a colour image ({mode}) for a model of grey images: it was made grey"
    if h * MISMATCH_FACTOR < height or w * MISMATCH_FACTOR < width:
        return f"{w}x{h}, enlarged to the model's {width}x{height}"
    ratio = (w / h) / (width / height)
    if not 1 / ASPECT_FACTOR <= ratio <= ASPECT_FACTOR:
        return f"{w}x{h}, squeezed to the model's {width}x{height}"
    return None
