"""The numpy head: forward values and exact gradients, checked by finite differences."""

from __future__ import annotations

import numpy as np
import pytest

from scenecam_edge.cam import normalize, score_cotangent, softmax
from scenecam_edge.errors import BundleError
from scenecam_edge.head import Head
from scenecam_edge.head_layers import (
    ACTIVATIONS,
    Activation,
    ChannelAffine,
    Dense,
    GlobalPooling,
    Identity,
    LayerNorm,
    Pooling,
    Reshape,
)

RNG = np.random.default_rng(0)
SHAPE = (4, 4, 3)


def _dense(n_in: int, n_out: int, activation: str = "linear") -> Dense:
    return Dense(RNG.normal(size=(n_in, n_out)), RNG.normal(size=n_out), Activation(activation))


def _avg(pool: int, stride: int, padding: str = "valid") -> Pooling:
    return Pooling("average", (pool, pool), (stride, stride), padding)


def _max(pool: int, stride: int, padding: str = "valid") -> Pooling:
    return Pooling("max", (pool, pool), (stride, stride), padding)


LINEAR_HEADS = {
    "gap_dense": lambda: [GlobalPooling("average"), _dense(3, 5)],
    "avgpool_flatten_dense": lambda: [_avg(2, 2), Reshape(), _dense(12, 5)],
    "overlapping_avgpool": lambda: [_avg(3, 1), Reshape(), _dense(12, 5)],
    "avgpool_same": lambda: [_avg(3, 2, "same"), Reshape(), _dense(12, 5)],
    "gap_keepdims_conv1x1_reshape": lambda: [
        GlobalPooling("average", keepdims=True),
        _dense(3, 5),
        Reshape((5,)),
    ],
    "batchnorm": lambda: [
        GlobalPooling("average"),
        ChannelAffine(RNG.uniform(0.5, 2, 3), RNG.normal(size=3)),
        _dense(3, 5),
    ],
}
NONLINEAR_HEADS = {
    "flatten_relu_mlp": lambda: [
        Identity(),
        Reshape(),
        _dense(48, 16, "relu"),
        Identity(),
        _dense(16, 5),
    ],
    "maxpool_valid": lambda: [_max(2, 2), Reshape(), _dense(12, 5)],
    "maxpool_same_overlapping": lambda: [_max(3, 2, "same"), Reshape(), _dense(12, 5)],
    "global_max": lambda: [GlobalPooling("max"), _dense(3, 5)],
    "layer_norm": lambda: [
        GlobalPooling("average"),
        LayerNorm(RNG.uniform(0.5, 2, 3), RNG.normal(size=3), 1e-3),
        _dense(3, 5),
    ],
    "relu6_leaky_threshold": lambda: [
        Reshape(),
        Activation("relu", max_value=0.8, negative_slope=0.1, threshold=-0.2),
        _dense(48, 5),
    ],
    **{
        f"activation_{name}": (lambda name=name: [Reshape(), _dense(48, 7, name), _dense(7, 5)])
        for name in ACTIVATIONS
    },
}
HEADS = {**LINEAR_HEADS, **NONLINEAR_HEADS}


def _numeric_gradient(head: Head, a: np.ndarray, cls: int, eps: float = 1e-6) -> np.ndarray:
    grad = np.zeros_like(a)
    for idx in np.ndindex(a.shape):
        plus, minus = a.copy(), a.copy()
        plus[idx] += eps
        minus[idx] -= eps
        grad[idx] = (head._run(plus[None])[-1][0, cls] - head._run(minus[None])[-1][0, cls]) / (
            2 * eps
        )
    return grad


@pytest.mark.parametrize("name", sorted(HEADS))
def test_gradient_matches_finite_differences(name: str):
    head = Head(HEADS[name](), SHAPE)
    assert head.num_classes == 5
    assert head.is_linear == (name in LINEAR_HEADS or name == "activation_linear")
    a = RNG.normal(size=SHAPE)
    for cls in range(5):
        onehot = np.eye(5)[cls][None]
        exact = head.vjp(a[None].astype(np.float32), onehot)[0]
        assert np.abs(exact - _numeric_gradient(head, a, cls)).max() < 1e-4, (name, cls)


@pytest.mark.parametrize("name", sorted(LINEAR_HEADS))
def test_linear_head_jacobian_reproduces_forward(name: str):
    head = Head(HEADS[name](), SHAPE)
    assert head.jacobian is not None and head.jacobian.shape == (5, *SHAPE)
    a = RNG.normal(size=(6, *SHAPE)).astype(np.float32)
    assert np.allclose(head.logits(a), head._run(a.astype(np.float64))[-1], atol=1e-4)


def test_probability_cotangent_is_the_softmax_derivative():
    z = RNG.normal(size=(3, 5))
    p = softmax(z)
    targets = np.array([0, 3, 4])
    v = score_cotangent(p, targets, "probability")
    eps = 1e-6
    for n, t in enumerate(targets):
        for j in range(5):
            dz = np.zeros(5)
            dz[j] = eps
            numeric = (softmax(z[n] + dz)[t] - softmax(z[n] - dz)[t]) / (2 * eps)
            assert abs(v[n, j] - numeric) < 1e-8


def test_normalize_handles_all_zero_maps():
    maps = np.stack([np.zeros((3, 3)), np.arange(9.0).reshape(3, 3)])
    out = normalize(maps)
    assert np.all(out[0] == 0) and out[1].max() == 1.0 and out[1].min() == 0.0


def test_head_that_does_not_fit_the_features_is_refused():
    kernel = {"k": np.ones((7, 5), np.float32), "b": np.zeros(5, np.float32)}
    layers = [
        {"type": "global_average_pooling"},
        {"type": "dense", "kernel": "k", "bias": "b", "activation": "linear"},
    ]
    with pytest.raises(BundleError, match="do not fit"):
        Head.from_manifest(layers, kernel, SHAPE, "bundle")


@pytest.mark.parametrize("name", sorted(HEADS))
def test_pooled_gradient_is_the_mean_of_the_gradient(name: str):
    head = Head(HEADS[name](), SHAPE)
    a = RNG.normal(size=(3, *SHAPE)).astype(np.float32)
    v = RNG.normal(size=(3, 5))
    assert np.allclose(head.pooled_vjp(a, v), head.vjp(a, v).mean(axis=(1, 2)), atol=1e-5)


def test_max_pooling_routes_ties_like_tensorflow():
    """Windowed: the first maximum gets the gradient; global: tied maxima share it."""
    x = np.zeros((1, 2, 2, 1))
    dy = np.ones((1, 1, 1, 1))
    window = _max(2, 2).backward(x, _max(2, 2).forward(x), dy)
    assert window[0, :, :, 0].tolist() == [[1.0, 0.0], [0.0, 0.0]]
    shared = GlobalPooling("max").backward(x, x.max(axis=(1, 2)), dy.reshape(1, 1))
    assert np.allclose(shared, 0.25)


def test_erf_is_accurate():
    import math

    xs = np.linspace(-5, 5, 101)
    from scenecam_edge.head_layers import erf

    assert np.abs(erf(xs) - np.array([math.erf(v) for v in xs])).max() < 2e-7


def test_one_registry_of_head_layer_types():
    """The manifest's schema is the runtime's registry: every type it validates is one the
    runtime builds, with the same keys (they were declared apart and could drift)."""
    from scenecam_edge.head import HEAD_LAYERS
    from scenecam_edge.layers import HEAD_LAYER_TYPES

    assert {name: kind.fields for name, kind in HEAD_LAYERS.items()} == HEAD_LAYER_TYPES
    arrays = {"k": np.ones((4, 3)), "b": np.zeros(3), "s": np.ones(4), "o": np.zeros(4)}
    minimal = {
        "global_average_pooling": {},
        "global_max_pooling": {},
        "average_pooling": {"pool_size": 2, "strides": 2},
        "max_pooling": {"pool_size": 2, "strides": 2},
        "flatten": {},
        "reshape": {"shape": [4]},
        "dropout": {},
        "dense": {"kernel": "k", "bias": "b", "activation": "relu"},
        "batch_normalization": {"scale": "s", "offset": "o"},
        "layer_normalization": {"gamma": "s", "beta": "o", "epsilon": 1e-3},
        "relu": {},
        "activation": {"function": "tanh"},
        "graph": {"file": "head.onnx"},
    }
    assert set(minimal) == set(HEAD_LAYERS)
    for name, spec in minimal.items():
        assert set(HEAD_LAYERS[name].fields) == set(spec), name
        if name != "graph":
            layer = HEAD_LAYERS[name].build({"type": name, **spec}, arrays, "test", None)
            assert isinstance(layer.linear, bool)


def test_linearity_comes_from_the_layers_not_a_flag(tmp_path):
    """Manifests once carried a hand-kept ``head.linear``; it is no longer written, an old
    one still loads, and a wrong one changes nothing: linearity is the layers'."""
    import json
    import shutil

    from scenecam_edge import SceneCam
    from scenecam_edge.registry import resolve_model

    for name, linear in (("mnist-tutorial", False), ("scenes-mini", True)):
        bundle = tmp_path / name
        shutil.copytree(resolve_model(name), bundle)
        manifest = json.loads((bundle / "manifest.json").read_text())
        manifest["head"]["linear"] = not linear  # a lying flag
        (bundle / "manifest.json").write_text(json.dumps(manifest))
        cam = SceneCam.load(bundle, threads=1)
        assert cam.head.is_linear is linear
        assert (cam.head.jacobian is not None) is linear
