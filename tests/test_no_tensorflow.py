"""The runtime never imports TensorFlow, Keras, tf2onnx, or the training and export code."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from .conftest import REPO

FORBIDDEN = ("tensorflow", "keras", "tf2onnx", "scenecam_edge.training", "scenecam_edge.export")

# Importing any of these raises, so a stray import anywhere in the runtime fails loudly.
BLOCKER = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('tensorflow', 'keras', 'tf2onnx'):
            raise ImportError('blocked: ' + name)
        return None
sys.meta_path.insert(0, Block())
"""


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCKER + code], capture_output=True, text=True, timeout=120
    )


def test_runtime_and_cli_work_with_tensorflow_blocked(tmp_path: Path):
    code = f"""
import numpy as np
from scenecam_edge import SceneCam
from scenecam_edge.cli import cli
cam = SceneCam.load()
e = cam.explain(np.full((150, 150, 3), 90, np.uint8))
assert e.heatmap.shape == (150, 150)
try:
    cli(['classify', {str(REPO / "samples" / "scenes")!r}, '--json', '--heatmaps', {str(tmp_path)!r}])
except SystemExit as exc:
    assert exc.code in (0, None), exc.code
bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf2onnx')
       or m.startswith(('scenecam_edge.training', 'scenecam_edge.export'))]
assert not bad, bad
print('ok')
"""
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("ok")
    assert len(list(tmp_path.glob("*.png"))) == len(
        list((REPO / "samples" / "scenes").glob("*.jpg"))
    )


def test_train_command_without_tensorflow_names_the_extra():
    code = """
from scenecam_edge.cli import cli
cli(['export', __file__ if False else 'pyproject.toml', '--out', '/tmp/never'])
"""
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKER + code],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 3
    assert "pip install 'scenecam-edge[train]'" in proc.stderr
    assert "Traceback" not in proc.stderr


#: The commands that exist to run the training side import it inside their functions, after
#: checking that the train extra is there; nothing else in the runtime may.
TRAINING_COMMANDS = {"cli/train.py", "cli/export.py", "cli/quantize.py"}


def test_runtime_sources_do_not_import_training_side():
    """The one-direction rule, statically: no import of the heavy side anywhere in the runtime,
    inside functions too, except in the commands that need the train extra."""
    offenders = []
    for path in (REPO / "runtime").rglob("*.py"):
        rel = path.relative_to(REPO / "runtime").as_posix()
        tree = ast.parse(path.read_text(), filename=str(path))
        top_level = set(map(id, tree.body))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if rel in TRAINING_COMMANDS and id(node) not in top_level:
                continue
            offenders += [f"{rel}:{node.lineno}: {n}" for n in names if n.startswith(FORBIDDEN)]
    assert not offenders, offenders


# The base install has no OpenCV: the same blocker with cv2 added, raising what a missing
# module raises.
CV2_BLOCKER = BLOCKER.replace(
    "('tensorflow', 'keras', 'tf2onnx')", "('tensorflow', 'keras', 'tf2onnx', 'cv2')"
).replace("raise ImportError('blocked: ' + name)", "raise ModuleNotFoundError(name, name=name)")


def test_base_install_path_imports_no_opencv(tmp_path: Path):
    """classify (with panels), batch (with heatmaps), evaluate (with its report), models and
    the API, with OpenCV and TensorFlow blocked as in the base install: all work, none
    imports cv2, and evaluate (a runtime command) loads nothing of the training side."""
    data = tmp_path / "data"
    for photo in (REPO / "samples" / "scenes").glob("*.jpg"):
        (data / photo.stem.split("_")[0]).mkdir(parents=True, exist_ok=True)
        (data / photo.stem.split("_")[0] / photo.name).write_bytes(photo.read_bytes())
    samples = str(REPO / "samples" / "scenes")
    runs = [
        ["classify", samples, "--heatmaps", str(tmp_path / "panels")],
        ["batch", samples, "--out", str(tmp_path / "b.jsonl"), "--heatmaps", str(tmp_path / "h")],
        ["evaluate", str(data), "--report", str(tmp_path / "report"), "--gallery", "1"],
        ["models"],
    ]
    code = f"""
import numpy as np
from scenecam_edge import SceneCam, METHODS
from scenecam_edge.cli import cli
cam = SceneCam.load()
for method in METHODS:
    e = cam.explain(np.full((120, 160, 3), 90, np.uint8), method=method)
    assert e.overlay.shape == (120, 160, 3)
for args in {runs!r}:
    try:
        cli(args)
    except SystemExit as exc:
        assert exc.code in (0, None), (args, exc.code)
assert 'cv2' not in sys.modules
bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf2onnx')
       or m.startswith(('scenecam_edge.training', 'scenecam_edge.export'))]
assert not bad, bad
print('ok')
"""
    proc = subprocess.run(
        [sys.executable, "-c", CV2_BLOCKER + code], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("ok")
    assert len(list((tmp_path / "panels").glob("*.png"))) == 12
    assert len(list((tmp_path / "h").glob("*.cam.png"))) == 12
    assert (tmp_path / "report" / "report.html").stat().st_size > 10_000


def test_camera_without_opencv_names_the_extra():
    """Without OpenCV, `camera` says in one line which extra to install and exits 3; its
    --help and the other commands still work."""
    for args in (["camera", "--source", "clip.mp4", "--headless", "--out", "x.mp4"],):
        code = f"from scenecam_edge.cli import cli\ncli({args!r})"
        proc = subprocess.run(
            [sys.executable, "-c", CV2_BLOCKER + code], capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 3, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, lines
        assert "pip install 'scenecam-edge[camera]'" in lines[0]
        assert "camera-headless" in lines[0]
    for args in (["--help"], ["camera", "--help"]):
        code = f"from scenecam_edge.cli import cli\ncli({args!r})"
        proc = subprocess.run(
            [sys.executable, "-c", CV2_BLOCKER + code], capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0 and "camera" in proc.stdout, (args, proc.stderr)
