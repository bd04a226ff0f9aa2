"""Fonts for panel titles that have the title's letters: never a box for a missing glyph.

Pillow's bundled TrueType font (``ImageFont.load_default(size)``, Aileron) covers ASCII
only: ``Ölberg_café``, ``№`` or ``東京`` would come out as boxes. For a line it lacks letters
of, fontconfig (``fc-match :charset=...``, where it is installed) names a system font that
has them; a letter that neither font has is drawn as its escape (``\\u6771``), which both
have. Whether a font has a letter is read from the font itself: a missing letter renders as
the font's ``.notdef`` glyph (:func:`covers`).
"""

from __future__ import annotations

import subprocess
import unicodedata
from functools import lru_cache

from PIL import ImageFont

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont
#: A code point no font maps (the last private-use one): it renders as ``.notdef``.
_UNMAPPED = "\U0010fffd"


@lru_cache(maxsize=8)
def default_font(size: int) -> Font:
    """Pillow's bundled font at ``size`` px (its bitmap font where FreeType is missing)."""
    return ImageFont.load_default(size)


@lru_cache(maxsize=4096)
def _has_glyph(font: Font, ch: str) -> bool:
    if ch.isspace():
        return True
    mask, notdef = font.getmask(ch), font.getmask(_UNMAPPED)
    return not (mask.size == notdef.size and bytes(mask) == bytes(notdef))


def covers(font: Font, text: str) -> bool:
    """Whether ``font`` has a glyph for every character of ``text`` (white space aside)."""
    return all(_has_glyph(font, ch) for ch in set(text))


@lru_cache(maxsize=64)
def _fontconfig_file(code_points: tuple[int, ...]) -> str | None:
    """The file of the system font fontconfig finds best for these code points, or None
    (no fontconfig, or it failed)."""
    charset = " ".join(f"{c:x}" for c in code_points)
    try:
        found = subprocess.run(
            ["fc-match", "-f", "%{file}", f":charset={charset}"],
            capture_output=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    name = found.stdout.decode("utf-8", "replace").strip()
    return name if found.returncode == 0 and name else None


@lru_cache(maxsize=32)
def _system_font(path: str, size: int) -> Font | None:
    try:
        return ImageFont.truetype(path, size)
    except (OSError, ValueError):
        return None


def title_font(line: str, size: int) -> tuple[Font, str]:
    """The font to draw ``line`` with at ``size`` px, and the text to draw: ``line`` itself
    (in NFC) when a font has all its letters, else with each letter the chosen font lacks
    written as ``\\uNNNN``."""
    text = unicodedata.normalize("NFC", line)
    font = default_font(size)
    missing = sorted({ord(ch) for ch in text if not _has_glyph(font, ch)})
    if not missing:
        return font, text
    path = _fontconfig_file(tuple(missing[:64]))
    system = _system_font(path, size) if path else None
    if system is not None and covers(system, "\\u0123456789abcdef"):
        lacking = sum(not _has_glyph(system, chr(c)) for c in missing)
        if lacking < len(missing):
            font = system
    return font, "".join(ch if _has_glyph(font, ch) else _escape(ch) for ch in text)


def _escape(ch: str) -> str:
    code = ord(ch)
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
