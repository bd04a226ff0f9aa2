"""Options and helpers shared by the commands."""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn, TypeVar

import click

from ..cam import METHODS, TARGET_SPACES
from ..errors import MissingExtraError, SceneCamError
from ..visual import DEFAULT_ALPHA

EXIT_OK, EXIT_FAILED_INPUTS, EXIT_USAGE, EXIT_MODEL = 0, 1, 2, 3

F = TypeVar("F", bound=Callable[..., Any])


def model_options(fn: F) -> F:
    """--model and --threads, the same on every command that runs a model."""
    fn = click.option(
        "--threads",
        type=click.IntRange(min=1),
        default=None,
        help="onnxruntime threads (default: every CPU this process may use).",
    )(fn)
    fn = click.option(
        "--model",
        "model",
        default=None,
        metavar="NAME|DIR",
        help="A shipped model's name or a bundle folder (default: the shipped default).",
    )(fn)
    return fn


def split_options(fn: F) -> F:
    """--val-split and --seed: the stratified split, the same for training and evaluation."""
    fn = click.option(
        "--seed",
        default=1337,
        show_default=True,
        type=int,
        help="Seed of the stratified split (and of training's initialisation and augmentation).",
    )(fn)
    fn = click.option(
        "--val-split",
        default=0.15,
        show_default=True,
        type=click.FloatRange(0, 1, min_open=True, max_open=True),
        help="Share of each class held out for validation.",
    )(fn)
    return fn


def cam_options(*, alpha: bool) -> Callable[[F], F]:
    """--target, --method and --target-space (and --alpha for overlays): how heatmaps are
    made, the same on every command that saves them."""

    def decorate(fn: F) -> F:
        if alpha:
            fn = click.option(
                "--alpha",
                type=click.FloatRange(0.0, 1.0),
                default=DEFAULT_ALPHA,
                show_default=True,
                help="Heatmap weight in the overlay.",
            )(fn)
        fn = click.option(
            "--method", type=click.Choice(sorted(METHODS)), default="gradcam", show_default=True
        )(fn)
        fn = click.option(
            "--target-space", type=click.Choice(TARGET_SPACES), default="logit", show_default=True
        )(fn)
        fn = click.option(
            "--target",
            default=None,
            help="Class to explain, by name or index (default: each image's prediction).",
        )(fn)
        return fn

    return decorate


def error_line(subject: str, reason: str) -> None:
    """One line on stderr naming the input and the reason."""
    click.echo(f"error: {subject}: {reason}", err=True)


def fail(exc: SceneCamError | str, code: int = EXIT_MODEL) -> NoReturn:
    if isinstance(exc, MissingExtraError):
        click.echo(f"error: {exc.reason}", err=True)
    elif isinstance(exc, SceneCamError):
        error_line(exc.subject, exc.reason)
    else:
        click.echo(f"error: {exc}", err=True)
    sys.exit(code)


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
