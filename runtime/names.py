"""File names, everywhere they are read or written: one rule.

On Linux a file name is bytes: any byte but ``/`` and NUL, up to 255 bytes a name and 4096
a path. Python reads the bytes that are not UTF-8 as lone surrogates (``surrogateescape``:
byte ``0xE9`` becomes ``U+DCE9``), and every path inside the runtime is such a ``str``. The
rule, in four parts:

* **For people** (stderr, the classify table, panel titles, report.html, metrics.md):
  :func:`shown`. Undecodable bytes show as ``\\xNN``, control and format characters (CR, LF,
  ESC, bidi overrides) as ``\\xNN``/``\\uNNNN``, a backslash as ``\\\\``, all on one line; a
  name over :data:`SHOWN_MAX` characters keeps its start and end around
  ``...[N bytes]...``. HTML escapes that (:func:`for_html`), Markdown also its specials
  (:func:`for_markdown`).
* **In files** (results files, ``classify --json``, ``metrics.json``): every text is valid
  UTF-8. ``path`` is the name with each undecodable byte written ``\\xNN``
  (:func:`readable`), and only then ``path_bytes`` holds the name's exact bytes in base64
  (:func:`path_fields`); :func:`original_path` gives the name back from a record, which is
  what resume compares. A name that is valid UTF-8 is written as it is, and has no
  ``path_bytes``.
* **CSV cells** that start with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return
  (after any single quotes) get one ``'`` in front (OWASP's rule against spreadsheet
  formulas); reading back removes it (:func:`csv_cell`, :func:`csv_value`).
* **Too long** (:func:`too_long`): a name over 255 bytes or a path over 4096 is one bad
  input, refused by length before the file system sees it.
"""

from __future__ import annotations

import base64
import binascii
import html
import os
import re
import unicodedata
from typing import Any

#: The longest file name (one path component) and path, in bytes (Linux's NAME_MAX, PATH_MAX).
NAME_MAX = 255
PATH_MAX = 4096
#: Longer names are shown cut in the middle.
SHOWN_MAX = 160
#: Messages (which may quote a name) are cut at this many characters.
REASON_MAX = 2000
_KEEP_HEAD, _KEEP_TAIL = 80, 40


def to_bytes(path: str | os.PathLike[str] | bytes) -> bytes:
    """The name's bytes on disk (undecodable bytes back as they were)."""
    return os.fsencode(path)


def too_long(path: str | os.PathLike[str] | bytes) -> str | None:
    """Why ``path`` cannot name a file here (a name over :data:`NAME_MAX` bytes, the whole
    over :data:`PATH_MAX`), or None."""
    raw = to_bytes(path)
    if len(raw) >= PATH_MAX:
        return f"path is too long ({len(raw)} bytes; the limit is {PATH_MAX - 1})"
    longest = max((len(part) for part in raw.split(b"/")), default=0)
    if longest > NAME_MAX:
        return f"a file name in the path is too long ({longest} bytes; the limit is {NAME_MAX})"
    return None


def _escaped(ch: str) -> str:
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte, from surrogateescape
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


_INVISIBLE = ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")


def shown(text: str | os.PathLike[str] | bytes, limit: int | None = SHOWN_MAX) -> str:
    """``text`` for people, on one line: a backslash doubled, undecodable bytes and
    control, format, private and unassigned characters as visible escapes (so a name cannot
    forge output lines, drive a terminal or reverse the text after it), and, over ``limit``
    characters, cut in the middle to ``start...[N bytes]...end``. Pass ``limit=None`` to
    keep it whole."""
    name = text if isinstance(text, str) else os.fsdecode(text)
    if limit is not None and len(name) > limit:
        size = len(to_bytes_lenient(name))
        name_head, name_tail = name[:_KEEP_HEAD], name[-_KEEP_TAIL:]
        return f"{shown(name_head, None)}...[{size} bytes]...{shown(name_tail, None)}"
    out = []
    for ch in name:
        if ch == "\\":
            out.append("\\\\")
        elif unicodedata.category(ch) in _INVISIBLE:
            out.append(_escaped(ch))
        else:
            out.append(ch)
    return "".join(out)


def to_bytes_lenient(text: str) -> bytes:
    """UTF-8 bytes of ``text``, surrogates as the bytes they stand for (or escaped)."""
    return text.encode("utf-8", "surrogateescape") if _decodable(text) else _lossy(text)


def _decodable(text: str) -> bool:
    try:
        text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return False
    return True


def _lossy(text: str) -> bytes:
    return text.encode("utf-8", "backslashreplace")


def for_html(text: str, limit: int | None = SHOWN_MAX) -> str:
    """:func:`shown`, HTML-escaped (quotes too: safe in text and in attributes)."""
    return html.escape(shown(text, limit), quote=True)


_MARKDOWN_SPECIALS = re.compile(r"([\\`*_\[\]<>#|~&])")


def for_markdown(text: str, limit: int | None = SHOWN_MAX) -> str:
    """:func:`shown`, with Markdown's (and inline HTML's) specials backslash-escaped, so a
    name is shown as written: no emphasis, links, table cells or tags."""
    return _MARKDOWN_SPECIALS.sub(r"\\\1", shown(text, limit))


# -- in files ------------------------------------------------------------------------------

_SURROGATE = re.compile("[\ud800-\udfff]")


def readable(text: str) -> str:
    """``text`` as valid UTF-8: each lone surrogate (an undecodable byte) as ``\\xNN``
    (``\\uDNNN`` for one that stands for no byte); everything else as it is."""
    return _SURROGATE.sub(lambda m: _escaped(m.group()), text)


def is_readable(text: str) -> bool:
    """Whether ``text`` is valid UTF-8 as it is (no undecodable bytes)."""
    return _SURROGATE.search(text) is None


def path_fields(path: str) -> dict[str, str]:
    """``path`` for a record: ``{"path": readable}``, plus ``"path_bytes"`` (base64 of the
    exact bytes) when the name is not valid UTF-8."""
    if is_readable(path):
        return {"path": path}
    return {"path": readable(path), "path_bytes": base64.b64encode(to_bytes(path)).decode()}


def original_path(record: dict[str, Any]) -> str:
    """The name a record was written for (undecodable bytes as surrogates again), from
    ``path_bytes`` when it is there and valid, else ``path``."""
    encoded = record.get("path_bytes")
    if isinstance(encoded, str) and encoded:
        try:
            return os.fsdecode(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError):
            pass
    return str(record.get("path", ""))


def clean(value: Any) -> Any:
    """``value`` (a record: dicts, lists, strings, numbers) with every string
    :func:`readable`, so it encodes as valid UTF-8."""
    if isinstance(value, str):
        return readable(value)
    if isinstance(value, dict):
        return {clean(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value


def for_record(record: dict[str, Any]) -> dict[str, Any]:
    """A record as it goes into a file: its ``path`` through :func:`path_fields` (right
    after it), every other string :func:`readable`."""
    if not isinstance(record.get("path"), str):
        return dict(clean(record))
    out: dict[str, Any] = {}
    for key, value in record.items():
        if key == "path":
            out.update(path_fields(value))
        elif key != "path_bytes":
            out[clean(key)] = clean(value)
    return out


# -- CSV cells -----------------------------------------------------------------------------

_FORMULA = re.compile("'*[=+\\-@\t\r]")
_ESCAPED_FORMULA = re.compile("'+[=+\\-@\t\r]")


def csv_cell(value: Any) -> Any:
    """A CSV cell safe from spreadsheet formulas (OWASP): text that starts with ``=``,
    ``+``, ``-``, ``@``, tab or CR, after any single quotes, gets one more ``'`` in front.
    Numbers pass as they are. :func:`csv_value` undoes it exactly."""
    if isinstance(value, str) and _FORMULA.match(value):
        return "'" + value
    return value


def csv_value(cell: str) -> str:
    """A cell read back: the ``'`` that :func:`csv_cell` added, removed."""
    return cell[1:] if _ESCAPED_FORMULA.match(cell) else cell


# -- display width -------------------------------------------------------------------------


def display_width(text: str) -> int:
    """Columns ``text`` takes on a terminal: East Asian wide and full-width characters
    count 2, combining marks 0, the rest 1."""
    width = 0
    for ch in text:
        if unicodedata.combining(ch):
            continue
        width += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return width


def fit_left(text: str, width: int) -> str:
    """``text`` padded with spaces to ``width`` columns; a longer one keeps its end, after
    ``...``."""
    if display_width(text) > width:
        tail, used = [], 3
        for ch in reversed(text):
            used += display_width(ch)
            if used > width:
                break
            tail.append(ch)
        text = "..." + "".join(reversed(tail))
    return text + " " * (width - display_width(text))
