"""Does AnomalyMap work, and how fast, on this machine's CUDA GPU?

Run on a machine with a GPU (``make gpu-check``, or ``python benchmarks/gpu_check.py``): the
CUDA-marked tests (``tests/test_cuda.py``: an fp16 training step with its GradScaler, scoring in
fp16 against fp32, the ONNX detector on onnxruntime's CUDA provider where it is installed, nccl
with one GPU), the speed benchmark on ``cuda``, and the default series on ``cuda``; then one table
of what passed and the figures. Without CUDA it refuses at once (exit 2) and does nothing else.

    python benchmarks/gpu_check.py [--out results/gpu-check] [--skip-series]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def no_cuda_reason() -> str | None:
    """Why this machine cannot run the check, or None where it can."""
    import torch

    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
        return (
            f"no CUDA GPU: torch {torch.__version__} ({build}) sees none. Run this on a machine with an "
            "NVIDIA GPU and its driver; on the CPU, `make test` covers the fp32 and bf16 paths"
        )
    return None


def step(name: str, cmd: list[str], log: Path) -> tuple[bool, float, str]:
    """Run one step, its output into ``log`` and through to the terminal: ``(ok, seconds, output)``."""
    print(f"== {name}: {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "ANOMALYMAP_REQUIRE_CUDA": "1"})
    seconds = time.perf_counter() - t0
    log.write_text(proc.stdout + proc.stderr)
    print(proc.stdout[-3000:], proc.stderr[-2000:], sep="", flush=True)
    return proc.returncode == 0, seconds, proc.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/gpu-check", help="where the logs and gpu_check.json go")
    parser.add_argument("--skip-series", action="store_true", help="leave out the default series (about a minute)")
    args = parser.parse_args(argv)
    reason = no_cuda_reason()
    if reason:
        print(f"error: {reason}", file=sys.stderr)
        return 2
    import torch

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    rows: list[tuple[str, str, str]] = []
    ok, s, text = step("cuda tests", [py, "-m", "pytest", "-m", "cuda", "-ra", "tests/test_cuda.py"], out / "tests.log")
    summary = re.findall(r"=+ (.*) in [\d.]+s", text)
    rows.append(("CUDA tests", "pass" if ok else "FAIL", summary[-1] if summary else f"{s:.0f} s"))
    ok, s, text = step("speed", [py, "benchmarks/speed.py", "--device", "cuda", "--out", str(out / "speed")],
                       out / "speed.log")
    speed = out / "speed" / "speed.json"
    figures = json.loads(speed.read_text()) if ok and speed.exists() else {}
    rows.append(("speed --device cuda", "pass" if ok else "FAIL", f"{s:.0f} s; {out / 'speed' / 'speed.json'}"))
    if not args.skip_series:
        ok, s, text = step("default series", [py, "-m", "anomalymap_helpers", "run", "--results", str(out / "series"),
                                              "-p", "device", "cuda"], out / "series.log")
        metrics = out / "series" / "metrics.json"
        auc = json.loads(metrics.read_text()).get("roc_auc") if metrics.exists() else None
        rows.append(("default series on cuda", "pass" if ok else "FAIL",
                     f"{s:.1f} s, ROC-AUC {auc:.3f}" if auc is not None else f"{s:.1f} s"))
    name = torch.cuda.get_device_name(0)
    print(f"\n{name}, torch {torch.__version__} (CUDA {torch.version.cuda})")
    print(f"| {'check':<24} | result | figures |\n|{'-' * 26}|--------|---------|")
    for check, result, detail in rows:
        print(f"| {check:<24} | {result:<6} | {detail} |")
    (out / "gpu_check.json").write_text(json.dumps({"gpu": name, "rows": rows, "speed": figures}, indent=2))
    return 0 if all(r[1] == "pass" for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
