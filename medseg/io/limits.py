"""Checks made on an image header before any voxel data is read: geometry and size.

A zero, negative, NaN or infinite voxel spacing is refused (never silently read as 1 mm), and so is
an image whose array would not fit in the memory available now (refused by the header alone,
before anything is allocated).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medseg.errors import InputError


def check_spacing(path: str | os.PathLike[str], spacing: Sequence[float], where: str = "header") -> None:
    """Refuse a voxel spacing that is zero, negative, NaN or infinite (``where`` names its field)."""
    values = [float(s) for s in spacing]
    bad = [s for s in values if not math.isfinite(s) or s <= 0]
    if bad:
        shown = " x ".join(f"{s:g}" for s in values)
        raise InputError(path, f"invalid voxel spacing {shown} in the {where} (each must be a finite "
                               "positive number of mm); fix the header")


def check_geometry(path: str | os.PathLike[str], origin: Sequence[float], direction: Sequence[float]) -> None:
    """Refuse a NaN or infinite origin or direction."""
    if not np.all(np.isfinite(np.asarray(origin, dtype=np.float64))):
        raise InputError(path, f"header holds a non-finite origin {tuple(origin)}")
    if not np.all(np.isfinite(np.asarray(direction, dtype=np.float64))):
        raise InputError(path, "header holds a non-finite direction (orientation) matrix")


def available_memory_bytes() -> int | None:
    """Memory that can be allocated now (bytes): psutil, else /proc/meminfo, else sysconf; also
    bounded by a cgroup v2 memory limit. None when it cannot be told."""
    found: int | None = None
    try:
        import psutil

        found = int(psutil.virtual_memory().available)
    except Exception:  # not installed, or no /proc
        found = _meminfo_available()
    if found is None:
        try:
            found = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))
        except (AttributeError, ValueError, OSError):
            found = None
    limit = _cgroup_room()
    if limit is not None:
        found = limit if found is None else min(found, limit)
    return found


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_room() -> int | None:
    """Bytes left under this process's cgroup v2 memory limit, page cache counted as free (the
    kernel reclaims it); None when unlimited or unknown."""
    base = Path("/sys/fs/cgroup")
    try:
        limit = (base / "memory.max").read_text().strip()
        if limit == "max":
            return None
        used = int((base / "memory.current").read_text().strip())
        for line in (base / "memory.stat").read_text().splitlines():
            if line.startswith("file "):
                used -= int(line.split()[1])
        return max(0, int(limit) - max(used, 0))
    except (OSError, ValueError, IndexError):
        return None


def check_fits_in_memory(path: str | os.PathLike[str], shape: Sequence[int], itemsize: int) -> None:
    """Refuse an image whose array (``shape`` x ``itemsize`` bytes) would not fit in memory now."""
    dims = [int(n) for n in shape]
    if any(n < 0 for n in dims):
        raise InputError(path, f"header holds a negative image size {tuple(dims)}")
    need = math.prod(dims) * int(itemsize)
    room = available_memory_bytes()
    if room is not None and need > room:
        raise InputError(path, f"header describes a {' x '.join(map(str, dims))} image of {_size(need)}, "
                               f"more than the {_size(room)} of memory available")


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover
