"""What the benchmark scripts share: the timing loop that interleaves the alternatives, child
processes timed with their peak memory, cold starts, and the ratios the reports print.

Import it from a script in this folder (``from harness import ...``): running
``python benchmarks/NAME.py`` puts the folder on ``sys.path``.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def time_modes(
    modes: Mapping[str, tuple[Callable[[], object], int]], rounds: int
) -> dict[str, float]:
    """ms per image for each mode (fn, images per call of fn): one warm-up call each, then
    ``rounds`` interleaved rounds (every mode once per round, so that a burst of load
    elsewhere hits them all alike); the median."""
    for fn, _ in modes.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in modes}
    for _ in range(rounds):
        for name, (fn, count) in modes.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1000 / count)
    return {name: statistics.median(values) for name, values in times.items()}


def fresh_venv(path: Path) -> Path:
    """A virtualenv at ``path`` with the pip this Python bundles."""
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    return path


def pip(env: Path, log: Path, *args: str) -> None:
    """``pip install -q ARGS`` into the virtualenv ``env``, run from the repository (so "."
    is this tree), its output appended to ``log``."""
    with log.open("ab") as fh:
        subprocess.run(
            [str(env / "bin" / "python"), "-m", "pip", "install", "-q", *args],
            check=True,
            stdout=fh,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )


def run_child(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> tuple[float, float]:
    """Run a child to completion: (wall seconds, peak resident memory in MB from wait4). Its
    output goes to ``log``; a failure raises with the log's tail."""
    with log.open("ab") as fh:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed ({proc.returncode}):\n{tail}")
    return wall, usage.ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


def cold_starts(
    jobs: Mapping[str, tuple[list[str], dict[str, str] | None]], repeats: int, log: Path
) -> dict[str, dict[str, float]]:
    """Each job as a fresh process, ``repeats`` times, the jobs alternating: per job the
    median wall seconds and peak memory (MB)."""
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in jobs}
    for _ in range(repeats):
        for name, (cmd, env) in jobs.items():
            runs[name].append(run_child(cmd, log, env))
    return {
        name: {
            "seconds": statistics.median(w for w, _ in done),
            "peak_mb": statistics.median(m for _, m in done),
        }
        for name, done in runs.items()
    }


def keras_classify_job(keras_file: str | os.PathLike[str], photo: str | os.PathLike[str]) -> str:
    """Python code for ``python -c``: classify one photo with Keras, the cold-start job that
    stands against ``scenecam-edge classify``."""
    return (
        "import numpy as np, keras; from PIL import Image; "
        f"m = keras.models.load_model({str(keras_file)!r}, compile=False); "
        f"x = np.asarray(Image.open({str(photo)!r}).convert('RGB'), np.float32)[None]; "
        "print(int(np.argmax(m(x, training=False))))"
    )


def ratio(value: float, base: float, digits: int = 1) -> str:
    """``value / base`` as the reports print it: ``3.2x``."""
    return f"{value / base:.{digits}f}x"
