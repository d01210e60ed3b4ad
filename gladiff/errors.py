"""The errors a user can fix, and turning file-system failures into messages that say what to do.

``gladiff`` raises ``GladiffError`` (or a subclass) for a problem the person running it can fix: a
bad value, an unwritable folder, a full disk, a missing optional package. Its message is one line
that names the problem and what to do about it; the CLI prints it without a traceback (``--debug``
or ``GLADIFF_DEBUG=1`` shows one). The subclasses also derive from the built-in type callers
already catch (``ValueError``, ``OSError``, ``ImportError``), so library code that catches those
keeps working.

This module sits below everything else: it imports nothing from gladiff and nothing heavy.
"""
from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path


class GladiffError(Exception):
    """A problem the user can fix; the message says what is wrong and what to do."""


class UsageError(GladiffError, ValueError):
    """A bad value: a config key, a flag, an argument of a public function."""


class StorageError(GladiffError, OSError):
    """A folder that cannot be written, a file where a folder is expected, a full disk."""


class MissingDependencyError(GladiffError, ImportError):
    """An optional package a feature needs is not installed."""


# torch.save reports a short write (ENOSPC, EDQUOT, EIO in its C++ writer) with these words rather
# than an OSError.
_TORCH_SHORT_WRITE = ("unexpected pos", "PytorchStreamWriter failed", "file write failed")
_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
_DENIED = (errno.EACCES, errno.EPERM, errno.EROFS)


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` is a write that ran out of space (an OSError, or torch's short-write error)."""
    if isinstance(err, OSError):
        return err.errno in _FULL
    return isinstance(err, RuntimeError) and any(s in str(err) for s in _TORCH_SHORT_WRITE)


@contextlib.contextmanager
def writing(what: str, where: str | os.PathLike, then: str = ""):
    """Turn a full disk or a refused write inside the block into a ``StorageError`` that names
    ``what`` was being written ``where`` and what to do; ``then`` says how to carry on after that
    (e.g. ``"continue with --resume"``)."""
    try:
        yield
    except GladiffError:
        raise
    except (OSError, RuntimeError) as err:
        if is_disk_full(err):
            detail = err.strerror if isinstance(err, OSError) else "torch wrote fewer bytes than it meant to"
            reason, action = f"the disk is full or over quota ({detail})", "free space or choose another folder"
        elif isinstance(err, OSError) and err.errno in _DENIED:
            reason, action = f"writing is not allowed ({err.strerror})", "fix the permissions or choose another folder"
        else:
            raise
        raise StorageError(f"could not write {what} to {where}: {reason}; {action}"
                           f"{', then ' + then if then else ''}") from err


def check_writable_dir(path: str | os.PathLike, what: str = "folder") -> Path:
    """``StorageError`` naming ``path`` unless files can be written in folder ``path``: it is a
    folder (or does not exist yet and no file stands in its way) and a file can be created in it
    (or, while it does not exist, in its nearest existing parent, where it will be created). Creates
    and removes one probe file, nothing else. Returns the path.

    Run it before long work whose results land in ``path``: a refused write then costs nothing.
    """
    path = Path(path)
    existing = next(p for p in (path, *path.parents, Path(".")) if p.exists())
    if not existing.is_dir():
        raise StorageError(f"{what} {path}: {existing} is a file, not a folder; choose another path")
    try:
        fd, probe = tempfile.mkstemp(prefix=".gladiff-write-check-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        problem = "the disk is full" if err.errno in _FULL else (err.strerror or str(err)).lower()
        where = "" if existing == path else f" (in {existing}, where it would be created)"
        raise StorageError(f"cannot write into {what} {path}{where}: {problem}; fix the permissions or "
                           "choose another folder") from err
    return path


def check_output_file(path: str | os.PathLike, what: str = "output", suffixes: tuple[str, ...] = (),
                      example: str = "") -> Path:
    """Check, before the work that produces it, that file ``path`` can be written: it ends in one of
    ``suffixes`` (when given), is not a folder, and its folder is writable (``check_writable_dir``).
    ``example`` is a file name suggested when ``path`` is a folder."""
    path = Path(path)
    if suffixes and path.suffix not in suffixes:
        raise UsageError(f"{what} {path} must end in {' or '.join(suffixes)}")
    if path.is_dir():
        name = example or f"out{suffixes[0] if suffixes else ''}"
        raise StorageError(f"{what} {path} is a folder; give a file path such as {path / name}")
    check_writable_dir(path.parent, f"the folder of {what} {path.name}")
    return path
