"""Options and helpers shared by the commands."""

from __future__ import annotations

import sys
from collections.abc import Callable
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


#: What each optional extra brings, for the one line a command without it prints.
EXTRA_HINTS = {
    "camera": "OpenCV; install it with: pip install 'scenecam-edge[camera]' "
    "(or 'scenecam-edge[camera-headless]' on a machine without a display)",
}


def missing_extra_command(name: str, extra: str) -> click.Command:
    """A stand-in for command ``name`` when its extra is not installed: whatever it is given,
    ``--help`` included, it says in one line which extra to install and exits 3."""

    @click.command(
        name,
        help=f"(not installed: needs {EXTRA_HINTS[extra]})",
        short_help=f"(needs the {extra} extra)",
        add_help_option=False,
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    )
    def stand_in() -> None:
        fail(f"{name} needs {EXTRA_HINTS[extra]}")

    return stand_in
