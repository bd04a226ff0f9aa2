"""Live sources against real OpenCV captures: a video file through the live reader, and an
MJPEG-over-HTTP stream from a stand-in IP camera on 127.0.0.1 (tests/mjpeg_camera.py) that
OpenCV's FFmpeg backend reads. The stream drops and comes back; a server says nothing.
No timing asserts: waits have generous deadlines and the asserts are on frames and counts."""

from __future__ import annotations

import pytest

pytest.importorskip("cv2", reason="the camera needs OpenCV: pip install '.[camera]'")

import json
import logging
import threading
from pathlib import Path

import cv2
import numpy as np
from click.testing import CliRunner

from scenecam_edge.camera import (
    FrameReport,
    LiveSource,
    Reconnect,
    open_capture,
    open_source,
    parse_source,
    run_camera,
)
from scenecam_edge.cli import cli

from .mjpeg_camera import MjpegCamera, read_stamp, silent_server
from .test_camera import read_video, wait_until, write_video


def stream_capture(url: str) -> cv2.VideoCapture:
    capture = open_capture(parse_source(url), timeout=10)
    assert capture.isOpened()
    return capture


def test_a_video_file_through_the_live_reader(tmp_path: Path):
    """The reproduction of issue 15: OpenCV refused the reader's empty buffer, 0 frames."""
    video = write_video(tmp_path / "clip.avi", 20, (320, 240))
    decoded = read_video(video)
    source = LiveSource("clip", cv2.VideoCapture(str(video)))
    frames = []
    try:
        while (frame := source.read(timeout=30)) is not None:
            frames.append((frame.index, frame.image.copy()))
    finally:
        source.close()
    assert frames, source.error
    assert source.error == "the source stopped delivering frames"  # the file ended
    assert source.captured == len(decoded) == 20
    indices = [i for i, _ in frames]
    assert indices == sorted(set(indices)) and indices[-1] == 19
    assert source.dropped == 20 - len(frames)
    for index, image in frames:  # each frame is the one with its number, whole
        assert np.array_equal(image, decoded[index])


def test_a_stream_is_read_latest_frame_first_and_frames_are_not_overwritten():
    # limit: the stand-in sends 40 frames as fast as they are read, then ends the stream.
    with MjpegCamera(fps=None, limit=40) as camera:
        source = LiveSource("stand-in", stream_capture(camera.url))
        try:
            wait_until(lambda: source.captured == 40)
            frame = source.read(timeout=30)
            assert frame is not None and frame.index == 39 and source.dropped == 39
            assert read_stamp(frame.image) == 39  # the newest frame, decoded whole
            assert frame.image.shape == (480, 640, 3)
            assert source.read(timeout=30) is None
            assert source.error == "the source stopped delivering frames"
        finally:
            source.close()

    with MjpegCamera(fps=None) as camera:  # endless, as fast as it is read
        source = LiveSource("stand-in", stream_capture(camera.url))
        try:
            first = source.read(timeout=30)
            assert first is not None and read_stamp(first.image) == first.index
            held = first.image
            wait_until(lambda: source.captured > first.index + 10)
            assert read_stamp(held) == first.index  # never written while handed out
            second = source.read(timeout=30)
            assert second is not None and second.index >= first.index + 10
            assert read_stamp(second.image) == second.index
            assert source.dropped == second.index - 1  # every frame between was skipped
        finally:
            source.close()


def test_the_stream_drops_and_comes_back(caplog: pytest.LogCaptureFixture, scenecam):
    # After 15 frames the stand-in closes its connections and stops listening for 1 s.
    stamps: list[int] = []
    stop = threading.Event()

    def keep(report: FrameReport) -> None:
        stamps.append(read_stamp(report.image))
        if stamps[-1] >= 25:
            stop.set()

    with MjpegCamera(fps=30, outage=(15, 1.0)) as camera:
        policy = Reconnect(attempts=8, first=0.25, cap=1.0)
        caplog.set_level(logging.WARNING, logger="scenecam_edge.camera")
        with open_source(camera.url, reconnect=policy, timeout=5) as source:
            assert source.live
            summary = run_camera(scenecam, source, stop=stop, on_frame=keep)
        assert camera.outages == 1 and camera.connections == 2
    assert summary.ended == "stopped" and summary.reconnects == 1
    assert stamps == sorted(stamps) and stamps[-1] >= 25 and min(stamps) < 15
    messages = [r.getMessage() for r in caplog.records]
    assert any("no frames; reconnecting in" in m for m in messages)
    assert f"{camera.url}: reconnected" in messages


def test_a_stream_that_stays_down_ends_the_loop_with_a_reason(scenecam):
    with MjpegCamera(fps=30, outage=(5, 600)) as camera:
        policy = Reconnect(attempts=2, first=0.05, cap=0.1)
        with open_source(camera.url, reconnect=policy, timeout=5) as source:
            summary = run_camera(scenecam, source)
    assert summary.ended == "error" and 1 <= summary.frames <= 5
    assert summary.error == "the stream dropped and 2 reconnect attempts failed"


def test_a_server_that_accepts_and_says_nothing_is_a_one_line_error(tmp_path: Path):
    sock = silent_server()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/stream.mjpg"
    lines = tmp_path / "frames.jsonl"
    try:
        result = CliRunner().invoke(
            cli,
            ["camera", "--source", url, "--headless", "--jsonl", str(lines), "--timeout", "1"],
        )
    finally:
        sock.close()
    assert result.exit_code == 3, result.output
    assert result.stderr == (
        f"error: {url}: no answer within 1 s (the server accepted but sent nothing)\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_a_refused_stream_is_a_one_line_error(tmp_path: Path):
    sock = silent_server()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/stream.mjpg"
    sock.close()  # nothing listens there now
    result = CliRunner().invoke(cli, ["camera", "--source", url, "--headless", "--jsonl", "-"])
    assert result.exit_code == 3
    assert result.stderr == (
        f"error: {url}: cannot open the stream (unreachable, refused or not a video stream)\n"
    )


def test_the_cli_reads_a_stream_and_writes_its_frames(tmp_path: Path, scenecam):
    out, lines = tmp_path / "annotated.avi", tmp_path / "frames.jsonl"
    with MjpegCamera(fps=30) as camera:
        result = CliRunner().invoke(
            cli,
            ["camera", "--source", camera.url, "--headless", "--out", str(out),
             "--jsonl", str(lines), "--max-frames", "12", "--threads", "1"],
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "12 frames" in result.stderr and "ended: max-frames" in result.stderr
    records = [json.loads(line) for line in lines.read_text().splitlines()]
    assert [r["frame"] for r in records] == list(range(12))
    written = read_video(out)
    assert len(written) == 12
    # Each written frame is the stand-in's frame it says it is, classified as the runtime does.
    for record, image in zip(records, written, strict=True):
        assert read_stamp(image) == record["source_frame"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["annotated.avi", "frames.jsonl"]
