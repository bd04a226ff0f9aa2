"""Band models in the still-image path: the API and ``classify`` read 4-band GeoTIFFs (uint8
and uint16, written here with rasterio), ``.npy`` arrays and RGBA PNGs for a real 4-band
model exported from Keras, and give the numbers ``tiles`` gives on the same pixels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from scenecam_edge.cli import cli

from .conftest import needs_tf, with_manifest
from .test_tiles import assert_needs_geo_extra, needs_geo, read, run_tiles

SIZE = 32
#: Per-band ranges a model trained on chips would record: 16-bit and 8-bit data.
STRETCH = {
    "uint16": {"low": [200.0, 300.0, 400.0, 1000.0], "high": [3000.0, 3200.0, 3400.0, 6000.0]},
    "uint8": {"low": [10.0, 20.0, 30.0, 5.0], "high": [240.0, 230.0, 200.0, 250.0]},
}


def band_values(dtype: str, seed: int, size: int = SIZE) -> np.ndarray:
    """(4, size, size) smooth fields with noise inside (and a little beyond) the dtype's
    stretch range: red, green, blue, near infrared."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    smooth = (np.sin(xx / (3.0 + seed)) + np.cos(yy / 5.0) + 2) / 4
    low, high = STRETCH[dtype]["low"], STRETCH[dtype]["high"]
    bands = [
        lo + (hi - lo) * np.clip(smooth + rng.normal(0, 0.2, (size, size)), -0.1, 1.1)
        for lo, hi in zip(low, high, strict=True)
    ]
    top = np.iinfo(dtype).max
    return np.clip(np.stack(bands), 1, top - 1).astype(dtype)  # 0 is the nodata value


def write_chip(
    path: Path, bands: np.ndarray, nodata: float | None = None, photometric: str = "MINISBLACK"
) -> Path:
    """A GeoTIFF of (B, H, W) values, bands as plain bands (no alpha: GDAL's default for four
    8-bit bands would make the fourth an alpha band)."""
    import rasterio
    from rasterio.transform import from_origin

    with rasterio.open(
        path, "w", driver="GTiff", width=bands.shape[2], height=bands.shape[1],
        count=bands.shape[0], dtype=bands.dtype.name, crs="EPSG:32633",
        transform=from_origin(500_000.0, 5_000_000.0, 10.0, 10.0), photometric=photometric,
        nodata=nodata, **({"alpha": "NO"} if photometric == "RGB" else {}),
    ) as dst:  # fmt: skip
        dst.write(bands)
    return path


def classify_json(*args: str) -> tuple[int, list[dict], str]:
    result = CliRunner().invoke(cli, ["classify", "--threads", "1", "--json", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return result.exit_code, records, result.stderr


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory, four_band_export: Path) -> dict[str, Path]:
    """The 4-band model as exported (no band_stretch) and with each recorded stretch."""
    root = tmp_path_factory.mktemp("variants")
    out = {"none": four_band_export}
    for dtype, stretch in STRETCH.items():
        out[dtype] = with_manifest(four_band_export, root / dtype, band_stretch=stretch)
    return out


pytestmark = [needs_geo, needs_tf, pytest.mark.tf]


@pytest.mark.parametrize(
    ("dtype", "recorded"),
    [("uint16", True), ("uint8", True), ("uint16", False), ("uint8", False)],
)
def test_a_chip_gets_the_numbers_tiles_gives(tmp_path: Path, bundles, dtype: str, recorded: bool):
    from scenecam_edge import SceneCam
    from scenecam_edge.tiles import SceneTiler

    bundle = bundles[dtype if recorded else "none"]
    values = band_values(dtype, seed=1)
    values[:, :3, :5] = 0  # a nodata corner: filled as tiles fills it
    chip = write_chip(tmp_path / "chip.tif", values, nodata=0)
    model = SceneCam.load(bundle, threads=1)

    # tiles: the chip is one tile, classified from the pixels its reader gives
    result = run_tiles(str(chip), "--out", str(tmp_path / "m.tif"), "--model", str(bundle))
    assert result.exit_code == 0, result.output
    tile_probs = read(tmp_path / "m.probs.tif")[0][:-1, 0, 0]
    with SceneTiler(model, chip) as tiler:
        assert tiler.stretch is not None or (dtype == "uint8" and not recorded)
        row = next(tiler.rows())
        pixels, mask = tiler.read_row(0)
    assert row.valid[0] == pytest.approx(1 - 15 / SIZE**2)
    np.testing.assert_allclose(row.probabilities[0], tile_probs, atol=1e-6)

    # the API on the file, on the same values as an array and as a .npy file
    api = model.classify(str(chip))
    raw = np.moveaxis(values, 0, -1).astype(np.float32)
    raw[:3, :5] = np.nan  # nodata as NaN: an array has no nodata value
    npy = tmp_path / "chip.npy"
    np.save(npy, raw)
    if recorded or dtype != "uint8":  # float values are stretched; 8-bit ones need not be
        for other in (model.classify(raw), model.classify(str(npy))):
            np.testing.assert_allclose(other.logits, api.logits, atol=1e-5)
    np.testing.assert_allclose(
        [api.probabilities[n] for n in model.class_names], tile_probs, atol=1e-6
    )
    # ... equal to the graph run on what the tiler fed it (its fill included)
    from scenecam_edge.bands import fill_invalid

    fed = fill_invalid(pixels[:, :SIZE], mask[:, :SIZE])
    np.testing.assert_allclose(api.logits, model.predict([fed], ["t"])[0].logits, atol=1e-5)
    if recorded:  # and the recorded stretch, by hand: the model sees what training saw
        low = np.array(STRETCH[dtype]["low"], np.float32)
        span = np.array(STRETCH[dtype]["high"], np.float32) - low
        by_hand = np.clip((raw - low) * (255.0 / span) + 0.5, 0, 255)
        np.testing.assert_array_equal(
            model.load_image(str(chip))[3:, 5:], by_hand[3:, 5:].astype(np.uint8)
        )

    # the classify command: the same class and probabilities
    code, records, stderr = classify_json(str(chip), "--model", str(bundle))
    assert code == 0, stderr
    assert records[0]["label"] == api.label
    np.testing.assert_allclose(
        [records[0]["probabilities"][n] for n in model.class_names], tile_probs, atol=1e-5
    )


def test_rgba_png_is_four_bands_for_a_four_band_model_only(tmp_path: Path, bundles, scenecam):
    from scenecam_edge import SceneCam

    rgba = np.moveaxis(band_values("uint8", seed=2), 0, -1)
    png = tmp_path / "rgbn.png"
    Image.fromarray(rgba, "RGBA").save(png)
    model = SceneCam.load(bundles["none"], threads=1)
    np.testing.assert_array_equal(model.load_image(str(png)), rgba)
    np.testing.assert_allclose(
        model.classify(str(png)).logits, model.predict([rgba], ["a"])[0].logits, atol=1e-6
    )
    # a 3-channel model keeps compositing the alpha onto white
    composite = Image.alpha_composite(
        Image.new("RGBA", (SIZE, SIZE), (255, 255, 255, 255)), Image.fromarray(rgba, "RGBA")
    ).convert("RGB")
    np.testing.assert_array_equal(scenecam.load_image(str(png)), np.asarray(composite))
    # an RGB photo has three bands: one line naming it and both counts
    jpg = tmp_path / "photo.jpg"
    Image.fromarray(rgba[:, :, :3]).save(jpg)
    code, records, stderr = classify_json(str(jpg), "--model", str(bundles["none"]))
    assert code == 1
    assert stderr.strip().splitlines() == [f"error: {jpg}: has 3 bands, the model takes 4"]
    assert records == [{"path": str(jpg), "error": "has 3 bands, the model takes 4"}]


@pytest.mark.parametrize(
    ("dtype", "photometric"),
    [("uint16", "MINISBLACK"), ("uint8", "MINISBLACK"), ("uint8", "RGB")],  # RGB: Pillow reads
)  # its first three bands and drops the fourth, unspecified one: refused from the header
def test_a_three_channel_model_refuses_a_four_band_tiff(
    tmp_path: Path, dtype: str, photometric: str
):
    values = band_values(dtype, seed=3, size=150)  # the model's size: no note about it
    chip = write_chip(tmp_path / "four.tif", values, photometric=photometric)
    code, records, stderr = classify_json(str(chip))  # the shipped RGB model
    assert code == 1
    assert stderr.strip().splitlines() == [f"error: {chip}: has 4 bands, the model takes 3"]
    assert records == [{"path": str(chip), "error": "has 4 bands, the model takes 3"}]


def test_a_sixteen_bit_rgb_geotiff_for_a_photo_model_is_stretched_as_tiles_does(
    tmp_path: Path, scenecam
):
    values = band_values("uint16", seed=4)[:3]
    chip = write_chip(tmp_path / "rgb16.tif", values)  # Pillow cannot decode it
    decoded = scenecam.load_image(str(chip))
    lo, hi = np.percentile(values.reshape(3, -1).astype(np.float64), [2, 98], axis=1)
    scaled = (np.moveaxis(values, 0, -1).astype(np.float32) - lo.astype(np.float32)) * (
        255.0 / (hi - lo)
    ).astype(np.float32)
    np.testing.assert_array_equal(decoded, np.clip(scaled + 0.5, 0, 255).astype(np.uint8))


def test_heatmaps_show_the_manifest_rgb_bands(tmp_path: Path, bundles):
    from scenecam_edge import SceneCam, visual

    values = band_values("uint16", seed=5)
    chip = write_chip(tmp_path / "chip.tif", values)
    model = SceneCam.load(bundles["uint16"], threads=1)
    explained = model.explain(str(chip))
    assert explained.image.shape == (SIZE, SIZE, 4)
    first_three = explained.image[:, :, :3]
    np.testing.assert_array_equal(explained.picture, first_three)
    np.testing.assert_array_equal(
        explained.overlay, visual.overlay(first_three, explained.heatmap, explained.alpha)
    )
    # a model whose manifest names its RGB bands (false colour: infrared, red, green)
    named = with_manifest(bundles["uint16"], tmp_path / "named", rgb_bands=[4, 1, 2])
    false_colour = SceneCam.load(named, threads=1).explain(str(chip))
    np.testing.assert_array_equal(false_colour.picture, explained.image[:, :, [3, 0, 1]])
    np.testing.assert_allclose(false_colour.cam, explained.cam, atol=1e-6)
    # and the classify command's panel
    code, records, stderr = classify_json(
        str(chip), "--model", str(named), "--heatmaps", str(tmp_path / "panels")
    )
    assert code == 0, stderr
    panel = np.asarray(Image.open(records[0]["heatmap"]))
    assert panel.ndim == 3 and panel.shape[2] == 3


def test_bad_band_inputs_are_one_line(tmp_path: Path, bundles):
    empty = np.zeros((4, SIZE, SIZE), np.uint16)
    nodata = write_chip(tmp_path / "nodata.tif", empty, nodata=0)
    truncated = tmp_path / "cut.tif"
    whole = write_chip(tmp_path / "whole.tif", band_values("uint16", seed=6)).read_bytes()
    truncated.write_bytes(whole[: len(whole) // 2])
    three = write_chip(tmp_path / "three.tif", band_values("uint16", seed=6)[:3])
    bad_npy = tmp_path / "bad.npy"
    bad_npy.write_bytes(b"\x93NUMPY not really")
    code, records, stderr = classify_json(
        *map(str, (nodata, truncated, three, bad_npy)), "--model", str(bundles["uint16"])
    )
    assert code == 1
    lines = stderr.strip().splitlines()
    assert len(lines) == 4 and all(line.startswith("error: ") for line in lines), lines
    reasons = {Path(r["path"]).name: r["error"] for r in records}
    assert reasons["nodata.tif"] == "no valid pixels (all nodata, masked or NaN)"
    assert reasons.get("cut.tif")
    assert reasons["three.tif"] == "has 3 bands, the model takes 4"
    assert reasons["bad.npy"].startswith("not a readable .npy array")


def test_without_rasterio_a_band_model_names_the_extra(tmp_path: Path, bundles):
    chip = write_chip(tmp_path / "chip.tif", band_values("uint16", seed=7))
    code = f"""
from scenecam_edge.cli import cli
cli(['classify', {str(chip)!r}, '--model', {str(bundles["uint16"])!r}])
"""
    assert_needs_geo_extra(code)


def test_evaluate_and_batch_read_chip_folders_with_the_model_stretch(tmp_path: Path, bundles):
    from scenecam_edge import SceneCam

    model = SceneCam.load(bundles["uint16"], threads=1)
    data = tmp_path / "chips"
    truth = {}
    for label, name in enumerate(("water", "crop")):
        (data / name).mkdir(parents=True)
        for i in range(3):
            chip = write_chip(
                data / name / f"{i}.tif", band_values("uint16", seed=10 + 3 * label + i)
            )
            truth[str(chip)] = model.class_names.index(name)
    expected = {path: model.classify(path) for path in truth}

    runner = CliRunner()
    result = runner.invoke(
        cli,
        ["evaluate", str(data), "--model", str(bundles["uint16"]), "--report", str(tmp_path / "r")],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    confusion = np.zeros((3, 3), np.int64)
    for path, label in truth.items():
        confusion[label, expected[path].index] += 1
    assert metrics["confusion_matrix"] == confusion.tolist()

    out = tmp_path / "results.jsonl"
    result = runner.invoke(
        cli,
        [
            "batch",
            str(data),
            "--model",
            str(bundles["uint16"]),
            "--out",
            str(out),
            "--threads",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    records = [r for r in lines if "path" in r]
    assert len(records) == len(truth)
    for record in records:
        want = expected[record["path"]]
        assert record["label"] == want.label
        for name, p in want.probabilities.items():
            assert record["probabilities"][name] == pytest.approx(p, abs=1e-5)
