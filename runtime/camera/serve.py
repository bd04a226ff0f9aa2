"""The live view: the loop's annotated frames and latest result over HTTP, for devices
without a screen (``camera --serve [HOST:]PORT``).

- ``GET /stream.mjpg``: the annotated frames as MJPEG (``multipart/x-mixed-replace``), the
  format browsers show in an ``<img>`` and network cameras stream;
- ``GET /latest.json``: the latest result: label, confidence, probabilities, frame number,
  the loop's fps;
- ``GET /``: a page that shows both and updates itself.

Nothing can slow the loop down. :meth:`LiveView.publish`, called in the loop's thread, only
copies the frame into a spare buffer (about 0.1 ms for 640 x 480). One encoder thread turns
the newest frame into a JPEG, and only while somebody watches. Each viewer has its own thread
and sends the newest JPEG when its socket is ready for it: a slow viewer skips frames, the
others and the loop do not notice. Viewers of the stream are bounded (``max_viewers``; one
more gets 503 unless a viewer whose frame has been going out for ``STUCK_AFTER`` gives its
place up), and a viewer that stops reading is dropped after ``SEND_TIMEOUT``. Every
endpoint is read-only; other methods get 405. Requests for another host name get 421
(against DNS rebinding; :class:`.gate.HostNames`).

Connections are taken by :class:`.gate.Gate`: one thread reads every request head within a
deadline for the whole head, in bounded slots where a newcomer evicts the longest waiting,
so slow or idle sockets cannot lock viewers out. A complete request is answered in a thread
of its own by :class:`_Handler` (the standard library's ``BaseHTTPRequestHandler``): three
read-only endpoints, a few viewers on a local network; a framework would add a dependency
(and an event loop to bridge to the camera thread) for nothing the view needs.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Iterable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any

import cv2
import numpy as np

from ..closing import Closing
from .gate import HEAD_TIMEOUT, Gate, HostNames
from .loop import FrameReport
from .page import PAGE

log = logging.getLogger("scenecam_edge.camera")

BOUNDARY = "scenecamframe"
_ROUTES = ("/", "/index.html", "/stream.mjpg", "/latest.json")
#: A viewer whose socket takes longer than this to accept a frame is dropped (seconds).
SEND_TIMEOUT = 10.0
#: When every place is taken, a viewer whose frame has been going out this long gives its
#: place to a newcomer (seconds).
STUCK_AFTER = 2.0
_ADDRESS = re.compile(r"^(?:(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\[\]]+)):)?(?P<port>\d+)$")


def parse_address(text: str) -> tuple[str, int]:
    """``[HOST:]PORT`` -> (host, port); the host defaults to 127.0.0.1 (this machine only).
    ValueError naming the problem."""
    match = _ADDRESS.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not [HOST:]PORT (for example 8080 or 0.0.0.0:8080)")
    port = int(match["port"])
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range (0-65535)")
    return match["v6"] or match["host"] or "127.0.0.1", port


class LiveView(Closing):
    """The HTTP server of the live view. Start it, pass :meth:`publish` as the loop's
    ``on_frame``, close it when the loop ends (or use ``with``). Port 0 picks a free port
    (see :attr:`url`). ``allow_hosts``: more host names to answer (``--allow-host``);
    ``head_timeout``: seconds a connection has to send its whole request head. Raises
    OSError when the address cannot be bound."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8080,
        *,
        source: str = "",
        max_viewers: int = 4,
        quality: int = 80,
        allow_hosts: Iterable[str] = (),
        head_timeout: float = HEAD_TIMEOUT,
    ) -> None:
        if max_viewers < 1:
            raise ValueError(f"max_viewers must be at least 1, not {max_viewers}")
        self.source = source
        self.quality = quality
        self.max_viewers = max_viewers
        self._watching: list[_Viewer] = []  # the stream's viewers now
        self.encoded = 0  # JPEGs made
        self._closing = threading.Event()
        self._cond = threading.Condition()
        self._image: np.ndarray | None = None  # the newest frame (a copy), under the lock
        self._spare: np.ndarray | None = None
        self._seq = 0  # frames published
        self._latest: dict[str, Any] = {"frame": None, "source": source}
        self._jpeg: tuple[int, bytes] = (0, b"")  # (seq, bytes) of the newest JPEG
        self._gate = Gate(
            host, port, self._answer, answers=max_viewers + 8, head_timeout=head_timeout
        )
        self.hosts = HostNames(host, self._gate.address[0], allow_hosts)
        self._encoder = threading.Thread(
            target=self._encode_loop, name="live view encoder", daemon=True
        )
        self._gate.start()
        self._encoder.start()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._gate.address
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/"

    def publish(self, report: FrameReport) -> None:
        """Take the loop's latest frame and result (copies the picture; never blocks on
        a viewer)."""
        latest = report.to_dict()
        latest["fps"] = round(report.fps, 2)
        latest["source"] = self.source
        with self._cond:
            spare = self._spare
            if spare is None or spare.shape != report.image.shape:
                spare = np.empty_like(report.image)
            np.copyto(spare, report.image)
            self._spare, self._image = self._image, spare
            self._latest = latest
            self._seq += 1
            self._cond.notify_all()

    def latest(self) -> dict[str, Any]:
        with self._cond:
            return self._latest

    def close(self) -> None:
        """Stop serving: every viewer's stream ends, the port is released."""
        self._closing.set()
        with self._cond:
            self._cond.notify_all()
        self._gate.close()
        self._encoder.join(timeout=2)

    def _answer(self, sock: socket.socket, address: Any, head: bytes) -> None:
        sock.settimeout(SEND_TIMEOUT)  # on the socket: a viewer that stops reading is dropped
        _Handler(sock, address, head, self)

    def _encode_loop(self) -> None:
        done = 0  # seq of the last frame encoded
        params = [cv2.IMWRITE_JPEG_QUALITY, self.quality]
        while not self._closing.is_set():
            with self._cond:
                while not self._closing.is_set() and (self._seq == done or not self.viewers):
                    self._cond.wait(0.5)
                if self._closing.is_set():
                    return
                image, seq = self._image, self._seq
                # The loop publishes into the spare buffer: this one stays ours meanwhile.
                self._image = None
            assert image is not None
            ok, encoded = cv2.imencode(".jpg", image, params)
            with self._cond:
                if self._image is None:  # give the buffer back unless a newer frame came
                    self._image = image
                elif self._spare is None:
                    self._spare = image
                if ok:
                    self._jpeg = (seq, encoded.tobytes())
                    self.encoded += 1
                done = seq
                self._cond.notify_all()

    def next_jpeg(self, after: int) -> tuple[int, bytes] | None:
        """The newest JPEG newer than ``after``, waiting for it; None once closing."""
        with self._cond:
            while not self._closing.is_set():
                seq, data = self._jpeg
                if seq > after:
                    return seq, data
                self._cond.wait(0.5)
        return None

    @property
    def viewers(self) -> int:
        """The stream's viewers now."""
        return len(self._watching)

    def enter_viewer(self, sock: socket.socket) -> _Viewer | None:
        """A place among the stream's viewers, or None (503). When all are taken, a viewer
        whose frame has not gone out for ``STUCK_AFTER`` seconds gives its place up (its
        socket is shut, its thread ends)."""
        with self._cond:
            if len(self._watching) >= self.max_viewers:
                now = time.monotonic()
                stuck = [v for v in self._watching if now - v.sending_since() >= STUCK_AFTER]
                if not stuck:
                    return None
                victim = max(stuck, key=lambda v: now - v.sending_since())
                self._watching.remove(victim)
                with contextlib.suppress(OSError):
                    victim.sock.shutdown(socket.SHUT_RDWR)
            viewer = _Viewer(sock)
            self._watching.append(viewer)
            self._cond.notify_all()
            return viewer

    def leave_viewer(self, viewer: _Viewer) -> None:
        with self._cond:
            if viewer in self._watching:
                self._watching.remove(viewer)


class _Viewer:
    """A viewer of the stream: its socket, and since when its current frame has been going
    out (None between frames)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.since: float | None = None

    def sending_since(self) -> float:
        since = self.since
        return time.monotonic() if since is None else since


class _Handler(BaseHTTPRequestHandler):
    """One request, its head already read by the gate (:mod:`.gate`): parsed, its ``Host``
    checked, answered. HTTP/1.0: one request per connection."""

    server_version = "scenecam-edge"
    protocol_version = "HTTP/1.0"
    # A request line without a version is answered as HTTP/1.0 too: with a status line and
    # headers, never a bare HTTP/0.9 body.
    default_request_version = "HTTP/1.0"

    def __init__(self, sock: socket.socket, address: Any, head: bytes, view: LiveView) -> None:
        # Not BaseRequestHandler's __init__: there is no socketserver here, and the head
        # comes from the gate's buffer, not from the socket.
        self.request = self.connection = sock
        self.client_address = address
        self.view = view
        self.rfile = io.BytesIO(head)
        self.wfile = _SocketWriter(sock)
        self.handle()

    def handle(self) -> None:
        self.close_connection = True
        self.raw_requestline = self.rfile.readline(65537)
        if not self.parse_request():  # it answered (400, 414, 431, 505)
            return
        hosts = self.headers.get_all("Host") or []
        if len(hosts) > 1:
            self._send(HTTPStatus.BAD_REQUEST, "text/plain", b"more than one Host header\n")
        elif not self.view.hosts.allows(hosts[0] if hosts else None):
            body = b"unknown Host: this camera answers only its own names (see --allow-host)\n"
            self._send(HTTPStatus.MISDIRECTED_REQUEST, "text/plain", body)
        elif self.command not in ("GET", "HEAD"):
            self._send(HTTPStatus.METHOD_NOT_ALLOWED, "text/plain", b"read-only\n")
        else:
            self._route(head=self.command == "HEAD")

    def version_string(self) -> str:
        return self.server_version

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The request could not be parsed (400, 414, 431, 505): one plain line, the
        request never echoed."""
        status = HTTPStatus(code)
        body = f"{status.value} {status.phrase.lower()}\n".encode()
        self._send(status, "text/plain", body, head=self.command == "HEAD")

    def log_message(self, format: str, *args: object) -> None:
        log.debug("live view %s: %s", self.client_address[0], format % args)

    def _route(self, head: bool) -> None:
        path = self.path.split("?", 1)[0]
        if path not in _ROUTES:
            self._send(HTTPStatus.NOT_FOUND, "text/plain", b"not found\n", head)
        elif path == "/stream.mjpg":
            self._stream(head)
        elif path == "/latest.json":
            body = json.dumps(self.view.latest()).encode()
            self._send(HTTPStatus.OK, "application/json", body, head)
        else:
            self._send(HTTPStatus.OK, "text/html; charset=utf-8", PAGE.encode(), head)

    def _send(self, status: HTTPStatus, kind: str, body: bytes, head: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        if status == HTTPStatus.METHOD_NOT_ALLOWED:
            self.send_header("Allow", "GET, HEAD")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _stream(self, head: bool) -> None:
        view = self.view
        if head:  # what GET would say, without taking a viewer's place
            self._stream_headers()
            return
        viewer = view.enter_viewer(self.connection)
        if viewer is None:
            self.send_response(HTTPStatus.SERVICE_UNAVAILABLE)
            self.send_header("Retry-After", "5")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        try:
            self._stream_headers()
            sent = 0
            while (item := view.next_jpeg(sent)) is not None:
                sent, data = item
                part = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                part += f"Content-Length: {len(data)}\r\n\r\n"
                viewer.since = time.monotonic()
                self.wfile.write(part.encode() + data + b"\r\n")
                viewer.since = None
        finally:  # the view closed, or an OSError: the viewer went away or stopped reading
            view.leave_viewer(viewer)

    def _stream_headers(self) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()


class _SocketWriter(io.BufferedIOBase):
    """Each write is one ``sendall``: with the socket's timeout, a frame has ``SEND_TIMEOUT``
    seconds in all to go out (not per partial send: a viewer reading a byte at a time is
    dropped all the same)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._sock.sendall(data)
        return len(data)
