"""``scenecam-edge classify``: label images and, on request, save their Grad-CAM panels."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import click
import numpy as np

from ..cam import TargetSpace, get_method
from ..errors import ImageError
from ..fileio import refuse_symlink, temporary_beside, write_png_atomic
from ..images import mismatch, resize_to
from ..model import DEFAULT_BATCH, SceneCam
from ..names import display_width, fit_left, for_record
from ..outputs import OutputNamer, is_inside
from ..results import Classification, Explanation
from ..sources import SourceItem, iter_sources
from ..visual import blend, colorize_levels, levels_at, panel
from .common import (
    EXIT_FAILED_INPUTS,
    EXIT_USAGE,
    EXIT_WRITE,
    cam_options,
    error_line,
    explain_options,
    fail,
    is_storage_error,
    keep_going_past_file_size_limit,
    load_model,
    max_pixels_option,
    model_options,
    refuse_unused_map_flags,
    renamed_option,
    shown,
    tta_option,
    with_renamed,
    write_failed,
)
from .interrupts import note_progress, signals_held


@click.command()
@click.argument("paths", nargs=-1, required=True)
@model_options
@click.option(
    "--json", "as_json", is_flag=True, help="One JSON object per line and per image, on stdout."
)
@click.option(
    "--jsonl",
    type=click.Path(dir_okay=False, allow_dash=True),
    default=None,
    metavar="FILE",
    help="Also write the JSON lines to FILE (renamed into place at the end); '-': stdout, "
    "as --json.",
)
@click.option(
    "--heatmaps",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    metavar="DIR",
    help="Write original | heatmap | overlay panels (PNG) here.",
)
@renamed_option(
    "--save-dir", "--heatmaps", "heatmaps", type=click.Path(file_okay=False, path_type=Path)
)
@cam_options(alpha=True)
@tta_option
@click.option("--top-k", type=click.IntRange(min=1), default=3, show_default=True)
@click.option(
    "--display-size",
    type=click.IntRange(min=16),
    default=None,
    metavar="N",
    help="Show the image and its heatmap at N x N in the panels (e.g. 500 for 28 x 28 digits).",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=DEFAULT_BATCH, show_default=True)
@max_pixels_option
def classify(
    paths: tuple[str, ...],
    model: str | None,
    threads: int | None,
    as_json: bool,
    jsonl: str | None,
    heatmaps: Path | None,
    target: str | None,
    target_space: TargetSpace,
    method: str,
    layer: str | None,
    tta: bool,
    top_k: int,
    alpha: float,
    display_size: int | None,
    max_channels: int,
    batch_size: int,
    max_pixels: int,
) -> None:
    """Classify images: PATHS are files, folders (searched recursively) or glob patterns.

    Prints a table, or JSON lines with --json. An input that cannot be read is reported on
    stderr as one line (and as {"path", "error"} with --json); the rest go on, and the exit
    code is then 1. Inputs inside --heatmaps are left out (they are earlier panels). A panel
    that cannot be written is one error line; after a full disk or a read-only folder no
    more panels are tried, the other inputs are still classified, and the exit code is 5.
    Maps are made only for --heatmaps; --target alone adds the target's probability to the
    table (and `target`, `target_probability` to --json's records).
    """
    keep_going_past_file_size_limit()
    save_dir: Path | None = with_renamed("heatmaps", heatmaps, "--heatmaps")
    refuse_unused_map_flags(save_dir is not None, "--heatmaps DIR")
    scenecam = load_model(model, threads, max_pixels=max_pixels, tta=tta)
    options = explain_options(scenecam, target, method, target_space, alpha, max_channels, layer)
    explaining = save_dir is not None
    notes = (f", layer {options.layer}" if options.layer else "") + (", flip" if tta else "")
    target_name = None if options.target is None else scenecam.class_names[options.target]
    items = list(iter_sources(paths))
    excluded = 0
    if save_dir is not None:
        kept = [i for i in items if i.error is not None or not is_inside(i.path, save_dir)]
        excluded, items = len(items) - len(kept), kept
    namer = OutputNamer(save_dir, ".cam.png", [i.path for i in items]) if save_dir else None
    as_json = as_json or jsonl == "-"
    lines = None if jsonl in (None, "-") else _json_file(Path(jsonl), items)
    printer = _Printers(
        _JsonPrinter(target_name) if as_json else _TablePrinter(items, top_k, target_name),
        None if lines is None else _JsonPrinter(target_name, lines.write, report=False),
    )
    failed = panels = unwritten = processed = 0
    note_progress(lambda: _finished(processed, len(items), panels, save_dir, lines))
    stop_panels = False
    # The stream engine decodes ahead in threads, in bounded memory, and gives the results
    # back in input order, an unreadable input as its ImageError.
    results = scenecam.classify_batch(
        [item.path for item in items if item.error is None],
        batch_size,
        explain=options if explaining else False,
        top_k=top_k,
    )
    try:
        for item in items:
            result = ImageError(item.path, item.error) if item.error is not None else next(results)
            if isinstance(result, ImageError):
                failed += 1
                printer.failure(result.subject, result.reason)
                processed += 1
                continue
            if isinstance(result, Exception):  # the engine yields errors; ImageError is the one
                raise result
            saved = picture = None
            if namer is not None and not stop_panels and isinstance(result, Explanation):
                saved = namer.path_for(result.source)
                picture = _panel(result, alpha, display_size, notes)
            # A panel, its line and the count as one step: Ctrl-C meanwhile acts right after,
            # so no temporary file is left and the closing line counts what is there.
            with signals_held():
                if saved is not None and picture is not None:
                    try:
                        write_png_atomic(saved, picture)
                        panels += 1
                    except OSError as exc:
                        saved, unwritten = None, unwritten + 1
                        reason = str(exc.strerror or exc)
                        if is_storage_error(exc):
                            stop_panels = True  # the next panels would fail alike
                            reason += "; no more panels are written"
                        error_line(str(exc.filename), reason)
                printer.result(result, saved)
                processed += 1
    finally:
        if lines is not None:
            lines.close()
    printer.close()
    _mismatch_note(scenecam, items)
    if save_dir is not None:
        _save_note(save_dir, panels, excluded)
    if unwritten:
        raise SystemExit(EXIT_WRITE)
    if failed:
        raise SystemExit(EXIT_FAILED_INPUTS)


def _finished(
    processed: int, total: int, panels: int, save_dir: Path | None, lines: _JsonLines | None
) -> str:
    """What an interrupted classify had finished, and where its panels and lines are."""
    text = f"{processed} of {total} inputs classified"
    if save_dir is not None:
        text += f"; {panels} panel(s) written to {shown(str(save_dir))}"
    if lines is not None:
        text += f"; their JSON lines in {shown(str(lines.path))}"
    return text


def _json_file(path: Path, items: list[SourceItem]) -> _JsonLines:
    """--jsonl FILE opened (under a temporary name); never one of the inputs."""
    if os.path.realpath(path) in {os.path.realpath(i.path) for i in items}:
        fail(f"--jsonl {shown(str(path))}: the output would overwrite an input", EXIT_USAGE)
    try:
        return _JsonLines(path)
    except OSError as exc:
        write_failed(exc, path)


class _JsonLines:
    """JSON lines written under a temporary name beside ``path``, renamed into place when
    the command ends, however it ends (each line is written whole)."""

    def __init__(self, path: Path) -> None:
        refuse_symlink(path)
        self.path = path
        self.temporary = temporary_beside(path)
        self.file = open(self.temporary, "w", encoding="utf-8", errors="surrogateescape")  # noqa: SIM115

    def write(self, line: str) -> None:
        self.file.write(line + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()
        refuse_symlink(self.path)
        os.replace(self.temporary, self.path)


class _Printers:
    """The table or JSON on stdout, and the JSON lines file when there is one."""

    def __init__(self, first: _JsonPrinter | _TablePrinter, second: _JsonPrinter | None) -> None:
        self.printers = [first] if second is None else [first, second]

    def result(self, result: Classification, saved: Path | None) -> None:
        for printer in self.printers:
            printer.result(result, saved)

    def failure(self, path: str, reason: str) -> None:
        for printer in self.printers:
            printer.failure(path, reason)

    def close(self) -> None:
        for printer in self.printers:
            printer.close()


def _mismatch_note(scenecam: SceneCam, items: list[SourceItem]) -> None:
    """One note when inputs are far from what the model was trained on (colour photos
    through a digit model, say): the answers are given, but may mean little."""
    spec = scenecam.manifest.input
    far = [
        (item.path, why)
        for item in items
        if item.error is None
        and (why := mismatch(item.path, spec.channels, spec.height, spec.width)) is not None
    ]
    if far:
        path, why = far[0]
        more = f" (and {len(far) - 1} more)" if len(far) > 1 else ""
        click.echo(
            f"note: {shown(path)}{more}: {why}; {scenecam.manifest.name} was trained on "
            f"{spec.width}x{spec.height} {_kind(spec.channels)} images, "
            "so its answers may mean little",
            err=True,
        )


def _kind(channels: int) -> str:
    return "grey" if channels == 1 else "colour" if channels == 3 else f"{channels}-band"


def _save_note(save_dir: Path, panels: int, excluded: int) -> None:
    note = f"note: {panels} panel(s) written to {shown(str(save_dir))}"
    if excluded:
        note += f"; {excluded} input(s) inside it were left out (earlier panels)"
    click.echo(note, err=True)


def _panel(result: Explanation, alpha: float, display_size: int | None, notes: str) -> np.ndarray:
    if display_size is None:
        return panel(result.picture, result.colours, result.overlay, _title(result, notes))
    shown = resize_to(result.picture, display_size, display_size)
    lv = levels_at(result.cam, display_size, display_size)
    return panel(shown, colorize_levels(lv), blend(shown, lv, alpha), _title(result, notes))


def _title(result: Explanation, notes: str = "") -> str:
    """Two lines: the file, then the answer and what the map shows (``notes``: the layer and
    the flip, when asked for). A class-agnostic method (Eigen-CAM) says so instead of naming a
    class and a target space it does not use."""
    name = shown(Path(result.source).name) if result.source else "image"
    if not get_method(result.method).uses_target:
        explained = f"{result.method}{notes}: the same map for every class"
    else:
        explained = f"map of {result.target_label} ({result.method}, {result.target_space}{notes})"
    return f"{name}\n{result.label} {result.confidence:.0%}  |  {explained}"


class _JsonPrinter:
    """JSON lines to ``write`` (stdout by default); ``report``: also the error lines."""

    def __init__(
        self, target: str | None, write: Callable[[str], None] = click.echo, report: bool = True
    ) -> None:
        self.target = target
        self.write = write
        self.report = report

    def result(self, result: Classification, saved: Path | None) -> None:
        record = result.to_dict()
        if self.target is not None:  # with or without a map (an Explanation names it too)
            record.update(
                target=self.target, target_probability=record["probabilities"][self.target]
            )
        if saved is not None:
            record["heatmap"] = str(saved)
        self.write(json.dumps(for_record(record)))

    def failure(self, path: str, reason: str) -> None:
        if self.report:
            error_line(path, reason)
        self.write(json.dumps(for_record({"path": path, "error": reason})))

    def close(self) -> None:
        pass


class _TablePrinter:
    """The table; with a target, a column of its probability (``P(forest)``) after CONF.
    Widths are terminal columns (``names.display_width``: wide characters count 2)."""

    def __init__(self, items: list[SourceItem], top_k: int, target: str | None) -> None:
        widths = (display_width(shown(i.path)) for i in items)
        self.width = min(60, max([len("FILE"), *widths]))
        self.top_k = top_k
        self.target = target
        self.target_head = "" if target is None else f"P({shown(target)})"
        self.header_done = False

    def _header(self) -> None:
        if not self.header_done:
            head = self.target_head
            extra = " " * (self._target_width() - display_width(head)) + head + "  "
            extra = extra if self.target else ""
            click.echo(
                f"{'FILE':<{self.width}}  {'LABEL':<12} {'CONF':>6}  {extra}TOP-{self.top_k}"
            )
            self.header_done = True

    def _target_cell(self, result: Classification) -> str:
        if self.target is None:
            return ""
        return f"{result.probabilities[self.target]:>{self._target_width()}.1%}  "

    def _target_width(self) -> int:
        return max(6, display_width(self.target_head))

    def result(self, result: Classification, saved: Path | None) -> None:
        self._header()
        path = fit_left(shown(result.source), self.width)
        label = shown(result.label)
        label = fit_left(label, 12) if display_width(label) <= 12 else label
        top = ", ".join(f"{shown(name)} {p:.2f}" for name, p in result.top_k)
        cell = self._target_cell(result)
        click.echo(f"{path}  {label} {result.confidence:>6.1%}  {cell}{top}")

    def failure(self, path: str, reason: str) -> None:
        error_line(path, reason)

    def close(self) -> None:
        pass
