"""The shipped model bundles, one folder each (see ``scenecam_edge.registry``).

Every folder here is in the source repository; the wheel carries all but those named in
:data:`REPOSITORY_ONLY`, which pyproject.toml's ``exclude-package-data`` leaves out to keep
the default install within its size budget (docs/install.md). Those load by path from a
clone: ``--model models/NAME``.
"""

#: Bundles that stay in the source repository and are not installed with the package.
#: The float ResNet-18 (43 MB) is the default's source; the default is its int8 twin. The
#: float EfficientNet-Lite0 (33 MB with its stride-16 VJP graph) likewise: its int8 twin ships.
REPOSITORY_ONLY: tuple[str, ...] = ("scenes-resnet18", "scenes-lite0")
