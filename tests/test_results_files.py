"""Results files open in the tools people already use: a CSV's first line is its column
names, every line of a JSON-lines file is a record, and the run's description lives beside
the file (``<out>.meta.json``). Files of the earlier form (the description as their first
line) still resume, and are rewritten in the new one."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from scenecam_edge.cli import cli
from scenecam_edge.results_file import ResultsFile, ResultsMismatch

CLASSES = ["a", "b"]
IDENTITY = {"model": "m", "sha256": "0" * 64, "options": {"top_k": 3}}
RECORDS = [
    {"path": "x,\r\n\".jpg", "error": "bad"},
    {"path": "y.jpg", "label": "a", "index": 0, "confidence": 0.75,
     "probabilities": {"a": 0.75, "b": 0.25}},
]  # fmt: skip


def _written(path: Path, fmt: str) -> ResultsFile:
    results = ResultsFile(path, fmt, CLASSES, IDENTITY)  # type: ignore[arg-type]
    results.scan()
    results.open()
    results.append(RECORDS)
    results.close()
    return results


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_description_is_beside_the_file(tmp_path: Path, fmt: str):
    path = tmp_path / f"r.{fmt}"
    _written(path, fmt)
    described = json.loads((tmp_path / f"r.{fmt}.meta.json").read_text())
    assert described["scenecam_edge_results"] == 1 and described["format"] == fmt
    assert described["model"] == "m" and described["options"] == {"top_k": 3}
    assert described["base"] == os.getcwd()
    assert b"scenecam" not in path.read_bytes()
    assert not list(tmp_path.glob(".*.tmp*"))  # written atomically, nothing left behind


def test_csv_opens_with_dictreader_pandas_and_duckdb(tmp_path: Path):
    path = tmp_path / "r.csv"
    _written(path, "csv")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["path"] for r in rows] == [RECORDS[0]["path"], "y.jpg"]
    assert rows[1]["label"] == "a" and float(rows[1]["p_a"]) == 0.75
    pandas = pytest.importorskip("pandas")
    frame = pandas.read_csv(path)
    assert list(frame.columns) == [
        "path", "label", "index", "confidence", "error", "heatmap", "p_a", "p_b", "path_bytes"
    ]  # fmt: skip
    assert frame["path"].tolist() == [RECORDS[0]["path"], "y.jpg"]
    assert frame["p_b"].tolist()[1] == 0.25
    duckdb = pytest.importorskip("duckdb")
    got = duckdb.sql(f"SELECT path, p_a FROM read_csv('{path}') ORDER BY p_a").fetchall()
    assert got == [("y.jpg", 0.75), (RECORDS[0]["path"], None)]


def test_jsonl_opens_with_pandas_and_duckdb(tmp_path: Path):
    path = tmp_path / "r.jsonl"
    _written(path, "jsonl")
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert records == RECORDS
    pandas = pytest.importorskip("pandas")
    frame = pandas.read_json(path, lines=True)
    assert frame["path"].tolist() == [RECORDS[0]["path"], "y.jpg"]
    assert set(frame.columns) == {"path", "error", "label", "index", "confidence", "probabilities"}
    duckdb = pytest.importorskip("duckdb")
    got = duckdb.sql(f"SELECT count(*), count(label) FROM read_json('{path}')").fetchall()
    assert got == [(2, 1)]


def _legacy(path: Path, fmt: str) -> bytes:
    """The file an earlier version wrote: the description as its first line."""
    path.unlink(missing_ok=True)
    header = json.dumps({"scenecam_edge_results": 1, **IDENTITY, "base": str(path.parent)})
    rows = _written(path, fmt)
    body = path.read_bytes()
    rows.meta_path.unlink()
    first = f"# scenecam-edge results {header}\n" if fmt == "csv" else header + "\n"
    path.write_bytes(first.encode() + body)
    return body


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_files_of_the_earlier_form_resume_and_are_rewritten(tmp_path: Path, fmt: str):
    path = tmp_path / f"r.{fmt}"
    body = _legacy(path, fmt)
    results = ResultsFile(path, fmt, CLASSES, IDENTITY)  # type: ignore[arg-type]
    prior = results.scan()
    assert prior.migrated and prior.base == str(tmp_path)
    assert prior.done == {str(tmp_path / "y.jpg")}  # relative to the recorded base
    assert path.read_bytes() == body  # the first line went, nothing else
    described = json.loads(results.meta_path.read_text())
    assert described["base"] == str(tmp_path) and described["format"] == fmt
    again = ResultsFile(path, fmt, CLASSES, IDENTITY)  # type: ignore[arg-type]
    resumed = again.scan()
    assert not resumed.migrated and resumed.done == prior.done and resumed.failed == prior.failed
    # an earlier file written with other options is refused as before, and left alone
    _legacy(path, fmt)
    before = path.read_bytes()
    other = ResultsFile(path, fmt, CLASSES, {**IDENTITY, "model": "n"})  # type: ignore[arg-type]
    with pytest.raises(ResultsMismatch, match="was written with model=m; this run has model=n"):
        other.scan()
    assert path.read_bytes() == before


def test_batch_resumes_an_earlier_file_and_says_so(tmp_path: Path, sample_images: list[Path]):
    out = tmp_path / "r.csv"
    args = ["batch", "--out", str(out), "--model", "scenes-mini", "--threads", "1"]
    assert CliRunner().invoke(cli, [*args, str(sample_images[0])]).exit_code == 0
    meta = tmp_path / "r.csv.meta.json"
    header = json.loads(meta.read_text())
    header.pop("format")
    meta.unlink()
    out.write_bytes(f"# scenecam-edge results {json.dumps(header)}\n".encode() + out.read_bytes())
    result = CliRunner().invoke(cli, [*args, str(sample_images[0]), str(sample_images[1])])
    assert result.exit_code == 0, result.output
    assert "1 done, 1 skipped" in result.stderr
    assert "rewrote the file of an earlier version" in result.stderr
    assert "r.csv.meta.json" in result.stderr
    with open(out, newline="") as fh:
        assert [r["path"] for r in csv.DictReader(fh)] == [str(p) for p in sample_images[:2]]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_missing_or_damaged_description_is_refused(tmp_path: Path, fmt: str):
    path = tmp_path / f"r.{fmt}"
    results = _written(path, fmt)
    before = path.read_bytes()
    results.meta_path.write_text("{not json")
    with pytest.raises(ResultsMismatch, match=r"has a damaged description \(r\..*\.meta\.json\)"):
        ResultsFile(path, fmt, CLASSES, IDENTITY).scan()  # type: ignore[arg-type]
    results.meta_path.unlink()
    with pytest.raises(ResultsMismatch, match="is not a scenecam-edge results file"):
        ResultsFile(path, fmt, CLASSES, IDENTITY).scan()  # type: ignore[arg-type]
    assert path.read_bytes() == before
    # --restart (an emptied file) writes a fresh description
    fresh = ResultsFile(path, fmt, CLASSES, IDENTITY)  # type: ignore[arg-type]
    fresh.restart()
    fresh.open()
    fresh.close()
    assert json.loads(fresh.meta_path.read_text())["format"] == fmt


def test_the_description_names_the_target_and_mismatches_say_off(
    tmp_path: Path, sample_images: list[Path]
):
    """batch's .meta.json stores --target as the class name; one of an earlier version (its
    index) still resumes; the mismatch message says `off` for an unset option, not null."""
    out = tmp_path / "r.jsonl"
    args = ["batch", "--out", str(out), "--model", "scenes-mini", "--threads", "1"]
    maps = ["--heatmaps", str(tmp_path / "maps"), "--target", "forest"]
    first = CliRunner().invoke(cli, [*args, *maps, str(sample_images[0])])
    assert first.exit_code == 0, first.output
    meta = tmp_path / "r.jsonl.meta.json"
    described = json.loads(meta.read_text())
    assert described["options"]["explain"]["target"] == "forest"
    from scenecam_edge import SceneCam

    described["options"]["explain"]["target"] = SceneCam.load("scenes-mini").class_index("forest")
    meta.write_text(json.dumps(described))  # as an earlier version wrote it
    again = CliRunner().invoke(cli, [*args, *maps, *map(str, sample_images[:2])])
    assert again.exit_code == 0, again.output
    assert "1 done, 1 skipped" in again.stderr
    plain = CliRunner().invoke(cli, [*args, str(sample_images[2])])
    assert plain.exit_code == 2
    assert "was written with explain.alpha=0.4, " in plain.stderr
    assert "this run has explain.alpha=off, " in plain.stderr and "null" not in plain.stderr
