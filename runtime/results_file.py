"""The resumable results file of a batch: one writer, whole lines, a description beside it
that says what wrote it.

* **One writer.** :meth:`ResultsFile.locked` takes an exclusive ``flock`` on ``<out>.lock``
  (holding the writer's pid) for the whole run; a second run gets :class:`ResultsBusy`
  naming that pid.
* **Whole lines.** Appends go through one ``write`` on an ``O_APPEND`` descriptor per batch;
  a failed write (disk full, size limit) is cut back to the last whole line, and a run killed
  inside a write leaves at worst a torn last line, which :meth:`ResultsFile.scan` drops.
* **A description beside it.** ``<out>.meta.json`` (written atomically before the file's
  first line) records the format, the model (name, sha256 of ``model.onnx``), the options
  that change results and the folder relative paths are relative to. A rerun with a
  different model or options gets :class:`ResultsMismatch` instead of silently skipping.
  The file itself holds records only (CSV: after its column names), so ``csv.DictReader``,
  ``pandas.read_csv``, ``pandas.read_json(lines=True)`` and DuckDB read it as it is. A file
  of an earlier version, with the description as its first line, is resumed and rewritten
  in this form (:attr:`PriorResults.migrated`). The lines themselves, written and read
  back, are :mod:`scenecam_edge.results_format`'s.
* **Keys.** An input is known by its resolved path (symbolic links and ``..`` resolved,
  relative paths taken from the header's folder), however it was spelled.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .fileio import refuse_symlink, temporary_beside, write_bytes_atomic
from .filelock import exclusive_lock
from .names import original_path
from .results_format import (
    CSV_COLUMNS,
    HEADER_KEY,
    MAX_HEADER_BYTES,
    Entry,
    LineFormat,
    OutputFormat,
    ResultsMismatch,
    describe,
    format_for,
    legacy_kind,
)

__all__ = [
    "CSV_COLUMNS",
    "OutputFormat",
    "PriorResults",
    "ResultsFile",
    "ResultsMismatch",
    "format_for",
    "result_key",
]


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
    #: an earlier version's file (its description as its first line) was rewritten
    migrated: bool = False


class ResultsFile:
    """A JSON-lines or CSV results file that grows by whole lines and can be resumed.

    ``identity`` (the model and the options that change results) goes into the description
    of a new file (:attr:`meta_path`) and must match the description of an existing one.
    """

    def __init__(
        self,
        path: Path,
        fmt: OutputFormat,
        class_names: Sequence[str],
        identity: Mapping[str, Any] | None = None,
    ) -> None:
        self.lines = LineFormat(fmt, class_names)
        self.path = path
        self.format = fmt
        self.class_names = self.lines.class_names
        self.columns = self.lines.columns
        self.identity = self.normalised(identity or {})
        self.base = os.getcwd()  # what relative paths in the file are relative to
        self._fd: int | None = None

    @staticmethod
    def normalised(identity: Mapping[str, Any]) -> dict[str, Any]:
        """``identity`` as it reads back from JSON (tuples become lists), for comparing."""
        result: dict[str, Any] = json.loads(json.dumps(dict(identity)))
        return result

    @property
    def meta_path(self) -> Path:
        """The description beside the file: ``<out>.meta.json``."""
        return self.path.with_name(self.path.name + ".meta.json")

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    def locked(self) -> contextlib.AbstractContextManager[None]:
        """Hold the exclusive lock on ``<out>.lock`` for the block; :class:`ResultsBusy`
        when another process holds it."""
        return exclusive_lock(self.lock_path, self.path)

    # -- reading ---------------------------------------------------------------------------

    def scan(self) -> PriorResults:
        """Check the description and read the paths already recorded; drop a torn last line
        (truncating the file); rewrite an earlier version's file in today's form. Raises
        :class:`ResultsMismatch` rather than append to a file of another format, model or
        options, or a file that is not a results file."""
        prior = PriorResults(base=self.base)
        refuse_symlink(self.path)
        if not os.path.lexists(self.path):
            return prior
        if not self.path.is_file():
            raise ResultsMismatch(self.path, "is not a regular file")
        if self.path.stat().st_size == 0:
            return prior
        with open(self.path, "rb") as fh:
            first = fh.readline(MAX_HEADER_BYTES)
        legacy = legacy_kind(first) is not None
        if not legacy and first.endswith(b"\n"):  # a whole line of today's form
            prior.base = self._check_description(self._read_description(), self.meta_path)
        good_end = 0
        whole = records = 0
        torn: Entry | None = None
        for entry in self.lines.entries(self.path):
            if torn is not None or (entry.record is None and entry.raw.endswith(b"\n")):
                bad = torn or entry
                raise ResultsMismatch(
                    self.path,
                    f"record {bad.number} is not a {self.lines.kind()}; "
                    "not appending to it (choose another --out)",
                )
            if entry.record is None:  # the last chunk, without its newline: a torn write
                torn = entry
                continue
            good_end = entry.start + len(entry.raw)
            whole += 1
            if entry.legacy:
                prior.base = self._check_description(entry.record, self.path)
            if entry.header:
                continue
            records += 1
            key = result_key(original_path(entry.record), prior.base)
            (prior.failed if entry.record.get("error") else prior.done).add(key)
            prior.heatmaps.extend(
                str(entry.record[k]) for k in ("heatmap", "cam") if entry.record.get(k)
            )
        if torn is not None:
            if not self.lines.looks_torn(torn):
                raise ResultsMismatch(
                    self.path,
                    f"ends with something that is not a {self.lines.kind()}; not appending to it",
                )
            os.truncate(self.path, good_end if records else 0)
            prior.dropped_torn = True
        elif legacy and self.format == "csv" and whole == 1:  # killed between its two lines
            os.truncate(self.path, 0)  # open() starts it over
            prior.dropped_torn = True
        if legacy and self.path.stat().st_size:
            self._migrate(first, prior.base)
            prior.migrated = True
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
        for entry in self.lines.entries(self.path):
            if entry.record is not None and (entry.header or not entry.record.get("error")):
                kept.append(entry.raw)
            else:
                failed += 1
        if failed:
            write_bytes_atomic(self.path, b"".join(kept))
        return failed

    def _read_description(self) -> dict[str, Any]:
        """The description beside the file; :class:`ResultsMismatch` when it is missing,
        damaged or of the other format."""
        meta = self.meta_path
        try:
            with open(meta, "rb") as fh:
                raw = fh.read(MAX_HEADER_BYTES + 1)
        except FileNotFoundError:
            raise ResultsMismatch(
                self.path,
                f"is not a scenecam-edge results file (no {meta.name} beside it says what "
                "wrote it); not appending to it (choose another --out, or --restart to "
                "replace it)",
            ) from None
        except OSError as exc:
            raise ResultsMismatch(meta, f"cannot be read ({exc.strerror})") from None
        try:
            described = json.loads(raw.decode("utf-8", "surrogateescape"))
        except (ValueError, RecursionError):
            described = None
        if not isinstance(described, dict) or described.get(HEADER_KEY) != 1:
            raise ResultsMismatch(
                self.path, f"has a damaged description ({meta.name}); not appending to it"
            )
        theirs = described.get("format")
        if theirs != self.format and theirs in ("csv", "jsonl"):
            raise ResultsMismatch(
                self.path,
                f"is a {describe(theirs)} results file; this run writes {describe(self.format)} "
                "(the format follows --out's extension, or --csv/--jsonl); choose another --out",
            )
        return described

    def _check_description(self, described: dict[str, Any], where: Path) -> str:
        """The description's base folder, once its identity matches this run's."""
        ours = _flatten(self.identity)
        theirs = _flatten({k: described.get(k) for k in self.identity})
        target = theirs.get(_TARGET)
        if type(target) is int and 0 <= target < len(self.class_names):
            theirs[_TARGET] = self.class_names[target]  # earlier versions wrote the index
        differ = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
        # an option unset on one side (explain: off) is said through the other's parts
        differ = [k for k in differ if not any(d.startswith(f"{k}.") for d in differ)]
        if differ:
            raise ResultsMismatch(
                self.path,
                f"was written with {_describe(theirs, differ)}; this run has "
                f"{_describe(ours, differ)}: use --restart to start it over, "
                "or choose another --out",
            )
        base = described.get("base", self.base)
        if not isinstance(base, str) or not os.path.isabs(base):
            what = "results header" if where == self.path else f"description ({where.name})"
            raise ResultsMismatch(self.path, f"has a damaged {what}; not appending to it")
        return base

    def _description(self, base: str) -> dict[str, Any]:
        return {HEADER_KEY: 1, "format": self.format, **self.identity, "base": base}

    def _write_description(self, base: str) -> None:
        text = json.dumps(self._description(base), indent=1) + "\n"
        write_bytes_atomic(self.meta_path, text.encode("utf-8", "surrogateescape"))

    def _migrate(self, first: bytes, base: str) -> None:
        """Rewrite an earlier version's file without its header line, the description
        beside it first: each step atomic, so an interruption leaves a file that resumes."""
        self._write_description(base)
        tmp = temporary_beside(self.path)
        try:
            with open(self.path, "rb") as src, open(tmp, "wb") as dst:
                src.seek(len(first))
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
                dst.flush()
                os.fsync(dst.fileno())
            refuse_symlink(self.path)
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)

    # -- writing -------------------------------------------------------------------------

    def open(self) -> None:
        """Open for appending (creating the file, its description and CSV's column names,
        when needed); never through a symbolic link."""
        refuse_symlink(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            self._fd = os.open(self.path, flags, 0o666)
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, str(self.path)) from None
        if os.fstat(self._fd).st_size == 0:
            self._write_description(self.base)
            self._write(self.lines.columns_bytes())

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        """Append whole lines for ``records`` with one write."""
        if records:
            self._write(b"".join(self.lines.record_bytes(r) for r in records))

    def close(self) -> None:
        if self._fd is not None:
            try:
                os.fsync(self._fd)
            finally:
                os.close(self._fd)
                self._fd = None

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


#: The flattened key of the explained class in a description (a name; an index before).
_TARGET = "options.explain.target"


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
        if value is None or isinstance(value, bool):  # unset (or absent) options say off
            text = "on" if value else "off"
        else:
            text = value if isinstance(value, str) else json.dumps(value)
        parts.append(f"{key.removeprefix('options.')}={text[:70]}")
    return ", ".join(parts) + (", ..." if len(keys) > 4 else "")
