"""Ray Data: classify a dataset of images across a cluster, one loaded bundle per worker.

>>> import ray
>>> from scenecam_edge.integrations.ray import SceneCamPredictor
>>> ds = ray.data.read_images("photos/", include_paths=True, mode="RGB")
>>> results = ds.map_batches(
...     SceneCamPredictor,
...     fn_constructor_kwargs={"model": None, "explain": None},
...     concurrency=4,           # actors, each holding one SceneCam
...     batch_size=32,
...     batch_format="numpy",
... )
>>> results.write_parquet("results/")

or :func:`classify_dataset`, which makes that call. Each output row has ``label`` (str),
``index`` (int64), ``confidence`` (float32), one ``p_<class>`` column (float32) per class,
``error`` (empty when the image was fine), the columns named in
``keep`` (``path`` by default) and, with ``explain`` (one
:class:`~scenecam_edge.options.ExplainOptions`, as ``SceneCam.explain_options`` makes it,
or True for the defaults), ``cam``: the raw CAM (float32, the layer's resolution) of the
explained class. The numbers equal ``scenecam-edge batch`` on
the same pixels (Ray decodes the files itself; photos with an EXIF rotation are not turned
upright there, unlike ``load_image``).

Scenes (GeoTIFFs) go through :func:`classify_scenes`: one Ray task per scene, each writing
the same output set as ``scenecam-edge tiles --out-dir`` (the same function writes them).
One huge scene goes through :func:`classify_scene_blocks`: one task per block of tile rows,
the driver writing the rows as they come back, in order, with the command's own writer.

This module imports Ray only inside :func:`classify_scenes`: the predictor is a plain class
that Ray instantiates on each worker (``pip install 'scenecam-edge[ray]'`` brings Ray Data
and pyarrow).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ImageError
from ..model import DEFAULT_BATCH, SceneCam
from ..options import ExplainOptions
from ..results import Explanation
from ..tiles import (
    OutputSet,
    SceneOutcome,
    SceneTiler,
    TileOptions,
    TileRow,
    classify_scene,
    expand_scenes,
    outputs_in,
    run_scene,
)

if TYPE_CHECKING:
    from ray.data import Dataset


class SceneCamPredictor:
    """A callable class for ``Dataset.map_batches(..., batch_format="numpy")``.

    The bundle is loaded once, in ``__init__``, on each worker. ``threads`` is onnxruntime's
    thread count per worker (1 by default: Ray runs one worker per CPU it schedules).
    ``explain``: None (no maps), True (the model's default options) or one
    :class:`ExplainOptions`, checked against the model (target, method, layer, ...).
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        threads: int | None = 1,
        explain: ExplainOptions | bool | None = None,
        image_column: str = "image",
        keep: Sequence[str] = ("path",),
    ) -> None:
        self.model = SceneCam.load(model, threads=threads)
        self.options = checked_options(self.model, explain)
        self.image_column = image_column
        self.keep = tuple(keep)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.model.class_names

    def __call__(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        images = batch[self.image_column]
        count = len(images)
        paths = batch.get("path")
        names = [str(paths[i]) if paths is not None else f"row {i}" for i in range(count)]
        decoded: list[np.ndarray | ImageError] = []
        for name, image in zip(names, images, strict=True):
            try:
                decoded.append(self.model.load_image(np.asarray(image)))
            except ImageError as exc:
                decoded.append(ImageError(name, exc.reason))
        good = [i for i, d in enumerate(decoded) if isinstance(d, np.ndarray)]
        results = self.model.predict(
            [d for d in decoded if isinstance(d, np.ndarray)],
            [names[i] for i in good],
            explain=self.options,
        )
        n_classes = len(self.class_names)
        out: dict[str, np.ndarray] = {
            key: np.asarray(batch[key]) for key in self.keep if key in batch
        }
        labels = np.full(count, "", dtype=object)
        indices = np.full(count, -1, dtype=np.int64)
        confidence = np.full(count, np.nan, dtype=np.float32)
        probabilities = np.full((n_classes, count), np.nan, dtype=np.float32)
        errors = np.full(count, "", dtype=object)
        cams = (
            np.full((count, *_map_shape(self.model, self.options)), np.nan, dtype=np.float32)
            if self.options is not None
            else None
        )
        for i, d in enumerate(decoded):
            if isinstance(d, ImageError):
                errors[i] = d.reason
        for i, result in zip(good, results, strict=True):
            labels[i] = result.label
            indices[i] = result.index
            confidence[i] = result.confidence
            probabilities[:, i] = [result.probabilities[n] for n in self.class_names]
            if cams is not None and isinstance(result, Explanation):
                cams[i] = result.cam
        out.update(
            label=labels.astype(str),
            index=indices,
            confidence=confidence,
            error=errors.astype(str),
        )
        out.update(
            {f"p_{name}": p for name, p in zip(self.class_names, probabilities, strict=True)}
        )
        if cams is not None:
            out["cam"] = cams
        return out


def classify_dataset(
    dataset: Dataset,
    *,
    model: str | None = None,
    concurrency: int = 1,
    num_cpus: float = 1.0,
    batch_size: int = DEFAULT_BATCH,
    threads: int | None = 1,
    explain: ExplainOptions | bool | None = None,
    image_column: str = "image",
    keep: Sequence[str] = ("path",),
) -> Dataset:
    """``dataset.map_batches`` with :class:`SceneCamPredictor` on ``concurrency`` actors.

    Each actor reserves ``num_cpus``; leave CPUs over for Ray's image-reading tasks (with
    every CPU held by actors, reading waits forever): on a 2-CPU machine, for example,
    ``concurrency=2, num_cpus=0.5`` or ``concurrency=1``.
    """
    from ray.data import ActorPoolStrategy

    return dataset.map_batches(
        SceneCamPredictor,
        fn_constructor_kwargs={
            "model": model,
            "threads": threads,
            "explain": explain,
            "image_column": image_column,
            "keep": tuple(keep),
        },
        compute=ActorPoolStrategy(size=concurrency),
        num_cpus=num_cpus,
        batch_size=batch_size,
        batch_format="numpy",
    )


def checked_options(
    model: SceneCam, explain: ExplainOptions | bool | None
) -> ExplainOptions | None:
    """``explain`` as options valid for ``model`` (None: no maps; True: its defaults); a
    target or layer it does not have raises ValueError."""
    if explain is None or explain is False:
        return None
    if explain is True:
        return model.explain_options()
    return model.explain_options(
        explain.target,
        explain.method,
        explain.target_space,
        explain.alpha,
        explain.max_channels,
        explain.layer,
    )


def _map_shape(model: SceneCam, options: ExplainOptions) -> tuple[int, int]:
    """The (h, w) of the maps of the layer ``options`` names."""
    name = options.layer or model.layers[0].name
    layer = next(layer for layer in model.layers if layer.name == name)
    return layer.shape[0], layer.shape[1]


def classify_scenes(
    scenes: Iterable[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    model: str | None = None,
    options: TileOptions = TileOptions(),  # noqa: B008 (frozen)
    num_cpus: float = 1.0,
    threads: int | None = 1,
    resume: bool = True,
) -> list[SceneOutcome]:
    """Classify scenes on the current Ray cluster (call ``ray.init`` first), one task per
    scene, each reserving ``num_cpus``; outputs in ``out_dir`` as ``tiles --out-dir``
    writes them (a finished scene is skipped, a failed one reported in its outcome).

    Scenes are files, folders, globs or list files, as on the command line; every worker
    must see the same paths (a shared file system). Returns one outcome per scene, in order.
    """
    import ray

    paths = expand_scenes(os.fspath(s) for s in scenes)
    sets = outputs_in(Path(out_dir), paths)
    task = ray.remote(num_cpus=num_cpus)(_scene_task)
    refs = [
        task.remote(model, threads, path, outputs, options, resume)
        for path, outputs in zip(paths, sets, strict=True)
    ]
    return list(ray.get(refs))


def _scene_task(
    model: str | None,
    threads: int | None,
    scene: Path,
    outputs: OutputSet,
    options: TileOptions,
    resume: bool,
) -> SceneOutcome:
    return run_scene(_loaded(model, threads), scene, outputs, options, resume=resume)


def classify_scene_blocks(
    scene: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    model: str | None = None,
    options: TileOptions = TileOptions(),  # noqa: B008 (frozen)
    rows_per_block: int = 8,
    in_flight: int = 8,
    num_cpus: float = 1.0,
    threads: int | None = 1,
) -> dict[str, Any]:
    """Classify one scene on the current Ray cluster, a task per block of ``rows_per_block``
    tile rows (at most ``in_flight`` blocks submitted ahead, so the driver's memory holds a
    few blocks); writes the outputs of ``tiles SCENE --out OUT`` and returns its summary.

    The driver opens the scene, fixes its stretch (computed once, given to every task) and
    writes each row with the command's writer as the blocks come back, in order; the tasks
    only read and classify. Every worker must see ``scene`` at the same path.
    """
    import ray

    if rows_per_block < 1 or in_flight < 1:
        raise ValueError("rows_per_block and in_flight must be at least 1")
    task = ray.remote(num_cpus=num_cpus)(_block_task)

    def rows(tiler: SceneTiler, explain: ExplainOptions | None) -> Iterable[TileRow]:
        fixed = dataclasses.replace(options, stretch=tiler.stretch)
        starts = list(range(0, tiler.grid.rows, rows_per_block))
        refs: list[Any] = []
        for i, start in enumerate(starts):
            stop = min(start + rows_per_block, tiler.grid.rows)
            refs.append(task.remote(model, threads, tiler.scene, fixed, explain, start, stop))
            if i + 1 >= in_flight:
                yield from ray.get(refs.pop(0))
        for ref in refs:
            yield from ray.get(ref)

    loaded = _loaded(model, threads)
    return classify_scene(loaded, scene, OutputSet.beside(out), options, rows=rows)


def _block_task(
    model: str | None,
    threads: int | None,
    scene: str,
    options: TileOptions,
    explain: ExplainOptions | None,
    start: int,
    stop: int,
) -> list[TileRow]:
    """Rows ``start`` to ``stop`` of a scene's results, read and classified on a worker."""
    with options.tiler(_loaded(model, threads), scene) as tiler:
        return list(
            tiler.rows(batch_size=options.batch_size, explain=explain, first=start, stop=stop)
        )


@functools.lru_cache(maxsize=2)
def _loaded(model: str | None, threads: int | None) -> SceneCam:
    """The model, loaded once per worker process (Ray reuses workers across tasks)."""
    return SceneCam.load(model, threads=threads, spin=False)
