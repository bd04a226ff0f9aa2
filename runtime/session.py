"""The one place that builds onnxruntime sessions.

Nothing else in the package constructs an ``InferenceSession``: threads, providers and the
few options the project exposes are decided here.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from .errors import BundleError

log = logging.getLogger(__name__)


def available_cpus() -> int:
    """CPUs this process may run on (respects affinity masks and container CPU sets)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


#: onnxruntime's graph optimisation levels by the names SessionConfig takes.
OPTIMIZATION_LEVELS = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


@dataclass(frozen=True)
class SessionConfig:
    """How to run a graph. ``threads=None`` uses every CPU this process may use.

    ``spin=False`` turns off onnxruntime's busy-waiting between runs: a loop that waits for
    frames (a camera) then does not burn a core while idle, at a small cost in latency.

    ``optimization``, ``memory_arena`` and ``memory_pattern`` are onnxruntime's graph
    optimisation level and its CPU allocator settings; they are here so that the benchmark can
    sweep them, not for everyday use. The defaults are what measured fastest on a 2-core x86
    with VNNI, float and int8, small CNN and ResNet-18 (``python benchmarks/run.py``, see
    BENCHMARKS.md; ranges over several runs):

    - threads: every CPU. Two threads ran 1.5-1.9x faster than one at batch 1 and batch 32.
    - optimisation "all": "extended" ran 1.3-1.65x slower in float and 1.35-1.95x in int8,
      "basic" slower still (up to 5x in int8).
    - memory arena on: off cost 11-70% at batch 32 in float. Memory pattern on: off made no
      difference beyond the noise (a few %).
    - spinning on for back-to-back runs: off cost 9-48% at batch 1. The camera loop turns it
      off: at 30 fps its process then uses 3-35% of a core instead of more than 100%, for a
      slower run that still fits the 33 ms frame (ResNet-18: about 10.5 ms instead of 5.8).
      With spinning off, one thread gave the same latency as two there.
    """

    threads: int | None = None
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    spin: bool = True
    optimization: str = "all"
    memory_arena: bool = True
    memory_pattern: bool = True

    def __post_init__(self) -> None:
        if self.optimization not in OPTIMIZATION_LEVELS:
            raise ValueError(
                f"optimization must be one of {sorted(OPTIMIZATION_LEVELS)}, "
                f"not {self.optimization!r}"
            )

    def resolved_threads(self) -> int:
        if self.threads is None:
            return available_cpus()
        if self.threads < 1:
            raise ValueError(f"threads must be at least 1, not {self.threads}")
        return self.threads


def create_session(
    model_path: Path, config: SessionConfig, *, fold_weights: bool = False
) -> ort.InferenceSession:
    """An InferenceSession for ``model_path``, configured for a small CPU.

    ``fold_weights`` (for VJP head graphs) turns off onnxruntime's QDQ handling, so int8
    weights behind ``DequantizeLinear`` are dequantised once at load by constant folding
    instead of on every call (an int8 bundle's stage-4 VJP graph: 281 -> 125 ms per call on
    a loaded machine, the float graph's speed; outputs within 3e-7). Never for the model
    itself: its QDQ nodes are what makes int8 fast."""
    available = set(ort.get_available_providers())
    missing = [p for p in config.providers if p not in available]
    if missing:
        raise ValueError(
            f"onnxruntime providers {missing} are not available here; "
            f"available: {sorted(available)}"
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = config.resolved_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = OPTIMIZATION_LEVELS[config.optimization]
    options.enable_cpu_mem_arena = config.memory_arena
    options.enable_mem_pattern = config.memory_pattern
    options.log_severity_level = 3
    spin = "1" if config.spin else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    options.add_session_config_entry("session.inter_op.allow_spinning", spin)
    if fold_weights:
        options.add_session_config_entry("session.disable_quant_qdq", "1")
    try:
        session = ort.InferenceSession(
            str(model_path), sess_options=options, providers=list(config.providers)
        )
    except Exception as exc:  # onnxruntime raises its own exception types for bad graphs
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BundleError(
            model_path.parent, f"{model_path.name} cannot be loaded ({message})"
        ) from None
    log.debug("session for %s: %d threads, spin=%s", model_path, options.intra_op_num_threads, spin)
    return session
