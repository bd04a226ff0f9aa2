"""The camera's outputs on real failing file systems, and damaged input videos.

A full disk is a small tmpfs (needs root and ``mount``; skipped otherwise) and, everywhere,
the process's file-size limit (RLIMIT_FSIZE, set in a subprocess): both make OpenCV's and
Python's writes really fail. A read-only folder is a read-only tmpfs (as root, where
permissions do not stop writes) or a chmod 0555 folder (as another user)."""

from __future__ import annotations

import pytest

pytest.importorskip("cv2", reason="the camera needs OpenCV: pip install '.[camera]'")

import json
import os
import resource
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from click.testing import CliRunner

from scenecam_edge.cli import cli

from .test_camera import read_video, write_video

COMMAND = [sys.executable, "-c", "from scenecam_edge.cli import main; main()", "camera"]


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(tmp_path_factory.mktemp("clip") / "clip.mp4", 30)


def mount_tmpfs(where: Path, options: str) -> Iterator[Path]:
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()})")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB file system: a few 640 x 480 MJPG frames fill it."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    yield from mount_tmpfs(tmp_path / "small", "size=1m")


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir(mode=0o555)
        yield folder
        folder.chmod(0o755)
        return
    yield from mount_tmpfs(tmp_path / "read-only", "ro,size=64k")


def camera(*args: str):
    return CliRunner().invoke(cli, ["camera", "--threads", "1", *args])


def one_error_line(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    return errors[0]


def run_limited(args: list[str], limit: int) -> subprocess.CompletedProcess[str]:
    """The camera command in a subprocess that may not write files over ``limit`` bytes."""

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run(
        [*COMMAND, "--threads", "1", *args],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=limit_file_size,
    )


# -- outputs that cannot be created: refused before the first frame --------------------------


def test_a_read_only_folder(clip: Path, read_only: Path):
    out = read_only / "annotated.mp4"
    result = camera("--source", str(clip), "--headless", "--out", str(out))
    assert result.exit_code == 2
    line = one_error_line(result.stderr)
    assert line.startswith(f"error: {out}: cannot be created (")
    assert "read-only file system" in line or "permission denied" in line
    assert list(read_only.iterdir()) == []


def test_a_parent_that_is_a_file(clip: Path, tmp_path: Path):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file, not a folder")
    lines = blocker / "frames.jsonl"
    result = camera("--source", str(clip), "--headless", "--jsonl", str(lines))
    assert result.exit_code == 2
    assert one_error_line(result.stderr) == f"error: {lines}: {blocker} is a file, not a folder"
    assert blocker.read_text() == "a file, not a folder"


def test_a_symlink_at_the_output_path_is_not_written_through(clip: Path, tmp_path: Path):
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    for flag, name in (("--jsonl", "frames.jsonl"), ("--out", "annotated.mp4")):
        link = tmp_path / name
        link.symlink_to(precious)
        result = camera("--source", str(clip), "--headless", flag, str(link))
        assert result.exit_code == 2
        line = one_error_line(result.stderr)
        assert line == f"error: {link}: is a symbolic link; refusing to write through it"
        assert precious.read_text() == "keep me" and link.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "annotated.mp4",
        "frames.jsonl",
        "precious.txt",
    ]


# -- writes that fail during the run: the loop stops, nothing half-written under a final name --


def test_a_full_disk_stops_the_loop(clip: Path, small_disk: Path):
    out, lines = small_disk / "annotated.avi", small_disk / "frames.jsonl"
    result = camera("--source", str(clip), "--headless", "--out", str(out), "--jsonl", str(lines))
    assert result.exit_code == 1, result.output
    line = one_error_line(result.stderr)
    assert line.startswith(f"error: {out}: no space left on device (")
    assert line.endswith(f"the lines so far are in {lines}.partial")
    stopped = int(line.split("stopped after ")[1].split(" frames")[0])
    assert 0 < stopped < 30  # 30 frames would need several MiB
    # The video's temporary file is gone (the space is free again); the lines are kept
    # under a name that says they are partial, each one whole.
    assert sorted(p.name for p in small_disk.iterdir()) == ["frames.jsonl.partial"]
    records = [
        json.loads(x) for x in (small_disk / "frames.jsonl.partial").read_text().splitlines()
    ]
    assert [r["frame"] for r in records] == list(range(stopped))


def test_a_full_disk_under_the_json_lines(clip: Path, small_disk: Path):
    filler = small_disk / "filler"
    with filler.open("wb") as fh:  # leave about 6 KiB: a few dozen lines fit, not 30
        fh.write(b"\0" * (1024 * 1024 - 6 * 1024))
    lines = small_disk / "frames.jsonl"
    result = camera("--source", str(clip), "--headless", "--jsonl", str(lines))
    assert result.exit_code == 1, result.output
    line = one_error_line(result.stderr)
    assert line.startswith(f"error: {lines}: no space left on device; stopped after ")
    assert not lines.exists() and (small_disk / "frames.jsonl.partial").exists()


def test_the_file_size_limit_stops_the_video(clip: Path, tmp_path: Path):
    out = tmp_path / "annotated.mp4"
    done = run_limited(["--source", str(clip), "--headless", "--out", str(out)], 200_000)
    assert done.returncode == 1, done.stderr
    line = one_error_line(done.stderr)
    assert line.startswith(f"error: {out}: file size limit reached (200000 bytes); stopped after")
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_the_file_size_limit_under_the_json_lines(clip: Path, tmp_path: Path):
    lines = tmp_path / "frames.jsonl"
    done = run_limited(["--source", str(clip), "--headless", "--jsonl", str(lines)], 3000)
    assert done.returncode == 1, done.stderr
    line = one_error_line(done.stderr)
    assert line.startswith(f"error: {lines}: file too large; stopped after ")
    assert not lines.exists()
    partial = (tmp_path / "frames.jsonl.partial").read_text()
    assert len(partial) == 3000  # up to the limit; the last line is cut there


# -- damaged input videos ------------------------------------------------------------------------


def avi(path: Path, frames: int = 40) -> bytes:
    write_video(path, frames, (320, 240), fourcc="MJPG")
    return path.read_bytes()


@pytest.mark.parametrize(
    ("damage", "read"),
    [("truncated", range(10, 30)), ("zeroed", range(30, 40))],
)
def test_a_damaged_video_says_how_many_frames_were_read(tmp_path: Path, damage: str, read: range):
    source = tmp_path / "damaged.avi"
    data = bytearray(avi(source))
    middle = len(data) // 2
    if damage == "truncated":
        del data[middle:]
    else:  # bytes zeroed in the middle: frames there do not decode
        data[middle - 20_000 : middle + 20_000] = bytes(40_000)
    source.write_bytes(bytes(data))
    lines, out = tmp_path / "frames.jsonl", tmp_path / "annotated.avi"
    result = camera("--source", str(source), "--headless", "--jsonl", str(lines), "--out", str(out))
    assert result.exit_code == 1, result.output
    line = one_error_line(result.stderr)
    n = int(line.split("ended early: ")[1].split(" of ")[0])
    assert n in read
    assert line == (
        f"error: {source}: the video ended early: {n} of 40 frames read "
        "(the file is damaged or truncated)"
    )
    # What was read is complete under the final names: the input failed, not the outputs.
    assert len(lines.read_text().splitlines()) == n == len(read_video(out))


def test_an_intact_video_is_not_called_damaged(tmp_path: Path):
    source = tmp_path / "intact.avi"
    avi(source)
    result = camera("--source", str(source), "--headless", "--jsonl", "-")
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 40
