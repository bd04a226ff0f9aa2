"""What a new user met (issue 20): panels that say what they show, a note when inputs are far
from what the model was trained on, and heatmap options refused where no heatmap is made."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from scenecam_edge.cli import cli
from scenecam_edge.images import mismatch
from scenecam_edge.visual import PANEL_MIN_HEIGHT, colorize, panel

from .conftest import REPO

SAMPLES = REPO / "samples" / "scenes"
MNIST = REPO / "models" / "mnist-tutorial"


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_panel_is_large_and_its_title_grows_with_it():
    image = np.full((150, 150, 3), 90, np.uint8)
    heat = np.linspace(0, 1, 150 * 150, dtype=np.float32).reshape(150, 150)
    small = panel(image, colorize(heat), image, "a.jpg\nsea 90%")
    assert small.shape[0] - 2 * 6 >= PANEL_MIN_HEIGHT  # pictures at least 256 px high
    big_image = np.full((500, 500, 3), 90, np.uint8)
    big_heat = np.zeros((500, 500), np.float32)
    big = panel(big_image, colorize(big_heat), big_image, "a.jpg\nsea 90%")
    bar_small, bar_big = small.shape[0] - PANEL_MIN_HEIGHT, big.shape[0] - 500
    assert bar_big > 1.5 * bar_small  # the type grew with the panel


def test_panel_titles_name_the_file_and_what_the_map_shows(tmp_path: Path):
    result = run(
        "classify", str(SAMPLES / "sea_1.jpg"), "--heatmaps", str(tmp_path / "a"), "--json"
    )
    assert result.exit_code == 0, result.output
    gradcam = np.asarray(Image.open(tmp_path / "a" / "sea_1.cam.png"))
    result = run(
        "classify",
        str(SAMPLES / "sea_1.jpg"),
        "--heatmaps",
        str(tmp_path / "b"),
        "--method",
        "eigencam",
    )
    assert result.exit_code == 0, result.output
    eigen = np.asarray(Image.open(tmp_path / "b" / "sea_1.cam.png"))
    bar = gradcam.shape[0] - PANEL_MIN_HEIGHT
    # Same file and prediction, different second line: the titles differ, the pictures' sizes not
    assert gradcam.shape == eigen.shape
    assert not np.array_equal(gradcam[:bar], eigen[:bar])
    from scenecam_edge.cli.classify import _title
    from scenecam_edge.model import SceneCam

    cam = SceneCam.load()
    e = cam.explain(SAMPLES / "sea_1.jpg", method="eigencam")
    assert _title(e).splitlines()[0] == "sea_1.jpg"
    assert "the same map for every class" in _title(e) and "logit" not in _title(e)
    g = cam.explain(SAMPLES / "sea_1.jpg", target="forest")
    assert "map of forest (gradcam, logit)" in _title(g)
    # the layer and the flip, when asked for, are named (classify builds these notes)
    noted = _title(g, ", layer stage3_block2_out, flip")
    assert "map of forest (gradcam, logit, layer stage3_block2_out, flip)" in noted


def test_colour_photos_through_the_digit_model_get_one_note():
    result = run("classify", str(SAMPLES), "--model", str(MNIST))
    assert result.exit_code == 0
    notes = [line for line in result.stderr.splitlines() if line.startswith("note:")]
    assert len(notes) == 1
    assert "(and 11 more)" in notes[0] and "made grey" in notes[0] and "28x28 grey" in notes[0]
    digits = run("classify", str(REPO / "samples" / "digits"), "--model", str(MNIST))
    assert digits.exit_code == 0 and "note:" not in digits.stderr


def test_mismatch_reasons(tmp_path: Path):
    Image.new("RGB", (40, 40)).save(tmp_path / "small.png")
    Image.new("RGB", (900, 150)).save(tmp_path / "wide.png")
    Image.new("RGB", (300, 300)).save(tmp_path / "fine.png")
    assert "enlarged" in mismatch(tmp_path / "small.png", 3, 150, 150)
    assert "squeezed" in mismatch(tmp_path / "wide.png", 3, 150, 150)
    assert mismatch(tmp_path / "fine.png", 3, 150, 150) is None
    assert "grey" in mismatch(tmp_path / "fine.png", 1, 28, 28)


@pytest.mark.parametrize("flag", [["--method", "eigencam"], ["--alpha", "0.8"]])
def test_heatmap_options_without_a_heatmap_are_refused(flag: list[str], tmp_path: Path):
    result = run("classify", str(SAMPLES / "sea_1.jpg"), *flag)
    assert result.exit_code == 2
    assert f"{flag[0]}: only used for heatmaps" in result.stderr
    # --target alone makes no map (the table gains its probability): still refused
    alone = run("classify", str(SAMPLES / "sea_1.jpg"), *flag, "--target", "sea", "--json")
    assert alone.exit_code == 2 and alone.stderr.count("\n") == 1
    assert "makes heatmaps only with --heatmaps DIR" in alone.stderr
    maps = tmp_path / "maps"
    used = run("classify", str(SAMPLES / "sea_1.jpg"), *flag, "--heatmaps", str(maps), "--json")
    assert used.exit_code == 0, used.output
