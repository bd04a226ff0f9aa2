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


# -- undecodable bytes: one rule for people and for files ----------------------------------

CAFE = os.fsdecode(b"caf\xe9.jpg")  # Latin-1 bytes: not UTF-8, legal on Linux


def _odd_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    for i, name in enumerate([CAFE, "=HYPERLINK(1).jpg", "-x.jpg", "'+'.jpg", "plain.jpg"]):
        _photo(folder / name, i)
    return folder


@pytest.mark.parametrize("suffix", ["jsonl", "csv"])
def test_results_files_are_utf8_keep_the_exact_name_and_resume(tmp_path: Path, suffix: str):
    folder = _odd_folder(tmp_path)
    out = tmp_path / f"r.{suffix}"
    args = ["batch", str(folder), "--out", str(out), *MINI]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    records = _jsonl_records(out) if suffix == "jsonl" else _csv_rows(out)
    assert len(records) == 5
    by_name = {Path(names.original_path(r)).name: r for r in records}
    odd = by_name[CAFE]
    assert Path(odd["path"]).name == "caf\\xe9.jpg"  # readable, valid UTF-8
    assert base64.b64decode(odd["path_bytes"]) == os.fsencode(folder / CAFE)
    assert not by_name["plain.jpg"].get("path_bytes")  # only where it is needed
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0 and "0 done, 5 skipped" in again.stderr


def test_csv_cells_never_start_a_formula(tmp_path: Path):
    folder = _odd_folder(tmp_path)
    out = tmp_path / "r.csv"
    listing = b"".join(name + b"\n" for name in sorted(os.listdir(os.fsencode(folder))))
    args = ["batch", "--from-list", "-", "--out", str(out), *MINI]
    cwd = os.getcwd()
    os.chdir(folder)  # relative paths: the names start the cells
    try:
        result = CliRunner().invoke(cli, args, input=listing)
        assert result.exit_code == 0, result.output
        rows = _csv_rows(out)
        cells = [row["path"] for row in rows]
        assert "'=HYPERLINK(1).jpg" in cells and "'-x.jpg" in cells and "''+'.jpg" in cells
        for row in rows:  # read with csv.DictReader, no cell starts a formula
            for value in row.values():
                assert not value or value[0] not in "=+-@\t\r", value
        again = CliRunner().invoke(cli, args, input=listing)  # resume undoes the escape
        assert again.exit_code == 0 and "0 done, 5 skipped" in again.stderr
    finally:
        os.chdir(cwd)


def test_csv_cell_escape_reads_back_exactly():
    for text in ["=1+1", "+a", "-", "@x", "\tx", "\rx", "'=x", "''-x", "'", "'a", "a=b", "", "x"]:
        cell = names.csv_cell(text)
        assert not cell or cell[0] not in "=+-@\t\r"
        assert names.csv_value(cell) == text
    assert names.csv_cell(-1.5) == -1.5  # numbers stay numbers


def test_a_csv_written_before_the_path_bytes_column_still_resumes(tmp_path: Path):
    folder = _odd_folder(tmp_path)
    out = tmp_path / "r.csv"
    args = ["batch", str(folder), "--out", str(out), *MINI]
    assert CliRunner().invoke(cli, args).exit_code == 0
    text = out.read_text()
    header = text.split("\n", 1)[0] + "\n" if text.startswith("#") else ""
    rows = list(csv.reader(io.StringIO(text[len(header) :], newline="")))
    assert rows[0][-1] == "path_bytes"
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n", quoting=csv.QUOTE_ALL)
    writer.writerows(row[:-1] for row in rows if "caf" not in row[0])  # as an older version
    out.write_text(header + buffer.getvalue())
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0, again.output
    assert "1 done, 4 skipped" in again.stderr
    rows = _csv_rows(out)
    assert len(rows) == 5 and "path_bytes" not in rows[-1]
    assert Path(rows[-1]["path"]).name == "caf\\xe9.jpg"


def test_classify_json_is_valid_utf8_with_the_exact_name(tmp_path: Path):
    folder = _odd_folder(tmp_path)
    result = CliRunner().invoke(cli, ["classify", str(folder), "--json", *MINI])
    assert result.exit_code == 0, result.output
    assert "\\udc" not in result.stdout  # no lone surrogates, escaped or not
    records = [json.loads(line) for line in result.stdout.splitlines()]
    (odd,) = [r for r in records if "path_bytes" in r]
    assert names.original_path(odd) == str(folder / CAFE)


def test_evaluate_report_escapes_every_name(tmp_path: Path):
    data = tmp_path / "data"
    _photo(data / "forest" / CAFE)
    _photo(data / "forest" / "x\u202etxt.jpg", 1)
    _photo(data / "sea" / "a\x1b[31m.png", 2)
    (data / "sea" / "<script>alert(1)<\\script>|*x*\u202e.jpg").write_bytes(b"junk")
    report = tmp_path / "report"
    result = CliRunner().invoke(
        cli, ["evaluate", str(data), "--report", str(report), "--gallery", "3", *MINI]
    )
    assert result.exit_code == 1, result.output  # the unreadable one
    page = (report / "report.html").read_bytes().decode("utf-8")
    markdown = (report / "metrics.md").read_bytes().decode("utf-8")
    metrics = json.loads((report / "metrics.json").read_bytes().decode("utf-8"))
    for text in (page, markdown):
        assert "\u202e" not in text and "\x1b" not in text and "<script>" not in text
        assert "\\u202e" in text
    assert "&lt;script&gt;" in page and "caf\\xe9.jpg" in page and "a\\x1b[31m.png" in page
    assert r"\<script\>alert(1)\<\\\\script\>\|\*x\*\\u202e.jpg" in markdown
    (skipped,) = metrics["skipped"]
    assert skipped["path"].endswith("|*x*\u202e.jpg")  # JSON: the name as it is


# -- panel titles and the table: letters of any script ---------------------------------------


def test_panel_titles_use_a_font_that_has_the_letters():
    from scenecam_edge.fonts import covers, default_font, title_font
    from scenecam_edge.visual import panel

    assert not covers(default_font(20), "Ö")  # Pillow's own font: ASCII only (boxes before)
    assert title_font("plain.jpg", 20) == (default_font(20), "plain.jpg")
    for line in ["Ölberg_café.jpg", "№ 5.jpg", "東京タワー.jpg", "Ölberg 東京 №"]:
        font, text = title_font(line, 20)
        assert covers(font, text), (line, text)  # never a box: every glyph is in the font
        # drawn as written where a font here has the letters, else as escapes
        assert text == line or (
            "\\u" in text and set(text) - set(line) <= set("\\u0123456789abcdef")
        )
    if covers(title_font("Ö", 20)[0], "Ölberg_café№"):  # a system font with Latin (fontconfig)
        assert title_font("Ölberg_café.jpg", 20)[1] == "Ölberg_café.jpg"
    picture = np.zeros((40, 40, 3), np.uint8)
    out = panel(picture, picture, picture, "東京タワー.jpg\nforest 90%  |  map of forest")
    assert out.ndim == 3 and out.shape[2] == 3


def test_the_panel_draws_its_title_in_the_chosen_font(monkeypatch: pytest.MonkeyPatch):
    from scenecam_edge import visual
    from scenecam_edge.fonts import default_font, title_font

    if title_font("Ölberg", 17)[0] is default_font(17):
        pytest.skip("no system font with Latin letters here (fontconfig)")
    picture = np.zeros((40, 40, 3), np.uint8)
    drawn = visual.panel(picture, picture, picture, "Ölberg_café")
    monkeypatch.setattr(visual, "title_font", lambda line, size: (default_font(size), line))
    boxes = visual.panel(picture, picture, picture, "Ölberg_café")  # as before: boxes
    assert drawn.shape == boxes.shape and not np.array_equal(drawn, boxes)


def test_classify_table_columns_line_up_in_display_width(tmp_path: Path):
    folder = tmp_path / "in"
    for i, name in enumerate(["東京タワー.png", "abc.png", "Ölberg_café.png"]):
        _photo(folder / name, i)
    result = CliRunner().invoke(cli, ["classify", str(folder), *MINI])
    assert result.exit_code == 0, result.output
    header, *rows = result.stdout.splitlines()
    assert len(rows) == 3
    start = names.display_width(header[: header.index("LABEL")])
    for row in rows:  # the label starts in the same terminal column on every line
        label_at = len(row) - len(row[row.index(".png") + 4 :].lstrip())
        assert names.display_width(row[:label_at]) == start, row
    assert names.display_width("東京") == 4 and names.display_width("e\u0301") == 1
    cut = names.fit_left("東京タワー.png", 9)
    assert cut == "...ー.png" and names.display_width(cut) == 9


def test_a_title_with_undecodable_bytes_and_controls_is_drawn_escaped(tmp_path: Path):
    folder = tmp_path / "in"
    _photo(folder / CAFE)
    _photo(folder / "x\u202e\x1b.png", 1)
    out = tmp_path / "panels"
    result = CliRunner().invoke(cli, ["classify", str(folder), "--save-dir", str(out), *MINI])
    assert result.exit_code == 0, result.output
    assert len(list(out.iterdir())) == 2


def test_tiles_names_a_scene_gdal_cannot_open_and_reads_list_files_as_bytes(tmp_path: Path):
    pytest.importorskip("rasterio")
    good = _photo(tmp_path / "scene.png")
    _photo(tmp_path / CAFE)
    listing = tmp_path / "scenes.txt"
    listing.write_bytes(b"scene.png\ncaf\xe9.jpg\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["tiles", str(listing), "--out-dir", str(out), *MINI])
    assert result.exit_code == 1, result.output
    (line,) = _error_lines(result.stderr)
    assert line.endswith("caf\\xe9.jpg: GDAL cannot open a file whose name is not UTF-8; rename it")
    assert (out / "scene.json").is_file() and good.is_file()


def test_names_that_look_like_options_or_are_only_spaces(tmp_path: Path):
    folder = tmp_path / "in"
    for i, name in enumerate(["-x.jpg", "--help.jpg", "   .jpg", "new\nline.jpg", "tab\t.jpg"]):
        _photo(folder / name, i)
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        result = CliRunner().invoke(cli, ["classify", *MINI, "--", "-x.jpg", "--help.jpg"])
        assert result.exit_code == 0, result.output
        assert [line.split()[0] for line in result.stdout.splitlines()[1:]] == [
            "-x.jpg",
            "--help.jpg",
        ]
        out = tmp_path / "r.csv"
        args = ["batch", ".", "--out", str(out), *MINI]
        assert CliRunner().invoke(cli, args).exit_code == 0
        paths = sorted(names.csv_value(row["path"]) for row in _csv_rows(out))
        assert paths == sorted(os.listdir("."))  # each once, exactly as named
        table = CliRunner().invoke(cli, ["classify", ".", *MINI]).stdout
        assert "new\\x0aline.jpg" in table and "tab\\x09.jpg" in table
        again = CliRunner().invoke(cli, args)
        assert again.exit_code == 0 and "0 done, 5 skipped" in again.stderr
    finally:
        os.chdir(cwd)


def test_a_heatmap_folder_whose_name_is_not_utf8_is_refused(tmp_path: Path):
    good = _photo(tmp_path / "good.png")
    maps = tmp_path / os.fsdecode(b"maps\xe9")
    args = ["batch", str(good), "--out", str(tmp_path / "r.jsonl"), "--heatmaps", str(maps)]
    result = CliRunner().invoke(cli, [*args, *MINI])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    assert "maps\\xe9: the name is not UTF-8" in result.stderr and not maps.exists()
