"""Export a finished training run's checkpoint again, as a bundle to ship: the architecture's
extra layers (finer Grad-CAM maps) included, the run's training record kept, and the bundle
evaluated anew, through the runtime, on the run's own validation split.

    python -m scenecam_edge.training.reexport runs/lite0/3-all --out models/scenes-lite0 \\
        --name scenes-lite0

For a run trained before its recipe exported extra layers, or to rename what ships. The new
bundle's accuracy must equal the run's (the same weights): it is printed beside it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from scenecam_edge import SceneCam
from scenecam_edge.bundle import update_manifest
from scenecam_edge.dataset import default_cache_dir, stratified_split
from scenecam_edge.evaluation import evaluate

from .chips import load_training_data
from .train import export_checkpoint


def reexport(
    run: Path, out: Path, name: str, data: str | None = None
) -> tuple[Path, dict[str, Any]]:
    """The new bundle and its validation figures. ``data``: where the run's data set is now,
    if not at the path the run recorded (a run made from another working folder)."""
    manifest = json.loads((run / "bundle" / "manifest.json").read_text(encoding="utf-8"))
    training = manifest["training"]
    if data is not None:
        training["dataset"] = data
    size, channels = int(training["img_size"]), int(manifest["input"]["channels"])
    bundle = export_checkpoint(
        run / "best.keras",
        out,
        size=(size, size),
        channels=channels,
        class_names=manifest["class_names"],
        name=name,
        training=training,
    )
    split = training["split"]
    images = load_training_data(training["dataset"], (size, size), channels, default_cache_dir())
    _, val_idx = stratified_split(images.labels, split["val_fraction"], split["seed"])
    figures = evaluate(SceneCam.load(bundle), images.subset(val_idx)).figures
    update_manifest(bundle, evaluation={"on": "validation split", **figures})
    return bundle, figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished run folder (best.keras, bundle/)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--data", help="the run's data set, if it has moved")
    args = parser.parse_args()
    bundle, figures = reexport(args.run, args.out, args.name, args.data)
    before = json.loads((args.run / "evaluation.json").read_text(encoding="utf-8"))
    print(
        f"{bundle}: validation accuracy {figures['accuracy']:.4%} "
        f"(the run's bundle: {before['accuracy']:.4%}) on {figures['count']} images"
    )


if __name__ == "__main__":
    main()
