"""How a results file's lines are written as bytes and read back: JSON lines or CSV, and the
file split into numbered entries (a record, the CSV column names, the header line of a file
written before the description moved beside it, or an unfinished chunk).
:mod:`scenecam_edge.results_file` owns the file itself (the lock, the description beside it,
resuming, appending whole lines).

A JSON-lines file holds records only and a CSV file starts with its column names, so both
open in any reader. Files of earlier versions started with a header line (JSON lines:
``{"scenecam_edge_results": 1, ...}``; CSV: ``# scenecam-edge results {...}`` before the
column names); they are read here as *legacy* entries and rewritten by the results file."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeAlias

from . import names
from .errors import SceneCamError

#: Results file formats.
OutputFormat: TypeAlias = Literal["jsonl", "csv"]
#: The CSV columns before the one probability column per class (named ``p_<class>``).
CSV_COLUMNS = ("path", "label", "index", "confidence", "error", "heatmap")
#: The last CSV column (and a JSON key only where needed): the exact bytes of a name that is
#: not valid UTF-8, in base64 (see :mod:`scenecam_edge.names`); empty for the others.
PATH_BYTES = "path_bytes"
HEADER_KEY = "scenecam_edge_results"
#: How a header line of an earlier version starts, per format.
JSON_HEADER_PREFIX = b'{"' + HEADER_KEY.encode()
CSV_HEADER_PREFIX = b"# scenecam-edge results "
#: Longest header line (or description) read (an identity is a few hundred bytes).
MAX_HEADER_BYTES = 1 << 20
#: How a JSON-lines record starts.
RECORD_PREFIX = b'{"path": '


def legacy_kind(first_line: bytes) -> OutputFormat | None:
    """The format whose earlier-version header line ``first_line`` is, or None."""
    if first_line.startswith(JSON_HEADER_PREFIX):
        return "jsonl"
    if first_line.startswith(CSV_HEADER_PREFIX):
        return "csv"
    return None


def describe(fmt: OutputFormat) -> str:
    return "CSV" if fmt == "csv" else "JSON lines"


class ResultsMismatch(SceneCamError):
    """The results file is not one this run may append to (another format, model or options,
    or not a results file at all)."""


def format_for(path: Path) -> OutputFormat | None:
    """The format a file name asks for: ``.csv`` or ``.jsonl``/``.ndjson``/``.json``; None
    for any other name."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    return None


@dataclass(frozen=True)
class Entry:
    number: int  # 1-based record number in the file
    start: int  # byte offset
    raw: bytes
    record: dict[str, Any] | None  # None: unparseable
    header: bool = False  # the CSV column names, or a legacy header line
    legacy: bool = False  # an earlier version's header line (record: what it says)


class LineFormat:
    """One format's lines for a model's classes: encoding records and the header, and
    reading a file back as :class:`Entry` items."""

    def __init__(self, fmt: OutputFormat, class_names: Sequence[str]) -> None:
        if fmt not in ("jsonl", "csv"):
            raise ValueError(f"format must be 'jsonl' or 'csv', not {fmt!r}")
        self.format = fmt
        self.class_names = tuple(class_names)
        probabilities = tuple(f"p_{name}" for name in self.class_names)
        self.columns = (*CSV_COLUMNS, *probabilities, PATH_BYTES)

    # -- writing -------------------------------------------------------------------------

    def columns_bytes(self) -> bytes:
        """What a new file starts with: CSV's column names; nothing for JSON lines."""
        return b"" if self.format == "jsonl" else csv_line(list(self.columns))

    def record_bytes(self, record: dict[str, Any]) -> bytes:
        """One record as one whole line (CSV: one row, text fields quoted), its path and
        text as :mod:`scenecam_edge.names` writes them into files."""
        record = names.for_record(record)
        if self.format == "jsonl":
            return json_line(record)
        probabilities = record.get("probabilities") or {}
        cells = {
            "path": record["path"],
            "label": record.get("label", ""),
            "index": record.get("index", ""),
            "confidence": record.get("confidence", ""),
            "error": record.get("error") or "",
            "heatmap": record.get("heatmap") or "",
            **{f"p_{name}": probabilities.get(name, "") for name in self.class_names},
            PATH_BYTES: record.get(PATH_BYTES, ""),
        }
        return csv_line([cells.get(column, "") for column in self.columns])

    # -- reading -------------------------------------------------------------------------

    def kind(self) -> str:
        """What one record of this format is, for messages."""
        return (
            "JSON record" if self.format == "jsonl" else f"CSV row with {len(self.columns)} columns"
        )

    def looks_torn(self, entry: Entry) -> bool:
        """Whether an unfinished last chunk is the start of a line this format writes (or,
        first in the file, of an earlier version's header line)."""
        raw = entry.raw
        if entry.number == 1:
            legacy = JSON_HEADER_PREFIX if self.format == "jsonl" else CSV_HEADER_PREFIX
            if legacy.startswith(raw) or raw.startswith(legacy):
                return True
            if self.format == "csv":
                return self.columns_bytes().startswith(raw)
        if self.format == "jsonl":
            return raw.startswith(RECORD_PREFIX) or RECORD_PREFIX.startswith(raw)
        return True

    def entries(self, path: Path) -> Iterator[Entry]:
        """The file's entries in order; :class:`ResultsMismatch` for a file of another
        format, or with other columns."""
        with open(path, "rb") as fh:
            first = fh.readline(MAX_HEADER_BYTES)
            legacy = self._legacy_entry(path, first)
            if legacy is not None:
                yield legacy
                offset, number = len(first), 1
            else:
                fh.seek(0)
                offset, number = 0, 0
            if self.format == "jsonl":
                yield from self._json_entries(fh, offset, number)
            else:
                yield from self._csv_entries(path, fh, offset, number)

    def _legacy_entry(self, path: Path, raw: bytes) -> Entry | None:
        """The first line when it is an earlier version's header line of this format (None
        when it is not one; a refusal naming the format when it is the other's, never
        quoting the file's content)."""
        other = legacy_kind(raw)
        if other is None or not raw.endswith(b"\n"):
            return None
        if other != self.format:
            raise ResultsMismatch(
                path,
                f"is a {describe(other)} results file; this run writes {describe(self.format)} "
                "(the format follows --out's extension, or --csv/--jsonl); choose another --out",
            )
        text = raw[len(CSV_HEADER_PREFIX) :] if self.format == "csv" else raw
        header = parse_json(text, HEADER_KEY)
        if header is None:
            raise ResultsMismatch(path, "has a damaged results header; not appending to it")
        return Entry(1, 0, raw, header, header=True, legacy=True)

    @staticmethod
    def _json_entries(fh: io.BufferedReader, offset: int, before: int) -> Iterator[Entry]:
        for number, raw in enumerate(fh, before + 1):
            start, offset = offset, offset + len(raw)
            if not raw.strip():
                continue
            yield Entry(number, start, raw, parse_json(raw) if raw.endswith(b"\n") else None)

    def _csv_entries(
        self, path: Path, fh: io.BufferedReader, offset: int, before: int
    ) -> Iterator[Entry]:
        start, number = offset, before
        columns_at = before + 1  # the column names come first (after a legacy header)
        chunk = b""
        for raw in fh:
            if not chunk:
                start = offset
            chunk += raw
            offset += len(raw)
            # A record ends at a newline outside quotes (quotes inside fields are doubled).
            if raw.endswith(b"\n") and chunk.count(b'"') % 2 == 0:
                number += 1
                yield self._csv_entry(path, number, start, chunk, number == columns_at)
                chunk = b""
        if chunk:
            yield Entry(number + 1, start, chunk, None)

    def _csv_entry(self, path: Path, number: int, start: int, chunk: bytes, columns: bool) -> Entry:
        text = chunk.decode("utf-8", "surrogateescape")
        row = next(csv.reader(io.StringIO(text, newline="")), [])
        if columns:
            if tuple(row) == self.columns[:-1]:  # written before the path_bytes column
                self.columns = tuple(row)
            if tuple(row) != self.columns:
                raise ResultsMismatch(
                    path,
                    f"has {len(row)} columns of other names; this run writes "
                    f"{len(self.columns)} (another model? choose another --out)",
                )
            return Entry(number, start, chunk, {}, header=True)
        if len(row) != len(self.columns):
            return Entry(number, start, chunk, None)
        cells = (names.csv_value(cell) for cell in row)
        return Entry(number, start, chunk, dict(zip(self.columns, cells, strict=True)))


def json_line(record: Mapping[str, Any]) -> bytes:
    """One JSON line, valid UTF-8 (undecodable bytes as ``\\xNN``: see ``names``)."""
    return (json.dumps(names.clean(dict(record))) + "\n").encode("utf-8")


def csv_line(row: list[Any]) -> bytes:
    """One CSV row, valid UTF-8, each text cell safe from spreadsheet formulas."""
    buffer = io.StringIO()
    # Every text field quoted: a name holding CR, LF, quotes or commas reads back whole
    # (the minimal quoting of Python's csv leaves a lone CR unquoted).
    cells = [names.csv_cell(names.clean(cell)) for cell in row]
    csv.writer(buffer, lineterminator="\n", quoting=csv.QUOTE_NONNUMERIC).writerow(cells)
    return buffer.getvalue().encode("utf-8")


def parse_json(raw: bytes, key: str = "path") -> dict[str, Any] | None:
    """A JSON object holding ``key`` (a string path for records), else None."""
    try:
        record = json.loads(raw.decode("utf-8", "surrogateescape"))
    except (ValueError, RecursionError):
        return None
    if not isinstance(record, dict) or key not in record:
        return None
    if key == "path" and not isinstance(record["path"], str):
        return None
    return record
