"""Batches: many images through one loaded model, streaming, in bounded memory.

Two layers, both generators:

* :func:`classify_stream` (and :func:`classify_batches`, the same grouped per inference batch):
  any iterable of inputs (paths, PIL images, uint8 arrays or
  :class:`~scenecam_edge.sources.SourceItem`) in, one result per input out, in input order.
  A pool of threads decodes ahead of the model (PIL, OpenCV and onnxruntime release the GIL)
  through a bounded window of ``prefetch`` inputs, so memory holds a few batches of pixels
  however long the stream is. An input that cannot be read gives an :class:`ImageError`
  (yielded, not raised) naming it and the reason, and the stream goes on.
* :class:`BatchJob`: a resumable job over such a stream that appends one record per input to
  a :class:`ResultsFile` (JSON lines or CSV), one write per inference batch, and optionally
  saves each image's heatmap. A rerun with the same results file skips every input the file
  already holds; a torn last line (a run killed mid-write) is dropped first.

Each call owns its thread pool, so any number of threads may run streams on one ``SceneCam``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import stat
import tempfile
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeAlias

import numpy as np

from .errors import ImageError, SceneCamError
from .fileio import write_bytes_atomic, write_png_atomic
from .images import ImageInput, describe
from .model import DEFAULT_BATCH, ExplainOptions, SceneCam
from .outputs import OutputNamer
from .results import Classification, Explanation
from .session import available_cpus
from .sources import SourceItem

log = logging.getLogger(__name__)

#: What a stream yields per input: a classification (an explanation when explaining), or the
#: error that says why the input could not be read.
BatchResult: TypeAlias = "Classification | ImageError"
#: What a stream takes per input.
BatchInput: TypeAlias = "ImageInput | SourceItem"
#: Results file formats.
OutputFormat: TypeAlias = Literal["jsonl", "csv"]
#: Heatmap files: the overlay as PNG, the raw CAM as .npy, or both.
HeatmapFormat: TypeAlias = Literal["png", "npy", "both"]
HEATMAP_FORMATS: tuple[HeatmapFormat, ...] = ("png", "npy", "both")

#: The CSV columns before the one probability column per class (named ``p_<class>``).
CSV_COLUMNS = ("path", "label", "index", "confidence", "error", "heatmap")

_Decoded: TypeAlias = "np.ndarray | ImageError"


def default_workers() -> int:
    """Decoding threads when none are asked for: decoding a photo costs a small fraction of
    its inference, so a few threads keep the model fed."""
    return max(1, min(4, available_cpus()))


# -- the stream ------------------------------------------------------------------------------


def classify_batches(
    model: SceneCam,
    inputs: Iterable[BatchInput],
    *,
    batch_size: int = DEFAULT_BATCH,
    explain: ExplainOptions | None = None,
    workers: int | None = None,
    prefetch: int | None = None,
    top_k: int = 3,
) -> Iterator[list[BatchResult]]:
    """Results in input order, one list per inference batch of up to ``batch_size`` inputs.

    ``workers`` decoding threads (default :func:`default_workers`; 0 decodes in the calling
    thread) work through a window of ``prefetch`` inputs (default ``2 * batch_size``) ahead of
    the model. With ``explain`` the results are :class:`Explanation` records. Arguments are
    checked now (ValueError); the work happens as the iterator is consumed, and closing it
    early stops the pool.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    if workers is not None and workers < 0:
        raise ValueError(f"workers must be 0 or more, not {workers}")
    if prefetch is not None and prefetch < 1:
        raise ValueError(f"prefetch must be at least 1, not {prefetch}")
    n_workers = default_workers() if workers is None else workers
    depth = 2 * batch_size if prefetch is None else prefetch
    return _batches(model, iter(inputs), batch_size, explain, n_workers, depth, top_k)


def classify_stream(
    model: SceneCam,
    inputs: Iterable[BatchInput],
    *,
    batch_size: int = DEFAULT_BATCH,
    explain: ExplainOptions | None = None,
    workers: int | None = None,
    prefetch: int | None = None,
    top_k: int = 3,
) -> Iterator[BatchResult]:
    """:func:`classify_batches`, one result at a time."""
    batches = classify_batches(
        model,
        inputs,
        batch_size=batch_size,
        explain=explain,
        workers=workers,
        prefetch=prefetch,
        top_k=top_k,
    )
    return (result for batch in batches for result in batch)


def _batches(
    model: SceneCam,
    inputs: Iterator[BatchInput],
    batch_size: int,
    explain: ExplainOptions | None,
    workers: int,
    depth: int,
    top_k: int,
) -> Iterator[list[BatchResult]]:
    # Classifying needs only the model-sized picture, so the workers resize too; explaining
    # keeps each image at its own size for its heatmap and overlay.
    resize = explain is None
    pool = ThreadPoolExecutor(workers, thread_name_prefix="scenecam-decode") if workers else None
    pending: deque[tuple[str, Future[_Decoded] | _Decoded]] = deque()

    def refill() -> None:
        while len(pending) < depth:
            item = next(inputs, None)
            if item is None:
                return
            name = item.path if isinstance(item, SourceItem) else describe(item)
            if pool is None:
                pending.append((name, _decode(model, item, name, resize)))
            else:
                pending.append((name, pool.submit(_decode, model, item, name, resize)))

    try:
        refill()
        while pending:
            names: list[str] = []
            decoded: list[_Decoded] = []
            while pending and len(decoded) < batch_size:
                name, job = pending.popleft()
                names.append(name)
                decoded.append(job.result() if isinstance(job, Future) else job)
                refill()
            good = [
                (n, d) for n, d in zip(names, decoded, strict=True) if isinstance(d, np.ndarray)
            ]
            predicted = iter(
                model.predict(
                    [d for _, d in good], [n for n, _ in good], top_k=top_k, explain=explain
                )
            )
            yield [d if isinstance(d, ImageError) else next(predicted) for d in decoded]
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _decode(model: SceneCam, item: BatchInput, name: str, resize: bool) -> _Decoded:
    if isinstance(item, SourceItem):
        if item.error is not None:
            return ImageError(item.path, item.error)
        source: ImageInput = item.path
    else:
        source = item
    try:
        image = model.load_image(source)
        return model.to_input(image) if resize else image
    except ImageError as exc:
        return exc
    except Exception as exc:
        # A decoder failing in a way load_image does not foresee must not end a long job: the
        # input gets an error record naming the exception, and the stream goes on.
        log.debug("decoding %s failed", name, exc_info=True)
        return ImageError(name, f"cannot decode ({type(exc).__name__}: {exc})")


# -- the results file ------------------------------------------------------------------------


def result_key(path: str) -> str:
    """The identity of an input in a results file: its path as given, normalised."""
    return os.path.normpath(path)


@dataclass
class PriorResults:
    """What a results file already holds, by :func:`result_key`."""

    done: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    heatmaps: list[str] = field(default_factory=list)
    dropped_torn: bool = False


@dataclass(frozen=True)
class _Entry:
    number: int  # 1-based record number in the file
    start: int  # byte offset
    raw: bytes
    record: dict[str, Any] | None  # None: unparseable
    header: bool = False


class ResultsFile:
    """A JSON-lines or CSV results file that grows by whole lines and can be resumed.

    Appends go through one ``write`` on an ``O_APPEND`` descriptor per batch, so a run killed
    between batches leaves complete lines, and one killed inside a write at worst a torn last
    line, which :meth:`scan` drops before anything is appended.
    """

    def __init__(self, path: Path, fmt: OutputFormat, class_names: Sequence[str]) -> None:
        if fmt not in ("jsonl", "csv"):
            raise ValueError(f"format must be 'jsonl' or 'csv', not {fmt!r}")
        self.path = path
        self.format = fmt
        self.class_names = tuple(class_names)
        self.columns = (*CSV_COLUMNS, *(f"p_{name}" for name in self.class_names))
        self._fd: int | None = None

    # reading

    def scan(self) -> PriorResults:
        """Read the paths already recorded; drop a torn last line (truncating the file).

        Raises :class:`SceneCamError` when the file is not a results file of this format
        (a line in the middle that does not parse, other CSV columns), rather than append
        to it.
        """
        prior = PriorResults()
        if not self.path.exists():
            return prior
        if not self.path.is_file():
            raise SceneCamError(self.path, "is not a regular file")
        good_end = 0
        torn: _Entry | None = None
        for entry in self._entries():
            if torn is not None or (entry.record is None and entry.raw.endswith(b"\n")):
                bad = torn or entry
                raise SceneCamError(
                    self.path,
                    f"record {bad.number} is not a {self._kind()}; "
                    "not appending to it (choose another --out)",
                )
            if entry.record is None:  # the last chunk, without its newline: a torn write
                torn = entry
                continue
            good_end = entry.start + len(entry.raw)
            if entry.header:
                continue
            key = result_key(entry.record["path"])
            if entry.record.get("error"):
                prior.failed.add(key)
            else:
                prior.done.add(key)
            prior.heatmaps.extend(
                str(entry.record[k]) for k in ("heatmap", "cam") if entry.record.get(k)
            )
        if torn is not None:
            if not self._looks_torn(torn):
                raise SceneCamError(
                    self.path,
                    f"ends with something that is not a {self._kind()}; not appending to it",
                )
            log.warning(
                "%s: dropping a torn last line (%d bytes) left by an interrupted run",
                self.path,
                len(torn.raw),
            )
            os.truncate(self.path, good_end)
            prior.dropped_torn = True
        return prior

    def drop_failed(self) -> int:
        """Rewrite the file atomically without its error records; returns how many went."""
        if not self.path.exists():
            return 0
        failed = sum(
            1 for e in self._entries() if e.record and not e.header and e.record.get("error")
        )
        if not failed:
            return 0
        directory = self.path.parent
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=directory)
        try:
            os.fchmod(fd, stat.S_IMODE(os.stat(self.path).st_mode))
            with os.fdopen(fd, "wb") as out:
                for entry in self._entries():
                    if entry.record is not None and (entry.header or not entry.record.get("error")):
                        out.write(entry.raw)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return failed

    def _looks_torn(self, entry: _Entry) -> bool:
        """Whether an unfinished last chunk is the start of a line this class writes."""
        if self.format == "jsonl":
            return entry.raw.startswith(b'{"path": ')
        if entry.number == 1:
            return self._csv_line(list(self.columns)).startswith(entry.raw)
        return True

    def _kind(self) -> str:
        return (
            "JSON record" if self.format == "jsonl" else f"CSV row with {len(self.columns)} columns"
        )

    def _entries(self) -> Iterator[_Entry]:
        with open(self.path, "rb") as fh:
            if self.format == "jsonl":
                yield from self._json_entries(fh)
            else:
                yield from self._csv_entries(fh)

    @staticmethod
    def _json_entries(fh: io.BufferedReader) -> Iterator[_Entry]:
        offset = 0
        for number, raw in enumerate(fh, 1):
            start, offset = offset, offset + len(raw)
            if not raw.strip():
                continue
            yield _Entry(number, start, raw, _parse_json(raw) if raw.endswith(b"\n") else None)

    def _csv_entries(self, fh: io.BufferedReader) -> Iterator[_Entry]:
        offset, start, number = 0, 0, 0
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
        if number == 1:
            if tuple(row) != self.columns:
                raise SceneCamError(
                    self.path,
                    f"has the columns {','.join(row)[:200]}; this run writes "
                    f"{','.join(self.columns)} (another model or format? choose another --out)",
                )
            return _Entry(number, start, chunk, {}, header=True)
        if len(row) != len(self.columns):
            return _Entry(number, start, chunk, None)
        record: dict[str, Any] = dict(zip(self.columns, row, strict=True))
        return _Entry(number, start, chunk, record)

    # writing

    def open(self) -> None:
        """Open for appending (creating the file, and the CSV header, when needed)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        if self.format == "csv" and os.fstat(self._fd).st_size == 0:
            self._write(self._csv_line(list(self.columns)))

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

    def _write(self, data: bytes) -> None:
        if self._fd is None:
            raise RuntimeError(f"{self.path} is not open for appending")
        view = memoryview(data)
        while view:  # a regular file takes it in one call; loop in case it does not
            written = os.write(self._fd, view)
            view = view[written:]

    @staticmethod
    def _json_line(record: dict[str, Any]) -> bytes:
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
        csv.writer(buffer, lineterminator="\n").writerow(row)
        return buffer.getvalue().encode("utf-8", "surrogateescape")


def _parse_json(raw: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(raw.decode("utf-8", "surrogateescape"))
    except ValueError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("path"), str):
        return None
    return record


# -- heatmap files ---------------------------------------------------------------------------


class HeatmapSaver:
    """Saves each explanation's heatmap under one folder with safe, distinct names.

    ``png``: the overlay (heatmap in JET colours over the image) as ``<stem>.cam.png``;
    ``npy``: the raw CAM (float32, the features' resolution) as ``<stem>.cam.npy``; ``both``:
    the two, with the same stem. Names already used by ``taken`` (an earlier run's heatmaps)
    are never reused.
    """

    def __init__(self, directory: Path, fmt: HeatmapFormat, taken: Iterable[str] = ()) -> None:
        if fmt not in HEATMAP_FORMATS:
            raise ValueError(f"heatmap format must be one of {HEATMAP_FORMATS}, not {fmt!r}")
        self.directory = directory
        self.format = fmt
        self._root = os.path.realpath(directory)
        reserved = [sib for p in taken for sib in (p, _sibling(p, ".png"), _sibling(p, ".npy"))]
        suffix = ".cam.npy" if fmt == "npy" else ".cam.png"
        self._namer = OutputNamer(directory, suffix, reserved)

    def contains(self, path: str) -> bool:
        """Whether ``path`` lies inside the heatmap folder (such inputs are not classified)."""
        real = os.path.realpath(path)
        return real == self._root or real.startswith(self._root + os.sep)

    def save(self, result: Explanation) -> dict[str, str]:
        """Write the files; returns ``{"heatmap": path}`` (and ``"cam"`` for the .npy with
        ``both``) to add to the result's record."""
        first = self._namer.path_for(result.source)
        written: dict[str, str] = {}
        if self.format in ("png", "both"):
            write_png_atomic(first, result.overlay)
            written["heatmap"] = str(first)
        if self.format in ("npy", "both"):
            target = first if self.format == "npy" else first.with_suffix(".npy")
            buffer = io.BytesIO()
            np.save(buffer, np.asarray(result.cam, dtype=np.float32), allow_pickle=False)
            write_bytes_atomic(target, buffer.getvalue())
            written["heatmap" if self.format == "npy" else "cam"] = str(target)
        return written


def _sibling(path: str, suffix: str) -> str:
    return str(Path(path).with_suffix(suffix))


# -- the job ---------------------------------------------------------------------------------


@dataclass
class JobCounts:
    """What a job did, so far. ``skipped`` counts inputs the results file already held or
    that came twice; ``skipped_failed`` those of them that failed in an earlier run;
    ``excluded`` inputs inside the heatmap folder."""

    done: int = 0
    failed: int = 0
    skipped: int = 0
    skipped_failed: int = 0
    excluded: int = 0
    retried: int = 0
    dropped_torn: bool = False


class BatchJob:
    """Classify a stream of inputs into a results file, resumably.

    >>> job = BatchJob(model, ResultsFile(Path("out.jsonl"), "jsonl", model.class_names))
    >>> for records in job.run(iter_sources(["photos/"])):
    ...     pass  # one list of written records per inference batch
    >>> job.counts
    """

    def __init__(
        self,
        model: SceneCam,
        results: ResultsFile,
        *,
        batch_size: int = DEFAULT_BATCH,
        workers: int | None = None,
        explain: ExplainOptions | None = None,
        heatmaps: tuple[Path, HeatmapFormat] | None = None,
        retry_failed: bool = False,
        top_k: int = 3,
    ) -> None:
        if heatmaps is not None and explain is None:
            raise ValueError("saving heatmaps needs explain options")
        self.model = model
        self.results = results
        self.batch_size = batch_size
        self.workers = workers
        self.explain = explain
        self.heatmaps = heatmaps
        self.retry_failed = retry_failed
        self.top_k = top_k
        self.counts = JobCounts()

    def run(self, sources: Iterable[SourceItem]) -> Iterator[list[dict[str, Any]]]:
        """Process ``sources``; yields each batch's records once they are written."""
        prior = self.results.scan()
        self.counts.dropped_torn = prior.dropped_torn
        if self.retry_failed:
            self.counts.retried = self.results.drop_failed()
            prior.failed.clear()
        saver = (
            HeatmapSaver(self.heatmaps[0], self.heatmaps[1], prior.heatmaps)
            if self.heatmaps is not None
            else None
        )
        seen = prior.done | prior.failed
        failed_before = prior.failed
        prior.heatmaps.clear()
        prior.done.clear()

        def fresh() -> Iterator[SourceItem]:
            for item in sources:
                key = result_key(item.path)
                if key in seen:
                    self.counts.skipped += 1
                    self.counts.skipped_failed += key in failed_before
                elif saver is not None and item.error is None and saver.contains(item.path):
                    self.counts.excluded += 1
                else:
                    seen.add(key)
                    yield item

        self.results.open()
        try:
            for batch in classify_batches(
                self.model,
                fresh(),
                batch_size=self.batch_size,
                explain=self.explain,
                workers=self.workers,
                top_k=self.top_k,
            ):
                records = [self._record(result, saver) for result in batch]
                self.results.append(records)
                yield records
        finally:
            self.results.close()

    def _record(self, result: BatchResult, saver: HeatmapSaver | None) -> dict[str, Any]:
        if isinstance(result, ImageError):
            self.counts.failed += 1
            return {"path": result.subject, "error": result.reason}
        record = result.to_dict()
        if saver is not None and isinstance(result, Explanation):
            record.update(saver.save(result))
        self.counts.done += 1
        return record
