"""One training run per output directory: an exclusive lock on ``<out>/.lock``.

Two trainers writing to one ``--out`` would interleave their metrics, overwrite each other's checkpoints
and race on the last/prev rotation. The lock is an ``fcntl.flock`` on a file in the directory: the kernel
releases it when the process dies, so a killed run (a Colab disconnect, SIGKILL) never leaves a stale lock.

Within one process, a new :class:`RunLock` on a directory this process already holds takes it over: a
notebook that builds a second ``Trainer`` on the same ``out`` (re-running a cell) must not lock itself out.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict

from ..errors import UserError

try:   # POSIX; elsewhere (Windows) runs are not locked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

_HELD: Dict[str, list] = {}   # real path of a lock file this process holds -> [file descriptor, holder]


class RunDirInUse(UserError):
    """Another process is training into the same output directory."""


class RunLock:
    """Hold ``<directory>/.lock`` until :meth:`release` (or the process ends). Creating it also proves that
    the directory is writable, before any training starts."""

    def __init__(self, directory):
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self.directory / ".lock"
            key = os.path.realpath(path)
            self.path, self.key = path, key
            if key in _HELD:      # this process holds it already (a notebook re-ran its cell): take it over
                _HELD[key][1] = self
                return
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"--out {self.directory}: cannot write there ({e.strerror or e})") from None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                owner = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise RunDirInUse(f"--out {self.directory} is in use by another training run (pid {owner}); wait for "
                                  f"it to end, or give this run another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        _HELD[key] = [fd, self]

    def release(self) -> None:
        """Drop the lock, unless another holder in this process has taken it over since."""
        entry = _HELD.get(self.key)
        if entry is not None and entry[1] is self:
            del _HELD[self.key]
            # Unlock before closing: processes forked while the lock was held (DataLoader workers) share its
            # open file, and a close here would leave the flock held until the last of them exits.
            if fcntl is not None:
                fcntl.flock(entry[0], fcntl.LOCK_UN)
            os.close(entry[0])
