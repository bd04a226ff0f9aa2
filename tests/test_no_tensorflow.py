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
    cli(['classify', {str(REPO / "samples" / "scenes")!r}, '--json', '--save-dir', {str(tmp_path)!r}])
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


def test_evaluate_runs_with_tensorflow_blocked(tmp_path: Path):
    """evaluate is a runtime command: its data reader, metrics and report are the runtime's."""
    data = tmp_path / "data"
    for photo in (REPO / "samples" / "scenes").glob("*.jpg"):
        (data / photo.stem.split("_")[0]).mkdir(parents=True, exist_ok=True)
        (data / photo.stem.split("_")[0] / photo.name).write_bytes(photo.read_bytes())
    code = f"""
from scenecam_edge.cli import cli
try:
    cli(['evaluate', {str(data)!r}, '--model', 'scenes-mini', '--report', {str(tmp_path / "r")!r}])
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
    assert (tmp_path / "r" / "report.html").is_file()
