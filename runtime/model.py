"""``SceneCam``: a loaded bundle that classifies images and explains its answers."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, overload

import numpy as np

from . import visual
from .bands import model_stretch, rgb_bands
from .bundle import (
    FEATURES,
    LOGITS,
    Manifest,
    check_external_data,
    read_manifest,
    verify_files,
)
from .cam import (
    DEFAULT_MAX_CHANNELS,
    CamInputs,
    TargetSpace,
    get_method,
    softmax,
)
from .errors import ImageError
from .fileio import not_regular_reason
from .head import Head
from .heads import LayerHeads, build_head
from .images import DEFAULT_MAX_PIXELS, ImageInput, describe, load_image, resize_to
from .layers import ExplainedLayer
from .options import ExplainOptions, class_index, explain_options, find_layer
from .registry import resolve_model
from .results import Classification, Explanation
from .selfcheck import SELF_CHECK_TOLERANCE as SELF_CHECK_TOLERANCE
from .selfcheck import check_graph
from .session import SessionConfig, create_session
from .stream import DEFAULT_BATCH, classify_stream

log = logging.getLogger(__name__)


class SceneCam:
    """A classifier bundle loaded for serving. Thread-safe once loaded.

    >>> cam = SceneCam.load()                      # the shipped default model
    >>> cam.classify("photo.jpg").label
    >>> cam.explain("photo.jpg", target="forest").overlay
    """

    def __init__(
        self,
        path: Path,
        manifest: Manifest,
        head: Head,
        config: SessionConfig,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        tta: bool = False,
    ) -> None:
        self.path = path
        self.manifest = manifest
        self.head = head  # the default layer's
        self.config = config
        self.max_pixels = max_pixels
        self.band_stretch = model_stretch(manifest)  # trained on raster chips: their stretch
        self.rgb_bands = rgb_bands(manifest)  # the channels an overlay shows as red, green, blue
        self.tta = tta
        self._session = create_session(path / "model.onnx", config)
        check_graph(path, self._session, manifest, head)
        #: Every explained layer's head by name; the extra ones built on first use.
        self.heads = LayerHeads(path, manifest, config, head, lambda: self._session)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        threads: int | None = None,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        spin: bool = True,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        tta: bool = False,
    ) -> SceneCam:
        """Load a bundle (a folder, or a shipped model's name; ``None`` for the default).

        The manifest is validated, every file's sha256 checked, the head's arrays read without
        pickle, and the head self-checked against the graph on a probe input. A bundle that
        fails any of these raises :class:`BundleError` saying what is wrong.

        ``max_pixels`` refuses images that declare more pixels, before decoding them.
        ``tta``: test-time flip. Each image also goes through mirrored left to right; the
        answer is the mean of the two logits, and a map is the mean of the two maps (the
        mirrored one mirrored back), each explaining that answer's class. Twice the work for
        0.1-0.5 points of accuracy on the shipped models (docs/models.md), so off by default.
        """
        bundle_dir = resolve_model(path)
        manifest = read_manifest(bundle_dir)
        verify_files(bundle_dir, manifest)
        check_external_data(bundle_dir, manifest)
        config = SessionConfig(threads=threads, providers=tuple(providers), spin=spin)
        head = build_head(bundle_dir, manifest, manifest.default_layer, config)
        return cls(bundle_dir, manifest, head, config, max_pixels, tta)

    # -- facts about the model -------------------------------------------------------------

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.manifest.class_names

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) the graph takes."""
        return self.manifest.input.height, self.manifest.input.width

    @property
    def layers(self) -> tuple[ExplainedLayer, ...]:
        """The layers this model explains, the default first (``explain(..., layer=name)``)."""
        return self.manifest.layers

    def __repr__(self) -> str:
        return f"SceneCam({self.manifest.name!r}, classes={list(self.class_names)})"

    # -- the pipeline ------------------------------------------------------------------------

    def load_image(self, image: ImageInput) -> np.ndarray:
        """Decode one input to uint8 (H, W, C) at its own size, with this model's channels.

        A path to a FIFO, a device or a socket is refused by type before it is opened."""
        if isinstance(image, str | os.PathLike) and (reason := not_regular_reason(image)):
            raise ImageError(describe(image), reason)
        channels, stretch = self.manifest.input.channels, self.band_stretch
        return load_image(image, channels=channels, max_pixels=self.max_pixels, stretch=stretch)

    def to_input(self, image: np.ndarray) -> np.ndarray:
        """A decoded image resized to the graph's input (H, W, C)."""
        return resize_to(image, *self.input_size)

    def forward(self, batch: np.ndarray, layer: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Run the graph on uint8 (N, H, W, C): returns (features, logits), both float32;
        the features are ``layer``'s activations (default: the default layer's)."""
        output = FEATURES if layer is None else find_layer(self.layers, layer).output
        features, logits = self._session.run([output, LOGITS], {"image": batch})
        return features, logits

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """The answers' logits for uint8 (N, H, W, C) at the graph's size: the graph's, or
        with ``tta`` the mean of the image's and its mirror's."""
        return self._run(batch, None)[3]

    def _run(
        self, batch: np.ndarray, layer: str | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(the batch run, its features, its logits, the answers' logits): with ``tta`` the
        mirrored images follow the originals in one run, and the answers' logits are the
        mean of each pair."""
        n = len(batch)
        if self.tta:
            batch = np.concatenate([batch, batch[:, :, ::-1]])
        features, logits = self.forward(batch, layer)
        return batch, features, logits, (logits[:n] + logits[n:]) / 2 if self.tta else logits

    @overload
    def classify(self, images: ImageInput, *, top_k: int = 3) -> Classification: ...
    @overload
    def classify(self, images: list[ImageInput], *, top_k: int = 3) -> list[Classification]: ...

    def classify(
        self, images: ImageInput | list[ImageInput], *, top_k: int = 3
    ) -> Classification | list[Classification]:
        """Classify one image (a path, PIL image or uint8 array) or a list of them.

        Raises :class:`ImageError` for an input that cannot be read.
        """
        items, single = _as_list(images)
        results: list[Classification] = self._decode_and_predict(items, top_k, None)
        return results[0] if single else results

    @overload
    def explain(
        self,
        images: ImageInput,
        target: int | str | None = None,
        method: str = "gradcam",
        target_space: TargetSpace = "logit",
        *,
        alpha: float = visual.DEFAULT_ALPHA,
        top_k: int = 3,
        max_channels: int = DEFAULT_MAX_CHANNELS,
        layer: str | None = None,
    ) -> Explanation: ...
    @overload
    def explain(
        self,
        images: list[ImageInput],
        target: int | str | None = None,
        method: str = "gradcam",
        target_space: TargetSpace = "logit",
        *,
        alpha: float = visual.DEFAULT_ALPHA,
        top_k: int = 3,
        max_channels: int = DEFAULT_MAX_CHANNELS,
        layer: str | None = None,
    ) -> list[Explanation]: ...

    def explain(
        self,
        images: ImageInput | list[ImageInput],
        target: int | str | None = None,
        method: str = "gradcam",
        target_space: TargetSpace = "logit",
        *,
        alpha: float = visual.DEFAULT_ALPHA,
        top_k: int = 3,
        max_channels: int = DEFAULT_MAX_CHANNELS,
        layer: str | None = None,
    ) -> Explanation | list[Explanation]:
        """Classify and explain: a CAM for ``target`` (index or name; default the prediction).

        ``target_space`` is ``"logit"`` (explain z_c) or ``"probability"`` (explain p_c).
        ``method`` is any name in :data:`scenecam_edge.METHODS`; ``max_channels`` caps the
        channels Score-CAM masks the image with (one extra forward pass each). ``layer``
        names the layer to explain (one of :attr:`layers`; default the bundle's default).
        """
        options = self.explain_options(target, method, target_space, alpha, max_channels, layer)
        items, single = _as_list(images)
        results: list[Explanation] = self._decode_and_predict(items, top_k, options)
        return results[0] if single else results

    def _decode_and_predict(
        self, items: list[ImageInput], top_k: int, explain: ExplainOptions | None
    ) -> list[Any]:
        """Decode and predict in chunks of DEFAULT_BATCH, so memory stays bounded."""
        results: list[Any] = []
        for chunk in _chunks(items, DEFAULT_BATCH):
            decoded = [self.load_image(item) for item in chunk]
            names = [describe(i) for i in chunk]
            results.extend(self.predict(decoded, names, top_k=top_k, explain=explain))  # type: ignore[call-overload]
        return results

    def explain_options(
        self,
        target: int | str | None = None,
        method: str = "gradcam",
        target_space: TargetSpace = "logit",
        alpha: float = visual.DEFAULT_ALPHA,
        max_channels: int = DEFAULT_MAX_CHANNELS,
        layer: str | None = None,
    ) -> ExplainOptions:
        """Validated explanation settings (ValueError naming what is wrong; an unknown
        ``layer`` gives :class:`~scenecam_edge.options.UnknownLayerError`). A named layer's
        head is opened and self-checked here, so a broken one raises BundleError now."""
        options = explain_options(
            self.class_names, self.layers, target, method, target_space, alpha, max_channels,
            layer,
        )  # fmt: skip
        if options.layer is not None:
            self.heads[options.layer]  # opens and self-checks the layer's head now
        return options

    @overload
    def predict(
        self,
        decoded: Sequence[np.ndarray],
        sources: Sequence[str],
        *,
        top_k: int = 3,
        explain: None = None,
    ) -> list[Classification]: ...
    @overload
    def predict(
        self,
        decoded: Sequence[np.ndarray],
        sources: Sequence[str],
        *,
        top_k: int = 3,
        explain: ExplainOptions,
    ) -> list[Explanation]: ...

    def predict(
        self,
        decoded: Sequence[np.ndarray],
        sources: Sequence[str],
        *,
        top_k: int = 3,
        explain: ExplainOptions | None = None,
    ) -> list[Classification] | list[Explanation]:
        """One forward pass over already decoded images (any size; resized here).

        This is the step every entry point shares; ``sources`` names each image in its result.
        Returns explanations when ``explain`` is given, else classifications.
        """
        if not decoded:
            return []
        n = len(decoded)
        batch = np.stack([self.to_input(d) for d in decoded])
        layer = explain.layer if explain is not None else None
        batch, features, branch_logits, logits = self._run(batch, layer)
        probs = softmax(logits.astype(np.float64))
        bases = [
            self._classification(src, z, p, top_k)
            for src, z, p in zip(sources, logits, probs, strict=True)
        ]
        if explain is None:
            return bases
        targets = np.full(n, explain.target) if explain.target is not None else probs.argmax(axis=1)
        inputs = CamInputs(
            features,
            self.heads[layer or self.manifest.conv_layer],
            branch_logits,
            np.concatenate([targets, targets]) if self.tta else targets,
            explain.target_space,
            inputs=batch,
            forward=lambda images: self.forward(images)[1],
            max_channels=explain.max_channels,
        )
        if not self.tta:
            inputs.probabilities = probs  # already computed above: spare the cached property
        cams = get_method(explain.method).compute(inputs)
        if self.tta:
            cams = (cams[:n] + cams[n:, :, ::-1]) / 2
        results: list[Explanation] = []
        for base, img, t, cam in zip(bases, decoded, targets, cams, strict=True):
            results.append(
                Explanation(
                    **{f: getattr(base, f) for f in _CLASSIFICATION_FIELDS},
                    target_index=int(t),
                    target_label=self.class_names[int(t)],
                    target_space=explain.target_space,
                    method=explain.method,
                    cam=cam,
                    image=img,
                    alpha=explain.alpha,
                    rgb_bands=self.rgb_bands,
                )
            )
        return results

    def classify_batch(
        self,
        images: Sequence[ImageInput] | Iterator[ImageInput],
        batch_size: int = DEFAULT_BATCH,
        explain: bool | ExplainOptions = False,
        workers: int | None = None,
        *,
        top_k: int = 3,
    ) -> Iterator[Classification | Exception]:
        """Classify a stream of images (any length) in bounded memory; yields in input order.

        Each item gives a :class:`Classification` (an :class:`Explanation` when ``explain`` is
        true or an :class:`ExplainOptions`), or, for an input that cannot be read, the
        :class:`~scenecam_edge.errors.ImageError` naming it and the reason: yielded, not
        raised, so one bad file does not end the batch. ``workers`` threads (default a few;
        0: none) decode ahead of inference, which runs ``batch_size`` images at a time. Safe
        to call from many threads at once on one model. See :mod:`scenecam_edge.stream`.
        """
        options = explain if isinstance(explain, ExplainOptions) else None
        if explain is True:
            options = self.explain_options()
        return classify_stream(
            self, images, batch_size=batch_size, explain=options, workers=workers, top_k=top_k
        )

    def class_index(self, target: int | str) -> int:
        """A class index from an index or a class name; ValueError when it is neither."""
        return class_index(self.class_names, target)

    # -- internals ---------------------------------------------------------------------------

    def _classification(
        self, source: str, logits: np.ndarray, probs: np.ndarray, top_k: int
    ) -> Classification:
        order = np.argsort(-probs, kind="stable")
        names = self.class_names
        return Classification(
            source=source,
            index=int(order[0]),
            label=names[int(order[0])],
            probabilities={names[i]: float(probs[i]) for i in range(len(names))},
            top_k=[(names[int(i)], float(probs[i])) for i in order[: max(1, top_k)]],
            logits=logits,
        )


_CLASSIFICATION_FIELDS = ("source", "index", "label", "probabilities", "top_k", "logits")


def _as_list(images: ImageInput | list[ImageInput]) -> tuple[list[ImageInput], bool]:
    """The inputs as a list, and whether a single image was given."""
    if isinstance(images, list):
        return images, False
    return [images], True


def _chunks(items: list[ImageInput], size: int) -> Iterator[list[ImageInput]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
