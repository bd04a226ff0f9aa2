"""The live view (``camera --serve``) against hostile clients, on loopback: slow and idle
sockets beside a real viewer, a flood of idle sockets, resets, odd methods, HEAD, and
``Host`` headers from other names (DNS rebinding)."""

from __future__ import annotations

import pytest

pytest.importorskip("cv2", reason="the camera needs OpenCV: pip install '.[camera]'")

import contextlib
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

from scenecam_edge.camera import LiveView, serve
from scenecam_edge.camera.gate import MAX_PENDING, HostNames

from .mjpeg_camera import photo_frames, stamp
from .test_camera import wait_until
from .test_camera_serve import get, read_part, report


def exchange(view: LiveView, request: bytes, *, half_close: bool = False) -> bytes:
    """Send raw bytes, read until the server closes (or resets: it answered before reading
    all of a request too long to read)."""
    answer = b""
    with socket.create_connection(view.address, timeout=30) as sock:
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            sock.sendall(request)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                answer += chunk
    return answer


def parse(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), fields, body


def ask(view: LiveView, method: str, path: str, host: str | None = "localhost") -> tuple:
    request = f"{method} {path} HTTP/1.1\r\n"
    request += "" if host is None else f"Host: {host}\r\n"
    return parse(exchange(view, (request + "\r\n").encode()))


def closed_by_server(sock: socket.socket) -> bool:
    """Read what the server sends (a 408) until it closes the connection."""
    sock.settimeout(30)
    answer = b""
    try:
        while chunk := sock.recv(4096):
            answer += chunk
    except ConnectionResetError:  # it closed with our unread header lines in its buffer
        pass
    return answer == b"" or answer.startswith(b"HTTP/1.0 408 Request Timeout\r\n")


def ended(sock: socket.socket) -> bool:
    """Whether the server closed ``sock``, reading what has come without waiting."""
    sock.setblocking(False)
    try:
        while sock.recv(65536):
            pass
    except BlockingIOError:
        return False
    except ConnectionResetError:
        pass
    return True


def reset(sock: socket.socket) -> None:
    """Close with RST instead of FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.fixture
def publishing() -> Iterator[LiveView]:
    """A view with a loop publishing frames."""
    frames, stop = photo_frames(), threading.Event()
    with LiveView(port=0, max_viewers=2, head_timeout=1.5) as view:

        def publish() -> None:
            n = 0
            while not stop.wait(0.03):
                view.publish(report(n, stamp(frames(n), n)))
                n += 1

        thread = threading.Thread(target=publish, daemon=True)
        thread.start()
        wait_until(lambda: view.latest()["frame"] is not None)
        yield view
        stop.set()
        thread.join(30)


def test_slow_and_idle_sockets_do_not_lock_a_viewer_out(publishing: LiveView):
    view = publishing
    # 30 sockets that send a header line every 0.2 s (each read is quick; the whole head
    # never ends), 12 that send nothing.
    slow = [socket.create_connection(view.address, timeout=30) for _ in range(30)]
    idle = [socket.create_connection(view.address, timeout=30) for _ in range(12)]
    stop = threading.Event()

    def trickle() -> None:
        for sock in slow:
            sock.sendall(b"GET /latest.json HTTP/1.1\r\n")
        while not stop.wait(0.2):
            for sock in slow:
                with contextlib.suppress(OSError):
                    sock.send(b"X-Slow: yes\r\n")

    trickler = threading.Thread(target=trickle, daemon=True)
    trickler.start()
    try:
        for _ in range(15):
            assert get(view.url + "latest.json")[0] == 200
        for _ in range(3):
            with urllib.request.urlopen(view.url + "stream.mjpg", timeout=30) as stream:
                assert read_part(stream).shape == (480, 640, 3)
            wait_until(lambda: view.viewers == 0)  # it noticed that this viewer left
        # Every one of them is closed at its deadline for the whole head, though the slow
        # ones never went 0.2 s without sending.
        assert all(closed_by_server(sock) for sock in slow + idle)
    finally:
        stop.set()
        trickler.join(30)
        for sock in slow + idle:
            sock.close()


def test_viewers_that_stopped_reading_give_their_places_to_a_newcomer(
    publishing: LiveView, monkeypatch
):
    view = publishing  # two places
    monkeypatch.setattr(serve, "SEND_TIMEOUT", 300.0)  # they are not dropped on their own
    stalled = []
    for _ in range(view.max_viewers):
        sock = socket.create_connection(view.address, timeout=30)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET /stream.mjpg HTTP/1.0\r\n\r\n")
        stalled.append(sock)
    wait_until(lambda: view.viewers == view.max_viewers)

    def watch() -> bool:
        try:
            with urllib.request.urlopen(view.url + "stream.mjpg", timeout=30) as stream:
                return read_part(stream).shape == (480, 640, 3)
        except urllib.error.HTTPError as exc:
            assert exc.code == 503
            time.sleep(0.2)
            return False

    wait_until(watch)  # once a stalled frame has been going out for STUCK_AFTER seconds
    # The one stuck longest was dropped by the server (with a reset: what it left unsent
    # is not kept).
    wait_until(lambda: any(ended(sock) for sock in stalled))
    for sock in stalled:
        sock.close()


def test_a_flood_of_idle_sockets_evicts_the_oldest_not_the_viewer():
    with LiveView(port=0) as view:  # the default deadline: 10 s
        idle = [socket.create_connection(view.address, timeout=30) for _ in range(100)]
        try:
            assert get(view.url + "latest.json")[0] == 200
            # The pending slots hold the newest; the longest waiting were closed to make room.
            evicted = len(idle) + 1 - MAX_PENDING
            for sock in idle[:evicted]:
                sock.settimeout(30)
                assert sock.recv(100) == b""
        finally:
            for sock in idle:
                sock.close()


def test_reset_connections_write_no_traceback(publishing: LiveView, capfd):
    view = publishing
    for n in range(50):
        sock = socket.create_connection(view.address, timeout=30)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        kind = n % 4
        if kind == 0:  # mid-head
            sock.sendall(b"GET /latest.json HTTP/1.1\r\nHost: local")
        elif kind == 1:  # right after the request, while the answer is being written
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        elif kind == 2:  # mid-stream
            sock.sendall(b"GET /stream.mjpg HTTP/1.0\r\n\r\n")
            sock.recv(1000)
        else:  # a request with a body nobody reads
            sock.sendall(b"GET /latest.json HTTP/1.0\r\n\r\n" + b"x" * 100000)
        reset(sock)
    assert get(view.url + "latest.json")[0] == 200
    wait_until(lambda: view.viewers == 0)
    err = capfd.readouterr().err
    assert "Traceback" not in err and len(err.splitlines()) <= 1, err[:2000]


def test_other_methods_get_405_naming_get_and_head():
    with LiveView(port=0) as view:
        for method in ("OPTIONS", "TRACE", "CONNECT", "PROPFIND", "BREW", "POST"):
            status, fields, body = ask(view, method, "/latest.json")
            assert (status, fields["Allow"], body) == (405, "GET, HEAD", b"read-only\n")
        status, fields, _ = parse(
            exchange(view, b"CONNECT localhost:443 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        )
        assert (status, fields["Allow"]) == (405, "GET, HEAD")
        # A client that half-closes after its request still gets the answer.
        request = b"GET /latest.json HTTP/1.0\r\n\r\n"
        assert parse(exchange(view, request, half_close=True))[0] == 200


def test_head_says_what_get_says_without_a_body(publishing: LiveView):
    view = publishing
    view.publish(report(5, stamp(photo_frames()(5), 5)))
    for path in ("/", "/index.html", "/latest.json", "/admin"):
        got, head = ask(view, "GET", path), ask(view, "HEAD", path)
        assert head[0] == got[0] and head[2] == b""
        for field in ("Content-Type", "Content-Length"):
            assert head[1][field] == got[1][field]
        assert int(got[1]["Content-Length"]) == len(got[2])
    status, fields, body = ask(view, "HEAD", "/stream.mjpg")  # it ends: no body, no viewer
    assert (status, body) == (200, b"")
    assert fields["Content-Type"] == "multipart/x-mixed-replace; boundary=scenecamframe"
    with urllib.request.urlopen(view.url + "stream.mjpg", timeout=30) as stream:
        assert stream.headers["Content-Type"] == fields["Content-Type"]


def test_many_requests_at_once_are_each_answered(publishing: LiveView):
    """More at once than the pending slots: a request already sent is answered, not evicted
    (reset) to make room."""
    view, results = publishing, []

    def head() -> None:
        try:
            results.append(ask(view, "HEAD", "/stream.mjpg")[0])
        except (OSError, IndexError) as exc:
            results.append(repr(exc))

    threads = [threading.Thread(target=head) for _ in range(3 * MAX_PENDING)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(results) == len(threads) and set(results) <= {200, 503}, set(results)
    assert results.count(200) >= len(results) // 2
    assert view.viewers == 0


def test_heads_too_long_or_malformed_get_one_plain_line():
    with LiveView(port=0) as view:
        huge_line = b"GET /" + b"a" * 1_000_000 + b" HTTP/1.0\r\n\r\n"
        many = b"GET / HTTP/1.0\r\n" + b"a: b\r\n" * 3000 + b"\r\n"  # under 16 KB
        for request, status in [
            (huge_line, 431),
            (many, 431),
            (bytes(range(256)) * 4 + b"\r\n\r\n", 400),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
        ]:
            answer = exchange(view, request)
            assert answer.startswith(f"HTTP/1.0 {status} ".encode()), answer[:100]
            _, fields, body = parse(answer)
            assert fields["Content-Type"] == "text/plain" and body.count(b"\n") == 1
        # No version: answered as HTTP/1.0 (a status line and headers), not a bare body.
        assert parse(exchange(view, b"GET /latest.json\r\n\r\n"))[0] == 200


def test_only_the_bound_names_are_answered():
    with LiveView(port=0, allow_hosts=["Camera.LAN"]) as view:
        port = view.address[1]
        for host in (None, "localhost", f"localhost:{port}", "LocalHost.", f"127.0.0.1:{port}",
                     f"[::1]:{port}", "[0:0::1]", "camera.lan", f"camera.lan.:{port}"):  # fmt: skip
            assert ask(view, "GET", "/latest.json", host)[0] == 200, host
        for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example",
                     "localhost.evil.example", "[::2]", "10.0.0.1", "", "localhost:http",
                     "local host", "[::1", "camera.lan.evil"):  # fmt: skip
            status, fields, body = ask(view, "GET", "/latest.json", host)
            assert (status, fields["Content-Type"]) == (421, "text/plain"), host
            assert body.count(b"\n") == 1 and b"--allow-host" in body
        assert ask(view, "HEAD", "/", "evil.example")[0] == 421
        two = b"GET / HTTP/1.1\r\nHost: localhost\r\nHost: evil.example\r\n\r\n"
        assert parse(exchange(view, two))[0] == 400


def test_host_names_for_each_kind_of_bind():
    own = socket.gethostname().lower()
    everywhere = HostNames("0.0.0.0", "0.0.0.0")
    for host in ("localhost", own, f"{own}.local:8080", "192.168.1.20:8080", "[fe80::1]"):
        assert everywhere.allows(host), host
    for host in ("evil.example", f"{own}.evil.example"):
        assert not everywhere.allows(host), host
    assert HostNames("::", "::").allows("[2001:db8::5]:8080")
    one = HostNames("192.168.1.20", "192.168.1.20", ["cam.example"])
    assert one.allows("192.168.1.20:8080") and one.allows("cam.example")
    for host in ("localhost", "127.0.0.1", "192.168.1.21", own):
        assert not one.allows(host), host
    named = HostNames("localhost", "127.0.0.1")
    assert named.allows("localhost") and named.allows("[::1]:80")
