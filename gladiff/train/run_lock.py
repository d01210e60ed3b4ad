"""One writer per run folder: ``RunLock`` holds ``<run_dir>/.lock`` while a trainer (or a sampler
writing into the folder) runs, and a second one is refused with a message naming the holder.

The lock is ``fcntl.flock`` on that file: the OS releases it when the holding process ends, however
it ends (``kill -9`` included), so a lock left by a dead process never blocks the next run. The
holder writes who it is (host, pid, start time, command) into the file for the message. Where there
is no ``fcntl`` (Windows), or the file system refuses ``flock``, the file's existence is the lock
instead, and a file whose holder on this host is no longer alive is taken over (best effort: it
cannot tell whether a process on another host is alive, and says so).

Under ``torchrun`` only rank 0 takes the lock; every rank learns the outcome, so all of them stop.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
from pathlib import Path

from . import parallel

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

LOCK_FILE = ".lock"


class RunLockError(ValueError):
    """The run folder is held by another live process, or its lock file cannot be written."""


class RunLock:
    """``with RunLock(run_dir, dist):`` holds the run folder's lock (rank 0 of ``dist``; ``None``:
    this process alone), creating the folder if needed; ``RunLockError`` on every rank if another
    process holds it. ``acquire()``/``release()`` do the same by hand (no ranks involved)."""

    def __init__(self, run_dir: str | Path, dist: parallel.Dist | None = None):
        self.run_dir = Path(run_dir)
        self.file = self.run_dir / LOCK_FILE
        self.dist = dist
        self._fd: int | None = None
        self._owns_file = False  # the fallback: the file's existence is the lock

    def __enter__(self) -> RunLock:
        error = None
        if self.dist is None or self.dist.is_main:
            try:
                self.acquire()
            except RunLockError as err:
                error = str(err)
        if self.dist is not None:
            error = parallel.broadcast_object(self.dist, error)
        if error is not None:
            self.release()
            raise RunLockError(error)
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    # ------------------------------------------------------------------------- taking and leaving
    def acquire(self) -> None:
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise RunLockError(f"cannot write the lock file {self.file} ({err.strerror}): the run "
                               "folder must be writable") from None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    holder = _read_holder(fd)
                    os.close(fd)
                    raise RunLockError(self._busy(holder)) from None
                os.close(fd)  # flock not supported here (some network file systems)
                self._acquire_by_existence()
                return
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(_me()).encode())
            self._fd = fd
        else:
            os.close(fd)
            self._acquire_by_existence()

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)  # no holder named any more
            finally:
                os.close(self._fd)  # releases the flock
                self._fd = None
        if self._owns_file:
            self.file.unlink(missing_ok=True)
            self._owns_file = False

    def _acquire_by_existence(self) -> None:
        """The fallback: create the lock file exclusively; take over one whose holder is gone."""
        for _ in range(2):
            try:
                fd = os.open(self.file, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = _read_holder_file(self.file)
                if holder is not None and not _is_gone(holder):
                    raise RunLockError(self._busy(holder, fallback=True)) from None
                self.file.unlink(missing_ok=True)  # empty, unreadable, or its process has ended
                continue
            try:
                os.write(fd, json.dumps(_me()).encode())
            finally:
                os.close(fd)
            self._owns_file = True
            return
        raise RunLockError(f"another process took the lock {self.file} at the same moment")

    def _busy(self, holder: dict | None, fallback: bool = False) -> str:
        if holder is None:
            who = "another process (it has not written its name yet)"
        else:
            who = (f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}, "
                   f"command: {holder.get('command')}")
        msg = (f"run folder {self.run_dir} is in use by {who}. Wait for it to finish or stop it, "
               "or choose another run folder")
        if fallback:
            msg += f"; if that process has ended, delete {self.file}"
        return msg


# ----------------------------------------------------------------------------- holder records
def _me() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": " ".join(sys.argv)}


def _read_holder(fd: int) -> dict | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return _parse(os.read(fd, 1 << 16))
    except OSError:
        return None


def _read_holder_file(path: Path) -> dict | None:
    try:
        return _parse(path.read_bytes())
    except OSError:
        return None


def _parse(data: bytes) -> dict | None:
    try:
        holder = json.loads(data.decode())
    except (UnicodeDecodeError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def _is_gone(holder: dict) -> bool:
    """Whether the process that wrote ``holder`` has ended (only knowable on this host)."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    return not _pid_alive(holder["pid"])


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process on Windows
        import ctypes

        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
        handle = kernel32.OpenProcess(0x1000 | 0x00100000, False, pid)  # query + synchronize
        if not handle:
            return ctypes.get_last_error() == 5  # access denied: it exists
        try:
            return kernel32.WaitForSingleObject(handle, 0) == 0x102  # WAIT_TIMEOUT: still running
        finally:
            kernel32.CloseHandle(handle)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
