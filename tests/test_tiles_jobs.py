"""Many scenes per job (resumable, bad scenes reported), GIS-ready layouts, and Ray."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from .conftest import local_ray
from .test_tiles import needs_geo, read, run_tiles, scene_pixels, write_scene

pytestmark = needs_geo

HAS_RAY = importlib.util.find_spec("ray") is not None


def make_scenes(folder: Path, count: int, size: tuple[int, int] = (300, 450)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    base = np.moveaxis(scene_pixels(), -1, 0)[:, : size[0], : size[1]]
    return [
        write_scene(folder / f"scene{i}.tif", np.roll(base, 150 * i, axis=2).copy())
        for i in range(count)
    ]


def test_class_map_is_a_cog_with_colour_table_and_class_names(tmp_path: Path, scenecam):
    import rasterio
    import rasterio.shutil

    (scene,) = make_scenes(tmp_path, 1, size=(450, 600))
    out = tmp_path / "out" / "map.tif"
    result = run_tiles(str(scene), "--out", str(out), "--heatmaps", "--probabilities", "uint8")
    assert result.exit_code == 0, result.output
    names = scenecam.class_names
    with rasterio.open(out) as src:
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert src.profile["tiled"] and src.compression.name == "deflate"
        colours = src.colormap(1)
        assert colours[255] == (0, 0, 0, 0) and len({colours[i] for i in range(len(names))}) == 6
    # GDAL (as QGIS) reads the class names and the attribute table: copy to a VRT and look
    rasterio.shutil.copy(out, tmp_path / "map.vrt", driver="VRT")
    vrt = (tmp_path / "map.vrt").read_text()
    assert re.findall(r"<Category>(.*?)</Category>", vrt) == list(names)
    assert '<GDALRasterAttributeTable tableType="thematic">' in vrt
    # uint8 probabilities: scaled by 1/254, nodata 255, the scale in the file
    with rasterio.open(tmp_path / "out" / "map.probs.tif") as src:
        assert src.dtypes[0] == "uint8" and src.nodata == 255
        assert src.scales[0] == pytest.approx(1 / 254)
        probs = src.read().astype(np.float64) * src.scales[0]
    np.testing.assert_allclose(probs[:-1].sum(axis=0), 1.0, atol=len(names) / 254)
    # the full-resolution mosaic has overviews
    with rasterio.open(tmp_path / "out" / "map.cam.tif") as src:
        assert src.overviews(1) and src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
    # --no-cog: plain GeoTIFFs, the same values
    plain = tmp_path / "plain" / "map.tif"
    assert run_tiles(str(scene), "--out", str(plain), "--no-cog").exit_code == 0
    with rasterio.open(plain) as src:
        assert "LAYOUT" not in src.tags(ns="IMAGE_STRUCTURE")
    assert np.array_equal(read(plain)[0], read(out)[0])


def test_folders_globs_and_lists_one_output_set_each_bad_scenes_reported(tmp_path: Path):
    scenes = make_scenes(tmp_path / "a", 2) + make_scenes(tmp_path / "b", 1)
    (tmp_path / "b" / "scene0.tif").rename(tmp_path / "b" / "other.tif")
    broken = tmp_path / "b" / "broken.tif"
    broken.write_text("not a raster")
    listing = tmp_path / "list.txt"
    listing.write_text(f"# scenes\n{tmp_path / 'b' / 'other.tif'}\n{broken}\n")
    out = tmp_path / "out"
    result = run_tiles(str(tmp_path / "a"), str(listing), "--out-dir", str(out))
    assert result.exit_code == 1, result.output
    assert f"error: {broken}: " in result.stderr
    assert "summary: 4 scenes, 3 done, 0 skipped, 1 failed" in result.stderr
    done = sorted(p.name for p in out.iterdir())
    for stem in ("scene0", "scene1", "other"):
        assert {f"{stem}.tif", f"{stem}.probs.tif", f"{stem}.json", f"{stem}.tif.aux.xml"} <= set(
            done
        )
    assert not [n for n in done if n.startswith(("broken", "."))]
    # a glob, rerun: everything finished is skipped
    result = run_tiles(str(tmp_path / "a" / "*.tif"), "--out-dir", str(out))
    assert result.exit_code == 0, result.output
    assert result.stderr.count("skipped") == 3  # two lines and the summary
    assert scenes[0].exists()
    # two scenes with one name would overwrite each other: refused before any work
    result = run_tiles(
        str(scenes[0]), str(tmp_path / "a" / ".." / "a" / "scene0.tif"), "--out-dir", str(out)
    )
    assert result.exit_code == 0  # the same file twice is one scene
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "scene0.tif").write_bytes(scenes[0].read_bytes())
    result = run_tiles(str(scenes[0]), str(tmp_path / "c" / "scene0.tif"), "--out-dir", str(out))
    assert result.exit_code == 2 and "would both write" in result.stderr
    result = run_tiles(str(tmp_path / "nothing-*.tif"), "--out-dir", str(out))
    assert result.exit_code == 2 and "no scenes there" in result.stderr


def test_a_killed_job_resumes_where_it_stopped(tmp_path: Path):
    scenes = make_scenes(tmp_path / "in", 3, size=(450, 600))
    out = tmp_path / "out"
    command = [
        sys.executable, "-c", "from scenecam_edge.cli import main; main()",
        "tiles", str(tmp_path / "in"),
        "--out-dir", str(out), "--threads", "1", "--heatmaps", "--batch-size", "1",
    ]  # fmt: skip
    job = subprocess.Popen(command, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        # kill it once the second scene's outputs are open: its 12 tiles, one at a time and
        # explained, take far longer than this loop's 5 ms (a fixed sleep after the first
        # scene was not enough on a faster machine: the second one had finished too)
        while not (out.is_dir() and list(out.glob(".scene1.*.tmp*"))):
            assert job.poll() is None and time.monotonic() < deadline, "the job ended early"
            time.sleep(0.005)
        os.killpg(job.pid, signal.SIGKILL)
    finally:
        job.wait(timeout=30)
        job.stderr.close()  # type: ignore[union-attr]
    assert not (out / "scene2.json").exists()  # the kill came before the end
    first = (out / "scene0.tif").read_bytes()
    result = run_tiles(str(tmp_path / "in"), "--out-dir", str(out))
    assert result.exit_code == 0, result.output
    assert f"{scenes[0]}: finished before" in result.stderr
    assert "summary: 3 scenes, 2 done, 1 skipped, 0 failed" in result.stderr
    assert (out / "scene0.tif").read_bytes() == first
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no leftovers
    for scene in scenes:
        summary = json.loads((out / f"{scene.stem}.json").read_text())
        assert summary["tiles"]["classified"] == 12
    # resumed scenes equal a fresh run
    fresh = tmp_path / "fresh.tif"
    assert run_tiles(str(scenes[1]), "--out", str(fresh)).exit_code == 0
    assert np.array_equal(read(fresh)[0], read(out / "scene1.tif")[0])


@pytest.mark.slow
@pytest.mark.skipif(not HAS_RAY, reason="needs Ray: pip install '.[ray]'")
def test_ray_tasks_per_scene_give_the_command_s_outputs(tmp_path: Path):

    from scenecam_edge.integrations.ray import classify_scenes
    from scenecam_edge.tiles import TileOptions

    scenes = make_scenes(tmp_path / "in", 3)
    (tmp_path / "in" / "bad.tif").write_text("no raster")
    local = tmp_path / "local"
    assert run_tiles(str(tmp_path / "in"), "--out-dir", str(local)).exit_code == 1
    with local_ray():
        outcomes = classify_scenes([tmp_path / "in"], tmp_path / "ray", options=TileOptions())
    assert [o.scene.name for o in outcomes] == ["bad.tif", *(s.name for s in scenes)]
    assert outcomes[0].error and all(o.summary for o in outcomes[1:])
    for scene in scenes:
        for suffix in (".tif", ".probs.tif"):
            ours, theirs = (
                read(tmp_path / "ray" / f"{scene.stem}{suffix}"),
                read(local / f"{scene.stem}{suffix}"),
            )
            assert np.array_equal(ours[0], theirs[0], equal_nan=suffix != ".tif")
            assert ours[2] == theirs[2] and ours[3] == theirs[3]
        ray_summary = json.loads((tmp_path / "ray" / f"{scene.stem}.json").read_text())
        local_summary = json.loads((local / f"{scene.stem}.json").read_text())
        for key in ("class_areas", "tiles", "valid_fraction", "grid", "stretch"):
            assert ray_summary[key] == local_summary[key]


@pytest.mark.slow
@pytest.mark.skipif(not HAS_RAY, reason="needs Ray: pip install '.[ray]'")
def test_ray_blocks_of_one_scene_give_the_command_s_outputs(tmp_path: Path):

    from scenecam_edge.integrations.ray import classify_scene_blocks
    from scenecam_edge.options import ExplainOptions
    from scenecam_edge.tiles import TileOptions

    explain = ExplainOptions(target=None, method="gradcam", target_space="logit", alpha=0.4)

    # 16-bit (a per-scene stretch the driver fixes for every block), not a multiple of the
    # tile, with a nodata block: 4 rows of 4 tiles, 75 px overlap
    (scene,) = make_scenes(tmp_path / "in", 1, size=(400, 420))
    import rasterio

    with rasterio.open(scene) as src:
        values = src.read().astype(np.uint16) * 37 + 500
    values[:, 160:330, 40:230] = 0
    scene = write_scene_nodata(tmp_path / "in" / "s16.tif", values)
    local = tmp_path / "local" / "s16.tif"
    args = ("--stride", "75", "--heatmaps", "--batch-size", "5")
    assert run_tiles(str(scene), "--out", str(local), *args).exit_code == 0
    with local_ray():
        summary = classify_scene_blocks(
            scene,
            tmp_path / "ray" / "s16.tif",
            options=TileOptions(stride=75, explain=explain, batch_size=5),
            rows_per_block=2,
            in_flight=2,
        )
    assert summary["grid"]["rows"] == 5 and summary["tiles"]["nodata"] > 0
    for suffix in (".tif", ".probs.tif", ".cam.tif"):
        ours, theirs = (
            read(tmp_path / "ray" / f"s16{suffix}"),
            read(local.with_name(f"s16{suffix}")),
        )
        assert np.array_equal(ours[0], theirs[0], equal_nan=suffix != ".tif"), suffix
        assert ours[2] == theirs[2] and ours[4] == theirs[4]
    local_summary = json.loads(local.with_suffix(".json").read_text())
    ray_summary = json.loads((tmp_path / "ray" / "s16.json").read_text())
    for key in ("class_areas", "tiles", "valid_fraction", "grid", "stretch", "bands"):
        assert ray_summary[key] == local_summary[key]
    assert local_summary["stretch"]["source"] == "percentiles"


def write_scene_nodata(path: Path, bands: np.ndarray) -> Path:
    write_scene(path, bands)
    import rasterio

    with rasterio.open(path, "r+") as dst:
        dst.nodata = 0
    return path


@pytest.mark.slow
@pytest.mark.skipif(not HAS_RAY, reason="needs Ray: pip install '.[ray]'")
def test_ray_example_runs_with_its_defaults_quietly_with_named_columns(
    tmp_path: Path, sample_images: list[Path], scenecam
):
    import shutil

    import pyarrow.parquet as pq

    photos = tmp_path / "photos"
    photos.mkdir()
    for photo in sample_images[:4]:
        shutil.copy(photo, photos / photo.name)
    example = Path(__file__).resolve().parents[1] / "examples" / "ray_batch.py"
    # the defaults (2 workers at half a CPU) on a 2-CPU Ray: reading still gets a CPU
    proc = subprocess.run(
        [sys.executable, str(example), str(photos), str(tmp_path / "out"), "--num-cpus", "2"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "4 images in" in proc.stdout
    assert " INFO " not in proc.stderr  # Ray's INFO lines are off without --verbose
    table = pq.read_table(tmp_path / "out").to_pylist()
    names = scenecam.class_names
    for row in table:
        expected = scenecam.classify(photos / Path(row["path"]).name)
        assert row["label"] == expected.label
        np.testing.assert_allclose(
            [row[f"p_{n}"] for n in names], [expected.probabilities[n] for n in names], atol=2e-6
        )
