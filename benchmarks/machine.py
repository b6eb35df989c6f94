"""What machine a figure was measured on: the CPU's model, cores and instruction sets."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any


def cpu_info() -> dict[str, Any]:
    """The CPU's model, its cores and whether it has AVX-512, bf16 and AMX (Linux ``/proc/cpuinfo``)."""
    import os
    import platform

    model, flags = platform.processor() or platform.machine(), set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    return {
        "model": model,
        "cores": os.cpu_count(),
        "avx512": "avx512f" in flags,
        "bf16": "avx512_bf16" in flags or "amx_bf16" in flags,
        "amx": "amx_tile" in flags,
    }
