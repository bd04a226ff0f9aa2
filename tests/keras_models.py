"""Small Keras models with random weights, and the TensorFlow GradientTape reference."""

from __future__ import annotations

import re

import keras
import numpy as np
import tensorflow as tf
from keras import layers


def resnet_trunk(
    size: int = 32, channels: int = 3, seed: int = 0
) -> tuple[keras.KerasTensor, keras.KerasTensor]:
    """A small ResNet-style trunk: stem, two basic blocks (one downsampling), final ReLU."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((size, size, channels), name="image")
    x = layers.Rescaling(1 / 127.5, offset=-1)(inp)
    x = layers.Conv2D(8, 3, padding="same")(x)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    for filters, stride in [(8, 1), (16, 2)]:
        y = layers.Conv2D(filters, 3, strides=stride, padding="same")(x)
        y = layers.BatchNormalization()(y)
        y = layers.ReLU()(y)
        y = layers.Conv2D(filters, 3, padding="same")(y)
        y = layers.BatchNormalization()(y)
        shortcut = x if stride == 1 else layers.Conv2D(filters, 1, strides=stride)(x)
        x = layers.Add()([y, shortcut])
        x = layers.Activation("relu", name=f"block_{filters}_out")(x)
    return inp, x


def with_random_bn(model: keras.Model, seed: int = 0) -> keras.Model:
    """Give every batch norm non-trivial moving statistics, so inference is not identity."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, gamma.shape).astype(np.float32),
                    rng.normal(0, 0.1, beta.shape).astype(np.float32),
                    rng.normal(0, 0.1, mean.shape).astype(np.float32),
                    rng.uniform(0.5, 1.5, var.shape).astype(np.float32),
                ]
            )
    return model


def gap_dense_model(num_classes: int = 5, softmax: bool = True, seed: int = 0) -> keras.Model:
    inp, x = resnet_trunk(seed=seed)
    x = layers.GlobalAveragePooling2D()(x)
    out = layers.Dense(num_classes, activation="softmax" if softmax else None)(x)
    return with_random_bn(keras.Model(inp, out), seed)


def avgpool_flatten_model(num_classes: int = 4, seed: int = 1) -> keras.Model:
    inp, x = resnet_trunk(seed=seed)
    x = layers.AveragePooling2D(pool_size=4, strides=4)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(num_classes)(x)
    out = layers.Softmax()(x)
    return with_random_bn(keras.Model(inp, out), seed)


def flatten_dense_model(num_classes: int = 3, seed: int = 2) -> keras.Model:
    inp, x = resnet_trunk(seed=seed)
    x = layers.Dropout(0.3)(x)
    x = layers.Flatten()(x)
    out = layers.Dense(num_classes, activation="softmax")(x)
    return with_random_bn(keras.Model(inp, out), seed)


def mnist_style_model(
    seed: int = 3, filters: tuple[int, int] = (32, 64), units: int = 128
) -> keras.Model:
    """The Grad-CAM-on-MNIST tutorial's network (nonlinear head), random weights; ``filters``
    and ``units`` narrow it where a test stores its numbers."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((28, 28, 1), name="image")
    x = layers.Rescaling(1 / 255)(inp)
    x = layers.Conv2D(filters[0], 3, activation="relu")(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Conv2D(filters[1], 3, activation="relu", name="last_conv_layer")(x)
    x = layers.Dropout(0.5)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(units, activation="relu")(x)
    x = layers.Dropout(0.5)(x)
    out = layers.Dense(10, activation="softmax")(x)
    return keras.Model(inp, out)


def tape_gradcam(
    model: keras.Model, conv_layer: str, image: np.ndarray, target: int | None, space: str
) -> tuple[np.ndarray, int]:
    """The keras-io recipe, per image: GradientTape on (conv output, score), pooled gradients.

    Returns the normalised (h, w) map and the class explained. ``space`` "logit" explains the
    pre-softmax score (the final softmax removed, as keras-io does), "probability" the softmax.
    The tape runs inside a ``tf.function``: eager conv gradients crash in this TensorFlow
    build's oneDNN kernels on these CPUs ("munmap_chunk(): invalid pointer").
    """
    fn = _tape_function(model, conv_layer, space)
    x = tf.convert_to_tensor(image[None].astype(np.float32))
    features, grads, explained = fn(x, tf.constant(-1 if target is None else target, tf.int32))
    pooled = tf.reduce_mean(grads, axis=(0, 1, 2))
    cam = tf.squeeze(features[0] @ pooled[..., tf.newaxis], axis=-1)
    cam = tf.maximum(cam, 0).numpy()
    top = cam.max()
    return (cam / top if top > 0 else cam), int(explained)


_TAPES: dict[tuple[int, str, str], tf.types.experimental.GenericFunction] = {}


def _tape_function(model: keras.Model, conv_layer: str, space: str):
    key = (id(model), conv_layer, space)
    if key not in _TAPES:
        tape = _recipe_tape(model, conv_layer)

        @tf.function
        def run(x: tf.Tensor, target: tf.Tensor):
            features, grads, _, explained = tape(x, target, space)
            return features, grads, explained[0]

        _TAPES[key] = run
    return _TAPES[key]


def _recipe_tape(model: keras.Model, conv_layer: str):
    """The keras-io recipe's tape, batched: (features, d score / d features, logits, the class
    explained per image) for ``x``, where the score is each image's ``target`` class (its
    prediction where ``target`` is None or negative) in ``space``, logit or probability.
    The one GradientTape Grad-CAM of the tests and the benchmarks."""
    last = model.outputs[0]._keras_history.operation
    grad_model = keras.Model(model.inputs, [model.get_layer(conv_layer).output, last.input])

    def tape_run(x: tf.Tensor, target: tf.Tensor | None, space: str):
        with tf.GradientTape() as tape:
            features, penultimate = grad_model(x, training=False)
            logits = _logits(last, penultimate)
            explained = tf.argmax(logits, axis=1, output_type=tf.int32)
            if target is not None:
                explained = tf.where(target < 0, explained, target)
            scores = logits if space == "logit" else tf.nn.softmax(logits)
            score = tf.reduce_sum(tf.gather(scores, explained, axis=1, batch_dims=1))
        return features, tape.gradient(score, features), logits, explained

    return tape_run


def keras_io_gradcam(model: keras.Model, conv_layer: str):
    """Grad-CAM as a Keras user writes it (keras-io ``grad_cam.py``), batched: a float batch
    -> (probabilities (N, C), maps (N, h, w) normalised to 1), each image explained at its
    predicted class's logit. Plain Python: the benchmarks time it eagerly (the tutorial
    style) and inside ``tf.function``."""
    tape = _recipe_tape(model, conv_layer)

    def gradcam(x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        features, grads, logits, _ = tape(x, None, "logit")
        pooled = tf.reduce_mean(grads, axis=(1, 2))
        cam = tf.nn.relu(tf.einsum("nhwk,nk->nhw", features, pooled))
        cam = cam / (tf.reduce_max(cam, axis=(1, 2), keepdims=True) + 1e-12)
        return tf.nn.softmax(logits), cam

    return gradcam


def _logits(last: keras.layers.Layer, penultimate: tf.Tensor) -> tf.Tensor:
    """The model's pre-softmax scores from the input of its last layer."""
    if isinstance(last, layers.Softmax):
        return penultimate
    if isinstance(last, layers.Dense):
        return tf.matmul(penultimate, last.kernel) + last.bias  # the Dense without its softmax
    raise ValueError(f"unexpected last layer {last.name}")


def tape_features_and_gradient(
    model: keras.Model, conv_layer: str, image: np.ndarray, target: int, space: str
) -> tuple[tf.Tensor, tf.Tensor]:
    """A (h, w, K) and G = d score / dA from GradientTape, as float64 tensors."""
    fn = _tape_function(model, conv_layer, space)
    features, grads, _ = fn(
        tf.convert_to_tensor(image[None].astype(np.float32)), tf.constant(target, tf.int32)
    )
    return tf.cast(features[0], tf.float64), tf.cast(grads[0], tf.float64)


def tape_method(
    model: keras.Model, conv_layer: str, image: np.ndarray, target: int, space: str, method: str
) -> np.ndarray:
    """The published formula of a gradient-based CAM method, in TensorFlow ops on
    GradientTape's gradient; returns the normalised (h, w) map."""
    a, g = tape_features_and_gradient(model, conv_layer, image, target, space)
    eps = 1e-7
    if method == "gradcam":
        cam = tf.reduce_sum(a * tf.reduce_mean(g, axis=(0, 1)), axis=-1)
    elif method == "gradcam++":
        g2 = tf.square(g)
        denom = 2.0 * g2 + tf.reduce_sum(a, axis=(0, 1)) * g2 * g + eps
        alpha = tf.where(g != 0, g2 / denom, tf.zeros_like(g))
        weights = tf.reduce_sum(alpha * tf.nn.relu(g), axis=(0, 1))
        cam = tf.reduce_sum(a * weights, axis=-1)
    elif method == "xgradcam":
        weights = tf.reduce_sum(g * a / (tf.reduce_sum(a, axis=(0, 1)) + eps), axis=(0, 1))
        cam = tf.reduce_sum(a * weights, axis=-1)
    elif method == "hirescam":
        cam = tf.reduce_sum(g * a, axis=-1)
    elif method == "layercam":
        cam = tf.reduce_sum(tf.nn.relu(g) * a, axis=-1)
    else:
        raise ValueError(method)
    cam = tf.nn.relu(cam).numpy()
    return cam / cam.max() if cam.max() > 0 else cam


def keras_head(model: keras.Model, conv_layer: str):
    """features -> pre-softmax logits, as a tf.function over the model's own head layers."""
    conv = model.get_layer(conv_layer)
    chain = []
    layer = model.outputs[0]._keras_history.operation
    while layer is not conv:
        chain.append(layer)
        layer = layer.input._keras_history.operation
    chain.reverse()

    @tf.function
    def head(features: tf.Tensor) -> tf.Tensor:
        z = features
        for layer in chain[:-1]:
            z = layer(z, training=False)
        return (
            _logits(chain[-1], z)
            if isinstance(chain[-1], layers.Dense | layers.Softmax)
            else chain[-1](z)
        )

    return head


def batchnorm_mlp_model(num_classes: int = 4, seed: int = 4) -> keras.Model:
    """A nonlinear head in another order: GAP, batch norm, Dense ReLU, ReLU layer, dropout, Dense."""
    inp, x = resnet_trunk(seed=seed)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.BatchNormalization()(x)
    x = layers.Dense(12, activation="relu")(x)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    x = layers.Dropout(0.2)(x)
    out = layers.Dense(num_classes, activation="softmax")(x)
    return with_random_bn(keras.Model(inp, out), seed)


def find_layer(model: keras.Model, path: str) -> keras.layers.Layer:
    """A layer by its export path ('outer/inner' inside nested models)."""
    layer = model
    for part in path.split("/"):
        # _operations: also keras.ops nodes (ConvNeXt's residual "add_36" is one), which
        # get_layer does not list
        found = [op for op in getattr(layer, "_operations", layer.layers) if op.name == part]
        if not found:
            raise ValueError(f"no layer or operation {part!r} in {layer.name!r}")
        layer = found[0]
    return layer


class TapeGradCam:
    """Grad-CAM by GradientTape at any layer of any model, nested ones included: the layer's
    call is wrapped to hand its output to the tape (TensorFlow takes gradients with respect
    to intermediate tensors recorded on the tape), and a final softmax is switched off for
    the pre-softmax logits. Independent of the export's own graph walk."""

    def __init__(self, model: keras.Model, layer_path: str) -> None:
        self.model = model
        self.layer = find_layer(model, layer_path)
        self._fn = tf.function(self._run)

    def _run(self, x: tf.Tensor, target: tf.Tensor, probability: tf.Tensor):
        captured = {}
        original = self.layer.call
        last = self.model.layers[-1]
        last_activation = getattr(last, "activation", None)

        def call(*args, **kwargs):
            captured["a"] = original(*args, **kwargs)
            return captured["a"]

        self.layer.call = call
        softmax_layer = isinstance(last, layers.Softmax) or (
            isinstance(last, layers.Activation)
            and keras.activations.serialize(last.activation) == "softmax"
        )
        dense_softmax = (
            isinstance(last, layers.Dense)
            and keras.activations.serialize(last.activation) == "softmax"
        )
        try:
            if dense_softmax:
                last.activation = keras.activations.linear
            if softmax_layer:
                last_call = last.call
                last.call = lambda inputs, *a, **k: inputs
            with tf.GradientTape() as tape:
                logits = tf.cast(self.model(x, training=False), tf.float32)
                a = captured["a"]
                # The score in float64: random-weight nets have logits in the hundreds, where
                # float32's softmax saturates and 1 - p rounds to 0 (the runtime's softmax
                # and cotangent are float64 too).
                z64 = tf.cast(logits, tf.float64)
                scores = tf.where(probability, tf.nn.softmax(z64), z64)
                score = tf.reduce_sum(scores[:, target])
            grads = tape.gradient(score, a)
        finally:
            self.layer.call = original
            if dense_softmax:
                last.activation = last_activation
            if softmax_layer:
                last.call = last_call
        return tf.cast(a, tf.float32), tf.cast(grads, tf.float32), logits

    def __call__(self, x: np.ndarray, target: int, space: str):
        """(normalised map (h, w), logits (C,)) for one float image (H, W, C)."""
        # Keras itself cannot call a model named "my model" inside a tf.function (TensorFlow
        # refuses the scope name); the reference renames it for its run.
        name = self.model.name
        self.model.name = re.sub(r"[^A-Za-z0-9_.]", "_", name)
        try:
            a, g, logits = self._fn(
                tf.constant(x[None], tf.float32),
                tf.constant(target, tf.int32),
                tf.constant(space == "probability"),
            )
        finally:
            self.model.name = name
        pooled = tf.reduce_mean(g[0], axis=(0, 1))
        cam = tf.nn.relu(tf.reduce_sum(a[0] * pooled, axis=-1)).numpy()
        top = cam.max()
        return (cam / top if top > 0 else cam), logits.numpy()[0]


# -- the model zoo: every keras.applications family and the usual ways people wrap them ------


def _app(name: str, size: int, **kwargs):
    keras.utils.set_random_seed(0)
    kwargs.setdefault("classes", 4)
    return getattr(keras.applications, name)(
        weights=None, input_shape=(size, size, kwargs.pop("channels", 3)), **kwargs
    )


def _nested_sequential(base: keras.Model, head: list) -> keras.Model:
    return keras.Sequential([keras.Input(base.input_shape[1:]), base, *head], name="my model")


def _nested_functional(base: keras.Model, preprocess=None, name: str = "cnn+aug") -> keras.Model:
    inp = keras.Input(base.input_shape[1:])
    x = preprocess(inp) if preprocess is not None else inp
    x = base(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, layers.Dense(4, activation="softmax")(x), name=name)


def _normalization_model() -> keras.Model:
    keras.utils.set_random_seed(0)
    inp = keras.Input((32, 32, 3))
    norm = layers.Normalization(mean=[120.0, 110.0, 100.0], variance=[3000.0, 2500.0, 2000.0])
    adapted = layers.Normalization()
    adapted.adapt(np.random.default_rng(0).uniform(0, 255, (16, 32, 32, 3)).astype("float32"))
    x = adapted(norm(inp) * 60.0 + 120.0)
    x = layers.Conv2D(8, 3, activation="relu", name="conv")(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, layers.Dense(3)(x))


def _grouped_conv_model() -> keras.Model:
    keras.utils.set_random_seed(0)
    inp = keras.Input((32, 32, 3))
    x = layers.Rescaling(1 / 255)(inp)
    x = layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    x = layers.Conv2D(16, 3, padding="same", groups=4, activation="relu", name="grouped")(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, layers.Dense(3, activation="softmax")(x))


def _head_zoo_model(kind: str) -> keras.Model:
    """The trunk with a head that exercises one family of head layers."""
    inp, x = resnet_trunk(seed=5)
    if kind == "maxpool":
        x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
        x = layers.Flatten()(x)
        x = layers.Dense(12, activation="gelu")(x)
        x = layers.Dense(5)(x)
    elif kind == "layernorm":
        x = layers.GlobalMaxPooling2D()(x)
        x = layers.LayerNormalization(epsilon=1e-3)(x)
        x = layers.Dense(12, activation="swish")(x)
        x = layers.Activation("tanh")(x)
        x = layers.Dense(8, activation="sigmoid")(x)
        x = layers.Softmax()(x)
        x = layers.Dense(5, activation="hard_swish")(x)
        x = layers.Reshape((5,))(x)
    else:
        raise ValueError(kind)
    return with_random_bn(keras.Model(inp, layers.Softmax()(x)), 5)


def _ops_add_model() -> keras.Model:
    """The Grad-CAM layer is a keras.ops node, not a Layer (ConvNeXt's residual adds)."""
    keras.utils.set_random_seed(7)
    inp = keras.Input((24, 24, 3))
    x = layers.Conv2D(8, 3, padding="same", activation="gelu")(layers.Rescaling(1 / 255)(inp))
    x = x + layers.Conv2D(8, 3, padding="same")(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, layers.Dense(3, activation="softmax")(x))


def _four_channel_model() -> keras.Model:
    inp, x = resnet_trunk(channels=4, seed=6)
    x = layers.GlobalAveragePooling2D()(x)
    return with_random_bn(keras.Model(inp, layers.Dense(3)(x)), 6)


#: name -> (builder, --conv-layer or None, --preprocess or None, expected Grad-CAM layer)
ZOO = {
    "ConvNeXtTiny": (lambda: _app("ConvNeXtTiny", 64), None, None),
    "DenseNet121": (lambda: _app("DenseNet121", 64), None, "torch"),
    "EfficientNetB0": (lambda: _app("EfficientNetB0", 64), None, None),
    "EfficientNetV2B0": (lambda: _app("EfficientNetV2B0", 64), None, None),
    "InceptionResNetV2": (lambda: _app("InceptionResNetV2", 107), None, "-1..1"),
    "InceptionV3": (lambda: _app("InceptionV3", 107), None, "-1..1"),
    "MobileNet": (lambda: _app("MobileNet", 64), None, "-1..1"),
    "MobileNetV2": (
        lambda: _app("MobileNetV2", 64, pooling="max", include_top=False),
        None,
        "-1..1",
    ),
    "MobileNetV3Small": (lambda: _app("MobileNetV3Small", 64), None, None),
    "NASNetMobile": (lambda: _app("NASNetMobile", 64), None, "-1..1"),
    "ResNet50V2": (lambda: _app("ResNet50V2", 64), None, "-1..1"),
    "VGG16 nested in Sequential": (
        lambda: _nested_sequential(
            _app("VGG16", 32, include_top=False), [layers.Flatten(), layers.Dense(4)]
        ),
        None,
        "caffe",
    ),
    "Xception": (lambda: _app("Xception", 71), None, "-1..1"),
    "ResNet50 nested, with preprocess_input": (
        lambda: _nested_functional(
            _app("ResNet50", 64, include_top=False), keras.applications.resnet50.preprocess_input
        ),
        None,
        None,
    ),
    "ResNet50 stage 4 (earlier layer)": (
        lambda: _nested_functional(_app("ResNet50", 64, include_top=False)),
        "resnet50/conv4_block6_out",
        "caffe",
    ),
    "earlier layer (residual block after it)": (
        lambda: gap_dense_model(num_classes=5, softmax=True),
        "block_8_out",
        None,
    ),
    "Normalization layers": (_normalization_model, None, None),
    "grouped convolutions": (_grouped_conv_model, None, None),
    "max-pool head": (lambda: _head_zoo_model("maxpool"), None, None),
    "layer-norm head": (lambda: _head_zoo_model("layernorm"), None, None),
    "4-channel input": (_four_channel_model, None, None),
    "keras.ops add as the Grad-CAM layer": (_ops_add_model, None, None),
    "scaling outside the model": (lambda: _app("ResNet50", 64), None, "caffe"),
}
#: The cases the zoo test runs by default: one per failure class of issue 14.
#: The two slowest families (about 2.8 minutes together here): only SCENECAM_ZOO=all runs
#: them, so that CI's zoo phase ends near its runtime-only phase.
ZOO_ALL_ONLY = ("InceptionResNetV2", "NASNetMobile")

ZOO_CORE = (
    "VGG16 nested in Sequential",
    "ResNet50 nested, with preprocess_input",
    "MobileNetV3Small",
    "EfficientNetB0",
    "Normalization layers",
    "grouped convolutions",
    "max-pool head",
    "layer-norm head",
    "earlier layer (residual block after it)",
    "4-channel input",
    "keras.ops add as the Grad-CAM layer",
)
