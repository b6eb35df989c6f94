"""Which CPU kind this is and which kernels PyTorch runs for bf16 here: ``python -m tests.kernels``.

Prints the CPU (``lscpu``'s model name), whether it has native bf16, the ATen kernel level
(``ATEN_CPU_CAPABILITY`` caps it), oneDNN's ISA cap (``ONEDNN_MAX_CPU_ISA``) and, for a bf16
autocast convolution and matrix product with their backward passes, the oneDNN implementations
that ran (from oneDNN's verbose log), or that none did: then PyTorch's own fallback kernels ran,
as on a CPU without bf16.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

PROBE = """
import torch, torch.nn.functional as F
x = torch.rand(8, 16, 28, 28).contiguous(memory_format=torch.channels_last).requires_grad_()
w = torch.randn(32, 16, 3, 3).contiguous(memory_format=torch.channels_last).requires_grad_()
a, b = torch.randn(64, 256, requires_grad=True), torch.randn(32, 256, requires_grad=True)
with torch.autocast("cpu", dtype=torch.bfloat16):
    y, z = F.conv2d(x, w, padding=1), F.linear(a, b)
(y.float().sum() + z.float().sum()).backward()
"""


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return "unknown CPU"
    found = re.search(r"^Model name:\s*(.+)$", out, re.M)
    return found.group(1).strip() if found else "unknown CPU"


def bf16_kernels(env: dict[str, str] | None = None) -> list[str]:
    """The oneDNN implementations a bf16 convolution and matrix product ran, e.g. ``convolution
    brg_conv_fwd:avx512_core_amx``; empty where PyTorch ran its own kernels."""
    env = {**(env or os.environ), "ONEDNN_VERBOSE": "1"}
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, check=True)
    seen = []
    for line in proc.stdout.splitlines():
        parts = line.split(",")
        if line.startswith("onednn_verbose") and "exec" in parts and "bf16" in line:
            i = parts.index("exec")
            kernel = f"{parts[i + 2]} {parts[i + 3]}"
            if kernel not in seen:
                seen.append(kernel)
    return seen


def report() -> str:
    """Two lines: the CPU kind with this process's caps, and the bf16 kernels that run under them."""
    import torch

    from anomalymap_helpers.pipeline.training.device import cpu_supports_bf16

    env = dict(os.environ)
    kernels = bf16_kernels(env)
    kind = "native bf16 (AVX-512 BF16/AMX)" if cpu_supports_bf16() else "no native bf16 (AVX2 or older)"
    caps = ", ".join(f"{k}={env[k]}" for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA") if k in env) or "none"
    used = "; ".join(kernels) if kernels else "none from oneDNN: PyTorch's own fallback kernels (as without bf16)"
    return (f"CPU: {cpu_name()}, {kind}; ATen kernels: {torch.backends.cpu.get_cpu_capability()}; caps: {caps}\n"
            f"bf16 convolution and matmul kernels: {used}")


if __name__ == "__main__":
    print(report())
