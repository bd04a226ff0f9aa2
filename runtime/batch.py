"""Batch jobs: many images through one loaded model into a resumable results file.

:class:`BatchJob` runs a stream of inputs (:mod:`scenecam_edge.stream`) and appends one
record per input to a :class:`~scenecam_edge.results_file.ResultsFile` (JSON lines or CSV),
one write per inference batch, optionally saving each image's heatmap
(:mod:`scenecam_edge.heatmaps`) first. A rerun with the same results file skips every input
the file already holds; a torn last line (a run killed mid-write) is dropped first.

Each batch's heatmaps and its line are written as one step, and a failed write removes the
batch's heatmaps, so no heatmap is left without its record. With ``handle_signals``, SIGINT
and SIGTERM are noted when they arrive and acted on at the next safe point (before the next
input is taken, after a batch is written): an exception raised at an arbitrary instruction
could land inside the decoding pool's or a lock's bookkeeping and leave the process unable
to exit. While the job waits for its next input (a pipe that may stay silent), or on a
second signal, it interrupts at once.

The stream engine's names stay importable from here (``classify_stream``, ...).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from .errors import ImageError
from .heatmaps import HEATMAP_FORMATS, HeatmapFormat, HeatmapSaver, remove
from .model import SceneCam
from .options import ExplainOptions
from .results import Explanation
from .results_file import CSV_COLUMNS, OutputFormat, PriorResults, ResultsFile, result_key
from .sources import SourceItem
from .stream import (
    DEFAULT_BATCH,
    DEFAULT_WINDOW_BYTES,
    BatchInput,
    BatchResult,
    classify_batches,
    classify_stream,
    default_workers,
)

__all__ = [
    "CSV_COLUMNS",
    "HEATMAP_FORMATS",
    "BatchInput",
    "BatchJob",
    "BatchResult",
    "HeatmapFormat",
    "HeatmapSaver",
    "Interrupted",
    "JobCounts",
    "OutputFormat",
    "ResultsFile",
    "classify_batches",
    "classify_stream",
    "default_workers",
    "heeded",
]


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived during a job run with ``handle_signals``."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def heeded(signals: Iterable[int]) -> tuple[int, ...]:
    """Those of ``signals`` the process does not ignore. One ignored when the process started
    (a job started in the background by a script, or under ``nohup``) stays ignored: its
    parent asked for that, and a handler of ours would undo it."""
    return tuple(s for s in signals if signal.getsignal(s) != signal.SIG_IGN)


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
    migrated: bool = False


class BatchJob:
    """Classify a stream of inputs into a results file, resumably.

    >>> job = BatchJob(model, ResultsFile(Path("out.jsonl"), "jsonl", model.class_names))
    >>> for records in job.run(iter_sources(["photos/"])):
    ...     pass  # one list of written records per inference batch
    >>> job.counts

    ``restart`` empties the results file first; otherwise a file written with another
    model or other options is refused (:class:`~scenecam_edge.results_file.ResultsMismatch`),
    and one another process is writing gives
    :class:`~scenecam_edge.filelock.ResultsBusy`. ``handle_signals`` (main thread only)
    turns SIGINT and SIGTERM into :class:`Interrupted` at the next safe point: before the
    next input is taken or after the batch at hand is written.
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
        restart: bool = False,
        top_k: int = 3,
        window_bytes: int = DEFAULT_WINDOW_BYTES,
        handle_signals: bool = False,
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
        self.restart = restart
        self.top_k = top_k
        self.window_bytes = window_bytes
        self.handle_signals = handle_signals
        self.counts = JobCounts()
        results.identity = results.normalised(self.identity())
        self._pending_signal: int | None = None
        self._waiting_for_input = False  # where a signal may interrupt at once

    def identity(self) -> dict[str, Any]:
        """What the results depend on: the model and the options that change a record."""
        explain = self.explain
        return {
            "model": self.model.manifest.name,
            "sha256": self.model.manifest.files.get("model.onnx", ""),
            "options": {
                "top_k": self.top_k,
                "max_pixels": self.model.max_pixels,
                # only when on, so results files written without it stay resumable
                **({"tta": True} if self.model.tta else {}),
                "explain": None
                if explain is None
                else {
                    # the class name (files of earlier versions hold its index: still read)
                    "target": None
                    if explain.target is None
                    else self.model.class_names[explain.target],
                    "method": explain.method,
                    "target_space": explain.target_space,
                    "alpha": explain.alpha,
                    "max_channels": explain.max_channels,
                    # only when named, so results files of the default layer stay resumable
                    **({"layer": explain.layer} if explain.layer is not None else {}),
                },
                "heatmaps": None if self.heatmaps is None else self.heatmaps[1],
            },
        }

    def run(self, sources: Iterable[SourceItem]) -> Iterator[list[dict[str, Any]]]:
        """Process ``sources``; yields each batch's records once they are written."""
        with self.results.locked(), self._signals():
            if self.restart:
                self.results.restart()
            prior = self.results.scan()
            yield from self._run(sources, prior)

    def _run(
        self, sources: Iterable[SourceItem], prior: PriorResults
    ) -> Iterator[list[dict[str, Any]]]:
        self.counts.dropped_torn = prior.dropped_torn
        self.counts.migrated = prior.migrated
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
        cwd = os.getcwd()
        # Paths are written as given, unless the file's relative paths are relative to
        # another folder: then they are written absolute.
        absolute = os.path.realpath(prior.base) != os.path.realpath(cwd)

        def fresh() -> Iterator[SourceItem]:
            for item in self._taken(sources):
                key = result_key(item.path, cwd)
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
                window_bytes=self.window_bytes,
                top_k=self.top_k,
            ):
                yield self._write(batch, saver, absolute)
                self._stop_if_signalled()
            self._stop_if_signalled()
        finally:
            self.results.close()

    def _taken(self, sources: Iterable[SourceItem]) -> Iterator[SourceItem]:
        """``sources`` one by one, stopping first if a signal is pending."""
        items = iter(sources)
        while True:
            self._stop_if_signalled()
            self._waiting_for_input = True
            try:
                item = next(items, None)
            finally:
                self._waiting_for_input = False
            if item is None:
                return
            yield item

    def _write(
        self, batch: list[BatchResult], saver: HeatmapSaver | None, absolute: bool
    ) -> list[dict[str, Any]]:
        """Heatmaps, then the batch's lines; a failure removes the heatmaps again."""
        records: list[dict[str, Any]] = []
        try:
            for result in batch:
                records.append(self._record(result, saver, absolute))
            self.results.append(records)
        except BaseException:
            remove(str(r[k]) for r in records for k in ("heatmap", "cam") if r.get(k))
            raise
        for record in records:
            if record.get("error"):
                self.counts.failed += 1
            else:
                self.counts.done += 1
        return records

    @staticmethod
    def _record(result: BatchResult, saver: HeatmapSaver | None, absolute: bool) -> dict[str, Any]:
        if isinstance(result, ImageError):
            record: dict[str, Any] = {"path": result.subject, "error": result.reason}
        else:
            record = result.to_dict()
            if saver is not None and isinstance(result, Explanation):
                record.update(saver.save(result))
        if absolute and not os.path.isabs(record["path"]):
            record["path"] = os.path.abspath(record["path"])
        return record

    # -- signals -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, frame: FrameType | None) -> None:
            # at once while waiting for input, or on a second signal (the user insists);
            # else at the next safe point
            if self._waiting_for_input or self._pending_signal is not None:
                self._waiting_for_input = False
                raise Interrupted(self._pending_signal or signum)
            self._pending_signal = signum

        previous = {s: signal.signal(s, handler) for s in heeded((signal.SIGINT, signal.SIGTERM))}
        try:
            yield
        finally:
            for signum, old in previous.items():
                signal.signal(signum, old)

    def _stop_if_signalled(self) -> None:
        if self._pending_signal is not None:
            signum, self._pending_signal = self._pending_signal, None
            raise Interrupted(signum)
