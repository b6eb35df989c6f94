"""One writer per run folder: a second process that would write into a folder another is writing is
refused at once, naming the holder.

The writer holds an exclusive ``flock`` on ``<run folder>/.writer.lock`` and writes there who it is (pid,
command, since when). The kernel drops a lock with its process, however that ends, so a holder killed
with SIGKILL leaves only its note: the next writer gets the lock, finds the note, says it takes over,
and writes its own. The processes a writer starts (the runner's notebook kernels, torchrun's ranks, a
notebook's torchrun) inherit ``$ANOMALYMAP_RUN_LOCK`` and write under their parent's lock. Reading a
run folder (``Run.open``, the explorer) never takes it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from anomalymap_helpers.errors import AnomalyMapError

LOCK_NAME = ".writer.lock"
HOLDER_ENV = "ANOMALYMAP_RUN_LOCK"  # the lock file a parent process holds for the processes it starts


class BusyError(AnomalyMapError):
    """Another live process is writing the run folder."""


def _note(fd: int) -> dict[str, object]:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 4096).decode("utf-8", "replace").strip()
    try:
        note = json.loads(text) if text else {}
    except ValueError:
        note = {}
    return note if isinstance(note, dict) else {}


def _holder(note: dict[str, object]) -> str:
    since = note.get("since")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(since))) if isinstance(since, (int, float)) else "?"
    return f"pid {note.get('pid', '?')} ({note.get('command', '?')}, since {when})"


@contextmanager
def writing(root: str | os.PathLike[str], command: str) -> Iterator[None]:
    """Hold ``root``'s writer lock while the block runs (``command`` says who, e.g. ``"run"``).

    Raises:
        BusyError: another live process holds it; the message names it and the way out.
    """
    import fcntl

    folder = Path(root)
    path = folder / LOCK_NAME
    if os.environ.get(HOLDER_ENV) == str(path.resolve()):  # started by the holder: under its lock
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BusyError(
                f"{folder} is being written by {_holder(_note(fd))}: wait for it to finish or stop it, "
                f"or give this {command} another results folder"
            ) from None
        stale = _note(fd)
        if stale:
            print(f"taking over {path}: {_holder(stale)} ended without letting it go", file=sys.stderr)
        mine = {"pid": os.getpid(), "command": command, "since": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(mine) + "\n").encode(), 0)
        previous = os.environ.get(HOLDER_ENV)
        os.environ[HOLDER_ENV] = str(path.resolve())
        try:
            yield
        finally:
            if previous is None:
                os.environ.pop(HOLDER_ENV, None)
            else:
                os.environ[HOLDER_ENV] = previous
            os.ftruncate(fd, 0)  # let go: no note left behind
    finally:
        os.close(fd)  # the flock goes with the descriptor
