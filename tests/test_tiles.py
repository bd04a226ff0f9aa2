"""Large scenes: `scenecam-edge tiles` on small synthetic GeoTIFFs made here."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from scenecam_edge.cli import cli

from .conftest import SAMPLES

HAS_RASTERIO = importlib.util.find_spec("rasterio") is not None
needs_geo = pytest.mark.skipif(not HAS_RASTERIO, reason="needs rasterio: pip install '.[geo]'")

TILE = 150
HEIGHT, WIDTH = 450, 600  # 3 x 4 tiles
ORIGIN = (500_000.0, 5_000_000.0)  # UTM 33N, metres
PIXEL = 10.0
#: (row, col) -> a sample photo the shipped model classifies confidently (checked below).
PLANTED = {
    (0, 0): "forest_8",
    (1, 2): "sea_62",
    (2, 3): "buildings_137",
    (0, 3): "mountain_323",
    (2, 1): "street_31",
}


def run_tiles(*args: str):
    result = CliRunner().invoke(cli, ["tiles", "--threads", "1", *args])
    # exits are fine, crashes are not (the runner turns both into exit codes)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    return result


@pytest.fixture(scope="module")
def planted_classes() -> dict[tuple[int, int], str]:
    from scenecam_edge import SceneCam

    model = SceneCam.load(threads=1)
    expected = {}
    for cell, name in PLANTED.items():
        result = model.classify(SAMPLES / f"{name}.jpg")
        assert result.label == name.split("_")[0] and result.confidence > 0.8, (name, result)
        expected[cell] = result.label
    return expected


def scene_pixels() -> np.ndarray:
    """uint8 (H, W, 3): planted photos; elsewhere tiles half black, half white."""
    img = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    img[:, :, :] = 0
    for r in range(HEIGHT // TILE):
        for c in range(WIDTH // TILE):
            img[r * TILE : (r + 1) * TILE, c * TILE + TILE // 2 : (c + 1) * TILE] = 255
    for (r, c), name in PLANTED.items():
        photo = np.asarray(Image.open(SAMPLES / f"{name}.jpg").convert("RGB"))
        img[r * TILE : (r + 1) * TILE, c * TILE : (c + 1) * TILE] = photo
    return img


def write_scene(path: Path, bands: np.ndarray) -> Path:
    """bands: (B, H, W) of any dtype -> a GeoTIFF in EPSG:32633."""
    import rasterio
    from rasterio.transform import from_origin

    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=bands.shape[2],
        height=bands.shape[1],
        count=bands.shape[0],
        dtype=bands.dtype.name,
        crs="EPSG:32633",
        transform=from_origin(*ORIGIN, PIXEL, PIXEL),
        tiled=True,
        blockxsize=128,
        blockysize=128,
    ) as dst:
        dst.write(bands)
    return path


@pytest.fixture
def rgb_scene(tmp_path: Path) -> Path:
    return write_scene(tmp_path / "scene.tif", np.moveaxis(scene_pixels(), -1, 0))


def read(path: Path):
    import rasterio

    with rasterio.open(path) as src:
        return src.read(), src.crs, src.transform, src.descriptions, src.tags(), src.nodata


@needs_geo
def test_class_map_keeps_crs_scaled_transform_and_planted_classes(
    tmp_path: Path, rgb_scene: Path, planted_classes, scenecam
):
    out = tmp_path / "classmap.tif"
    result = run_tiles(str(rgb_scene), "--tile", str(TILE), "--out", str(out))
    assert result.exit_code == 0, result.output
    classes, crs, transform, descriptions, tags, nodata = read(out)
    assert crs.to_epsg() == 32633
    assert tuple(transform)[:6] == (PIXEL * TILE, 0.0, ORIGIN[0], 0.0, -PIXEL * TILE, ORIGIN[1])
    names = scenecam.class_names
    assert classes.shape == (1, 3, 4) and classes.dtype == np.uint8 and nodata == 255
    assert descriptions == ("class",)
    for (r, c), label in planted_classes.items():
        assert names[int(classes[0, r, c])] == label
    probs, _, probs_transform, probs_descriptions, _, probs_nodata = read(
        tmp_path / "classmap.probs.tif"
    )
    assert probs.shape == (len(names) + 1, 3, 4) and probs.dtype == np.float32
    assert probs_descriptions == (*(f"p_{n}" for n in names), "valid_fraction")
    assert np.isnan(probs_nodata) and probs_transform == transform
    np.testing.assert_allclose(probs[:-1].sum(axis=0), 1.0, atol=1e-5)
    assert np.array_equal(classes[0], probs[:-1].argmax(axis=0))
    assert (probs[-1] == 1.0).all()
    assert tags["tile"] == "150" and tags["classes"].startswith('["')
    assert "12 tiles (4 x 3, 150 px every 150), 12 classified, 0 nodata" in result.stderr
    # the numbers equal classifying the same pixels as images
    pixels = scene_pixels()
    expected = scenecam.classify(pixels[150:300, 300:450].copy())
    np.testing.assert_allclose(
        probs[:-1, 1, 2], [expected.probabilities[n] for n in names], atol=1e-5
    )
    summary = json.loads((tmp_path / "classmap.json").read_text())
    assert summary["area_unit"] == "metre^2" and summary["pixel_area"] == PIXEL**2
    assert summary["valid_fraction"] == 1.0 and summary["tiles"]["classified"] == 12
    # every scene pixel is counted once, in the class of the tile it lies in
    assert sum(summary["class_areas"].values()) == pytest.approx(HEIGHT * WIDTH * PIXEL**2)
    tiles_per_class = np.bincount(classes.ravel(), minlength=len(names))
    assert summary["class_areas"] == {
        n: pytest.approx(k * TILE * TILE * PIXEL**2)
        for n, k in zip(names, tiles_per_class, strict=False)
    }
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@needs_geo
def test_overlapping_tiles_and_heatmap_mosaic(tmp_path: Path, rgb_scene: Path, scenecam):
    out, cam = tmp_path / "classmap.tif", tmp_path / "classmap.cam.tif"
    result = run_tiles(
        str(rgb_scene),
        "--out",
        str(out),
        "--stride",
        "75",
        "--heatmaps",
        "--probabilities",
        "none",
        "--batch-size",
        "5",
    )
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "classmap.probs.tif").exists()
    data, crs, transform, *_ = read(out)
    assert data.shape == (1, 5, 7) and data.dtype == np.uint8
    # each output pixel is the 75 px square at the centre of its 150 px tile
    offset = (TILE - 75) / 2 * PIXEL
    assert tuple(transform)[:6] == (750.0, 0.0, ORIGIN[0] + offset, 0.0, -750.0, ORIGIN[1] - offset)
    mosaic, cam_crs, cam_transform, _, tags, nodata = read(cam)
    assert mosaic.shape == (1, HEIGHT, WIDTH) and mosaic.dtype == np.float32
    assert cam_crs == crs and tuple(cam_transform) == tuple(read(rgb_scene)[2])
    assert np.isnan(nodata) and not np.isnan(mosaic).any() and mosaic.min() >= 0
    assert tags["method"] == "gradcam"
    # the top-left 75 x 75 px are covered by the first tile alone: its CAM, resized
    pixels = scene_pixels()
    first = scenecam.explain(pixels[:150, :150].copy())
    # the reference: Pillow's bilinear upsampling of a float image (pixel centres aligned,
    # edges clamped, as OpenCV's INTER_LINEAR)
    resized = np.asarray(Image.fromarray(first.cam).resize((150, 150), Image.Resampling.BILINEAR))
    np.testing.assert_allclose(mosaic[0, :75, :75], resized[:75, :75], rtol=1e-4, atol=1e-6)


@needs_geo
def test_scene_not_a_multiple_of_the_tile_is_covered_to_the_edge(tmp_path: Path, scenecam):
    # a 200 x 320 scene, 150 px tiles: 2 x 3 tiles, the last row and column padded
    pixels = np.zeros((200, 320, 3), np.uint8)
    photo = np.asarray(Image.open(SAMPLES / "sea_62.jpg").convert("RGB"))
    pixels[150:, 300:] = photo[:50, :20]  # the corner strip is sea, the rest black
    scene = write_scene(tmp_path / "odd.tif", np.moveaxis(pixels, -1, 0))
    result = run_tiles(str(scene), "--out", str(tmp_path / "m.tif"), "--heatmaps")
    assert result.exit_code == 0, result.output
    mosaic = read(tmp_path / "m.cam.tif")[0][0]
    assert mosaic.shape == (200, 320) and not np.isnan(mosaic).any()
    classes, _, _, _, tags, _ = read(tmp_path / "m.tif")
    assert classes.shape == (1, 2, 3) and (classes < 255).all()
    assert tags["edge_padding"] == "right 130 px, bottom 100 px"
    probs = read(tmp_path / "m.probs.tif")[0]
    # the corner tile: 50 x 20 real pixels of 150 x 150, the rest filled with their mean
    assert probs[-1, 1, 2] == pytest.approx(50 * 20 / 150**2)
    corner = np.broadcast_to(photo[:50, :20].reshape(-1, 3).mean(0).round(), (150, 150, 3))
    filled = corner.astype(np.uint8).copy()
    filled[:50, :20] = photo[:50, :20]
    expected = scenecam.classify(filled)
    names = scenecam.class_names
    np.testing.assert_allclose(
        probs[:-1, 1, 2], [expected.probabilities[n] for n in names], atol=1e-5
    )
    summary = json.loads((tmp_path / "m.json").read_text())
    assert summary["tiles"]["padded"] == 4 and summary["tiles"]["total"] == 6


@needs_geo
def test_multispectral_bands_and_16_bit_stretch(tmp_path: Path, rgb_scene: Path, planted_classes):
    rgb = np.moveaxis(scene_pixels(), -1, 0).astype(np.uint16)
    noise = np.random.default_rng(0).integers(0, 60000, size=(HEIGHT, WIDTH), dtype=np.uint16)
    # bands 4, 3, 2 hold red, green, blue as 16-bit values 1000 + 40 * v; 1 and 5 are noise
    bands = np.stack([noise, 1000 + 40 * rgb[2], 1000 + 40 * rgb[1], 1000 + 40 * rgb[0], noise])
    scene = write_scene(tmp_path / "ms.tif", bands.astype(np.uint16))
    out, reference = tmp_path / "ms-map.tif", tmp_path / "rgb-map.tif"
    result = run_tiles(str(scene), "--out", str(out), "--bands", "4,3,2")
    assert result.exit_code == 0, result.output
    # a third of every band is black and a third white, so the 2-98 % stretch maps
    # 1000 -> 0 and 11200 -> 255: the pixels, and so the answers, of the 8-bit scene
    assert "stretch (percentiles) [1000,1000,1000] .. [11200,11200,11200]" in result.stderr
    assert run_tiles(str(rgb_scene), "--out", str(reference)).exit_code == 0
    ours, theirs = read(out)[0], read(reference)[0]
    assert np.array_equal(ours, theirs)
    np.testing.assert_allclose(
        read(tmp_path / "ms-map.probs.tif")[0], read(tmp_path / "rgb-map.probs.tif")[0], atol=1e-6
    )
    names = list(json_classes(out))
    for (r, c), label in planted_classes.items():
        assert names[int(ours[0, r, c])] == label
    # default bands 1,2,3 of this scene are noise and blue: a different map
    assert run_tiles(str(scene), "--out", str(tmp_path / "x.tif")).exit_code == 0
    assert not np.allclose(
        read(tmp_path / "x.probs.tif")[0], read(tmp_path / "rgb-map.probs.tif")[0]
    )


def json_classes(path: Path) -> list[str]:
    import json

    return json.loads(read(path)[4]["classes"])


@needs_geo
def test_library_stretch_and_single_band(tmp_path: Path, scenecam):
    from scenecam_edge.tiles import SceneTiler

    ramp = np.linspace(0, 4000, 300 * 300, dtype=np.float32).reshape(1, 300, 300)
    scene = write_scene(tmp_path / "gray.tif", ramp)
    with SceneTiler(scenecam, scene, stretch=(0, 100)) as tiler:
        assert tiler.bands == (1,)
        assert tiler.stretch is not None
        assert tiler.stretch.low[0] == pytest.approx(0, abs=20)
        assert tiler.stretch.high[0] == pytest.approx(4000, abs=20)
        row, valid = tiler.read_row(1)
        assert row.shape == (150, 300, 3) and row.dtype == np.uint8 and valid.all()
        assert (row[..., 0] == row[..., 2]).all() and row.max() == 255
        rows = list(tiler.rows(batch_size=3))
    assert [r.row for r in rows] == [0, 1] and rows[1].indices.shape == (2,)


@needs_geo
def test_usage_errors_are_one_line(tmp_path: Path, rgb_scene: Path):
    out = str(tmp_path / "m.tif")
    for args, code, words in [
        (["--bands", "4,3,2"], 1, "no band 4"),
        (["--bands", "1,2"], 2, "takes 3 bands, not 2"),
        (["--bands", "x"], 2, "comma-separated"),
        (["--stretch", "50,10"], 2, "LOW < HIGH"),
        (["--stride", "200"], 2, "larger than the tile"),
        (["--target", "volcano", "--heatmaps"], 2, "unknown class"),
        (["--method", "gradcam++"], 2, "--method: only used for heatmaps, and tiles makes"),
        (["--target", "sea"], 2, "--target: only used for heatmaps"),
    ]:
        result = run_tiles(str(rgb_scene), "--out", out, *args)
        assert result.exit_code == code, (args, result.output)
        assert result.stderr.count("\n") == 1 and words in result.stderr, (args, result.stderr)
    old = run_tiles(str(rgb_scene), "--out", str(tmp_path / "old" / "o.tif"), "--heatmap")
    assert old.exit_code == 0 and "note: --heatmap is now --heatmaps" in old.stderr
    assert (tmp_path / "old" / "o.cam.tif").is_file()  # the old name, with a note
    for args, words in [
        (["--out", str(tmp_path / "m.png")], "name them .tif or .tiff, not .png"),
        (["--out", out, "--out-dir", str(tmp_path)], "give --out (one scene) or --out-dir"),
        ([], "give --out (one scene) or --out-dir"),
        (["--out", str(tmp_path / "scene.json")], "name them .tif"),
    ]:
        result = run_tiles(str(rgb_scene), *args)
        assert result.exit_code == 2 and words in result.stderr, (args, result.stderr)
        assert result.stderr.count("\n") == 1
    result = run_tiles(str(rgb_scene), "--out", str(rgb_scene))
    assert result.exit_code == 2 and "overwrite a scene" in result.stderr
    not_raster = tmp_path / "notes.tif"
    not_raster.write_text("hello")
    result = run_tiles(str(not_raster), "--out", out)
    assert result.exit_code == 1 and result.stderr.startswith(f"error: {not_raster}: ")
    assert result.stderr.count("\n") == 1
    assert result.stderr.count(str(not_raster)) == 1  # GDAL's sentence without the name again
    assert not Path(out).exists()


BLOCK_RASTERIO = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('rasterio', 'ray'):
            raise ImportError('blocked: ' + name)
        return None
sys.meta_path.insert(0, Block())
"""


def assert_needs_geo_extra(code: str) -> None:
    """Run ``code`` in a Python where rasterio cannot be imported: it must end with the one
    line that names the geo extra, exit 3."""
    proc = subprocess.run(
        [sys.executable, "-c", BLOCK_RASTERIO + code], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.strip() == (
        "error: reading and writing rasters needs rasterio; "
        "install it with: pip install 'scenecam-edge[geo]'"
    )


def test_without_rasterio_the_command_names_the_extra(tmp_path: Path):
    code = f"""
import scenecam_edge.cli, scenecam_edge.tiles, scenecam_edge.batch
import scenecam_edge.integrations.ray
assert not [m for m in sys.modules if m.split('.')[0] in ('rasterio', 'ray')]
from scenecam_edge.cli import cli
cli(['tiles', {str(tmp_path / "x.tif")!r}, '--out', {str(tmp_path / "y.tif")!r}])
"""
    assert_needs_geo_extra(code)


@pytest.mark.parametrize(
    ("height", "width", "tile", "stride"),
    [(450, 600, 150, 150), (200, 320, 150, 150), (97, 1000, 150, 75), (151, 151, 150, 149),
     (1, 1, 32, 32), (640, 480, 64, 7)],
)  # fmt: skip
def test_grid_covers_every_pixel_and_cells_partition_the_scene(height, width, tile, stride):
    from scenecam_edge.tiles import TileGrid

    grid = TileGrid(height, width, tile, stride)
    in_tiles = np.zeros((height, width), np.int64)
    in_cells = np.zeros((height, width), np.int64)
    for r in range(grid.rows):
        top, bottom = grid.row_span(r)
        y0, y1 = grid.cell_rows(r)
        assert top <= y0 < y1 <= bottom  # a cell lies inside its tile's rows
        for c in range(grid.cols):
            in_tiles[top:bottom, c * stride : c * stride + tile] += 1
            x0, x1 = grid.cell_cols(c)
            assert c * stride <= x0 < x1 <= c * stride + tile
            in_cells[y0:y1, x0:x1] += 1
    assert (in_tiles >= 1).all() and (in_cells == 1).all()
    assert grid.padded_width >= width and grid.padded_width - width < stride


@needs_geo
def test_a_chip_without_a_georeference_is_quiet(tmp_path: Path):
    """No NotGeoreferencedWarning from rasterio for a chip (docs/satellite.md's chips), in
    any output; the one line per scene stays the only output besides the summary."""
    import warnings

    import rasterio

    chip = tmp_path / "chip.tif"
    pixels = np.random.default_rng(0).integers(0, 256, (3, 200, 200), dtype=np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(chip, "w", driver="GTiff", width=200, height=200, count=3,
                           dtype="uint8") as dst:  # fmt: skip
            dst.write(pixels)
    command = [sys.executable, "-c", "from scenecam_edge.cli import main; main()", "tiles"]
    args = [str(chip), "--out", str(tmp_path / "out" / "c.tif"), "--heatmaps"]
    done = subprocess.run(
        [*command, *args, "--model", "scenes-mini", "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr and (tmp_path / "out" / "c.cam.tif").is_file()


@needs_geo
def test_a_scene_says_its_tile_count_before_its_rows(tmp_path: Path, rgb_scene: Path):
    """The per-scene bar gets a total (and so the time left) as soon as the scene is open."""
    from scenecam_edge import SceneCam
    from scenecam_edge.tiles import OutputSet, TileOptions, run_scene

    heard: list[tuple[str, int]] = []
    outcome = run_scene(
        SceneCam.load("scenes-mini", threads=1),
        rgb_scene,
        OutputSet.beside(tmp_path / "out" / "m.tif"),
        TileOptions(),
        progress=lambda n: heard.append(("row", n)),
        total=lambda n: heard.append(("total", n)),
    )
    assert outcome.summary is not None
    assert heard[0] == ("total", outcome.summary["tiles"]["total"])
    assert sum(n for kind, n in heard[1:] if kind == "row") == heard[0][1]
    assert all(kind == "row" for kind, _ in heard[1:])
