"""Files: atomic writes (temporary file in a private folder, fsync, ``os.replace``) and
safe reads (regular files only, opened without blocking, every OS error a HookwrapError)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from .errors import HookwrapError, InvalidArgumentError

# What can go wrong when a path from a user or a file meets the operating system: OS errors,
# a NUL byte or a surrogate in the path (ValueError, UnicodeError), huge numbers.
FILE_ERRORS = (OSError, ValueError, UnicodeError, OverflowError)


def describe_os_error(exc: BaseException) -> str:
    """``"No such file or directory"`` rather than ``"[Errno 2] No such file or directory: '...'"``."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"{type(exc).__name__}: {exc}"


@contextlib.contextmanager
def file_errors(path: object, action: str, error: type[HookwrapError] = HookwrapError) -> Iterator[None]:
    """Turn the OS's errors inside the block into ``error`` naming ``path`` and ``action``."""
    try:
        yield
    except HookwrapError:
        raise
    except FILE_ERRORS as exc:
        raise error(f"{_show(path)}: cannot {action}: {describe_os_error(exc)}") from None


def _show(path: object) -> str:
    text = os.fsdecode(path) if isinstance(path, (str, bytes, os.PathLike)) else repr(path)
    return repr(text.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace"))


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def open_regular(path: str | os.PathLike[str], *, what: str = "file",
                 error: type[HookwrapError] = HookwrapError) -> BinaryIO:
    """Open ``path`` for reading only if it is a regular file (symlinks to one are fine).

    The open itself never blocks (``O_NONBLOCK``: a FIFO with no writer would otherwise
    hang), and the file type is checked on the open descriptor (``fstat``), so the file
    cannot be swapped between the check and the read.

    Raises:
        ``error``: the path does not exist, cannot be opened, or is a FIFO, a device, a
            socket or a directory. The message names the path.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidArgumentError(f"{what} must be a path, got {type(path).__name__}")
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
    with file_errors(path, f"open the {what}", error):
        fd = os.open(path, flags)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                kind = next((name for test, name in _KINDS if test(info.st_mode)), "not a regular file")
                raise error(f"{_show(path)}: the {what} is {kind}; hookwrap reads only regular files")
            os.set_blocking(fd, True)
            return os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise


def fd_path(handle: BinaryIO, fallback: str | os.PathLike[str]) -> str:
    """A path that opens the very file behind ``handle`` (``/proc/self/fd/N`` on Linux), for
    libraries that take only paths; ``fallback`` where the OS has no such path."""
    proc = f"/proc/self/fd/{handle.fileno()}"
    return proc if os.path.exists(proc) else os.fspath(fallback)

TMP_MARK = ".hookwrap-tmp-"
_HOST = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname())[:64] or "host"



def fsync_dir(folder: Path) -> None:
    """Make a folder's entries (renames) durable."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def temp_prefix(target: Path) -> str:
    """Name prefix of this process's temporary files for ``target``: it carries host and PID."""
    return f".{target.name}{TMP_MARK}{_HOST}-{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists but belongs to someone else
        return True
    return True


def sweep_stale(target: Path) -> list[Path]:
    """Remove temporary files that a killed writer of ``target`` left behind.

    Only files of processes on this host that no longer run are removed: a concurrent
    writer's file, or one from another machine sharing the folder, is never touched.
    Returns the paths removed.
    """
    folder = target.parent if str(target.parent) else Path(".")
    head = f".{target.name}{TMP_MARK}{_HOST}-"
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(head):
            continue
        pid_text = entry.name[len(head):].split("-", 1)[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid() or _alive(int(pid_text)):
            continue
        path = Path(entry.path)
        with contextlib.suppress(OSError):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
    return removed


# Replacing a large file frees its blocks, which ext4 does inside os.replace (about 0.1 s
# per 500 MB here). Holding the old file open moves that work to the close, which a
# background thread does: the save returns as soon as the new file is durable.
_DEFER_RELEASE_BYTES = 64 << 20


def _hold_old(target: Path) -> int | None:
    if os.name != "posix":  # Windows cannot replace a file that is open
        return None
    try:  # non-blocking: a FIFO at the target must not hang the save
        fd = os.open(target, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if stat.S_ISREG(info.st_mode) and info.st_size >= _DEFER_RELEASE_BYTES:
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


def _release(fd: int) -> None:
    threading.Thread(target=os.close, args=(fd,), name="hookwrap-release", daemon=True).start()


@contextlib.contextmanager
def private_folder(target: str | os.PathLike[str]) -> Iterator[Path]:
    """A new hidden folder next to ``target`` for writing its replacement; removed at the end.

    A folder rather than a bare temporary file: writers such as safetensors' own save make
    temporary files next to the path they are given, and those must not outlive a crash.
    Folders that killed writers left are removed first (see :func:`sweep_stale`).

    Raises:
        InvalidArgumentError: ``target``'s folder does not exist.
    """
    target = Path(target)
    folder = target.parent if str(target.parent) else Path(".")
    with file_errors(target, "write there"):
        if not folder.is_dir():
            raise InvalidArgumentError(f"cannot write {str(target)!r}: folder {str(folder)!r} does not exist")
        sweep_stale(target)
        tmpdir = Path(tempfile.mkdtemp(prefix=temp_prefix(target), dir=folder))
    try:
        yield tmpdir
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def _new_file_mode(folder: Path) -> int:
    """The permissions a new file gets here under the process's umask, read off a probe
    file in our private folder (reading the umask itself means changing it, process-wide)."""
    probe = folder / ".mode-probe"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        return os.fstat(fd).st_mode & 0o777
    finally:
        os.close(fd)
        probe.unlink()


def commit(tmp: Path, target: Path) -> None:
    """Make the finished file ``tmp`` durable and move it over ``target`` (same folder).

    ``tmp`` is fsynced and gets ``target``'s permissions (or the umask's for a new file);
    ``os.replace`` then swaps it in. Call :func:`fsync_dir` on the folder afterwards.
    """
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    try:
        mode = target.stat().st_mode & 0o777
    except FileNotFoundError:
        mode = _new_file_mode(tmp.parent)
    os.chmod(tmp, mode)
    old = _hold_old(target)
    try:
        os.replace(tmp, target)
    except BaseException:
        if old is not None:
            os.close(old)
        raise
    if old is not None:
        _release(old)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success it replaces ``target``.

    Whatever the block writes to the temporary path is fsynced and then moved over
    ``target`` with ``os.replace``, so a crash at any moment leaves either the old file
    or the new one at ``target``, never a mix. On error the temporary folder is removed;
    files left by writers that were killed are removed by the next write.
    """
    target = Path(target)
    with private_folder(target) as tmpdir:
        tmp = tmpdir / target.name
        yield tmp
        with file_errors(target, "replace it"):
            commit(tmp, target)
            fsync_dir(target.parent if str(target.parent) else Path("."))


def write_json(data: object, path: str | os.PathLike[str] | None, indent: int) -> str:
    """``data`` as JSON text, also written atomically to ``path`` when one is given (the
    ``to_json(path=None)`` of every report)."""
    import json

    text = json.dumps(data, indent=indent)
    if path is not None:
        atomic_write_text(path, text + "\n")
    return text


def atomic_write_text(target: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``target`` atomically (UTF-8)."""
    with atomic_path(target) as tmp, file_errors(target, "write it"):
        tmp.write_text(text, encoding="utf-8")
