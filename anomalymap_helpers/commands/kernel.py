"""One Jupyter kernel for the whole series: started once, its namespace cleared between notebooks.

Each notebook of the series starts with a second of kernel start-up and about three of
``import torch``; run headless, five fresh kernels pay that five times. The runner
therefore runs the notebooks in one kernel (:class:`SharedKernel`), clearing it between
notebooks as a restart would for the notebook's own names: ``%reset -f`` (every variable
and import name gone; modules stay loaded, so importing them again is instant), open
figures closed, the execution count back at 1. What a notebook does not set up itself it
cannot get from the one before: ``run --kernel-per-notebook`` runs each in a fresh kernel,
as JupyterLab and nbval do, and the tests check that both give the same results.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

# nbformat validates notebooks with jsonschema, whose format checkers import rfc3987_syntax,
# which builds some 35 Lark parsers on import: about 2 s of every `run`, for the "iri"
# string format that no notebook schema uses (python-jsonschema/jsonschema#1428). Where
# jsonschema is not loaded yet, this process goes without that one checker.
if "jsonschema" not in sys.modules:
    sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[assignment]

from papermill.clientwrap import PapermillNotebookClient
from papermill.engines import NBClientEngine, papermill_engines

from anomalymap_helpers.errors import AnomalyMapError

ENGINE = "anomalymap-shared-kernel"
# Run silently between notebooks, outside the history: the next notebook's cells count from 1.
RESET = """\
get_ipython().run_line_magic("reset", "-f")
import gc as _gc, sys as _sys
if "matplotlib.pyplot" in _sys.modules:
    _sys.modules["matplotlib.pyplot"].close("all")
_gc.collect()
del _gc, _sys
get_ipython().execution_count = 1
"""


class SharedKernel:
    """A kernel that several notebooks run in, one after another (see the module's note).

    Use as a context manager; pass :meth:`engine_kwargs` to ``papermill.execute_notebook``
    and call :meth:`reset` between notebooks. The kernel starts with the first notebook
    (with that call's arguments) and is shut down on leaving the context.
    """

    def __init__(self, kernel_name: str = "python3") -> None:
        from jupyter_client import KernelManager

        self.km = KernelManager(kernel_name=kernel_name)

    def engine_kwargs(self) -> dict[str, Any]:
        """The keyword arguments that make ``papermill.execute_notebook`` use this kernel."""
        return {"engine_name": ENGINE, "km": self.km}

    def reset(self, timeout: float = 60.0) -> None:
        """Clear the kernel's namespace and figures for the next notebook (nothing if not started)."""
        if not self.km.has_kernel:
            return
        kc = self.km.client()
        kc.start_channels()
        try:  # the kernel has just run a notebook: no need to wait for it to be ready
            msg_id = kc.execute(RESET, silent=True, store_history=False)
            reply = kc.get_shell_msg(timeout=timeout)
            while reply["parent_header"].get("msg_id") != msg_id:
                reply = kc.get_shell_msg(timeout=timeout)
        finally:
            kc.stop_channels()
        if reply["content"]["status"] != "ok":
            raise AnomalyMapError(f"could not clear the kernel between notebooks: {reply['content'].get('evalue')}")

    def close(self) -> None:
        """Shut the kernel down (if it was started)."""
        if self.km.has_kernel:
            self.km.shutdown_kernel(now=True)

    def __enter__(self) -> SharedKernel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SharedKernelEngine(NBClientEngine):
    """papermill's nbclient engine on a kernel it is given (``km=``), which it leaves running."""

    @classmethod
    def execute_managed_notebook(
        cls,
        nb_man: Any,
        kernel_name: str,
        log_output: bool = False,
        stdout_file: Any = None,
        stderr_file: Any = None,
        start_timeout: int = 60,
        execution_timeout: int | None = None,
        **kwargs: Any,
    ) -> Any:
        for name in ("input_path", "timeout", "startup_timeout"):
            kwargs.pop(name, None)
        client = PapermillNotebookClient(
            nb_man,
            timeout=execution_timeout,
            startup_timeout=start_timeout,
            kernel_name=kernel_name,
            log=logging.getLogger("papermill"),
            log_output=log_output,
            stdout_file=stdout_file,
            stderr_file=stderr_file,
            **kwargs,
        )
        try:
            return client.execute()
        finally:
            if client.kc is not None:  # the kernel stays; this notebook's connection to it goes
                client.kc.stop_channels()


papermill_engines.register(ENGINE, SharedKernelEngine)
