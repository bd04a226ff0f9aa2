"""Writing a scene's outputs as GIS-ready GeoTIFFs, atomically.

Per scene, beside the class map ``NAME.tif``:

- ``NAME.tif``: the class map on the tile grid, uint8, one band ``class``, nodata 255, a
  colour table (nodata transparent), and the class names as GDAL category names and a
  raster attribute table (``NAME.tif.aux.xml``, GDAL's sidecar, which QGIS reads).
- ``NAME.probs.tif`` (unless ``probabilities="none"``): one band per class ``p_<class>``,
  then ``valid_fraction`` (each tile's share of valid pixels). float32 with NaN nodata, or
  uint8 scaled by 1/254 (the scale is in the file: GIS tools show 0..1) with nodata 255.
- ``NAME.cam.tif`` (when explaining): the CAM mosaic at the scene's resolution, float32, NaN
  outside the footprint and in nodata tiles.

Each file is first written as a plain GeoTIFF under a temporary name, then (``cog=True``)
copied to a cloud-optimised GeoTIFF (GDAL's COG driver: tiled, deflate, overviews); when
every file is done, they are renamed to their final names together with the summary, with
signals held back (:mod:`.faults`): all of a scene's files or none.
"""

from __future__ import annotations

import colorsys
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from xml.sax.saxutils import escape

import numpy as np

from ..closing import Closing
from ..fileio import temporary_beside, write_bytes_atomic
from ..model import ExplainOptions
from .faults import deferred_signals, writing
from .grid import TileGrid
from .mosaic import Mosaic
from .raster import require_rasterio
from .tiler import SceneTiler, TileRow

ProbabilityFormat = Literal["float32", "uint8", "none"]
PROBABILITY_FORMATS: tuple[ProbabilityFormat, ...] = ("float32", "uint8", "none")
RASTER_SUFFIXES = (".tif", ".tiff")
CLASS_NODATA = 255
UINT8_SCALE = 254
#: Distinct colours for the first classes (then evenly spaced hues).
PALETTE = [
    (31, 119, 180), (44, 160, 44), (214, 39, 40), (255, 127, 14), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
]  # fmt: skip


def check_raster_path(path: str | os.PathLike[str]) -> Path:
    """``path`` if its extension names a GeoTIFF, else ValueError in one line."""
    target = Path(path)
    if target.suffix.lower() not in RASTER_SUFFIXES:
        raise ValueError(
            f"{target}: outputs are GeoTIFFs; name them .tif or .tiff, not {target.suffix or '(none)'}"
        )
    return target


@dataclass(frozen=True)
class OutputSet:
    """The files one scene produces, named from its class map ``NAME.tif``."""

    classes: Path
    probabilities: Path
    heatmap: Path
    summary: Path

    def rasters(self) -> tuple[Path, Path, Path]:
        return self.classes, self.probabilities, self.heatmap

    @classmethod
    def beside(cls, classes: str | os.PathLike[str]) -> OutputSet:
        target = check_raster_path(classes)
        stem, suffix = target.with_suffix(""), target.suffix
        return cls(
            target,
            Path(f"{stem}.probs{suffix}"),
            Path(f"{stem}.cam{suffix}"),
            Path(f"{stem}.json"),
        )


def class_colours(count: int) -> dict[int, tuple[int, int, int, int]]:
    """A colour table: a distinct colour per class, nodata transparent."""
    table: dict[int, tuple[int, int, int, int]] = {}
    for i in range(count):
        if i < len(PALETTE):
            table[i] = (*PALETTE[i], 255)
        else:
            r, g, b = colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.65, 0.9)
            table[i] = (round(r * 255), round(g * 255), round(b * 255), 255)
    table[CLASS_NODATA] = (0, 0, 0, 0)
    return table


def category_sidecar(names: Sequence[str], colours: dict[int, tuple[int, int, int, int]]) -> str:
    """GDAL's PAM sidecar (``.aux.xml``) for band 1: category names and a thematic raster
    attribute table (value, class, colour), which QGIS shows as the legend."""
    fields = [("Value", 0, 5), ("Class", 2, 2), ("Red", 0, 6), ("Green", 0, 7), ("Blue", 0, 8)]
    lines = ["<PAMDataset>", '  <PAMRasterBand band="1">', "    <CategoryNames>"]
    lines += [f"      <Category>{escape(n)}</Category>" for n in names]
    lines += ["    </CategoryNames>", '    <GDALRasterAttributeTable tableType="thematic">']
    for i, (name, kind, usage) in enumerate(fields):
        lines.append(
            f'      <FieldDefn index="{i}"><Name>{name}</Name><Type>{kind}</Type>'
            f"<Usage>{usage}</Usage></FieldDefn>"
        )
    for i, name in enumerate(names):
        r, g, b, _ = colours[i]
        cells = "".join(f"<F>{v}</F>" for v in (i, escape(name), r, g, b))
        lines.append(f'      <Row index="{i}">{cells}</Row>')
    lines += ["    </GDALRasterAttributeTable>", "  </PAMRasterBand>", "</PAMDataset>", ""]
    return "\n".join(lines)


class StagedRaster:
    """A GeoTIFF written under a temporary name beside ``target``; :meth:`finish` turns it
    into a COG (or keeps it as it is), :meth:`place` renames it; :meth:`discard` removes
    what exists."""

    def __init__(self, target: Path, profile: dict[str, Any], *, cog: bool, resampling: str):
        rio = require_rasterio()
        self.target = target
        self.cog = cog
        self.resampling = resampling
        self.sidecar: str | None = None
        self.temporaries = [temporary_beside(target)]
        try:
            with warnings.catch_warnings():  # a chip without a georeference is fine as it is
                warnings.simplefilter("ignore", rio.errors.NotGeoreferencedWarning)
                self.dataset = rio.open(self.temporaries[0], "w", driver="GTiff", **profile)
        except BaseException:
            self.temporaries[0].unlink(missing_ok=True)
            raise

    def finish(self) -> None:
        """Close the file and make its COG (the long part); nothing is renamed yet."""
        import rasterio.shutil

        self.dataset.close()
        if self.cog:
            with deferred_signals():  # a temporary file is never left unrecorded
                final = temporary_beside(self.target)
                self.temporaries.append(final)
            rasterio.shutil.copy(
                self.temporaries[0],
                final,
                driver="COG",
                COMPRESS="DEFLATE",
                BLOCKSIZE=256,
                RESAMPLING=self.resampling,
                BIGTIFF="IF_SAFER",
            )

    def place(self) -> None:
        """Rename the finished file (and write its sidecar) into place."""
        sidecar = Path(f"{self.target}.aux.xml")
        if self.sidecar is not None:
            write_bytes_atomic(sidecar, self.sidecar.encode("utf-8"))
        else:
            sidecar.unlink(missing_ok=True)
        os.replace(self.temporaries[-1], self.target)
        self.discard()

    def discard(self) -> None:
        if not self.dataset.closed:
            self.dataset.close()
        for path in self.temporaries:
            path.unlink(missing_ok=True)
            Path(f"{path}.aux.xml").unlink(missing_ok=True)


class SceneOutputs(Closing):
    """A scene's output rasters, open under temporary names: :meth:`add` writes each row of
    results, :meth:`finish` completes them, :meth:`place` puts every file and the summary in
    place; leaving the ``with`` block before that removes them."""

    def __init__(
        self,
        outputs: OutputSet,
        tiler: SceneTiler,
        *,
        probabilities: ProbabilityFormat = "float32",
        explain: ExplainOptions | None = None,
        cog: bool = True,
    ) -> None:
        grid, src, names = tiler.grid, tiler.dataset, tiler.model.class_names
        if len(names) >= CLASS_NODATA:
            raise ValueError(f"the class map holds at most {CLASS_NODATA - 1} classes")
        self.outputs = outputs
        self.format = probabilities
        self.staged: list[StagedRaster] = []
        self.probabilities: StagedRaster | None = None
        self.mosaic: Mosaic | None = None
        tags = {
            "classes": json.dumps(list(names)),
            "model": tiler.model.manifest.name,
            "tile": str(grid.tile),
            "stride": str(grid.stride),
            "min_valid": str(tiler.min_valid),
            "bands": ",".join(map(str, tiler.bands)),
            "source": os.path.basename(tiler.scene),
            # edge tiles reach past the scene; their outside pixels are filled (marked here)
            "edge_padding": f"right {grid.padded_width - grid.width} px, "
            f"bottom {grid.padded_height - grid.height} px",
        }
        try:
            # signals wait while files are created: each temporary file is recorded
            with deferred_signals():
                on_grid = {"crs": src.crs, "transform": grid.transform(src.transform)}
                self.classes = self._stage(
                    outputs.classes,
                    {**on_grid, **_grid_profile(grid, 1, "uint8"), "nodata": CLASS_NODATA},
                    cog,
                    "NEAREST",
                )
                colours = class_colours(len(names))
                self.classes.dataset.write_colormap(1, colours)
                self.classes.dataset.set_band_description(1, "class")
                self.classes.dataset.update_tags(**tags)
                self.classes.sidecar = category_sidecar(names, colours)
                if probabilities != "none":
                    uint8 = probabilities == "uint8"
                    profile = _grid_profile(grid, len(names) + 1, "uint8" if uint8 else "float32")
                    nodata = 255 if uint8 else float("nan")
                    self.probabilities = probs = self._stage(
                        outputs.probabilities,
                        {**on_grid, **profile, "nodata": nodata},
                        cog,
                        "AVERAGE",
                    )
                    for i, name in enumerate([*(f"p_{n}" for n in names), "valid_fraction"], 1):
                        probs.dataset.set_band_description(i, name)
                    if uint8:
                        probs.dataset.scales = (1 / UINT8_SCALE,) * (len(names) + 1)
                    probs.dataset.update_tags(**tags)
                if explain is not None:
                    cams = self._stage(outputs.heatmap, _mosaic_profile(grid, src), cog, "AVERAGE")
                    cams.dataset.set_band_description(
                        1, f"{explain.method} ({explain.target_space})"
                    )
                    target = "prediction" if explain.target is None else names[explain.target]
                    cams.dataset.update_tags(
                        method=explain.method,
                        target_space=explain.target_space,
                        target=target,
                        source=tags["source"],
                    )
                    self.mosaic = Mosaic(
                        cams.dataset, grid, tiler.model.manifest.features_shape[:2]
                    )
        except BaseException:
            self.close()
            raise

    def _stage(
        self, target: Path, profile: dict[str, Any], cog: bool, resampling: str
    ) -> StagedRaster:
        with writing(target):
            raster = StagedRaster(target, profile, cog=cog, resampling=resampling)
        self.staged.append(raster)
        return raster

    @property
    def written(self) -> dict[str, str | None]:
        """The output files by role (None: not written)."""
        return {
            "classes": self.outputs.classes.name,
            "probabilities": None
            if self.probabilities is None
            else self.outputs.probabilities.name,
            "heatmap": None if self.mosaic is None else self.outputs.heatmap.name,
        }

    def add(self, row: TileRow) -> None:
        with writing(self.classes.target):
            write_class_row(self.classes.dataset, row)
        if self.probabilities is not None:
            with writing(self.probabilities.target):
                write_probability_row(self.probabilities.dataset, row, self.format)
        if self.mosaic is not None:
            with writing(self.outputs.heatmap):
                self.mosaic.add(row)

    def finish(self) -> None:
        """Every file written whole under its temporary name (COGs made)."""
        if self.mosaic is not None:
            with writing(self.outputs.heatmap):
                self.mosaic.finish()
        for raster in self.staged:
            with writing(raster.target):
                raster.finish()

    def place(self, summary: bytes) -> None:
        """Rename every finished file into place, the summary (``summary``, written
        beside it first) last: all of them or, when one fails, none. Signals wait."""
        staged = temporary_beside(self.outputs.summary)
        try:
            with writing(self.outputs.summary), open(staged, "wb") as f:
                f.write(summary)
                f.flush()
                os.fsync(f.fileno())
            placed: list[Path] = []
            with deferred_signals():
                try:
                    for raster in self.staged:
                        with writing(raster.target):
                            raster.place()
                        placed.append(raster.target)
                    with writing(self.outputs.summary):
                        os.replace(staged, self.outputs.summary)
                except BaseException:
                    for path in placed:  # this run's files: none without the summary
                        path.unlink(missing_ok=True)
                        Path(f"{path}.aux.xml").unlink(missing_ok=True)
                    raise
        finally:
            staged.unlink(missing_ok=True)

    def close(self) -> None:
        """Stop the mosaic's writer and remove every temporary file (placed files stay);
        a signal meanwhile (a second Ctrl-C) waits until they are gone."""
        with deferred_signals():
            if self.mosaic is not None:
                self.mosaic.close()
            for raster in self.staged:
                raster.discard()


def _grid_profile(grid: TileGrid, count: int, dtype: str) -> dict[str, Any]:
    """A raster on the tile grid (georeferencing added by the caller), written a row at a
    time in one-row strips."""
    return {
        "width": grid.cols,
        "height": grid.rows,
        "count": count,
        "dtype": dtype,
        "compress": "deflate",
        "blockysize": 1,
    }


def _mosaic_profile(grid: TileGrid, src: Any) -> dict[str, Any]:
    """The CAM mosaic: the scene's size and georeferencing, float32, NaN nodata."""
    return {
        "width": grid.width,
        "height": grid.height,
        "count": 1,
        "dtype": "float32",
        "crs": src.crs,
        "transform": src.transform,
        "nodata": float("nan"),
        "compress": "deflate",
        "zlevel": 1,  # level 6 took longer than classifying the tiles
        "predictor": 2,
        # rows per strip divide the stride: each window written fills whole strips, so no
        # compressed strip is ever rewritten
        "blockysize": max(d for d in range(1, min(16, grid.stride) + 1) if grid.stride % d == 0),
        "BIGTIFF": "IF_SAFER",
    }


def write_class_row(dst: Any, row: TileRow) -> None:
    from rasterio.windows import Window

    values = np.where(row.classified, row.indices, CLASS_NODATA).astype(np.uint8)
    dst.write(values[None, None, :], window=Window(0, row.row, len(values), 1))


def write_probability_row(dst: Any, row: TileRow, fmt: ProbabilityFormat) -> None:
    from rasterio.windows import Window

    values = np.concatenate([row.probabilities.T, row.valid[None, :]])
    if fmt == "uint8":
        scaled = np.round(np.nan_to_num(values, nan=0.0) * UINT8_SCALE)
        values = np.where(np.isnan(values), 255, scaled).astype(np.uint8)
    dst.write(values[:, None, :], window=Window(0, row.row, values.shape[1], 1))
