"""Classify a folder of images with Ray Data and write the results as Parquet.

    pip install 'scenecam-edge[ray]'
    python examples/ray_batch.py photos/ results/                   # a local Ray, every CPU
    python examples/ray_batch.py photos/ results/ --concurrency 4   # more workers
    python examples/ray_batch.py s3://bucket/photos/ s3://bucket/results/ --address auto

Each worker loads the bundle once (``SceneCamPredictor.__init__``) and classifies batches
of decoded images; the Parquet files hold path, label, index, confidence, one p_<class>
column per class, error and, with --explain, the raw CAM of each image.

The defaults follow the advice in the docs: two workers reserving half a CPU each, so CPUs
stay free for Ray's image readers (with every CPU held by workers, reading waits). Ray's
INFO logs are off unless --verbose.
"""

from __future__ import annotations

import argparse
import logging
import os
import time

from scenecam_edge.integrations.ray import classify_dataset


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("images", help="A folder (or list of files) of images; any Ray path.")
    parser.add_argument("out", help="Folder for the Parquet files.")
    parser.add_argument("--model", default=None, help="Bundle name or folder (default model).")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: local).")
    parser.add_argument(
        "--num-cpus", type=int, default=None, help="CPUs for a local Ray (default: all)."
    )
    parser.add_argument("--concurrency", type=int, default=2, help="Workers (default 2).")
    parser.add_argument(
        "--worker-cpus",
        type=float,
        default=0.5,
        help="CPUs each worker reserves; leave some for reading (default 0.5).",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads per worker.")
    parser.add_argument("--explain", action="store_true", help="Add each image's raw CAM.")
    parser.add_argument("--verbose", action="store_true", help="Ray's INFO logs and progress.")
    args = parser.parse_args()

    if not args.verbose:  # read when Ray Data is imported: its INFO lines and progress logs
        os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")
    import ray

    quiet = {} if args.verbose else {"logging_level": logging.WARNING, "log_to_driver": False}
    if args.address is None:
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, **quiet)
    else:
        ray.init(address=args.address, **quiet)
    start = time.perf_counter()
    images = ray.data.read_images(args.images, include_paths=True, mode="RGB")
    results = classify_dataset(
        images,
        model=args.model,
        concurrency=args.concurrency,
        num_cpus=args.worker_cpus,
        batch_size=args.batch_size,
        threads=args.threads,
        explain=args.explain,
    )
    results.write_parquet(args.out)
    seconds = time.perf_counter() - start
    rows = ray.data.read_parquet(args.out).count()
    print(f"{rows} images in {seconds:.1f} s ({rows / seconds:.1f} images/s) -> {args.out}")


if __name__ == "__main__":
    main()
