"""The training input pipeline: batches of float pixels and one-hot labels, shuffled and
augmented (flips, shear, zoom, shifts, rotation, contrast, brightness) and optionally mixed
up for training."""

from __future__ import annotations

from typing import TYPE_CHECKING

import keras
import tensorflow as tf

from scenecam_edge.dataset import LabelledImages

if TYPE_CHECKING:
    from .train import TrainConfig


def dataset(data: LabelledImages, cfg: TrainConfig, training: bool) -> tf.data.Dataset:
    """Batches of (float pixels, one-hot labels); shuffled, and augmented if the recipe says
    so, for training."""
    num_classes = len(data.class_names)
    ds = tf.data.Dataset.from_tensor_slices((data.images, data.labels))
    if training:
        ds = ds.shuffle(len(data), seed=cfg.seed, reshuffle_each_iteration=True)
    ds = ds.batch(cfg.batch_size)
    augmenter = _augmenter(cfg.seed) if training and cfg.augment else None

    mix = cfg.mixup if training else 0.0

    def prepare(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        x = tf.cast(x, tf.float32)
        if augmenter is not None:
            x = tf.clip_by_value(augmenter(x, training=True), 0.0, 255.0)
        labels = tf.one_hot(y, num_classes)
        if mix > 0:
            x, labels = mixup(x, labels, mix)
        return x, labels

    return ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def mixup(x: tf.Tensor, labels: tf.Tensor, alpha: float) -> tuple[tf.Tensor, tf.Tensor]:
    """Mixup (Zhang et al. 2018): each example blended with another of the same batch, images
    and one-hot labels alike, with a weight drawn from Beta(alpha, alpha) per example."""
    n = tf.shape(x)[0]
    a = tf.random.gamma([n], alpha)
    b = tf.random.gamma([n], alpha)
    lam = a / (a + b)
    order = tf.random.shuffle(tf.range(n))
    lam_x = tf.reshape(lam, [-1, 1, 1, 1])
    lam_y = tf.reshape(lam, [-1, 1])
    mixed_x = lam_x * x + (1.0 - lam_x) * tf.gather(x, order)
    mixed_y = lam_y * labels + (1.0 - lam_y) * tf.gather(labels, order)
    return mixed_x, mixed_y


def _augmenter(seed: int) -> keras.Sequential:
    """Shear, zoom and horizontal flip (the reference tutorial's), plus shifts, a small
    rotation and contrast/brightness jitter."""
    return keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal", seed=seed),
            keras.layers.RandomShear(x_factor=0.15, y_factor=0.0, seed=seed + 1),
            keras.layers.RandomZoom((-0.2, 0.1), seed=seed + 2),
            keras.layers.RandomTranslation(0.1, 0.1, seed=seed + 3),
            keras.layers.RandomRotation(0.03, seed=seed + 4),
            keras.layers.RandomContrast(0.2, value_range=(0, 255), seed=seed + 5),
            keras.layers.RandomBrightness(0.15, value_range=(0, 255), seed=seed + 6),
        ],
        name="augment",
    )
