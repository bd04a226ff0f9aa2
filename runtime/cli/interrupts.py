"""Ctrl-C and SIGTERM on every command: exit 130 or 143 (128 + the signal, as shells
report it) with one line saying what was finished and where it is.

The group installs a SIGTERM handler that raises :class:`~scenecam_edge.batch.Interrupted`
in the main thread, as Ctrl-C raises KeyboardInterrupt, and turns either into that line and
exit status (click alone would print ``Aborted!`` and exit 1). A command says what it has
finished so far with :func:`note_progress`; ``batch`` and ``camera`` handle the signals
themselves, to finish the batch or frame at hand first, and exit with the same codes.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import NoReturn

import click

from ..batch import Interrupted, heeded

#: Exit status after a signal: 128 + its number (130 for Ctrl-C, 143 for SIGTERM).
EXIT_SIGNAL_BASE = 128
_NOTE = "scenecam-edge.interrupt-note"


def note_progress(describe: Callable[[], str]) -> None:
    """What the current command has finished and where, asked for when it is interrupted
    (``"4 of 12 inputs classified; 4 panels in maps/"``)."""
    click.get_current_context().meta[_NOTE] = describe


@contextlib.contextmanager
def terminate_raises() -> Iterator[None]:
    """SIGTERM raises :class:`Interrupted` in the main thread for the block."""
    if threading.current_thread() is not threading.main_thread() or not heeded((signal.SIGTERM,)):
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM back for the block (a file being written and renamed): one
    that arrives meanwhile takes effect right after it, so nothing is left half-written."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        pending.append(signum)

    previous = {s: signal.signal(s, hold) for s in heeded((signal.SIGINT, signal.SIGTERM))}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
    if pending:
        raise Interrupted(pending[0]) if pending[0] != signal.SIGINT else KeyboardInterrupt


def exit_interrupted(context: click.Context, signum: int) -> NoReturn:
    """The one line, then exit 128 + ``signum``."""
    describe = context.meta.get(_NOTE)
    text = describe() if describe is not None else "stopped before anything was finished"
    click.echo(f"interrupted: {text}", err=True)
    sys.exit(EXIT_SIGNAL_BASE + signum)


def signal_number(exc: KeyboardInterrupt) -> int:
    return exc.signum if isinstance(exc, Interrupted) else int(signal.SIGINT)
