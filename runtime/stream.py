"""The stream engine: any number of inputs through one model, in input order, in bounded memory.

:func:`classify_batches` (and :func:`classify_stream`, the same one result at a time) take any
iterable of inputs (paths, PIL images, uint8 arrays or :class:`~scenecam_edge.sources.SourceItem`)
and give one result per input, in input order. A pool of threads decodes ahead of the model
(PIL and onnxruntime release the GIL) through a window bounded twice: at most ``prefetch``
inputs, and at most ``window_bytes`` of decoded pixels (an input not decoded yet counts as the
largest seen so far), so memory holds a few batches of pixels however long the stream is and
however large its photos. An input that cannot be read gives an :class:`ImageError` (yielded,
not raised) naming it and the reason, and the stream goes on. A missing optional extra
(:class:`~scenecam_edge.errors.MissingExtraError`: rasterio for a band model's TIFF) is raised:
every input like it would fail alike.

This module sits below :mod:`scenecam_edge.model`: it needs only what :class:`StreamModel`
names, and ``SceneCam`` is one.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol, TypeAlias, overload

import numpy as np

from .errors import ImageError, MissingExtraError
from .images import ImageInput, describe
from .options import ExplainOptions
from .results import Classification, Explanation
from .session import available_cpus
from .sources import SourceItem

log = logging.getLogger(__name__)

#: What a stream yields per input: a classification (an explanation when explaining), or the
#: error that says why the input could not be read.
BatchResult: TypeAlias = "Classification | ImageError"
#: What a stream takes per input.
BatchInput: TypeAlias = "ImageInput | SourceItem"
#: Images per inference batch when none is asked for.
DEFAULT_BATCH = 32
#: Decoded pixels the window may hold ahead of the model (explaining keeps each image at its
#: own size: 60-megapixel photos would otherwise fill gigabytes).
DEFAULT_WINDOW_BYTES = 512 * 1024 * 1024

_Decoded: TypeAlias = "np.ndarray | ImageError"


class StreamModel(Protocol):
    """What the engine needs from a model."""

    def load_image(self, image: ImageInput) -> np.ndarray: ...

    def to_input(self, image: np.ndarray) -> np.ndarray: ...

    @overload
    def predict(
        self,
        decoded: Sequence[np.ndarray],
        sources: Sequence[str],
        *,
        top_k: int = 3,
        explain: None = None,
    ) -> list[Classification]: ...
    @overload
    def predict(
        self,
        decoded: Sequence[np.ndarray],
        sources: Sequence[str],
        *,
        top_k: int = 3,
        explain: ExplainOptions,
    ) -> list[Explanation]: ...


def default_workers() -> int:
    """Decoding threads when none are asked for: decoding a photo costs a small fraction of
    its inference, so a few threads keep the model fed."""
    return max(1, min(4, available_cpus()))


def classify_batches(
    model: StreamModel,
    inputs: Iterable[BatchInput],
    *,
    batch_size: int = DEFAULT_BATCH,
    explain: ExplainOptions | None = None,
    workers: int | None = None,
    prefetch: int | None = None,
    window_bytes: int = DEFAULT_WINDOW_BYTES,
    top_k: int = 3,
) -> Iterator[list[BatchResult]]:
    """Results in input order, one list per inference batch of up to ``batch_size`` inputs.

    ``workers`` decoding threads (default :func:`default_workers`; 0 decodes in the calling
    thread) work through a window of ``prefetch`` inputs (default ``2 * batch_size``) and
    ``window_bytes`` of decoded pixels ahead of the model; a batch is cut short rather than
    exceed the bytes (one image is always let through). With ``explain`` the results are
    :class:`Explanation` records. Arguments are checked now (ValueError); the work happens
    as the iterator is consumed, and closing it early stops the pool.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    if workers is not None and workers < 0:
        raise ValueError(f"workers must be 0 or more, not {workers}")
    if prefetch is not None and prefetch < 1:
        raise ValueError(f"prefetch must be at least 1, not {prefetch}")
    if window_bytes < 1:
        raise ValueError(f"window_bytes must be at least 1, not {window_bytes}")
    n_workers = default_workers() if workers is None else workers
    depth = 2 * batch_size if prefetch is None else prefetch
    window = _Window(model, iter(inputs), explain is None, n_workers, depth, window_bytes)
    return _batches(model, window, batch_size, explain, top_k)


def classify_stream(
    model: StreamModel,
    inputs: Iterable[BatchInput],
    *,
    batch_size: int = DEFAULT_BATCH,
    explain: ExplainOptions | None = None,
    workers: int | None = None,
    prefetch: int | None = None,
    window_bytes: int = DEFAULT_WINDOW_BYTES,
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
        window_bytes=window_bytes,
        top_k=top_k,
    )
    return (result for batch in batches for result in batch)


class _Window:
    """Inputs being decoded or decoded, in input order, bounded in count and in bytes."""

    def __init__(
        self,
        model: StreamModel,
        inputs: Iterator[BatchInput],
        resize: bool,
        workers: int,
        depth: int,
        max_bytes: int,
    ) -> None:
        self.model = model
        self.inputs = inputs
        # Classifying needs only the model-sized picture, so the workers resize too;
        # explaining keeps each image at its own size for its heatmap and overlay.
        self.resize = resize
        self.depth = depth
        self.max_bytes = max_bytes
        self.workers = max(1, workers)
        self.pool = (
            ThreadPoolExecutor(workers, thread_name_prefix="scenecam-decode") if workers else None
        )
        self.pending: deque[tuple[str, Future[_Decoded] | _Decoded]] = deque()
        self.largest = 0  # the largest decoded image so far, in bytes
        self.exhausted = False

    def held(self, taken: int) -> int:
        """Bytes the window holds: decoded images, and the largest size for each one still
        being decoded; plus ``taken``, what the consumer already holds."""
        total = taken
        # Until one image is decoded its size is unknown: the first ones in flight share
        # the window among the decoding threads.
        unknown = self.largest or self.max_bytes // self.workers
        for _, job in self.pending:
            if isinstance(job, Future) and not job.done():
                total += unknown
            else:
                total += _nbytes(job.result() if isinstance(job, Future) else job)
        return total

    def refill(self, taken: int) -> None:
        while not self.exhausted and len(self.pending) < self.depth:
            if (self.pending or taken) and self.held(taken) >= self.max_bytes:
                return
            item = next(self.inputs, None)
            if item is None:
                self.exhausted = True
                return
            name = item.path if isinstance(item, SourceItem) else describe(item)
            if self.pool is None:
                self.pending.append((name, self._decode(item, name)))
            else:
                self.pending.append((name, self.pool.submit(self._decode, item, name)))

    def pop(self) -> tuple[str, _Decoded]:
        name, job = self.pending.popleft()
        result = job.result() if isinstance(job, Future) else job
        self.largest = max(self.largest, _nbytes(result))
        return name, result

    def close(self, failed: bool) -> None:
        if self.pool is not None:
            # On an interrupt, do not wait for decodes in flight: the process is leaving.
            self.pool.shutdown(wait=not failed, cancel_futures=True)

    def _decode(self, item: BatchInput, name: str) -> _Decoded:
        if isinstance(item, SourceItem):
            if item.error is not None:
                return ImageError(item.path, item.error)
            source: ImageInput = item.path
        else:
            source = item
        try:
            image = self.model.load_image(source)
            return self.model.to_input(image) if self.resize else image
        except ImageError as exc:
            return exc
        except MissingExtraError:
            raise  # not this input's fault: every input like it would fail alike
        except Exception as exc:
            # A decoder failing in a way load_image does not foresee must not end a long job:
            # the input gets an error record naming the exception, and the stream goes on.
            log.debug("decoding %s failed", name, exc_info=True)
            return ImageError(name, f"cannot decode ({type(exc).__name__}: {exc})")


def _nbytes(decoded: _Decoded) -> int:
    return decoded.nbytes if isinstance(decoded, np.ndarray) else 0


def _batches(
    model: StreamModel,
    window: _Window,
    batch_size: int,
    explain: ExplainOptions | None,
    top_k: int,
) -> Iterator[list[BatchResult]]:
    failed = True
    try:
        window.refill(0)
        while window.pending:
            names: list[str] = []
            decoded: list[_Decoded] = []
            taken = 0
            while window.pending and len(decoded) < batch_size:
                name, image = window.pop()
                names.append(name)
                decoded.append(image)
                taken += _nbytes(image)
                window.refill(taken)
            good = [
                (n, d) for n, d in zip(names, decoded, strict=True) if isinstance(d, np.ndarray)
            ]
            images, sources = [d for _, d in good], [n for n, _ in good]
            predicted: Iterator[Classification] = iter(
                model.predict(images, sources, top_k=top_k, explain=explain)
                if explain is not None
                else model.predict(images, sources, top_k=top_k)
            )
            del images, good
            yield [d if isinstance(d, ImageError) else next(predicted) for d in decoded]
            window.refill(0)
        failed = False
    finally:
        window.close(failed)


__all__ = [
    "DEFAULT_BATCH",
    "DEFAULT_WINDOW_BYTES",
    "BatchInput",
    "BatchResult",
    "StreamModel",
    "classify_batches",
    "classify_stream",
    "default_workers",
]
