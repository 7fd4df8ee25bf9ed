"""One owner per run folder: an advisory ``fcntl.flock`` on ``<output_dir>/.lock``.

The process that trains into a folder holds the lock for the whole run (rank 0 under
torchrun); a second process that wants the same folder is refused with one line naming the
holder (host, pid, start time, as written in the lock file). The operating system drops the
lock with the process, so a run killed with ``kill -9`` leaves nothing that blocks
``--resume``: the lock file stays, the lock does not.

Details:

- re-entrant within a process: a second :class:`RunLock` on a folder this process already
  holds shares the lock (the flock is released when the last holder releases it);
- forked children (DataLoader workers) close their inherited copy of the descriptor, so a
  worker that outlives a killed main process does not keep the folder locked;
- where ``fcntl`` is missing (Windows) or the file system refuses ``flock``, the lock is a
  no-op with a warning: runs are then not protected from each other.

No torch import: this module is cheap to import from anywhere.
"""

from __future__ import annotations

import datetime
import errno
import os
import socket
import warnings
import weakref
from pathlib import Path

from detmine.errors import CheckpointError, ConfigError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"

# realpath of a lock file -> [descriptor, number of RunLock holders in this process]
_HELD: dict[str, list[int]] = {}


def _forget_in_child() -> None:
    """After ``fork``: close the inherited lock descriptors (without unlocking: the parent's
    descriptor keeps the lock) so the child never holds a run folder."""
    for fd, _ in _HELD.values():
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


def _drop(key: str) -> None:
    """One holder of ``key`` fewer; the last one unlocks and closes the descriptor."""
    entry = _HELD.get(key)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] > 0:
        return
    del _HELD[key]
    try:
        if fcntl is not None:
            fcntl.flock(entry[0], fcntl.LOCK_UN)
    finally:
        os.close(entry[0])


def holder_text() -> str:
    """What a holder writes into the lock file: ``host <h> pid <p> started <ISO time>``."""
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    return f"host {socket.gethostname()} pid {os.getpid()} started {started}\n"


class RunLock:
    """The lock of one run folder (``folder/.lock``).

    ``acquire()`` creates the folder if needed, takes the lock without waiting and writes
    :func:`holder_text` into the file; it raises :class:`~detmine.errors.ConfigError` naming
    the holder when another process has it. ``release()`` (or leaving the ``with`` block, or
    the object being garbage-collected) gives it back; so does the process ending.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._finalizer: weakref.finalize | None = None

    @property
    def held(self) -> bool:
        """True while this object holds (a share of) the lock."""
        return self._finalizer is not None and self._finalizer.alive

    def acquire(self) -> RunLock:
        """Take the lock (returns self). ConfigError when another process holds it,
        CheckpointError when the folder or the lock file cannot be created."""
        if self.held:
            return self
        fd = self._open()
        key = os.path.realpath(self.path)
        if key in _HELD:  # this process already holds it: share
            os.close(fd)
            _HELD[key][1] += 1
        elif self._lock(fd):
            _HELD[key] = [fd, 1]
            self._write_holder(fd)
        else:
            os.close(fd)  # a no-op lock: nothing to share or release
            return self
        self._finalizer = weakref.finalize(self, _drop, key)
        return self

    def release(self) -> None:
        """Give the lock back (no-op when not held)."""
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _open(self) -> int:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise CheckpointError(f"cannot create the run folder lock {self.path}: {reason}") from None

    def _lock(self, fd: int) -> bool:
        """flock ``fd`` without waiting: True when locked, False when locking is unsupported
        here (warned); ConfigError naming the holder when another process has it."""
        if fcntl is None:  # pragma: no cover - Windows
            warnings.warn(
                f"cannot lock {self.path} on this platform; runs into it are not checked", stacklevel=3
            )
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                warnings.warn(
                    f"cannot lock {self.path} ({exc.strerror}); two runs into {self.folder} would not be noticed",
                    stacklevel=3,
                )
                return False
            os.close(fd)
            raise ConfigError(
                f"output_dir {self.folder} is in use by another run ({self._holder()}; lock file {self.path}); "
                "wait for it to finish, stop it, or choose another output_dir"
            ) from None
        return True

    def _holder(self) -> str:
        try:
            text = self.path.read_text().strip()
        except OSError:
            text = ""
        return text.splitlines()[0] if text else "holder not recorded yet"

    def _write_holder(self, fd: int) -> None:
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, holder_text().encode(), 0)
        except OSError:
            pass  # the lock holds without the note; a refusal then says "holder not recorded"
