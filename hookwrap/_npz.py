"""Reading ``.npz`` files from outside safely: no pickle, bounded memory, no hang.

``numpy.load`` with ``allow_pickle=False`` never unpickles, but it trusts the sizes a
file declares and opens any path (a FIFO blocks it forever). :func:`read_npz` opens only
regular files without blocking, checks every member's declared array size against the
member's size in the archive before reading it, and caps the total. numpy only.
"""

from __future__ import annotations

import os
import zipfile
from typing import Any

from ._fs import file_errors, open_regular
from .errors import HookwrapError, InvalidArgumentError

__all__ = ["read_npz", "MAX_NPZ_BYTES", "MAX_NPZ_MEMBERS"]

MAX_NPZ_BYTES = 16 << 30  # decompressed, all arrays together
MAX_NPZ_MEMBERS = 100_000


def read_npz(path: str | os.PathLike[str], *, what: str = ".npz file",
             error: type[HookwrapError] = InvalidArgumentError) -> dict[str, Any]:
    """Every array of an ``.npz``, by name (without ``.npy``), in archive order.

    Raises:
        ``error``: the file cannot be opened, is not a regular file or not an ``.npz``, holds
            an object array (pickle), declares an array larger than what the archive holds
            for it, or holds more than :data:`MAX_NPZ_BYTES` bytes of arrays.
    """
    import numpy as np
    from numpy.lib import format as npformat

    name = f"{what} {os.path.basename(os.fspath(path)) if isinstance(path, (str, os.PathLike)) else path!r}"
    with open_regular(path, what=what, error=error) as fh, file_errors(path, f"read the {what}", error):
        try:
            archive = zipfile.ZipFile(fh)
        except (zipfile.BadZipFile, EOFError) as exc:
            raise error(f"{name}: not a readable .npz (a zip of .npy files): {exc}") from None
        with archive:
            members = archive.infolist()
            if len(members) > MAX_NPZ_MEMBERS:
                raise error(f"{name}: holds {len(members)} entries, more than {MAX_NPZ_MEMBERS}")
            total = 0
            out: dict[str, Any] = {}
            for info in members:
                if not info.filename.endswith(".npy") or info.is_dir():
                    raise error(f"{name}: entry {info.filename!r} is not a .npy array")
                key = info.filename[: -len(".npy")]
                try:
                    with archive.open(info) as member:
                        version = npformat.read_magic(member)
                        if version == (1, 0):
                            shape, fortran, dtype = npformat.read_array_header_1_0(member)
                        elif version == (2, 0):
                            shape, fortran, dtype = npformat.read_array_header_2_0(member)
                        else:
                            raise error(f"{name}: entry {key!r} uses .npy format {version}, which is not read")
                        if dtype.hasobject:
                            raise error(f"{name}: entry {key!r} is an object array, which would need pickle")
                        count = 1
                        for s in shape:
                            count *= s
                        nbytes = count * dtype.itemsize
                        if nbytes != info.file_size - member.tell():
                            raise error(f"{name}: entry {key!r} declares {dtype}{list(shape)} ({nbytes} bytes) but "
                                        f"holds {info.file_size - member.tell()} bytes of data")
                        total += nbytes
                        if total > MAX_NPZ_BYTES:
                            raise error(f"{name}: its arrays hold more than {MAX_NPZ_BYTES >> 30} GiB")
                        data = member.read(nbytes)
                except HookwrapError:
                    raise
                except (ValueError, zipfile.BadZipFile, EOFError, NotImplementedError, OverflowError) as exc:
                    raise error(f"{name}: entry {key!r} cannot be read ({type(exc).__name__}: {exc})") from None
                if len(data) != nbytes:
                    raise error(f"{name}: entry {key!r} is truncated")
                array = np.frombuffer(data, dtype=dtype)
                out[key] = (array.reshape(shape[::-1]).T if fortran else array.reshape(shape)).copy()
            return out
