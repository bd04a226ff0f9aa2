"""Fine-tuning from pretrained weights in stages that fit two CPU cores.

``scenecam-edge train DATA --arch efficientnet-lite0 --pretrained imagenet`` runs three
stages, each a complete training run (checkpoint, bundle, evaluation) in its own folder
under ``--out``, each starting from the one before:

1. ``head``: the backbone's pooled features are computed once (no augmentation) and cached in
   the stage folder; the classifier is fitted on them. Minutes, and already a good model.
2. ``top``: the last two stride-32 stages (blocks 8-15), the head convolution and the
   classifier train on augmented photos; everything below stays as ImageNet left it.
3. ``all``: every layer trains at a fifth of the rate.

Batch norm stays frozen (inference statistics) in every stage: with small batches of a small
data set, updating ImageNet's statistics hurts more than it helps, and the exported graph is
then the one that was validated. A stage whose bundle and evaluation exist is done and is
skipped when the run is started again with ``--resume``; the stage in progress resumes from
its last epoch. The run's result is the bundle of the stage with the best validation
accuracy (the latest of equals): a later stage that trains more layers can overfit a small
data set, and each stage's figures come from the same split its early stopping watched.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras
import numpy as np

from scenecam_edge.dataset import LabelledImages
from scenecam_edge.fileio import write_json_atomic

if TYPE_CHECKING:
    from .train import TrainConfig

log = logging.getLogger(__name__)

TRAIN_LAYERS = ("head", "top", "all")


@dataclass(frozen=True)
class Stage:
    layers: str  # one of TRAIN_LAYERS
    epochs: int
    lr_scale: float  # of --lr (the top stage's peak rate)


#: The recipe behind the shipped scenes-lite0 model (docs/models.md has its figures).
DEFAULT_STAGES = (Stage("head", 40, 3.0), Stage("top", 8, 1.0), Stage("all", 4, 0.2))
#: --lr's default for a pretrained run: the top stage's peak rate.
PRETRAINED_LR = 1e-3


def parse_stages(text: str) -> tuple[Stage, ...]:
    """``head:40,top:8,all:4`` -> stages in that order, with the recipe's rate scales."""
    scales = {s.layers: s.lr_scale for s in DEFAULT_STAGES}
    stages = []
    for part in text.split(","):
        name, _, epochs = part.strip().partition(":")
        if name not in scales or not epochs.isdigit() or int(epochs) < 1:
            raise ValueError(
                f"--stages {text!r}: expected NAME:EPOCHS[,...] with NAME one of {TRAIN_LAYERS}"
            )
        stages.append(Stage(name, int(epochs), scales[name]))
    return tuple(stages)


def run_stages(
    cfg: TrainConfig, stages: tuple[Stage, ...], train: Callable[[TrainConfig], Path]
) -> Path:
    """Run ``stages`` one after another in ``cfg.out/<n>-<layers>``; returns the bundle of the
    stage with the best validation accuracy (the last stage's, with no validation)."""
    out = Path(cfg.out)
    previous: Path | None = Path(cfg.init_from) if cfg.init_from else None
    bundle = out
    record: list[dict[str, Any]] = []
    for n, stage in enumerate(stages, start=1):
        folder = out / f"{n}-{stage.layers}"
        bundle = folder / "bundle"
        # train() writes the manifest last and then removes the resume state
        done = (bundle / "manifest.json").is_file() and not (folder / "backup").exists()
        if done and cfg.resume:
            log.info("stage %d (%s) is done: %s", n, stage.layers, folder)
        else:
            log.info("stage %d: %s, %d epochs", n, stage.layers, stage.epochs)
            train(
                replace(
                    cfg,
                    out=str(folder),
                    epochs=stage.epochs,
                    learning_rate=cfg.learning_rate * stage.lr_scale,
                    train_layers=stage.layers,
                    init_from=str(previous) if previous else None,
                    resume=cfg.resume and folder.exists(),
                    # every image (--val-split 0): each stage's estimate is the same stage of
                    # the recipe's run on the split
                    estimate_from=str(Path(cfg.estimate_from) / folder.name)
                    if cfg.estimate_from
                    else None,
                )
            )
        kept = [folder / "best.keras", folder / "final.keras"]  # final: no validation
        previous = next((p for p in kept if p.is_file()), kept[0])
        scores = folder / "evaluation.json"  # none with --val-split 0
        figures = json.loads(scores.read_text(encoding="utf-8")) if scores.is_file() else {}
        record.append({"stage": stage.layers, "epochs": stage.epochs, "folder": str(folder)})
        record[-1]["accuracy"] = figures.get("accuracy")
    scored = [r for r in record if isinstance(r["accuracy"], float)]
    if scored:  # max() keeps the first of equals: look from the last stage back
        best = max(reversed(scored), key=lambda r: r["accuracy"])
        bundle = Path(best["folder"]) / "bundle"
    write_json_atomic(out / "stages.json", {"stages": record, "bundle": str(bundle)})
    log.info("result: %s", bundle)
    return bundle


def set_trainable(model: keras.Model, which: str, top_prefixes: tuple[str, ...]) -> None:
    """Freeze all but ``which`` ("head": the classifier; "top": layers whose names start with
    ``top_prefixes`` and the classifier; "all": everything). Batch norm stays frozen."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
        elif which == "all":
            layer.trainable = True
        elif which == "top":
            layer.trainable = layer.name == "predictions" or layer.name.startswith(top_prefixes)
        else:
            layer.trainable = layer.name == "predictions"


def fit_head_on_features(
    model: keras.Model,
    train_set: LabelledImages,
    val_set: LabelledImages,
    cfg: TrainConfig,
    out: Path,
) -> None:
    """Fit ``model``'s classifier on the frozen backbone's pooled features, computed once and
    cached in ``out/features.npz``; writes the log and copies the fitted weights back."""
    pooled = keras.Model(model.input, model.get_layer("gap").output)
    cache = out / "features.npz"
    if cfg.resume and cache.is_file():
        with np.load(cache, allow_pickle=False) as f:
            x_train, x_val = f["train"], f["validation"]
    else:
        x_train = pooled.predict(train_set.images, batch_size=cfg.batch_size, verbose=0)
        x_val = pooled.predict(val_set.images, batch_size=cfg.batch_size, verbose=0)
        tmp = out / "features.tmp.npz"
        np.savez(tmp, train=x_train, validation=x_val)
        tmp.replace(cache)
    log.info("features cached: %s (%d + %d images)", cache, len(x_train), len(x_val))
    dense = model.get_layer("predictions")
    k = int(x_train.shape[1])
    inp = keras.Input((k,))
    dropped = keras.layers.Dropout(model.get_layer("dropout").rate)(inp)
    head = keras.layers.Dense(dense.units, activation="softmax", name="predictions")
    probe = keras.Model(inp, head(dropped))
    probe.compile(
        optimizer=keras.optimizers.AdamW(cfg.learning_rate, weight_decay=cfg.weight_decay),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing or 0.0),
        metrics=["accuracy"],
    )
    n = dense.units
    has_val = len(x_val) > 0
    probe.fit(
        x_train,
        keras.utils.to_categorical(train_set.labels, n),
        validation_data=(x_val, keras.utils.to_categorical(val_set.labels, n)) if has_val else None,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        verbose=0,
        callbacks=[
            keras.callbacks.CSVLogger(str(out / "log.csv")),
            *(
                [
                    keras.callbacks.EarlyStopping(
                        monitor="val_loss", patience=cfg.patience, restore_best_weights=True
                    )
                ]
                if has_val
                else []
            ),
        ],
    )
    dense.set_weights(head.get_weights())
