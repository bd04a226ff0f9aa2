"""``scenecam-edge batch``: classify any number of images into a resumable results file."""

from __future__ import annotations

import io
import itertools
import signal
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import click

from ..batch import BatchJob, Interrupted, JobCounts
from ..cam import TargetSpace
from ..errors import SceneCamError
from ..filelock import ResultsBusy
from ..heatmaps import HEATMAP_FORMATS, HeatmapFormat
from ..model import DEFAULT_BATCH
from ..names import is_readable
from ..results_file import OutputFormat, ResultsFile, format_for
from ..sources import SourceItem, iter_sources
from .common import (
    EXIT_BUSY,
    EXIT_FAILED_INPUTS,
    EXIT_USAGE,
    cam_options,
    error_line,
    explain_options,
    fail,
    keep_going_past_file_size_limit,
    load_model,
    max_pixels_option,
    model_options,
    refuse_unused_map_flags,
    shown,
    tta_option,
    write_failed,
)
from .interrupts import EXIT_SIGNAL_BASE


@click.command()
@click.argument("inputs", nargs=-1)
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Results file: CSV if it ends in .csv, else JSON lines. An existing one is resumed.",
)
@click.option(
    "--from-list",
    "from_list",
    type=click.Path(exists=True, dir_okay=False, allow_dash=True),
    default=None,
    help="A text file of inputs, one path, folder or pattern per line ('-': standard input).",
)
@click.option(
    "--csv",
    "fmt",
    flag_value="csv",
    default=None,
    help="Write CSV (the default for an --out ending in .csv).",
)
@click.option(
    "--jsonl", "fmt", flag_value="jsonl", help="Write JSON lines (the default otherwise)."
)
@click.option(
    "--heatmaps",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Save each image's heatmap in this folder; its path goes into the record.",
)
@click.option(
    "--heatmap-format",
    type=click.Choice(HEATMAP_FORMATS),
    default=None,
    help="png: the overlay; npy: the raw CAM (float32); both. [default: png]",
)
@cam_options(alpha=True)
@tta_option
@click.option("--top-k", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=DEFAULT_BATCH, show_default=True)
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=None,
    help="Decoding threads beside inference (default: a few; 0: decode in line).",
)
@click.option(
    "--retry-failed", is_flag=True, help="Try again the inputs that failed in an earlier run."
)
@click.option(
    "--restart",
    is_flag=True,
    help="Empty --out and start over (needed when the model or options changed).",
)
@max_pixels_option
@model_options
def batch(
    inputs: tuple[str, ...],
    out: Path,
    from_list: str | None,
    fmt: OutputFormat | None,
    heatmaps: Path | None,
    heatmap_format: HeatmapFormat | None,
    target: str | None,
    target_space: TargetSpace,
    method: str,
    layer: str | None,
    max_channels: int,
    tta: bool,
    alpha: float,
    top_k: int,
    batch_size: int,
    workers: int | None,
    retry_failed: bool,
    restart: bool,
    max_pixels: int,
    model: str | None,
    threads: int | None,
) -> None:
    """Classify INPUTS (files, folders searched recursively, glob patterns) into --out.

    Writes one line per image, with the keys of `classify --json` (and `heatmap`, the saved
    file, with --heatmaps); an image that cannot be read gets a line with `path` and `error`,
    and the job goes on. Images are decoded in parallel with inference and memory stays flat
    however many there are. Rerunning with the same --out skips every input it already holds
    (failed ones too, unless --retry-failed), so a killed job picks up where it stopped. The
    file holds records only (CSV: after its column names); its description beside it
    (named like it with .meta.json added) records the model and the options, and a rerun
    with others is refused unless --restart. One run at a time may write a file (it holds a lock file beside it,
    named like it with .lock added).

    Exit codes: 0 every input done; 1 some inputs failed (now or in an earlier run, see
    --retry-failed); 2 usage error, or --out is not a results file of this format, model and
    options; 3 the model could not be loaded; 4 another run is writing --out; 5 an output
    could not be written (disk full, read-only, a symbolic link at the path); 130 interrupted
    (Ctrl-C), 143 terminated (SIGTERM): what was written is kept, whole.
    """
    keep_going_past_file_size_limit()
    if not inputs and from_list is None:
        fail("give INPUTS or --from-list FILE", EXIT_USAGE)
    # the records hold every class's probability: --target too only shapes the maps
    refuse_unused_map_flags(heatmaps is not None, "--heatmaps DIR", also=("target",))
    named = format_for(out)
    if fmt is not None and named is not None and fmt != named:
        fail(
            f"--{fmt} does not match --out {out.name} (a {named} name); "
            "drop the flag or rename --out",
            EXIT_USAGE,
        )
    if heatmaps is not None and not is_readable(str(heatmaps)):
        # Records name their heatmaps in UTF-8 (scenecam_edge.names): such a folder's would
        # not read back as the files, and a rerun could reuse their names.
        fail(f"--heatmaps {heatmaps}: the name is not UTF-8; choose another", EXIT_USAGE)
    scenecam = load_model(model, threads, spin=False, max_pixels=max_pixels, tta=tta)
    options = explain_options(scenecam, target, method, target_space, alpha, max_channels, layer)
    results = ResultsFile(out, fmt or named or "jsonl", scenecam.class_names)
    job = BatchJob(
        scenecam,
        results,
        batch_size=batch_size,
        workers=workers,
        explain=options if heatmaps is not None else None,
        heatmaps=None if heatmaps is None else (heatmaps, heatmap_format or "png"),
        retry_failed=retry_failed,
        restart=restart,
        top_k=top_k,
        handle_signals=True,
    )
    arguments = itertools.chain(inputs, _list_lines(from_list) if from_list else ())
    sources: Iterable[SourceItem] = iter_sources(arguments)
    total = None
    if sys.stderr.isatty() and from_list != "-":  # a bar with a total and the time left
        sources = list(sources)
        total = len(sources)
    start = time.perf_counter()
    interrupted: int | None = None
    try:
        _drive(job, sources, total)
    except ResultsBusy as exc:
        fail(exc, EXIT_BUSY)
    except SceneCamError as exc:  # --out is not a results file we may append to
        fail(exc, EXIT_USAGE)
    except OSError as exc:  # the results file or the heatmap folder cannot be written
        write_failed(exc, out)
    except Interrupted as exc:
        interrupted = exc.signum
    except KeyboardInterrupt:
        interrupted = signal.SIGINT
    _summary(job.counts, time.perf_counter() - start, out, interrupted is not None)
    if interrupted is not None:
        sys.exit(EXIT_SIGNAL_BASE + interrupted)
    if job.counts.failed or job.counts.skipped_failed:
        sys.exit(EXIT_FAILED_INPUTS)


def _drive(job: BatchJob, sources: Iterable[SourceItem], total: int | None) -> None:
    from tqdm import tqdm

    with tqdm(
        desc="batch",
        total=total,
        unit="img",
        file=sys.stderr,
        disable=not sys.stderr.isatty(),
        dynamic_ncols=True,
    ) as bar:
        written = 0  # records of this run so far (the bar counts skipped inputs too)
        for records in job.run(sources):
            written += len(records)
            for record in records:
                if record.get("error"):
                    if bar.disable:
                        error_line(record["path"], record["error"])
                    else:
                        line = f"error: {shown(record['path'])}: {shown(record['error'])}"
                        bar.write(line, file=sys.stderr)
            bar.update(written + job.counts.skipped + job.counts.excluded - bar.n)
            bar.set_postfix(skipped=job.counts.skipped, failed=job.counts.failed, refresh=False)


def _list_lines(path: str) -> Iterator[str]:
    """The non-blank lines of a list file (or standard input), without their line ends."""
    if path == "-":  # as bytes: a name that is not UTF-8 reads as the file system has it
        stdin = getattr(sys.stdin, "buffer", None)
        lines = sys.stdin if stdin is None else io.TextIOWrapper(stdin, "utf-8", "surrogateescape")
        yield from (line.rstrip("\r\n") for line in lines if line.strip())
        return
    with open(path, encoding="utf-8", errors="surrogateescape") as fh:
        yield from (line.rstrip("\r\n") for line in fh if line.strip())


def _summary(counts: JobCounts, seconds: float, out: Path, interrupted: bool) -> None:
    if not interrupted and not counts.done and not counts.skipped and not counts.excluded:
        failed = f" ({counts.failed} input(s) failed)" if counts.failed else ""
        click.echo(
            f"summary: nothing to do: no image in the inputs{failed} -> {shown(str(out))}",
            err=True,
        )
        return
    rate = f" ({counts.done / seconds:.1f} images/s)" if counts.done and seconds > 0 else ""
    state = "interrupted after" if interrupted else "summary:"
    click.echo(
        f"{state} {counts.done} done, {counts.skipped} skipped, {counts.failed} failed "
        f"in {seconds:.1f} s{rate} -> {shown(str(out))}",
        err=True,
    )
    notes = []
    if counts.migrated:
        notes.append(
            "rewrote the file of an earlier version: its first line, the run's description, "
            f"is now in {shown(out.name + '.meta.json')} beside it"
        )
    if counts.dropped_torn:
        notes.append("dropped an incomplete last line, left by an interrupted run")
    if counts.retried:
        notes.append(f"tried again {counts.retried} input(s) that failed in an earlier run")
    if counts.skipped_failed:
        notes.append(
            f"{counts.skipped_failed} of the skipped inputs failed in an earlier run; "
            "--retry-failed tries them again"
        )
    if counts.excluded:
        notes.append(f"{counts.excluded} inputs inside the --heatmaps folder were not classified")
    for note in notes:
        click.echo(f"note: {note}", err=True)
