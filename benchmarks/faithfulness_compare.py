"""Are one model's Grad-CAM maps as faithful as another's? Both models' maps scored on the
same validation photos (deletion and insertion AUC, runtime/faithfulness.py), each beside a
random map at its own resolution, with paired bootstrap intervals for the differences.

    python benchmarks/faithfulness_compare.py MODEL_A MODEL_B [--images 0] [--layer-a NAME]
        [--layer-b NAME] [--data ../shared/data/intel-scenes/train] [--save scores.npz]

``--images 0`` (the default) takes the whole validation split each model records (as
``evaluate`` does; seed 1337, 15% for both scene models). Figures on 100 photos, as
``evaluate --faithfulness`` takes by default, move by about 0.03 in AUC from one subset to
another, as much as the differences between models; this puts an interval on them.

Two readings of "as faithful":

- the raw AUCs (deletion lower, insertion higher). They also measure how robust the model is
  to the perturbation: a model that keeps its answer while pixels are blurred away has higher
  deletion and insertion AUCs whatever the map says;
- the gain over the model's own random map (random deletion AUC minus the map's; the map's
  insertion AUC minus random's): what the map adds over knowing nothing, on that model.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from scenecam_edge import SceneCam
from scenecam_edge.dataset import align_classes, default_cache_dir, load_dataset, stratified_split
from scenecam_edge.evaluation import RANDOM_BASELINE, faithfulness_scores, recorded_split
from scenecam_edge.faithfulness import MapScores

REPO = Path(__file__).resolve().parents[1]
RESAMPLES = 10_000


def per_image(scores: dict[str, MapScores]) -> dict[str, np.ndarray]:
    """Per photo: the map's AUCs, the random map's, and the gains over random."""
    cam, rand = scores["gradcam"], scores[RANDOM_BASELINE]
    return {
        "deletion": cam.deletion_auc,
        "insertion": cam.insertion_auc,
        "random deletion": rand.deletion_auc,
        "random insertion": rand.insertion_auc,
        "deletion gain": rand.deletion_auc - cam.deletion_auc,
        "insertion gain": cam.insertion_auc - rand.insertion_auc,
    }


def interval(diff: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    """95% paired bootstrap interval of the mean of per-photo differences."""
    picks = rng.integers(0, len(diff), size=(RESAMPLES, len(diff)))
    means = diff[picks].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_a")
    parser.add_argument("model_b")
    parser.add_argument("--layer-a", default=None)
    parser.add_argument("--layer-b", default=None)
    parser.add_argument("--images", type=int, default=0, help="0: the whole validation split")
    parser.add_argument("--data", default=str(REPO.parent / "shared/data/intel-scenes/train"))
    parser.add_argument("--save", type=Path, help="also write each photo's scores here (.npz)")
    args = parser.parse_args()

    runs: dict[str, dict[str, np.ndarray]] = {}
    for model, layer in ((args.model_a, args.layer_a), (args.model_b, args.layer_b)):
        cam = SceneCam.load(model)
        spec = cam.manifest.input
        data = align_classes(
            load_dataset(args.data, (spec.height, spec.width), spec.channels, default_cache_dir()),
            cam.class_names,
        )
        _, val_idx = stratified_split(data.labels, *recorded_split(cam))
        data = data.subset(val_idx)
        n = args.images or len(data)
        start = time.perf_counter()
        scores = faithfulness_scores(cam, data, ["gradcam"], images=n, layer=layer)
        where = layer or cam.manifest.conv_layer
        label = f"{cam.manifest.name} {where}"
        runs[label] = per_image(scores)
        print(f"{label}: {n} photos, {time.perf_counter() - start:.0f} s", flush=True)

    (a, ra), (b, rb) = runs.items()
    rng = np.random.default_rng(0)
    n = len(ra["deletion"])
    print(f"\n{n} validation photos; B - A with its 95% paired bootstrap interval")
    print(f"A = {a}, B = {b}\n")
    print("| measure | better | A | B | B - A | 95% interval |")
    print("|---|---|---:|---:|---:|---|")
    better = {"deletion": "lower", "random deletion": "", "random insertion": ""}
    for measure in ra:
        diff = rb[measure] - ra[measure]
        low, high = interval(diff, rng)
        print(
            f"| {measure} | {better.get(measure, 'higher')} | {ra[measure].mean():.3f} | "
            f"{rb[measure].mean():.3f} | {diff.mean():+.3f} | [{low:+.3f}, {high:+.3f}] |"
        )
    if args.save:
        np.savez(
            args.save,
            **{f"{m} | {k}": v for m, r in runs.items() for k, v in r.items()},
        )


if __name__ == "__main__":
    main()
