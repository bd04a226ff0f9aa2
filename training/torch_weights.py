"""Read a PyTorch state dict saved in the legacy (non-zip) format, without PyTorch and
without running any code the file might carry.

A legacy ``.pth`` file is five pickles in a row (a magic number, the protocol version, a
dict of system facts, the object itself, the list of storage keys) followed by each
storage's raw bytes: an int64 element count, then the elements. The object pickle names
tensors through ``torch._utils._rebuild_tensor_v2`` and storages through persistent ids.

Plain ``pickle.load`` would import and call whatever global the file names, so a crafted
file runs code. :class:`_RestrictedUnpickler` admits only the few globals this format needs
(an ``OrderedDict``, the tensor rebuild function, typed storage classes) and refuses any
other with :class:`UnsafeCheckpointError`; the "tensors" it builds are plain records that
this module fills with numpy arrays from the storages' bytes, checked against the file's
size before anything is allocated.
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: The legacy format's magic number and protocol version (torch/serialization.py).
MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

#: Typed storage classes of the legacy format and their numpy dtypes (little-endian).
STORAGE_DTYPES: dict[str, np.dtype[Any]] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class CheckpointError(ValueError):
    """The file is not a legacy PyTorch state dict this reader can use."""


class UnsafeCheckpointError(CheckpointError):
    """The pickle names a global outside the legacy format's few: it could run code."""


@dataclass(frozen=True)
class _StorageType:
    name: str


@dataclass
class _Storage:
    key: str
    dtype: np.dtype[Any]
    numel: int
    data: np.ndarray | None = None


@dataclass(frozen=True)
class _TensorRecord:
    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(
    storage: _Storage,
    offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    requires_grad: bool = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> _TensorRecord:
    """Stands in for ``torch._utils._rebuild_tensor_v2``: records where the tensor lives."""
    if not isinstance(storage, _Storage):
        raise CheckpointError("a tensor refers to something that is not a storage")
    ints = (offset, *size, *stride)
    if not all(isinstance(v, int) and v >= 0 for v in ints) or len(size) != len(stride):
        raise CheckpointError(f"a tensor has a malformed offset, size or stride: {ints}")
    return _TensorRecord(storage, offset, tuple(size), tuple(stride))


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BufferedIOBase, storages: dict[str, _Storage]) -> None:
        super().__init__(file)
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise UnsafeCheckpointError(
            f"the pickle names the global {module}.{name}, which a state dict does not need "
            "(refused: loading it could run code)"
        )

    def persistent_load(self, pid: Any) -> _Storage:
        # ("storage", type, key, location, numel, view_metadata); views of storages were
        # never written by state dicts, and this reader refuses them.
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise CheckpointError(f"unknown persistent id {str(pid)[:80]}")
        _, storage_type, key, _location, numel, view = pid
        if view is not None:
            raise CheckpointError(f"storage {str(key)[:40]} is a view, which is not supported")
        if not isinstance(storage_type, _StorageType) or not isinstance(key, str):
            raise CheckpointError(f"malformed storage record {str(pid)[:80]}")
        if not isinstance(numel, int) or numel < 0:
            raise CheckpointError(f"storage {key} has a malformed size {numel!r}")
        if key not in self._storages:
            self._storages[key] = _Storage(key, STORAGE_DTYPES[storage_type.name], numel)
        return self._storages[key]


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """The named arrays of a legacy-format PyTorch state dict, as float32/int64 numpy arrays
    (C-contiguous copies). Raises :class:`CheckpointError` (or its subclass
    :class:`UnsafeCheckpointError`) naming what is wrong."""
    path = Path(path)
    raw = path.read_bytes()
    if zipfile.is_zipfile(io.BytesIO(raw)):
        raise CheckpointError(f"{path}: a zip-format checkpoint; only the legacy format is read")
    f = io.BytesIO(raw)
    storages: dict[str, _Storage] = {}

    def load() -> Any:
        try:
            return _RestrictedUnpickler(f, storages).load()
        except CheckpointError:
            raise
        except Exception as exc:  # any malformed pickle: EOF, bad opcode, wrong types
            raise CheckpointError(f"{path}: not a legacy PyTorch checkpoint ({exc})") from None

    if load() != MAGIC_NUMBER:
        raise CheckpointError(f"{path}: not a legacy PyTorch checkpoint (wrong magic number)")
    if load() != PROTOCOL_VERSION:
        raise CheckpointError(f"{path}: unsupported legacy protocol version")
    sys_info = load()
    if not isinstance(sys_info, dict) or not sys_info.get("little_endian", False):
        raise CheckpointError(f"{path}: only little-endian checkpoints are read")
    state = load()
    keys = load()
    if not isinstance(state, dict) or not isinstance(keys, list):
        raise CheckpointError(f"{path}: the pickled object is not a state dict")
    for key in keys:
        storage = storages.get(key) if isinstance(key, str) else None
        if storage is None:
            raise CheckpointError(f"{path}: storage {str(key)[:40]} is listed but never used")
        head = f.read(8)
        if len(head) != 8:
            raise CheckpointError(f"{path}: truncated before storage {key}")
        (numel,) = struct.unpack("<q", head)
        nbytes = numel * storage.dtype.itemsize
        if numel != storage.numel or f.tell() + nbytes > len(raw):
            raise CheckpointError(f"{path}: storage {key} holds less than it declares")
        start = f.tell()
        storage.data = np.frombuffer(raw, storage.dtype, count=numel, offset=start)
        f.seek(start + nbytes)
    return {name: _materialise(path, name, value) for name, value in state.items()}


def _materialise(path: Path, name: str, value: Any) -> np.ndarray:
    if not isinstance(value, _TensorRecord) or value.storage.data is None:
        raise CheckpointError(f"{path}: entry {name!r} is not a tensor with stored data")
    data = value.storage.data
    # The furthest element the view reaches must lie inside its storage.
    extent = value.offset + sum((n - 1) * s for n, s in zip(value.size, value.stride, strict=True))
    if 0 in value.size:
        return np.zeros(value.size, data.dtype)
    if extent >= len(data):
        raise CheckpointError(f"{path}: tensor {name!r} reaches past its storage")
    itemsize = data.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        data[value.offset :],
        shape=value.size,
        strides=tuple(s * itemsize for s in value.stride),
        writeable=False,
    )
    return np.ascontiguousarray(view)
