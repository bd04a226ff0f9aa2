"""Ctrl-C and SIGTERM on every command: exit 130 or 143, no traceback, and one line saying
what was finished and where it is (real signals to a real process)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from .conftest import MINI, as_in_a_terminal, cli_executable


def _photos(folder: Path, n: int, size: int = 48) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"p{i:04d}.png")


def _start(command: list[str], **options: Any) -> subprocess.Popen:
    """The command in a child process started as a terminal's foreground job is, its
    standard error read as text."""
    options = {"stderr": subprocess.PIPE, "text": True, "preexec_fn": as_in_a_terminal, **options}
    return subprocess.Popen(command, **options)


def _interrupt_when(proc: subprocess.Popen, ready, signum: int) -> str:
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and not ready():
        time.sleep(0.01)
    assert proc.poll() is None, "the command ended before it could be interrupted"
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    return stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_classify_says_what_it_finished(tmp_path: Path, signum: int):
    _photos(tmp_path / "in", 400)
    maps = tmp_path / "maps"
    command = [cli_executable(), "classify", str(tmp_path / "in"), "--heatmaps", str(maps), *MINI]
    command += ["--batch-size", "4"]
    proc = _start(command, stdout=subprocess.DEVNULL)
    stderr = _interrupt_when(proc, lambda: maps.exists() and len(os.listdir(maps)) >= 3, signum)
    assert proc.returncode == 128 + signum, stderr
    assert "Traceback" not in stderr and "Aborted!" not in stderr
    last = stderr.splitlines()[-1]
    panels = [p for p in maps.iterdir() if not p.name.startswith(".")]
    assert last.startswith("interrupted: ") and " of 400 inputs classified; " in last
    assert last.endswith(f"; {len(panels)} panel(s) written to {maps}")
    assert len(panels) == len(list(maps.iterdir()))  # no temporary file left behind


def test_evaluate_says_nothing_was_written(tmp_path: Path):
    data = tmp_path / "data"
    _photos(data / "sea", 40, size=150)
    report = tmp_path / "r"
    command = [
        cli_executable(),
        "evaluate",
        str(data),
        "--report",
        str(report),
        "--faithfulness",
        *MINI,
    ]
    proc = _start(command, stdout=subprocess.DEVNULL)
    assert proc.stderr is not None
    line = proc.stderr.readline()  # the estimate, printed as the faithfulness run starts
    assert line.startswith("faithfulness: "), line
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=60)
    assert proc.returncode == 130, rest
    assert rest.strip().splitlines()[-1] == (
        f"interrupted: no report written to {report} (it is written at the end)"
    )
    assert "Traceback" not in rest and not report.exists()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_batch_waiting_on_a_silent_pipe_stops_at_once(tmp_path: Path, signum: int):
    """``batch --from-list -`` fed by a producer that gave two names and then says nothing:
    the job waits for more to fill its decoding window. A signal is acted on at once there
    (elsewhere the job waits for a safe point), with the usual line and status."""
    _photos(tmp_path / "in", 2)
    out = tmp_path / "r.jsonl"
    command = [cli_executable(), "batch", "--from-list", "-", "--out", str(out), *MINI]
    proc = _start(command, stdin=subprocess.PIPE, cwd=tmp_path)
    assert proc.stdin is not None
    proc.stdin.write("in/p0000.png\nin/p0001.png\n")
    proc.stdin.flush()  # and the pipe stays open
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and not out.exists():
        time.sleep(0.01)
    time.sleep(2)  # for the two names to be read and the job to wait on the pipe
    proc.send_signal(signum)
    proc.wait(timeout=60)  # with the pipe still open (communicate would close it)
    proc.stdin.close()
    stderr = proc.stderr.read() if proc.stderr else ""
    assert proc.returncode == 128 + signum, stderr
    assert "Traceback" not in stderr
    summary = re.fullmatch(r"interrupted after (\d+) done, .*", stderr.strip().splitlines()[-1])
    assert summary is not None, stderr
    assert out.read_text().count("\n") == int(summary.group(1))


def test_batch_started_with_ctrl_c_ignored_keeps_it_ignored(tmp_path: Path):
    """A job a script starts in the background (or ``nohup``) inherits SIGINT ignored, so
    that Ctrl-C in the terminal leaves it alone: batch must not undo that with a handler."""
    _photos(tmp_path / "in", 200)
    out = tmp_path / "r.jsonl"
    command = [cli_executable(), "batch", str(tmp_path / "in"), "--out", str(out), *MINI]
    command += ["--batch-size", "4"]

    def ignoring_ctrl_c() -> None:
        as_in_a_terminal()
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    proc = _start(command, preexec_fn=ignoring_ctrl_c)
    ready = lambda: out.exists() and out.read_bytes().count(b"\n") > 10  # noqa: E731
    stderr = _interrupt_when(proc, ready, signal.SIGINT)
    assert proc.returncode == 0, stderr
    assert "summary: 200 done" in stderr and out.read_text().count("\n") == 200
