"""``evaluate`` as a user meets it: test sets with only some classes, folders named in another
case, a broken photo, the report's contents and the faithfulness run's progress. Runs in a
runtime-only install (no TensorFlow)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from scenecam_edge.cli import cli
from scenecam_edge.dataset import LabelledImages, align_classes
from scenecam_edge.metrics import classification_figures, figures_markdown

from .conftest import REPO

SAMPLES = REPO / "samples" / "scenes"


def labelled_folder(root: Path, folders: dict[str, str]) -> Path:
    """Class folders named as the keys, holding the sample photos of the class in the value."""
    for folder, cls in folders.items():
        (root / folder).mkdir(parents=True)
        for photo in SAMPLES.glob(f"{cls}_*.jpg"):
            (root / folder / photo.name).write_bytes(photo.read_bytes())
    return root


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_a_few_classes_named_in_another_case(tmp_path: Path):
    data = labelled_folder(tmp_path / "data", {"Sea": "sea", "forest": "forest"})
    result = run("evaluate", str(data), "--model", "scenes-mini", "--report", str(tmp_path / "r"))
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    model_classes = ["buildings", "forest", "glacier", "mountain", "sea", "street"]
    assert metrics["class_names"] == model_classes
    cm = np.array(metrics["confusion_matrix"])
    assert cm.shape == (6, 6) and cm.sum() == 4
    # the true classes are exactly the two folders, under the model's names
    assert cm.sum(axis=1).tolist() == [0, 2, 0, 0, 2, 0]
    assert metrics["per_class"]["sea"]["support"] == 2
    assert metrics["model"] == "scenes-mini" and len(metrics["model_sha256"]) == 64
    # the classes the data lacks read as dashes, not as zeros (recall and F1 are undefined)
    rows = (tmp_path / "r" / "metrics.md").read_text().splitlines()
    glacier = next(r for r in rows if r.startswith("| glacier |"))
    assert glacier.split("|")[3].strip() == "\u2013" and glacier.split("|")[5].strip() == "0"
    sea = next(r for r in rows if r.startswith("| sea |"))
    assert "\u2013" not in sea


def test_a_folder_that_matches_no_class_is_refused_by_name(tmp_path: Path):
    data = labelled_folder(tmp_path / "data", {"sea": "sea", "lake": "sea"})
    result = CliRunner().invoke(
        cli, ["evaluate", str(data), "--model", "scenes-mini", "--report", str(tmp_path / "r")]
    )
    assert result.exit_code == 2
    assert "'lake' matches none of the model's classes" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "r").exists()


def test_a_broken_photo_is_one_line_and_exit_1(tmp_path: Path):
    data = labelled_folder(tmp_path / "data", {"forest": "forest"})
    (data / "forest" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    result = CliRunner().invoke(
        cli, ["evaluate", str(data), "--model", "scenes-mini", "--report", str(tmp_path / "r")]
    )
    assert result.exit_code == 1
    mentions = [line for line in result.output.splitlines() if "broken.jpg" in line]
    assert len(mentions) == 1 and mentions[0].startswith("error: ")
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["count"] == 2
    assert [Path(s["path"]).name for s in metrics["skipped"]] == ["broken.jpg"]
    assert "1 image(s) could not be read" in (tmp_path / "r" / "metrics.md").read_text()
    assert "broken.jpg" in (tmp_path / "r" / "report.html").read_text()


def test_the_report_shows_photo_and_overlay_and_what_the_map_explains(tmp_path: Path):
    data = labelled_folder(tmp_path / "data", {c: c for c in ("glacier", "mountain", "sea")})
    result = run("evaluate", str(data), "--model", "scenes-mini", "--report", str(tmp_path / "r"))
    assert result.exit_code == 0, result.output
    page = (tmp_path / "r" / "report.html").read_text()
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["model_sha256"][:16] in page and metrics["created"] in page
    cards = re.findall(r"<figure.*?</figure>", page, flags=re.S)
    assert len(cards) == 6
    for card in cards:
        assert card.count("<img ") == 2  # the photo and its overlay
        explains = re.search(r"map explains: (\w+)", card)
        assert explains and explains.group(1) in metrics["class_names"]
    predicted = sum(np.array(metrics["confusion_matrix"]).diagonal())
    assert page.count("&#10003;") == predicted and page.count("&#10007;") == 6 - predicted


def test_faithfulness_says_how_long_and_explains_its_table(tmp_path: Path):
    data = labelled_folder(tmp_path / "data", {"forest": "forest", "sea": "sea"})
    result = run(
        "evaluate",
        str(data),
        "--model",
        "scenes-mini",
        "--report",
        str(tmp_path / "r"),
        "--faithfulness",
        "--faithfulness-images",
        "2",
        "--gallery",
        "0",
    )
    assert result.exit_code == 0, result.output
    assert re.search(
        r"faithfulness: \d+ methods and a random baseline on 2 images, about ", result.output
    )
    table = (tmp_path / "r" / "metrics.md").read_text().split("## Faithfulness")[1]
    assert "deletion AUC (lower is better)" in table and "Bold: the best method" in table
    rows = [line for line in table.splitlines() if line.startswith("| ") and "method" not in line]
    # each of the four columns has exactly one bold (best) value, never the random baseline's
    assert sum(line.count("**") for line in rows) == 2 * 4
    assert "**" not in next(line for line in rows if "baseline" in line)


def test_align_classes_relabels_to_the_model():
    data = LabelledImages(
        np.zeros((3, 2, 2, 3), np.uint8), np.array([0, 1, 1]), ["Sea", "forest"], ["a", "b", "c"]
    )
    aligned = align_classes(data, ("buildings", "forest", "sea"))
    assert aligned.class_names == ["buildings", "forest", "sea"]
    assert aligned.labels.tolist() == [2, 1, 1]
    with pytest.raises(ValueError, match="'Sea' matches none"):
        align_classes(data, ("forest", "sea2"))


def test_macro_average_over_the_classes_present_equals_scikit_learn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    y_true = rng.choice([1, 4], 200)  # a test set of two classes out of six
    y_pred = np.where(rng.random(200) < 0.8, y_true, rng.integers(0, 6, 200))
    ours = classification_figures(y_true, y_pred, [f"c{i}" for i in range(6)])
    ref = sklearn_metrics.precision_recall_fscore_support(
        y_true, y_pred, labels=[1, 4], average="macro", zero_division=0
    )  # the classes in the data: a class it has none of is not counted, predicted or not
    assert ours["macro_avg"]["precision"] == pytest.approx(ref[0])
    assert ours["macro_avg"]["recall"] == pytest.approx(ref[1])
    assert ours["macro_avg"]["f1"] == pytest.approx(ref[2])
    assert ours["macro_avg"]["classes"] == 2 and ours["macro_avg"]["f1"] > 0.8
    assert len(ours["per_class"]) == 6
    assert "| macro avg (2 of 6 classes) |" in figures_markdown(ours)


def test_macro_average_says_over_how_many_classes(tmp_path: Path):
    data = labelled_folder(tmp_path / "data", {"sea": "sea", "forest": "forest"})
    result = run("evaluate", str(data), "--model", "scenes-mini", "--report", str(tmp_path / "r"))
    assert result.exit_code == 0, result.output
    assert "over the 2 of 6 classes in the data" in result.stdout
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["macro_avg"]["classes"] == 2
    assert "over the 2 of 6 classes in the data" in (tmp_path / "r" / "report.html").read_text()


def test_split_defaults_to_the_one_the_bundle_records(tmp_path: Path):
    """evaluate --split reads the validation share and seed from the manifest, as quantize
    does; given flags win; without --split they are refused (they would change nothing)."""
    import shutil

    from .conftest import model_folder

    bundle = tmp_path / "bundle"
    shutil.copytree(model_folder("scenes-mini"), bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["training"]["split"].update(val_fraction=0.5, seed=7)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    data = labelled_folder(tmp_path / "data", {"sea": "sea", "forest": "forest"})
    args = ["evaluate", str(data), "--model", str(bundle), "--gallery", "0"]
    result = run(*args, "--report", str(tmp_path / "a"), "--split", "validation")
    assert result.exit_code == 0, result.output
    title = json.loads((tmp_path / "a" / "metrics.json").read_text())["title"]
    assert title.endswith("(validation, validation share 0.5, seed 7)")
    assert "on 2 images" in result.stdout  # half of each class of two photos
    given = run(*args, "--report", str(tmp_path / "b"), "--split", "train", "--val-split", "0.25")
    assert given.exit_code == 0, given.output
    title = json.loads((tmp_path / "b" / "metrics.json").read_text())["title"]
    assert title.endswith("(train, validation share 0.25, seed 7)")
    refused = CliRunner().invoke(cli, [*args, "--report", str(tmp_path / "c"), "--seed", "3"])
    assert refused.exit_code == 2 and "add --split" in refused.stderr


def test_map_flags_and_messages(tmp_path: Path):
    data = labelled_folder(tmp_path / "data", {"sea": "sea"})
    base = ["evaluate", str(data), "--model", "scenes-mini", "--report", str(tmp_path / "r")]
    refused = CliRunner().invoke(cli, [*base, "--gallery", "0", "--method", "eigencam"])
    assert refused.exit_code == 2 and refused.stderr.count("\n") == 1
    assert "--method: only used for heatmaps, and evaluate makes heatmaps only with" in (
        refused.stderr
    )
    used = run(*base, "--gallery", "1", "--method", "eigencam", "--batch-size", "1")
    assert used.exit_code == 0, used.output
    # a folder without class folders: its name once
    (tmp_path / "pics").mkdir()
    empty = CliRunner().invoke(
        cli, ["evaluate", str(tmp_path / "pics"), "--report", str(tmp_path / "x")]
    )
    assert empty.exit_code == 2
    assert empty.stderr.count(str(tmp_path / "pics")) == 1, empty.stderr


def test_evaluation_reports_progress_with_its_total():
    from scenecam_edge import SceneCam
    from scenecam_edge.evaluation import evaluate

    cam = SceneCam.load("scenes-mini", threads=1)
    images = np.zeros((5, *cam.input_size, 3), np.uint8)
    data = LabelledImages(images, np.zeros(5, np.int64), list(cam.class_names), list("abcde"))
    heard: list[tuple[int, int]] = []
    result = evaluate(
        cam, data, batch_size=2, progress=lambda done, total: heard.append((done, total))
    )
    assert heard == [(2, 5), (4, 5), (5, 5)] and result.figures["count"] == 5


def test_reading_a_folder_reports_progress_with_its_total(tmp_path: Path):
    """What evaluate's and quantize's reading bars are fed: (decoded, total) per image."""
    from scenecam_edge.dataset import load_dataset

    data = labelled_folder(tmp_path / "data", {"sea": "sea", "forest": "forest"})
    heard: list[tuple[int, int]] = []
    loaded = load_dataset(data, (32, 32), progress=lambda done, total: heard.append((done, total)))
    assert heard == [(i, 4) for i in range(1, 5)] and len(loaded) == 4


def test_the_reports_record_the_options_that_change_results(tmp_path: Path):
    """metrics.json has an "options" object (split, tta, layer, method, target space, the
    model and its sha256); metrics.md and report.html a line naming them."""
    data = labelled_folder(tmp_path / "data", {"sea": "sea", "forest": "forest"})
    result = run(
        "evaluate", str(data), "--model", "scenes-mini", "--report", str(tmp_path / "r"),
        "--gallery", "1", "--tta", "--method", "gradcam++", "--target-space", "probability",
        "--split", "validation", "--val-split", "0.5", "--seed", "3", "--threads", "1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    options = metrics["options"]
    assert options["model"] == metrics["model"] == "scenes-mini"
    assert options["model_sha256"] == metrics["model_sha256"] and options["model_sha256"]
    assert options["split"] == "validation" and options["val_split"] == 0.5
    assert options["seed"] == 3 and options["tta"] is True
    assert options["method"] == "gradcam++" and options["target_space"] == "probability"
    assert options["layer"]  # the layer explained, the bundle's default here
    for name in ("metrics.md", "report.html"):
        text = (tmp_path / "r" / name).read_text().replace("\\", "")  # Markdown's escapes
        assert "Options: model scenes-mini" in text and "tta on" in text, name
        assert "method gradcam++" in text and "target space probability" in text, name
        assert "split validation" in text and f"layer {options['layer']}" in text, name
