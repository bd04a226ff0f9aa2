"""One decode-and-resize path for stills, in Pillow: what the model sees, against OpenCV's
resizing that the runtime (and the shipped models' training) used before."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scenecam_edge import SceneCam
from scenecam_edge.cam import softmax
from scenecam_edge.images import load_image, load_still, resize_to

from .conftest import SAMPLES

HAS_CV2 = importlib.util.find_spec("cv2") is not None
needs_cv2 = pytest.mark.skipif(
    not HAS_CV2, reason="compares with OpenCV: pip install '.[camera-headless]'"
)


def _photos() -> list[np.ndarray]:
    return [load_image(p) for p in sorted(SAMPLES.glob("*.jpg"))]


def test_resize_to_by_hand():
    # Shrinking by 2 averages 2 x 2 blocks; enlarging by 2 interpolates between centres.
    image = np.array([[0, 4, 8, 12], [4, 8, 12, 16]], np.uint8)[:, :, None]
    assert resize_to(image, 1, 2)[:, :, 0].tolist() == [[4, 12]]
    row = np.array([[0, 100]], np.uint8)[:, :, None]
    assert resize_to(row, 1, 4)[0, :, 0].tolist() == [0, 25, 75, 100]
    same = np.zeros((5, 5, 3), np.uint8)
    assert resize_to(same, 5, 5) is same


def test_resize_to_bands_and_mixed_axes():
    rng = np.random.default_rng(3)
    bands = rng.integers(0, 256, (60, 80, 5), dtype=np.uint8)
    out = resize_to(bands, 30, 100)  # height shrinks, width grows
    assert out.shape == (30, 100, 5)
    for b in range(5):  # multispectral: band by band, the same as one band alone
        assert np.array_equal(out[:, :, b], resize_to(bands[:, :, b : b + 1], 30, 100)[:, :, 0])
    # Mixed axes: each axis gets its own filter, so the result is separable.
    wide = resize_to(bands[:, :, :3], 60, 100)
    assert np.array_equal(resize_to(wide, 30, 100), out[:, :, :3])


def test_load_still_is_load_image_then_resize_to(tmp_path: Path):
    rgba = np.zeros((40, 50, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:20, :, 3] = 255  # the lower half is transparent: composited on white
    Image.fromarray(rgba).save(tmp_path / "a.png")
    still = load_still(tmp_path / "a.png", 20, 25)
    assert np.array_equal(still, resize_to(load_image(tmp_path / "a.png"), 20, 25))
    assert still[0, 0].tolist() == [255, 0, 0] and still[-1, 0].tolist() == [255, 255, 255]
    grey = load_still(tmp_path / "a.png", 10, 10, channels=1)
    assert grey.shape == (10, 10, 1)


def test_model_input_goes_through_load_still(scenecam: SceneCam, tmp_path: Path):
    """The API's two steps and the one call give the model the same pixels."""
    photo = sorted(SAMPLES.glob("*.jpg"))[0]
    big = tmp_path / "big.jpg"
    Image.open(photo).resize((400, 300), Image.Resampling.LANCZOS).save(big, quality=92)
    two_steps = scenecam.to_input(scenecam.load_image(big))
    assert np.array_equal(two_steps, load_still(big, *scenecam.input_size))
    _, logits = scenecam.forward(two_steps[None])
    probs = softmax(logits.astype(np.float64))[0]
    assert np.isclose(scenecam.classify(big).confidence, probs.max())


@needs_cv2
@pytest.mark.parametrize("size", [(75, 75), (100, 130), (150, 150), (300, 300), (331, 227)])
def test_resize_to_matches_opencv_within_one_level(size: tuple[int, int]):
    """Shrinking: OpenCV's INTER_AREA, equal but for float ties; enlarging: INTER_LINEAR,
    within one level (Pillow rounds after each axis, OpenCV once with 11-bit weights)."""
    import cv2

    height, width = size
    for photo in _photos():
        shrinking = height * width < photo.shape[0] * photo.shape[1]
        mode = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
        expected = cv2.resize(photo, (width, height), interpolation=mode)
        diff = np.abs(resize_to(photo, height, width).astype(int) - expected)
        assert diff.max() <= 1, (size, diff.max())
        if shrinking:
            assert (diff > 0).mean() < 0.001, (size, (diff > 0).mean())


@needs_cv2
@pytest.mark.parametrize("shape", [(480, 640), (1200, 1600), (3000, 4000), (451, 301)])
def test_area_shrink_matches_opencv_on_noise(shape: tuple[int, int]):
    """Noise is the hardest case for area averaging: every pixel differs from its neighbour."""
    import cv2

    image = np.random.default_rng(shape[0]).integers(0, 256, (*shape, 3), dtype=np.uint8)
    for height, width in ((150, 150), (97, 2), (shape[0] // 3, 1)):
        expected = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
        diff = np.abs(resize_to(image, height, width).astype(int) - expected)
        assert diff.max() <= 1 and (diff > 0).mean() < 0.005, (height, width)


@needs_cv2
def test_confidences_match_the_opencv_resize(scenecam: SceneCam, tmp_path: Path):
    """Photos larger and smaller than the model's input: same labels, confidences within
    0.01 of the ones OpenCV's resizing gave."""
    import cv2

    worst = 0.0
    for photo in _photos():
        for h, w in ((240, 320), (97, 120)):
            scaled = np.asarray(Image.fromarray(photo).resize((w, h), Image.Resampling.LANCZOS))
            mode = cv2.INTER_AREA if h * w > 150 * 150 else cv2.INTER_LINEAR
            old = cv2.resize(scaled, (150, 150), interpolation=mode)
            new = resize_to(scaled, 150, 150)
            p_old = softmax(scenecam.forward(old[None])[1].astype(np.float64))[0]
            p_new = softmax(scenecam.forward(new[None])[1].astype(np.float64))[0]
            assert p_old.argmax() == p_new.argmax()
            worst = max(worst, float(np.abs(p_old - p_new).max()))
    assert worst < 0.01, worst


@pytest.mark.parametrize("shape", [(150, 150, 3), (37, 5, 1), (9, 1), (1, 1, 3), (64, 300)])
def test_png_encoder_round_trips(tmp_path: Path, shape: tuple[int, ...]):
    """The runtime's own PNG writer (Sub filter, zlib RLE): Pillow reads back every pixel."""
    from scenecam_edge.fileio import encode_png, write_png_atomic

    picture = np.random.default_rng(len(shape)).integers(0, 256, shape, dtype=np.uint8)
    out = write_png_atomic(tmp_path / "p.png", picture)
    with Image.open(out) as back:
        assert back.mode == ("RGB" if picture.ndim == 3 and shape[2] == 3 else "L")
        assert np.array_equal(np.asarray(back).reshape(picture.shape), picture)
    assert out.read_bytes() == encode_png(picture)
    with pytest.raises(ValueError, match="uint8 grey or RGB"):
        encode_png(np.zeros((4, 4, 4), np.uint8))
