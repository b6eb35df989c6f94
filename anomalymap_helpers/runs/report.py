"""What a run was made with: seed, device, precision and package versions."""

from __future__ import annotations

import platform
import sys
import time
from importlib import metadata
from typing import Any

from anomalymap_helpers.files import storage
from anomalymap_helpers.files.paths import RunFiles

PACKAGES = ("torch", "torchvision", "numpy", "scikit-learn", "matplotlib", "seaborn", "safetensors", "papermill")


def versions() -> dict[str, str]:
    """Python's version and those of the main packages."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def record(files: RunFiles, step: str, **info: Any) -> None:
    """Add ``step``'s settings (seed, device, precision...) to the run's ``environment.json``."""
    path = files.environment
    data = storage.read_json(path) if path.exists() else {}
    data["versions"] = versions()
    data["platform"] = f"{platform.platform()} ({sys.implementation.name})"
    data.setdefault("steps", {})[step] = {**info, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    storage.write_json(path, data)
