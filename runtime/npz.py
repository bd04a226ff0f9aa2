"""Reading the head's arrays from an ``.npz`` within limits, without pickle.

Only the arrays the manifest's head names are read. For each one the zip entry's declared
size and the ``.npy`` header (dtype, shape) are checked before any data is decompressed: a
header declaring 2^55 elements, an entry larger than :data:`MAX_ARRAY_BYTES`, object arrays
(pickle) and data that does not fill its declared shape are refused. Other entries (a zip
bomb of zeros, say) are never opened.
"""

from __future__ import annotations

import math
import zipfile
import zlib
from collections.abc import Iterable
from typing import IO

import numpy as np

from .errors import BundleError

#: The most bytes one head array may hold (a 2048 x 1000 float64 kernel is 16 MB).
MAX_ARRAY_BYTES = 512 * 1024 * 1024
#: The most entries a head archive may list.
MAX_ENTRIES = 10_000

_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError)


def read_named_arrays(
    fileobj: IO[bytes], names: Iterable[str], where: str, fname: str
) -> dict[str, np.ndarray]:
    """The arrays called ``names`` in the archive (missing ones are left out: the head says
    which it lacks); raise :class:`BundleError` naming ``fname`` and the reason otherwise."""
    try:
        with zipfile.ZipFile(fileobj) as archive:
            if len(archive.infolist()) > MAX_ENTRIES:
                raise BundleError(where, f"{fname} lists more than {MAX_ENTRIES} entries")
            found = {info.filename: info for info in archive.infolist()}
            arrays = {}
            for name in sorted(set(names)):
                info = found.get(f"{name}.npy")
                if info is not None:
                    arrays[name] = _read_entry(archive, info, name, where, fname)
            return arrays
    except BundleError:
        raise
    except (*_ZIP_ERRORS, ValueError) as exc:
        raise BundleError(where, f"{fname} is not a valid .npz ({exc})") from None


def _read_entry(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, where: str, fname: str
) -> np.ndarray:
    what = f"{fname}: array {name!r}"
    if info.file_size > MAX_ARRAY_BYTES:
        raise BundleError(
            where,
            f"{what} declares {info.file_size} bytes uncompressed, over the limit of "
            f"{MAX_ARRAY_BYTES}",
        )
    with archive.open(info) as fh:
        try:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        except ValueError as exc:
            raise BundleError(where, f"{what} has no valid .npy header ({exc})") from None
        if dtype.hasobject:
            raise BundleError(where, f"{what} cannot be read without pickle (object array)")
        count = math.prod(shape)  # Python ints: 2^55 does not overflow
        size = count * dtype.itemsize
        if size > MAX_ARRAY_BYTES:
            raise BundleError(
                where,
                f"{what} declares shape {tuple(shape)} ({size} bytes), over the limit of "
                f"{MAX_ARRAY_BYTES}",
            )
        data = fh.read(size + 1)
        if len(data) != size:
            raise BundleError(
                where,
                f"{what} declares shape {tuple(shape)} ({size} bytes) but holds {len(data)}",
            )
    array = np.frombuffer(data, dtype=dtype, count=count)
    return array.reshape(shape, order="F" if fortran else "C")
