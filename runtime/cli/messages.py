"""What the commands say: exit codes, names made safe to print, one-line errors."""

from __future__ import annotations

import sys
import unicodedata
from typing import NoReturn

import click

from ..errors import MissingExtraError, SceneCamError
from ..fileio import STORAGE_ERRNOS

EXIT_OK, EXIT_FAILED_INPUTS, EXIT_USAGE, EXIT_MODEL = 0, 1, 2, 3
#: Another process is writing the results file (``batch --out``).
EXIT_BUSY = 4
#: An output could not be written: disk full, read-only, over a size limit, a symbolic link
#: at the output path.
EXIT_WRITE = 5


def shown(text: str) -> str:
    """``text`` safe to print on a terminal, on one line: control and format characters
    (CR, LF, ESC, bidi overrides, ...) and undecodable bytes become visible escapes, so a
    file name cannot forge output lines or drive the terminal."""
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp"):
            code = ord(ch)
            if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte, from surrogateescape
                out.append(f"\\x{code - 0xDC00:02x}")
            elif code < 0x100:
                out.append(f"\\x{code:02x}")
            else:
                out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def error_line(subject: str, reason: str) -> None:
    """One line on stderr naming the input and the reason."""
    click.echo(f"error: {shown(subject)}: {shown(reason)}", err=True)


def write_failed(exc: OSError, fallback: object) -> NoReturn:
    """One line naming the file that could not be written, exit :data:`EXIT_WRITE`."""
    fail(f"{shown(str(exc.filename or fallback))}: {exc.strerror or exc}", EXIT_WRITE)


def is_storage_error(exc: OSError) -> bool:
    """Whether nothing more can be written there (disk full, read-only, size limit,
    permission denied)."""
    return exc.errno in STORAGE_ERRNOS


def fail(exc: SceneCamError | str, code: int = EXIT_MODEL) -> NoReturn:
    if isinstance(exc, MissingExtraError):
        click.echo(f"error: {exc.reason}", err=True)
    elif isinstance(exc, SceneCamError):
        error_line(exc.subject, exc.reason)
    else:
        click.echo(f"error: {shown(exc)}", err=True)
    sys.exit(code)
