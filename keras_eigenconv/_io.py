"""Atomic file writes: every file the package writes goes through here.

A file is written to a temporary file in the target's own directory (so the final rename
never crosses file systems), checked (its size, and an optional ``check(tmp_path)``
callback, e.g. the ``.tflite`` self-check), flushed and ``fsync``-ed, then renamed over the
target with ``os.replace`` (atomic on POSIX and Windows). On any failure the temporary file
is removed and the previous target, if any, is left untouched: a reader sees either the old
file or the complete new one, never a partial file.

``check_writable(path)`` validates a target up front (before any expensive work) without
creating anything. ``file_lock(path)`` is an advisory inter-process and inter-thread lock
for read-modify-write cycles (the LiteRT timing cache).

Standard library only, so every part of the package may import it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = [
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_writable",
    "file_lock",
]


def _describe(err: OSError) -> str:
    return err.strerror or str(err) or type(err).__name__


def check_writable(path: str | os.PathLike, what: str = "output file") -> Path:
    """Check, without writing anything, that a file can be written at ``path``.

    The target must not be a directory; its nearest existing ancestor must be a directory
    (missing folders below it are created at write time) that this process may write to.

    Args:
        path: The file to be written.
        what: What the file is, for the error message (e.g. ``"--json"``).

    Returns:
        ``path`` as a ``Path``.

    Raises:
        ValueError: When ``path`` is empty or not a path.
        OSError: (``IsADirectoryError``, ``NotADirectoryError``, ``PermissionError``) when
            the file cannot be written there; the message names the path and the problem.
    """
    if isinstance(path, bool) or not isinstance(path, (str, os.PathLike)) or not str(path):
        raise ValueError(f"{what}: expected a file path, got {path!r}.")
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(
            errno.EISDIR,
            f"cannot write {what} {target}: it is a directory; give a file name inside it",
        )
    parent = target.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(
            errno.ENOTDIR,
            f"cannot write {what} {target}: {parent} is a file, not a directory; "
            "choose another folder",
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(
            errno.EACCES,
            f"cannot write {what} {target}: no write permission in {parent}",
        )
    return target


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; a no-op where directories cannot be
    opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    """The process umask, read without changing it (``os.umask`` would set it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def _temp_name(target: Path) -> Path:
    """A new, unique, empty temporary file beside ``target`` that keeps its suffix (so
    writers that infer a format from the suffix, like ``model.save`` or ``savefig``, work),
    with the target's permissions (or the usual ``0o666 & ~umask`` for a new file)."""
    fd, name = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=f".tmp{target.suffix}", dir=target.parent
    )
    try:
        try:
            mode = target.stat().st_mode & 0o7777
        except OSError:
            mode = 0o666 & ~_umask()
        os.fchmod(fd, mode)
    except (OSError, AttributeError):  # AttributeError: no fchmod (Windows)
        pass
    finally:
        os.close(fd)
    return Path(name)


@contextlib.contextmanager
def atomic_path(
    path: str | os.PathLike,
    check: Callable[[Path], None] | None = None,
    what: str = "output file",
    allow_empty: bool = False,
) -> Iterator[Path]:
    """Write a file through a temporary path, then rename it into place.

    ``with atomic_path("model.keras") as tmp: model.save(tmp)``: the body writes ``tmp``
    (beside the target, same suffix); on success the file is checked (not empty, then
    ``check(tmp)``), ``fsync``-ed and renamed over ``path``. On any exception (in the body,
    the check, the sync or the rename) the temporary file is removed, ``path`` is left as it
    was, and the exception propagates.

    Args:
        path: The file to write; missing parent folders are created.
        check: Called with the temporary path after it is written and synced, before the
            rename; raise to abandon the write.
        what: What the file is, for error messages.
        allow_empty: Accept an empty file (otherwise an empty result is an error: the
            writer failed silently).

    Returns:
        A context manager whose value is the temporary path to write to.

    Raises:
        OSError: When the target cannot be written (the message names the path), or the
            body wrote nothing.
    """
    target = check_writable(path, what)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temp_name(target)
    except OSError as err:
        raise type(err)(err.errno, f"cannot write {what} {target}: {_describe(err)}") from err
    try:
        yield tmp
        if not tmp.exists() or (tmp.stat().st_size == 0 and not allow_empty):
            raise OSError(errno.EIO, f"cannot write {what} {target}: nothing was written")
        try:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        except OSError as err:
            raise type(err)(err.errno, f"cannot write {what} {target}: {_describe(err)}") from err
        if check is not None:
            check(tmp)
        try:
            os.replace(tmp, target)
        except OSError as err:
            raise type(err)(err.errno, f"cannot write {what} {target}: {_describe(err)}") from err
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(target.parent)


def atomic_write_bytes(
    path: str | os.PathLike,
    data: bytes,
    check: Callable[[Path], None] | None = None,
    what: str = "output file",
) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file, check, fsync, rename).

    Args:
        path: The file to write; missing parent folders are created.
        data: The bytes to write.
        check: Called with the temporary path before the rename; raise to abandon the
            write (``path`` is then left as it was).
        what: What the file is, for error messages.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        OSError: When the file cannot be written; ``path`` is then unchanged and no
            temporary file remains.
    """
    data = bytes(data)
    target = Path(path)

    def _verify(tmp: Path) -> None:
        size = tmp.stat().st_size
        if size != len(data):
            raise OSError(
                errno.EIO,
                f"cannot write {what} {target}: wrote {size} of {len(data)} bytes",
            )
        if check is not None:
            check(tmp)

    with atomic_path(target, check=_verify, what=what, allow_empty=True) as tmp:
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
        except OSError as err:
            raise type(err)(err.errno, f"cannot write {what} {target}: {_describe(err)}") from err
    return target


def atomic_write_text(
    path: str | os.PathLike,
    text: str,
    encoding: str = "utf-8",
    check: Callable[[Path], None] | None = None,
    what: str = "output file",
) -> Path:
    """Write ``text`` to ``path`` atomically (see ``atomic_write_bytes``).

    Args:
        path: The file to write; missing parent folders are created.
        text: The text to write.
        encoding: Its encoding.
        check: Called with the temporary path before the rename.
        what: What the file is, for error messages.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        OSError: When the file cannot be written; ``path`` is then unchanged.
    """
    return atomic_write_bytes(path, text.encode(encoding), check=check, what=what)


_THREAD_LOCKS: dict[str, threading.Lock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, timeout: float = 60.0) -> Iterator[bool]:
    """Hold an advisory lock on ``path`` (for read-modify-write of a shared file).

    Threads of this process are serialized by an in-process lock; processes by ``flock``
    on ``<path>.lock`` (POSIX; where that is unavailable or the lock file cannot be
    created, only the in-process lock is held).

    Args:
        path: The file the lock protects (the lock file is ``<path>.lock``).
        timeout: Seconds to wait for another process before going on without the
            inter-process lock.

    Returns:
        A context manager whose value says whether the inter-process lock is held.
    """
    key = os.path.abspath(os.fspath(path))
    with _THREAD_LOCKS_GUARD:
        lock = _THREAD_LOCKS.setdefault(key, threading.Lock())
    with lock:
        fd = None
        held = False
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            fcntl = None
        if fcntl is not None:
            try:
                fd = os.open(key + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
            except OSError:
                fd = None
        if fd is not None:
            import time

            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    held = True
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.01)
        try:
            yield held
        finally:
            if fd is not None:
                if held:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
