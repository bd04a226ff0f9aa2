"""Shared fixtures. Tests that need TensorFlow use the ``keras_models`` helpers and skip when
it is absent; tests that need ../shared/data skip with a reason when it is absent."""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SAMPLES = REPO / "samples" / "scenes"

#: The suite never writes to the user's home: decoded data sets (training, quantize's
#: calibration) are cached in a temporary folder of its own, which child processes inherit.
TEST_CACHE = tempfile.mkdtemp(prefix="scenecam-test-cache-")
os.environ["SCENECAM_CACHE"] = TEST_CACHE
atexit.register(shutil.rmtree, TEST_CACHE, ignore_errors=True)

HAS_TF = importlib.util.find_spec("tensorflow") is not None
needs_tf = pytest.mark.skipif(not HAS_TF, reason="needs TensorFlow: pip install '.[train]'")
needs_data = pytest.mark.skipif(
    not (SHARED_DATA / "intel-scenes" / "train").is_dir(),
    reason=f"needs the shared data set at {SHARED_DATA}",
)


@contextmanager
def local_ray() -> Iterator[None]:
    """A local Ray instance for one test: two CPUs, 100 MB of object store, quiet."""
    import ray

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=100 * 1024**2,
        log_to_driver=False,
    )
    try:
        yield
    finally:
        ray.shutdown()


def model_folder(name: str) -> Path:
    """A model's bundle folder: installed with the package, or in the repository for the
    ones the wheel leaves out (REPOSITORY_ONLY), as a user with a clone loads them."""
    from scenecam_edge.registry import models_dir

    installed = models_dir() / name
    return installed if (installed / "manifest.json").is_file() else REPO / "models" / name


@pytest.fixture(scope="session")
def default_bundle() -> Path:
    from scenecam_edge.registry import DEFAULT_MODEL, resolve_model

    return resolve_model(DEFAULT_MODEL)


@pytest.fixture(scope="session")
def scenecam():
    from scenecam_edge import SceneCam

    return SceneCam.load(threads=1)


@pytest.fixture(scope="session")
def four_band_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 4-band model (red, green, blue, near infrared; 32 x 32) exported from Keras,
    with no band_stretch: copy it to add one. Needs TensorFlow (mark the test needs_tf)."""
    import keras
    from keras import layers

    from scenecam_edge.export import export_keras

    from .keras_models import resnet_trunk, with_random_bn

    inp, x = resnet_trunk(size=32, channels=4, seed=3)
    x = layers.GlobalAveragePooling2D()(x)
    out = layers.Dense(3, activation="softmax")(x)
    model = with_random_bn(keras.Model(inp, out), seed=3)
    return export_keras(
        model, tmp_path_factory.mktemp("b4") / "bundle", class_names=["water", "crop", "urban"]
    )


def with_manifest(bundle: Path, dest: Path, **fields: object) -> Path:
    """A copy of ``bundle`` at ``dest`` with ``fields`` set in its manifest's ``input``
    (the manifest itself is not checksummed)."""
    import json

    shutil.copytree(bundle, dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    manifest["input"].update(fields)
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest


@pytest.fixture
def bundle_copy(tmp_path: Path, default_bundle: Path) -> Path:
    """A writable copy of the shipped default bundle, to tamper with."""
    dest = tmp_path / "bundle"
    shutil.copytree(default_bundle, dest)
    return dest


@pytest.fixture(scope="session")
def sample_images() -> list[Path]:
    found = sorted(SAMPLES.glob("*.jpg"))
    assert found, f"no sample photos in {SAMPLES}"
    return found


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """A folder of four small real-looking images (smooth colour fields, different sizes)."""
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(7)
    for i, (h, w) in enumerate([(150, 150), (120, 150), (200, 90), (64, 64)]):
        yy, xx = np.mgrid[0:h, 0:w]
        base = rng.uniform(0, 255, size=3)
        img = (base + 60 * np.sin(xx[..., None] / (7 + i) + yy[..., None] / 11)).clip(0, 255)
        Image.fromarray(img.astype(np.uint8)).save(folder / f"img{i}.jpg", quality=92)
    return folder


#: A small, fast model and one thread: the commands' subprocess tests.
MINI = ("--model", "scenes-mini", "--threads", "1")


def cli_executable() -> str:
    """The installed ``scenecam-edge`` command beside this Python (real processes, for tests
    of signals and file descriptors); the test skips where it is not installed."""
    import os
    import sys

    exe = shutil.which("scenecam-edge", path=os.path.dirname(sys.executable))
    if exe is None:
        pytest.skip("scenecam-edge is not installed as a command")
    return exe


def as_in_a_terminal() -> None:
    """``preexec_fn`` for a command a test will signal: it starts with SIGINT, SIGTERM and
    SIGHUP at their defaults, as a terminal's foreground job does, whatever this test run
    inherited (a CI job started in the background ignores SIGINT, and so would the command,
    rightly: it leaves alone what its parent ignores)."""
    import signal

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)


@pytest.fixture
def ctrl_c_heeded() -> Iterator[None]:
    """In this process, Ctrl-C raises KeyboardInterrupt during the test (see
    :func:`as_in_a_terminal`), and whatever was there comes back after."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)
