"""An int8 twin on a CPU without VNNI, beside the same twin on this one: accuracy, agreement
with the float model and Grad-CAM map correlation, as ``quantize`` checks them.

    python benchmarks/int8_without_vnni.py [--int8 scenes-lite0-int8] [--float models/scenes-lite0]
        [--cpu Haswell] [--images 1311] [--layer-images 300]

Without VNNI, x86 CPUs multiply uint8 by int8 with ``vpmaddubsw``, which adds pairs of
products in int16 and saturates; onnxruntime then runs other kernels than on a CPU with
VNNI, and an int8 model can answer differently. The machine this project runs on has VNNI,
so the CPU without it is emulated: the int8 model runs a second time under QEMU's user-mode
emulator (``qemu-x86_64 -cpu Haswell``: AVX2 and FMA, no AVX-512, no VNNI; Debian's
``qemu-user``), in a child process that checks which features it sees. Emulation is about a
hundred times slower, so this measures answers, not speed.

The float model and the int8 model on this CPU run here; the emulated child gets the images
(the validation split, as ``quantize`` compares on it) and the float model's predicted
classes through files, and returns the int8 model's logits and maps.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from scenecam_edge import SceneCam
from scenecam_edge.cam import CamInputs, get_method, softmax
from scenecam_edge.dataset import (
    align_classes,
    batches,
    default_cache_dir,
    load_dataset,
    stratified_split,
)
from scenecam_edge.evaluation import recorded_split
from scenecam_edge.export.compare import pearson

REPO = Path(__file__).resolve().parents[1]
#: x86 features that decide which int8 kernels onnxruntime runs (numpy's names).
FEATURES = ("AVX2", "FMA3", "AVX512F", "AVX512_VNNI", "AVX512VNNI", "AVX_VNNI")


def answers(
    cam: SceneCam, images: np.ndarray, targets: np.ndarray | None, layer: str | None, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Logits and Grad-CAM maps (logit space, feature resolution) of the first ``n`` images;
    the maps explain ``targets`` (default: the model's own answers)."""
    gradcam = get_method("gradcam")
    head = cam.heads[layer] if layer else cam.head
    all_logits, all_maps = [], []
    for s in batches(n, 32):
        features, logits = cam.forward(images[s], layer)
        chosen = logits.argmax(axis=1) if targets is None else targets[s]
        all_maps.append(gradcam.compute(CamInputs(features, head, logits, chosen, "logit")))
        all_logits.append(logits)
    return np.concatenate(all_logits), np.concatenate(all_maps)


def cpu_features() -> dict[str, bool]:
    from numpy._core._multiarray_umath import __cpu_features__ as seen

    return {name: bool(seen[name]) for name in FEATURES if name in seen}


def worker(args: argparse.Namespace) -> None:
    """In the emulated process: the int8 model's answers for the images and targets given."""
    with np.load(args.worker) as given:
        images, targets = given["images"], given["targets"]
    cam = SceneCam.load(args.int8, threads=1)
    out: dict[str, np.ndarray] = {}
    out["logits"], out["maps"] = answers(cam, images, targets, None, len(images))
    if args.layer:
        n = min(args.layer_images, len(images))
        out["layer_logits"], out["layer_maps"] = answers(cam, images, targets, args.layer, n)
    seen = cpu_features()
    np.savez(args.worker_out, features=np.array([k for k, v in seen.items() if v]), **out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--int8", default="scenes-lite0-int8")
    parser.add_argument("--float", default=str(REPO / "models" / "scenes-lite0"))
    parser.add_argument("--data", default=str(REPO.parent / "shared/data/intel-scenes/train"))
    parser.add_argument("--cpu", default="Haswell", help="QEMU's CPU model for the emulated run")
    parser.add_argument("--images", type=int, default=0, help="0: the whole validation split")
    parser.add_argument("--layer", default="", help="a finer layer to compare too ('' none)")
    parser.add_argument("--layer-images", type=int, default=300)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        sys.exit("qemu-x86_64 not found: install Debian's qemu-user")

    reference, int8 = SceneCam.load(args.float), SceneCam.load(args.int8)
    spec = reference.manifest.input
    data = align_classes(
        load_dataset(args.data, (spec.height, spec.width), spec.channels, default_cache_dir()),
        reference.class_names,
    )
    _, val_idx = stratified_split(data.labels, *recorded_split(int8))
    data = data.subset(val_idx[: args.images] if args.images else val_idx)
    images, labels = data.images, data.labels
    float_logits, float_maps = answers(reference, images, None, None, len(images))
    targets = float_logits.argmax(axis=1)  # every map explains the float model's answer
    maps = {"default layer": float_maps}
    here: dict[str, np.ndarray] = {}
    here["logits"], here["maps"] = answers(int8, images, targets, None, len(images))
    if args.layer:
        n = min(args.layer_images, len(images))
        maps[args.layer] = answers(reference, images, targets, args.layer, n)[1]
        here["layer_logits"], here["layer_maps"] = answers(int8, images, targets, args.layer, n)
    emulated = run_emulated(qemu, args, images, targets)

    seen_there = [str(f) for f in emulated.pop("features")]
    seen_here = [k for k, v in cpu_features().items() if v]
    print(f"this CPU: {', '.join(seen_here)}; emulated {args.cpu}: {', '.join(seen_there)}")
    if any("VNNI" in f for f in seen_there):
        sys.exit(f"the emulated {args.cpu} reports VNNI: choose a CPU model without it")

    runs = {"this CPU": here, f"emulated {args.cpu}": emulated}
    predicted = {k: r["logits"].argmax(axis=1) for k, r in runs.items()}
    print(f"\n{int8.manifest.name} against {reference.manifest.name}, {len(images)} photos")
    print(f"| | {' | '.join(runs)} |\n|---|---:|---:|")
    rows = [
        ("accuracy, float model", [f"{(targets == labels).mean():.2%}"] * 2),
        ("accuracy, int8", [f"{(p == labels).mean():.2%}" for p in predicted.values()]),
        ("agreement with float", [f"{(p == targets).mean():.2%}" for p in predicted.values()]),
    ]
    for layer, key in (("default layer", "maps"), (args.layer, "layer_maps")):
        if layer:
            corr = [
                np.array([pearson(a, b) for a, b in zip(maps[layer], r[key], strict=True)])
                for r in runs.values()
            ]
            rows.append((f"map correlation, {layer}, mean", [f"{c.mean():.4f}" for c in corr]))
            rows.append((f"map correlation, {layer}, min", [f"{c.min():.4f}" for c in corr]))
    for label, values in rows:
        print(f"| {label} | {' | '.join(values)} |")
    z_here, z_there = here["logits"], emulated["logits"]
    p_here, p_there = (softmax(z.astype(np.float64)) for z in (z_here, z_there))
    print(
        f"\nint8 on this CPU against int8 emulated: the same answer on "
        f"{(predicted['this CPU'] == z_there.argmax(axis=1)).mean():.2%} of the photos, "
        f"largest logit difference {np.abs(z_here - z_there).max():.3g}, "
        f"largest probability difference {np.abs(p_here - p_there).max():.3g}"
    )


def run_emulated(
    qemu: str, args: argparse.Namespace, images: np.ndarray, targets: np.ndarray
) -> dict[str, np.ndarray]:
    """The int8 model's answers from this script run again under QEMU as ``--cpu``."""
    with tempfile.TemporaryDirectory() as tmp:
        given, back = Path(tmp) / "given.npz", Path(tmp) / "back.npz"
        np.savez(given, images=images, targets=targets)
        # QEMU runs the same interpreter, which finds its virtualenv as it does here
        command = [qemu, "-cpu", args.cpu, sys.executable, __file__, "--int8", args.int8]
        command += ["--layer", args.layer, "--layer-images", str(args.layer_images)]
        command += ["--worker", str(given), "--worker-out", str(back)]
        print(f"emulating {args.cpu}: {len(images)} photos through {args.int8}", flush=True)
        subprocess.run(command, check=True, stderr=subprocess.DEVNULL)
        with np.load(back) as b:
            return {k: b[k] for k in b.files}


if __name__ == "__main__":
    main()
