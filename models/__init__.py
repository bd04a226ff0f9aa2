"""The shipped model bundles, one folder each (see ``scenecam_edge.registry``).

Every folder here is in the source repository; the wheel carries all but those named in
:data:`REPOSITORY_ONLY`, which pyproject.toml's ``exclude-package-data`` leaves out to keep
the default install within its size budget (docs/install.md). Those load by path from a
clone: ``--model models/NAME``.
"""

#: Bundles that stay in the source repository and are not installed with the package.
REPOSITORY_ONLY: tuple[str, ...] = ("mnist-tutorial",)
