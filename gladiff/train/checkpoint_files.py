"""What both kinds of checkpoint share on disk: atomic writes, checksums, the record check.

``checkpoint`` (one ``.pt`` file) and ``sharded_checkpoint`` (a DCP folder) both build on this
module, and ``checkpoint`` dispatches to ``sharded_checkpoint``, so imports run one way:
``checkpoint -> sharded_checkpoint -> checkpoint_files``.

Checksums: the SHA-256 of every file of a checkpoint is recorded when it is written, in the format
of ``sha256sum`` (one ``<hex>  <name>`` line per file, so ``sha256sum -c`` checks it too):
``step-XXXXXXXX.pt.sha256`` next to a ``.pt`` file, ``SHA256SUMS`` inside a ``.dcp`` folder. The
record is made durable before the checkpoint appears under its final name, so a checkpoint is never
on disk without its checksums; loading verifies them before anything is unpickled. They detect
damage (a flipped bit, a bad disk block, a partial copy), not tampering: whoever can write a
checkpoint can write its checksums, and safety against crafted files comes from the loaders
(``weights_only`` for ``.pt`` files, a restricted unpickler for DCP metadata).
"""
from __future__ import annotations

import hashlib
import os
import re
import warnings
from pathlib import Path

import torch

from gladiff.files import write_text_atomic

# What every checkpoint record holds (a .pt file; a sharded checkpoint's meta.pt lacks the tensors).
REQUIRED = ("format", "step", "model", "ema", "optimizer", "data", "rng", "config", "model_spec",
            "data_info", "complete")
SIDECAR = ".sha256"  # step-XXXXXXXX.pt -> step-XXXXXXXX.pt.sha256
SUMS = "SHA256SUMS"  # inside a sharded checkpoint folder
_SUM_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")


class UnsafeCheckpointError(ValueError):
    """A checkpoint file asks to run code when it is loaded (a crafted pickle). It is refused, and
    not skipped like a damaged file: a run folder holding one is not to be trusted."""


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


# ----------------------------------------------------------------------------- writing
def atomic_save(obj, path: str | Path, checksum: bool = False) -> Path:
    """``torch.save(obj)`` to ``path`` via a temporary file + fsync + rename; returns ``path``.
    With ``checksum``, the file's SHA-256 is first made durable in ``path`` + ``SIDECAR``.

    On any failure (disk full, killed process raising, ...) the temporary file is removed and
    ``path`` (and its siblings) are left as they were.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        if checksum:
            # The checksum goes first: a crash between the two renames leaves a sidecar without its
            # file (removed by the next prune), never a new checkpoint without its checksum.
            write_sums(sidecar(path), {path.name: sha256_file(tmp)})
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def write_sums(path: Path, digests: dict[str, str]) -> None:
    """Write ``{file name: SHA-256 hex}`` as ``sha256sum`` lines to ``path``, atomically and durably."""
    write_text_atomic(path, "".join(f"{digest}  {name}\n" for name, digest in sorted(digests.items())))
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (its directory entry), where the OS allows opening
    a folder; a no-op elsewhere."""
    try:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


# ----------------------------------------------------------------------------- checksums
def sidecar(path: Path) -> Path:
    """The checksum file of the checkpoint file ``path``."""
    return path.with_name(path.name + SIDECAR)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_sums(path: Path) -> dict[str, str]:
    """``{file name: SHA-256 hex}`` from a ``sha256sum`` file; ``ValueError`` if it is malformed or
    names anything but a plain file name (the files it covers lie beside it)."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"checksum file {path} cannot be read ({type(err).__name__}: {err})") from err
    sums = {}
    for line in lines:
        m = _SUM_LINE.match(line)
        if m is None or "/" in m.group(2) or "\\" in m.group(2) or m.group(2) in (".", ".."):
            raise ValueError(f"checksum file {path} is damaged (line {line[:80]!r})")
        sums[m.group(2)] = m.group(1)
    return sums


def verify_sums(sums_file: Path, what: Path, only: str | None = None) -> set[str] | None:
    """Check the files listed in ``sums_file`` (they lie beside it; ``only``: just that one, which
    must be listed) against their recorded SHA-256; returns the names verified, or ``None`` if there
    is no ``sums_file`` (a checkpoint written before gladiff recorded checksums). ``ValueError``
    naming the checkpoint ``what`` and the file if one is missing or differs."""
    if not sums_file.is_file():
        return None
    sums = read_sums(sums_file)
    if only is not None:
        if only not in sums:
            raise ValueError(f"checkpoint {what}: {sums_file.name} records no checksum for {only}")
        sums = {only: sums[only]}
    for name, expected in sums.items():
        f = sums_file.parent / name
        if not f.is_file():
            raise ValueError(f"checkpoint {what} is incomplete ({name}, listed in {sums_file.name}, is missing)")
        actual = sha256_file(f)
        if actual != expected:
            raise ValueError(f"checkpoint {what} is damaged: {f.name} has SHA-256 {actual[:16]}..., "
                             f"not the {expected[:16]}... recorded in {sums_file.name} when it was written")
    return set(sums)


# ----------------------------------------------------------------------------- reading
def load_record(file: Path, path: Path, fmt: str, required, kind: str = "", map_location="cpu") -> dict:
    """Load the dict saved in ``file`` (of the checkpoint ``path``) and check that it is a complete
    record of format ``fmt`` holding every key of ``required``; ``ValueError`` naming what is wrong.
    ``kind`` qualifies the checkpoint in messages (e.g. ``"sharded "``)."""
    try:
        state = torch.load(file, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated zip, bad pickle, ... all mean "not usable"
        raise ValueError(f"checkpoint {file} cannot be read ({type(err).__name__}: {err})") from err
    if not isinstance(state, dict) or state.get("format") != fmt:
        raise ValueError(f"{path} is not a gladiff {kind}training checkpoint (format {fmt!r})")
    missing = [k for k in required if k not in state]
    if missing or state.get("complete") is not True:
        raise ValueError(f"{kind}checkpoint {path} is incomplete (missing {missing})")
    return state


def note_unverified(path: Path) -> None:
    """Say that the checkpoint ``path`` has no checksums to verify (older gladiff versions wrote none)."""
    warnings.warn(f"note: checkpoint {path} has no recorded checksums (written by an older gladiff): "
                  "damage inside its data cannot be detected", stacklevel=3)
