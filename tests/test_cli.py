"""The command line, through click's runner and as a real subprocess."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from scenecam_edge import __version__
from scenecam_edge.cli import cli
from scenecam_edge.visual import PANEL_MIN_HEIGHT

from .conftest import SAMPLES


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_version_and_help():
    result = invoke("--version")
    assert result.exit_code == 0 and __version__ in result.output
    for command in ("classify", "export", "train", "models"):
        result = invoke(command, "--help")
        assert result.exit_code == 0, command
        assert "Usage: " in result.output and command in result.output


def test_classify_table(sample_images: list[Path]):
    result = invoke("classify", str(SAMPLES), "--threads", "1")
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0].split()[:4] == ["FILE", "LABEL", "CONF", "TOP-3"]
    assert len(lines) == 1 + len(sample_images)
    for line, path in zip(lines[1:], sample_images, strict=True):
        assert line.startswith(str(path)) or line.startswith("...")
        assert "%" in line


def test_classify_json_matches_api(scenecam, sample_images: list[Path]):
    result = invoke("classify", *map(str, sample_images), "--json", "--top-k", "2")
    assert result.exit_code == 0
    records = [json.loads(line) for line in result.output.splitlines()]
    assert [r["path"] for r in records] == [str(p) for p in sample_images]
    for record, path in zip(records, sample_images, strict=True):
        expected = scenecam.classify(path)
        assert record["label"] == expected.label
        assert abs(record["confidence"] - expected.confidence) < 1e-5
        assert set(record["probabilities"]) == set(scenecam.class_names)
        assert len(record["top_k"]) == 2


def test_bad_inputs_are_reported_and_the_rest_go_on(tmp_path: Path, sample_images: list[Path]):
    good = tmp_path / "good.jpg"
    shutil.copy(sample_images[0], good)
    text = tmp_path / "text.jpg"
    text.write_text("<html>not an image</html>")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(sample_images[1].read_bytes()[:600])
    missing = tmp_path / "missing.jpg"
    args = [str(missing), str(text), str(good), str(truncated), str(tmp_path / "*.nothing")]
    result = CliRunner().invoke(cli, ["classify", *args, "--json"])
    assert result.exit_code == 1
    records = [json.loads(line) for line in result.stdout.splitlines()]
    by_path = {r["path"]: r for r in records}
    assert by_path[str(good)]["label"]
    assert by_path[str(missing)]["error"] == "no such file"
    assert "not an image" in by_path[str(text)]["error"]
    assert "truncated" in by_path[str(truncated)]["error"]
    assert "no files match" in by_path[str(tmp_path / "*.nothing")]["error"]
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 4 and all(line.startswith("error: ") for line in errors)
    assert "Traceback" not in result.output


def test_save_dir_writes_panels_without_touching_inputs(tmp_path: Path, image_folder: Path):
    before = {p: p.read_bytes() for p in image_folder.iterdir()}
    nested = image_folder / "sub"
    nested.mkdir()
    shutil.copy(image_folder / "img0.jpg", nested / "img0.jpg")  # same name, other folder
    out = tmp_path / "panels"
    result = invoke(
        "classify", str(image_folder), "--heatmaps", str(out), "--json", "--target", "forest"
    )
    assert result.exit_code == 0
    records = [json.loads(line) for line in result.stdout.splitlines()]
    # says where they went (the 64 x 64 test image also gets the far-from-training note)
    assert result.stderr.splitlines()[-1] == f"note: 5 panel(s) written to {out}"
    assert all(line.startswith("note: ") for line in result.stderr.splitlines())
    saved = sorted(Path(r["heatmap"]).name for r in records)
    assert saved == [
        "img0-2.cam.png",
        "img0.cam.png",
        "img1.cam.png",
        "img2.cam.png",
        "img3.cam.png",
    ]
    assert all(r["target"] == "forest" for r in records)
    panel = Image.open(out / "img2.cam.png")
    # three pictures of the 90 x 200 image, each enlarged to PANEL_MIN_HEIGHT, under a title
    picture_width = round(90 * PANEL_MIN_HEIGHT / 200)
    assert panel.mode == "RGB" and panel.width == 3 * picture_width + 2 * 6
    assert panel.height > PANEL_MIN_HEIGHT
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left
    assert all(p.read_bytes() == data for p, data in before.items())


def test_unknown_target_and_model_are_one_line_errors(sample_images: list[Path], tmp_path: Path):
    result = CliRunner().invoke(cli, ["classify", str(sample_images[0]), "--target", "volcano"])
    assert result.exit_code == 2 and "unknown class 'volcano'" in result.stderr
    result = CliRunner().invoke(cli, ["classify", str(sample_images[0]), "--model", str(tmp_path)])
    assert result.exit_code == 3
    assert result.stderr.strip().count("\n") == 0 and "no manifest.json" in result.stderr


def test_save_dir_inside_the_inputs_is_left_out(image_folder: Path):
    out = image_folder / "panels"
    counts = []
    for _ in range(3):  # each run would otherwise classify the panels of the one before
        result = invoke("classify", str(image_folder), "--heatmaps", str(out), "--json")
        assert result.exit_code == 0
        counts.append(len(result.stdout.splitlines()))
    assert counts == [4, 4, 4] and len(list(out.iterdir())) == 4
    assert "4 input(s) inside it were left out" in result.stderr


def test_target_is_case_insensitive_and_model_names_suggest(sample_images: list[Path]):
    result = invoke("classify", str(sample_images[0]), "--target", "Sea", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["target"] == "sea"
    result = CliRunner().invoke(
        cli, ["classify", str(sample_images[0]), "--model", "scenes-resnet81"]
    )
    assert result.exit_code == 3
    # installed (an editable install from a clone), or in the repository only (a wheel)
    assert re.search(r"did you mean (models/)?scenes-resnet18[? ]", result.stderr)
    assert result.stderr.count("\n") == 1


def test_models_lists_the_default():
    result = invoke("models", "--json")
    records = [json.loads(line) for line in result.output.splitlines()]
    assert sum(r["default"] for r in records) == 1


def test_real_subprocess(tmp_path: Path, sample_images: list[Path]):
    exe = shutil.which("scenecam-edge", path=os.path.dirname(sys.executable)) or shutil.which(
        "scenecam-edge"
    )
    if exe is None:
        pytest.skip("scenecam-edge is not installed as a command")
    proc = subprocess.run(
        [exe, "classify", str(sample_images[0]), str(tmp_path / "gone.jpg"), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert lines[0]["path"] == str(sample_images[0]) and lines[0]["label"]
    assert lines[1] == {"path": str(tmp_path / "gone.jpg"), "error": "no such file"}
    assert proc.stderr.strip() == f"error: {tmp_path / 'gone.jpg'}: no such file"


def test_target_alone_adds_its_probability_and_makes_no_map(
    sample_images: list[Path], monkeypatch: pytest.MonkeyPatch
):
    """classify --target without --heatmaps computes no map; the table gains P(target)."""
    from scenecam_edge.model import SceneCam

    asked: list[object] = []
    predict = SceneCam.predict

    def watched(self: SceneCam, *args: object, **kwargs: object) -> object:
        asked.append(kwargs.get("explain"))
        return predict(self, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(SceneCam, "predict", watched)
    result = invoke("classify", *map(str, sample_images[:2]), "--target", "forest")
    assert result.exit_code == 0, result.output
    head, *rows = result.stdout.splitlines()
    assert head.split()[:5] == ["FILE", "LABEL", "CONF", "P(forest)", "TOP-3"]
    assert asked and not any(asked)  # no map was computed that nothing shows
    expected = SceneCam.load().classify(sample_images[:2])
    for row, want in zip(rows, expected, strict=True):
        assert row.split()[3] == f"{want.probabilities['forest']:.1%}"
    record = json.loads(
        invoke("classify", str(sample_images[0]), "--target", "forest", "--json").stdout
    )
    assert record["target"] == "forest" and "method" not in record
    assert record["target_probability"] == record["probabilities"]["forest"]


def test_target_probability_is_recorded_with_heatmaps_too(
    tmp_path: Path, sample_images: list[Path]
):
    """--json carries target_probability whenever --target is given, maps or not."""
    result = invoke(
        "classify",
        str(sample_images[0]),
        "--target",
        "forest",
        "--heatmaps",
        str(tmp_path / "maps"),
        "--json",
        "--threads",
        "1",
    )
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout.splitlines()[0])
    assert record["target"] == "forest" and "method" in record
    assert record["target_probability"] == record["probabilities"]["forest"]


def test_old_option_names_still_work_with_a_note(tmp_path: Path, sample_images: list[Path]):
    out = tmp_path / "panels"
    result = CliRunner().invoke(cli, ["classify", str(sample_images[0]), "--save-dir", str(out)])
    assert result.exit_code == 0, result.output
    assert "note: --save-dir is now --heatmaps (the old name still works)" in result.stderr
    assert [p.name for p in out.iterdir()] == [sample_images[0].stem + ".cam.png"]
    assert "--save-dir" not in CliRunner().invoke(cli, ["classify", "--help"]).stdout
    both = CliRunner().invoke(
        cli, ["classify", str(sample_images[0]), "--save-dir", "a", "--heatmaps", "b"]
    )
    assert both.exit_code == 2 and "--save-dir and --heatmaps are the same option" in both.stderr


def test_a_misspelt_target_gets_a_suggestion(sample_images: list[Path]):
    result = CliRunner().invoke(cli, ["classify", str(sample_images[0]), "--target", "Forrest"])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "unknown class 'Forrest'; did you mean forest? classes are" in result.stderr
    far = CliRunner().invoke(cli, ["classify", str(sample_images[0]), "--target", "volcano"])
    assert far.exit_code == 2 and "did you mean" not in far.stderr


def test_an_existing_bundle_folder_says_force(tmp_path: Path):
    """export and quantize name the flag a user types, not the API's overwrite=True."""
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "manifest.json").write_text("{}")
    model = tmp_path / "m.keras"
    model.write_bytes(b"")
    for args in (
        ["export", str(model), "--out", str(out)],
        ["quantize", "scenes-mini", "--calibration", str(tmp_path), "--out", str(out)],
    ):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2, (args, result.output)
        assert result.stderr == f"error: {out}: exists and is not empty; --force replaces it\n"


def test_jsonl_file_beside_the_table(tmp_path: Path, sample_images: list[Path]):
    """--jsonl FILE: the lines --json prints, in a file renamed into place at the end, while
    the table still shows; '-' is --json."""
    args = ["classify", *map(str, sample_images[:3]), str(tmp_path / "gone.jpg")]
    printed = CliRunner().invoke(cli, [*args, "--json"])
    out = tmp_path / "o.jsonl"
    both = CliRunner().invoke(cli, [*args, "--jsonl", str(out)])
    assert both.exit_code == printed.exit_code == 1
    assert out.read_text() == printed.stdout
    assert both.stdout.splitlines()[0].split()[:3] == ["FILE", "LABEL", "CONF"]
    assert both.stderr.count("gone.jpg: no such file") == 1  # reported once
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.jsonl"]  # no temporary left
    dash = CliRunner().invoke(cli, [*args, "--jsonl", "-"])
    assert dash.stdout == printed.stdout
    clash = CliRunner().invoke(cli, [*args, "--jsonl", str(sample_images[0])])
    assert clash.exit_code == 2 and "would overwrite an input" in clash.stderr
