"""Every file wanlab writes, written so that nothing at its path is followed or replaced but a
regular file.

`write_file` writes a whole file: a temporary file with a random name is created exclusively
(O_CREAT|O_EXCL|O_NOFOLLOW: never through a link, never over anything already there) in the
target's folder, written, synced, and renamed over the target only when the target is absent or
a regular file, as lstat sees it (links not followed). A symbolic link, FIFO, socket, device or
folder at the target is refused in one line naming the path and the option or field that gave
it, and so are a path that names no file ('', '.', '/'), a folder that does not exist and a
name too long. On every failure the temporary file is removed: an exception, a full disk,
Ctrl-C, and SIGTERM or SIGHUP where they would end the process (they end it once it is gone);
only SIGKILL or a crash can leave a `.NAME.*.tmp` beside the target.

The target is checked again just before the rename; what the rename cannot check is something
put at the target in the moment between. rename(2) replaces that directory entry itself: a link
put there is replaced, never followed (nothing is written through it), a device or FIFO entry
is unlinked, not opened, and a folder makes the rename fail. Only someone who may write the
target's folder can do that, and they could remove the entry as well.

The folder itself is taken as given (a folder reached through a link is the user's choice);
every step after opening it works on that open folder, so the folder cannot be swapped between
the check and the rename.

`open_append` opens a file to append to (results' `cells.jsonl`, a rank's log): never through a
link (O_NOFOLLOW), never blocking on a FIFO (O_NONBLOCK), and only a regular file, checked
before opening and again on what was opened.
"""

from __future__ import annotations

import errno
import os
import secrets
import signal
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TextIO

from inventory.errors import ConfigError

_KINDS = (
    (stat.S_ISLNK, "a symbolic link"),
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)
_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_APPEND_FLAGS = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_TEMP_STEM = 40
"""Characters of the target's name a temporary name keeps (it stays well under NAME_MAX)."""
_STOPPING = (signal.SIGTERM, signal.SIGHUP)


def check_target(path: str | Path, field: str | None) -> Path:
    """`path` if a file can be written there (its folder exists; nothing there, or a regular
    file), else ConfigError naming `path` and `field`. Writes nothing: call it before any work
    so that a bad output is refused before the work it would hold."""
    path = Path(path)
    folder = _open_folder(path, field)
    try:
        _existing(path, folder, field)
    except OSError as error:
        raise _refusal(path, field, error) from None
    finally:
        os.close(folder)
    return path


def write_file(
    path: str | Path,
    data: str | bytes,
    field: str | None,
    *,
    mode: int = 0o666,
    sync: bool = True,
) -> Path:
    """Write `data` (text as UTF-8) as the whole file at `path`, replacing a regular file there
    in one step (a reader sees the old file or the new one, never half); `field` is the option
    or field that gave `path`, named with it in a refusal. A new file gets `mode` less the
    umask; a replaced one keeps its permission bits (and, written as root, its owner).
    `sync=False` skips the fsyncs, for a message that means nothing after a crash."""
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else bytes(data)
    folder = _open_folder(path, field)
    try:
        with _stopping_signals_raise():
            _replace(path, folder, payload, field, mode, sync)
    except OSError as error:
        raise _refusal(path, field, error) from None
    finally:
        os.close(folder)
    return path


def open_append(path: str | Path, field: str | None) -> TextIO:
    """`path` opened to append text to (and to read: mode a+), created if absent; ConfigError
    naming `path` and `field` when anything but a regular file is there."""
    path = Path(path)
    folder = _open_folder(path, field)
    try:
        before = _existing(path, folder, field)
        descriptor = os.open(path.name, _APPEND_FLAGS, 0o666, dir_fd=folder)
    except OSError as error:
        raise _refusal(path, field, error) from None
    finally:
        os.close(folder)
    opened = os.fstat(descriptor)
    if not stat.S_ISREG(opened.st_mode):
        os.close(descriptor)
        raise _not_a_file(path, field, opened.st_mode)
    if before is not None and (before.st_dev, before.st_ino) != (opened.st_dev, opened.st_ino):
        os.close(descriptor)
        raise ConfigError(str(path), field, "was replaced while it was opened: refused")
    os.set_blocking(descriptor, True)
    return os.fdopen(descriptor, "a+", encoding="utf-8")


def _open_folder(path: Path, field: str | None) -> int:
    """The target's folder, open; a path that names no file is refused."""
    if path.name in ("", ".", ".."):
        raise ConfigError(str(path), field, "names a folder, not a file")
    try:
        return os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigError(str(path), field, f"its folder {path.parent} does not exist") from None
    except NotADirectoryError:
        raise ConfigError(str(path), field, f"{path.parent} is not a folder") from None
    except OSError as error:
        raise _refusal(path, field, error) from None


def _existing(path: Path, folder: int, field: str | None) -> os.stat_result | None:
    """The regular file at `path` (lstat), None when there is none; anything else refused."""
    try:
        found = os.stat(path.name, dir_fd=folder, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(found.st_mode):
        raise _not_a_file(path, field, found.st_mode)
    return found


def _not_a_file(path: Path, field: str | None, mode: int) -> ConfigError:
    kind = next(kind for is_kind, kind in _KINDS if is_kind(mode))
    return ConfigError(str(path), field, f"is {kind}, not a regular file: refused")


def _replace(
    path: Path, folder: int, payload: bytes, field: str | None, mode: int, sync: bool
) -> None:
    existing = _existing(path, folder, field)
    temp = f".{path.name[:_TEMP_STEM]}.{secrets.token_hex(8)}.tmp"
    descriptor = os.open(temp, _TEMP_FLAGS, mode, dir_fd=folder)
    try:
        try:
            if existing is not None:
                if os.geteuid() == 0:
                    os.fchown(descriptor, existing.st_uid, existing.st_gid)
                os.fchmod(descriptor, stat.S_IMODE(existing.st_mode) & 0o777)
            view = memoryview(payload)
            while view:
                view = view[os.write(descriptor, view) :]
            if sync:
                os.fsync(descriptor)
        finally:
            os.close(descriptor)
        _existing(path, folder, field)  # again, just before the rename
        os.rename(temp, path.name, src_dir_fd=folder, dst_dir_fd=folder)
    except BaseException:
        with suppress(OSError):
            os.unlink(temp, dir_fd=folder)
        raise
    if sync:
        os.fsync(folder)


def _refusal(path: Path, field: str | None, error: OSError) -> ConfigError:
    if error.errno == errno.ENAMETOOLONG:
        return ConfigError(str(path), field, "the name is too long")
    if error.errno == errno.EISDIR:
        return _not_a_file(path, field, stat.S_IFDIR)
    if error.errno == errno.ELOOP:
        return _not_a_file(path, field, stat.S_IFLNK)
    return ConfigError(str(path), field, f"cannot be written: {error.strerror}")


class _Stopped(BaseException):
    """A stopping signal, raised where it arrived so that clean-up runs first."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_stopped(signum: int, _frame: object) -> None:
    raise _Stopped(signum)


@contextmanager
def _stopping_signals_raise() -> Iterator[None]:
    """Inside, SIGTERM and SIGHUP, where they would end the process, raise `_Stopped` (so that
    the block's clean-up runs); afterwards the signal ends the process as it would have."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    stopping = [s for s in _STOPPING if signal.getsignal(s) == signal.SIG_DFL]
    for signum in stopping:
        signal.signal(signum, _raise_stopped)
    arrived = None
    try:
        yield
    except _Stopped as stopped:
        arrived = stopped.signum
    finally:
        for signum in stopping:
            signal.signal(signum, signal.SIG_DFL)
    if arrived is not None:
        signal.raise_signal(arrived)
