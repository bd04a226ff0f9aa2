"""The live view's front door: connections accepted, request heads read within one deadline
each in bounded slots, the ``Host`` checked, then each complete request handed to a thread
that answers it.

A thread per connection from ``accept`` (what ``ThreadingHTTPServer`` does) lets a socket
that sends one header line every few seconds, or nothing at all, hold a thread and a
connection slot for as long as it likes: a few dozen of them lock every viewer out. Here one
selector thread reads every pending request head without blocking:

- a connection has ``head_timeout`` seconds *in all* (not per read) to send its request
  line and headers (at most :data:`MAX_HEAD` bytes, else 431); then it gets 408 and is
  closed, however steadily it trickles;
- at most ``max_pending`` connections wait for their heads; one more evicts the one that has
  waited longest (unless its head has come in meanwhile). A real client sends its head
  within milliseconds of connecting, so it is never the oldest unless ``max_pending`` newer
  connections came in between;
- a complete head goes to an answer thread. Answer threads are bounded (one more gets 503
  at once), and the view bounds the stream viewers among them.

Nothing here writes a traceback for a peer that goes away (a reset, a broken pipe): one
debug log line at most.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import re
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

log = logging.getLogger("scenecam_edge.camera")

#: Seconds a connection has to send its whole request head.
HEAD_TIMEOUT = 10.0
#: Connections that may wait for their request heads at once (one more evicts the oldest).
MAX_PENDING = 64
#: The longest request head read (request line and headers, bytes); longer gets 431.
MAX_HEAD = 16384
_END = re.compile(rb"\r?\n\r?\n")

#: What answers a complete request: (socket, client address, head bytes). It runs in its own
#: thread with a blocking socket; the gate closes the socket afterwards.
Answer = Callable[[socket.socket, Any, bytes], None]


@dataclass(eq=False)
class _Pending:
    sock: socket.socket
    address: Any
    deadline: float
    data: bytearray = field(default_factory=bytearray)


class Gate:
    """Listens on (host, port) and calls ``answer`` for each complete request head, in a
    thread of its own, at most ``answers`` at once. Raises OSError when the address cannot
    be bound. :meth:`start` begins accepting, :meth:`close` stops and releases the port."""

    def __init__(
        self,
        host: str,
        port: int,
        answer: Answer,
        *,
        answers: int,
        head_timeout: float = HEAD_TIMEOUT,
        max_pending: int = MAX_PENDING,
    ) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((host, port))
            listener.listen(max_pending)
            listener.setblocking(False)
        except OSError:
            listener.close()
            raise
        self._listener = listener
        self.address: tuple[str, int] = tuple(listener.getsockname()[:2])  # type: ignore[assignment]
        self._answer = answer
        self._answers = threading.BoundedSemaphore(answers)
        self._head_timeout = head_timeout
        self._max_pending = max_pending
        self._pending: dict[socket.socket, _Pending] = {}  # in order of arrival
        self._selector = selectors.DefaultSelector()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="live view", daemon=True)

    @property
    def pending(self) -> int:
        """Connections waiting for their request heads now."""
        return len(self._pending)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._closing.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._listener.close()

    def _run(self) -> None:
        self._selector.register(self._listener, selectors.EVENT_READ)
        try:
            while not self._closing.is_set():
                timeout = 0.1
                if self._pending:
                    first = next(iter(self._pending.values()))
                    timeout = min(timeout, max(0.0, first.deadline - time.monotonic()))
                for key, _ in self._selector.select(timeout):
                    pending: _Pending | None = key.data
                    if pending is None:  # the listener
                        self._accept()
                    elif self._pending.get(pending.sock) is pending:  # not dropped since
                        self._read(pending)
                self._expire()
        finally:
            for pending in list(self._pending.values()):
                self._drop(pending)
            self._selector.close()

    def _accept(self) -> None:
        for _ in range(self._max_pending):
            try:
                sock, address = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of file descriptors: make room, or wait a little
                log.debug("live view: accept failed (%s)", exc)
                if exc.errno in (errno.EMFILE, errno.ENFILE) and self._pending:
                    self._drop(next(iter(self._pending.values())))
                else:
                    time.sleep(0.05)
                return
            sock.setblocking(False)
            if len(self._pending) >= self._max_pending:
                self._evict()
            pending = _Pending(sock, address, time.monotonic() + self._head_timeout)
            self._pending[sock] = pending
            self._selector.register(sock, selectors.EVENT_READ, pending)

    def _evict(self) -> None:
        """Make room: close the connection waiting longest, unless its request came in
        since the last look (then it goes on to be answered)."""
        oldest = next(iter(self._pending.values()))
        self._read(oldest)
        if self._pending.get(oldest.sock) is oldest:
            self._drop(oldest)

    def _read(self, pending: _Pending) -> None:
        try:
            chunk = pending.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # reset before the request was complete
            log.debug("live view %s: %s", pending.address[0], exc)
            self._drop(pending)
            return
        if not chunk:  # closed (or half-closed) before the request was complete
            self._drop(pending)
            return
        start = max(0, len(pending.data) - 3)
        pending.data += chunk
        end = _END.search(pending.data, start)
        if end is None or end.end() > MAX_HEAD:
            if len(pending.data) > MAX_HEAD:
                self._forget(pending)
                _refuse(pending.sock, HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
            return
        self._forget(pending)
        if not self._answers.acquire(blocking=False):
            _refuse(pending.sock, HTTPStatus.SERVICE_UNAVAILABLE, "Retry-After: 5\r\n")
            return
        head = bytes(pending.data[: end.end()])
        thread = threading.Thread(
            target=self._answer_thread,
            args=(pending.sock, pending.address, head),
            name="live view answer",
            daemon=True,
        )
        try:
            thread.start()
        except RuntimeError:  # no more threads to be had
            self._answers.release()
            _refuse(pending.sock, HTTPStatus.SERVICE_UNAVAILABLE, "Retry-After: 5\r\n")

    def _expire(self) -> None:
        now = time.monotonic()
        while self._pending:
            first = next(iter(self._pending.values()))
            if first.deadline > now:
                return
            self._forget(first)
            _refuse(first.sock, HTTPStatus.REQUEST_TIMEOUT)

    def _forget(self, pending: _Pending) -> None:
        del self._pending[pending.sock]
        self._selector.unregister(pending.sock)

    def _drop(self, pending: _Pending) -> None:
        self._forget(pending)
        pending.sock.close()

    def _answer_thread(self, sock: socket.socket, address: Any, head: bytes) -> None:
        broken = False
        try:
            sock.setblocking(True)
            self._answer(sock, address, head)
        except OSError as exc:  # the peer went away, stopped reading, or was dropped
            log.debug("live view %s: connection ended (%s)", address[0], exc)
            broken = True
        finally:
            self._answers.release()
            _close(sock, abort=broken)


def _refuse(sock: socket.socket, status: HTTPStatus, headers: str = "") -> None:
    """A short answer, sent without waiting (best effort), and the connection closed."""
    body = f"{status.value} {status.phrase.lower()}\n"
    message = (
        f"HTTP/1.0 {status.value} {status.phrase}\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\n{headers}Connection: close\r\n\r\n{body}"
    )
    with contextlib.suppress(OSError):
        sock.send(message.encode())
    _close(sock)


def _close(sock: socket.socket, abort: bool = False) -> None:
    """Close; ``abort``: with a reset, so that what a peer that stopped reading left unsent
    is freed at once instead of lingering in the kernel."""
    with contextlib.suppress(OSError):
        if abort:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            sock.shutdown(socket.SHUT_RDWR)
    sock.close()


class HostNames:
    """The ``Host`` header values the live view answers, against DNS rebinding (a page on
    another site whose name is pointed at this machine would otherwise read the camera).

    Accepted: the name or address the server was bound to; ``localhost``, ``127.0.0.1`` and
    ``[::1]`` when that is a loopback address; bound to every address (``0.0.0.0``, ``::``),
    also this machine's host name (and ``NAME.local``) and any IP address literal (a literal
    cannot be rebound: a page reached by address has that address as its origin); and every
    name in ``extra`` (``--allow-host``). Ports are not compared. A request without ``Host``
    is accepted: browsers always send one."""

    def __init__(self, bound: str, address: str, extra: Iterable[str] = ()) -> None:
        names = {_normal(bound), _normal(address)} | {_normal(name) for name in extra}
        ips = [ip for ip in (_ip(bound), _ip(address)) if ip is not None]
        self.any_address = bound == "" or any(ip.is_unspecified for ip in ips)
        if self.any_address or bound.lower() == "localhost" or any(ip.is_loopback for ip in ips):
            names |= {"localhost", "127.0.0.1", "::1"}
        if self.any_address:
            own = _normal(socket.gethostname())
            names |= {own, f"{own}.local"}
        names.discard("")
        self.names = frozenset(names)

    def allows(self, header: str | None) -> bool:
        if header is None:
            return True
        name = _host_of(header)
        if name is None:
            return False
        return name in self.names or (self.any_address and _ip(name) is not None)


def _host_of(header: str) -> str | None:
    """The host of a ``Host`` header (``name``, ``name:port``, ``[v6]:port``), normalised;
    None when it is not one."""
    text = header.strip()
    if text.startswith("["):
        inner, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not re.fullmatch(r":\d{1,5}", rest)):
            return None
        return _normal(inner) if _ip(inner) is not None else None
    name, colon, port = text.rpartition(":")
    if not colon:
        name = text
    elif not re.fullmatch(r"\d{1,5}", port):
        return None
    if not name or not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        return None
    return _normal(name)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


def _normal(name: str) -> str:
    """Lower case without the root dot; addresses in their compressed form."""
    name = name.strip().strip("[]").lower().rstrip(".")
    ip = _ip(name)
    return name if ip is None else ip.compressed
