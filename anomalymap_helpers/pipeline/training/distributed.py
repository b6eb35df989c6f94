"""Training in several processes with PyTorch's own engine: ``torchrun`` and DistributedDataParallel.

``torchrun --standalone --nproc-per-node N -m anomalymap_helpers train --results DIR`` starts N
processes; each joins one process group (``gloo`` on CPU, ``nccl`` on CUDA, one GPU per
process), and :func:`anomalymap_helpers.pipeline.training.train` then gives each its share of
every global batch (``batch_size`` images whatever N is), averages the gradients with
DistributedDataParallel, and lets rank 0 alone write checkpoints and history.

Notebook 02 with ``nproc > 1`` runs that command as a subprocess (:func:`launch`) and
streams its lines into the notebook: starting worker processes from inside a Jupyter
kernel is a known source of hangs, a separate ``torchrun`` is not.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from anomalymap_helpers.errors import ParameterError, TrainingError
from anomalymap_helpers.pipeline.training.device import resolve_device


@dataclass(frozen=True)
class World:
    """This process's place among the training processes.

    Attributes:
        rank: 0 ... size - 1; rank 0 writes the run's files.
        size: How many processes train together (1 without torchrun).
        local_rank: The rank on this machine (which GPU this process takes).
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Whether this process writes files and prints progress."""
        return self.rank == 0


def world() -> World:
    """The current process group's :class:`World` (one process when there is none)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    return World()


def under_torchrun() -> bool:
    """Whether this process was started by ``torchrun`` (it sets ``TORCHELASTIC_RUN_ID`` and ``WORLD_SIZE``)."""
    return "TORCHELASTIC_RUN_ID" in os.environ and "WORLD_SIZE" in os.environ


def cpu_count() -> int:
    """The CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def check_nproc(nproc: int, device: str = "auto") -> None:
    """Refuse more training processes than the device has: CPU cores on CPU, GPUs on CUDA.

    Raises:
        ParameterError: ``nproc`` is below 1 or above what the machine has; the message
            says how many it has.
    """
    if not isinstance(nproc, int) or isinstance(nproc, bool) or nproc < 1:
        raise ParameterError(f"nproc={nproc!r}: use a whole number of at least 1")
    if nproc == 1:
        return
    target = resolve_device(device)
    if target.type == "cuda":
        if target.index is not None:
            raise ParameterError(
                f"nproc={nproc} with device={device!r}: several processes take one GPU each; "
                "use device='cuda' or 'auto'"
            )
        have = torch.cuda.device_count()
        if nproc > have:
            raise ParameterError(f"nproc={nproc}: this machine has {have} GPU(s); use nproc <= {have}")
    else:
        have = cpu_count()
        if nproc > have:
            raise ParameterError(
                f"nproc={nproc}: this machine has {have} CPU core(s) for this process; use nproc <= {have}"
            )


@contextmanager
def process_group(device: str = "auto") -> Iterator[tuple[World, torch.device]]:
    """Join torchrun's process group for the length of the block; one process without torchrun.

    Yields:
        This process's :class:`World` and its device (``cuda:<local rank>`` on CUDA).
    """
    target = resolve_device(device)
    if not under_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        yield World(), target
        return
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if target.type == "cuda":
        target = torch.device("cuda", local_rank)
        torch.cuda.set_device(target)
        dist.init_process_group("nccl", device_id=target)
    else:
        dist.init_process_group("gloo")
    try:
        yield world(), target
    finally:
        dist.destroy_process_group()


def exit_worker(code: int | None) -> None:
    """End a torchrun worker with ``code`` once its work is done, skipping the interpreter's teardown.

    With several processes a gloo worker that has destroyed its process group still aborts now and
    then while the interpreter finalizes ("terminate called without an active exception", SIGABRT,
    no Python frame left): 4 of 60 two-process runs on a loaded 2-core CPU
    (``benchmarks/torchrun_exits.py``), and torchrun then reports the run as failed although rank 0
    had written everything. Every file is closed by then (written whole and renamed into place),
    so the worker flushes its output and leaves with :func:`os._exit`. Without torchrun, or in one
    process, it returns and the caller exits as usual.
    """
    if not under_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return
    for stream in (sys.stdout, sys.stderr):
        with suppress(OSError, ValueError):  # a closed or broken pipe: nothing more can be said
            stream.flush()
    os._exit(code or 0)  # None, as sys.exit takes it, is success


def all_sum(value: torch.Tensor) -> torch.Tensor:
    """``value`` summed over the processes (itself with one process); a new tensor."""
    out = value.detach().clone()
    if world().size > 1:
        dist.all_reduce(out)
    return out


def command(results_dir: str | os.PathLike[str], params: Mapping[str, Any], nproc: int) -> list[str]:
    """The ``torchrun`` command line that trains ``results_dir`` with ``params`` in ``nproc`` processes."""
    import yaml

    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
        "-m", "anomalymap_helpers", "train", "--results", str(results_dir),
    ]
    for name, value in params.items():  # as YAML, which the command reads back (-p mnist_dir "''" is "")
        text = '""' if value == "" else yaml.safe_dump(value, default_flow_style=True, width=1 << 20).strip()
        cmd += ["-p", name, text.removesuffix("\n...").strip()]
    return cmd


def launch(
    results_dir: str | os.PathLike[str],
    params: Mapping[str, Any],
    nproc: int,
    *,
    echo: Callable[[str], None] = lambda line: print(line, flush=True),
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> None:
    """Train with ``torchrun`` in ``nproc`` processes, echoing its output line by line.

    Each process gets ``OMP_NUM_THREADS`` = cores / ``nproc``, so they do not fight over
    the cores. Ctrl-C (or a notebook's interrupt) is passed on to torchrun, which stops
    the workers; rank 0 has then saved the last complete epoch.

    Raises:
        TrainingError: torchrun ended with an error; the message names the failing rank and
            its error, read from the output.
    """
    threads = str(max(1, cpu_count() // nproc))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "PYTHONUNBUFFERED": "1", **(env or {})}
    cmd = command(results_dir, params, nproc)
    tail: deque[str] = deque(maxlen=60)
    echo(f"$ OMP_NUM_THREADS={threads} {shlex.join(cmd)}")
    if cwd is None:  # the project root, so `-m anomalymap_helpers` imports this checkout
        from anomalymap_helpers.files.paths import project_root

        cwd = project_root()
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env=env, cwd=cwd
    ) as proc:
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                line = line.rstrip("\n")
                tail.append(line)
                echo(line)
            code = proc.wait()
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
    if code != 0:
        said = [t for t in tail if t.startswith("rank ") and " failed: " in t] or [
            t for t in tail if t.startswith("error: ")
        ]
        why = said[0] if said else "\n".join(list(tail)[-15:])
        raise TrainingError(f"training with torchrun in {nproc} processes ended with status {code}: {why}")


def rank_failed(exc: BaseException) -> str:
    """The line a failing rank prints before torchrun ends the others."""
    return f"rank {world().rank} of {world().size} failed: {type(exc).__name__}: {exc}"

