"""The one ``with`` protocol of the runtime's objects that hold something open (a raster, a
scene's readers and writers, a frame source, the live view): ``with`` gives the object and
calls its ``close()`` on the way out, however the block ends."""

from __future__ import annotations

from typing import Self


class Closing:
    """Mixin for a class with ``close()``: ``with obj:`` closes ``obj`` at the end."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
