"""Helpers shared by the commands: the model and explain-options preamble, TensorFlow's
quiet start, and (re-exported here for the commands) the shared options of
:mod:`.flags` and the messages and exit codes of :mod:`.messages`."""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

from ..cam import DEFAULT_MAX_CHANNELS, TargetSpace
from ..errors import SceneCamError
from ..images import DEFAULT_MAX_PIXELS
from ..model import SceneCam
from ..options import ExplainOptions, UnknownLayerError
from ..visual import DEFAULT_ALPHA
from .flags import (
    MAP_FLAGS,
    cam_options,
    given_on_command_line,
    layer_option,
    max_pixels_option,
    model_options,
    refuse_unused_map_flags,
    renamed_option,
    split_options,
    training_split_options,
    tta_option,
    with_renamed,
)
from .messages import (
    EXIT_BUSY,
    EXIT_FAILED_INPUTS,
    EXIT_MODEL,
    EXIT_OK,
    EXIT_USAGE,
    EXIT_WRITE,
    error_line,
    fail,
    is_storage_error,
    shown,
    write_failed,
)

__all__ = [
    "EXIT_BUSY",
    "EXIT_FAILED_INPUTS",
    "EXIT_MODEL",
    "EXIT_OK",
    "EXIT_USAGE",
    "EXIT_WRITE",
    "MAP_FLAGS",
    "cam_options",
    "decoding_bar",
    "error_line",
    "explain_options",
    "fail",
    "given_on_command_line",
    "is_storage_error",
    "keep_going_past_file_size_limit",
    "layer_option",
    "load_model",
    "max_pixels_option",
    "model_options",
    "needs_train_extra",
    "option_named",
    "quiet_tensorflow",
    "refuse_existing_output",
    "refuse_unused_map_flags",
    "renamed_option",
    "shown",
    "split_options",
    "training_split_options",
    "tta_option",
    "with_renamed",
    "write_failed",
]


def load_model(
    model: str | None,
    threads: int | None,
    *,
    spin: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    tta: bool = False,
) -> SceneCam:
    """The model --model and --threads name, loaded; a model that cannot be loaded is one
    line on stderr and exit :data:`EXIT_MODEL`. ``spin=False`` for commands that decode
    while the model runs (no busy-waiting between runs: the cores go to decoding)."""
    try:
        return SceneCam.load(model, threads=threads, spin=spin, max_pixels=max_pixels, tta=tta)
    except SceneCamError as exc:
        fail(exc)


def explain_options(
    scenecam: SceneCam,
    target: str | None = None,
    method: str = "gradcam",
    target_space: TargetSpace = "logit",
    alpha: float = DEFAULT_ALPHA,
    max_channels: int = DEFAULT_MAX_CHANNELS,
    layer: str | None = None,
) -> ExplainOptions:
    """The --target, --method, --target-space (--alpha, --max-channels, --layer) options as
    one record for ``scenecam``; a target or layer it does not know is a usage error naming
    the option; an extra layer whose head fails its self-check is the model's error."""
    try:
        return scenecam.explain_options(target, method, target_space, alpha, max_channels, layer)
    except ValueError as exc:
        fail(f"{option_named(exc)}: {exc}", EXIT_USAGE)
    except SceneCamError as exc:
        fail(exc)


def option_named(exc: ValueError) -> str:
    """The option an explain-options error is about: --layer, else --target."""
    return "--layer" if isinstance(exc, UnknownLayerError) else "--target"


def keep_going_past_file_size_limit() -> None:
    """Under a file size limit (ulimit -f), a write that crosses it kills the process with
    SIGXFSZ by default; ignored, the write fails with EFBIG and is reported as one line."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def refuse_existing_output(out: Path, force: bool) -> None:
    """A bundle folder that exists and holds files is replaced only with --force: one usage
    line saying so (the library's own message speaks to API callers)."""
    if not force and out.is_dir() and any(out.iterdir()):
        fail(f"{shown(str(out))}: exists and is not empty; --force replaces it", EXIT_USAGE)


@contextmanager
def decoding_bar(what: str) -> Iterator[Callable[[int, int], None]]:
    """A progress callback (done, total) drawn as a bar with the time left on stderr when it
    is a terminal (the total is set by the first call)."""
    from tqdm import tqdm

    with tqdm(
        desc=what, unit="img", file=sys.stderr, disable=not sys.stderr.isatty(), leave=False
    ) as bar:

        def progress(done: int, total: int) -> None:
            if bar.total != total:
                bar.total = total
            bar.update(done - bar.n)

        yield progress


def needs_train_extra(what: str) -> NoReturn:
    fail(f"{what} needs TensorFlow; install it with: pip install 'scenecam-edge[train]'")


#: What TensorFlow's and XLA's C++ code writes straight to file descriptor 2 at start-up,
#: whatever TF_CPP_MIN_LOG_LEVEL says (absl's pre-initialisation lines among them).
_NATIVE_LOG_LINE = re.compile(rb"^(?:[IWE]\d{4} |WARNING: All log messages before absl::)")


@contextmanager
def quiet_tensorflow() -> Iterator[None]:
    """Keep TensorFlow's C++ chatter (oneDNN, CPU features, CUDA stubs, absl) off stderr
    unless ``-v`` was given: the log-level variables are set before TensorFlow is imported,
    and lines in the native log format that still reach file descriptor 2 are dropped.
    Everything else written to stderr passes through unchanged."""
    if logging.getLogger().getEffectiveLevel() <= logging.INFO:
        yield
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump() -> None:
        with os.fdopen(read_end, "rb") as lines:
            for line in lines:
                if not _NATIVE_LOG_LINE.match(line):
                    os.write(saved, line)

    thread = threading.Thread(target=pump, name="stderr-filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end: the pump reads to the end
        thread.join(timeout=5)
        os.close(saved)
