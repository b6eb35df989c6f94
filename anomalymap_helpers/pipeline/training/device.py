"""Device and precision, chosen in one place.

``device="auto"`` picks CUDA when there is one. With ``amp=True`` training and
scoring use fp16 autocast with a GradScaler on CUDA, bf16 autocast on CPUs with
native bf16 support, and fp32 otherwise; ``channels_last`` is used on every
device because it speeds the convolutions up on both.

What runs in which precision (measured with ``benchmarks/precision_report.py`` on the
default run; docs/benchmarks.md, "Which precision each computation needs"):

- **Mixed** (bf16/fp16 autocast): the network's own passes: the training step's forward
  and backward, and the encoder and decoder passes that make reconstructions, latent
  codes and feature maps. Rounding there moves every score by the same small relative
  amount (a few of bf16's 2^-8 steps), which no verdict is sensitive to as a rule.
- **fp32, always**: everything computed *from* the network's outputs. Each output is cast
  with ``.float()`` before any arithmetic: the per-pixel maps and their blur, every image
  score, the normalisation of codes and feature maps, the nearest-neighbour searches of
  the kNN reference set (a neighbour swapped by rounding would change a map and a
  verdict), the threshold and the metrics. The optimizer's master weights stay fp32.

On a CPU the choice can be forced with ``ANOMALYMAP_CPU_PRECISION`` (:data:`PRECISION_ENV`):
``bf16`` takes bf16 autocast even where the CPU has no native bf16 (PyTorch emulates it,
slowly: what the tests use to run the bf16 path on any machine), ``fp32`` takes fp32 even
where it has, and ``auto`` (the default) takes bf16 exactly where it is native.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import warnings
from dataclasses import dataclass

import torch

from anomalymap_helpers.errors import ParameterError


@dataclass(frozen=True)
class Precision:
    """The numeric setup of a device.

    Attributes:
        name: ``"fp16"``, ``"bf16"`` or ``"fp32"``.
        device_type: ``"cuda"`` or ``"cpu"``.
    """

    name: str
    device_type: str

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype, or None for plain fp32."""
        return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.name)

    @property
    def use_grad_scaler(self) -> bool:
        """fp16 needs loss scaling; bf16 has fp32's range and does not."""
        return self.name == "fp16"

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        """An autocast context for this precision (a no-op for fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` into a torch device.

    Raises:
        ParameterError: the value is unknown, or asks for CUDA where there is none.
    """
    name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ParameterError(
                f"device={device!r}, but CUDA is not available on this machine "
                f"(torch {torch.__version__} sees no GPU): use device='cpu', "
                "or device='auto' to take a GPU only where there is one"
            )
        index = name.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise ParameterError(
                f"device={device!r}: this machine has {torch.cuda.device_count()} CUDA "
                "device(s); use 'cuda' or 'cuda:N' with N below that"
            )
        return torch.device(name)
    raise ParameterError(f"device={device!r} is not known: use 'auto', 'cpu', 'cuda' or 'cuda:N'")


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
_RETAINED = False


def retain_freed_memory() -> bool:
    """Let glibc keep freed tensor memory for reuse instead of returning it to the OS.

    Each CPU training step allocates and frees activations of 1-30 MB. glibc's
    malloc serves blocks that large with ``mmap`` and unmaps them on free, so every
    step faults all of that memory in again (about 4,000 page faults per step of
    batch 256, a tenth of its time). Raising the mmap threshold to 32 MiB (the
    largest every glibc accepts) and the trim threshold to 256 MiB keeps those
    blocks in the heap for the next step, as jemalloc or tcmalloc would. The
    process keeps up to 256 MiB it is not using. Called by the training and scoring
    paths on CPU; a no-op after the first call and where the C
    library is not glibc.

    Returns:
        Whether the settings are in effect.
    """
    global _RETAINED
    if not _RETAINED and platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        try:
            libc = ctypes.CDLL(None)
            _RETAINED = bool(libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)) and bool(
                libc.mallopt(_M_TRIM_THRESHOLD, 256 << 20)
            )
        except (OSError, AttributeError):
            _RETAINED = False
    return _RETAINED


def cpu_supports_bf16() -> bool:
    """Whether this CPU runs bf16 natively (oneDNN's check: AVX-512 BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


PRECISION_ENV = "ANOMALYMAP_CPU_PRECISION"
CPU_PRECISIONS = ("auto", "bf16", "fp32")


def cpu_precision_setting() -> str:
    """``$ANOMALYMAP_CPU_PRECISION`` (``auto``, ``bf16`` or ``fp32``; unset or empty: ``auto``).

    Raises:
        ParameterError: another value.
    """
    value = os.environ.get(PRECISION_ENV, "").strip().lower() or "auto"
    if value not in CPU_PRECISIONS:
        raise ParameterError(
            f"{PRECISION_ENV}={os.environ[PRECISION_ENV]!r} is not known: use one of {list(CPU_PRECISIONS)} "
            "(auto: bf16 where the CPU has it natively) or unset it"
        )
    return value


def cpu_mixed_precision() -> bool:
    """Whether ``amp=True`` on the CPU means bf16 autocast here: native bf16, or forced by
    ``$ANOMALYMAP_CPU_PRECISION=bf16`` (emulated where not native)."""
    setting = cpu_precision_setting()
    return cpu_supports_bf16() if setting == "auto" else setting == "bf16"


def resolve_precision(device: torch.device, amp: bool = True, *, warn: bool = True) -> Precision:
    """Choose the precision for ``device``.

    Args:
        device: The resolved device.
        amp: Ask for mixed precision. Where the device cannot use it, fp32 is
            chosen and (if ``warn``) a warning says so.
        warn: Whether to warn on a fallback.
    """
    if not amp:
        return Precision("fp32", device.type)
    if device.type == "cuda":
        return Precision("fp16", "cuda")
    if device.type == "cpu" and cpu_mixed_precision():
        return Precision("bf16", "cpu")
    if device.type == "cpu" and cpu_precision_setting() == "fp32":
        return Precision("fp32", "cpu")  # asked for by name: nothing to warn of
    if warn:
        warnings.warn(
            f"amp=True, but {device} has no native bf16 or fp16 support: using fp32 "
            "(pass amp=False to silence this warning)",
            stacklevel=2,
        )
    return Precision("fp32", device.type)


def inference_precision(device: torch.device) -> Precision:
    """The precision of the network's passes in every inference path on ``device``: mixed where it
    is native (or forced, see :data:`PRECISION_ENV`), silently fp32 elsewhere. What is computed
    from those passes is fp32 whatever this says (the module's docstring)."""
    return resolve_precision(device, True, warn=False)


def precision_note(precision: Precision, amp: bool) -> str:
    """Why ``precision`` was chosen, for the line a run prints (empty where nothing needs saying)."""
    if precision.device_type != "cpu" or not amp:
        return ""
    setting, native = cpu_precision_setting(), cpu_supports_bf16()
    if precision.name == "bf16" and not native:
        return f" (emulated: {PRECISION_ENV}=bf16 on a CPU without native bf16, slowly)"
    if precision.name == "fp32" and setting == "fp32":
        return f" ({PRECISION_ENV}=fp32)"
    if precision.name == "fp32":
        return " (amp=True, but this CPU has no native bf16)"
    return ""
