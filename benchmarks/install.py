"""The lean install: sizes, cold start and the still path, before (OpenCV) and after (Pillow/numpy).

    python benchmarks/install.py                       # everything below
    python benchmarks/install.py --extras camera,geo   # fewer extras to size
    python benchmarks/install.py --skip-sizes          # only the speed table

1. Installed size of the base install and of each extra, each in a fresh virtualenv from one
   wheel of this tree (pip's cache and the machine's wheel folders are used). Two figures:
   the whole virtualenv (du -sb: every file, apparent bytes, symlinks not followed) and what
   the install added to it (minus an empty virtualenv of the same Python, which holds pip,
   and setuptools before Python 3.12). Whether the base install brought OpenCV.
2. Cold start of `scenecam-edge classify one.jpg`, each a fresh process, alternating between
   the base virtualenv and one with the --before git ref installed (the OpenCV runtime).
3. The still path in this process, old and new side by side, interleaved, medians: the old
   functions are OpenCV's calls as the runtime made them (cv2.resize INTER_AREA/LINEAR,
   applyColorMap, addWeighted, imencode), the new ones the runtime's. Needs OpenCV here
   (the dev extra). Per stage and end to end (decode, classify, heatmap, overlay, PNG).
Prints Markdown tables; --json writes the numbers.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from harness import REPO, fresh_venv, pip  # fresh_venv keeps the bundled pip: "added" leaves it out

PHOTO = REPO / "samples" / "scenes" / "street_31.jpg"
EXTRAS = ("camera", "camera-headless", "geo", "ray", "train")


# -- sizes ---------------------------------------------------------------------------------


def du(path: Path) -> int:
    """Apparent bytes of every file under ``path``, symlinks not followed (``du -sb``)."""
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


def build_wheel(source: Path, out: Path, log: Path) -> Path:
    """A wheel of ``source`` built from a clean copy: setuptools reuses a ``build/`` folder
    left in the tree, files since excluded included."""
    clean = out.parent / f"{out.name}-src"
    shutil.copytree(source, clean, ignore=shutil.ignore_patterns("build", "*.egg-info", ".git"))
    source = clean
    with log.open("ab") as fh:
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(source)],
            check=True,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    return next(out.glob("scenecam_edge-*.whl"))


def largest(site: Path, n: int = 6) -> dict[str, float]:
    """The biggest top-level entries of site-packages, grouped by distribution, in MB."""
    parts: dict[str, int] = {}
    for entry in site.iterdir():
        key = entry.name.split("-")[0].split(".")[0].lower().lstrip("_")
        key = "opencv" if key.startswith(("cv2", "opencv")) else key
        parts[key] = parts.get(key, 0) + (du(entry) if entry.is_dir() else entry.stat().st_size)
    top = sorted(parts.items(), key=lambda kv: -kv[1])[:n]
    return {k: round(v / 1e6, 1) for k, v in top}


def sizes(wheel: Path, extras: list[str], work: Path, log: Path) -> dict[str, Any]:
    empty = du(fresh_venv(work / "venv-empty"))
    result: dict[str, Any] = {"empty_venv_mb": round(empty / 1e6, 1)}
    for extra in ["", *extras]:
        name = extra or "base"
        print(f"installing {name} into a fresh virtualenv ...", file=sys.stderr, flush=True)
        env = fresh_venv(work / f"venv-{name}")
        pip(env, log, f"{wheel}[{extra}]" if extra else str(wheel))
        site = next((env / "lib").glob("python*/site-packages"))
        total = du(env)
        result[name] = {
            "venv_mb": round(total / 1e6, 1),
            "added_mb": round((total - empty) / 1e6, 1),
            "opencv": any(p.name.startswith("cv2") for p in site.iterdir()),
            "largest_mb": largest(site),
        }
        print(json.dumps({name: result[name]}), file=sys.stderr, flush=True)  # as it comes
        if name != "base":
            shutil.rmtree(env)
    return result


# -- cold start ----------------------------------------------------------------------------


def cold_start(envs: dict[str, Path], rounds: int) -> dict[str, float]:
    """Median seconds of `scenecam-edge classify one.jpg`, a fresh process each, alternating."""
    times: dict[str, list[float]] = {name: [] for name in envs}
    for _ in range(rounds):
        for name, env in envs.items():
            start = time.perf_counter()
            subprocess.run(
                [str(env / "bin" / "scenecam-edge"), "classify", str(PHOTO), "--threads", "1"],
                check=True,
                capture_output=True,
            )
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


# -- the still path, old and new -----------------------------------------------------------


def old_functions() -> dict[str, Callable[..., Any]]:
    """The runtime's OpenCV calls before the lean install, verbatim in effect."""
    import cv2

    from scenecam_edge.cam import normalize

    jet = cv2.cvtColor(
        cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None], cv2.COLORMAP_JET),
        cv2.COLOR_BGR2RGB,
    )

    def resize_to(image: np.ndarray, height: int, width: int) -> np.ndarray:
        h, w = image.shape[:2]
        if (h, w) == (height, width):
            return image
        mode = cv2.INTER_AREA if height * width < h * w else cv2.INTER_LINEAR
        return cv2.resize(image, (width, height), interpolation=mode).reshape(
            height, width, image.shape[2]
        )

    def heatmap_at(cam: np.ndarray, height: int, width: int) -> np.ndarray:
        resized = cv2.resize(normalize(cam), (width, height), interpolation=cv2.INTER_LINEAR)
        return np.clip(resized, 0.0, 1.0)

    def colorize(heatmap: np.ndarray) -> np.ndarray:
        levels = cv2.convertScaleAbs(np.clip(heatmap, 0.0, 1.0), alpha=255.0)
        return cv2.applyColorMap(levels, jet)

    def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4) -> np.ndarray:
        return cv2.addWeighted(colorize(heatmap), alpha, image, 1.0 - alpha, 0.0)

    def explained(cam: Any, image: np.ndarray) -> Any:
        """What the OpenCV runtime's explain did: the CAM, then the heatmap at image size."""
        e = cam.explain(image)
        heatmap_at(e.cam, *image.shape[:2])
        return e

    def overlay_of(e: Any) -> np.ndarray:
        """What the OpenCV runtime did: explain made the full-size heatmap, then the blend."""
        return overlay(e.image, heatmap_at(e.cam, *e.image.shape[:2]))

    def png(rgb: np.ndarray) -> bytes:
        _, encoded = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        return encoded.tobytes()

    return {
        "resize_to": resize_to,
        "heatmap_at": heatmap_at,
        "colorize": colorize,
        "overlay": overlay,
        "overlay_of": overlay_of,
        "explain": explained,
        "png": png,
    }


def new_functions() -> dict[str, Callable[..., Any]]:
    from scenecam_edge import images, visual
    from scenecam_edge.fileio import encode_png

    return {
        "resize_to": images.resize_to,
        "heatmap_at": visual.heatmap_at,
        "colorize": visual.colorize,
        "overlay": visual.overlay,
        # Explanation.overlay's work, uncached: from the small map, no float heatmap
        "overlay_of": lambda e: visual.blend(e.image, visual.levels_at(e.cam, *e.image.shape[:2])),
        "explain": lambda cam, image: cam.explain(image),  # the heatmap only when read
        "png": encode_png,
    }


def still_path(rounds: int) -> list[dict[str, Any]]:
    """Per-image milliseconds, old and new interleaved in rounds, medians."""
    from PIL import Image

    from scenecam_edge import SceneCam, model, visual

    cam = SceneCam.load(threads=1)
    base = np.asarray(Image.open(PHOTO).convert("RGB"))
    sides = {"old": old_functions(), "new": new_functions()}
    rows: list[dict[str, Any]] = []
    for h, w in ((150, 150), (480, 640), (1200, 1600), (3000, 4000)):
        rows += compare_at(cam, base, sides, h, w, rounds)
    model.resize_to = sides["new"]["resize_to"]  # type: ignore[attr-defined]
    visual.heatmap_at = sides["new"]["heatmap_at"]  # type: ignore[assignment]
    return rows


def compare_at(
    cam: Any,
    base: np.ndarray,
    sides: dict[str, dict[str, Callable[..., Any]]],
    h: int,
    w: int,
    rounds: int,
) -> list[dict[str, Any]]:
    from PIL import Image

    from scenecam_edge import model, visual

    image = np.asarray(Image.fromarray(base).resize((w, h), Image.Resampling.BICUBIC))
    photo = io.BytesIO()
    Image.fromarray(image).save(photo, "JPEG", quality=90)
    explained = cam.explain(image)
    cam_map = explained.cam
    heat = visual.heatmap_at(cam_map, h, w)

    def answers(f: dict[str, Callable[..., Any]]) -> None:
        """explain with JSON answers only (classify --explain, batch without pictures)."""
        model.resize_to = f["resize_to"]  # type: ignore[attr-defined]
        f["explain"](cam, image)

    def end_to_end(f: dict[str, Callable[..., Any]]) -> None:
        """Decode the JPEG, classify and explain, overlay, PNG: classify --heatmaps's work."""
        model.resize_to = f["resize_to"]  # type: ignore[attr-defined]
        visual.heatmap_at = f["heatmap_at"]  # type: ignore[assignment]
        e = cam.explain(np.asarray(Image.open(io.BytesIO(photo.getvalue())).convert("RGB")))
        f["png"](f["overlay_of"](e))

    def stages(f: dict[str, Callable[..., Any]]) -> dict[str, Callable[[], object]]:
        return {
            "resize to the model": lambda: f["resize_to"](image, 150, 150),
            "heatmap at image size": lambda: f["heatmap_at"](cam_map, h, w),
            "JET colours": lambda: f["colorize"](heat),
            "overlay": lambda: f["overlay"](image, heat),
            "overlay from the map": lambda: f["overlay_of"](explained),
            "PNG of the overlay": lambda: f["png"](image),
            "explain (answers only)": lambda: answers(f),
            "end to end": lambda: end_to_end(f),
        }

    plans = {side: stages(f) for side, f in sides.items()}
    times: dict[tuple[str, str], list[float]] = {}
    n = 1 if h >= 3000 else 3 if h >= 1200 else 10
    for _ in range(rounds):
        for stage in plans["old"]:
            for side in ("old", "new"):
                fn = plans[side][stage]
                start = time.perf_counter()
                for _ in range(n):
                    fn()
                times.setdefault((stage, side), []).append((time.perf_counter() - start) * 1000 / n)
    rows = []
    for stage in plans["old"]:
        old = statistics.median(times[(stage, "old")])
        new = statistics.median(times[(stage, "new")])
        rows.append(
            {"size": f"{w}x{h}", "stage": stage, "old_ms": old, "new_ms": new, "ratio": new / old}
        )
    return rows


# -- report --------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--extras", default=",".join(EXTRAS), help="Extras to size, comma-separated."
    )
    parser.add_argument("--before", default="main", help="Git ref of the OpenCV runtime.")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--skip-sizes", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="scenecam-install-") as tmp:
        work = Path(tmp)
        log = work / "pip.log"
        if not args.skip_sizes:
            wheel = build_wheel(REPO, work / "wheel", log)
            extras = [e for e in args.extras.split(",") if e]
            result["sizes"] = sizes(wheel, extras, work, log)
            before_src = work / "before"
            before_src.mkdir()
            archive = subprocess.run(
                ["git", "-C", str(REPO), "archive", args.before], capture_output=True, check=True
            )
            subprocess.run(["tar", "-x", "-C", str(before_src)], input=archive.stdout, check=True)
            before = fresh_venv(work / "venv-before")
            pip(before, log, str(build_wheel(before_src, work / "wheel-before", log)))
            result["before_venv_mb"] = round(du(before) / 1e6, 1)
            result["cold_start_s"] = cold_start(
                {f"before ({args.before}, OpenCV)": before, "base (this tree)": work / "venv-base"},
                args.rounds,
            )
        if not args.skip_speed:
            result["still_path"] = still_path(args.rounds)
    report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


def report(result: dict[str, Any]) -> None:
    if "sizes" in result:
        s = result["sizes"]
        print(f"\nEmpty virtualenv (pip, setuptools): {s['empty_venv_mb']} MB\n")
        print("| install | virtualenv MB | added by pip install MB | OpenCV | largest (MB) |")
        print("|---|---:|---:|---|---|")
        for name, row in s.items():
            if isinstance(row, dict):
                big = ", ".join(f"{k} {v}" for k, v in row["largest_mb"].items())
                print(
                    f"| {name} | {row['venv_mb']} | {row['added_mb']} | "
                    f"{'yes' if row['opencv'] else 'no'} | {big} |"
                )
        print(f"\nBefore (OpenCV in the base install): virtualenv {result['before_venv_mb']} MB")
        print("\n| cold start: `scenecam-edge classify one.jpg` | median s |\n|---|---:|")
        for name, t in result["cold_start_s"].items():
            print(f"| {name} | {t:.2f} |")
    if "still_path" not in result:
        return
    print("\n| image | stage | OpenCV ms | Pillow/numpy ms | new / old |")
    print("|---|---|---:|---:|---:|")
    for r in result["still_path"]:
        print(
            f"| {r['size']} | {r['stage']} | {r['old_ms']:.2f} | {r['new_ms']:.2f} | "
            f"{r['ratio']:.2f} |"
        )


if __name__ == "__main__":
    main()
