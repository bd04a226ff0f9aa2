"""The training loop: augmentation, a cosine schedule, early stopping, checkpoints, resume,
bfloat16 mixed precision where the CPU has it, then a float32 bundle and its evaluation.

Run folder layout (``--out``)::

    log.csv             one row per epoch (loss, accuracy, val_loss, val_accuracy, lr)
    best.keras          the checkpoint with the lowest validation loss
    backup/             the last epoch's state, for --resume (removed when a run completes)
    split.json          the validation split (seed, fraction, files)
    bundle/             the exported float32 bundle of the best checkpoint
    evaluation.json     its figures on the validation split, through the runtime
    evaluation.md       the same as Markdown tables (per class, confusion matrix)
"""

from __future__ import annotations

import json
import logging
import shlex
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import keras
import numpy as np

from scenecam_edge import SceneCam
from scenecam_edge.bundle import update_manifest
from scenecam_edge.dataset import default_cache_dir, label_conflicts, stratified_split
from scenecam_edge.evaluation import evaluate
from scenecam_edge.fileio import write_bytes_atomic, write_json_atomic
from scenecam_edge.metrics import figures_markdown
from scenecam_edge.training.architectures import build, recipe
from scenecam_edge.training.chips import load_training_data
from scenecam_edge.training.finetune import TRAIN_LAYERS, fit_head_on_features, set_trainable
from scenecam_edge.training.pipeline import dataset

log = logging.getLogger(__name__)

OPTIMIZERS = ("adamw", "nadam", "adam")

#: Per-step decay of the weights' moving average with --ema (about the last 100 steps).
EMA_MOMENTUM = 0.99


@dataclass
class TrainConfig:
    data: str
    out: str
    arch: str = "resnet18"
    epochs: int = 30
    img_size: int | None = None  # None: the architecture's recipe
    batch_size: int = 64
    val_split: float = 0.15  # 0: train on every image, no validation (see estimate_from)
    seed: int = 1337
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    label_smoothing: float | None = None
    optimizer: str | None = None  # one of OPTIMIZERS
    augment: bool | None = None
    patience: int = 6
    precision: str = "auto"  # "auto" (bf16 where the CPU has it), "bfloat16" or "float32"
    channels: int | None = None
    resume: bool = False
    cache_dir: str | None = None
    name: str | None = None
    init_from: str | None = None  # a .keras checkpoint of the same architecture to start from
    mixup: float = 0.0  # Beta(a, a) parameter of mixup; 0: off
    keep_conflicts: bool = False  # keep training images whose twin carries another label
    ema: bool = False  # validate, checkpoint and export the weights' moving average
    # With val_split 0: the run (folder) whose validation figures estimate this model's
    # accuracy, that of the same recipe on the split; recorded in the manifest as such.
    estimate_from: str | None = None
    # XLA-compile the train step. Keras turns it off on machines without an accelerator; on
    # this project's CPUs it makes ResNet-18's step 1.37x faster (benchmarks/train_speed.py).
    xla: bool | None = None  # None: the architecture's recipe
    # Start from these weights (only "imagenet", for efficientnet-lite0) and train only
    # train_layers ("head", "top" or "all"; see training/finetune.py).
    pretrained: str | None = None
    train_layers: str = "all"


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def train(cfg: TrainConfig, extra_callbacks: list[keras.callbacks.Callback] | None = None) -> Path:
    """Train, keep the best checkpoint, export it as a float32 bundle, evaluate it.

    ``extra_callbacks`` run after the built-in ones (logging, checkpoints, resume state).
    """
    cfg = resolve(cfg)
    every_image = cfg.val_split == 0
    if cfg.estimate_from and not every_image:
        raise ValueError("--estimate-from is for a run on every image (--val-split 0)")
    estimate = _estimate(cfg.estimate_from, cfg.arch) if cfg.estimate_from else None
    if cfg.pretrained and cfg.pretrained not in recipe(cfg.arch).pretrained:
        raise ValueError(f"--arch {cfg.arch} has no {cfg.pretrained!r} weights to start from")
    if cfg.train_layers != "all" and not cfg.pretrained:
        raise ValueError("training only some layers needs a pretrained start (--pretrained)")
    if every_image and estimate is None:
        log.warning("every image trains and none validates: the bundle will carry no accuracy")
    channels = cfg.channels or 3
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(cfg.seed)
    size = (cfg.img_size or 150, cfg.img_size or 150)
    cache = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
    data = load_training_data(cfg.data, size, channels, cache_dir=cache)
    for path, reason in data.skipped:
        log.warning("skipped %s: %s", path, reason)
    if every_image:  # the recipe was chosen on the split; now it gets every image
        train_idx, val_idx = np.arange(len(data.labels)), np.arange(0)
    else:
        train_idx, val_idx = stratified_split(data.labels, cfg.val_split, cfg.seed)
    conflicts = [] if cfg.keep_conflicts else label_conflicts(data.images, data.labels).tolist()
    if conflicts:  # dropped from training only: the validation split stays the same
        train_idx = np.setdiff1d(train_idx, conflicts)
        log.info("left out of training: %d images whose twin has another label", len(conflicts))
    train_set, val_set = data.subset(train_idx), data.subset(val_idx)
    write_json_atomic(
        out / "split.json",
        {
            "seed": cfg.seed,
            "val_fraction": cfg.val_split,
            "train_count": len(train_set),
            "val_count": len(val_set),
            "val_sources": val_set.sources,
            "skipped": data.skipped,
            "label_conflicts": [data.sources[i] for i in conflicts],
        },
    )
    log.info(
        "train %d, validation %d images, classes %s", len(train_set), len(val_set), data.class_names
    )

    auto_bf16 = cfg.precision == "auto" and cpu_has_bf16() and recipe(cfg.arch).bf16
    bf16 = cfg.precision == "bfloat16" or auto_bf16
    policy = "mixed_bfloat16" if bf16 else "float32"
    keras.mixed_precision.set_global_policy(policy)
    try:
        model, _ = build(cfg.arch, size, channels, len(data.class_names))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    if cfg.init_from:
        start = keras.models.load_model(cfg.init_from, compile=False)
        try:
            model.set_weights(start.get_weights())
        except ValueError as exc:
            raise ValueError(
                f"--init-from {cfg.init_from}: not a {cfg.arch} model ({exc})"
            ) from None
        log.info("starting from the weights of %s", cfg.init_from)
    elif cfg.pretrained:
        from .lite0 import start_from

        start_from(model, cfg.pretrained)
    if cfg.pretrained:
        from .lite0 import TOP_PREFIXES

        set_trainable(model, cfg.train_layers, TOP_PREFIXES)

    steps = int(np.ceil(len(train_set) / cfg.batch_size))
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=cfg.learning_rate * 0.1,
        decay_steps=steps * max(1, cfg.epochs - 1),
        warmup_target=cfg.learning_rate,
        warmup_steps=steps,
    )
    # --ema: the optimizer keeps a moving average of the trainable weights, updated every step.
    ema: dict[str, Any] = {"use_ema": True, "ema_momentum": EMA_MOMENTUM} if cfg.ema else {}
    optimizer = (
        keras.optimizers.Nadam(schedule, **ema)
        if cfg.optimizer == "nadam"
        else keras.optimizers.Adam(schedule, **ema)
        if cfg.optimizer == "adam"
        else keras.optimizers.AdamW(schedule, weight_decay=cfg.weight_decay, **ema)
    )
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing or 0.0),
        metrics=["accuracy"],
        jit_compile=cfg.xla,
    )
    backup = out / "backup"
    if not cfg.resume and backup.exists():
        shutil.rmtree(backup)
    if cfg.resume and not backup.exists():
        log.warning("--resume: no backup in %s, starting from scratch", backup)
    # The checkpoint kept: the lowest validation loss, or with no validation the last epoch.
    best = out / ("final.keras" if every_image else "best.keras")
    # With --ema, validation and the checkpoint see the averaged weights: the swap comes first.
    swap = [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if cfg.ema else []
    keep: list[keras.callbacks.Callback] = (
        [keras.callbacks.ModelCheckpoint(str(best))]
        if every_image
        else [
            keras.callbacks.ModelCheckpoint(str(best), monitor="val_loss", save_best_only=True),
            keras.callbacks.EarlyStopping(monitor="val_loss", patience=cfg.patience),
        ]
    )
    callbacks = [
        keras.callbacks.BackupAndRestore(str(backup)),
        *swap,
        *keep,
        keras.callbacks.CSVLogger(str(out / "log.csv"), append=cfg.resume),
        *(extra_callbacks or []),
    ]
    started = time.perf_counter()
    if cfg.train_layers == "head":  # on cached features: no augmentation, seconds an epoch
        fit_head_on_features(model, train_set, val_set, cfg, out)
        model.save(best)
    else:
        model.fit(
            dataset(train_set, cfg, training=True),
            validation_data=None if every_image else dataset(val_set, cfg, training=False),
            epochs=cfg.epochs,
            shuffle=False,  # the tf.data pipeline shuffles; fit's own flag would be ignored
            callbacks=callbacks,
            verbose=1 if sys.stderr.isatty() else 2,
        )
    train_seconds = time.perf_counter() - started

    epochs = _read_log(out / "log.csv")  # the whole run, across resumes
    val_losses = [row["val_loss"] for row in epochs if "val_loss" in row]
    training = {
        "arch": cfg.arch,
        "dataset": str(cfg.data),
        "classes": data.counts(),
        "split": {
            "seed": cfg.seed,
            "val_fraction": cfg.val_split,
            "train": len(train_set),
            "validation": len(val_set),
        },
        "epochs_run": len(epochs),
        "best_epoch": int(np.argmin(val_losses)) + 1 if val_losses else None,
        "precision": policy,
        "img_size": cfg.img_size,
        "batch_size": cfg.batch_size,
        "seconds": round(train_seconds, 1),
        "config": asdict(cfg),
        "command": "scenecam-edge " + shlex.join(sys.argv[1:]) if sys.argv else "",
    }
    if cfg.init_from:
        training.update(earlier_stages(cfg.init_from, training))
    name = cfg.name or f"{Path(cfg.data).stem}-{cfg.arch}"
    bundle = export_checkpoint(
        best,
        out / "bundle",
        size=size,
        channels=channels,
        class_names=data.class_names,
        name=name,
        training=training,
    )
    cam = SceneCam.load(bundle)
    fields: dict[str, Any] = {}
    if len(val_set):
        evaluation = evaluate(cam, val_set).figures
        write_json_atomic(out / "evaluation.json", evaluation)
        write_bytes_atomic(out / "evaluation.md", figures_markdown(evaluation).encode())
        fields["evaluation"] = _summary(evaluation, "validation split")
    elif estimate is not None:
        fields["evaluation"] = estimate
    if data.band_stretch is not None:  # tiles applies it: serving sees what training saw
        fields["input"] = {**cam.manifest.raw["input"], "band_stretch": data.band_stretch}
    update_manifest(bundle, **fields)
    if backup.exists():
        shutil.rmtree(backup)
    if len(val_set):
        log.info("validation accuracy %.4f; bundle %s", evaluation["accuracy"], bundle)
    return bundle


def export_checkpoint(
    checkpoint: Path,
    out: Path,
    *,
    size: tuple[int, int],
    channels: int,
    class_names: list[str],
    name: str,
    training: dict[str, Any],
) -> Path:
    """The bundle of a run's checkpoint: float32 whatever the training precision (the
    recipe's model rebuilt and the weights copied), with the recipe's extra layers."""
    from scenecam_edge.export import export_keras

    arch = training["arch"]
    trained = keras.models.load_model(checkpoint, compile=False)
    model, conv_layer = build(arch, size, channels, len(class_names))
    model.set_weights(trained.get_weights())
    return export_keras(
        model,
        out,
        conv_layer=conv_layer,
        extra_layers=recipe(arch).extra_layers,
        class_names=class_names,
        name=name,
        training=training,
        overwrite=True,
    )


def resolve(cfg: TrainConfig) -> TrainConfig:
    """Fill what the command line left open from the architecture's recipe."""
    r = recipe(cfg.arch)
    if cfg.train_layers not in TRAIN_LAYERS:
        raise ValueError(f"train_layers must be one of {TRAIN_LAYERS}, not {cfg.train_layers!r}")
    if cfg.optimizer not in (None, *OPTIMIZERS):
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, not {cfg.optimizer!r}")
    return replace(
        cfg,
        img_size=cfg.img_size or r.img_size,
        channels=cfg.channels or r.channels,
        optimizer=cfg.optimizer or r.optimizer,
        augment=r.augment if cfg.augment is None else cfg.augment,
        label_smoothing=r.label_smoothing if cfg.label_smoothing is None else cfg.label_smoothing,
        xla=r.xla if cfg.xla is None else cfg.xla,
    )


def earlier_stages(init_from: str | Path, this_stage: dict[str, Any]) -> dict[str, Any]:
    """Provenance of a run that started from another run's checkpoint: that run's own
    ``training`` record (read from the bundle beside the checkpoint, when there is one) under
    ``started_from``, and the time of all stages together, so that a chain of runs can be
    reproduced command by command."""
    record: dict[str, Any] = {"checkpoint": str(init_from)}
    manifest = Path(init_from).parent / "bundle" / "manifest.json"
    earlier: dict[str, Any] = {}
    if manifest.is_file():
        earlier = json.loads(manifest.read_text(encoding="utf-8")).get("training", {})
        record["training"] = earlier
    seconds = [this_stage.get("seconds"), earlier.get("seconds_all_stages", earlier.get("seconds"))]
    fields: dict[str, Any] = {"started_from": record}
    if all(isinstance(x, (int, float)) for x in seconds):
        fields["seconds_all_stages"] = round(sum(seconds), 1)  # type: ignore[arg-type]
    return fields


def _estimate(run: str | Path, arch: str) -> dict[str, Any]:
    """The accuracy estimate of a model trained on every image: the validation figures of the
    run that chose its recipe on the split (``run``'s evaluation.json and its bundle's
    training record), saying so."""
    folder = Path(run)
    try:
        figures = json.loads((folder / "evaluation.json").read_text(encoding="utf-8"))
        manifest = json.loads((folder / "bundle" / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"--estimate-from {run}: not a finished training run ({exc})") from None
    if not isinstance(figures, dict) or not isinstance(manifest, dict):
        raise ValueError(f"--estimate-from {run}: not a finished training run")
    training = manifest.get("training") or {}
    if not isinstance(figures.get("accuracy"), float) or training.get("arch") != arch:
        raise ValueError(
            f"--estimate-from {run}: not a validated run of --arch {arch} "
            f"(its architecture: {training.get('arch')})"
        )
    on = (
        f"validation split of {run}: the same recipe trained without those images (this "
        "model trained on them too, so this is the recipe's estimate, not a measurement)"
    )
    return {**_summary(figures, on), "estimate_from": {"run": str(run), "training": training}}


def _read_log(path: Path) -> list[dict[str, float]]:
    import csv

    with path.open(newline="") as fh:
        # CSVLogger writes NA under val_* in a run without validation
        rows = csv.DictReader(fh)
        return [{k: float(v) for k, v in row.items() if v and v != "NA"} for row in rows]


def _summary(figures: dict[str, Any], on: str) -> dict[str, Any]:
    return {"on": on, **figures}
