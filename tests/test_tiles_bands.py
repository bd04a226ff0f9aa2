"""Any number of bands: a 4-band uint16 scene through a 4-band model exported here, with the
per-band scaling the model was trained with recorded in its manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from .conftest import needs_tf, with_manifest
from .test_tiles import needs_geo, read, run_tiles, write_scene

pytestmark = [needs_geo, needs_tf, pytest.mark.tf]

SIZE = 32
LOW = (200.0, 300.0, 400.0, 1000.0)  # the model's channels: red, green, blue, near infrared
HIGH = (3000.0, 3200.0, 3400.0, 6000.0)


@pytest.fixture(scope="module")
def four_band_bundle(tmp_path_factory: pytest.TempPathFactory, four_band_export: Path) -> Path:
    # what training on 16-bit chips recorded
    stretch = {"low": list(LOW), "high": list(HIGH)}
    return with_manifest(
        four_band_export, tmp_path_factory.mktemp("b4s") / "b", band_stretch=stretch
    )


def test_four_band_uint16_scene_through_a_four_band_model(tmp_path: Path, four_band_bundle):
    from scenecam_edge import SceneCam

    rng = np.random.default_rng(5)
    # file bands 1..5: blue, green, red, near infrared, a band the model does not use
    h, w = 3 * SIZE, 4 * SIZE + 10  # not a multiple of the tile: the last column is padded
    yy, xx = np.mgrid[0:h, 0:w]
    smooth = (np.sin(xx / 5.0) + np.cos(yy / 7.0) + 2) / 4
    bands = [lo + (hi - lo) * np.clip(smooth + rng.normal(0, 0.2, (h, w)), -0.1, 1.1)
             for lo, hi in zip(LOW, HIGH, strict=False)]  # fmt: skip
    red, green, blue, nir = bands
    stack = np.stack([blue, green, red, nir, rng.uniform(0, 65535, (h, w))]).astype(np.uint16)
    scene = write_scene(tmp_path / "ms.tif", stack)
    out = tmp_path / "m.tif"
    result = run_tiles(
        str(scene), "--out", str(out), "--bands", "3,2,1,4", "--model", str(four_band_bundle)
    )
    assert result.exit_code == 0, result.output
    assert "stretch (model) [200,300,400,1000] .. [3000,3200,3400,6000]" in result.stderr
    summary = json.loads((tmp_path / "m.json").read_text())
    assert summary["bands"] == [3, 2, 1, 4] and summary["stretch"]["source"] == "model"
    assert summary["grid"]["cols"] == 5 and summary["tiles"]["classified"] == 15

    # the reference: the model's scaling applied by hand, the tile given to the model as is
    model = SceneCam.load(four_band_bundle, threads=1)
    values = np.stack([red, green, blue, nir], axis=-1).astype(np.uint16).astype(np.float32)
    scaled = (values - np.array(LOW, np.float32)) * (255.0 / (np.array(HIGH) - LOW)).astype(
        np.float32
    )
    pixels = np.clip(scaled + 0.5, 0, 255).astype(np.uint8)
    probs = read(tmp_path / "m.probs.tif")[0]
    for r, c in [(0, 0), (2, 3), (1, 2)]:
        tile = pixels[r * SIZE : (r + 1) * SIZE, c * SIZE : (c + 1) * SIZE]
        expected = model.predict([tile], ["tile"])[0]
        np.testing.assert_allclose(
            probs[:-1, r, c], [expected.probabilities[n] for n in model.class_names], atol=1e-5
        )

    # per-scene percentiles instead: another stretch, so other numbers
    result = run_tiles(
        str(scene), "--out", str(tmp_path / "p.tif"), "--bands", "3,2,1,4",
        "--stretch", "2,98", "--model", str(four_band_bundle),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "stretch (percentiles)" in result.stderr
    assert not np.allclose(read(tmp_path / "p.probs.tif")[0], probs)
    # three bands for a four-band model: a usage error in one line
    result = run_tiles(
        str(scene),
        "--out",
        str(tmp_path / "x.tif"),
        "--bands",
        "3,2,1",
        "--model",
        str(four_band_bundle),
    )
    assert result.exit_code == 2 and "takes 4 bands, not 3" in result.stderr


@pytest.mark.slow
def test_training_on_four_band_geotiff_chips_records_the_stretch_tiles_applies(tmp_path: Path):
    from scenecam_edge.training.train import TrainConfig, train

    rng = np.random.default_rng(11)
    data = tmp_path / "chips"
    chips = []
    for name, nir in (("water", 800.0), ("crop", 4000.0)):
        (data / name).mkdir(parents=True)
        for i in range(12):
            base = np.array([1200.0, 1100.0, 900.0, nir]) + rng.normal(0, 150, 4)
            chip = (base[:, None, None] + rng.normal(0, 80, (4, 32, 32))).astype(np.uint16)
            chips.append(chip)
            write_scene(data / name / f"{i}.tif", chip)
    cfg = TrainConfig(
        data=str(data), out=str(tmp_path / "run"), arch="small", img_size=32, channels=4,
        epochs=1, batch_size=8, val_split=0.25, cache_dir=str(tmp_path / "cache"),
        precision="float32", xla=False,  # compiling would be most of a seconds-long run
    )  # fmt: skip
    bundle = train(cfg)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["input"]["channels"] == 4
    values = np.stack(chips).astype(np.float32)  # (N, 4, 32, 32): every value, per band
    expected = np.percentile(np.moveaxis(values, 1, 0).reshape(4, -1), [2, 98], axis=1)
    stretch = manifest["input"]["band_stretch"]
    np.testing.assert_allclose(stretch["low"], expected[0], rtol=1e-6)
    np.testing.assert_allclose(stretch["high"], expected[1], rtol=1e-6)
    # a scene of such chips: tiles applies the recorded stretch by default
    scene = write_scene(tmp_path / "scene.tif", np.concatenate(chips[:3], axis=2))
    result = run_tiles(str(scene), "--out", str(tmp_path / "m.tif"), "--model", str(bundle))
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "m.json").read_text())
    assert summary["stretch"]["source"] == "model"
    np.testing.assert_allclose(summary["stretch"]["low"], stretch["low"])
    assert summary["tiles"]["classified"] == 3
