"""Heatmap pictures without OpenCV: resizing, JET colours and blending in numpy and Pillow.

The runtime made these pictures with OpenCV before; where OpenCV is installed (the camera
extra, and the dev extra) they are compared with OpenCV's own results, with the tolerance
each function documents. The rest check known values by hand and run everywhere.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from scenecam_edge import SceneCam, visual
from scenecam_edge.images import resize_map

from .conftest import SAMPLES

HAS_CV2 = importlib.util.find_spec("cv2") is not None
needs_cv2 = pytest.mark.skipif(
    not HAS_CV2, reason="compares with OpenCV: pip install '.[camera-headless]'"
)

#: (h, w) -> (height, width): enlarging CAMs (the usual case), odd ratios, shrinking, 1-pixel.
SIZES = [
    ((5, 5), (150, 150)),
    ((7, 9), (480, 640)),
    ((5, 5), (13, 17)),
    ((3, 4), (1000, 7)),
    ((40, 30), (9, 11)),
    ((1, 1), (6, 6)),
    ((1, 8), (5, 3)),
    ((32, 32), (32, 32)),
]


# -- by hand: these run without OpenCV ----------------------------------------------------


def test_jet_table_known_values():
    jet = visual.JET_RGB
    assert jet.shape == (256, 3) and jet.dtype == np.uint8
    assert jet[0].tolist() == [0, 0, 128]  # dark blue
    assert jet[255].tolist() == [128, 0, 0]  # dark red
    assert jet[64:96, 2].tolist() == [255] * 32  # pure blue channel between the ramps
    assert jet[96:160, 1].tolist() == [255] * 64  # green plateau in the middle
    # Each ramp climbs 4 levels per level of the input.
    assert np.diff(jet[:32, 2].astype(int)).tolist() == [4] * 31


def test_resize_map_by_hand():
    """Two pixels [0, 1] enlarged to four: centres at -0.25, 0.25, 0.75, 1.25 in the input."""
    out = resize_map(np.array([[0.0, 1.0]], np.float32), 1, 4)
    assert np.allclose(out, [[0.0, 0.25, 0.75, 1.0]])
    column = resize_map(np.array([[0.0], [1.0]], np.float32), 4, 1)
    assert np.allclose(column[:, 0], [0.0, 0.25, 0.75, 1.0])
    # A constant map stays constant; a stack resizes map by map.
    stack = np.stack([np.full((5, 5), v, np.float32) for v in (0.0, 0.5, 2.0)])
    big = resize_map(stack, 150, 120)
    assert big.shape == (3, 150, 120)
    assert np.allclose(big[:, 0, 0], [0.0, 0.5, 2.0]) and np.ptp(big, axis=(1, 2)).max() < 1e-6
    with pytest.raises(ValueError, match="size must be positive"):
        resize_map(stack, 0, 4)


def test_colorize_and_overlay_by_hand():
    heat = np.array([[0.0, 1.0], [0.5, 0.25]], np.float32)
    colour = visual.colorize(heat)
    assert colour.shape == (2, 2, 3) and colour.dtype == np.uint8
    assert colour[0, 0].tolist() == [0, 0, 128] and colour[0, 1].tolist() == [128, 0, 0]
    # 0.5 * 255 = 127.5 rounds half to even: level 128; 0.25 * 255 = 63.75: level 64.
    assert colour[1, 0].tolist() == visual.JET_RGB[128].tolist()
    assert colour[1, 1].tolist() == visual.JET_RGB[64].tolist()
    grey = np.full((2, 2, 1), 100, np.uint8)
    out = visual.overlay(grey, heat, 0.4)
    # 0.4 = 102 / 255: (102 * colour + 153 * 100) / 255, rounded half up.
    expected = (2 * (102 * colour.astype(int) + 153 * 100) + 255) // 510
    assert np.array_equal(out, expected)
    assert np.array_equal(visual.overlay(grey, heat, 0.0), np.full((2, 2, 3), 100, np.uint8))
    assert np.array_equal(visual.overlay(grey, heat, 1.0), colour)
    with pytest.raises(ValueError, match="alpha"):
        visual.overlay(grey, heat, 1.5)


def test_heatmap_at_is_normalised_and_clipped():
    cam = np.array([[0.0, 2.0], [4.0, 1.0]], np.float32)
    heat = visual.heatmap_at(cam, 40, 30)
    assert heat.shape == (40, 30) and heat.dtype == np.float32
    assert heat.min() == 0.0 and heat.max() == 1.0
    assert not visual.heatmap_at(np.zeros((3, 3), np.float32), 8, 8).any()


def test_panel_has_three_pictures_and_a_title():
    image = np.zeros((150, 120, 3), np.uint8)
    image[:, :60] = 200
    heat = np.full((150, 120), 0.5, np.float32)
    out = visual.panel(image, visual.colorize(heat), visual.overlay(image, heat), "forest 91%")
    h = visual.PANEL_MIN_HEIGHT  # pictures at least this high
    w = round(120 * h / 150)
    top = out.shape[0] - h  # the title bar's height
    assert out.shape[1:] == (3 * w + 12, 3) and top > 0
    bar = out[:top]
    assert (bar < 128).any(), "the title was not drawn"
    assert np.array_equal(out[top:, w : w + 6], np.full((h, 6, 3), 255, np.uint8))
    # The middle picture is the map in JET colours (0.5: level 128), the last the overlay.
    assert out[top + h // 2, w + 6 + 5].tolist() == visual.JET_RGB[128].tolist()
    assert out[top + h // 2, 2 * w + 12 + 5].tolist() == visual.overlay(image, heat)[0, 5].tolist()


# -- against OpenCV, where it is installed --------------------------------------------------


@needs_cv2
def test_jet_table_is_opencvs_on_every_level():
    import cv2

    levels = np.arange(256, dtype=np.uint8)[:, None]
    expected = cv2.cvtColor(cv2.applyColorMap(levels, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    assert np.array_equal(visual.JET_RGB, expected[:, 0])


@needs_cv2
@pytest.mark.parametrize(("small", "big"), SIZES)
def test_resize_map_matches_opencv_inter_linear(small, big):
    import cv2

    rng = np.random.default_rng(sum(small) * 100 + sum(big))
    cam = rng.random(small).astype(np.float32)
    expected = cv2.resize(cam, (big[1], big[0]), interpolation=cv2.INTER_LINEAR)
    got = resize_map(cam, *big)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-6


@needs_cv2
def test_colorize_and_overlay_match_opencv():
    """The old pipeline: convertScaleAbs, applyColorMap, addWeighted (at 0.4 and 0.75)."""
    import cv2

    rng = np.random.default_rng(7)
    cam = rng.random((7, 7)).astype(np.float32) ** 2
    heat = visual.heatmap_at(cam, 300, 400)
    table = cv2.cvtColor(visual.JET_RGB[:, None], cv2.COLOR_RGB2BGR)  # a user LUT is BGR
    old_colour = cv2.cvtColor(
        cv2.applyColorMap(cv2.convertScaleAbs(heat, alpha=255.0), table), cv2.COLOR_BGR2RGB
    )
    colour = visual.colorize(heat)
    # Levels are rounded half up, OpenCV's half to even: only exact ties (255 * value = k + 0.5)
    # can move one level.
    assert (colour != old_colour).any(axis=-1).mean() < 1e-4
    image = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    for alpha in (0.4, 0.8, 0.75, 0.33):
        old = cv2.addWeighted(old_colour, alpha, image, 1.0 - alpha, 0.0)
        diff = np.abs(visual.overlay(image, heat, alpha).astype(int) - old)
        if (alpha * 255).is_integer():  # the default 0.4, and 0.8: equal but for float ties
            assert (diff > 0).mean() < 0.001, alpha
            assert np.percentile(diff, 99.99) == 0
        # A tie moves the JET level by one: up to 4 levels of colour, times alpha.
        assert diff.max() <= 1 + round(4 * alpha), alpha
        assert (diff > 1).mean() < 1e-4, alpha


@needs_cv2
def test_real_model_heatmaps_match_the_opencv_pipeline(scenecam: SceneCam):
    """The shipped default on the sample photos: today's heatmap and overlay against the
    OpenCV calls the runtime made before (resize, convertScaleAbs, applyColorMap, blend)."""
    import cv2

    for path in sorted(SAMPLES.glob("*.jpg"))[:4]:
        e = scenecam.explain(path)
        h, w = e.image.shape[:2]
        norm = e.cam / e.cam.max()
        old_heat = np.clip(cv2.resize(norm, (w, h), interpolation=cv2.INTER_LINEAR), 0, 1)
        assert np.abs(e.heatmap - old_heat).max() <= 1e-6
        bgr = cv2.applyColorMap(cv2.convertScaleAbs(old_heat, alpha=255.0), cv2.COLORMAP_JET)
        old_overlay = cv2.addWeighted(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), 0.4, e.image, 0.6, 0)
        assert np.abs(e.overlay.astype(int) - old_overlay).max() <= 2
        assert (e.overlay != old_overlay).mean() < 0.001


@needs_cv2
def test_faithfulness_blur_matches_opencv():
    """The insertion baseline, numpy's separable blur against cv2.GaussianBlur (11, 5)."""
    import cv2

    from scenecam_edge.faithfulness import blurred
    from scenecam_edge.images import load_image

    for path in sorted(SAMPLES.glob("*.jpg"))[:3]:
        photo = load_image(path)
        diff = np.abs(blurred(photo).astype(int) - cv2.GaussianBlur(photo, (11, 11), 5))
        # OpenCV blurs 8-bit images with fixed-point weights: about 8% of pixels are 1 off.
        assert diff.max() <= 1 and (diff > 0).mean() < 0.15
    grey = np.random.default_rng(0).integers(0, 256, (7, 30, 1), dtype=np.uint8)
    expected = cv2.GaussianBlur(grey, (11, 11), 5).reshape(grey.shape)
    assert np.abs(blurred(grey).astype(int) - expected).max() <= 1


def test_levels_straight_from_the_map_equal_the_heatmaps_levels():
    """The overlay's levels are made from the small map (scaling moved before the resize);
    they equal the levels of the full-size heatmap but for float ties, at most one level."""
    rng = np.random.default_rng(7)
    for shape, size in (((5, 5), (1200, 1600)), ((10, 10), (150, 150)), ((7, 3), (33, 500))):
        cam = rng.random(shape).astype(np.float32) * 3.0
        direct = visual.levels_at(cam, *size)
        through = visual.levels(visual.heatmap_at(cam, *size))
        diff = np.abs(direct.astype(int) - through)
        assert direct.shape == size and direct.dtype == np.uint8
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    assert not visual.levels_at(np.zeros((5, 5), np.float32), 20, 20).any()
    assert np.array_equal(
        visual.blend(np.zeros((4, 4, 3), np.uint8), np.full((4, 4), 255, np.uint8), 1.0),
        np.broadcast_to(visual.JET_RGB[255], (4, 4, 3)),
    )
