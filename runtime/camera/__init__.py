"""The camera loop: frames from OpenCV, through the model, to an annotated picture.

    source (file | camera | stream) --> SceneCam.predict --> overlay, label, fps --> window,
                                                 video file, JSON lines, live view (HTTP)

Two kinds of source. A video *file* is read in order in the caller's thread and every frame
is processed, so an annotated copy has exactly the input's frames. A *live* source (a camera
or a network stream) is read by a capture thread that keeps only the newest frame: when the
model is slower than the source, stale frames are dropped instead of piling up as lag. A
network stream that drops is reopened with capped exponential backoff.

The package needs OpenCV (the ``camera`` extra). Its modules, one responsibility each:

- :mod:`.sources`: the file reader, the live reader and its reconnects;
- :mod:`.capture`: a ``--source`` argument classified and opened;
- :mod:`.display`: the text on the frames and the OpenCV window;
- :mod:`.outputs`: the annotated video and the JSON lines, checked and atomic;
- :mod:`.loop`: the per-frame work, keys, snapshots, the summary;
- :mod:`.serve`: the live view over HTTP (MJPEG stream, latest result, a page);
- :mod:`.gate`: its front door (request heads under a deadline, bounded slots, ``Host``);
- :mod:`.page`: the page it serves.
"""

from __future__ import annotations

from .capture import SourceSpec, open_capture, open_source, parse_source
from .display import (
    KEY_ESC,
    KEY_HEATMAP,
    KEY_METHOD,
    KEY_QUIT,
    KEY_SNAPSHOT,
    Annotator,
    Display,
    Window,
    display_available,
)
from .loop import CameraLoop, CameraSettings, CameraSummary, FrameReport, run_camera
from .outputs import VIDEO_CODECS, OutputError, video_fourcc
from .serve import LiveView, parse_address
from .sources import Capture, FileSource, Frame, FrameSource, LiveSource, Reconnect

__all__ = [
    "KEY_ESC",
    "KEY_HEATMAP",
    "KEY_METHOD",
    "KEY_QUIT",
    "KEY_SNAPSHOT",
    "VIDEO_CODECS",
    "Annotator",
    "CameraLoop",
    "CameraSettings",
    "CameraSummary",
    "Capture",
    "Display",
    "FileSource",
    "Frame",
    "FrameReport",
    "FrameSource",
    "LiveSource",
    "LiveView",
    "OutputError",
    "Reconnect",
    "SourceSpec",
    "Window",
    "display_available",
    "open_capture",
    "open_source",
    "parse_address",
    "parse_source",
    "run_camera",
    "video_fourcc",
]
