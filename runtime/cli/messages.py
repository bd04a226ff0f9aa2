"""What the commands say: exit codes, names made safe to print (``names.shown``), one-line
errors."""

from __future__ import annotations

import sys
from typing import NoReturn

import click

from ..errors import MissingExtraError, SceneCamError
from ..fileio import STORAGE_ERRNOS
from ..names import REASON_MAX
from ..names import shown as shown

EXIT_OK, EXIT_FAILED_INPUTS, EXIT_USAGE, EXIT_MODEL = 0, 1, 2, 3
#: Another process is writing the results file (``batch --out``).
EXIT_BUSY = 4
#: An output could not be written: disk full, read-only, over a size limit, a symbolic link
#: at the output path.
EXIT_WRITE = 5


def error_line(subject: str, reason: str) -> None:
    """One line on stderr naming the input and the reason."""
    click.echo(f"error: {shown(subject)}: {shown(reason, REASON_MAX)}", err=True)


def write_failed(exc: OSError, fallback: object) -> NoReturn:
    """One line naming the file that could not be written, exit :data:`EXIT_WRITE`."""
    error_line(str(exc.filename or fallback), str(exc.strerror or exc))
    sys.exit(EXIT_WRITE)


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
        click.echo(f"error: {shown(exc, REASON_MAX)}", err=True)
    sys.exit(code)
