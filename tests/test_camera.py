"""The camera loop: headless runs over a generated video, the latest-frame reader, reconnects,
keys, and clean endings. No window, no timing asserts."""

from __future__ import annotations

import pytest

cv2 = pytest.importorskip("cv2", reason="the camera needs OpenCV: pip install '.[camera]'")

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from scenecam_edge import cam as cam_module
from scenecam_edge import visual
from scenecam_edge.cam import METHODS, CamMethod
from scenecam_edge.camera import (
    KEY_HEATMAP,
    KEY_METHOD,
    KEY_QUIT,
    KEY_SNAPSHOT,
    CameraSettings,
    FrameReport,
    LiveSource,
    Reconnect,
    open_source,
    parse_source,
    run_camera,
)
from scenecam_edge.camera import loop as camera_loop
from scenecam_edge.cli import cli
from scenecam_edge.errors import SourceError

from .conftest import SAMPLES
from .mjpeg_camera import MjpegCamera

FRAMES, WIDTH, HEIGHT, FPS = 30, 640, 480, 15.0
#: Rows clear of the label bar at the top and the note bar at the bottom of a 640 x 480 frame.
MIDDLE = slice(60, 420)


def write_video(
    path: Path, frames: int, size: tuple[int, int] = (WIDTH, HEIGHT), fourcc: str = "mp4v"
) -> Path:
    """Sample photos panning sideways, a new photo every 6 frames (mp4v or MJPG, which this
    OpenCV writes and reads back)."""
    photos = [cv2.resize(cv2.imread(str(p)), size) for p in sorted(SAMPLES.glob("*.jpg"))]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*fourcc), FPS, size)
    assert writer.isOpened()
    for i in range(frames):
        writer.write(np.roll(photos[(i // 6) % len(photos)], 12 * i, axis=1))
    writer.release()
    return path


def read_video(path: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(tmp_path_factory.mktemp("video") / "input.mp4", FRAMES)


@pytest.fixture(scope="module")
def decoded(video: Path) -> list[np.ndarray]:
    """The input's frames as OpenCV decodes them (BGR), the reference for every check."""
    frames = read_video(video)
    assert len(frames) == FRAMES and frames[0].shape == (HEIGHT, WIDTH, 3)
    return frames


def wait_until(condition: Callable[[], bool], seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def rgb(bgr: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def invoke(*args: str):
    return CliRunner().invoke(cli, ["camera", *args], catch_exceptions=False)


# -- headless runs over a video file -------------------------------------------------------


def test_headless_cli_writes_every_frame_and_the_runtimes_labels(
    tmp_path: Path, video: Path, decoded: list[np.ndarray], scenecam
):
    out, lines = tmp_path / "annotated.mp4", tmp_path / "frames.jsonl"
    result = invoke(
        "--source", str(video), "--headless", "--out", str(out), "--jsonl", str(lines),
        "--threads", "1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "30 frames" in result.stderr and "ended: end" in result.stderr

    written = read_video(out)
    assert len(written) == FRAMES
    assert all(f.shape == (HEIGHT, WIDTH, 3) for f in written)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left

    records = read_jsonl(lines)
    expected = scenecam.classify([rgb(f) for f in decoded])
    assert [r["frame"] for r in records] == list(range(FRAMES))
    assert [r["source_frame"] for r in records] == list(range(FRAMES))
    assert [r["label"] for r in records] == [e.label for e in expected]
    assert len({r["label"] for r in records}) > 1  # the video really changes scene
    for record, want in zip(records, expected, strict=True):
        assert record["confidence"] == pytest.approx(want.confidence, abs=1e-5)
        assert record["probabilities"] == pytest.approx(want.probabilities, abs=1e-5)
        assert record["heatmap"] == "computed" and record["method"] == "gradcam"
    assert [r["time"] for r in records] == pytest.approx([i / FPS for i in range(FRAMES)], abs=2e-3)


def test_every_5_still_writes_every_frame(tmp_path: Path, video: Path):
    out, lines = tmp_path / "annotated.avi", tmp_path / "frames.jsonl"
    result = invoke(
        "--source", str(video), "--headless", "--out", str(out), "--jsonl", str(lines),
        "--every", "5", "--threads", "1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert len(read_video(out)) == FRAMES
    statuses = [r["heatmap"] for r in read_jsonl(lines)]
    assert statuses == ["computed" if i % 5 == 0 else "reused" for i in range(FRAMES)]
    assert "6 heatmaps" in result.stderr


def test_reused_heatmap_is_the_last_map_blended_over_the_new_frame(
    tmp_path: Path, video: Path, decoded: list[np.ndarray], scenecam
):
    shown: list[FrameReport] = []
    images: list[np.ndarray] = []

    def keep(report: FrameReport) -> None:
        shown.append(report)
        images.append(report.image.copy())

    settings = CameraSettings(every=5, max_frames=7, explain=scenecam.explain_options(alpha=0.5))
    with open_source(str(video)) as source:
        summary = run_camera(scenecam, source, settings, on_frame=keep)
    assert summary.frames == 7 and summary.heatmaps == 2 and summary.ended == "max-frames"
    options = scenecam.explain_options(alpha=0.5)
    first = scenecam.predict([rgb(decoded[0])], ["f0"], explain=options)[0]
    assert np.array_equal(images[0][MIDDLE], cv2.cvtColor(first.overlay, cv2.COLOR_RGB2BGR)[MIDDLE])
    for i in (1, 3, 4):  # the map of frame 0 over frames 1..4
        blended = visual.overlay(rgb(decoded[i]), first.heatmap, 0.5)
        expected = cv2.cvtColor(blended, cv2.COLOR_RGB2BGR)[MIDDLE].astype(int)
        # The loop blends with OpenCV's addWeighted, visual.overlay with Pillow's composite,
        # which takes alpha to the nearest 1/255: at 0.5 they may differ by one level.
        assert np.abs(images[i][MIDDLE].astype(int) - expected).max() <= 1
    fifth = scenecam.predict([rgb(decoded[5])], ["f5"], explain=options)[0]
    assert np.array_equal(images[5][MIDDLE], cv2.cvtColor(fifth.overlay, cv2.COLOR_RGB2BGR)[MIDDLE])
    # Classification still runs on every frame.
    labels = [e.label for e in scenecam.classify([rgb(f) for f in decoded[:7]])]
    assert [r.result.label for r in shown] == labels


def test_max_frames_and_jsonl_to_stdout(video: Path):
    result = invoke("--source", str(video), "--headless", "--jsonl", "-", "--max-frames", "4")
    assert result.exit_code == 0
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["frame"] for r in records] == [0, 1, 2, 3]
    assert "ended: max-frames" in result.stderr


# -- ending cleanly ----------------------------------------------------------------------------


def test_stop_flag_leaves_complete_outputs(tmp_path: Path, video: Path, scenecam):
    stop = threading.Event()
    out, lines = tmp_path / "annotated.mp4", tmp_path / "frames.jsonl"

    def stop_after_seven(report: FrameReport) -> None:
        if report.number == 6:
            stop.set()  # what the CLI's SIGTERM and Ctrl-C handlers do

    with open_source(str(video)) as source:
        summary = run_camera(
            scenecam,
            source,
            CameraSettings(out=out, jsonl=lines),
            stop=stop,
            on_frame=stop_after_seven,
        )
    assert summary.ended == "stopped" and summary.frames == 7 and summary.out == out
    assert [r["frame"] for r in read_jsonl(lines)] == list(range(7))
    assert len(read_video(out)) == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["annotated.mp4", "frames.jsonl"]


def test_sigterm_ends_the_command_cleanly(tmp_path: Path):
    source = write_video(tmp_path / "long.mp4", 300, (320, 240))
    out, lines = tmp_path / "annotated.mp4", tmp_path / "frames.jsonl"
    command = [sys.executable, "-c", "from scenecam_edge.cli import main; main()", "camera"]
    args = ["--source", str(source), "--headless", "--out", str(out), "--jsonl", str(lines)]
    proc = subprocess.Popen(command + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            # The JSON lines go to a temporary file beside frames.jsonl until the loop ends.
            if any(p.read_text() for p in tmp_path.glob(".frames.*.jsonl")):
                break  # the loop is running, so the handlers are in place
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, stderr  # 143, as every command
    assert b"Traceback" not in stderr
    records = read_jsonl(lines)  # every line parses
    assert [r["frame"] for r in records] == list(range(len(records)))
    assert len(read_video(out)) == len(records) > 0


# -- errors --------------------------------------------------------------------------------------


def test_a_source_that_cannot_be_opened_is_a_one_line_error(tmp_path: Path):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    cases = {
        str(tmp_path / "missing.mp4"): "no such file",
        str(text): "cannot be opened as a video",
        str(tmp_path): "is a directory",
    }
    for source, reason in cases.items():
        lines = tmp_path / "frames.jsonl"
        result = CliRunner().invoke(
            cli, ["camera", "--source", source, "--headless", "--jsonl", str(lines)]
        )
        assert result.exit_code == 3, source
        assert result.stderr.startswith(f"error: {source}: {reason}"), result.stderr
        assert result.stderr.count("\n") == 1
        assert not lines.exists()


def test_usage_errors(tmp_path: Path, video: Path):
    for args, message in [
        (["--headless"], "--headless needs --out, --jsonl or --serve"),
        (["--headless", "--serve", "web:cam"], "--serve: 'web:cam' is not [HOST:]PORT"),
        (["--headless", "--serve", "70000"], "--serve: port 70000 is out of range"),
        (["--headless", "--out", str(tmp_path / "a.gif")], "unknown video suffix"),
        (["--headless", "--out", str(video)], "would overwrite the source"),
        (["--headless", "--every", "0", "--jsonl", "x"], "--every"),
    ]:
        result = CliRunner().invoke(cli, ["camera", "--source", str(video), *args])
        assert result.exit_code == 2, args
        assert message in result.stderr, result.stderr


def test_parse_source():
    assert parse_source("0").kind == "camera" and parse_source("0").location == 0
    assert parse_source("/dev/video2").kind == "camera"
    assert parse_source("rtsp://cam.local/live").kind == "stream"
    assert parse_source("http://10.0.0.2:8080/video").kind == "stream"
    assert parse_source("clips/a.mp4").kind == "file"
    assert parse_source("file:///tmp/a.mp4").location == "/tmp/a.mp4"
    secret = parse_source("rtsp://admin:hunter2@10.0.0.9:554/stream1")
    assert secret.location == "rtsp://admin:hunter2@10.0.0.9:554/stream1"
    assert secret.name == "rtsp://admin:***@10.0.0.9:554/stream1"


# -- the latest-frame reader (the real-capture tests are in test_camera_live.py) -------------


def test_backoff_doubles_up_to_the_cap():
    policy = Reconnect(first=0.5, cap=8.0)
    assert [policy.delay(n) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]


def test_closing_stops_an_endless_reconnect():
    with MjpegCamera(fps=30, outage=(2, 600)) as camera:  # down for good after 2 frames
        source = open_source(camera.url, reconnect=Reconnect(attempts=None, first=30.0))
        assert isinstance(source, LiveSource)
        wait_until(lambda: camera.outages == 1 and source.captured == 2)
        source.close()  # while it waits (30 s) to reconnect
    assert not [t for t in threading.enumerate() if t.name == f"capture {camera.url}"]
    assert source.error is None


class NoCamera:
    """There is no camera on a test machine: what OpenCV returns for an index it cannot open
    (the one fake capture left, for the camera-index path)."""

    def isOpened(self) -> bool:
        return False

    def get(self, propId: int) -> float:
        return 0.0

    def release(self) -> None:
        pass

    def read(self, image: np.ndarray | None = None) -> tuple[bool, np.ndarray | None]:
        return False, None


def test_camera_that_cannot_be_opened():
    with pytest.raises(SourceError, match="cannot open camera 7"):
        open_source("7", opener=lambda spec: NoCamera())


# -- the window's keys, with a fake display --------------------------------------------------------


class FakeDisplay:
    """Stands in for the window: key presses cannot be made in a test without a screen."""

    def __init__(self, keys: list[int]) -> None:
        self.keys = keys
        self.shown: list[np.ndarray] = []
        self.closed = False

    def show(self, image: np.ndarray) -> int:
        self.shown.append(image.copy())
        return self.keys.pop(0) if self.keys else -1

    def poll(self) -> int:
        return -1

    def close(self) -> None:
        self.closed = True


def test_keys_toggle_cycle_snapshot_and_quit(
    tmp_path: Path, video: Path, decoded: list[np.ndarray], scenecam, monkeypatch
):
    corner = CamMethod("corner", "a test method: the top-left cell", _corner_map)
    methods = {"gradcam": METHODS["gradcam"], "corner": corner}
    monkeypatch.setattr(cam_module, "METHODS", methods)
    monkeypatch.setattr(camera_loop, "METHODS", methods)

    keys = [-1, KEY_HEATMAP, -1, KEY_HEATMAP, KEY_METHOD, KEY_SNAPSHOT, -1, KEY_QUIT]
    display = FakeDisplay(keys)
    lines = tmp_path / "frames.jsonl"
    settings = CameraSettings(jsonl=lines, snapshot_dir=tmp_path / "shots")
    with open_source(str(video)) as source:
        summary = run_camera(scenecam, source, settings, display=display)

    assert summary.ended == "quit" and summary.frames == 8 and display.closed
    records = read_jsonl(lines)
    assert [r["heatmap"] for r in records] == ["computed"] * 2 + ["off"] * 2 + ["computed"] * 4
    assert [r["method"] for r in records] == [
        *["gradcam", "gradcam", None, None, "gradcam"],
        *["corner", "corner", "corner"],
    ]
    assert summary.heatmaps == 6
    # Heatmap off: the frame itself under the text.
    assert np.array_equal(display.shown[2][MIDDLE], decoded[2][MIDDLE])
    # The snapshot is the annotated frame 5, as shown.
    (snapshot,) = summary.snapshots
    assert snapshot.parent == tmp_path / "shots" and snapshot.suffix == ".png"
    assert np.array_equal(cv2.imread(str(snapshot)), display.shown[5])
    assert not [p for p in snapshot.parent.iterdir() if p.name.startswith(".")]


def _corner_map(x) -> np.ndarray:
    cam = np.zeros(x.features.shape[:3], np.float32)
    cam[:, 0, 0] = 1.0
    return cam


class PollingDisplay(FakeDisplay):
    def __init__(self, poll_key: int) -> None:
        super().__init__([])
        self.poll_key = poll_key
        self.polls = 0

    def poll(self) -> int:
        self.polls += 1
        return self.poll_key


def test_window_keys_work_while_a_live_source_has_no_frame(scenecam):
    camera = MjpegCamera(fps=0.01)  # one frame now, the next in 100 s
    source = open_source(camera.url, timeout=200)
    try:
        display = PollingDisplay(KEY_QUIT)
        summary = run_camera(scenecam, source, display=display)
    finally:
        camera.close()  # first: the capture thread is waiting for the next frame
        source.close()
    assert summary.ended == "quit" and summary.frames == 1 and display.polls >= 1


def test_the_help_names_every_video_suffix():
    from scenecam_edge.camera import VIDEO_CODECS
    from scenecam_edge.cli.camera import VIDEO_SUFFIXES

    assert tuple(VIDEO_CODECS) == VIDEO_SUFFIXES
    assert all(s in invoke("--help").stdout for s in VIDEO_SUFFIXES)


BLOCK_CV2 = "import sys; sys.modules['cv2'] = None; "


def test_without_opencv_the_command_names_the_extra():
    runtime = subprocess.run(
        [sys.executable, "-c", BLOCK_CV2 + "import scenecam_edge.cli"], capture_output=True
    )
    if runtime.returncode != 0:
        pytest.skip("the still-image runtime itself imports OpenCV in this checkout")
    done = subprocess.run(
        [sys.executable, "-c", BLOCK_CV2 + "from scenecam_edge.cli import main; main()",
         "camera", "--headless", "--jsonl", "-"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 3
    assert done.stderr == (
        "error: the camera command needs OpenCV; install it with: pip install "
        "'scenecam-edge[camera]' (or 'scenecam-edge[camera-headless]' on a machine without a "
        "display)\n"
    )


def test_the_loop_explains_the_layer_asked_for(
    video: Path, decoded: list[np.ndarray], scenecam, tmp_path: Path
):
    """--layer in the camera loop: each frame's overlay is the one explain gives at that
    layer (the default model's 10x10 stage-3 maps), not the default layer's."""
    layer = scenecam.layers[-1].name
    assert layer != scenecam.layers[0].name, "the default model offers a second layer"
    images: list[np.ndarray] = []
    settings = CameraSettings(max_frames=2, explain=scenecam.explain_options(layer=layer))
    with open_source(str(video)) as source:
        run_camera(scenecam, source, settings, on_frame=lambda r: images.append(r.image.copy()))
    options = scenecam.explain_options(layer=layer)
    ours = scenecam.predict([rgb(decoded[0])], ["f0"], explain=options)[0]
    default = scenecam.predict([rgb(decoded[0])], ["f0"], explain=scenecam.explain_options())[0]
    assert ours.cam.shape == (10, 10)
    bgr = cv2.cvtColor(ours.overlay, cv2.COLOR_RGB2BGR)[MIDDLE]
    assert np.array_equal(images[0][MIDDLE], bgr)
    assert not np.array_equal(ours.overlay, default.overlay)
    out = str(tmp_path / "a.mp4")
    result = invoke("--source", str(video), "--headless", "--out", out, "--layer", "nope")
    assert result.exit_code == 2
    assert "--layer: this model does not explain layer 'nope'" in result.stderr


def test_json_lines_alone_make_no_maps_and_refuse_map_flags(tmp_path: Path, video: Path):
    """Headless with --jsonl only, nothing shows a map: none is computed, and a map flag is
    the one-line usage error every command gives."""
    lines = tmp_path / "frames.jsonl"
    base = ["--source", str(video), "--headless", "--jsonl", str(lines), "--threads", "1"]
    for flags in (["--method", "gradcam++"], ["--target", "sea"], ["--every", "3"]):
        refused = CliRunner().invoke(cli, ["camera", *base, *flags])
        assert refused.exit_code == 2 and refused.stderr.count("\n") == 1, refused.output
        assert "only used for heatmaps, and camera makes heatmaps only with a window" in (
            refused.stderr
        )
    result = invoke(*base, "--max-frames", "3")
    assert result.exit_code == 0, result.output
    assert [r["heatmap"] for r in read_jsonl(lines)] == ["off"] * 3
    assert all(r["target"] is None and r["method"] is None for r in read_jsonl(lines))
    assert "0 heatmaps" in result.stderr


def test_json_prints_the_lines_as_jsonl_dash_does(tmp_path: Path, video: Path):
    base = ["--source", str(video), "--headless", "--max-frames", "2", "--threads", "1"]
    printed = invoke(*base, "--json")
    assert printed.exit_code == 0, printed.output
    assert [json.loads(line)["frame"] for line in printed.stdout.splitlines()] == [0, 1]
    dash = invoke(*base, "--jsonl", "-")
    assert [json.loads(x)["label"] for x in dash.stdout.splitlines()] == [
        json.loads(x)["label"] for x in printed.stdout.splitlines()
    ]
    both = CliRunner().invoke(cli, ["camera", *base, "--json", "--jsonl", str(tmp_path / "f")])
    assert both.exit_code == 2 and "give one" in both.stderr


def test_json_lines_name_the_target_the_map_shows(tmp_path: Path, video: Path):
    """As classify's records: `target` (a class name), `target_space` and `method` when maps
    are made; with --every, a reused map still shows the target it was made for."""
    out = tmp_path / "annotated.avi"
    base = ["--source", str(video), "--headless", "--out", str(out), "--json", "--threads", "1"]
    result = invoke(*base, "--max-frames", "3", "--every", "2", "--target", "sea",
                    "--target-space", "probability")  # fmt: skip
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["heatmap"] for r in records] == ["computed", "reused", "computed"]
    for record in records:
        assert record["target"] == "sea" and record["target_space"] == "probability"
        assert record["method"] == "gradcam"
    plain = invoke(*base, "--max-frames", "2")
    assert plain.exit_code == 0, plain.output
    for record in map(json.loads, plain.stdout.splitlines()):
        assert record["target"] == record["label"] and record["target_space"] == "logit"
