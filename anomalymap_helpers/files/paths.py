"""Where things live: the project root, the data folder and one run's files.

Notebooks run with their own folder as working directory in JupyterLab and
with the caller's under papermill; relative paths are therefore resolved
against the project root (the folder holding ``pyproject.toml`` and
``notebooks/``), so ``results/default`` means the same folder everywhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from anomalymap_helpers.errors import MissingInputError


def shown(name: str | os.PathLike[str]) -> str:
    """A file name as it can be printed: a name that is not valid UTF-8 (kept by Python as the bytes the
    operating system gives, ``surrogateescape``) with its odd bytes written ``\\xff``; others unchanged."""
    text = os.fspath(name)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return os.fsencode(text).decode("utf-8", "backslashreplace")


DEFAULT_RESULTS_DIR = "results/default"
DEFAULT_DATA_DIR = "data"


def project_root(start: str | os.PathLike[str] | None = None) -> Path:
    """Return the nearest folder at or above ``start`` that holds the project.

    Falls back to ``start`` (default: the working directory) when no project
    folder is found, e.g. when the package is used from elsewhere.
    """
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "anomalymap_helpers").is_dir():
            return folder
    return here


def resolve(path: str | os.PathLike[str]) -> Path:
    """Resolve ``path`` against the project root unless it is absolute."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else project_root() / p


@dataclass(frozen=True)
class RunFiles:
    """The files of one run folder, named once for every notebook.

    Attributes:
        root: The run folder, e.g. ``results/default``.
    """

    root: Path

    @classmethod
    def at(cls, results_dir: str | os.PathLike[str]) -> RunFiles:
        """The run folder ``results_dir``, resolved against the project root."""
        return cls(resolve(results_dir))

    splits = property(lambda self: self.root / "splits.safetensors")
    manifest = property(lambda self: self.root / "splits.json")
    images = property(lambda self: self.root / "images.safetensors")
    image_names = property(lambda self: self.root / "image_names.json")
    model = property(lambda self: self.root / "model.safetensors")
    model_config = property(lambda self: self.root / "model.json")
    reference_latents = property(lambda self: self.root / "reference_latents.safetensors")
    training_state = property(lambda self: self.root / "training_state.safetensors")
    history = property(lambda self: self.root / "training_history.csv")
    loss_plot = property(lambda self: self.root / "training_loss_plot.png")
    scores = property(lambda self: self.root / "reconstruction_errors.csv")
    metrics = property(lambda self: self.root / "metrics.json")
    comparison = property(lambda self: self.root / "score_comparison.csv")
    per_type = property(lambda self: self.root / "per_type.csv")
    histogram = property(lambda self: self.root / "error_histogram.png")
    roc = property(lambda self: self.root / "roc_curve.png")
    pr = property(lambda self: self.root / "pr_curve.png")
    heatmaps = property(lambda self: self.root / "heatmaps")
    tsne_plot = property(lambda self: self.root / "latent_space_tsne.png")
    embeddings = property(lambda self: self.root / "latent_embeddings.csv")
    environment = property(lambda self: self.root / "environment.json")
    notebooks = property(lambda self: self.root / "notebooks")

    def require(self, path: Path, step: str) -> Path:
        """Return ``path`` if it exists, else say which notebook makes it.

        Args:
            path: One of this run's files.
            step: The notebook that writes it, e.g. ``"02_training"``.

        Raises:
            MissingInputError: ``path`` does not exist.
        """
        if not path.exists():
            raise MissingInputError(
                f"no {path.name} at {path}: run notebook {step} first (with the same results_dir={str(self.root)!r})"
            )
        return path
