"""The options several commands share, defined once, and the rules about them: one for
flags that only shape maps (:func:`refuse_unused_map_flags`), one for old option names
(:func:`renamed_option`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, overload

import click
from click.core import ParameterSource

from ..cam import DEFAULT_MAX_CHANNELS, METHODS, TARGET_SPACES
from ..images import DEFAULT_MAX_PIXELS
from ..visual import DEFAULT_ALPHA
from .messages import EXIT_USAGE, fail

F = TypeVar("F", bound=Callable[..., Any])


@overload
def model_options(fn: F, *, default: str = ...) -> F: ...
@overload
def model_options(fn: None = None, *, default: str = ...) -> Callable[[F], F]: ...
def model_options(
    fn: F | None = None, *, default: str = "the shipped default"
) -> F | Callable[[F], F]:
    """--model and --threads, the same on every command that runs a model. ``default`` says
    in --help what runs without --model (``@model_options(default=...)``)."""

    def decorate(fn: F) -> F:
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
            help=f"A shipped model's name or a bundle folder (default: {default}).",
        )(fn)
        return fn

    return decorate if fn is None else decorate(fn)


def split_options(fn: F) -> F:
    """--val-split and --seed of a command that reads a bundle's split back (evaluate,
    quantize): by default the split the bundle's manifest records (``recorded_split``)."""
    fn = click.option(
        "--seed",
        default=None,
        type=int,
        help="Seed of the training split (default: the bundle's recorded one, else 1337).",
    )(fn)
    fn = click.option(
        "--val-split",
        default=None,
        type=click.FloatRange(0, 1, min_open=True, max_open=True),
        help="The training split's validation share (default: the bundle's recorded one, "
        "else 0.15).",
    )(fn)
    return fn


def _split_options(fn: F, every_image_help: str) -> F:
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
        type=click.FloatRange(0, 1, max_open=True),
        help="Share of each class held out for validation." + every_image_help,
    )(fn)
    return fn


def training_split_options(fn: F) -> F:
    """Training's --val-split and --seed: as :func:`split_options`, and 0 trains on every
    image once a recipe has been chosen on the split."""
    return _split_options(
        fn,
        every_image_help=" 0: train on every image, with no validation and no early stopping; "
        "the last epoch is kept (see --estimate-from).",
    )


def cam_options(
    *, alpha: bool, layer: bool = True, max_channels: bool = True, target: bool = True
) -> Callable[[F], F]:
    """The explain flags, the same on every command that explains: --target, --target-space,
    --method, --alpha (for overlays), --layer and --max-channels. They arrive as loose
    parameters; :func:`explain_options` makes them one :class:`ExplainOptions`, and
    :func:`refuse_unused_map_flags` refuses the ones nothing would use."""

    def decorate(fn: F) -> F:
        if max_channels:
            fn = click.option(
                "--max-channels",
                type=click.IntRange(min=1),
                default=DEFAULT_MAX_CHANNELS,
                show_default=True,
                help="scorecam: channels it masks the image with (one forward pass each).",
            )(fn)
        if layer:
            fn = layer_option(fn)
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
        if target:
            fn = click.option(
                "--target",
                default=None,
                help="Class to explain, by name or index (default: each image's prediction).",
            )(fn)
        return fn

    return decorate


#: The flags that only shape maps: given where no map is made, they are refused.
MAP_FLAGS = (
    "method",
    "target_space",
    "alpha",
    "layer",
    "max_channels",
    "display_size",
    "heatmap_format",
)


def given_on_command_line(*names: str) -> list[str]:
    """Those of the current command's parameters ``names`` that the command line set, as
    their flags (``--target-space``)."""
    context = click.get_current_context()
    return [
        "--" + name.replace("_", "-")
        for name in names
        if name in context.params
        and context.get_parameter_source(name) is ParameterSource.COMMANDLINE
    ]


def refuse_unused_map_flags(makes_maps: bool, how: str, *, also: tuple[str, ...] = ()) -> None:
    """The one rule for flags that need an output, on every command: where no map is made
    (``makes_maps`` false), a map flag given on the command line (:data:`MAP_FLAGS` and
    ``also``) is a one-line usage error naming it and ``how`` maps are made, exit 2."""
    if makes_maps:
        return
    given = given_on_command_line(*MAP_FLAGS, *also)
    if given:
        command = click.get_current_context().info_name
        fail(
            f"{', '.join(given)}: only used for heatmaps, and {command} makes heatmaps only "
            f"with {how}",
            EXIT_USAGE,
        )


def renamed_option(
    old: str,
    new: str,
    dest: str,
    *,
    type: click.ParamType | None = None,
    is_flag: bool = False,
    value: Any = None,
) -> Callable[[F], F]:
    """An old spelling of ``new``, kept working so scripts do not break: hidden from --help,
    a one-line note when used. The value goes to ``ctx.meta``; :func:`with_renamed` merges
    it (a flag stores ``value``)."""

    def store(context: click.Context, param: click.Parameter, given: Any) -> None:
        if given is None or given is False:
            return
        click.echo(f"note: {old} is now {new} (the old name still works)", err=True)
        context.meta[f"renamed:{dest}"] = (old, value if is_flag else given)

    def decorate(fn: F) -> F:
        kwargs: dict[str, Any] = {"is_flag": True} if is_flag else {"default": None, "type": type}
        return click.option(
            old, f"renamed_{dest}", hidden=True, expose_value=False, callback=store, **kwargs
        )(fn)

    return decorate


def with_renamed(dest: str, given: Any, new: str) -> Any:
    """``given`` (the value of ``new``), or the value an old spelling of it gave; both is a
    usage error."""
    old = click.get_current_context().meta.get(f"renamed:{dest}")
    if old is None:
        return given
    if given is not None:
        fail(f"{old[0]} and {new} are the same option; give one", EXIT_USAGE)
    return old[1]


def layer_option(fn: F) -> F:
    """--layer: which of the bundle's explained layers the maps come from."""
    return click.option(
        "--layer",
        default=None,
        metavar="NAME",
        help="Explain this layer instead of the model's default (see 'scenecam-edge info').",
    )(fn)


def tta_option(fn: F) -> F:
    """--tta: test-time flip (each image also mirrored; answers and maps averaged)."""
    return click.option(
        "--tta",
        is_flag=True,
        help="Test-time flip: also run each image mirrored and average the answers and maps "
        "(twice the work for 0.1-0.4 points on the shipped models; docs/models.md).",
    )(fn)


def max_pixels_option(fn: F) -> F:
    """--max-pixels: refuse images that declare more pixels, before decoding them."""
    return click.option(
        "--max-pixels",
        type=click.IntRange(min=1),
        default=DEFAULT_MAX_PIXELS,
        show_default=True,
        help="Refuse images that declare more pixels than this (before decoding).",
    )(fn)
