"""``scenecam-edge train``: train an architecture on a labelled dataset (needs the train extra)."""

from __future__ import annotations

import json
from pathlib import Path

import click
from click.core import ParameterSource

from .common import (
    EXIT_USAGE,
    fail,
    needs_train_extra,
    quiet_tensorflow,
    training_split_options,
)
from .interrupts import note_progress

# Kept here as plain names so that --help works without importing TensorFlow; the training
# module checks them against its registry.
ARCHITECTURES = (
    "resnet18",
    "efficientnet-lite0",
    "seed-resnet",
    "notebook-resnet",
    "small",
    "mnist-tutorial",
)


@click.command()
@click.argument("data_dir", type=click.Path(exists=True))
@click.option(
    "--out", required=True, type=click.Path(), help="Run folder (checkpoints, log, bundle)."
)
@click.option(
    "--arch",
    default="resnet18",
    show_default=True,
    type=click.Choice(ARCHITECTURES),
    help="Architecture.",
)
@click.option("--epochs", default=30, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--img-size",
    default=None,
    type=click.IntRange(min=8),
    help="Square input size [default: the architecture's, 150 or 28].",
)
@click.option(
    "--channels",
    default=None,
    type=click.IntRange(min=1),
    help="Input channels: 1, 3, or any number of bands for GeoTIFF chips "
    "[default: the architecture's].",
)
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@training_split_options
@click.option(
    "--lr",
    "learning_rate",
    default=None,
    type=click.FloatRange(min=0.0, min_open=True),
    help="Peak learning rate [default: 2e-3; with --pretrained, 1e-3 for the top stage, "
    "x3 for the head on cached features, x0.2 for the whole network].",
)
@click.option(
    "--pretrained",
    type=click.Choice(["imagenet"]),
    default=None,
    help="Start from ImageNet weights (efficientnet-lite0, from the efficientnet-lite0-pytorch-"
    "model package) and fine-tune in stages: see --stages.",
)
@click.option(
    "--stages",
    default=None,
    metavar="LAYERS:EPOCHS,...",
    help="With --pretrained: the stages and their epochs, each in its own folder under --out "
    "[default: head:40,top:8,all:4]. head: the classifier on cached features; top: blocks "
    "8-15 and the head; all: every layer. Replaces --epochs.",
)
@click.option(
    "--optimizer",
    default=None,
    type=click.Choice(["adamw", "nadam", "adam"]),
    help="[default: the architecture's]",
)
@click.option(
    "--augment/--no-augment", default=None, help="Augmentation [default: the architecture's]."
)
@click.option(
    "--patience",
    default=6,
    show_default=True,
    type=click.IntRange(min=1),
    help="Early-stopping patience (epochs).",
)
@click.option(
    "--precision",
    type=click.Choice(["auto", "bfloat16", "float32"]),
    default="auto",
    show_default=True,
)
@click.option("--name", default=None, help="Name written into the bundle's manifest.")
@click.option(
    "--init-from",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Start from the weights of a .keras checkpoint of the same architecture (fine-tuning).",
)
@click.option(
    "--mixup",
    type=click.FloatRange(min=0.0),
    default=0.0,
    show_default=True,
    help="Mixup: blend each training batch with a shuffled copy of itself, images and labels, "
    "weights drawn from Beta(a, a). 0: off; 0.2 is usual.",
)
@click.option(
    "--ema/--no-ema",
    default=False,
    show_default=True,
    help="Validate, checkpoint and export an exponential moving average of the weights.",
)
@click.option(
    "--keep-conflicts",
    is_flag=True,
    help="Keep training images that appear again, pixel for pixel, under another label "
    "(by default they are left out of training; validation keeps them).",
)
@click.option(
    "--estimate-from",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="With --val-split 0: a run of the same recipe on the split, whose validation "
    "figures the bundle records as its accuracy estimate.",
)
@click.option(
    "--xla/--no-xla",
    default=None,
    help="Compile the train step with XLA [default: the architecture's: on for ResNet-18, "
    "1.4x faster on a CPU; off for EfficientNet, whose depthwise convolutions it slows].",
)
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its last epoch.")
def train(
    data_dir: str,
    out: str,
    arch: str,
    epochs: int,
    img_size: int | None,
    channels: int | None,
    batch_size: int,
    val_split: float,
    seed: int,
    learning_rate: float | None,
    pretrained: str | None,
    stages: str | None,
    optimizer: str | None,
    augment: bool | None,
    patience: int,
    precision: str,
    name: str | None,
    init_from: str | None,
    mixup: float,
    ema: bool,
    keep_conflicts: bool,
    estimate_from: str | None,
    xla: bool | None,
    resume: bool,
) -> None:
    """Train on DATA_DIR (class-per-folder images, or an .npz with x and y), then export the
    best checkpoint as a float32 bundle and evaluate it on the validation split."""
    note_progress(
        lambda: f"the epochs finished so far are checkpointed in {out}; add --resume to go on"
    )
    with quiet_tensorflow():
        try:
            from scenecam_edge.training.finetune import (
                DEFAULT_STAGES,
                PRETRAINED_LR,
                parse_stages,
                run_stages,
            )
            from scenecam_edge.training.train import TrainConfig
            from scenecam_edge.training.train import train as run_training
        except ImportError:
            needs_train_extra("train")
        ctx = click.get_current_context()
        if pretrained is None and stages is not None:
            fail("--stages: only with --pretrained", EXIT_USAGE)
        if pretrained and ctx.get_parameter_source("epochs") is ParameterSource.COMMANDLINE:
            fail("--epochs: a pretrained run sets each stage's epochs with --stages", EXIT_USAGE)
        try:
            plan = parse_stages(stages) if stages else DEFAULT_STAGES
        except ValueError as exc:
            fail(str(exc), EXIT_USAGE)
        if learning_rate is None:
            learning_rate = PRETRAINED_LR if pretrained else 2e-3
        config = TrainConfig(
            data=data_dir,
            out=out,
            arch=arch,
            epochs=epochs,
            img_size=img_size,
            channels=channels,
            batch_size=batch_size,
            val_split=val_split,
            seed=seed,
            learning_rate=learning_rate,
            optimizer=optimizer,
            augment=augment,
            patience=patience,
            precision=precision,
            name=name,
            init_from=init_from,
            mixup=mixup,
            ema=ema,
            keep_conflicts=keep_conflicts,
            estimate_from=estimate_from,
            xla=xla,
            resume=resume,
            pretrained=pretrained,
        )
        try:
            bundle = run_stages(config, plan, run_training) if pretrained else run_training(config)
        except ValueError as exc:
            fail(f"{data_dir}: {exc}", EXIT_USAGE)
        click.echo(_summary(bundle.parent, bundle))


def _summary(out: Path, bundle: Path) -> str:
    """What a run ends with: the validation figures of the exported bundle, and where the
    run's files are."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    training = manifest.get("training", {})
    if not (out / "evaluation.json").exists():  # --val-split 0: every image trained
        estimate = manifest.get("evaluation")
        said = (
            f"accuracy estimate {estimate['accuracy']:.2%}, from the validation split of "
            f"{estimate['estimate_from']['run']}"
            if estimate
            else "no validation and no --estimate-from: the bundle carries no accuracy"
        )
        return "\n".join(
            [
                f"trained {training.get('epochs_run')} epochs on all {training['split']['train']} "
                f"images; {said}",
                f"bundle: {bundle} (try: scenecam-edge classify --model {bundle} PHOTO)",
            ]
        )
    figures = json.loads((out / "evaluation.json").read_text())
    best, run = training.get("best_epoch"), training.get("epochs_run")
    lines = [
        f"validation accuracy {figures['accuracy']:.2%} on {figures['count']} images, "
        f"macro F1 {figures['macro_avg']['f1']:.3f}"
        + (f" (checkpoint of epoch {best} of {run}, lowest validation loss)" if best else ""),
        f"per class and confusion matrix: {out / 'evaluation.md'}",
        f"bundle: {bundle} (try: scenecam-edge classify --model {bundle} PHOTO)",
    ]
    return "\n".join(lines)
