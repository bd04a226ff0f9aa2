"""Test-time flip (``SceneCam.load(tta=True)``): the answer is the mean of the image's and its
mirror's logits, the map the mean of the two maps, the mirrored one mirrored back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from scenecam_edge import SceneCam
from scenecam_edge.cam import softmax
from scenecam_edge.cli import cli
from scenecam_edge.dataset import LabelledImages
from scenecam_edge.evaluation import evaluate


@pytest.fixture(scope="module")
def pair() -> tuple[SceneCam, SceneCam]:
    return SceneCam.load("scenes-mini", threads=1), SceneCam.load(
        "scenes-mini", tta=True, threads=1
    )


def test_flip_averages_the_logits(pair: tuple[SceneCam, SceneCam], sample_images: list[Path]):
    plain, tta = pair
    for path in sample_images[:4]:
        image = plain.to_input(plain.load_image(path))
        _, logits = plain.forward(np.stack([image, image[:, ::-1]]))
        expected = softmax(logits.mean(axis=0).astype(np.float64))
        got = tta.classify(path)
        assert got.logits == pytest.approx(logits.mean(axis=0), abs=1e-5)
        probs = np.array([got.probabilities[c] for c in tta.class_names])
        assert probs == pytest.approx(expected, abs=1e-6)
        assert got.label == tta.class_names[int(expected.argmax())]


@pytest.mark.parametrize("method", ["gradcam", "scorecam"])
@pytest.mark.parametrize("space", ["logit", "probability"])
def test_flip_maps_are_the_mean_of_both_maps_for_the_answer(
    pair: tuple[SceneCam, SceneCam], sample_images: list[Path], method: str, space: str
):
    plain, tta = pair
    path = sample_images[1]
    got = tta.explain(path, method=method, target_space=space)
    image = plain.to_input(plain.load_image(path))
    options = {"method": method, "target_space": space, "target": got.target_index}
    straight = plain.explain(image, **options).cam
    mirrored = plain.explain(np.ascontiguousarray(image[:, ::-1]), **options).cam
    assert got.cam == pytest.approx((straight + mirrored[:, ::-1]) / 2, abs=1e-5)
    assert not np.allclose(straight, mirrored[:, ::-1], atol=1e-3)  # the mirror adds something


def test_flip_is_off_by_default(pair: tuple[SceneCam, SceneCam], sample_images: list[Path]):
    plain, _ = pair
    assert plain.tta is False
    image = plain.to_input(plain.load_image(sample_images[0]))
    _, logits = plain.forward(image[None])
    assert plain.classify(sample_images[0]).logits == pytest.approx(logits[0], abs=1e-6)


def test_commands_and_evaluation_take_tta(
    pair: tuple[SceneCam, SceneCam], sample_images: list[Path], tmp_path: Path
):
    """classify --tta prints the flipped answers; evaluation scores the flipped answers;
    batch --tta records it in the results file's description, so a results file written without
    it is not resumed with it."""
    plain, tta = pair
    run = CliRunner().invoke(
        cli, ["classify", str(sample_images[0]), "--json", "--tta", "--model", "scenes-mini"]
    )
    assert run.exit_code == 0, run.output
    record = json.loads(run.stdout.splitlines()[0])
    assert record["probabilities"] == pytest.approx(
        tta.classify(sample_images[0]).probabilities, abs=1e-6
    )

    images = np.stack([tta.to_input(tta.load_image(p)) for p in sample_images])
    labels = np.array([tta.class_names.index(p.stem.split("_")[0]) for p in sample_images])
    data = LabelledImages(images, labels, list(tta.class_names), [str(p) for p in sample_images])
    flipped = [tta.class_names.index(tta.classify(p).label) for p in sample_images]
    assert evaluate(tta, data).predictions.tolist() == flipped
    assert evaluate(plain, data).predictions.tolist() == [
        plain.class_names.index(plain.classify(p).label) for p in sample_images
    ]

    out = tmp_path / "r.jsonl"
    args = ["batch", str(sample_images[0].parent), "--out", str(out), "--model", "scenes-mini"]
    assert CliRunner().invoke(cli, args).exit_code == 0
    again = CliRunner().invoke(cli, [*args, "--tta"])
    assert again.exit_code == 2 and "--restart" in again.output, again.output
    assert CliRunner().invoke(cli, [*args, "--tta", "--restart"]).exit_code == 0
    assert json.loads((tmp_path / "r.jsonl.meta.json").read_text())["options"]["tta"] is True
