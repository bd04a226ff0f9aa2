"""Nodata in, nodata out: tilted footprints, masked blocks, NaN and truncated scenes, made
here as real GeoTIFFs with rasterio (nodata values, internal masks, alpha bands)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from .test_tiles import PIXEL, needs_geo, read, run_tiles, scene_pixels, write_scene

pytestmark = needs_geo

TILE = 150
H, W = 450, 600


def footprint() -> np.ndarray:
    """bool (H, W): a tilted rectangle, as a satellite scene's footprint, minus a cloud block."""
    yy, xx = np.mgrid[0:H, 0:W]
    # rotate ~20 degrees about the centre, keep a rectangle of half-widths 260 x 150
    cy, cx, angle = H / 2, W / 2, np.deg2rad(20)
    u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
    v = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
    inside = (np.abs(u) < 260) & (np.abs(v) < 150)
    inside[160:290, 300:420] = False  # a masked (cloud) block
    return inside


def expected_tiles(mask: np.ndarray, min_valid: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Each tile's valid share and whether it is classified."""
    share = mask.reshape(H // TILE, TILE, W // TILE, TILE).mean(axis=(1, 3))
    return share, share >= min_valid


def write_variant(tmp_path: Path, kind: str, mask: np.ndarray) -> Path:
    import rasterio

    pixels = np.moveaxis(scene_pixels(), -1, 0).copy()
    pixels[pixels == 0] = 1  # 0 is the nodata value below: keep it out of the data
    path = tmp_path / f"{kind}.tif"
    if kind == "nodata":
        pixels[:, ~mask] = 0
        write_scene(path, pixels)
        with rasterio.open(path, "r+") as dst:
            dst.nodata = 0
    elif kind == "mask":  # an internal mask band (GDAL_TIFF_INTERNAL_MASK), no nodata value
        with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
            write_scene(path, pixels)
            with rasterio.open(path, "r+") as dst:
                dst.write_mask(mask.astype(np.uint8) * 255)
    else:  # alpha
        alpha = mask.astype(np.uint8) * 255
        write_scene(path, np.concatenate([pixels, alpha[None]]))
        with rasterio.open(path, "r+") as dst:
            dst.colorinterp = [
                rasterio.enums.ColorInterp.red,
                rasterio.enums.ColorInterp.green,
                rasterio.enums.ColorInterp.blue,
                rasterio.enums.ColorInterp.alpha,
            ]
    return path


@pytest.mark.parametrize("kind", ["nodata", "mask", "alpha"])
def test_tilted_footprint_and_masked_block_are_nodata(tmp_path: Path, kind: str, scenecam):
    mask = footprint()
    scene = write_variant(tmp_path, kind, mask)
    out = tmp_path / "out" / "map.tif"
    result = run_tiles(str(scene), "--out", str(out), "--heatmaps", "--stride", str(TILE))
    assert result.exit_code == 0, result.output
    share, classified = expected_tiles(mask)
    assert 0 < classified.sum() < classified.size  # the scene has both kinds of tiles
    classes, *_, nodata = read(out)
    assert nodata == 255
    assert np.array_equal(classes[0] != 255, classified)  # no labelled tile outside
    probs = read(tmp_path / "out" / "map.probs.tif")[0]
    np.testing.assert_allclose(probs[-1], share, atol=1e-6)  # valid fraction band
    assert np.isnan(probs[:-1, ~classified]).all() and not np.isnan(probs[:-1, classified]).any()
    # the mosaic: NaN at every invalid pixel and in nodata tiles, values elsewhere
    mosaic = read(tmp_path / "out" / "map.cam.tif")[0][0]
    covered = mask & np.kron(classified, np.ones((TILE, TILE), bool))
    assert np.array_equal(~np.isnan(mosaic), covered)
    # a partly valid tile is classified on its valid pixels, the rest filled with their mean
    r, c = np.argwhere(classified & (share < 1))[0]
    window = np.s_[r * TILE : (r + 1) * TILE, c * TILE : (c + 1) * TILE]
    tile = scene_pixels()[window].copy()
    tile[tile == 0] = 1
    valid = mask[window]
    tile[~valid] = np.round(tile[valid].mean(axis=0)).astype(np.uint8)
    expected = scenecam.classify(tile)
    np.testing.assert_allclose(
        probs[:-1, r, c], [expected.probabilities[n] for n in scenecam.class_names], atol=1e-5
    )
    summary = json.loads((tmp_path / "out" / "map.json").read_text())
    assert summary["valid_fraction"] == pytest.approx(mask.mean())
    assert summary["tiles"]["classified"] == classified.sum()
    assert summary["tiles"]["nodata"] == (~classified).sum()
    assert summary["tiles"]["partly_valid"] == (classified & (share < 1)).sum()
    # class areas: the valid pixels of classified tiles, in square metres
    valid_in_classified = (mask & np.kron(classified, np.ones((TILE, TILE), bool))).sum()
    assert sum(summary["class_areas"].values()) == pytest.approx(valid_in_classified * PIXEL**2)
    assert summary["valid_area"] == pytest.approx(mask.sum() * PIXEL**2)
    unclassified = summary["valid_area"] - sum(summary["class_areas"].values())
    assert summary["unclassified_area"] == pytest.approx(unclassified) and unclassified > 0


def test_float_scene_with_nan_and_an_all_nan_scene(tmp_path: Path):
    values = np.moveaxis(scene_pixels(), -1, 0).astype(np.float32) * 10.0
    values[:, :, :300] = np.nan  # the left half is NaN in every band, no nodata value set
    values[1, 200:260, 400:480] = np.nan  # a hole in one band only: invalid too
    scene = write_scene(tmp_path / "float.tif", values)
    result = run_tiles(str(scene), "--out", str(tmp_path / "f.tif"), "--heatmaps")
    assert result.exit_code == 0, result.output
    classes = read(tmp_path / "f.tif")[0][0]
    assert (classes[:, :2] == 255).all() and (classes[:, 2:] != 255).all()
    mosaic = read(tmp_path / "f.cam.tif")[0][0]
    assert np.isnan(mosaic[:, :300]).all() and np.isnan(mosaic[200:260, 400:480]).all()
    assert not np.isnan(mosaic[:200, 300:]).any()
    probs = read(tmp_path / "f.probs.tif")[0]
    assert probs[-1, 1, 2] == pytest.approx(1 - 60 * 50 / TILE**2)  # cols 400..450 of the tile
    # the stretch ignores NaN: 0 .. 2550 from the valid half
    summary = json.loads((tmp_path / "f.json").read_text())
    assert summary["stretch"]["source"] == "percentiles"
    assert summary["stretch"]["low"] == [0.0] * 3 and summary["stretch"]["high"] == [2550.0] * 3

    all_nan = write_scene(tmp_path / "nan.tif", np.full((3, 300, 300), np.nan, np.float32))
    result = run_tiles(str(all_nan), "--out", str(tmp_path / "n.tif"))
    assert result.exit_code == 0, result.output
    assert "0 classified, 4 nodata, valid 0%" in result.stderr
    assert "classes by area: none" in result.stderr
    assert (read(tmp_path / "n.tif")[0] == 255).all()
    summary = json.loads((tmp_path / "n.json").read_text())
    assert summary["valid_fraction"] == 0 and not any(summary["class_areas"].values())


def test_min_valid_decides_which_tiles_are_classified(tmp_path: Path):
    mask = footprint()
    scene = write_variant(tmp_path, "nodata", mask)
    share, _ = expected_tiles(mask)
    for min_valid in (0.1, 0.9):
        out = tmp_path / f"m{min_valid}.tif"
        result = run_tiles(str(scene), "--out", str(out), "--min-valid", str(min_valid))
        assert result.exit_code == 0, result.output
        assert np.array_equal(read(out)[0][0] != 255, share >= min_valid)


def test_truncated_16_bit_scene_is_one_line_and_nothing_is_left(tmp_path: Path):
    values = (np.moveaxis(scene_pixels(), -1, 0).astype(np.uint16) * 40) + 1000
    import rasterio
    from rasterio.transform import from_origin

    scene = tmp_path / "cut.tif"
    with rasterio.open(
        scene, "w", driver="GTiff", width=W, height=H, count=3, dtype="uint16",
        crs="EPSG:32633", transform=from_origin(0, 0, 10, 10),
    ) as dst:  # fmt: skip
        dst.write(values)
    data = scene.read_bytes()
    scene.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out" / "cut.tif"
    result = run_tiles(str(scene), "--out", str(out))
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith(f"error: {scene}: ") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.output
    assert not out.parent.exists() or not list(out.parent.iterdir())
