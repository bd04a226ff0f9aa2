"""The live view over HTTP (``camera --serve``): its endpoints, bounded viewers, a viewer that
stops reading, the command with outputs and SIGTERM, and a real browser (headless Chromium).
"""

from __future__ import annotations

import pytest

pytest.importorskip("cv2", reason="the camera needs OpenCV: pip install '.[camera]'")

import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np

from scenecam_edge.camera import (
    CameraSettings,
    FrameReport,
    LiveView,
    open_source,
    parse_address,
    run_camera,
)
from scenecam_edge.results import Classification

from .mjpeg_camera import MjpegCamera, photo_frames, read_stamp, stamp
from .test_camera import read_video, wait_until

CLASSES = ("buildings", "forest", "sea")


def get(url: str, method: str = "GET", host: str | None = None) -> tuple[int, str, bytes]:
    request = urllib.request.Request(url, method=method, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def read_part(stream) -> np.ndarray:
    """One JPEG from an MJPEG response, decoded (BGR)."""
    length = None
    while True:
        line = stream.readline()
        assert line, "the stream ended"
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
        if line == b"\r\n" and length is not None:
            break
    image = cv2.imdecode(np.frombuffer(stream.read(length), np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image


def report(number: int, image: np.ndarray) -> FrameReport:
    probabilities = {"buildings": 0.1, "forest": 0.7, "sea": 0.2}
    result = Classification(
        source=f"frame {number}",
        index=1,
        label="forest",
        probabilities=probabilities,
        top_k=[("forest", 0.7)],
        logits=np.zeros(3, np.float32),
    )
    return FrameReport(
        number=number,
        source_index=number,
        time=number / 30,
        result=result,
        heatmap="computed",
        method="gradcam",
        fps=42.0,
        arrived=time.monotonic(),
        image=image,
    )


def test_the_endpoints(tmp_path: Path):
    frame = stamp(photo_frames()(0), 1234)
    with LiveView(port=0, source="clip.mp4") as view:
        assert get(view.url + "latest.json")[2] == b'{"frame": null, "source": "clip.mp4"}'
        view.publish(report(7, frame))
        status, kind, body = get(view.url + "latest.json")
        assert (status, kind) == (200, "application/json")
        assert json.loads(body) == {
            **report(7, frame).to_dict(),
            "fps": 42.0,
            "source": "clip.mp4",
        }
        status, kind, page = get(view.url)
        assert (status, kind) == (200, "text/html; charset=utf-8")
        assert b'src="/stream.mjpg"' in page and b"/latest.json" in page
        with urllib.request.urlopen(view.url + "stream.mjpg", timeout=30) as stream:
            assert stream.headers["Content-Type"].startswith("multipart/x-mixed-replace")
            image = read_part(stream)
        assert image.shape == frame.shape and read_stamp(image) == 1234
        assert np.abs(image.astype(int) - frame).mean() < 4  # the frame, JPEG-compressed
        # Read-only: nothing but GET and HEAD.
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            assert get(view.url + "latest.json", method)[0] == 405
        assert get(view.url + "admin")[0] == 404
        assert get(view.url + "admin", "HEAD")[0] == 404
        assert get(view.url + "latest.json", "HEAD")[0] == 200


def test_viewers_are_bounded_and_a_stalled_one_slows_nobody():
    frames = photo_frames()
    with LiveView(port=0, max_viewers=2) as view:
        view.publish(report(0, stamp(frames(0), 0)))
        # A viewer that asks for the stream and never reads: its socket fills up.
        stalled = socket.create_connection(view.address)
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.sendall(b"GET /stream.mjpg HTTP/1.0\r\n\r\n")
        watching = urllib.request.urlopen(view.url + "stream.mjpg", timeout=30)
        wait_until(lambda: view.viewers == 2)
        assert get(view.url + "stream.mjpg")[0] == 503  # one more than max_viewers
        assert get(view.url + "latest.json")[0] == 200  # the rest still answers

        seen: list[int] = []

        def watch() -> None:
            while not seen or seen[-1] != 299:
                seen.append(read_stamp(read_part(watching)))

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        # The loop's side: 300 frames, as fast as it can; publish never waits for a viewer.
        publisher = threading.Thread(
            target=lambda: [view.publish(report(n, stamp(frames(n), n))) for n in range(300)]
        )
        publisher.start()
        publisher.join(120)
        assert not publisher.is_alive(), "publishing waited for a viewer"
        watcher.join(120)
        assert seen[-1] == 299 and seen == sorted(seen)  # the newest frame, never an old one
        watching.close()
        stalled.close()


def test_the_command_serves_beside_its_outputs_and_stops_on_sigterm(tmp_path: Path):
    out, lines = tmp_path / "annotated.avi", tmp_path / "frames.jsonl"
    with MjpegCamera(fps=15) as camera:
        command = [sys.executable, "-c", "from scenecam_edge.cli import main; main()", "camera"]
        args = ["--source", camera.url, "--headless", "--serve", "127.0.0.1:0", "--threads", "1"]
        args += ["--out", str(out), "--jsonl", str(lines), "--allow-host", "camera.lan"]
        proc = subprocess.Popen(
            command + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            assert proc.stderr is not None
            first = proc.stderr.readline()
            assert first.startswith("camera: live view at http://127.0.0.1:"), first
            url = first.split(" at ")[1].strip()
            wait_until(lambda: (json.loads(get(url + "latest.json")[2])["frame"] or 0) >= 3)
            latest = json.loads(get(url + "latest.json")[2])
            assert get(url + "latest.json", host="camera.lan:8080")[0] == 200  # --allow-host
            assert get(url + "latest.json", host="evil.example")[0] == 421
            with urllib.request.urlopen(url + "stream.mjpg", timeout=30) as stream:
                served = read_part(stream)
            proc.send_signal(signal.SIGTERM)
            _, stderr = proc.communicate(timeout=120)
        finally:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, stderr  # 143, as every command
    assert "Traceback" not in stderr and "ended: stopped" in stderr
    records = [json.loads(line) for line in lines.read_text().splitlines()]
    assert records[latest["frame"]] == {k: latest[k] for k in records[0]}
    assert 0 <= read_stamp(served) <= records[-1]["source_frame"]
    assert len(read_video(out)) == len(records)
    with pytest.raises(OSError):  # the port is closed
        socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1].strip("/"))), 5)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (apt-get install chromium)")
def test_the_page_shows_the_live_frame_in_chromium(tmp_path: Path, scenecam):
    shot = tmp_path / "live.png"
    still = photo_frames()(0)  # one picture over and over: what the page shows is known
    stop = threading.Event()
    last: list[np.ndarray] = []

    def publish(report: FrameReport) -> None:
        last[:] = [report.image.copy()]
        view.publish(report)

    with MjpegCamera(lambda n: still, fps=10) as camera, LiveView(port=0) as view:
        source = open_source(camera.url, timeout=10)
        loop = threading.Thread(
            target=run_camera,
            args=(scenecam, source, CameraSettings()),
            kwargs={"stop": stop, "on_frame": publish},
        )
        loop.start()
        try:
            wait_until(lambda: bool(last))
            subprocess.run(
                [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                 f"--screenshot={shot}", "--window-size=1000,520",
                 "--virtual-time-budget=3000", view.url],
                capture_output=True, timeout=120, check=True,
            )  # fmt: skip
        finally:
            stop.set()
            loop.join(60)
            source.close()
    page = cv2.imread(str(shot))
    assert page is not None and page.shape == (520, 1000, 3)
    # The <img> sits at (12, 12) (main's padding): the served frame, below the label bar.
    frame = last[0]
    shown = page[12 + 60 : 12 + 480, 12 : 12 + 640].astype(int)
    assert np.abs(shown - frame[60:480]).mean() < 12
    # ... and not what the page would show without it.
    assert np.abs(shown - page[0, 0]).mean() > 40


def test_the_stream_is_a_source_for_another_camera_loop():
    """What the live view serves, OpenCV reads as a network camera (the same format)."""
    frames = photo_frames()
    stop = threading.Event()
    with LiveView(port=0) as view:

        def publish() -> None:
            n = 0
            while not stop.wait(0.02):
                view.publish(report(n, stamp(frames(n), n)))
                n += 1

        publisher = threading.Thread(target=publish)
        publisher.start()
        try:
            with open_source(view.url + "stream.mjpg", timeout=10) as source:
                got = [source.read(timeout=30) for _ in range(3)]
                stamps = [read_stamp(f.image) for f in got if f is not None]
        finally:
            stop.set()
            publisher.join(30)
    assert len(stamps) == 3 and stamps == sorted(set(stamps))


def test_serve_addresses():
    assert parse_address("8080") == ("127.0.0.1", 8080)  # this machine only, by default
    assert parse_address("0.0.0.0:8080") == ("0.0.0.0", 8080)
    assert parse_address("[::1]:0") == ("::1", 0)
    for bad in ("web", "host:port", "8080:host", "[::1]8080", "70000"):
        with pytest.raises(ValueError):
            parse_address(bad)
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    with LiveView("::1", 0) as view:
        assert view.url.startswith("http://[::1]:")
        assert json.loads(get(view.url + "latest.json")[2])["frame"] is None
