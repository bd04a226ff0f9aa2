"""One benchmark table: the runtime (float and int8 ONNX) against TensorFlow, on the same Keras
weights and the same images, measured in one run. Writes BENCHMARKS.md; needs the train extra.

    python benchmarks/run.py                  # the shipped default's architecture
    python benchmarks/run.py --sizes          # also install two fresh virtualenvs (minutes)
    python benchmarks/run.py --arch small --out BENCHMARKS-small.md
    python benchmarks/run.py --keras runs/x/best.keras    # a trained model instead
    python benchmarks/run.py --quick --out /tmp/b.md      # tiny settings: does it all run?

Weights do not change the speed, so without --keras it builds the architecture with random
weights, exports it to a float bundle and quantises that (U8S8 QDQ, per-channel weights,
calibrated on training images) in a temporary folder. Then, each contender in a child process
of its own (so that its peak resident memory, ru_maxrss, is its own):

- float ONNX and int8 ONNX through the runtime (``SceneCam.predict``): classify, and explain
  (Grad-CAM and its heatmap at image size, as ``explain`` returns them), at batch 1 and 32;
- Keras ``tf.function``: the forward pass, and forward + GradientTape Grad-CAM;
- the tutorial style: eager Keras calls and GradientTape (keras-io grad_cam.py). Eager conv
  gradients abort inside this TensorFlow build's oneDNN kernels on these CPUs
  ("munmap_chunk(): invalid pointer"), so that child runs with TF_ENABLE_ONEDNN_OPTS=0;
- onnxruntime session settings, swept through ``scenecam_edge.session`` (threads,
  graph optimisation level, memory arena and pattern, spinning; a simulated 30 fps camera);
  and the int8 formats (U8S8, S8S8, U8U8);
- cold start: ``scenecam-edge classify one.jpg`` against the same job in TensorFlow, each a
  fresh process, alternating;
- with --sizes: the installed size of a fresh virtualenv with ``pip install .`` (the runtime)
  and one with ``pip install '.[train]'``, and of the OpenCV wheels one could ship instead.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import (
    REPO,
    cold_starts,
    fresh_venv,
    keras_classify_job,
    pip,
    ratio,
    run_child,
    time_modes,
)

if TYPE_CHECKING:
    import numpy as np

DATA = REPO.parent / "shared" / "data" / "intel-scenes" / "train"
BATCH = 32
CONTENDERS = ("float ONNX", "int8 ONNX", "Keras tf.function", "tutorial style (eager Keras)")
MODES = ("classify b1", "explain b1", "classify b32", "explain b32")
TARGETS = {
    "int8 / float explain, batch 1": 1.5,
    "int8 / float explain, batch 32": 1.5,
    "float explain / tf.function Grad-CAM, batch 1": 4.0,
    "float explain / tutorial style, batch 1": 10.0,
    "cold start, TensorFlow / runtime": 5.0,
}
SIZE_TARGET_MB = 250.0
OPENCV_WHEELS = (
    "opencv-python==5.0.0.93",
    "opencv-python==4.14.0.94",
    "opencv-python==4.10.0.84",
    "opencv-python-headless==5.0.0.93",
    "opencv-python-headless==4.14.0.94",
)


@dataclass
class Plan:
    """What the children need, written to the work folder as JSON."""

    work: str
    images: str
    float_bundle: str
    int8_bundle: str
    keras_file: str
    conv_layer: str
    rounds: int
    threads: int | None
    formats: dict[str, str] = field(default_factory=dict)  # label -> model.onnx
    camera_frames: int = 60

    @classmethod
    def read(cls, path: Path) -> Plan:
        return cls(**json.loads(path.read_text()))


# -- helpers -----------------------------------------------------------------------------------


def chunks(items: list[np.ndarray], size: int) -> Iterator[list[np.ndarray]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def tf_env(onednn: bool = True) -> dict[str, str]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    if not onednn:
        env["TF_ENABLE_ONEDNN_OPTS"] = "0"
    return env


def load_images(
    n: int, size: int, skip: set[str] | None = None, seed: int = 0
) -> tuple[np.ndarray, list[str]]:
    """``n`` photos from the data set (evenly spread over its sorted files), decoded and
    resized as the runtime does; seeded smooth noise when the data set is absent."""
    import numpy as np

    from scenecam_edge.images import load_image, resize_to
    from scenecam_edge.synthetic import wave_images

    paths = [p for p in sorted(DATA.rglob("*.jpg")) if str(p) not in (skip or set())]
    if paths:
        picked = paths[:: max(1, len(paths) // n)][:n]
        return np.stack([resize_to(load_image(p), size, size) for p in picked]), [
            str(p) for p in picked
        ]
    return wave_images(n, size, seed=seed, frequency=(0.02, 0.2), noise=20), []


# -- children ------------------------------------------------------------------------------------


def child_runtime(plan: Plan, bundle: str, out: Path) -> None:
    """classify and explain through the runtime, batch 1 and batch 32. No TensorFlow here."""
    import numpy as np

    from scenecam_edge import SceneCam

    cam = SceneCam.load(bundle, threads=plan.threads)
    images = list(np.load(plan.images))
    names = [f"img{i}" for i in range(len(images))]
    options = cam.explain_options()

    def b1(explain: bool) -> Callable[[], object]:
        def run() -> None:
            for img, name in zip(images, names, strict=True):
                if explain:
                    cam.predict([img], [name], explain=options)
                else:
                    cam.predict([img], [name])

        return run

    def b32(explain: bool) -> Callable[[], object]:
        def run() -> None:
            for batch in chunks(images, BATCH):
                if explain:
                    cam.predict(batch, names[: len(batch)], explain=options)
                else:
                    cam.predict(batch, names[: len(batch)])

        return run

    n = len(images)
    ms = time_modes(
        {
            "classify b1": (b1(False), n),
            "explain b1": (b1(True), n),
            "classify b32": (b32(False), n),
            "explain b32": (b32(True), n),
        },
        plan.rounds,
    )
    out.write_text(json.dumps(ms))


def child_tensorflow(plan: Plan, out: Path, eager: bool) -> None:
    """The same jobs in Keras: tf.function (compiled) or eager (the tutorial style)."""
    import keras
    import numpy as np
    import tensorflow as tf

    sys.path.insert(0, str(REPO))
    from tests.keras_models import keras_io_gradcam  # the tests' GradientTape reference

    model = keras.models.load_model(plan.keras_file, compile=False)

    def forward(x: tf.Tensor) -> tf.Tensor:
        return model(x, training=False)

    # keras-io grad_cam.py, batched: the predicted class's logit per image.
    gradcam = keras_io_gradcam(model, plan.conv_layer)

    classify_fn = forward if eager else tf.function(forward)
    explain_fn = gradcam if eager else tf.function(gradcam)
    images = np.load(plan.images)
    n = len(images)

    def b1(fn: Callable[[tf.Tensor], object]) -> Callable[[], object]:
        def run() -> None:
            for img in images:
                fn(tf.convert_to_tensor(img[None].astype(np.float32)))

        return run

    def b32(fn: Callable[[tf.Tensor], object]) -> Callable[[], object]:
        def run() -> None:
            for start in range(0, n, BATCH):
                fn(tf.convert_to_tensor(images[start : start + BATCH].astype(np.float32)))

        return run

    ms = time_modes(
        {
            "classify b1": (b1(classify_fn), n),
            "explain b1": (b1(explain_fn), n),
            "classify b32": (b32(classify_fn), n),
            "explain b32": (b32(explain_fn), n),
        },
        max(1, plan.rounds // 2) if eager else plan.rounds,
    )
    out.write_text(json.dumps(ms))


def child_sessions(plan: Plan, out: Path) -> None:
    """Sweep onnxruntime's session settings through the one place that makes sessions."""
    import resource

    import numpy as np

    from scenecam_edge.session import SessionConfig, available_cpus, create_session

    images = np.load(plan.images)
    one = [images[i : i + 1] for i in range(len(images))]
    batches = [images[i : i + BATCH] for i in range(0, len(images), BATCH)]
    cpus = available_cpus()
    variants: dict[str, SessionConfig] = {"defaults": SessionConfig(threads=plan.threads)}
    for t in sorted({1, cpus}):
        variants[f"threads={t}"] = SessionConfig(threads=t)
    for level in ("basic", "extended"):
        variants[f"optimization={level}"] = SessionConfig(threads=plan.threads, optimization=level)
    variants["memory_arena=False"] = SessionConfig(threads=plan.threads, memory_arena=False)
    variants["memory_pattern=False"] = SessionConfig(threads=plan.threads, memory_pattern=False)
    variants["spin=False"] = SessionConfig(threads=plan.threads, spin=False)
    models = {
        "float": Path(plan.float_bundle) / "model.onnx",
        "int8": Path(plan.int8_bundle) / "model.onnx",
    }
    result: dict[str, Any] = {"cpus": cpus, "sweep": {}, "camera": {}, "formats": {}}

    def sweep(candidates: dict[str, tuple[Path, SessionConfig]]) -> dict[str, dict[str, float]]:
        """ms per image, b1 and b32, for each (graph, config). One session alive at a time
        (idle sessions that spin would slow the one being timed): each round makes each
        session afresh, warms it, times it and drops it; the order rotates between rounds."""
        times: dict[str, dict[str, list[float]]] = {
            name: {"b1": [], "b32": []} for name in candidates
        }
        names = list(candidates)
        for r in range(plan.rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                path, config = candidates[name]
                session = create_session(path, config)
                for mode, inputs in (("b1", one), ("b32", batches)):
                    for x in inputs[:3]:  # warm up: arena growth, memory pattern planning
                        session.run(None, {"image": x})
                    start = time.perf_counter()
                    for x in inputs:
                        session.run(None, {"image": x})
                    times[name][mode].append((time.perf_counter() - start) * 1000 / len(images))
                del session
        return {
            name: {mode: statistics.median(v) for mode, v in modes.items()}
            for name, modes in times.items()
        }

    for model_name, path in models.items():
        result["sweep"][model_name] = sweep(
            {name: (path, config) for name, config in variants.items()}
        )

    for model_name, path in models.items():
        # The camera loop: a frame every 33 ms (30 fps), one image per run; latency of a run
        # and process CPU per frame (the idle wait included).
        for t in sorted({1, cpus}):
            for spin in (False, True):
                session = create_session(path, SessionConfig(threads=t, spin=spin))
                session.run(None, {"image": one[0]})
                latencies = []
                cpu0 = resource.getrusage(resource.RUSAGE_SELF)
                wall0 = time.perf_counter()
                for i in range(plan.camera_frames):
                    tick = time.perf_counter()
                    session.run(None, {"image": one[i % len(one)]})
                    latencies.append((time.perf_counter() - tick) * 1000)
                    time.sleep(max(0.0, 1 / 30 - (time.perf_counter() - tick)))
                cpu1 = resource.getrusage(resource.RUSAGE_SELF)
                wall = time.perf_counter() - wall0
                cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
                result["camera"].setdefault(model_name, {})[f"threads={t}, spin={spin}"] = {
                    "latency_ms": statistics.median(latencies),
                    "cpu_percent": 100 * cpu / wall,
                }
                del session

    if plan.formats:
        config = SessionConfig(threads=plan.threads)
        result["formats"] = sweep(
            {
                "float": (models["float"], config),
                **{label: (Path(path), config) for label, path in plan.formats.items()},
            }
        )
    out.write_text(json.dumps(result))


# -- the parent ----------------------------------------------------------------------------------


def child_prepare(args: argparse.Namespace, work: Path) -> None:
    """Model, bundles, images and a photo in ``work``; writes ``plan.json`` and ``facts.json``
    (in a child, so that the parent stays small: a child's ru_maxrss starts from its parent's
    resident size at fork)."""
    import keras
    import numpy as np
    from PIL import Image

    from scenecam_edge.export import export_keras
    from scenecam_edge.export import quantize as q

    if args.arch is None and not args.keras:
        from scenecam_edge import SceneCam

        args.arch = (SceneCam.load().manifest.training or {}).get("arch", "small")
    if args.keras:
        model = keras.models.load_model(args.keras, compile=False)
        conv = args.conv_layer
        described = f"trained weights from {args.keras}"
    else:
        from scenecam_edge.training.architectures import build

        keras.utils.set_random_seed(0)
        model, conv = build(args.arch, (args.size, args.size), 3, 6)
        described = f"`{args.arch}` at {args.size} px, random weights (seed 0)"
    keras_file = work / "model.keras"
    model.save(keras_file)
    classes = [f"c{i}" for i in range(int(model.outputs[0].shape[-1]))]
    float_dir = export_keras(model, work / "float", conv_layer=conv, class_names=classes)
    conv = json.loads((float_dir / "manifest.json").read_text())["conv_layer"]
    size = int(model.inputs[0].shape[1])

    images, used = load_images(args.images, size)
    calib, _ = load_images(args.calibration_images, size, skip=set(used), seed=1)
    np.save(work / "images.npy", images)
    Image.fromarray(images[0]).save(work / "one.jpg", quality=92)
    data = q.CalibrationData(
        calibration=calib,
        evaluation=images,
        labels=None,
        info={"images": len(calib), "taken_from": "photos not among the timed ones"},
    )
    result = q.quantize_bundle(
        float_dir,
        work / "int8",
        data,
        max_accuracy_drop_points=100.0,
        min_cam_correlation=-1.0,
        threads=args.threads,
    )
    formats: dict[str, str] = {}
    if not args.no_formats:
        for act, weight in (("uint8", "int8"), ("int8", "int8"), ("uint8", "uint8")):
            settings = q.QuantSettings(activation_type=act, weight_type=weight)
            dst = work / f"{settings.label}.onnx"
            q.quantize_graph(float_dir / "model.onnx", dst, calib, settings)
            formats[settings.label] = str(dst)
    plan = Plan(
        work=str(work),
        images=str(work / "images.npy"),
        float_bundle=str(float_dir),
        int8_bundle=str(result.path),
        keras_file=str(keras_file),
        conv_layer=conv,
        rounds=args.rounds,
        threads=args.threads,
        formats=formats,
        camera_frames=args.camera_frames,
    )
    facts = {
        "model": described,
        "size": size,
        "parameters": int(model.count_params()),
        "images": len(images),
        "images_from": "the intel-scenes photos" if used else "generated images",
        "calibration": len(calib),
        "float_mb": (float_dir / "model.onnx").stat().st_size / 1e6,
        "int8_mb": (result.path / "model.onnx").stat().st_size / 1e6,
        "int8_vs_float": result.comparison.as_dict(),
        "machine": machine(),
    }
    (work / "plan.json").write_text(json.dumps(plan.__dict__))
    (work / "facts.json").write_text(json.dumps(facts))


def measure(plan: Plan, args: argparse.Namespace) -> dict[str, Any]:
    work = Path(plan.work)
    plan_file = work / "plan.json"
    log = work / "children.log"
    me = [sys.executable, str(Path(__file__).resolve()), "--plan", str(plan_file)]
    speed: dict[str, dict[str, float]] = {}
    peak: dict[str, float] = {}
    children = {
        "float ONNX": (["--child", "runtime", "--bundle", plan.float_bundle], None),
        "int8 ONNX": (["--child", "runtime", "--bundle", plan.int8_bundle], None),
        "Keras tf.function": (["--child", "tf-function"], tf_env()),
        "tutorial style (eager Keras)": (["--child", "tf-eager"], tf_env(onednn=False)),
    }
    # Each contender runs once per pass, the order reversed every other pass; per cell the
    # best of the passes' medians, so that a burst of load elsewhere hits no one contender.
    names = list(children)
    for p in range(args.passes):
        for name in names if p % 2 == 0 else names[::-1]:
            extra, env = children[name]
            out = work / f"{names.index(name)}-{p}.json"
            print(f"measuring {name} (pass {p + 1}) ...", file=sys.stderr, flush=True)
            _, rss = run_child([*me, *extra, "--result", str(out)], log, env)
            peak[name] = max(peak.get(name, 0.0), rss)
            result = json.loads(out.read_text())
            speed[name] = {k: min(v, speed.get(name, {}).get(k, v)) for k, v in result.items()}

    sessions: dict[str, Any] = {}
    if not args.no_sessions:
        print("sweeping session settings ...", file=sys.stderr, flush=True)
        out = work / "sessions.json"
        run_child([*me, "--child", "sessions", "--result", str(out)], log)
        sessions = json.loads(out.read_text())

    print("cold starts ...", file=sys.stderr, flush=True)
    photo = work / "one.jpg"
    exe = str(Path(sys.executable).with_name("scenecam-edge"))
    tf_job = keras_classify_job(plan.keras_file, photo)
    jobs = {
        "runtime, float": ([exe, "classify", str(photo), "--model", plan.float_bundle], None),
        "runtime, int8": ([exe, "classify", str(photo), "--model", plan.int8_bundle], None),
        "TensorFlow": ([sys.executable, "-c", tf_job], tf_env()),
    }
    cold_start = cold_starts(jobs, args.cold_repeats, log)
    return {"speed": speed, "peak_mb": peak, "sessions": sessions, "cold_start": cold_start}


def installed_sizes(work: Path) -> dict[str, Any]:
    """Fresh virtualenvs: ``pip install .`` and ``pip install '.[train]'`` (the pip cache and
    the machine's wheel folders are used), and each candidate OpenCV wheel on its own."""
    result: dict[str, Any] = {}
    log = work / "pip.log"

    def venv(name: str) -> Path:
        return fresh_venv(work / name)

    def du(path: Path) -> int:
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())

    empty = venv("venv-empty")
    base = du(empty)
    for name, spec in (("runtime", "."), ("train", ".[train]")):
        print(f"installing {spec} into a fresh virtualenv ...", file=sys.stderr, flush=True)
        env_dir = venv(f"venv-{name}")
        pip(env_dir, log, spec)
        site = next((env_dir / "lib").glob("python*/site-packages"))
        parts: dict[str, int] = {}
        for entry in site.iterdir():
            key = entry.name.split("-")[0].split(".")[0].lower().lstrip("_")
            key = "opencv" if key.startswith(("cv2", "opencv")) else key
            parts[key] = parts.get(key, 0) + (du(entry) if entry.is_dir() else entry.stat().st_size)
        result[name] = {
            "total_mb": du(env_dir) / 1e6,
            "empty_venv_mb": base / 1e6,
            "largest_mb": {k: v / 1e6 for k, v in sorted(parts.items(), key=lambda kv: -kv[1])[:6]},
            "has_tensorflow": (site / "tensorflow").is_dir(),
        }
        shutil.rmtree(env_dir)
    opencv: dict[str, Any] = {}
    for spec in OPENCV_WHEELS:
        print(f"sizing {spec} ...", file=sys.stderr, flush=True)
        env_dir = venv("venv-opencv")
        try:
            pip(env_dir, log, "--no-deps", spec)
            pip(env_dir, log, "numpy")
            site = next((env_dir / "lib").glob("python*/site-packages"))
            size = sum(
                du(p) if p.is_dir() else p.stat().st_size
                for p in site.iterdir()
                if p.name.lower().startswith(("cv2", "opencv"))
            )
            probe = subprocess.run(
                [
                    str(env_dir / "bin" / "python"),
                    "-c",
                    "import cv2, re; info = cv2.getBuildInformation(); "
                    "gui = re.search(r'GUI:\\s*(\\S+)', info); "
                    "print(gui.group(1) if gui else 'NONE')",
                ],
                capture_output=True,
                text=True,
            )
            opencv[spec] = {
                "installed_mb": size / 1e6,
                "gui": probe.stdout.strip() or f"import failed: {probe.stderr.strip()[-200:]}",
            }
        except subprocess.CalledProcessError as exc:
            opencv[spec] = {"error": f"pip failed ({exc.returncode})"}
        shutil.rmtree(env_dir)
    result["opencv"] = opencv
    return result


# -- the report ----------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    import cv2
    import keras
    import numpy as np
    import onnxruntime
    import tensorflow as tf

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        have = set(text.split("flags", 1)[1].split("\n", 1)[0].split())
        flags = ", ".join(
            f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in have
        )
    except (OSError, IndexError):
        pass
    return {
        "cpu": cpu,
        "flags": flags,
        "cores": str(len(os.sched_getaffinity(0))),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "os": platform.platform(),
    }


def headlines(m: dict[str, Any]) -> dict[str, float]:
    s = m["speed"]
    ratios = {
        "int8 / float explain, batch 1": s["float ONNX"]["explain b1"]
        / s["int8 ONNX"]["explain b1"],
        "int8 / float explain, batch 32": s["float ONNX"]["explain b32"]
        / s["int8 ONNX"]["explain b32"],
        "float explain / tf.function Grad-CAM, batch 1": s["Keras tf.function"]["explain b1"]
        / s["float ONNX"]["explain b1"],
        "float explain / tf.function Grad-CAM, batch 32": s["Keras tf.function"]["explain b32"]
        / s["float ONNX"]["explain b32"],
        "float explain / tutorial style, batch 1": s["tutorial style (eager Keras)"]["explain b1"]
        / s["float ONNX"]["explain b1"],
        "int8 explain / tf.function Grad-CAM, batch 1": s["Keras tf.function"]["explain b1"]
        / s["int8 ONNX"]["explain b1"],
        "cold start, TensorFlow / runtime": m["cold_start"]["TensorFlow"]["seconds"]
        / m["cold_start"]["runtime, float"]["seconds"],
    }
    return ratios


def report(
    args: argparse.Namespace,
    facts: dict[str, Any],
    m: dict[str, Any],
    sizes: dict[str, Any] | None,
    seconds: float,
) -> str:
    info = facts["machine"]
    lines = [
        "# Benchmarks",
        "",
        f"Written by `python benchmarks/run.py {' '.join(sys.argv[1:])}`".rstrip() + " "
        f"on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} ({seconds / 60:.1f} min). "
        "All figures come from this one run, on one machine; compare ratios, not milliseconds, "
        "across machines.",
        "",
        f"- Machine: {info['cpu']}, {info['cores']} cores ({info['flags']}); {info['os']}",
        f"- Python {info['python']}, onnxruntime {info['onnxruntime']}, numpy {info['numpy']}, "
        f"OpenCV {info['opencv']}, TensorFlow {info['tensorflow']}, Keras {info['keras']}",
        f"- Model: {facts['model']}, {facts['parameters']:,} parameters; model.onnx "
        f"{facts['float_mb']:.2f} MB float, {facts['int8_mb']:.2f} MB int8 (U8S8 QDQ, "
        f"per-channel weights, {facts['calibration']} calibration images)",
        f"- Images: {facts['images']} of {facts['images_from']} at {facts['size']} px, the "
        f"same for every contender; {args.rounds} rounds, median, best of {args.passes} "
        "passes; onnxruntime threads: "
        f"{args.threads or 'default (every CPU)'}",
        "",
        "## Throughput",
        "",
        "Each contender runs in a child process of its own. *classify*: the forward pass "
        "and class probabilities. *explain*: classify plus a Grad-CAM map of the predicted "
        "class; for the runtime that includes the normalised heatmap resized to the image "
        "(the coloured overlay is made when first read, and `benchmarks/speed.py` times it), "
        "for TensorFlow only the normalised map at feature resolution (so the comparison "
        "favours TensorFlow). Batch 1: one image per call; batch 32: 32 per call.",
        "",
        "| contender | classify b1 | explain b1 | classify b32 | explain b32 | peak RSS |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in CONTENDERS:
        row = m["speed"][name]
        cells = [f"{1000 / row[mode]:,.0f}/s ({row[mode]:.2f} ms)" for mode in MODES]
        lines.append(f"| {name} | {' | '.join(cells)} | {m['peak_mb'][name]:,.0f} MB |")
    lines += [
        "",
        "Images per second (ms per image). Peak RSS: the child's ru_maxrss over its whole run "
        "(the largest of the passes). "
        "The tutorial-style row runs with `TF_ENABLE_ONEDNN_OPTS=0`: eager conv gradients "
        "abort inside this TensorFlow build's oneDNN kernels on these CPUs "
        '("munmap_chunk(): invalid pointer"); that also makes its forward pass slower than '
        "TensorFlow's default. Its batch-32 columns are eager calls on 32 images at once "
        "(the tutorial itself goes one image at a time: the batch-1 columns).",
        "",
        "## Headline ratios",
        "",
        "| ratio | measured | target |",
        "|---|---:|---:|",
    ]
    ratios = headlines(m)
    for name, value in ratios.items():
        target = TARGETS.get(name)
        verdict = "" if target is None else f"≥ {target:g}x " + ("✔" if value >= target else "✘")
        lines.append(f"| {name} | {value:.2f}x | {verdict} |")
    if sizes:
        runtime_mb = sizes["runtime"]["total_mb"]
        ok = "✔" if runtime_mb <= SIZE_TARGET_MB else "✘"
        lines.append(
            f"| runtime-only virtualenv | {runtime_mb:.0f} MB | ≤ {SIZE_TARGET_MB:.0f} MB {ok} |"
        )
    c = m["cold_start"]
    lines += [
        "",
        "## Cold start",
        "",
        "A fresh process classifies one photo: `scenecam-edge classify one.jpg --model BUNDLE` "
        "against Python that imports Keras, loads the same model (`.keras`) and predicts. "
        f"Median of {args.cold_repeats}, alternating.",
        "",
        "| job | wall time | peak RSS |",
        "|---|---:|---:|",
    ]
    for name, row in c.items():
        lines.append(f"| {name} | {row['seconds']:.2f} s | {row['peak_mb']:,.0f} MB |")
    comp = facts["int8_vs_float"]
    lines += [
        "",
        "## Int8 against float",
        "",
        f"On the {comp['images']} timed images (random weights unless --keras, so only the "
        f"agreement means anything): predictions agree on {comp['prediction_agreement']:.1%}, "
        f"Grad-CAM maps correlate {comp['cam_correlation_mean']:.4f} on average (min "
        f"{comp['cam_correlation_min']:.4f}). The shipped int8 bundles record the same "
        "figures on the validation split in their manifests (`quantization.comparison`):",
        "",
        "| shipped bundle | float accuracy | int8 accuracy | predictions agree | Grad-CAM "
        "correlation, mean (min) | model.onnx |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for manifest in sorted((REPO / "models").glob("*/manifest.json")):
        q = json.loads(manifest.read_text()).get("quantization")
        if not q:
            continue
        c, size = q["comparison"], q["size_bytes"]
        accuracy = (
            f"{c['float_accuracy']:.4f} | {c['int8_accuracy']:.4f}"
            if c.get("int8_accuracy") is not None
            else "n/a | n/a"
        )
        lines.append(
            f"| {manifest.parent.name} ({c['images']} validation images) | {accuracy} | "
            f"{c['prediction_agreement']:.1%} | {c['cam_correlation_mean']:.4f} "
            f"({c['cam_correlation_min']:.4f}) | {size['float'] / 1e6:.1f} MB → "
            f"{size['int8'] / 1e6:.1f} MB |"
        )
    s = m.get("sessions") or {}
    if s:
        lines += [
            "",
            "## onnxruntime session settings",
            "",
            "Forward pass only (`session.run`), ms per image, sessions made by "
            "`scenecam_edge.session.create_session`; each row changes one setting from the "
            "defaults (the first row).",
            "",
            "| setting | float b1 | float b32 | int8 b1 | int8 b32 |",
            "|---|---:|---:|---:|---:|",
        ]
        for name in s["sweep"]["float"]:
            cells = [
                f"{s['sweep'][k][name][b]:.3f}" for k in ("float", "int8") for b in ("b1", "b32")
            ]
            lines.append(f"| {name} | {' | '.join(cells)} |")
        lines += [
            "",
            "Camera loop, simulated: a frame every 33 ms (30 fps), one image per run. Latency "
            "of a run (median) and the process's CPU over the whole time (100% = one core).",
            "",
            "| threads, spinning | float latency | float CPU | int8 latency | int8 CPU |",
            "|---|---:|---:|---:|---:|",
        ]
        for name in s["camera"]["float"]:
            cells = []
            for k in ("float", "int8"):
                row = s["camera"][k][name]
                cells += [f"{row['latency_ms']:.2f} ms", f"{row['cpu_percent']:.0f}%"]
            lines.append(f"| {name} | {' | '.join(cells)} |")
        if s.get("formats"):
            lines += [
                "",
                "Int8 formats, all QDQ with per-channel weights, default session settings "
                "(ms per image, forward pass):",
                "",
                "| format | b1 | b32 | vs float b1 | vs float b32 |",
                "|---|---:|---:|---:|---:|",
            ]
            fb1 = s["formats"]["float"]["b1"]
            fb32 = s["formats"]["float"]["b32"]
            for label, row in s["formats"].items():
                lines.append(
                    f"| {label} | {row['b1']:.3f} | {row['b32']:.3f} | "
                    f"{ratio(fb1, row['b1'], 2)} | {ratio(fb32, row['b32'], 2)} |"
                )
    lines += ["", "## Installed size", ""]
    if sizes:
        for name, spec in (("runtime", "pip install ."), ("train", "pip install '.[train]'")):
            row = sizes[name]
            largest = ", ".join(f"{k} {v:.0f} MB" for k, v in row["largest_mb"].items())
            lines.append(
                f"- `{spec}` into a fresh virtualenv: **{row['total_mb']:.0f} MB** (an empty "
                f"one is {row['empty_venv_mb']:.0f} MB; TensorFlow "
                f"{'present' if row['has_tensorflow'] else 'absent'}). Largest: {largest}."
            )
        lines += [
            "",
            "OpenCV wheels, installed alone (`pip install --no-deps`); GUI is the highgui "
            "backend from `cv2.getBuildInformation()`, which the camera window needs:",
            "",
            "| wheel | installed | GUI |",
            "|---|---:|---|",
        ]
        for spec, row in sizes["opencv"].items():
            if "error" in row:
                lines.append(f"| {spec} | {row['error']} | |")
            else:
                lines.append(f"| {spec} | {row['installed_mb']:.0f} MB | {row['gui']} |")
    else:
        lines.append(
            "Not measured in this run (it takes minutes): `python benchmarks/run.py --sizes`."
        )
    return "\n".join(lines) + "\n"


def child_args(args: argparse.Namespace) -> list[str]:
    """This script with the options that the prepare child needs."""
    cmd = [sys.executable, str(Path(__file__).resolve())]
    for name in ("arch", "keras", "conv_layer", "threads"):
        value = getattr(args, name)
        if value is not None:
            cmd += [f"--{name.replace('_', '-')}", str(value)]
    cmd += ["--size", str(args.size), "--images", str(args.images), "--rounds", str(args.rounds)]
    cmd += ["--calibration-images", str(args.calibration_images)]
    cmd += ["--camera-frames", str(args.camera_frames)]
    if args.no_formats:
        cmd.append("--no-formats")
    return cmd


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--arch", default=None, help="Architecture (default: the shipped default's)."
    )
    parser.add_argument("--keras", default=None, help="A trained .keras model instead.")
    parser.add_argument("--conv-layer", default=None, help="With --keras: its Grad-CAM layer.")
    parser.add_argument("--size", type=int, default=150)
    parser.add_argument("--images", type=int, default=64, help="Timed images (a multiple of 32).")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--passes", type=int, default=2, help="Runs of each contender (best median counts)."
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--calibration-images", type=int, default=100)
    parser.add_argument("--cold-repeats", type=int, default=5)
    parser.add_argument("--camera-frames", type=int, default=90)
    parser.add_argument("--sizes", action="store_true", help="Also measure installed sizes.")
    parser.add_argument("--no-sessions", action="store_true", help="Skip the session sweep.")
    parser.add_argument("--no-formats", action="store_true", help="Skip the int8 formats.")
    parser.add_argument("--quick", action="store_true", help="Tiny settings, to check it runs.")
    parser.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md")
    parser.add_argument("--keep", action="store_true", help="Keep the work folder.")
    # Children:
    parser.add_argument("--plan", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--bundle", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child == "prepare":
        child_prepare(args, Path(args.work))
        return
    if args.child:
        plan = Plan.read(args.plan)
        if args.child == "runtime":
            child_runtime(plan, args.bundle, args.result)
        elif args.child in ("tf-function", "tf-eager"):
            child_tensorflow(plan, args.result, eager=args.child == "tf-eager")
        elif args.child == "sessions":
            child_sessions(plan, args.result)
        else:
            parser.error(f"unknown child {args.child}")
        return

    if args.quick:
        args.images, args.rounds, args.cold_repeats, args.passes = BATCH, 1, 1, 1
        args.calibration_images, args.camera_frames = 16, 5
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="scenecam-bench-"))
    try:
        print(f"preparing bundles in {work} ...", file=sys.stderr, flush=True)
        run_child(
            [*child_args(args), "--child", "prepare", "--work", str(work)], work / "prepare.log"
        )
        plan = Plan.read(work / "plan.json")
        facts = json.loads((work / "facts.json").read_text())
        measured = measure(plan, args)
        sizes = installed_sizes(work) if args.sizes else None
        text = report(args, facts, measured, sizes, time.perf_counter() - started)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    from scenecam_edge.fileio import write_bytes_atomic

    write_bytes_atomic(args.out, text.encode("utf-8"))
    print(text)
    print("Headline ratios:")
    for name, value in headlines(measured).items():
        target = TARGETS.get(name)
        verdict = "met" if target is not None and value >= target else "MISSED"
        mark = "" if target is None else f" (target {target:g}x: {verdict})"
        print(f"  {name}: {value:.2f}x{mark}")
    if sizes:
        print(
            f"  runtime-only virtualenv: {sizes['runtime']['total_mb']:.0f} MB (target {SIZE_TARGET_MB:.0f} MB)"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
