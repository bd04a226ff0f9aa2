"""Faithfulness metrics (a real check: Grad-CAM must beat a random map on the shipped model),
and the shipped MNIST tutorial bundle with its nonlinear head."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from scenecam_edge import SceneCam
from scenecam_edge import faithfulness as F
from scenecam_edge.cam import softmax
from scenecam_edge.cli import cli

from .conftest import REPO, SHARED_DATA, needs_data

# In the repository, not in the wheel (models.REPOSITORY_ONLY): loaded by path.
MNIST = REPO / "models" / "mnist-tutorial"

DIGITS = sorted((REPO / "samples" / "digits").glob("*.png"))


def test_curves_start_and_end_where_they_should(scenecam: SceneCam, sample_images: list[Path]):
    image = scenecam.to_input(scenecam.load_image(sample_images[0]))
    e = scenecam.explain(image)

    def forward(x: np.ndarray) -> np.ndarray:
        return scenecam.forward(x)[1]

    deletion, insertion, masked = F.perturbation_curves(forward, image, e.heatmap, e.index, steps=8)
    p = lambda x: softmax(forward(x[None]).astype(np.float64))[0, e.index]  # noqa: E731
    assert deletion[0] == pytest.approx(p(image), abs=1e-6)  # nothing removed yet
    assert insertion[-1] == pytest.approx(p(image), abs=1e-6)  # everything inserted
    assert deletion[-1] == pytest.approx(p(F.blurred(image)), abs=1e-6)
    assert insertion[0] == pytest.approx(p(F.blurred(image)), abs=1e-6)
    assert F.auc(np.ones(9)) == pytest.approx(1.0) and F.auc(np.linspace(0, 1, 9)) == pytest.approx(
        0.5
    )
    assert 0.0 <= masked <= 1.0


@needs_data
def test_gradcam_is_more_faithful_than_a_random_map(scenecam: SceneCam):
    from scenecam_edge.dataset import LabelledImages, list_folder, stratified_split
    from scenecam_edge.evaluation import RANDOM_BASELINE, faithfulness_scores
    from scenecam_edge.images import load_image, resize_to

    names, items = list_folder(SHARED_DATA / "intel-scenes" / "train")
    _, val = stratified_split(np.array([label for _, label in items]), 0.15, 1337)
    chosen = np.random.default_rng(0).permutation(val)[:40]  # validation photos only
    data = LabelledImages(
        np.stack([resize_to(load_image(items[i][0]), 150, 150) for i in chosen]),
        np.array([items[i][1] for i in chosen]),
        names,
        [str(items[i][0]) for i in chosen],
    )
    scores = faithfulness_scores(scenecam, data, ["gradcam"], images=40)
    gradcam, random = scores["gradcam"].summary(), scores[RANDOM_BASELINE].summary()
    assert gradcam.images == random.images == 40
    # per photo, as benchmarks/faithfulness_compare.py pairs them: mostly, not only on average
    per_photo = scores["gradcam"].deletion_auc < scores[RANDOM_BASELINE].deletion_auc
    assert per_photo.shape == (40,) and per_photo.mean() > 0.6
    assert gradcam.deletion_auc < random.deletion_auc
    assert gradcam.insertion_auc > random.insertion_auc
    assert gradcam.average_drop < random.average_drop


@pytest.fixture(scope="module")
def mnist() -> SceneCam:
    return SceneCam.load(MNIST, threads=1)


def test_mnist_bundle_is_the_tutorial_network(mnist: SceneCam):
    m = mnist.manifest
    assert m.input.channels == 1 and mnist.input_size == (28, 28)
    assert m.conv_layer == "last_conv_layer"
    assert [layer["type"] for layer in m.head_layers] == [
        "dropout",
        "flatten",
        "dense",
        "dropout",
        "dense",
    ]
    assert not mnist.head.is_linear
    assert m.evaluation["accuracy"] >= 0.97 and m.evaluation["count"] == 2000
    assert m.class_names == tuple(str(d) for d in range(10))


def test_mnist_digits_and_any_target(mnist: SceneCam):
    assert len(DIGITS) == 10
    results = mnist.classify(DIGITS)
    assert [r.label for r in results] == [p.name.split("_")[1] for p in DIGITS]
    four = next(p for p in DIGITS if p.name.startswith("digit_4_"))
    maps = {t: mnist.explain(four, target=t).cam for t in (4, 9)}
    assert maps[4].shape == (11, 11)
    assert not np.allclose(maps[4], maps[9])
    gray = np.asarray(Image.open(four))  # (28, 28) grayscale array
    assert mnist.classify(gray).label == "4"


def test_mnist_tutorial_presentation(tmp_path: Path):
    four = next(p for p in DIGITS if p.name.startswith("digit_4_"))
    result = CliRunner().invoke(
        cli,
        [
            "classify",
            str(four),
            "--model",
            str(MNIST),
            "--target",
            "4",
            "--alpha",
            "0.8",
            "--display-size",
            "500",
            "--heatmaps",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    panel = Image.open(tmp_path / f"{four.stem}.cam.png")
    pictures = np.asarray(panel)[-500:]  # under the title bar: three 500 px pictures
    assert panel.size[0] == 3 * 500 + 2 * 6 and panel.size[1] > 500
    assert (pictures[:, 500:506] == 255).all() and (pictures[:, 1006:1012] == 255).all()
