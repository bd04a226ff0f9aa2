"""The one place that builds onnxruntime sessions: its settings, and that every setting gives
the same numbers."""

from __future__ import annotations

import numpy as np
import pytest

from scenecam_edge.session import (
    OPTIMIZATION_LEVELS,
    SessionConfig,
    available_cpus,
    create_session,
)

from .conftest import model_folder


def test_defaults_and_validation():
    config = SessionConfig()
    assert config.resolved_threads() == available_cpus()
    assert SessionConfig(threads=1).resolved_threads() == 1
    assert config.optimization in OPTIMIZATION_LEVELS
    with pytest.raises(ValueError, match="optimization"):
        SessionConfig(optimization="fastest")
    with pytest.raises(ValueError, match="threads"):
        SessionConfig(threads=0).resolved_threads()


@pytest.mark.parametrize(
    "config",
    [
        SessionConfig(threads=1),
        SessionConfig(threads=2, spin=False),
        SessionConfig(threads=1, optimization="basic"),
        SessionConfig(threads=1, optimization="disabled"),
        SessionConfig(threads=1, memory_arena=False, memory_pattern=False),
    ],
    ids=lambda c: f"t{c.threads}-{c.optimization}-arena{c.memory_arena}-spin{c.spin}",
)
def test_every_setting_gives_the_same_outputs(config: SessionConfig):
    """On the float ResNet-18: an int8 graph's numbers legitimately depend on which QDQ
    fusions the optimisation level applies (int8 kernels, or float with fake quantisation)."""
    bundle = model_folder("scenes-resnet18")
    images = np.random.default_rng(0).integers(0, 256, (3, 150, 150, 3), dtype=np.uint8)
    reference = create_session(bundle / "model.onnx", SessionConfig(threads=1))
    session = create_session(bundle / "model.onnx", config)
    want = reference.run(None, {"image": images})
    got = session.run(None, {"image": images})
    for a, b in zip(want, got, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    options = session.get_session_options()
    assert options.intra_op_num_threads == config.resolved_threads()
    assert options.enable_cpu_mem_arena == config.memory_arena
    assert options.enable_mem_pattern == config.memory_pattern
