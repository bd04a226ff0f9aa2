"""`tiles` under attack (issue 26): hostile georeferencing and values, scenes that do not
fit the model or the limits, signals, and disks that fill up. Scenes are made here."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from scenecam_edge.cli import cli

from . import test_hostile_inputs
from .conftest import as_in_a_terminal, cli_executable
from .test_hostile_inputs import _limited
from .test_tiles import needs_geo, run_tiles

pytestmark = needs_geo
small_fs = test_hostile_inputs.small_fs  # the fixture: a real 1 MiB tmpfs
MINI = ("--model", "scenes-mini")


def _scene(path: Path, bands: np.ndarray, transform=None, crs: str | None = "EPSG:32633") -> Path:
    """bands (B, H, W) of any type as a GeoTIFF."""
    import rasterio
    from rasterio.transform import from_origin

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(
            path,
            "w",
            driver="GTiff",
            width=bands.shape[2],
            height=bands.shape[1],
            count=bands.shape[0],
            dtype=bands.dtype.name,
            crs=crs,
            transform=from_origin(500_000.0, 5_000_000.0, 10.0, 10.0)
            if transform is None
            else transform,
        ) as dst:
            dst.write(bands)
    return path


def _noise(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def test_non_finite_georeferencing_refuses_the_scene_in_one_line(tmp_path: Path):
    from affine import Affine

    good = _scene(tmp_path / "good.tif", _noise((3, 64, 96)))
    bad = {
        "nan": Affine(math.nan, 0, 0, 0, -10, 0),
        "inf": Affine(10, 0, math.inf, 0, -10, 0),
        "huge": Affine(1e200, 0, 0, 0, -1e200, 0),  # finite, but its areas overflow
    }
    scenes = [_scene(tmp_path / f"{name}.tif", _noise((3, 64, 96)), t) for name, t in bad.items()]
    out = tmp_path / "out"
    result = run_tiles(*map(str, [*scenes, good]), "--out-dir", str(out), *MINI)
    assert result.exit_code == 1, result.output
    errors = _lines(result.stderr)
    assert errors == [
        f"error: {tmp_path}/nan.tif: its geotransform (nan, 0, nan, 0, -10, 0) is not finite: "
        "fix its georeferencing",
        f"error: {tmp_path}/inf.tif: its geotransform (10, 0, inf, 0, -10, 0) is not finite: "
        "fix its georeferencing",
        f"error: {tmp_path}/huge.tif: its geotransform (1e+200, 0, 0, 0, -1e+200, 0) makes the "
        "scene's area overflow: fix its georeferencing",
    ]
    assert sorted(p.name for p in out.iterdir()) == [
        "good.json",
        "good.probs.tif",
        "good.tif",
        "good.tif.aux.xml",
    ]
    summary = json.loads(
        (out / "good.json").read_text(), parse_constant=lambda c: pytest.fail(f"bare {c}")
    )
    assert summary["valid_fraction"] == 1.0


def test_values_near_the_float64_limit_are_stretched_not_blackened(tmp_path: Path):
    from scenecam_edge.tiles import Scene

    rng = np.random.default_rng(1)
    values = rng.uniform(0, 1000, (3, 64, 96))
    small = _scene(tmp_path / "small.tif", values)
    huge = _scene(tmp_path / "huge.tif", values * 1.7e305)  # up to 1.7e308
    spread = _scene(tmp_path / "spread.tif", (values - 500) * 3.5e305)  # -1.75e308..1.75e308
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning (overflow, invalid value)
        reads = []
        for path in (small, huge, spread):
            with Scene(path, channels=3) as scene:
                reads.append(scene.read())
                assert all(map(math.isfinite, (*scene.stretch.low, *scene.stretch.high)))
    (pixels, valid), (big, big_valid), (wide, _) = reads
    assert valid.all() and big_valid.all()
    assert pixels.std() > 50  # a stretched scene, not a black one
    # a linear stretch between percentiles does not care for the scale: the same picture
    assert np.abs(big.astype(int) - pixels.astype(int)).max() <= 1
    assert np.abs(wide.astype(int) - pixels.astype(int)).max() <= 1
    result = run_tiles(str(huge), "--out", str(tmp_path / "m.tif"), "--tile", "32", *MINI)
    assert result.exit_code == 0 and "valid 100%" in result.stderr
    assert "Warning" not in result.stderr
    summary = json.loads((tmp_path / "m.json").read_text())
    assert max(summary["stretch"]["high"]) > 1e307


def test_a_two_band_scene_on_a_three_band_model_is_refused(tmp_path: Path):
    two = _scene(tmp_path / "two.tif", _noise((2, 64, 96)))
    result = run_tiles(str(two), "--out", str(tmp_path / "m.tif"), *MINI)
    assert result.exit_code == 1
    assert result.stderr == (
        f"error: {two}: the model takes 3 bands and the scene has 2: choose --bands "
        "(--bands 1: band 1 as grey)\n"
    )
    assert not (tmp_path / "m.tif").exists()
    chosen = run_tiles(str(two), "--out", str(tmp_path / "m.tif"), "--bands", "1", *MINI)
    assert chosen.exit_code == 0 and json.loads((tmp_path / "m.json").read_text())["bands"] == [1]


def test_max_pixels_refuses_a_huge_sparse_scene_up_front(tmp_path: Path):
    import rasterio

    huge = tmp_path / "huge.tif"
    with rasterio.open(
        huge,
        "w",
        driver="GTiff",
        width=200_000,
        height=200_000,
        count=1,
        dtype="uint8",
        tiled=True,
        blockxsize=2048,
        blockysize=2048,
        sparse_ok=True,
        crs="EPSG:32633",
        transform=rasterio.transform.from_origin(0, 0, 1, 1),
    ):
        pass  # nothing written: a few hundred kilobytes declaring 40 gigapixels
    assert huge.stat().st_size < 1 << 20
    result = run_tiles(str(huge), "--out", str(tmp_path / "m.tif"), *MINI)
    assert result.exit_code == 1
    assert result.stderr == (
        f"error: {huge}: scene declares 200000x200000 pixels, over the limit of 4000000000 "
        "(--max-pixels)\n"
    )
    small = _scene(tmp_path / "small.tif", _noise((3, 40, 50)))
    limited = run_tiles(str(small), "--out", str(tmp_path / "s.tif"), "--max-pixels", "1999", *MINI)
    assert limited.exit_code == 1 and "50x40 pixels, over the limit of 1999" in limited.stderr
    assert run_tiles(str(small), "--out", str(tmp_path / "s.tif"), "--max-pixels", "2000", *MINI)
    assert (tmp_path / "s.json").is_file()


# -- signals ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slow_scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scene of 4,800 tiles of 8 px: tens of seconds with the heatmap."""
    folder = tmp_path_factory.mktemp("slow")
    return _scene(folder / "slow.tif", _noise((3, 480, 640)))


def _start(scene: Path, out: Path) -> subprocess.Popen:
    command = [
        cli_executable(),
        "tiles",
        str(scene),
        "--out",
        str(out),
        "--tile",
        "8",
        "--heatmaps",
    ]
    proc = subprocess.Popen(
        [*command, *MINI, "--threads", "1"],
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=as_in_a_terminal,
    )
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if any(out.parent.glob(".*.tmp.tif")):  # writing has begun
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the job ended before it could be interrupted"
    return proc


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_stops_the_job_and_leaves_nothing(tmp_path: Path, slow_scene: Path, signum):
    out = tmp_path / "o" / "m.tif"
    out.parent.mkdir()
    proc = _start(slow_scene, out)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, stderr
    assert stderr.startswith(f"interrupted: 0 of 1 scene(s) finished in {out}; ")
    assert "Traceback" not in stderr and stderr.count("\n") == 1
    assert list(out.parent.iterdir()) == []  # no temporary file, no partial output


def test_two_ctrl_c_leave_all_of_a_scene_or_none(tmp_path: Path, slow_scene: Path):
    out = tmp_path / "o" / "m.tif"
    out.parent.mkdir()
    proc = _start(slow_scene, out)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr
    assert list(out.parent.iterdir()) == []


def test_a_signal_while_files_are_renamed_waits_for_the_summary(
    tmp_path: Path, monkeypatch, ctrl_c_heeded
):
    """Deterministic: SIGINT arrives between the renames (the moment a second Ctrl-C used
    to leave map.tif and probs.tif without map.json); it takes effect after the summary."""
    from scenecam_edge.tiles.writers import StagedRaster

    scene = _scene(tmp_path / "s.tif", _noise((3, 64, 96)))
    place = StagedRaster.place

    def interrupted_place(self: StagedRaster) -> None:
        place(self)
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(StagedRaster, "place", interrupted_place)
    out = tmp_path / "o" / "m.tif"
    result = CliRunner().invoke(
        cli, ["tiles", str(scene), "--out", str(out), *MINI, "--heatmaps"], catch_exceptions=False
    )
    assert result.exit_code == 130
    names = sorted(p.name for p in out.parent.iterdir())
    assert names == ["m.cam.tif", "m.json", "m.probs.tif", "m.tif", "m.tif.aux.xml"]
    # and a rename that fails half way takes the placed files back: none without a summary
    calls = []

    def failing_place(self: StagedRaster) -> None:
        calls.append(self.target)
        if len(calls) == 2:
            raise OSError(5, "Input/output error", str(self.target))
        place(self)

    monkeypatch.setattr(StagedRaster, "place", failing_place)
    again = tmp_path / "again" / "m.tif"
    result = CliRunner().invoke(
        cli, ["tiles", str(scene), "--out", str(again), *MINI], catch_exceptions=False
    )
    assert result.exit_code == 1
    assert _lines(result.stderr) == [
        f"error: {scene}: cannot write {again.with_suffix('.probs.tif')}: Input/output error"
    ]
    assert list(again.parent.iterdir()) == []


# -- full and read-only disks, the file size limit --------------------------------------------


def test_a_full_disk_exits_5_in_one_line_and_leaves_nothing(tmp_path: Path, small_fs: Path):
    scene = _scene(tmp_path / "s.tif", _noise((3, 480, 640)))
    command = [
        cli_executable(),
        "tiles",
        str(scene),
        "--out",
        str(small_fs / "m.tif"),
        "--tile",
        "32",
    ]
    done = subprocess.run(
        [*command, "--heatmaps", *MINI, "--threads", "1"], capture_output=True, text=True
    )
    assert done.returncode == 5, done.stderr
    assert done.stderr == f"error: {small_fs}/m.cam.tif: No space left on device\n"
    assert list(small_fs.iterdir()) == []
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    done = subprocess.run([*command, *MINI, "--threads", "1"], capture_output=True, text=True)
    assert done.returncode == 5
    assert re.fullmatch(rf"error: {small_fs}/m\.\w+: Read-only file system\n", done.stderr)


def test_the_file_size_limit_exits_5_in_one_line(tmp_path: Path):
    scene = _scene(tmp_path / "s.tif", _noise((3, 480, 640)))
    out = tmp_path / "o" / "m.tif"
    done = subprocess.run(
        [
            cli_executable(),
            "tiles",
            str(scene),
            "--out",
            str(out),
            "--tile",
            "16",
            "--heatmaps",
            *MINI,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=_limited(200_000),
    )
    assert done.returncode == 5, done.stderr
    assert done.stderr == f"error: {out.parent}/m.cam.tif: File too large\n"
    assert list(out.parent.iterdir()) == []


def test_a_signal_dropped_inside_a_callback_from_c_is_raised_at_the_next_row():
    """A handler's exception raised inside a callback from C (rasterio's GDAL logging) is
    dropped there, with a traceback: none is printed, and the job still stops."""
    import sys

    from scenecam_edge.batch import Interrupted
    from scenecam_edge.tiles.faults import check_interrupted, interruptible

    hook = sys.unraisablehook
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as info, interruptible():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.1)  # the handler runs in here
        except Interrupted:
            pass  # what the C callback does with it
        os.kill(os.getpid(), signal.SIGTERM)  # later signals are ignored, not fatal
        time.sleep(0.1)
        check_interrupted()
        pytest.fail("check_interrupted did not raise")
    assert info.value.signum == signal.SIGTERM
    assert sys.unraisablehook is hook
    signal.signal(signal.SIGTERM, before)  # interruptible leaves them ignored after a signal


def test_a_fifo_scene_is_refused_by_type(tmp_path: Path):
    fifo = tmp_path / "pipe.tif"
    os.mkfifo(fifo)
    good = _scene(tmp_path / "good.tif", _noise((3, 40, 50)))
    done = subprocess.run(  # in a child with a timeout: it blocked for ever in GDAL's open
        [cli_executable(), "tiles", str(fifo), str(good), "--out-dir", str(tmp_path / "o"), *MINI],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert _lines(done.stderr) == [f"error: {fifo}: is a named pipe (FIFO), not a regular file"]
    assert (tmp_path / "o" / "good.json").is_file()


def test_a_row_of_tiles_too_big_for_memory_is_refused(tmp_path: Path, monkeypatch):
    import rasterio

    wide = tmp_path / "wide.tif"  # 300 bytes: within the pixel limit, one row is 11 GiB
    with rasterio.open(
        wide,
        "w",
        driver="GTiff",
        width=1_000_000_000,
        height=4,
        count=3,
        dtype="uint8",
        sparse_ok=True,
        blockysize=1,
    ):
        pass
    good = _scene(tmp_path / "good.tif", _noise((3, 40, 50)))
    result = run_tiles(str(wide), str(good), "--out-dir", str(tmp_path / "o"), *MINI)
    assert result.exit_code == 1  # it ended in a MemoryError traceback
    assert _lines(result.stderr) == [
        f"error: {wide}: a row of tiles (150 x 1000000050 px) needs 4191.0 GiB, over the "
        "limit of 4 GiB: choose a smaller --tile, or split the scene"
    ]
    assert (tmp_path / "o" / "good.json").is_file()
    # and memory that runs out anyway is one line for that scene, its files removed
    from scenecam_edge.tiles import Scene

    def no_memory(*args, **kwargs):
        raise MemoryError("Unable to allocate 11.2 GiB")

    monkeypatch.setattr(Scene, "read_row", no_memory)
    result = run_tiles(str(good), "--out", str(tmp_path / "m" / "m.tif"), *MINI)
    assert _lines(result.stderr) == [
        f"error: {good}: not enough memory (Unable to allocate 11.2 GiB)"
    ]
    assert list((tmp_path / "m").iterdir()) == []


def test_unreadable_scenes_are_worded_as_the_other_commands_word_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A missing scene is `no such file` (not GDAL's `No such file or directory`); a corrupt
    TIFF names the file once (libtiff's sentence starts with it again) and says what it is."""
    good = _scene(tmp_path / "good.tif", _noise((3, 40, 50)))
    (tmp_path / "bad.tif").write_bytes(b"II*\x00\x08\x00\x00\x00\xff\xff")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "cut.tif").write_bytes((tmp_path / "bad.tif").read_bytes())
    (tmp_path / "junk.tif").write_bytes(bytes(range(256)) * 2)
    monkeypatch.chdir(tmp_path)
    done = run_tiles("missing.tif", "bad.tif", str(tmp_path / "sub" / "cut.tif"), "junk.tif",
                     str(good), "--out-dir", "o", *MINI)  # fmt: skip
    assert done.exit_code == 1, done.output
    corrupt = "truncated or corrupt image (TIFFReadDirectory: Failed to read directory at offset 8)"
    assert _lines(done.stderr) == [
        "error: missing.tif: no such file",
        f"error: bad.tif: {corrupt}",
        f"error: {tmp_path}/sub/cut.tif: {corrupt}",
        "error: junk.tif: not an image (unrecognised format)",
    ]
    assert (tmp_path / "o" / "good.json").is_file()


def test_a_signal_the_process_ignores_stays_ignored():
    """``nohup scenecam-edge tiles ...`` starts with SIGHUP ignored: closing the terminal must
    not stop the job, so interruptible leaves an ignored signal alone."""
    from scenecam_edge.tiles.faults import check_interrupted, interruptible

    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with interruptible():
            assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(0.1)
            check_interrupted()  # nothing arrived
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, before)
