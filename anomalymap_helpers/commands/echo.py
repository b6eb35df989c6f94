"""What the runner prints while a notebook runs: the notebook's own output lines, prefixed.

papermill hands the kernel's stdout and stderr to file-like objects as they arrive;
:class:`NotebookEcho` is one. It prints each complete line once, prefixed with the
notebook's number, so the terminal shows what a notebook is doing (notebook 02 prints
its epochs, loss, images/s and time left) and a log file stays readable: no carriage
returns, no progress-bar redraws.
"""

from __future__ import annotations

from collections.abc import Callable


class NotebookEcho:
    """A file-like sink that echoes whole lines as ``"  02 | line"``.

    Args:
        label: The prefix, e.g. ``"02"``.
        echo: Where each line goes.
        marker: Put after the label, e.g. ``"|"`` for stdout and ``"!"`` for stderr.
    """

    def __init__(self, label: str, echo: Callable[[str], None], marker: str = "|") -> None:
        self.label, self.echo, self.marker = label, echo, marker
        self._pending = ""
        self.lines: list[str] = []

    def write(self, text: str) -> int:
        self._pending += text.replace("\r\n", "\n").replace("\r", "\n")
        *done, self._pending = self._pending.split("\n")
        for line in done:
            if line.strip():
                self.lines.append(line)
                self.echo(f"  {self.label} {self.marker} {line.rstrip()}")
        return len(text)

    def flush(self) -> None:
        """Lines are echoed as they complete; a partial line waits for its end."""

    def close(self) -> None:
        """Echo what is left of an unfinished line."""
        if self._pending.strip():
            self.write("\n")
