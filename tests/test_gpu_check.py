"""``benchmarks/gpu_check.py`` refuses cleanly where there is no CUDA GPU (the machines CI runs on)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: run the check itself")
def test_the_gpu_check_refuses_without_cuda_before_any_work(tmp_path: Path) -> None:
    out = tmp_path / "check"
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith("error: no CUDA GPU: torch ") and "Traceback" not in proc.stderr
    assert "make test` covers the fp32 and bf16 paths" in proc.stderr
    assert not out.exists() and proc.stdout == ""
