"""One run folder opened for the notebooks after training (03, 04, 05) and the commands.

``Run.open(results_dir, ...)`` reads the splits that 01 wrote and chooses the device;
the model that 02 wrote and the evaluation that 03 wrote are read when first asked
for, each with a message naming the notebook to run when it is missing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cache, cached_property
from typing import TYPE_CHECKING, Any

import torch

from anomalymap_helpers.errors import DataError
from anomalymap_helpers.files import storage
from anomalymap_helpers.files.paths import DEFAULT_DATA_DIR, RunFiles
from anomalymap_helpers.pipeline import data
from anomalymap_helpers.pipeline.training import checkpoint
from anomalymap_helpers.pipeline.training.device import resolve_device

if TYPE_CHECKING:
    from collections.abc import Callable

    from anomalymap_helpers.pipeline import scoring
    from anomalymap_helpers.pipeline.explorer import Explorer, LatentExplorer
    from anomalymap_helpers.pipeline.models import ConvAutoencoder


@dataclass
class Run:
    """A run folder with its splits, and its model and evaluation on demand.

    Attributes:
        files: The run's files.
        splits: ``{"train", "val", "test"}``: the images of each split.
        manifest: What notebook 01 wrote about the splits (``splits.json``).
        device: Where the model runs.
    """

    files: RunFiles
    splits: dict[str, data.Split]
    manifest: dict[str, Any]
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    _scorers: dict[float, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def open(
        cls,
        results_dir: str | os.PathLike[str],
        *,
        data_dir: str = DEFAULT_DATA_DIR,
        mnist_dir: str | None = None,
        device: str = "auto",
    ) -> Run:
        """Open ``results_dir`` (made by notebook 01 at least) on ``device``."""
        files = RunFiles.at(results_dir)
        target = resolve_device(device)
        splits, manifest = data.load_splits(files, data_dir=data_dir, mnist_dir=mnist_dir)
        return cls(files, splits, manifest, target)

    @cached_property
    def model(self) -> ConvAutoencoder:
        """The trained autoencoder (``model.safetensors``, written by notebook 02), in eval mode."""
        return checkpoint.load_model(self.files.require(self.files.model, "02_training"), device=self.device)

    def reference_latents(self) -> torch.Tensor:
        """The ``(N, latent_dim)`` latents of the normal training images: the kNN reference set.

        Encoded once per model and kept in ``reference_latents.safetensors``, keyed by the
        SHA-256 of ``model.safetensors`` and of the training split's indices: a retrained
        model (or a new split) makes them again, never reuses stale ones.
        """
        import hashlib

        from safetensors import safe_open
        from safetensors.torch import save_file

        from anomalymap_helpers.pipeline import scoring

        model_file = self.files.require(self.files.model, "02_training")
        train = self.splits["train"]
        key = {
            "model_sha256": hashlib.sha256(model_file.read_bytes()).hexdigest(),
            "train_indices_sha256": hashlib.sha256(train.indices.numpy().tobytes()).hexdigest(),
        }
        path = self.files.reference_latents
        if path.exists():
            try:
                with safe_open(str(path), framework="pt") as fh:
                    if fh.metadata() == key:
                        return fh.get_tensor("latents")
            except (OSError, ValueError, RuntimeError, KeyError):
                pass  # unreadable: made again below
        latents = scoring.encode(self.model, train.images)
        with storage.atomic_path(path) as tmp:
            save_file({"latents": latents.contiguous()}, str(tmp), metadata=key)
        return latents

    def scorer(self, blur: float | None = None) -> scoring.Scorer:
        """The :class:`~anomalymap_helpers.pipeline.scoring.Scorer` notebook 03 fits (made once per blur):
        on the training normals and their cached latents, standardised on the validation normals
        scored with ``blur`` (default: 03's ``map_blur``)."""
        from anomalymap_helpers.pipeline import scoring

        blur = float(self.evaluation.get("map_blur", 0.0)) if blur is None else float(blur)
        if blur not in self._scorers:
            val = scoring.score(self.model, self.splits["val"].images, blur=blur)
            self._scorers[blur] = scoring.Scorer(self.model, self.splits["train"].images, val,
                                                 reference=self.reference_latents(), dataset=self.dataset)
        return self._scorers[blur]

    def predict(self, images: Any, **options: Any) -> Any:
        """Scores, verdicts and maps of new images with this run's detector: files, a folder, or an
        array / tensor (see :func:`anomalymap_helpers.runs.predictions.predict`, which takes ``options``)."""
        from anomalymap_helpers.runs.predictions import predict

        return predict(self, images, **options)

    @cached_property
    def evaluation(self) -> dict[str, Any]:
        """What notebook 03 wrote to ``metrics.json``: the score method, threshold and metrics."""
        return storage.read_json(self.files.require(self.files.metrics, "03_evaluation"))

    @cached_property
    def test_scores(self) -> torch.Tensor:
        """The ``(N,)`` scores notebook 03 gave the test split, in the split's order."""
        from anomalymap_helpers.pipeline import scoring

        indices, scores = scoring.read_scores(self.files.require(self.files.scores, "03_evaluation"), "test")
        if not torch.equal(indices, self.splits["test"].indices):
            raise DataError(
                f"the scores in {self.files.scores} are of other splits than {self.files.splits}: "
                "run notebook 03_evaluation again"
            )
        return scores

    @property
    def dataset(self) -> str:
        """``"mnist"``, ``"fashion-mnist"`` or ``"folder"``."""
        return str(self.manifest.get("dataset", "mnist")).lower()

    @property
    def model_kind(self) -> str:
        """``"ae"``, ``"vae"`` or ``"restore"``: the model notebook 02 trained (read from the checkpoint's metadata only)."""
        return _model_kind(self.files)

    def score_method(self, score_method: str = "auto") -> str:
        """The score ``score_method`` names for this run's data (``"auto"``: see :func:`scoring.default_method`).

        Raises:
            ParameterError: an unknown method, or ``elbo`` for an autoencoder's run.
        """
        from anomalymap_helpers.pipeline import scoring

        return scoring.check_method(score_method, self.dataset, self.model_kind)

    def map_blur(self, map_blur: float = -1.0) -> float:
        """The maps' Gaussian sigma in pixels for this run's data (-1: see :func:`scoring.blur_sigma`)."""
        from anomalymap_helpers.pipeline import scoring

        return scoring.blur_sigma(map_blur, self.dataset, self.splits["test"].images.shape[-1])

    def explorer(self, scale: str = "per-image") -> Explorer:
        """The heatmap explorer of the test split, with the score, threshold and map blur of notebook 03."""
        from anomalymap_helpers.pipeline import scoring
        from anomalymap_helpers.pipeline.explorer import Explorer

        test = self.splits["test"]
        blur = float(self.evaluation.get("map_blur", 0.0))
        folder = self.dataset == "folder"  # a run folder reused for MNIST may still hold a folder run's names
        names = storage.read_json(self.files.image_names) if folder and self.files.image_names.exists() else None
        score_name = self.evaluation.get("score", "mse")
        maps = self.score_maps(score_name)
        train = self.splits["train"]

        @cache
        def explained(i: int) -> tuple[Any, int]:  # one image's score map, and its best normal match (patch-knn)
            if isinstance(maps, scoring.PatchKnn):
                full, match = maps.explain(test.images[i : i + 1])
                return full[0, 0].numpy(), int(match[0])
            return maps(test.images[i : i + 1])[0, 0].numpy(), -1

        def best_match(i: int) -> tuple[Any, str]:
            m = explained(i)[1]
            return train.images[m], f"training #{int(train.indices[m])}"

        return Explorer(
            scoring.score(self.model, test.images, blur=blur),  # reconstructions and maps, computed once
            test.labels,
            test.is_anomaly,
            self.evaluation["threshold"],
            scores=self.test_scores,
            score_name=score_name,
            indices=test.indices,
            scale=scale,
            class_names=test.class_names,
            masks=test.masks,
            names=names,
            rules=self.threshold_rules(),
            score_maps=None if maps is None else lambda i: explained(i)[0],
            nearest=best_match if isinstance(maps, scoring.PatchKnn) else None,
            predict=self._predict_one,
        )

    def _predict_one(self, path: str) -> tuple[Any, Any]:
        """An image file's :class:`~anomalymap_helpers.runs.predictions.Predictions` and its best normal
        match (a training image, where the score has one): what the explorer's upload control shows."""
        p = self.predict(path)
        return p, p.best_match(0, self.splits["train"].images) if len(p) else None

    def score_maps(self, method: str) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The map of ``method`` itself where it is not read off the reconstruction error, else None.

        ``patch-knn``'s (:class:`~anomalymap_helpers.pipeline.scoring.PatchKnn`: the image score is
        its largest cell) and ``latent-knn``'s (:class:`~anomalymap_helpers.pipeline.scoring.LatentKnnMaps`),
        both over the cached reference set; the restore model's segmentation; ``nearest-patch``'s and
        ``two-signal``'s, made by the run's :meth:`scorer` (with 03's blur). Call it on images
        ``(B, C, H, W)`` for ``(B, 1, H, W)`` maps.
        """
        from anomalymap_helpers.pipeline import scoring

        entry = scoring.REGISTRY.get(method)
        if entry is not None and entry.own_map is None and method in scoring.NEEDS_MEMORY:
            scorer = self.scorer()
            blur = float(self.evaluation.get("map_blur", 0.0))
            return lambda x: scoring.pixel_maps(scoring.score(self.model, x, blur=blur), method, scorer)
        if entry is None or entry.own_map is None:
            return None
        return entry.own_map(self.model, self.splits["train"].images, self.reference_latents())

    def check_beside(self, other_dir: str | os.PathLike[str]) -> RunFiles:
        """Refuse another run folder made on a different split (or not scored by 03); return its files."""
        other = RunFiles.at(other_dir)
        for path, step in ((other.splits, "01_data"), (other.comparison, "03_evaluation")):
            other.require(path, step)
        if other.splits.read_bytes() != self.files.splits.read_bytes():
            raise DataError(
                f"compare_run={str(other_dir)!r} was made on another split than {self.files.root} (its splits.safetensors "
                "differs: another seed, classes or caps in 01): rerun it with this run's notebook-01 parameters"
            )
        return other

    def beside(self, other_dir: str | os.PathLike[str]) -> Any:
        """Each score's ROC-AUC and average precision here and in ``other_dir`` (same split), as a DataFrame.

        Both runs' ``score_comparison.csv`` (03's table); the columns name each run's model.
        """
        import pandas as pd

        other = self.check_beside(other_dir)
        kind = {"this run": self.model_kind, str(other_dir): _model_kind(other)}
        tables = []
        for (name, model), files in zip(kind.items(), (self.files, other), strict=True):
            table = pd.read_csv(files.comparison).set_index("method")[["roc_auc", "average_precision"]]
            tables.append(table.add_prefix(f"{name} ({model}) "))
        return tables[0].join(tables[1], how="outer").reset_index()

    def latent_explorer(self, positions: Any = None, embedding: Any = None, scale: str = "per-image") -> LatentExplorer:
        """A t-SNE map of test images linked to :meth:`explorer` (made when the live view first needs it).

        Args:
            positions: ``(P,)`` positions in the test split of the points; with ``embedding``
                ``(P, 2)`` their coordinates. Default: notebook 05's, from ``latent_embeddings.csv``.
            scale: The heatmap explorer's colour scale.
        """
        import csv
        from functools import partial

        from anomalymap_helpers.pipeline.explorer import LatentExplorer

        if positions is None or embedding is None:
            path = self.files.require(self.files.embeddings, "05_latent")
            with open(path, newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if r["split"] == "test"]
            where = {int(i): k for k, i in enumerate(self.splits["test"].indices.tolist())}
            missing = [r["index"] for r in rows if int(r["index"]) not in where]
            if missing:
                raise DataError(f"{path} names test images not in this run's split (e.g. {missing[0]}): run notebook 05 again")
            positions = [where[int(r["index"])] for r in rows]
            embedding = [[float(r["tsne_x"]), float(r["tsne_y"])] for r in rows]
        test = self.splits["test"]
        positions = torch.as_tensor(positions, dtype=torch.long)
        if len(positions) and (int(positions.min()) < 0 or int(positions.max()) >= len(test.labels)):
            raise DataError(f"positions must lie in 0..{len(test.labels) - 1}, this run's test images")
        return LatentExplorer(
            partial(self.explorer, scale), positions.numpy(), embedding,
            labels=test.labels[positions].numpy(), is_anomaly=test.is_anomaly[positions].numpy(),
            class_names=test.class_names,
        )

    def threshold_rules(self) -> dict[str, float]:
        """Where each threshold rule puts the line for notebook 03's score (its settings, scores alone).

        ``percentile`` and ``fpr`` from the validation normals' scores, ``otsu`` from those and
        the test scores together (see :func:`~anomalymap_helpers.pipeline.evaluation.metrics.choose_threshold`).
        """
        from anomalymap_helpers.errors import ParameterError
        from anomalymap_helpers.pipeline import scoring
        from anomalymap_helpers.pipeline.evaluation import metrics

        ev = self.evaluation
        _, val = scoring.read_scores(self.files.require(self.files.scores, "03_evaluation"), "val")
        settings = {"threshold_percentile": ev.get("threshold_percentile", 99.0), "target_fpr": ev.get("target_fpr", 0.01)}
        rules = {}
        for rule in metrics.THRESHOLD_RULES:
            try:
                rules[rule] = metrics.choose_threshold(rule, val.numpy(), self.test_scores.numpy(), **settings)
            except ParameterError:  # e.g. Otsu on scores that are all equal
                continue
        return rules


def _model_kind(files: RunFiles) -> str:
    """``"ae"`` or ``"vae"``: the model in ``files`` (read from its checkpoint's metadata only)."""
    from anomalymap_helpers.pipeline.models import ModelConfig

    meta = checkpoint.read_metadata(files.require(files.model, "02_training"))
    return ModelConfig(architecture=meta.get("model_config", {}).get("architecture", "conv-ae-v1")).model
