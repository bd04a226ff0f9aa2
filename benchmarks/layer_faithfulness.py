"""How faithful the stage-3 maps (10x10) are beside the default 5x5 ones: the faithfulness
scores of ``evaluate --faithfulness`` (runtime/faithfulness.py: deletion and insertion AUC,
average drop, increase in confidence), for each layer a bundle explains, on the same fixed
random subset of the validation split, with a random-map baseline at each layer's size.

    python benchmarks/layer_faithfulness.py [--model models/scenes-resnet18] [--images 100]
        [--data ../shared/data/intel-scenes/train] [--methods gradcam,gradcam++,layercam]

The same figures for every method, one layer at a time:
``scenecam-edge evaluate DATA --split validation --faithfulness --layer NAME --report DIR``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from scenecam_edge import SceneCam
from scenecam_edge.dataset import align_classes, load_dataset, stratified_split
from scenecam_edge.evaluation import faithfulness_scores, summaries

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(REPO / "models" / "scenes-resnet18"))
    parser.add_argument("--data", default=str(REPO.parent / "shared/data/intel-scenes/train"))
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--methods", default="gradcam,gradcam++,layercam")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    cam = SceneCam.load(args.model, threads=args.threads)
    spec = cam.manifest.input
    data = align_classes(
        load_dataset(args.data, (spec.height, spec.width), spec.channels), cam.class_names
    )
    _, val_idx = stratified_split(data.labels, 0.15, 1337)  # evaluate's defaults
    data = data.subset(val_idx)
    methods = args.methods.split(",")
    print(f"{cam.manifest.name}, {min(args.images, len(data))} validation photos (seed 0)")
    print("| layer | map | method | deletion AUC (lower) | insertion AUC (higher) | "
          "average drop % (lower) | increase in confidence % (higher) | s |")  # fmt: skip
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for layer in cam.layers:
        start = time.perf_counter()
        scores = faithfulness_scores(cam, data, methods, images=args.images, layer=layer.name)
        table = summaries(scores)
        seconds = time.perf_counter() - start
        for method, f in table.items():
            print(
                f"| {layer.name} | {layer.map_size} | {method} | {f.deletion_auc:.3f} | "
                f"{f.insertion_auc:.3f} | {f.average_drop:.1f} | "
                f"{f.increase_in_confidence:.1f} | {seconds:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
