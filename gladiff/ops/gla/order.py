"""Scan orders of a token grid, as index arithmetic.

Tokens always live in raster (row-major) order in memory. A scan order is the sequence in which the
recurrence visits them: ``perm[s]`` is the raster index of the ``s``-th token visited.
"""
from __future__ import annotations

import functools

import torch

SCANS = ("row", "col")


def check_scan(T: int, scan: str, grid: tuple[int, int] | None) -> tuple[int, int] | None:
    """Validate ``scan``/``grid`` for a sequence of ``T`` tokens; returns the grid as a tuple."""
    if scan not in SCANS:
        raise ValueError(f"scan must be one of {SCANS}, got {scan!r}")
    if grid is not None:
        if len(grid) != 2 or int(grid[0]) * int(grid[1]) != T:
            raise ValueError(f"grid {tuple(grid)} does not hold T={T} tokens (need h*w == T)")
        grid = (int(grid[0]), int(grid[1]))
    elif scan == "col":
        raise ValueError("scan='col' needs grid=(h, w) to know the column-major order")
    return grid


@functools.lru_cache(maxsize=256)
def _scan_order_cpu(T: int, scan: str, reverse: bool, grid: tuple[int, int] | None) -> torch.Tensor:
    if scan == "row":
        perm = torch.arange(T)
    else:
        h, w = grid
        s = torch.arange(T)
        perm = (s % h) * w + s // h  # s-th column-major token: row s % h, column s // h
    if reverse:
        perm = perm.flip(0)
    return perm


def scan_order(T: int, scan: str = "row", reverse: bool = False, grid=None, device=None) -> torch.Tensor:
    """Raster index of each scan position, shape ``[T]`` (int64)."""
    grid = check_scan(T, scan, grid)
    perm = _scan_order_cpu(T, scan, bool(reverse), grid)
    return perm.to(device) if device is not None else perm


def is_identity(scan: str, reverse: bool) -> bool:
    return scan == "row" and not reverse
