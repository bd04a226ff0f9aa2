"""The model-zoo table of docs/export.md: every case exported and checked against Keras.

    python benchmarks/export_zoo.py [CASE ...]        # default: every case, ~15 min on 2 cores

Needs the train extra. Each case (tests/keras_models.py ZOO: keras.applications families at
small inputs with random weights, nested models, Normalization, grouped convolutions, head
variants, an earlier layer, 4 channels, scaling outside the model) is exported, then the
runtime's logits are compared with Keras's and its normalised Grad-CAM maps with
GradientTape's (logit and probability targets, predicted and another class, two images),
exactly as tests/test_export_zoo.py does. Prints a Markdown table; a case that fails to
export gets its one-line error in the table.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests import keras_models as km  # noqa: E402
from tests.test_export_zoo import TOLERANCE, check_case  # noqa: E402


def main() -> None:
    names = sys.argv[1:] or list(km.ZOO)
    print(
        "| case | Grad-CAM layer | map | head | logits vs Keras | maps vs GradientTape | checked | s |"
    )
    print("|---|---|---|---|---:|---:|---|---:|")
    for name in names:
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            try:
                f = check_case(name, Path(tmp) / "bundle")
            except Exception as exc:
                line = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
                print(
                    f"| {name} | failed: {type(exc).__name__}: {line} | | | | | no | |", flush=True
                )
                continue
        ok = f["logits"] <= TOLERANCE and f["maps"] <= TOLERANCE  # type: ignore[operator]
        print(
            f"| {name} | `{f['layer']}` | {f['map']} | {f['head']} | {f['logits']:.1e} | "
            f"{f['maps']:.1e} | {'yes' if ok else 'NO'} | {time.perf_counter() - start:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
