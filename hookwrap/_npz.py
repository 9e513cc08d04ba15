"""Reading ``.npz`` files from outside safely: no pickle, bounded memory, no hang.

``numpy.load`` with ``allow_pickle=False`` never unpickles, but it trusts the sizes a
file declares, reads every entry whole before anyone can look at it, and opens any path
(a FIFO blocks it forever). :class:`NpzReader` opens only regular files without
blocking, accepts only stored and deflated members (deflate cannot inflate more than
about 1,032 times; bzip2 and lzma can inflate a kilobyte to gigabytes), refuses a member
whose declared size is more than :data:`MAX_RATIO` times what the archive holds for it or
whose array header disagrees with it, caps the total, and streams each array into its
one buffer: an entry is read only when asked for, and held once. numpy only.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ._fs import file_errors, open_regular
from .errors import HookwrapError, InvalidArgumentError

__all__ = ["read_npz", "open_npz", "NpzReader", "MAX_NPZ_BYTES", "MAX_NPZ_MEMBERS", "MAX_RATIO"]

MAX_NPZ_BYTES = 16 << 30  # decompressed, all arrays together
MAX_NPZ_MEMBERS = 100_000
MAX_RATIO = 1100  # declared size over stored size: deflate's own limit is about 1,032
_CHUNK = 1 << 20


class NpzReader:
    """The members of an open ``.npz``, checked when it is opened; :meth:`read` streams one."""

    def __init__(self, archive: zipfile.ZipFile, name: str, error: type[HookwrapError]) -> None:
        self._archive, self.name, self._error = archive, name, error
        self._total = 0
        members = archive.infolist()
        if len(members) > MAX_NPZ_MEMBERS:
            raise error(f"{name}: holds {len(members)} entries, more than {MAX_NPZ_MEMBERS}")
        self._members: dict[str, zipfile.ZipInfo] = {}
        for info in members:
            if not info.filename.endswith(".npy") or info.is_dir():
                raise error(f"{name}: entry {info.filename!r} is not a .npy array")
            key = info.filename[: -len(".npy")]
            if key in self._members:
                raise error(f"{name}: entry {key!r} appears twice")
            if info.flag_bits & 0x1:
                raise error(f"{name}: entry {key!r} is encrypted")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise error(f"{name}: entry {key!r} is compressed with method {info.compress_type}; an .npz holds "
                            f"stored or deflated entries (numpy.savez, numpy.savez_compressed)")
            if info.file_size > MAX_RATIO * max(info.compress_size, 1) + 4096:
                raise error(f"{name}: entry {key!r} declares {info.file_size} bytes from {info.compress_size} "
                            f"stored, more than deflate can inflate")
            self._members[key] = info

    def names(self) -> list[str]:
        """The entries' names (without ``.npy``), in archive order."""
        return list(self._members)

    def size(self, key: str) -> int:
        """The declared (uncompressed) size of an entry, in bytes."""
        return self._members[key].file_size

    def header(self, key: str) -> tuple[tuple[int, ...], Any]:
        """``(shape, dtype)`` of an entry, from its ``.npy`` header alone (no data is read).

        Raises:
            the reader's error: the entry is missing or its header is damaged.
        """
        from numpy.lib import format as npformat

        info = self._members.get(key)
        if info is None:
            raise self._error(f"{self.name}: entry {key!r} is missing")
        try:
            with self._archive.open(info) as member:
                version = npformat.read_magic(member)
                read = {(1, 0): npformat.read_array_header_1_0, (2, 0): npformat.read_array_header_2_0}.get(version)
                if read is None:
                    raise self._error(f"{self.name}: entry {key!r} uses .npy format {version}, which is not read")
                shape, _, dtype = read(member)
        except HookwrapError:
            raise
        except (ValueError, zipfile.BadZipFile, EOFError, NotImplementedError, OverflowError, RuntimeError,
                zlib.error, OSError) as exc:
            raise self._error(f"{self.name}: entry {key!r} cannot be read ({type(exc).__name__}: {exc})") from None
        return tuple(shape), dtype

    def read(self, key: str) -> Any:
        """One array, read into a buffer of its own after its header has been checked
        against the entry's declared size and the total cap.

        Raises:
            the reader's error: the entry is missing, not a plain array, or damaged.
        """
        import numpy as np
        from numpy.lib import format as npformat

        info = self._members.get(key)
        if info is None:
            raise self._error(f"{self.name}: entry {key!r} is missing")
        try:
            with self._archive.open(info) as member:
                version = npformat.read_magic(member)
                if version == (1, 0):
                    shape, fortran, dtype = npformat.read_array_header_1_0(member)
                elif version == (2, 0):
                    shape, fortran, dtype = npformat.read_array_header_2_0(member)
                else:
                    raise self._error(f"{self.name}: entry {key!r} uses .npy format {version}, which is not read")
                if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
                    raise self._error(f"{self.name}: entry {key!r} is not a plain array (object, structured or "
                                      f"sub-array dtype)")
                count = 1
                for s in shape:
                    count *= s
                nbytes = count * dtype.itemsize
                if nbytes != info.file_size - member.tell():
                    raise self._error(f"{self.name}: entry {key!r} declares {dtype}{list(shape)} ({nbytes} bytes) "
                                      f"but holds {info.file_size - member.tell()} bytes of data")
                self._total += nbytes
                if self._total > MAX_NPZ_BYTES:
                    raise self._error(f"{self.name}: its arrays hold more than {MAX_NPZ_BYTES >> 30} GiB")
                array = np.empty(count, dtype=dtype)
                view = memoryview(array.data).cast("B") if nbytes else memoryview(b"")
                done = 0
                while done < nbytes:
                    got = member.readinto(view[done:done + _CHUNK])  # type: ignore[attr-defined]
                    if not got:
                        raise self._error(f"{self.name}: entry {key!r} is truncated")
                    done += got
                if member.read(1):
                    raise self._error(f"{self.name}: entry {key!r} holds more data than its header says")
        except HookwrapError:
            raise
        except (ValueError, zipfile.BadZipFile, EOFError, NotImplementedError, OverflowError, RuntimeError,
                zlib.error, OSError, MemoryError) as exc:
            raise self._error(f"{self.name}: entry {key!r} cannot be read ({type(exc).__name__}: {exc})") from None
        return array.reshape(shape, order="F" if fortran else "C")


@contextmanager
def open_npz(path: str | os.PathLike[str], *, what: str = ".npz file",
             error: type[HookwrapError] = InvalidArgumentError) -> Iterator[NpzReader]:
    """Open an ``.npz`` (a regular file only) for :class:`NpzReader` reads.

    Raises:
        ``error``: the file cannot be opened, is not a regular file or not a plain ``.npz``.
    """
    name = f"{what} {os.path.basename(os.fspath(path)) if isinstance(path, (str, os.PathLike)) else path!r}"
    with open_regular(path, what=what, error=error) as fh, file_errors(path, f"read the {what}", error):
        try:
            archive = zipfile.ZipFile(fh)
        except (zipfile.BadZipFile, EOFError, ValueError, RuntimeError, OverflowError) as exc:
            raise error(f"{name}: not a readable .npz (a zip of .npy files): {exc}") from None
        with archive:
            yield NpzReader(archive, name, error)


def read_npz(path: str | os.PathLike[str], *, what: str = ".npz file",
             error: type[HookwrapError] = InvalidArgumentError) -> dict[str, Any]:
    """Every array of an ``.npz``, by name (without ``.npy``), in archive order.

    Raises:
        ``error``: as :func:`open_npz` and :meth:`NpzReader.read`.
    """
    with open_npz(path, what=what, error=error) as npz:
        return {key: npz.read(key) for key in npz.names()}
