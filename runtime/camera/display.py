"""Showing frames: the text drawn on every annotated frame, and the OpenCV window."""

from __future__ import annotations

import os
import sys
from typing import Protocol

import cv2
import numpy as np

#: Keys the window understands (``cv2.waitKey`` codes, low byte).
KEY_HEATMAP, KEY_METHOD, KEY_SNAPSHOT = ord("h"), ord("m"), ord("s")
KEY_QUIT, KEY_ESC = ord("q"), 27


class Display(Protocol):
    """Where the annotated frames are shown. ``show`` and ``poll`` (called while no frame
    is due, so the window stays responsive) return the key pressed, -1 for none."""

    def show(self, image: np.ndarray) -> int: ...
    def poll(self) -> int: ...
    def close(self) -> None: ...


class Window:
    """An OpenCV window. Closing it with the mouse counts as ``q``."""

    def __init__(self, title: str = "scenecam-edge") -> None:
        self.title = title
        self._sized = False
        cv2.namedWindow(title, cv2.WINDOW_NORMAL | cv2.WINDOW_KEEPRATIO | cv2.WINDOW_GUI_NORMAL)

    def show(self, image: np.ndarray) -> int:
        if not self._sized:
            cv2.resizeWindow(self.title, image.shape[1], image.shape[0])
            self._sized = True
        cv2.imshow(self.title, image)
        return self.poll()

    def poll(self) -> int:
        key = cv2.waitKey(1)
        if key == -1:
            closed = cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1
            return KEY_QUIT if closed else -1
        return key & 0xFF

    def close(self) -> None:
        cv2.destroyWindow(self.title)
        cv2.waitKey(1)  # let the GUI thread process the close


def display_available() -> bool:
    """Whether a window can be opened (on Linux: an X11 or Wayland display is set)."""
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


class Annotator:
    """Draws on a BGR frame in place: a dark bar at the top with ``left`` (the label and
    confidence) and ``right`` (method and fps), and an optional note in a bar at the bottom.
    The layout is computed once per frame width."""

    FONT = cv2.FONT_HERSHEY_SIMPLEX

    def __init__(self) -> None:
        self._width = -1
        self._scale, self._thickness, self._pad, self._bar, self._baseline = 0.5, 1, 4, 20, 14

    def draw(self, image: np.ndarray, left: str, right: str, note: str = "") -> None:
        h, w = image.shape[:2]
        if w != self._width:
            self._layout(w)
        bar = min(self._bar, h)
        cv2.rectangle(image, (0, 0), (w - 1, bar - 1), (0, 0, 0), thickness=-1)
        self._text(image, left, self._pad, self._baseline)
        (rw, _), _ = cv2.getTextSize(right, self.FONT, self._scale, self._thickness)
        self._text(image, right, max(self._pad, w - self._pad - rw), self._baseline)
        if note:
            cv2.rectangle(image, (0, h - bar), (w - 1, h - 1), (0, 0, 0), thickness=-1)
            self._text(image, note, self._pad, h - bar + self._baseline)

    def _layout(self, width: int) -> None:
        self._width = width
        self._scale = min(1.2, max(0.4, width / 1100))
        self._thickness = 1 if self._scale < 0.9 else 2
        (_, th), base = cv2.getTextSize("Ag", self.FONT, self._scale, self._thickness)
        self._pad = max(4, th // 2)
        self._bar = th + base + 2 * self._pad
        self._baseline = self._pad + th

    def _text(self, image: np.ndarray, text: str, x: int, y: int) -> None:
        cv2.putText(
            image,
            text,
            (x, y),
            self.FONT,
            self._scale,
            (255, 255, 255),
            self._thickness,
            cv2.LINE_AA,
        )
