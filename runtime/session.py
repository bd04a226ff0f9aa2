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


@dataclass(frozen=True)
class SessionConfig:
    """How to run a graph. ``threads=None`` uses every CPU this process may use.

    ``spin=False`` turns off onnxruntime's busy-waiting between runs: a loop that waits for
    frames (a camera) then does not burn a core while idle, at a small cost in latency.
    """

    threads: int | None = None
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    spin: bool = True

    def resolved_threads(self) -> int:
        if self.threads is None:
            return available_cpus()
        if self.threads < 1:
            raise ValueError(f"threads must be at least 1, not {self.threads}")
        return self.threads


def create_session(model_path: Path, config: SessionConfig) -> ort.InferenceSession:
    """An InferenceSession for ``model_path``, configured for a small CPU."""
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
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    spin = "1" if config.spin else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    options.add_session_config_entry("session.inter_op.allow_spinning", spin)
    try:
        session = ort.InferenceSession(
            str(model_path), sess_options=options, providers=list(config.providers)
        )
    except Exception as exc:  # onnxruntime raises its own exception types for bad graphs
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BundleError(model_path.parent, f"model.onnx cannot be loaded ({message})") from None
    log.debug("session for %s: %d threads, spin=%s", model_path, options.intra_op_num_threads, spin)
    return session
