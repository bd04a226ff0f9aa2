"""The resumable results file of a batch: one writer, whole lines, a header that says what
wrote it.

* **One writer.** :meth:`ResultsFile.locked` takes an exclusive ``flock`` on ``<out>.lock``
  (holding the writer's pid) for the whole run; a second run gets :class:`ResultsBusy`
  naming that pid.
* **Whole lines.** Appends go through one ``write`` on an ``O_APPEND`` descriptor per batch;
  a failed write (disk full, size limit) is cut back to the last whole line, and a run killed
  inside a write leaves at worst a torn last line, which :meth:`ResultsFile.scan` drops.
* **A header.** The first line records the model (name, sha256 of ``model.onnx``), the
  options that change results and the folder relative paths are relative to. A rerun with a
  different model or options gets :class:`ResultsMismatch` instead of silently skipping.
  JSON lines: ``{"scenecam_edge_results": 1, ...}``; CSV: a ``# scenecam-edge results {...}``
  line before the column names (``pandas.read_csv(path, skiprows=1)``).
* **Keys.** An input is known by its resolved path (symbolic links and ``..`` resolved,
  relative paths taken from the header's folder), however it was spelled.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeAlias

from .errors import SceneCamError
from .fileio import refuse_symlink, write_bytes_atomic
from .filelock import exclusive_lock

#: Results file formats.
OutputFormat: TypeAlias = Literal["jsonl", "csv"]
#: The CSV columns before the one probability column per class (named ``p_<class>``).
CSV_COLUMNS = ("path", "label", "index", "confidence", "error", "heatmap")
HEADER_KEY = "scenecam_edge_results"
CSV_HEADER_PREFIX = b"# scenecam-edge results "
#: Longest header line read (a manifest's identity is a few hundred bytes).
MAX_HEADER_BYTES = 1 << 20


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


def result_key(path: str, base: str) -> str:
    """The identity of an input: its resolved path, relative ones taken from ``base``."""
    joined = os.path.join(base, path)
    try:
        return os.path.realpath(joined)
    except ValueError:  # a NUL byte (from a --from-list line, say): no file has that name
        return os.path.normpath(joined)


@dataclass
class PriorResults:
    """What a results file already holds, by :func:`result_key`."""

    done: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    heatmaps: list[str] = field(default_factory=list)
    dropped_torn: bool = False
    base: str = ""


@dataclass(frozen=True)
class _Entry:
    number: int  # 1-based record number in the file
    start: int  # byte offset
    raw: bytes
    record: dict[str, Any] | None  # None: unparseable
    header: bool = False


class ResultsFile:
    """A JSON-lines or CSV results file that grows by whole lines and can be resumed.

    ``identity`` (the model and the options that change results) goes into the header of a
    new file and must match the header of an existing one.
    """

    def __init__(
        self,
        path: Path,
        fmt: OutputFormat,
        class_names: Sequence[str],
        identity: Mapping[str, Any] | None = None,
    ) -> None:
        if fmt not in ("jsonl", "csv"):
            raise ValueError(f"format must be 'jsonl' or 'csv', not {fmt!r}")
        self.path = path
        self.format = fmt
        self.class_names = tuple(class_names)
        self.columns = (*CSV_COLUMNS, *(f"p_{name}" for name in self.class_names))
        self.identity = self.normalised(identity or {})
        self.base = os.getcwd()  # what relative paths in the file are relative to
        self._fd: int | None = None

    @staticmethod
    def normalised(identity: Mapping[str, Any]) -> dict[str, Any]:
        """``identity`` as it reads back from JSON (tuples become lists), for comparing."""
        result: dict[str, Any] = json.loads(json.dumps(dict(identity)))
        return result

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    def locked(self) -> contextlib.AbstractContextManager[None]:
        """Hold the exclusive lock on ``<out>.lock`` for the block; :class:`ResultsBusy`
        when another process holds it."""
        return exclusive_lock(self.lock_path, self.path)

    # -- reading ---------------------------------------------------------------------------

    def scan(self) -> PriorResults:
        """Check the header and read the paths already recorded; drop a torn last line
        (truncating the file). Raises :class:`ResultsMismatch` rather than append to a file
        of another format, model or options, or a file that is not a results file."""
        prior = PriorResults(base=self.base)
        refuse_symlink(self.path)
        if not os.path.lexists(self.path):
            return prior
        if not self.path.is_file():
            raise ResultsMismatch(self.path, "is not a regular file")
        if self.path.stat().st_size == 0:
            return prior
        good_end = 0
        whole = 0  # the number of the last whole line
        torn: _Entry | None = None
        for entry in self._entries():
            if torn is not None or (entry.record is None and entry.raw.endswith(b"\n")):
                bad = torn or entry
                raise ResultsMismatch(
                    self.path,
                    f"record {bad.number} is not a {self._kind()}; "
                    "not appending to it (choose another --out)",
                )
            if entry.record is None:  # the last chunk, without its newline: a torn write
                torn = entry
                continue
            good_end = entry.start + len(entry.raw)
            whole = entry.number
            if entry.header:
                if entry.record:
                    prior.base = self._check_header(entry.record)
                continue
            key = result_key(entry.record["path"], prior.base)
            (prior.failed if entry.record.get("error") else prior.done).add(key)
            prior.heatmaps.extend(
                str(entry.record[k]) for k in ("heatmap", "cam") if entry.record.get(k)
            )
        if torn is not None:
            if not self._looks_torn(torn):
                raise ResultsMismatch(
                    self.path,
                    f"ends with something that is not a {self._kind()}; not appending to it",
                )
            header_lines = 2 if self.format == "csv" else 1
            os.truncate(self.path, 0 if torn.number <= header_lines else good_end)
            prior.dropped_torn = True
        elif self.format == "csv" and whole == 1:  # killed between the header's two lines
            os.truncate(self.path, 0)  # open() writes the whole header again
            prior.dropped_torn = True
        return prior

    def restart(self) -> None:
        """Empty the file (the caller holds the lock): the next :meth:`open` starts over."""
        refuse_symlink(self.path)
        if self.path.exists():
            os.truncate(self.path, 0)

    def drop_failed(self) -> int:
        """Rewrite the file atomically without its error records; returns how many went."""
        if not self.path.exists():
            return 0
        kept, failed = [], 0
        for entry in self._entries():
            if entry.record is not None and (entry.header or not entry.record.get("error")):
                kept.append(entry.raw)
            else:
                failed += 1
        if failed:
            write_bytes_atomic(self.path, b"".join(kept))
        return failed

    def _check_header(self, header: dict[str, Any]) -> str:
        """The header's base folder, once its identity matches this run's."""
        ours = _flatten(self.identity)
        theirs = _flatten({k: header.get(k) for k in self.identity})
        differ = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
        if differ:
            raise ResultsMismatch(
                self.path,
                f"was written with {_describe(theirs, differ)}; this run has "
                f"{_describe(ours, differ)}: use --restart to start it over, "
                "or choose another --out",
            )
        base = header.get("base", self.base)
        if not isinstance(base, str) or not os.path.isabs(base):
            raise ResultsMismatch(self.path, "has a damaged results header; not appending to it")
        return base

    def _looks_torn(self, entry: _Entry) -> bool:
        """Whether an unfinished last chunk is the start of a line this class writes."""
        if entry.number == 1:
            return self._header_bytes().startswith(entry.raw)
        if self.format == "jsonl":
            return entry.raw.startswith(b'{"path": ')
        return True

    def _kind(self) -> str:
        return (
            "JSON record" if self.format == "jsonl" else f"CSV row with {len(self.columns)} columns"
        )

    def _entries(self) -> Iterator[_Entry]:
        with open(self.path, "rb") as fh:
            first = fh.readline(MAX_HEADER_BYTES)
            yield self._header_entry(first)
            if self.format == "jsonl":
                yield from self._json_entries(fh, len(first))
            else:
                yield from self._csv_entries(fh, len(first))

    def _header_entry(self, raw: bytes) -> _Entry:
        """The first line: this format's header, torn (None), or a refusal naming what the
        file is instead (never quoting its content)."""
        if not raw.endswith(b"\n"):
            return _Entry(1, 0, raw, None)
        other = "CSV" if raw.startswith(CSV_HEADER_PREFIX) else None
        if raw.startswith(b'{"' + HEADER_KEY.encode()):
            other = "JSON lines"
        mine = "CSV" if self.format == "csv" else "JSON lines"
        if other is None:
            raise ResultsMismatch(
                self.path,
                "is not a scenecam-edge results file (its first line is not a results header); "
                "not appending to it (choose another --out, or --restart to replace it)",
            )
        if other != mine:
            raise ResultsMismatch(
                self.path,
                f"is a {other} results file; this run writes {mine} (the format follows "
                "--out's extension, or --csv/--jsonl); choose another --out",
            )
        text = raw[len(CSV_HEADER_PREFIX) :] if self.format == "csv" else raw
        header = _parse_json(text, HEADER_KEY)
        if header is None:
            raise ResultsMismatch(self.path, "has a damaged results header; not appending to it")
        return _Entry(1, 0, raw, header, header=True)

    @staticmethod
    def _json_entries(fh: io.BufferedReader, offset: int) -> Iterator[_Entry]:
        for number, raw in enumerate(fh, 2):
            start, offset = offset, offset + len(raw)
            if not raw.strip():
                continue
            yield _Entry(number, start, raw, _parse_json(raw) if raw.endswith(b"\n") else None)

    def _csv_entries(self, fh: io.BufferedReader, offset: int) -> Iterator[_Entry]:
        start, number = offset, 1
        chunk = b""
        for raw in fh:
            if not chunk:
                start = offset
            chunk += raw
            offset += len(raw)
            # A record ends at a newline outside quotes (quotes inside fields are doubled).
            if raw.endswith(b"\n") and chunk.count(b'"') % 2 == 0:
                number += 1
                yield self._csv_entry(number, start, chunk)
                chunk = b""
        if chunk:
            yield _Entry(number + 1, start, chunk, None)

    def _csv_entry(self, number: int, start: int, chunk: bytes) -> _Entry:
        text = chunk.decode("utf-8", "surrogateescape")
        row = next(csv.reader(io.StringIO(text, newline="")), [])
        if number == 2:
            if tuple(row) != self.columns:
                raise ResultsMismatch(
                    self.path,
                    f"has {len(row)} columns of other names; this run writes "
                    f"{len(self.columns)} (another model? choose another --out)",
                )
            return _Entry(number, start, chunk, {}, header=True)
        if len(row) != len(self.columns):
            return _Entry(number, start, chunk, None)
        return _Entry(number, start, chunk, dict(zip(self.columns, row, strict=True)))

    # -- writing -------------------------------------------------------------------------

    def open(self) -> None:
        """Open for appending (creating the file, and its header, when needed); never
        through a symbolic link."""
        refuse_symlink(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            self._fd = os.open(self.path, flags, 0o666)
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, str(self.path)) from None
        if os.fstat(self._fd).st_size == 0:
            self._write(self._header_bytes())

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        """Append whole lines for ``records`` with one write."""
        if records:
            encode = self._json_line if self.format == "jsonl" else self._csv_record
            self._write(b"".join(encode(r) for r in records))

    def close(self) -> None:
        if self._fd is not None:
            try:
                os.fsync(self._fd)
            finally:
                os.close(self._fd)
                self._fd = None

    def _header_bytes(self) -> bytes:
        header = {HEADER_KEY: 1, **self.identity, "base": self.base}
        if self.format == "jsonl":
            return self._json_line(header)
        return CSV_HEADER_PREFIX + self._json_line(header) + self._csv_line(list(self.columns))

    def _write(self, data: bytes) -> None:
        if self._fd is None:
            raise RuntimeError(f"{self.path} is not open for appending")
        size = os.fstat(self._fd).st_size
        view = memoryview(data)
        try:
            while view:  # a regular file takes it in one call; loop in case it does not
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as exc:
            # Disk full or over a size limit: cut back to the last whole line.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, size)
            raise OSError(exc.errno, exc.strerror, str(self.path)) from None

    @staticmethod
    def _json_line(record: Mapping[str, Any]) -> bytes:
        return (json.dumps(record) + "\n").encode("utf-8", "surrogateescape")

    def _csv_record(self, record: dict[str, Any]) -> bytes:
        probabilities = record.get("probabilities") or {}
        row = [
            record["path"],
            record.get("label", ""),
            record.get("index", ""),
            record.get("confidence", ""),
            record.get("error") or "",
            record.get("heatmap") or "",
            *(probabilities.get(name, "") for name in self.class_names),
        ]
        return self._csv_line(row)

    @staticmethod
    def _csv_line(row: list[Any]) -> bytes:
        buffer = io.StringIO()
        # Every text field quoted: a name holding CR, LF, quotes or commas reads back whole
        # (the minimal quoting of Python's csv leaves a lone CR unquoted).
        csv.writer(buffer, lineterminator="\n", quoting=csv.QUOTE_NONNUMERIC).writerow(row)
        return buffer.getvalue().encode("utf-8", "surrogateescape")


def _parse_json(raw: bytes, key: str = "path") -> dict[str, Any] | None:
    try:
        record = json.loads(raw.decode("utf-8", "surrogateescape"))
    except (ValueError, RecursionError):
        return None
    if not isinstance(record, dict) or key not in record:
        return None
    if key == "path" and not isinstance(record["path"], str):
        return None
    return record


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested options as dotted keys (``options.explain.method``), to name what differs."""
    if not isinstance(value, dict):
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, item in value.items():
        flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _describe(flat: Mapping[str, Any], keys: list[str]) -> str:
    parts = []
    for key in keys[:4]:
        value = flat.get(key)
        text = value if isinstance(value, str) else json.dumps(value)
        parts.append(f"{key.removeprefix('options.')}={text[:70]}")
    return ", ".join(parts) + (", ..." if len(keys) > 4 else "")
