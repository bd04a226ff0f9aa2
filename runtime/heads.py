"""The heads of a bundle's explained layers, the default one at load and the others on first use.

An extra layer's head is usually a VJP graph (ResNet-18's stage 4 as an onnxruntime session):
opening it and self-checking it on the probe images took about a second on the default
model, which every command would pay at start-up whether it asks for the layer or not. So
the default head is built and self-checked at load, and each extra one when it is first
asked for (``SceneCam.explain_options(layer=...)`` asks at once, so a command that names a
broken layer fails before it starts), under a lock. Its files were checksummed at load with
the rest of the bundle.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from onnxruntime import InferenceSession

from .bundle import Manifest, load_head_arrays
from .errors import BundleError
from .head import Head
from .layers import ExplainedLayer
from .options import find_layer
from .selfcheck import check_layer
from .session import SessionConfig, create_session


def build_head(
    bundle_dir: Path, manifest: Manifest, layer: ExplainedLayer, config: SessionConfig
) -> Head:
    """One layer's head from its manifest entry and arrays; BundleError when it is wrong."""
    head = Head.from_manifest(
        layer.head_layers,
        load_head_arrays(bundle_dir, manifest, layer),
        layer.shape,
        str(bundle_dir),
        open_graph=lambda name: create_session(bundle_dir / name, config, fold_weights=True),
    )
    if head.num_classes != manifest.num_classes:
        whose = "head" if layer.name == manifest.conv_layer else f"head of {layer.name!r}"
        raise BundleError(
            bundle_dir,
            f"{whose} gives {head.num_classes} classes, manifest names {manifest.num_classes}",
        )
    return head


class LayerHeads:
    """``heads[name]``: the head of an explained layer, built and self-checked on first use."""

    def __init__(
        self,
        bundle_dir: Path,
        manifest: Manifest,
        config: SessionConfig,
        default: Head,
        session: Callable[[], InferenceSession],
    ) -> None:
        self._dir = bundle_dir
        self._manifest = manifest
        self._config = config
        self._session = session
        self._heads = {manifest.conv_layer: default}
        self._lock = threading.Lock()

    def __contains__(self, name: object) -> bool:
        return any(layer.name == name for layer in self._manifest.layers)

    def __getitem__(self, name: str) -> Head:
        head = self._heads.get(name)
        if head is not None:
            return head
        layer = find_layer(self._manifest.layers, name)
        with self._lock:
            head = self._heads.get(name)
            if head is None:
                head = build_head(self._dir, self._manifest, layer, self._config)
                check_layer(self._dir, self._session(), self._manifest, layer, head)
                self._heads[name] = head
        return head
