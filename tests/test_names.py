"""File names everywhere they are read or written (issue 26, "Names and arguments"):
names over the length limits, undecodable bytes, spreadsheet formulas, control and bidi
characters in reports, options-looking names. The rule itself is ``scenecam_edge.names``."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from scenecam_edge import names
from scenecam_edge.cli import cli

MINI = ("--model", "scenes-mini", "--threads", "1")
LONG = "a" * 300 + ".jpg"  # one component over NAME_MAX (255 bytes)


def _photo(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path, "PNG")
    return path


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def _jsonl_records(path: Path) -> list[dict]:
    """The file's records (a header line of the earlier form, if any, left out)."""
    data = path.read_bytes()
    data.decode("utf-8")  # strict: the file is valid UTF-8
    return [r for r in map(json.loads, data.splitlines()) if "path" in r]


def _csv_rows(path: Path) -> list[dict]:
    text = path.read_bytes().decode("utf-8")  # strict: the file is valid UTF-8
    if text.startswith("# scenecam-edge results "):  # the earlier form's header line
        text = text.split("\n", 1)[1]
    return list(csv.DictReader(io.StringIO(text, newline="")))


# -- names over the length limits ----------------------------------------------------------


def test_too_long_names_and_paths():
    assert names.too_long("ok.jpg") is None
    assert names.too_long("d/" * 2000 + "x.jpg") is None  # 4005 bytes, every name short
    assert "file name in the path is too long (304 bytes" in names.too_long(LONG)
    assert "path is too long (5000 bytes" in names.too_long("d/" * 2500)
    assert "is too long (256 bytes" in names.too_long("\udce9" * 256)  # bytes, not characters


def test_shown_cuts_a_long_name_in_the_middle_and_escapes():
    text = names.shown("x" * 10_000_000 + "\x1b[2J.jpg")
    assert len(text) < 200 and "[10000008 bytes]" in text
    assert text.startswith("x" * 80) and text.endswith("\\x1b[2J.jpg")
    assert names.shown("caf\udce9\u202e\n\\.jpg") == "caf\\xe9\\u202e\\x0a\\\\.jpg"


def test_a_name_over_the_limit_is_one_bad_input_in_classify(tmp_path: Path):
    good = _photo(tmp_path / "good.png")
    result = CliRunner().invoke(cli, ["classify", str(good), str(tmp_path / LONG), *MINI])
    assert result.exit_code == 1, result.output
    assert "good.png" in result.stdout
    (line,) = _error_lines(result.stderr)
    assert "...[" in line and len(line) < 400
    assert "a file name in the path is too long (304 bytes; the limit is 255)" in line


def test_batch_from_list_goes_on_past_a_huge_line(tmp_path: Path):
    good = _photo(tmp_path / "good.png")
    listing = tmp_path / "list.txt"
    listing.write_text(f"{good}\n{'b' * 1_000_000}\n{tmp_path / LONG}\n{good}.2\n")
    out = tmp_path / "r.jsonl"
    args = ["batch", "--from-list", str(listing), "--out", str(out), *MINI]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    errors = _error_lines(result.stderr)
    assert len(errors) == 3 and all(len(line) < 400 for line in errors)
    assert "path is too long (1000000 bytes" in errors[0]
    assert "file name in the path is too long (304 bytes" in errors[1]
    assert "no such file" in errors[2]
    records = _jsonl_records(out)
    assert [r.get("label") is not None for r in records] == [True, False, False, False]
    # resumed: everything is known already, the long names included
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 1 and "0 done, 4 skipped" in again.stderr


def test_a_folder_deeper_than_path_max_is_one_bad_input(tmp_path: Path):
    root = tmp_path / "data"
    _photo(root / "forest" / "a.png")
    fd = os.open(root / "forest", os.O_RDONLY)
    try:  # 17 names of 250 bytes: the path passes 4096 bytes
        for _ in range(17):
            os.mkdir("d" * 250, dir_fd=fd)
            inner = os.open("d" * 250, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = inner
    finally:
        os.close(fd)
    result = CliRunner().invoke(cli, ["classify", str(root), *MINI])
    assert result.exit_code == 1, result.output
    assert "a.png" in result.stdout
    (line,) = _error_lines(result.stderr)
    assert "path is too long" in line and len(line) < 400
    report = tmp_path / "report"
    evaluated = CliRunner().invoke(
        cli, ["evaluate", str(root), "--report", str(report), "--gallery", "1", *MINI]
    )
    assert evaluated.exit_code == 1, evaluated.output
    assert "path is too long" in evaluated.stderr and "on 1 images" in evaluated.stdout
    assert (report / "report.html").is_file()


def test_tiles_goes_on_past_a_name_over_the_limit(tmp_path: Path):
    pytest.importorskip("rasterio")
    good = _photo(tmp_path / "scene.png")
    out = tmp_path / "out"
    args = ["tiles", str(good), str(tmp_path / LONG), "--out-dir", str(out), *MINI]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    (line,) = _error_lines(result.stderr)
    assert "file name in the path is too long (304 bytes" in line and len(line) < 400
    assert (out / "scene.json").is_file()


def test_camera_source_over_the_limit_is_one_line(tmp_path: Path):
    pytest.importorskip("cv2")
    args = ["camera", "--source", str(tmp_path / LONG), "--headless", "--jsonl", "-", *MINI]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 3, result.output
    (line,) = _error_lines(result.stderr)
    assert "file name in the path is too long" in line and len(line) < 400
