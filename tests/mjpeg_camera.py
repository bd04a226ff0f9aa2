"""A stand-in IP camera for the tests and the benchmark: MJPEG over HTTP on 127.0.0.1.

``GET /stream.mjpg`` answers ``multipart/x-mixed-replace`` with one JPEG part per frame, the
way network cameras (and ``camera --serve``) stream. Every frame carries its number as a
barcode (:func:`stamp`, :func:`read_stamp`), so a client can tell which frame it got even
after JPEG compression and a heatmap blended over it.

It can misbehave on purpose: drop its connections and stop listening for a while (an outage
the reader must reconnect through). A server that accepts and then says nothing is
:func:`silent_server`.

Run alone (the benchmark does, so its CPU is not counted in the loop's process)::

    python tests/mjpeg_camera.py --port 8081 --fps 30 --size 640x480
"""

from __future__ import annotations

import argparse
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np

SAMPLES = Path(__file__).resolve().parents[1] / "samples" / "scenes"
BOUNDARY = "standinframe"

#: The barcode: 16 bits, each a BIT x BIT block (black 0, white 1), in a row from STAMP_AT.
BITS, BIT, STAMP_AT = 16, 16, (200, 40)  # (y, x) of its top-left corner


def stamp(image: np.ndarray, number: int) -> np.ndarray:
    """Write ``number`` (mod 2**16) into ``image`` (BGR, at least 256 x 232) in place."""
    y, x = STAMP_AT
    for bit in range(BITS):
        value = 255 if (number >> bit) & 1 else 0
        image[y : y + BIT, x + bit * BIT : x + (bit + 1) * BIT] = value
    return image


def read_stamp(image: np.ndarray) -> int:
    """The number :func:`stamp` wrote, read back from a decoded (and maybe overlaid) frame.
    A heatmap blended at alpha 0.4 keeps white >= 153 and black <= 102 in every channel."""
    y, x = STAMP_AT
    number = 0
    for bit in range(BITS):
        block = image[y + 4 : y + BIT - 4, x + bit * BIT + 4 : x + (bit + 1) * BIT - 4]
        if float(block.mean()) > 128:
            number |= 1 << bit
    return number


def photo_frames(
    size: tuple[int, int] = (640, 480), stamped: bool = True
) -> Callable[[int], np.ndarray]:
    """Frame ``n``: the sample photos panning sideways (a new one every 10 frames), stamped
    with ``n`` unless ``stamped`` is False."""
    photos = [cv2.resize(cv2.imread(str(p)), size) for p in sorted(SAMPLES.glob("*.jpg"))]

    def frame(n: int) -> np.ndarray:
        image = np.roll(photos[(n // 10) % len(photos)], 8 * n, axis=1)
        return stamp(image, n) if stamped else image

    return frame


class MjpegCamera:
    """The stand-in camera. ``fps=None`` sends as fast as the client reads. ``outage=(n, s)``:
    after ``n`` frames on the first connection, close every connection and stop listening
    for ``s`` seconds, then listen again on the same port. ``limit``: frames per connection,
    then the connection is closed (the end of a stream)."""

    def __init__(
        self,
        frames: Callable[[int], np.ndarray] | None = None,
        *,
        fps: float | None = 30.0,
        port: int = 0,
        outage: tuple[int, float] | None = None,
        limit: int | None = None,
        quality: int = 85,
        cache: int | None = None,
    ) -> None:
        self.frames = frames or photo_frames()
        self.cache = cache  # frames n and n + cache are the same (each encoded once)
        self._jpegs: dict[int, bytes] = {}
        self.fps, self.outage, self.limit, self.quality = fps, outage, limit, quality
        self.sent = 0  # frames sent over all connections
        self.sent_at: dict[int, float] = {}  # frame number -> time.monotonic() once sent
        self.connections = 0
        self.outages = 0
        self._port = port
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._down = threading.Event()  # set during an outage: streaming handlers end
        self.start()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}/stream.mjpg"

    def start(self) -> None:
        camera = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, format: str, *args: object) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/stream.mjpg":
                    self.send_error(404)
                    return
                camera._stream(self)

        server = ThreadingHTTPServer(("127.0.0.1", self._port), Handler)
        server.daemon_threads = True
        self._port = server.server_address[1]
        self._server = server
        self._down.clear()
        self._thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop listening and end every connection."""
        self._down.set()
        with self._lock:
            server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def close(self) -> None:
        self._stopping.set()
        self.stop()

    def _stream(self, handler: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.connections += 1
            first = self.connections == 1
        handler.send_response(200)
        handler.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        handler.send_header("Cache-Control", "no-cache")
        handler.end_headers()
        start = time.monotonic()
        n = 0
        while not self._down.is_set() and not self._stopping.is_set():
            if self.limit is not None and n >= self.limit:
                return
            if first and self.outage is not None and n >= self.outage[0]:
                threading.Thread(target=self._outage, args=(self.outage[1],)).start()
                return
            if self.fps is not None and self._down.wait(start + n / self.fps - time.monotonic()):
                return
            with self._lock:
                number = self.sent
                self.sent += 1
            jpeg = self._jpeg(number)
            head = (
                f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
            ).encode()
            try:
                handler.wfile.write(head + jpeg + b"\r\n")
                handler.wfile.flush()
            except OSError:
                return  # the client went away
            self.sent_at[number] = time.monotonic()
            n += 1

    def _jpeg(self, number: int) -> bytes:
        key = number if self.cache is None else number % self.cache
        jpeg = self._jpegs.get(key)
        if jpeg is None:
            params = [cv2.IMWRITE_JPEG_QUALITY, self.quality]
            ok, encoded = cv2.imencode(".jpg", self.frames(key), params)
            assert ok
            jpeg = encoded.tobytes()
            if self.cache is not None:
                self._jpegs[key] = jpeg
        return jpeg

    def _outage(self, seconds: float) -> None:
        self.outages += 1
        self.stop()
        if not self._stopping.wait(seconds):
            self.start()

    def __enter__(self) -> MjpegCamera:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def silent_server() -> socket.socket:
    """A listening socket nobody serves: the kernel completes the connection (the client
    sees it accepted) and no byte ever comes. Close it when done."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--fps", type=float, default=30.0, help="0: as fast as read")
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--plain", action="store_true", help="no frame-number barcode")
    parser.add_argument("--cache", type=int, default=None, help="encode N frames, then cycle")
    args = parser.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    frames = photo_frames((w, h), stamped=not args.plain)
    camera = MjpegCamera(frames, fps=args.fps or None, port=args.port, cache=args.cache)
    print(camera.url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        camera.close()


if __name__ == "__main__":
    main()
