"""Numeric precision of the network: bfloat16 autocast where the hardware runs it natively.

On CPUs with AVX512_BF16 (or AMX) oneDNN runs bf16 convolutions natively: about half the time of
fp32 for the training step and for inference (``../shared/docs/performance-notes.md``). Without
those instructions bf16 is emulated and slower, so ``auto`` stays in fp32 there.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=8)
def cpuinfo_value(key: str) -> str | None:
    """The first CPU's ``key`` line of ``/proc/cpuinfo`` (``flags``, ``model name``); None where absent."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                name, sep, value = line.partition(":")
                if sep and name.strip() == key:
                    return value.strip()
    except OSError:
        pass
    return None


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 instructions (from ``/proc/cpuinfo``; False where it is absent)."""
    words = set((cpuinfo_value("flags") or "").split())
    return any(f in words for f in _CPU_BF16_FLAGS)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (None = plain fp32).

    ``auto``: bf16 on CUDA with bf16 support (else fp16) and on CPUs with native bf16, else fp32.
    ``fp16`` is CUDA only (CPU fp16 convolutions are slow): fp32 on CPU.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return None
    if device.type == "cuda":
        if precision == "fp16" or not torch.cuda.is_bf16_supported():
            return torch.float16
        return torch.bfloat16
    if precision == "bf16" or (precision == "auto" and cpu_has_native_bf16()):
        return torch.bfloat16
    return None


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """``torch.autocast`` for ``dtype`` on ``device``, or nothing for fp32."""
    if dtype is None:
        yield
        return
    with torch.autocast(device.type, dtype=dtype):
        yield


def precision_name(dtype: torch.dtype | None) -> str:
    """``fp32`` / ``bf16`` / ``fp16`` for reports."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
