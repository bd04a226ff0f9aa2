"""The shipped int8 models answer alike on x86 CPUs with and without VNNI.

Without VNNI, onnxruntime multiplies uint8 by int8 with ``vpmaddubsw``, which saturates in 16
bits; ``quantize`` stores 7-bit weights so that it cannot. This machine's CPU may well have
VNNI, so the CPU without it is emulated: the same interpreter runs the model again under
QEMU's user-mode emulator as a Haswell (AVX2 and FMA, no AVX-512, no VNNI), and the child
says which features it saw. Emulation is the real instruction set, not a fake: a twin with
8-bit weights (``quantize --full-range``) lost 3.4 points of accuracy there and its logits
moved by up to 3.8 (docs/benchmarks.md), so this test would catch a model quantised that way.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scenecam_edge import SceneCam

from .conftest import SAMPLES, model_folder

QEMU = shutil.which("qemu-x86_64")
pytestmark = pytest.mark.skipif(
    QEMU is None or platform.machine() != "x86_64",
    reason="needs an x86_64 machine with QEMU's user-mode emulator (Debian: qemu-user)",
)

# Run in the emulated process: the model's logits for the sample photos, and the x86
# features numpy's dispatcher found.
CHILD = """
import sys
import numpy as np
from numpy._core._multiarray_umath import __cpu_features__ as seen
from scenecam_edge import SceneCam
cam = SceneCam.load(sys.argv[1], threads=1)
batch = np.stack([cam.to_input(cam.load_image(p)) for p in sys.argv[3:]])
np.save(sys.argv[2], cam.logits(batch))
print(" ".join(name for name, on in seen.items() if on))
"""


@pytest.mark.parametrize("name", ["scenes-resnet18-int8", "scenes-lite0-int8", "scenes-mini-int8"])
def test_int8_model_answers_alike_without_vnni(name: str, tmp_path: Path):
    bundle = model_folder(name)
    photos = [str(p) for p in sorted(SAMPLES.glob("*.jpg"))]
    cam = SceneCam.load(bundle, threads=1)
    here = cam.logits(np.stack([cam.to_input(cam.load_image(p)) for p in photos]))
    out = tmp_path / "logits.npy"
    assert QEMU is not None
    child = subprocess.run(
        [QEMU, "-cpu", "Haswell", sys.executable, "-c", CHILD, str(bundle), str(out), *photos],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    features = set(child.stdout.split())
    assert "AVX2" in features, features  # the AVX2 int8 kernels, not a plain fallback
    assert not features & {"AVX512F", "AVX512VNNI", "AVX512_VNNI", "AVX_VNNI"}, features
    emulated = np.load(out)
    assert emulated.shape == here.shape == (len(photos), len(cam.class_names))
    # measured: identical to the last bit for the shipped 7-bit twins
    np.testing.assert_allclose(emulated, here, rtol=0, atol=1e-4)
    assert (emulated.argmax(axis=1) == here.argmax(axis=1)).all()
