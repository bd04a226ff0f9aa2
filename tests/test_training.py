"""Training side: the split, the metrics against scikit-learn, and a quick end-to-end run
(train -> export -> runtime -> evaluate), including resume after an interruption."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from scenecam_edge.dataset import load_dataset, stratified_split
from scenecam_edge.metrics import classification_figures, figures_markdown

from .conftest import SHARED_DATA, needs_data, needs_tf

if TYPE_CHECKING:
    from scenecam_edge.training.train import TrainConfig

COLOURS = {"blue": (40, 60, 200), "green": (40, 170, 60), "red": (200, 40, 40)}


@pytest.fixture(scope="module")
def colour_folder(tmp_path_factory) -> Path:
    """Three classes of small noisy colour fields, 14 images each, plus one corrupt file."""
    root = tmp_path_factory.mktemp("colours")
    rng = np.random.default_rng(0)
    for name, rgb in COLOURS.items():
        (root / name).mkdir()
        for i in range(14):
            img = np.clip(np.array(rgb) + rng.normal(0, 30, (40, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / name / f"{i}.png")
    (root / "red" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


def test_split_is_stratified_and_reproducible():
    labels = np.repeat(np.arange(4), [100, 40, 61, 7])
    train, val = stratified_split(labels, 0.2, seed=5)
    again_train, again_val = stratified_split(labels, 0.2, seed=5)
    assert np.array_equal(train, again_train) and np.array_equal(val, again_val)
    assert not set(train) & set(val) and len(train) + len(val) == len(labels)
    for c, n in enumerate([100, 40, 61, 7]):
        assert (labels[val] == c).sum() == round(n * 0.2)
    _, other_val = stratified_split(labels, 0.2, seed=6)
    assert not np.array_equal(val, other_val)


def test_folder_loader(colour_folder: Path, tmp_path: Path):
    data = load_dataset(colour_folder, (32, 32), cache_dir=tmp_path)
    assert data.class_names == ["blue", "green", "red"]
    assert data.images.shape == (42, 32, 32, 3) and data.counts() == {
        "blue": 14,
        "green": 14,
        "red": 14,
    }
    assert [Path(p).name for p, _ in data.skipped] == ["broken.jpg"]
    cached = load_dataset(colour_folder, (32, 32), cache_dir=tmp_path)  # from the cache
    assert np.array_equal(cached.images, data.images) and cached.skipped == data.skipped


def test_metrics_equal_scikit_learn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    names = ["a", "b", "c", "d"]
    y_true = rng.integers(0, 4, 300)
    y_pred = np.where(rng.random(300) < 0.7, y_true, rng.integers(0, 4, 300))
    y_pred[y_pred == 3] = 2  # class d is never predicted: its precision is 0/0
    ours = classification_figures(y_true, y_pred, names)
    ref = sklearn_metrics.classification_report(
        y_true, y_pred, labels=range(4), target_names=names, output_dict=True, zero_division=0
    )
    assert ours["accuracy"] == pytest.approx(ref["accuracy"])
    for name in names:
        for key in ("precision", "recall", "f1"):
            assert ours["per_class"][name][key] == pytest.approx(
                ref[name][f"{key}-score" if key == "f1" else key]
            )
        assert ours["per_class"][name]["support"] == ref[name]["support"]
    for ours_key, ref_key in (("macro_avg", "macro avg"), ("weighted_avg", "weighted avg")):
        for key in ("precision", "recall", "f1"):
            assert ours[ours_key][key] == pytest.approx(
                ref[ref_key][f"{key}-score" if key == "f1" else key]
            )
    assert (
        ours["confusion_matrix"]
        == sklearn_metrics.confusion_matrix(y_true, y_pred, labels=range(4)).tolist()
    )


def quick_config(data: Path, tmp_path: Path, **overrides: Any) -> TrainConfig:
    """A seconds-long run of the small architecture at 32 px, in float32, into tmp_path/run."""
    from scenecam_edge.training.train import TrainConfig

    settings: dict[str, Any] = {
        "data": str(data),
        "out": str(tmp_path / "run"),
        "arch": "small",
        "img_size": 32,
        "batch_size": 8,
        "val_split": 0.25,
        "cache_dir": str(tmp_path / "cache"),
        "precision": "float32",
        # XLA's compile time is most of a seconds-long run (2.4x the file's time with it on);
        # the train command's own test runs with it, the default
        "xla": False,
    }
    return TrainConfig(**{**settings, **overrides})


def test_figures_markdown_tables():
    y_true = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    y_pred = np.array([0, 0, 1, 1, 1, 2, 2, 0, 0])
    md = figures_markdown(classification_figures(y_true, y_pred, ["a", "b", "c"]))
    # a: 2 of the 4 predicted a are right, 2 of the 3 true a are found.
    assert "| a | 0.500 | 0.667 | 0.571 | 3 |" in md
    assert "| b | 0.667 | 1.000 | 0.800 | 2 |" in md
    assert "| **accuracy** | | | **0.667** | 9 |" in md
    assert "| c | 2 | 0 | 2 |" in md  # the confusion matrix row of class c
    assert md.rstrip().endswith("Most frequent mistakes: 2 c called a, 1 a called b.")


@pytest.mark.tf
@needs_tf
def test_train_export_evaluate_and_resume(colour_folder: Path, tmp_path: Path):
    import keras

    from scenecam_edge import SceneCam
    from scenecam_edge.cli import cli
    from scenecam_edge.training.train import TrainConfig, train

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                raise KeyboardInterrupt

    cfg = quick_config(colour_folder, tmp_path, epochs=2, patience=5)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, extra_callbacks=[Interrupt()])
    assert (tmp_path / "run" / "backup").is_dir() and not (tmp_path / "run" / "bundle").exists()

    cfg.resume = True
    bundle = train(cfg)
    with (tmp_path / "run" / "log.csv").open() as fh:
        assert [int(row["epoch"]) for row in csv.DictReader(fh)] == [0, 1]  # resumed, not restarted
    assert not (tmp_path / "run" / "backup").exists()

    cam = SceneCam.load(bundle)
    manifest = cam.manifest
    assert manifest.class_names == ("blue", "green", "red")
    assert manifest.training["epochs_run"] == 2 and manifest.training["split"]["validation"] == 12
    figures = json.loads((tmp_path / "run" / "evaluation.json").read_text())
    assert manifest.evaluation["accuracy"] == figures["accuracy"]

    # The evaluate command gives the same figures on the same split, and a report.
    report = tmp_path / "report"
    result = CliRunner().invoke(
        cli,
        [
            "evaluate",
            str(colour_folder),
            "--model",
            str(bundle),
            "--report",
            str(report),
            "--split",
            "validation",
            "--val-split",
            "0.25",
            "--gallery",
            "2",
        ],
    )
    # the folder's one corrupt photo: one line naming it, exit 1, the figures still written
    assert result.exit_code == 1, result.output
    mentions = [line for line in result.output.splitlines() if "broken.jpg" in line]
    assert len(mentions) == 1 and mentions[0].startswith("error: ")
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["confusion_matrix"] == figures["confusion_matrix"]
    # The Markdown tables, from the run and from evaluate, say the same.
    run_tables = (tmp_path / "run" / "evaluation.md").read_text()
    assert run_tables == figures_markdown(figures)
    assert run_tables in (report / "metrics.md").read_text()
    # Fine-tuning starts from the checkpoint's weights: before any step, the same predictions.
    import keras

    from scenecam_edge.training.architectures import build

    best = keras.models.load_model(tmp_path / "run" / "best.keras", compile=False)
    fresh, _ = build("small", (32, 32), 3, 3)
    fresh.set_weights(best.get_weights())
    probe = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype(np.float32)
    assert np.allclose(np.asarray(fresh(probe)), np.asarray(best(probe)), atol=1e-6)
    tuned = train(
        TrainConfig(
            **{
                **cfg.__dict__,
                "out": str(tmp_path / "tuned"),
                "epochs": 1,
                "resume": False,
                "init_from": str(tmp_path / "run" / "best.keras"),
            }
        )
    )
    record = SceneCam.load(tuned).manifest.training
    assert record["config"]["init_from"].endswith("best.keras")
    # The chain of stages is recorded: the first run's own record, and the time of both.
    first = SceneCam.load(tmp_path / "run" / "bundle").manifest.training
    assert record["started_from"]["training"]["config"] == first["config"]
    assert record["seconds_all_stages"] == pytest.approx(
        first["seconds"] + record["seconds"], abs=0.2
    )
    page = (report / "report.html").read_text()
    assert (
        "Confusion matrix" in page
        and page.count("<figure") == 6
        and "data:image/jpeg;base64," in page
    )


@needs_data
def test_scene_folder_has_the_six_classes():
    names = sorted(p.name for p in (SHARED_DATA / "intel-scenes" / "train").iterdir() if p.is_dir())
    assert names == ["buildings", "forest", "glacier", "mountain", "sea", "street"]


@pytest.mark.tf
@needs_tf
def test_mixup_blends_images_and_labels_alike():
    import tensorflow as tf

    from scenecam_edge.training.pipeline import mixup

    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(0, 255, (16, 4, 4, 3)), tf.float32)
    labels = tf.one_hot(rng.integers(0, 3, 16), 3)
    mx, my = (t.numpy() for t in mixup(x, labels, 0.4))
    assert np.allclose(my.sum(axis=1), 1.0, atol=1e-6) and my.min() >= 0
    assert not np.allclose(mx, x.numpy())  # something was mixed
    # Each mixed image is lam * x_i + (1 - lam) * x_j for the same lam and j as its label.
    xs, ys = x.numpy().reshape(16, -1), labels.numpy()
    for i in range(16):
        fits = []
        for j in range(16):
            d = xs[i] - xs[j]
            lam = 1.0 if not d.any() else float(np.dot(mx[i].ravel() - xs[j], d) / np.dot(d, d))
            if np.allclose(lam * xs[i] + (1 - lam) * xs[j], mx[i].ravel(), atol=1e-3):
                fits.append(np.allclose(lam * ys[i] + (1 - lam) * ys[j], my[i], atol=1e-4))
        assert any(fits), f"example {i} is no blend of two batch members"


@pytest.mark.tf
@needs_tf
@pytest.mark.parametrize(("ema", "val_split"), [(False, 0.25), (True, 0.25), (True, 0.0)])
def test_ema_checkpoints_the_averaged_weights(
    ema: bool, val_split: float, colour_folder: Path, tmp_path: Path
):
    import keras

    from scenecam_edge.training.train import train

    raw: list[list[np.ndarray]] = []

    class LastRawWeights(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            raw[:] = [[w.copy() for w in self.model.get_weights()]]

    cfg = quick_config(colour_folder, tmp_path, epochs=1, mixup=0.2, ema=ema, val_split=val_split)
    bundle = train(cfg, extra_callbacks=[LastRawWeights()])
    kept = "best.keras" if val_split else "final.keras"  # no validation: the last epoch's
    saved = keras.models.load_model(tmp_path / "run" / kept, compile=False).get_weights()
    same = all(np.array_equal(a, b) for a, b in zip(saved, raw[0], strict=True))
    assert same is not ema  # with --ema the checkpoint holds the average, not the last step
    from scenecam_edge import SceneCam

    record = SceneCam.load(bundle).manifest.training["config"]
    assert record["ema"] is ema and record["mixup"] == 0.2


@needs_tf
@pytest.mark.slow
def test_train_command_ends_with_a_summary_and_no_native_log_noise(
    colour_folder: Path, tmp_path: Path
):
    """A real process, since TensorFlow's C++ start-up lines go straight to file descriptor 2."""
    import subprocess
    import sys

    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from scenecam_edge.cli import main; main()",
            "train",
            str(colour_folder),
            "--arch",
            "small",
            "--img-size",
            "32",
            "--epochs",
            "1",
            "--precision",
            "float32",
            "--out",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert re.search(r"^validation accuracy \d+\.\d\d% on \d+ images", proc.stdout, re.M)
    assert f"bundle: {tmp_path / 'run' / 'bundle'}" in proc.stdout
    manifest = json.loads((tmp_path / "run" / "bundle" / "manifest.json").read_text())
    assert manifest["training"]["config"]["xla"] is True  # the default: XLA-compiled steps
    noise = [
        line
        for line in proc.stderr.splitlines()
        if re.match(r"[IWE]\d{4} |WARNING: All log messages", line)
    ]
    assert noise == []
    # the one thing stderr must still carry: the corrupt photo of the folder, named
    assert "broken.jpg" in proc.stderr


@needs_tf
@pytest.mark.slow
def test_notebook_resnet_is_the_notebook_network_and_explains(tmp_path: Path):
    """``notebook-resnet`` as the notebook writes it (zero padding and valid convolutions in
    the stem, max-pool downsampling on both paths of each convolutional block, seeded glorot
    kernels, [0, 1] scaling), exported and explained like any other architecture. At 192 px,
    the smallest input whose last block still has spatial extent (2 x 2)."""
    import keras

    from scenecam_edge import SceneCam
    from scenecam_edge.export import export_keras
    from scenecam_edge.synthetic import wave_images
    from scenecam_edge.training.architectures import build, recipe

    from . import keras_models as km

    assert (recipe("notebook-resnet").img_size, recipe("notebook-resnet").optimizer) == (
        256,
        "adam",
    )
    assert recipe("notebook-resnet").label_smoothing == 0.0
    model, conv_layer = build("notebook-resnet", (192, 192), 3, 6)
    kinds = [type(layer).__name__ for layer in model.layers[:6]]
    assert kinds == [
        "InputLayer",
        "Rescaling",
        "ZeroPadding2D",
        "Conv2D",
        "BatchNormalization",
        "ReLU",
    ]
    assert model.get_layer("stem_conv").padding == "valid" and model.get_layer(
        "stem_conv"
    ).strides == (2, 2)
    assert model.get_layer("stem_pool").padding == "valid"
    for name in ("stage2_conv_conv1", "stage2_conv_proj"):  # 1x1, stride 1, then MaxPool2D(2)
        assert model.get_layer(name).strides == (1, 1) and model.get_layer(name).kernel_size == (
            1,
            1,
        )
    assert model.get_layer("stage2_conv_pool1").pool_size == (2, 2)
    assert model.get_layer("stage2_conv_proj_pool").pool_size == (2, 2)
    init = model.get_layer("stage3_id1_conv2").kernel_initializer
    assert isinstance(init, keras.initializers.GlorotUniform) and init.seed == 0
    # the same seed everywhere, as written: two equally shaped kernels start equal
    twin, _ = build("notebook-resnet", (192, 192), 3, 6)
    assert np.array_equal(
        model.get_layer("stage1_id1_conv2").get_weights()[0],
        twin.get_layer("stage1_id1_conv2").get_weights()[0],
    )
    assert model.get_layer(conv_layer).output.shape[1:3] == (2, 2)

    bundle = export_keras(model, tmp_path / "bundle")
    cam = SceneCam.load(bundle, threads=1)
    assert cam.manifest.conv_layer == conv_layer
    image = wave_images(1, size=192, seed=9)[0]
    expected, _ = km.tape_gradcam(model, conv_layer, image, 1, "probability")
    got = cam.explain(image, target=1, target_space="probability").cam
    ours = got / got.max() if got.max() > 0 else got
    assert np.abs(ours - expected).max() <= 1e-4


@needs_tf
@pytest.mark.parametrize("keep", [False, True])
def test_training_leaves_out_twins_under_two_labels(
    keep: bool, colour_folder: Path, tmp_path: Path
):
    """A photo filed under two classes is left out of training (both copies), not validation;
    --keep-conflicts keeps it. The split itself does not move."""
    from scenecam_edge.training.train import train

    data = tmp_path / "data"
    shutil.copytree(colour_folder, data)
    shutil.copy(data / "red" / "3.png", data / "blue" / "twin-of-red-3.png")
    train(quick_config(data, tmp_path, epochs=1, keep_conflicts=keep))
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    twins = {str(data / "red" / "3.png"), str(data / "blue" / "twin-of-red-3.png")}
    assert set(split["label_conflicts"]) == (set() if keep else twins)
    in_validation = twins & set(split["val_sources"])
    assert split["train_count"] == 14 * 3 + 1 - split["val_count"] - (
        0 if keep else 2 - len(in_validation)
    )


@pytest.mark.tf
@needs_tf
def test_every_image_trains_with_the_recipe_runs_estimate(colour_folder: Path, tmp_path: Path):
    """``--val-split 0``: the recipe chosen on the split, trained on every image; the bundle
    carries the recipe run's validation figures, marked as an estimate."""
    from scenecam_edge import SceneCam
    from scenecam_edge.cli import cli
    from scenecam_edge.training.train import train

    recipe_run = tmp_path / "recipe"
    train(quick_config(colour_folder, tmp_path, epochs=1, out=str(recipe_run)))
    quick = ["--arch", "small", "--img-size", "32", "--batch-size", "8", "--precision", "float32"]
    quick.append("--no-xla")  # as quick_config: compiling would be most of the time
    runner = CliRunner()
    args = ["train", str(colour_folder), *quick, "--epochs", "2", "--ema"]
    every = tmp_path / "every"
    result = runner.invoke(
        cli, [*args, "--val-split", "0", "--estimate-from", str(recipe_run), "--out", str(every)]
    )
    assert result.exit_code == 0, result.output
    recipe_figures = json.loads((recipe_run / "evaluation.json").read_text())
    assert (
        f"trained 2 epochs on all 42 images; accuracy estimate {recipe_figures['accuracy']:.2%}, "
        f"from the validation split of {recipe_run}"
    ) in result.output
    assert (every / "final.keras").is_file() and not (every / "best.keras").exists()
    assert not (every / "evaluation.json").exists()  # nothing was held out to evaluate on
    manifest = SceneCam.load(every / "bundle").manifest
    assert manifest.training["split"] == {
        "seed": 1337, "val_fraction": 0.0, "train": 42, "validation": 0
    }  # fmt: skip
    assert manifest.training["epochs_run"] == 2 and manifest.training["best_epoch"] is None
    assert manifest.evaluation["accuracy"] == recipe_figures["accuracy"]
    assert manifest.evaluation["estimate_from"]["run"] == str(recipe_run)
    assert manifest.evaluation["estimate_from"]["training"]["arch"] == "small"
    info = runner.invoke(cli, ["info", str(every / "bundle"), "--json"])
    assert json.loads(info.output)["accuracy_estimated_from_recipe"] is True
    # evaluate says that figures on the training data measure fit, not accuracy
    report = runner.invoke(
        cli, ["evaluate", str(colour_folder), "--model", str(every / "bundle"), "--report",
              str(tmp_path / "report"), "--split", "all", "--gallery", "0"],
    )  # fmt: skip
    assert f"note: {manifest.name} was trained on every image of" in report.stderr
    # quantize compares on the recipe run's split and keeps the estimate as the accuracy
    int8 = tmp_path / "every-int8"
    quantized = runner.invoke(
        cli, ["quantize", str(every / "bundle"), "--calibration", str(colour_folder),
              "--out", str(int8), "--min-calibration", "1", "--no-cache"],
    )  # fmt: skip
    assert quantized.exit_code == 1, quantized.output  # the folder's one broken image
    assert "was trained on every image, these included" in quantized.stderr
    recipe_split = manifest.evaluation["estimate_from"]["training"]["split"]
    quantized_manifest = SceneCam.load(int8).manifest
    assert quantized_manifest.evaluation == manifest.evaluation
    comparison = quantized_manifest.raw["quantization"]["comparison"]
    assert comparison["images"] == recipe_split["validation"] > 0
    # --estimate-from needs a run on every image, and a finished run of the same architecture
    wrong = runner.invoke(
        cli, [*args, "--estimate-from", str(recipe_run), "--out", str(tmp_path / "x")]
    )
    assert wrong.exit_code == 2 and "is for a run on every image (--val-split 0)" in wrong.output
    every_image = [*args, "--val-split", "0", "--out", str(tmp_path / "y"), "--estimate-from"]
    wrong = runner.invoke(cli, [*every_image, str(recipe_run), "--arch", "mnist-tutorial"])
    assert wrong.exit_code == 2 and "not a validated run of --arch mnist-tutorial" in wrong.output
    wrong = runner.invoke(cli, [*every_image, str(tmp_path)])
    assert wrong.exit_code == 2 and "not a finished training run" in wrong.output
