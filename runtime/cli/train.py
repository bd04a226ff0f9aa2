"""``scenecam-edge train``: train an architecture on a labelled dataset (needs the train extra)."""

from __future__ import annotations

import click

from .common import needs_train_extra


@click.command()
@click.argument("data_dir", type=click.Path(exists=True))
@click.option(
    "--out", required=True, type=click.Path(), help="Run folder (checkpoints, log, bundle)."
)
@click.option(
    "--arch",
    default="resnet18",
    show_default=True,
    type=click.Choice(["resnet18", "seed-resnet", "small"]),
    help="Architecture.",
)
@click.option("--epochs", default=30, show_default=True, type=click.IntRange(min=1))
@click.option("--img-size", default=150, show_default=True, type=click.IntRange(min=8))
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--val-split",
    default=0.15,
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
)
@click.option("--seed", default=1337, show_default=True, type=int)
@click.option(
    "--lr", "learning_rate", default=2e-3, show_default=True, type=float, help="Peak learning rate."
)
@click.option(
    "--patience", default=6, show_default=True, type=int, help="Early-stopping patience (epochs)."
)
@click.option(
    "--precision",
    type=click.Choice(["auto", "bfloat16", "float32"]),
    default="auto",
    show_default=True,
)
@click.option("--channels", type=click.Choice(["1", "3"]), default="3", show_default=True)
@click.option("--name", default=None, help="Name written into the bundle's manifest.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its last epoch.")
def train(data_dir: str, out: str, channels: str, **options: object) -> None:
    """Train on DATA_DIR (class-per-folder images, or an .npz with x and y)."""
    try:
        from scenecam_edge.training.train import TrainConfig
        from scenecam_edge.training.train import train as run_training
    except ImportError:
        needs_train_extra("train")
    config = TrainConfig(data=data_dir, out=out, channels=int(channels), **options)  # type: ignore[arg-type]
    bundle = run_training(config)
    click.echo(f"wrote {bundle}")
