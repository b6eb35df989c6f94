"""One writer per run folder, with real processes: a second writer is refused at once and told who holds
the folder; a holder killed with SIGKILL leaves a note the next writer takes over; reading needs no lock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from anomalymap_helpers.files.lock import HOLDER_ENV, LOCK_NAME, BusyError, writing

ROOT = Path(__file__).resolve().parents[1]
# A real process that holds a folder's lock until its stdin closes (then lets go) or it is killed.
HOLD = "import sys; from anomalymap_helpers.files.lock import writing\nwith writing(sys.argv[1], 'run'):\n" \
       "    print('holding', flush=True); sys.stdin.read()"


def _holder(folder: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != HOLDER_ENV}
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], cwd=ROOT, env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "holding"
    return proc


def test_a_second_writer_is_refused_at_once_naming_the_holder(run_dir: Path, small_series: dict) -> None:
    holder = _holder(run_dir)
    try:
        args = [sys.executable, "-m", "anomalymap_helpers", "run", "--results", str(run_dir)]
        for name, value in small_series.items():
            args += ["-p", name, str(value)]
        env = {k: v for k, v in os.environ.items() if k != HOLDER_ENV}
        t0 = time.perf_counter()
        second = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 1, second.stdout + second.stderr
        assert time.perf_counter() - t0 < 30  # at once: no notebook ran
        assert f"is being written by pid {holder.pid} (run, since " in second.stderr
        assert "another results folder" in second.stderr and "01_data" not in second.stdout
        from anomalymap_helpers.runs.opened import Run

        assert Run.open(run_dir).evaluation["score"]  # reading needs no lock
    finally:
        holder.stdin.close()  # it lets go, leaving no note in the shared run folder
        assert holder.wait(timeout=60) == 0
    assert (run_dir / LOCK_NAME).read_text() == ""


def test_a_holder_killed_with_sigkill_is_taken_over_saying_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    holder = _holder(tmp_path)
    with pytest.raises(BusyError, match=f"pid {holder.pid} \\(run, since"), writing(tmp_path, "export"):
        pass
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == holder.pid  # its note is left behind
    with writing(tmp_path, "export"):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["command"] == "export"
        assert os.environ[HOLDER_ENV] == str((tmp_path / LOCK_NAME).resolve())  # what its children inherit
    assert f"taking over {tmp_path / LOCK_NAME}: pid {holder.pid} (run, since" in capsys.readouterr().err
    assert (tmp_path / LOCK_NAME).read_text() == "" and HOLDER_ENV not in os.environ  # let go, no note left
