"""The runtime API on the shipped default model: inputs, results, targets, consistency."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scenecam_edge import Classification, Explanation, ImageError, SceneCam
from scenecam_edge.dataset import list_folder, stratified_split
from scenecam_edge.visual import colorize

from .conftest import SHARED_DATA, needs_data


def test_default_model_loads_with_its_classes(scenecam: SceneCam):
    assert scenecam.class_names == ("buildings", "forest", "glacier", "mountain", "sea", "street")
    assert scenecam.input_size == (150, 150)


@needs_data
@pytest.mark.parametrize("name", [None, "scenes-lite0-int8"])
def test_recorded_accuracy_holds_on_the_validation_photos(name: str | None):
    """The accuracy the manifest records, measured again: the validation split rebuilt from
    the photos (the seed and fraction the manifest names), every photo classified. Within
    half a point (int8 kernels differ a little between CPUs); the split's class sizes
    exactly. About 8 s on 2 cores each: the default, and the fine-tuned EfficientNet-Lite0.
    A model trained on every photo (Lite0) records its recipe's figures on the split, and
    those photos are its training data: it must do at least as well on them."""
    scenecam = SceneCam.load(name)
    evaluation = scenecam.manifest.evaluation
    assert evaluation is not None
    estimate = evaluation.get("estimate_from")
    if estimate is None:
        assert evaluation["on"] == "validation split"
        split = (scenecam.manifest.training or {})["split"]
    else:  # trained on every photo: the figures are the recipe's run on the split
        assert evaluation["on"].startswith("validation split of ")
        assert (scenecam.manifest.training or {})["split"]["validation"] == 0
        split = estimate["training"]["split"]
    names, items = list_folder(SHARED_DATA / "intel-scenes" / "train")
    labels = np.array([label for _, label in items])
    _, val = stratified_split(labels, split["val_fraction"], split["seed"])
    val = np.sort(val)
    assert len(val) == evaluation["count"] == split["validation"]
    supports = {n: evaluation["per_class"][n]["support"] for n in names}
    assert dict(zip(names, np.bincount(labels[val]).tolist(), strict=True)) == supports
    results = scenecam.classify([items[i][0] for i in val])
    predicted = np.array([names.index(r.label) for r in results])
    accuracy = float((predicted == labels[val]).mean())
    if estimate is None:
        assert abs(accuracy - evaluation["accuracy"]) <= 0.005, (accuracy, evaluation["accuracy"])
    else:  # it trained on these photos: at least the recipe's figure (a broken export is not)
        assert accuracy >= evaluation["accuracy"] - 0.005, (accuracy, evaluation["accuracy"])


def test_samples_are_classified_correctly(scenecam: SceneCam, sample_images: list[Path]):
    """The samples are the first two validation photos of each class, named after their
    class, and the default model gets all twelve right (a new default must too: these are
    the photos the README shows)."""
    results = scenecam.classify(sample_images)
    got = [(Path(r.source).name, r.label) for r in results]
    assert got == [(p.name, p.name.split("_")[0]) for p in sample_images]


def test_same_result_for_path_pil_and_array(scenecam: SceneCam, sample_images: list[Path]):
    path = sample_images[0]
    pil = Image.open(path)
    arr = np.asarray(pil.convert("RGB"))
    by_path, by_pil, by_array = (scenecam.classify(x) for x in (path, pil, arr))
    for r in (by_pil, by_array):
        assert r.label == by_path.label
        assert np.allclose(r.logits, by_path.logits, atol=1e-5)


def test_result_fields(scenecam: SceneCam, sample_images: list[Path]):
    r = scenecam.classify(sample_images[0], top_k=4)
    assert isinstance(r, Classification)
    assert abs(sum(r.probabilities.values()) - 1.0) < 1e-6
    assert r.label == scenecam.class_names[r.index]
    assert r.confidence == max(r.probabilities.values())
    assert len(r.top_k) == 4 and r.top_k[0] == (r.label, r.confidence)
    assert [p for _, p in r.top_k] == sorted((p for _, p in r.top_k), reverse=True)
    record = r.to_dict()
    assert {"path", "label", "confidence", "probabilities", "index"} <= set(record)


def test_batches_equal_single_images(scenecam: SceneCam, sample_images: list[Path]):
    together = scenecam.explain(sample_images)
    for path, batched in zip(sample_images, together, strict=True):
        alone = scenecam.explain(path)
        assert alone.label == batched.label
        assert np.allclose(alone.logits, batched.logits, atol=1e-4)
        assert np.allclose(alone.cam, batched.cam, atol=1e-4)


def test_explain_outputs(scenecam: SceneCam, image_folder: Path):
    path = image_folder / "img2.jpg"  # 200 x 90: the heatmap follows the image, not the model
    e = scenecam.explain(path, alpha=0.5)
    assert not {"heatmap", "overlay"} & set(vars(e))  # made on first read, not by explain
    assert isinstance(e, Explanation)
    assert e.cam.shape == scenecam.manifest.features_shape[:2]
    assert e.cam.min() >= 0
    assert e.heatmap.shape == (200, 90)
    assert e.heatmap.min() >= 0 and e.heatmap.max() <= 1 and e.heatmap.max() > 0.99
    assert e.overlay.shape == (200, 90, 3) and e.overlay.dtype == np.uint8
    assert e.overlay is e.overlay  # and kept
    original = np.asarray(Image.open(path).convert("RGB")).astype(np.float32)
    expected = 0.5 * colorize(e.heatmap) + 0.5 * original
    assert np.abs(e.overlay - expected).max() <= 1.0
    assert e.target_label == e.label and e.method == "gradcam" and e.target_space == "logit"


def test_target_by_name_and_index_agree(scenecam: SceneCam, sample_images: list[Path]):
    by_name = scenecam.explain(sample_images[0], target="sea", target_space="probability")
    by_index = scenecam.explain(sample_images[0], target=4, target_space="probability")
    assert by_name.target_label == by_index.target_label == "sea"
    assert np.array_equal(by_name.cam, by_index.cam)
    predicted = scenecam.explain(sample_images[0])
    other = next(i for i in range(6) if i != predicted.index)
    assert not np.allclose(scenecam.explain(sample_images[0], target=other).cam, predicted.cam)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"target": "volcano"}, "unknown class 'volcano'"),
        ({"target": 6}, "out of range"),
        ({"method": "magic"}, "unknown CAM method"),
        ({"target_space": "odds"}, "target_space"),
    ],
)
def test_bad_explain_arguments(scenecam: SceneCam, sample_images: list[Path], kwargs, match):
    with pytest.raises(ValueError, match=match):
        scenecam.explain(sample_images[0], **kwargs)


def test_inputs_are_not_mutated(scenecam: SceneCam, sample_images: list[Path]):
    arr = np.asarray(Image.open(sample_images[1]).convert("RGB")).copy()
    before = arr.copy()
    scenecam.explain(arr)
    assert np.array_equal(arr, before)


def test_grayscale_and_rgba_arrays(scenecam: SceneCam, sample_images: list[Path]):
    rgb = np.asarray(Image.open(sample_images[0]).convert("RGB"))
    gray = np.asarray(Image.open(sample_images[0]).convert("L"))
    rgba = np.concatenate([rgb, np.full((*rgb.shape[:2], 1), 255, np.uint8)], axis=2)
    assert scenecam.classify(gray).label in scenecam.class_names
    assert np.allclose(scenecam.classify(rgba).logits, scenecam.classify(rgb).logits, atol=1e-5)


def test_unreadable_inputs_raise_image_error(scenecam: SceneCam, tmp_path: Path):
    text = tmp_path / "notes.jpg"
    text.write_text("not a picture")
    with pytest.raises(ImageError, match=r"notes\.jpg: not an image"):
        scenecam.classify(text)
    with pytest.raises(ImageError, match="no such file"):
        scenecam.classify(tmp_path / "missing.jpg")
    with pytest.raises(ImageError, match="uint8"):
        scenecam.classify(np.zeros((10, 10, 3), np.float32))


def test_eight_threads_give_the_serial_results(scenecam: SceneCam, sample_images: list[Path]):
    from concurrent.futures import ThreadPoolExecutor

    serial = [scenecam.explain(p).cam for p in sample_images * 3]
    with ThreadPoolExecutor(8) as pool:
        parallel = list(pool.map(lambda p: scenecam.explain(p).cam, sample_images * 3))
    for a, b in zip(serial, parallel, strict=True):
        assert np.allclose(a, b, atol=1e-5)
