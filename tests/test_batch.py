"""Batch jobs: the streaming engine, the resumable `batch` command, the Ray Data predictor."""

from __future__ import annotations

import csv
import importlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from scenecam_edge import ImageError, SceneCam
from scenecam_edge.batch import ResultsFile, classify_batches, classify_stream
from scenecam_edge.cli import cli
from scenecam_edge.results import Classification

from .conftest import cli_executable, local_ray

HAS_RAY = importlib.util.find_spec("ray") is not None and importlib.util.find_spec("pyarrow")


def run_batch(*args: str):
    result = CliRunner().invoke(cli, ["batch", "--threads", "1", *args])
    # exits are fine, crashes are not (the runner turns both into exit codes)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    return result


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSON-lines results file: every line is one."""
    text = path.read_text()
    assert text.endswith("\n")
    records = [json.loads(line) for line in text.splitlines()]
    assert all("path" in r and "scenecam_edge_results" not in r for r in records)
    return records


def read_csv(path: Path) -> list[dict]:
    """The rows of a CSV results file, its first line the column names."""
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def make_images(folder: Path, n: int, size: int = 96, start: int = 0) -> list[Path]:
    """``n`` small smooth JPEGs with distinct colours."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(start)
    yy, xx = np.mgrid[0:size, 0:size]
    paths = []
    for i in range(start, start + n):
        base = rng.uniform(0, 255, size=3)
        img = (base + 50 * np.sin(xx[..., None] / (5 + i % 7) + yy[..., None] / 9)).clip(0, 255)
        path = folder / f"img{i:04d}.jpg"
        Image.fromarray(img.astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


@pytest.fixture
def mixed_folder(tmp_path: Path, sample_images: list[Path]) -> Path:
    """Four sample photos and three broken files: zero bytes, text named .jpg, truncated."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    for photo in sample_images[:4]:
        shutil.copy(photo, folder / photo.name)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("<html>not an image</html>")
    (folder / "truncated.jpg").write_bytes(sample_images[5].read_bytes()[:700])
    return folder


BROKEN = {"empty.jpg", "text.jpg", "truncated.jpg"}


def test_folder_with_good_and_corrupt_images(scenecam, mixed_folder: Path, tmp_path: Path):
    out = tmp_path / "results.jsonl"
    result = run_batch(str(mixed_folder), "--out", str(out), "--batch-size", "3")
    assert result.exit_code == 1
    records = read_jsonl(out)
    assert sorted(Path(r["path"]).name for r in records) == sorted(
        p.name for p in mixed_folder.iterdir()
    )
    for record in records:
        name = Path(record["path"]).name
        if name in BROKEN:
            assert set(record) == {"path", "error"} and record["error"]
            continue
        expected = scenecam.classify(record["path"])
        assert set(record) == {"path", "label", "index", "confidence", "probabilities", "top_k"}
        assert record["label"] == expected.label and record["index"] == expected.index
        assert record["confidence"] == pytest.approx(expected.confidence, abs=1e-5)
    by_name = {Path(r["path"]).name: r for r in records}
    assert "not an image" in by_name["empty.jpg"]["error"]
    assert "not an image" in by_name["text.jpg"]["error"]
    assert "truncated" in by_name["truncated.jpg"]["error"]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 3
    assert "summary: 4 done, 0 skipped, 3 failed" in result.stderr
    assert "Traceback" not in result.output


def test_rerun_skips_done_and_failed_inputs(mixed_folder: Path, tmp_path: Path):
    out = tmp_path / "results.jsonl"
    run_batch(str(mixed_folder), "--out", str(out))
    first = out.read_bytes()
    again = run_batch(str(mixed_folder), "--out", str(out))
    assert out.read_bytes() == first
    assert "summary: 0 done, 7 skipped, 0 failed" in again.stderr
    assert "3 of the skipped inputs failed in an earlier run" in again.stderr
    assert again.exit_code == 1  # the results still hold failures for these inputs


def test_retry_failed_replaces_the_failed_lines(
    mixed_folder: Path, tmp_path: Path, sample_images: list[Path]
):
    out = tmp_path / "results.jsonl"
    assert run_batch(str(mixed_folder), "--out", str(out), "--retry-failed").exit_code == 1
    shutil.copy(sample_images[6], mixed_folder / "truncated.jpg")  # repaired
    result = run_batch(str(mixed_folder), "--out", str(out), "--retry-failed")
    assert result.exit_code == 1  # the two others still fail
    assert "summary: 1 done, 4 skipped, 2 failed" in result.stderr
    records = read_jsonl(out)
    paths = [r["path"] for r in records]
    assert len(paths) == len(set(paths)) == 7
    by_name = {Path(r["path"]).name: r for r in records}
    assert by_name["truncated.jpg"]["label"]
    (mixed_folder / "empty.jpg").unlink()
    (mixed_folder / "text.jpg").unlink()
    result = run_batch(str(mixed_folder), "--out", str(out), "--retry-failed")
    assert result.exit_code == 0
    records = read_jsonl(out)
    assert len(records) == 5 and not [r for r in records if "error" in r]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_an_input_given_twice_gets_one_line(mixed_folder: Path, tmp_path: Path):
    out = tmp_path / "results.jsonl"
    photo = next(p for p in sorted(mixed_folder.iterdir()) if p.name not in BROKEN)
    result = run_batch(
        str(photo), str(mixed_folder), str(mixed_folder / "*.jpg"), "--out", str(out)
    )
    paths = [r["path"] for r in read_jsonl(out)]
    assert len(paths) == len(set(paths)) == 7
    assert "7 done" not in result.stderr and "skipped" in result.stderr


def test_from_list(tmp_path: Path, mixed_folder: Path, sample_images: list[Path]):
    listing = tmp_path / "inputs.txt"
    chosen = [sample_images[0], sample_images[1], mixed_folder / "text.jpg"]
    listing.write_text("\n".join(map(str, chosen)) + "\n\n" + str(tmp_path / "gone.jpg") + "\n")
    out = tmp_path / "results.jsonl"
    result = run_batch("--from-list", str(listing), "--out", str(out))
    assert result.exit_code == 1
    records = read_jsonl(out)
    assert [r["path"] for r in records] == [*map(str, chosen), str(tmp_path / "gone.jpg")]
    assert [("error" in r) for r in records] == [False, False, True, True]
    assert records[3]["error"] == "no such file"
    usage = run_batch("--out", str(out))
    assert usage.exit_code == 2 and "--from-list" in usage.stderr


def test_csv_and_jsonl_agree(mixed_folder: Path, tmp_path: Path, scenecam):
    jsonl, table = tmp_path / "r.jsonl", tmp_path / "r.csv"
    run_batch(str(mixed_folder), "--out", str(jsonl))
    run_batch(str(mixed_folder), "--out", str(table))  # the format from the extension
    rows = read_csv(table)
    columns = ["path", "label", "index", "confidence", "error", "heatmap"]
    probabilities = [f"p_{n}" for n in scenecam.class_names]
    assert list(rows[0]) == columns + probabilities + ["path_bytes"]
    records = {r["path"]: r for r in read_jsonl(jsonl)}
    assert sorted(records) == sorted(r["path"] for r in rows)
    for row in rows:
        record = records[row["path"]]
        if "error" in record:
            assert row["error"] == record["error"] and row["label"] == ""
            continue
        assert row["error"] == "" and row["label"] == record["label"]
        assert int(row["index"]) == record["index"]
        probs = [float(row[f"p_{n}"]) for n in scenecam.class_names]
        assert probs == [record["probabilities"][n] for n in scenecam.class_names]
        assert sum(probs) == pytest.approx(1.0, abs=1e-4)
    # a CSV is not resumed as JSON lines, nor the other way round; a flag that contradicts
    # the extension is refused; no message quotes the file's content
    wrong = run_batch(str(mixed_folder), "--out", str(table), "--jsonl")
    assert wrong.exit_code == 2
    assert (
        wrong.stderr
        == f"error: --jsonl does not match --out {table.name} (a csv name); drop the flag or rename --out\n"
    )
    wrong = run_batch(str(mixed_folder), "--out", str(jsonl), "--csv")
    assert wrong.exit_code == 2 and "--csv does not match --out r.jsonl" in wrong.stderr
    renamed = tmp_path / "r.txt"
    jsonl.rename(renamed)
    missing = run_batch(str(mixed_folder), "--out", str(renamed), "--csv")
    assert missing.exit_code == 2 and missing.stderr.count("\n") == 1
    assert "is not a scenecam-edge results file (no r.txt.meta.json beside it" in missing.stderr
    jsonl.with_name("r.jsonl.meta.json").rename(tmp_path / "r.txt.meta.json")
    wrong = run_batch(str(mixed_folder), "--out", str(renamed), "--csv")
    assert wrong.exit_code == 2 and wrong.stderr.count("\n") == 1
    assert "is a JSON lines results file; this run writes CSV" in wrong.stderr
    assert "{" not in wrong.stderr  # no JSON record inside the message


def test_heatmaps_have_safe_distinct_names(
    tmp_path: Path, sample_images: list[Path], scenecam: SceneCam
):
    inputs = tmp_path / "in"
    (inputs / "a").mkdir(parents=True)
    (inputs / "b").mkdir()
    shutil.copy(sample_images[0], inputs / "a" / "same name.jpg")
    shutil.copy(sample_images[1], inputs / "b" / "same name.jpg")
    shutil.copy(sample_images[2], inputs / "a" / "..hidden été;rm -rf.jpg")
    out, maps = tmp_path / "r.jsonl", tmp_path / "maps"
    result = run_batch(
        str(inputs), "--out", str(out), "--heatmaps", str(maps), "--heatmap-format", "both"
    )
    assert result.exit_code == 0, result.output
    records = read_jsonl(out)
    pngs = [Path(r["heatmap"]) for r in records]
    npys = [Path(r["cam"]) for r in records]
    assert sorted(p.name for p in pngs) == [
        "hidden_été_rm_-rf.cam.png",
        "same_name-2.cam.png",
        "same_name.cam.png",
    ]
    assert [p.with_suffix(".npy") for p in pngs] == npys
    for png, npy in zip(pngs, npys, strict=True):
        assert png.parent == maps and Image.open(png).size == (150, 150)
        cam = np.load(npy, allow_pickle=False)
        assert cam.dtype == np.float32 and cam.min() >= 0
        assert cam.shape == scenecam.manifest.features_shape[:2]  # the raw map, feature-sized
    # a resumed run with one more input of the same name does not reuse a name
    (inputs / "c").mkdir()
    shutil.copy(sample_images[3], inputs / "c" / "same name.jpg")
    before = {p: p.read_bytes() for p in maps.iterdir()}
    run_batch(str(inputs), "--out", str(out), "--heatmaps", str(maps), "--heatmap-format", "both")
    records = read_jsonl(out)
    assert len(records) == 4 and Path(records[-1]["heatmap"]).name == "same_name-3.cam.png"
    assert all(p.read_bytes() == data for p, data in before.items())
    # inputs inside the heatmap folder are not classified (a rerun would find the heatmaps)
    again = run_batch(str(tmp_path), "--out", str(out), "--heatmaps", str(maps))
    assert again.exit_code == 2 and again.stderr.count("\n") == 1
    assert (
        "was written with heatmaps=both; this run has heatmaps=png: use --restart" in again.stderr
    )
    again = run_batch(
        str(tmp_path), "--out", str(out), "--heatmaps", str(maps), "--heatmap-format", "both"
    )
    assert "inside the --heatmaps folder were not classified" in again.stderr
    assert not [r for r in read_jsonl(out) if Path(r["path"]).parent == maps]


def test_heatmap_format_npy_alone(tmp_path: Path, sample_images: list[Path]):
    out, maps = tmp_path / "r.csv", tmp_path / "maps"
    result = run_batch(
        str(sample_images[0]),
        "--out",
        str(out),
        "--heatmaps",
        str(maps),
        "--heatmap-format",
        "npy",
        "--target",
        "forest",
    )
    assert result.exit_code == 0
    (row,) = read_csv(out)
    assert row["heatmap"].endswith(".cam.npy") and Path(row["heatmap"]).is_file()
    assert sorted(p.suffix for p in maps.iterdir()) == [".npy"]
    usage = run_batch(str(sample_images[0]), "--out", str(out), "--heatmap-format", "png")
    assert usage.exit_code == 2 and "--heatmaps" in usage.stderr


def test_resume_after_sigkill(tmp_path: Path):
    folder = tmp_path / "many"
    inputs = make_images(folder, 200)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    out = tmp_path / "results.jsonl"
    cmd = [cli_executable(), "batch", str(folder), "--out", str(out), "--batch-size", "8"]
    proc = subprocess.Popen([*cmd, "--threads", "1"], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and out.read_bytes().count(b"\n") >= 24:
                break
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the job ended before it could be killed"
    killed = out.read_bytes()
    assert 24 <= killed.count(b"\n") < 201
    lines = killed.decode().splitlines(keepends=True)
    complete = [json.loads(line) for line in lines if line.endswith("\n")]
    # the killed run left whole lines; add a torn one, as a kill inside a write would
    with open(out, "ab") as fh:
        fh.write(b'{"path": "' + str(folder).encode() + b"/img01")
    rerun = subprocess.run(
        [*cmd, "--threads", "1"], capture_output=True, text=True, timeout=300, check=False
    )
    assert rerun.returncode == 1  # broken.jpg
    assert f"{len(complete)} skipped" in rerun.stderr
    assert rerun.stderr.count("dropped an incomplete last line") == 1  # reported once
    assert "WARNING" not in rerun.stderr
    records = read_jsonl(out)
    assert records[: len(complete)] == complete  # nothing already written was lost
    paths = [r["path"] for r in records]
    assert sorted(paths) == sorted(map(str, [*inputs, folder / "broken.jpg"]))
    assert len(paths) == len(set(paths))


def test_torn_line_only_dropped_when_it_looks_like_ours(tmp_path: Path, sample_images):
    out = tmp_path / "r.jsonl"
    run_batch(str(sample_images[0]), "--out", str(out))
    with open(out, "a") as fh:
        fh.write("some text without newline")
    result = run_batch(str(sample_images[1]), "--out", str(out))
    assert result.exit_code == 2 and "not appending" in result.stderr
    assert out.read_text().endswith("some text without newline")
    notes = tmp_path / "notes.jsonl"
    notes.write_text('{"path": "a.jpg", "label": "sea"}\n')  # not written by a batch
    result = run_batch(str(sample_images[0]), "--out", str(notes))
    assert result.exit_code == 2 and "is not a scenecam-edge results file" in result.stderr
    csv_out = tmp_path / "r.csv"
    csv_out.write_text("# scenecam-edge res")  # a header torn by a kill
    result = run_batch(str(sample_images[0]), "--out", str(csv_out))
    assert result.exit_code == 0
    assert result.stderr.count("incomplete last line") == 1
    assert [r["path"] for r in read_csv(csv_out)] == [str(sample_images[0])]


# -- the API ---------------------------------------------------------------------------------


def test_classify_batch_from_threads_equals_serial(scenecam, sample_images: list[Path], tmp_path):
    images: list = [*sample_images, tmp_path / "missing.jpg", *sample_images[:5]]
    images.insert(3, np.zeros((40, 70, 3), np.uint8))
    serial = list(scenecam.classify_batch(images, batch_size=4, workers=0))
    assert isinstance(serial[len(sample_images) + 1], ImageError)
    assert serial[len(sample_images) + 1].reason == "no such file"
    expected = scenecam.classify([i for i in images if not isinstance(i, Path) or i.exists()])
    good = [r for r in serial if isinstance(r, Classification)]
    assert [r.label for r in good] == [r.label for r in expected]
    for ours, theirs in zip(good, expected, strict=True):
        assert ours.source == theirs.source
        np.testing.assert_allclose(ours.logits, theirs.logits, rtol=1e-5, atol=1e-5)

    outputs: dict[int, list] = {}

    def work(n: int) -> None:
        outputs[n] = list(scenecam.classify_batch(images, batch_size=4, workers=2))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(outputs) == 4
    for results in outputs.values():
        assert len(results) == len(serial)
        for ours, theirs in zip(results, serial, strict=True):
            assert type(ours) is type(theirs)
            if isinstance(theirs, Classification):
                assert ours.source == theirs.source and ours.label == theirs.label
                np.testing.assert_allclose(ours.logits, theirs.logits, rtol=1e-5, atol=1e-5)
            else:
                assert (ours.subject, ours.reason) == (theirs.subject, theirs.reason)


def test_classify_batch_explains(scenecam, sample_images: list[Path]):
    results = list(scenecam.classify_batch(sample_images[:3], explain=True, batch_size=2))
    expected = scenecam.explain(sample_images[:3])
    for ours, theirs in zip(results, expected, strict=True):
        np.testing.assert_allclose(ours.cam, theirs.cam, rtol=1e-4, atol=1e-6)
        assert ours.overlay.shape == theirs.overlay.shape
    options = scenecam.explain_options(target="sea")
    (forced,) = scenecam.classify_batch(sample_images[:1], explain=options)
    assert forced.target_label == "sea"


def test_stream_pulls_a_bounded_window(scenecam):
    pulled = 0

    def endless() -> Iterator[np.ndarray]:
        nonlocal pulled
        while True:
            pulled += 1
            yield np.full((32, 32, 3), pulled % 255, np.uint8)

    stream = classify_stream(scenecam, endless(), batch_size=4, prefetch=6, workers=2)
    first = [next(stream) for _ in range(9)]
    assert all(isinstance(r, Classification) for r in first)
    assert pulled <= 9 + 4 + 6  # what was yielded, one batch, and the prefetch window
    stream.close()
    with pytest.raises(ValueError, match="batch_size"):
        scenecam.classify_batch([], batch_size=0)


def test_stream_window_is_bounded_in_bytes(scenecam):
    """Explaining keeps each image at its own size: 64 prefetched 12 MB pictures would hold
    768 MB. The window is cut by bytes, and a batch comes out shorter rather than exceed it."""
    pulled = 0
    side = 2000  # 12 MB per RGB picture

    def big() -> Iterator[np.ndarray]:
        nonlocal pulled
        while True:
            pulled += 1
            yield np.full((side, side, 3), pulled % 255, np.uint8)

    window = 40 * 1024 * 1024
    batches = classify_batches(
        scenecam,
        big(),
        batch_size=32,
        explain=scenecam.explain_options(),
        workers=2,
        window_bytes=window,
    )
    first = next(batches)
    per_image = side * side * 3
    assert 1 <= len(first) <= window // per_image + 1
    assert pulled <= len(first) + window // per_image + 2 + 2  # + one per decoding thread
    batches.close()
    with pytest.raises(ValueError, match="window_bytes"):
        classify_batches(scenecam, [], window_bytes=0)


NASTY_NAMES = ["cr\rname.jpg", "lf\nname.jpg", 'quote"d, comma.jpg', 'crlf\r\n,"x".jpg']


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_results_file_round_trips_any_name(tmp_path: Path, fmt):
    path = tmp_path / f"r.{fmt}"
    results = ResultsFile(path, fmt, ["a", "b"], {"model": "m"})
    assert results.scan().done == set()
    results.open()
    results.append([{"path": name, "error": 'bad, "quoted"\r\nreason'} for name in NASTY_NAMES])
    results.append(
        [
            {
                "path": "ok.jpg",
                "label": "a",
                "index": 0,
                "confidence": 0.75,
                "probabilities": {"a": 0.75, "b": 0.25},
            }
        ]
    )
    results.close()
    prior = results.scan()  # a rerun parses every line back, whatever the names hold
    assert prior.failed == {os.path.realpath(n) for n in NASTY_NAMES} and not prior.dropped_torn
    assert prior.done == {os.path.realpath("ok.jpg")}
    results.open()  # reopening writes no second header
    results.close()
    if fmt == "csv":
        rows = read_csv(path)
        assert [r["path"] for r in rows] == [*NASTY_NAMES, "ok.jpg"]
        assert rows[0]["error"] == 'bad, "quoted"\r\nreason'
        assert float(rows[-1]["p_a"]) == 0.75
    else:
        assert [r["path"] for r in read_jsonl(path)] == [*NASTY_NAMES, "ok.jpg"]


# -- Ray ------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not HAS_RAY, reason="needs Ray Data: pip install '.[ray]'")
def test_ray_predictor_equals_batch(tmp_path: Path, sample_images: list[Path]):
    import pyarrow.parquet as pq
    import ray

    from scenecam_edge.integrations.ray import classify_dataset

    folder = tmp_path / "photos"
    make_images(folder, 10, size=120)
    for photo in sample_images[:6]:
        shutil.copy(photo, folder / photo.name)
    out = tmp_path / "batch.jsonl"
    assert run_batch(str(folder), "--out", str(out)).exit_code == 0
    expected = {Path(r["path"]).name: r for r in read_jsonl(out)}

    with local_ray():
        images = ray.data.read_images(str(folder), include_paths=True, mode="RGB")
        results = classify_dataset(images, concurrency=2, num_cpus=0.5, batch_size=4)
        results.write_parquet(str(tmp_path / "parquet"))
    table = pq.read_table(tmp_path / "parquet").to_pylist()
    assert sorted(Path(r["path"]).name for r in table) == sorted(expected)
    names = list(next(iter(expected.values()))["probabilities"])
    for row in table:
        record = expected[Path(row["path"]).name]
        assert row["error"] == "" and row["label"] == record["label"]
        assert row["index"] == record["index"]
        probs = [row[f"p_{n}"] for n in names]  # one named column per class
        np.testing.assert_allclose(
            probs, [record["probabilities"][n] for n in names], atol=2e-6, rtol=0
        )


def test_map_flags_without_heatmaps_are_refused(tmp_path: Path, sample_images: list[Path]):
    """batch --method/--alpha/--layer/--target without --heatmaps would be ignored: refused in
    one line, exit 2, before anything is written."""
    out = tmp_path / "r.jsonl"
    for flags in (
        ["--method", "gradcam++", "--alpha", "0.3", "--layer", "stage3_block2_out"],
        ["--target", "forest"],
        ["--max-channels", "8"],
    ):
        result = run_batch(str(sample_images[0]), "--out", str(out), *flags)
        assert result.exit_code == 2, (flags, result.output)
        assert result.stderr.count("\n") == 1
        assert "only used for heatmaps, and batch makes heatmaps only with --heatmaps DIR" in (
            result.stderr
        )
        assert result.stderr.startswith(f"error: {flags[0]}")
    assert not out.exists()
    used = run_batch(
        str(sample_images[0]), "--out", str(out), "--method", "gradcam++", "--max-channels",
        "8", "--heatmaps", str(tmp_path / "maps"),
    )  # fmt: skip
    assert used.exit_code == 0, used.output
    assert (
        json.loads((tmp_path / "r.jsonl.meta.json").read_text())["options"]["explain"][
            "max_channels"
        ]
        == 8
    )


def test_an_empty_folder_is_nothing_to_do(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    result = run_batch(str(tmp_path / "empty"), "--out", str(tmp_path / "e.jsonl"))
    assert result.exit_code == 1  # the folder itself is a failed input
    assert result.stderr.splitlines()[-1] == (
        f"summary: nothing to do: no image in the inputs (1 input(s) failed) -> {tmp_path / 'e.jsonl'}"
    )
    assert "images/s" not in result.stderr


def test_progress_counts_every_batch_not_the_last(monkeypatch):
    """The bar's count is the running total of records (and skipped inputs), never the size
    of the last batch: it never goes backwards and ends at the total."""
    import tqdm as tqdm_module

    from scenecam_edge.batch import JobCounts

    batch_cli = importlib.import_module("scenecam_edge.cli.batch")  # the module, not the command

    counts = []

    class FakeBar:
        disable = False
        n = 0

        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, k):
            self.n += k
            counts.append(self.n)

        def set_postfix(self, **kwargs):
            pass

        def write(self, *args, **kwargs):
            pass

    class FakeJob:
        counts = JobCounts(skipped=2)

        def run(self, sources):
            for size in (4, 4, 1):
                yield [{"path": f"{i}.jpg"} for i in range(size)]

    monkeypatch.setattr(tqdm_module, "tqdm", FakeBar)
    batch_cli._drive(FakeJob(), [], total=11)
    assert counts == [6, 10, 11]
