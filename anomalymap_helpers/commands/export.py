"""The trained detector as one ONNX file: images in, anomaly maps and score out.

``python -m anomalymap_helpers export --results DIR [--out FILE.onnx] [--input uint8|float]``
writes a model that takes a batch of images as a user has them, ``N x C x H x W`` at
the run's size: ``uint8`` 0-255 (the default: what a PNG decodes to) or ``float``
0-1; the scaling to [0, 1] is part of the graph. It returns

- ``map``: ``N x 1 x H x W``, the anomaly map of notebook 03 (``|x - x̂|`` averaged
  over channels, blurred by the run's ``map_blur``);
- ``score``: ``N``, the image score of the run's score method. For ``latent-knn``,
  ``patch-knn`` and ``ensemble`` the reference set (the normal training images'
  unit-length latents; for ``patch-knn`` the images themselves too, as bytes, whose
  feature maps it compares; the ensemble's validation mean and spread) is a constant
  inside the graph, so the one file is all a user needs;
- ``score_map``: ``N x 1 x H x W``, for ``patch-knn`` its own map (upsampled from the
  encoder's grid, whose largest cell is the score); for ``segment`` (the restore model) its
  segmentation, the probability of damage per pixel; for ``nearest-patch`` and ``two-signal``
  their maps, whose memory of normal neighbourhoods (and, for ``two-signal``, the validation
  normals' calibration) is a constant inside the graph; for the other methods the same as ``map``.

Its metadata (``session.get_modelmeta().custom_metadata_map`` in onnxruntime) holds
the threshold of notebook 03, the score method, the image size and channels, the input
type, the class and defect-type names and the package versions.
"""

from __future__ import annotations

import json
import os
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from anomalymap_helpers.errors import MissingInputError, ParameterError
from anomalymap_helpers.files import storage
from anomalymap_helpers.pipeline import scoring
from anomalymap_helpers.pipeline.models import ConvAutoencoder, Model, ReferenceAutoencoder, SegmentationHead
from anomalymap_helpers.pipeline.scoring.patch_memory import PatchMemory, patch_maps
from anomalymap_helpers.pipeline.scoring.two_signal import two_signal_maps

INPUTS = ("uint8", "float")
OPSET = 18


class _Patches(nn.Module):
    """``patch-knn``'s comparison with the nearest normals inside the graph: the training images as bytes,
    their feature maps computed for the neighbours the shared search found, by the steps
    :class:`~anomalymap_helpers.pipeline.scoring.PatchKnn` is made of (``unit_cells``, ``smooth_cells``,
    ``lowest_peak``); PatchKnn's own gathering encodes and caches them in batches, which a graph cannot."""

    def __init__(self, features: nn.Module, grid: int, train_images: torch.Tensor | None, k: int, smooth: int) -> None:
        super().__init__()
        kept = torch.zeros(0, dtype=torch.uint8) if train_images is None else (train_images * 255).round().to(torch.uint8)
        self.register_buffer("train_images", kept)
        self.features, self.g, self.k, self.smooth = features, grid, min(k, max(1, len(kept))), smooth

    def forward(self, h: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
        """The best match's map on the grid ``(B, 1, g, g)`` of images whose last feature maps are ``h``."""
        near = neighbours[:, : self.k]
        theirs = self.train_images[near.flatten()].to(torch.float32) / 255.0
        mine = scoring.unit_cells(h)  # (B, L, 64)
        t = scoring.unit_cells(self.features(theirs)).view(mine.shape[0], self.k, *mine.shape[1:])
        cells = (t - mine[:, None]).norm(dim=3)  # (B, k, L): one map per normal
        best, _ = scoring.lowest_peak(scoring.smooth_cells(cells, self.g, self.smooth))
        return best[:, None]


class _Seen:
    """What a registry entry's ``compute`` sees of the detector, as it sees a Scorer: ``k``, ``topk``,
    ``patch.scores(images, neighbours=...)`` (which keeps the grid it scored, for ``score_map``),
    ``nearest_maps`` and ``two_signal_maps`` (nearest-patch's memory searched once)."""

    def __init__(self, detector: Detector, h: torch.Tensor) -> None:
        self.k, self.topk, self.patch, self._patches, self._h = detector.k, detector.topk, self, detector.patch, h
        self.grid: torch.Tensor | None = None
        self._detector, self._nearest = detector, None
        self.calibration = detector.calibration

    def nearest_maps(self, scored: scoring.Scored) -> torch.Tensor:
        if self._nearest is None:
            d = self._detector
            memories = [getattr(d, f"memory{j}") for j in range(len(d.memory_scales))]
            self._nearest = patch_maps(scored.images, memories, d.memory_units, d.memory_scales, d.memory_patch)
        return self._nearest

    def two_signal_maps(self, scored: scoring.Scored) -> torch.Tensor:
        return two_signal_maps(scored.segmentation, self.nearest_maps(scored), self.calibration)

    def scores(self, images: torch.Tensor, latents: torch.Tensor | None = None,
               neighbours: torch.Tensor | None = None) -> torch.Tensor:
        self.grid = self._patches(self._h, neighbours)
        return self.grid.flatten(1).amax(1)


class Detector(nn.Module):
    """Images to ``(map, score, score_map)``: the model in plain layers, the maps, and one score method
    as its registry entry computes it (:data:`~anomalymap_helpers.pipeline.scoring.REGISTRY`).

    The graph builds what the Scorer builds in eager mode, a
    :class:`~anomalymap_helpers.pipeline.scoring.Scored` of the images and the one nearest-normal
    search, and hands them to the entry's ``compute`` (``ensemble``: to its parts, then
    :func:`~anomalymap_helpers.pipeline.scoring.ensemble_scores`): no score is written twice.

    Args:
        model: The trained model (its weights are copied).
        method: A score of the registry that the model has, and that needs no KL term.
        blur: The maps' Gaussian sigma in pixels.
        reference: ``(N, latent_dim)`` latents of the normal training images (kNN methods).
        stats: The ensemble's ``{method: (mean, std)}`` on validation normals.
        train_images: ``(N, C, H, W)`` the normal training images in [0, 1] (``patch-knn``
            compares feature maps of the nearest of them; kept as 0-255 bytes).
        k: Neighbours of ``latent-knn``; topk: pixels of ``topk``.
        uint8: Whether the input is 0-255 (else float 0-1).
        memory: ``nearest-patch``'s fitted memory (``Scorer.memory``), for the scores made of it.
        calibration: ``two-signal``'s calibration on the validation normals (``Scorer.calibration``).
    """

    def __init__(
        self,
        model: Model,
        method: str,
        blur: float,
        reference: torch.Tensor | None = None,
        stats: dict[str, tuple[float, float]] | None = None,
        train_images: torch.Tensor | None = None,
        *,
        k: int = 2,
        topk: int = 10,
        uint8: bool = True,
        memory: PatchMemory | None = None,
        calibration: dict[str, tuple[float, float]] | None = None,
    ) -> None:
        super().__init__()
        entry = scoring.REGISTRY[method]
        if not entry.applies_to(model.config.model) or "logvar" in entry.needs:
            raise ValueError(f"score method {method!r} cannot be exported for this {model.config.model!r} model")
        copy = ConvAutoencoder(model.config)
        copy.load_state_dict(model.autoencoder.state_dict())  # the part that reconstructs
        self.net = ReferenceAutoencoder(copy.cpu().float()).eval()
        self.method, self.blur, self.k, self.topk, self.uint8 = method, float(blur), k, topk, uint8
        self.stats = dict(stats or {})
        parts = [scoring.REGISTRY[m] for m in self.stats] if entry.compute is None else [entry]
        if any(m.needs_reference for m in parts) and reference is None:
            raise ValueError(f"score method {method!r} needs the reference latents")
        if any(m.needs_train_images for m in parts) and train_images is None:
            raise ValueError(f"score method {method!r} needs the training images")
        if method in scoring.NEEDS_MEMORY and (memory is None or (method == "two-signal" and not calibration)):
            raise ValueError(f"score method {method!r} needs nearest-patch's memory (and two-signal its calibration)")
        self.calibration = dict(calibration or {})
        self.memory_scales = memory.scales if memory is not None else ()
        self.memory_units = list(memory.units) if memory is not None else []
        self.memory_patch = memory.patch if memory is not None else 0
        for j, m in enumerate(memory.memories if memory is not None else []):
            self.register_buffer(f"memory{j}", m.clone())
        self.parts = [m.name for m in parts]
        unit = F.normalize(reference.float(), dim=1) if reference is not None else torch.zeros(0)
        self.register_buffer("reference", unit)
        self.patch = _Patches(self.net.encoder[:-2], self.net._grid, train_images, scoring.PATCH_NEIGHBOURS,
                              scoring.PATCH_SMOOTH)
        self.head = None
        if any("segmentation" in m.needs for m in parts):
            self.head = SegmentationHead(3 * model.config.channels, cell=model.head.cell)
            self.head.load_state_dict(model.head.state_dict())
            self.head = self.head.cpu().float().to(memory_format=torch.contiguous_format).eval()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = images.to(torch.float32)
        if self.uint8:
            x = x / 255.0
        h = self.net.encoder[:-2](x)  # the last feature map
        z = self.net.encoder[-2:](h)
        g = self.net._grid
        recon = self.net.decoder(self.net.up(self.net.decoder_fc(z).view(-1, 64, g, g)))
        seg = None if self.head is None else torch.sigmoid(self.head(torch.cat([x, recon, (x - recon).abs()], 1)))
        maps = scoring.anomaly_maps(x, recon, self.blur)
        scored = scoring.Scored(x, recon, maps, scoring.mse_scores(x, recon), z, None, seg)
        neighbours = None
        if self.reference.numel():  # the one search of the reference, nearest first, as the Scorer's
            top = (F.normalize(z, dim=1) @ self.reference.T).topk(min(max(self.k, self.patch.k), len(self.reference)), dim=1)
            neighbours = (1 - top.values, top.indices)
        seen = _Seen(self, h)
        base = {m: scoring.REGISTRY[m].compute(seen, scored, neighbours) for m in self.parts}
        entry = scoring.REGISTRY[self.method]
        score = scoring.ensemble_scores(base, self.stats) if entry.compute is None else base[self.method]
        if entry.map_in_scored:
            own = entry.pixel_map(seen, scored)
        elif seen.grid is not None:  # a score read off the patch grid: that grid, upsampled
            own = F.interpolate(seen.grid, size=x.shape[-2:], mode="bilinear", align_corners=False)
        else:
            own = maps
        return maps, score, own


def _versions() -> dict[str, str]:
    out = {}
    for name in ("anomalymap", "torch", "onnx", "onnxruntime"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def detector_for(run: Any, *, uint8: bool = True) -> tuple[Detector, dict[str, str]]:
    """The :class:`Detector` of an opened run (``Run``) and the metadata that goes with it.

    Raises:
        MissingInputError: notebook 02 or 03 has not run in the run folder.
    """
    evaluation = run.evaluation  # 03's metrics.json: threshold, score, map_blur
    method = evaluation.get("score", "mse")
    entry = scoring.REGISTRY[method]
    if "logvar" in entry.needs:
        raise ParameterError(
            f"export writes the detector of the scores {list(scoring.METHODS)}; this run's score is {method!r} "
            "(the VAE's negative ELBO): rerun 03_evaluation with another score_method, then export"
        )
    model = run.model.cpu()
    blur = float(evaluation.get("map_blur", 0.0))
    reference = stats = train_images = scorer = None
    if entry.needs_reference:
        reference = run.reference_latents().cpu()
    if entry.compute is None or method in scoring.NEEDS_MEMORY:  # fitted on the normals, in the graph's fp32
        from anomalymap_helpers.pipeline.training.device import Precision

        scorer = scoring.Scorer(model, run.splits["train"].images, run.splits["val"].images, reference=reference,
                                blur=blur, dataset=run.dataset, precision=Precision("fp32", "cpu"))
        stats = scorer.stats if entry.compute is None else None
    if entry.needs_train_images:
        train_images = run.splits["train"].images
    detector = Detector(model, method, blur, reference, stats, train_images, uint8=uint8,
                        memory=scorer.memory if scorer else None, calibration=scorer.calibration if scorer else None).eval()
    test = run.splits["test"]
    _, channels, size, _ = test.images.shape
    meta = {
        "threshold": repr(float(evaluation["threshold"])),
        "threshold_rule": f"percentile {evaluation.get('threshold_percentile', '')} of validation normals' scores".strip(),
        "score_method": method,
        "map_blur": repr(blur),
        "image_size": str(size),
        "channels": str(channels),
        "input": "uint8 0-255" if uint8 else "float32 0-1",
        "input_layout": "N x C x H x W",
        "outputs": "map: N x 1 x H x W anomaly map (|x - reconstruction|, channel mean, blurred); "
        "score: N image scores, anomaly where score > threshold; " + entry.map_note,
        "dataset": run.dataset,
        "class_names": json.dumps(list(test.class_names)),
        "normal_classes": json.dumps(list(run.manifest["config"]["normal_classes"])),
        "anomaly_classes": json.dumps(list(run.manifest["config"]["anomaly_classes"])),
        "reference_set": (f"{len(reference)} normal training latents" + (" and images" if train_images is not None else "")
                          + ", inside the graph") if reference is not None else "none",
        "versions": json.dumps(_versions()),
    }
    if scorer is not None and scorer.memory is not None and method in scoring.NEEDS_MEMORY:
        meta["reference_set"] = (f"{sum(len(m) for m in scorer.memory.memories)} normal training neighbourhoods "
                                 f"(nearest-patch's memory, scales {scorer.memory.scales}), inside the graph")
    return detector, meta


def export(
    results_dir: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    input_type: str = "uint8",
    mnist_dir: str | None = None,
) -> Path:
    """Export a run's detector to ONNX; return the file (default ``<results>/detector.onnx``).

    The file is written atomically: an existing one is replaced only by a complete export.

    Raises:
        ParameterError: an unknown ``input_type``.
        MissingInputError: no model (notebook 02) or no evaluation (notebook 03) in the run folder.
    """
    if input_type not in INPUTS:
        raise ParameterError(f"--input {input_type!r}: use one of {list(INPUTS)}")
    from anomalymap_helpers.files.paths import RunFiles
    from anomalymap_helpers.runs.opened import Run

    files = RunFiles.at(results_dir)
    if not files.root.is_dir():
        raise MissingInputError(f"no run folder at {files.root}: run the notebooks first (python -m anomalymap_helpers run)")
    files.require(files.model, "02_training")
    files.require(files.metrics, "03_evaluation")
    try:
        import onnx  # noqa: F401  (the exporter needs it; say so before the work)
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise MissingInputError(f"export needs onnx and onnxscript ({exc}): pip install onnx onnxscript") from None
    run = Run.open(files.root, mnist_dir=mnist_dir, device="cpu")
    detector, meta = detector_for(run, uint8=input_type == "uint8")
    target = Path(out) if out is not None else files.root / "detector.onnx"
    _, channels, size, _ = run.splits["test"].images.shape
    example = torch.zeros(2, channels, size, size, dtype=torch.uint8 if detector.uint8 else torch.float32)
    from contextlib import nullcontext

    from anomalymap_helpers.files.lock import writing

    inside = target.resolve().parent.is_relative_to(files.root.resolve())
    with writing(files.root, "export") if inside else nullcontext():
        write_onnx(detector, example, meta, target)
    return target


def write_onnx(detector: Detector, example: torch.Tensor, meta: dict[str, str], target: Path) -> Path:
    """Export ``detector`` (batch size free, other sizes as ``example``) with ``meta`` to ``target``, atomically."""
    import onnx

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        raw = Path(tmp) / "raw.onnx"
        batch = torch.export.Dim("batch", min=1)
        with torch.inference_mode(False), torch.no_grad():
            torch.onnx.export(
                detector,
                (example,),
                raw,
                input_names=["images"],
                output_names=["map", "score", "score_map"],
                dynamic_shapes={"images": {0: batch}},
                opset_version=OPSET,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
        model = onnx.load(raw)
        del model.metadata_props[:]
        for key, value in meta.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.checker.check_model(model)
        storage.write_bytes(target, model.SerializeToString())
    return target


def check_export(path: str | os.PathLike[str], run: Any, batch_size: int = 512) -> dict[str, float]:
    """Compare an exported detector in onnxruntime with the PyTorch path (fp32) on the run's test images.

    Returns:
        ``images``, the largest ``score_diff`` and ``map_diff`` (and ``score_map_diff``, the
        segmentation's, for ``segment``), ``verdict_flips`` at the
        threshold in the file's metadata, and both paths' ``images_per_s`` (median of 3).
    """
    import statistics
    import time

    import numpy as np
    import onnxruntime as ort

    from anomalymap_helpers.pipeline.training.device import Precision

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    images = run.splits["test"].images
    x = (images * 255).round().to(torch.uint8).numpy() if meta["input"].startswith("uint8") else images.numpy()

    def onnx_path() -> tuple[np.ndarray, ...]:
        parts = [session.run(["map", "score", "score_map"], {"images": x[i : i + batch_size]})
                 for i in range(0, len(x), batch_size)]
        return tuple(np.concatenate([p[j] for p in parts]) for j in range(3))

    ev = run.evaluation
    method, blur = ev["score"], float(ev.get("map_blur", 0.0))
    model = run.model.cpu()
    fp32 = Precision("fp32", "cpu")
    val = scoring.score(model, run.splits["val"].images, blur=blur, precision=fp32)
    scorer = scoring.Scorer(
        model, run.splits["train"].images, val, reference=run.reference_latents().cpu(), blur=blur, precision=fp32,
        dataset=run.dataset,
    )

    def torch_path() -> tuple[torch.Tensor, ...]:
        test = scoring.score(model, images, blur=blur, precision=fp32)
        return test.maps, scorer.all_scores(test)[method], scoring.pixel_maps(test, method, scorer)

    rates = {}
    for name, fn in (("onnxruntime", onnx_path), ("pytorch", torch_path)):
        fn()  # warm-up
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
        rates[name] = (len(x) / statistics.median(times), out)
    (o_maps, o_scores, o_own), (t_maps, t_scores, t_own) = rates["onnxruntime"][1], rates["pytorch"][1]
    from anomalymap_helpers.pipeline.evaluation.metrics import compare_scores

    threshold = float(meta["threshold"])
    scores = compare_scores(t_scores.numpy(), o_scores, threshold)
    return {
        "images": len(x),
        "score_diff": scores["largest_difference"],
        "map_diff": float(np.abs(o_maps - t_maps.numpy()).max()),
        **({"score_map_diff": float(np.abs(o_own - t_own.numpy()).max())} if scoring.REGISTRY[method].map_in_scored
           else {}),
        "verdict_flips": scores["verdict_flips"],
        "threshold": threshold,
        "onnxruntime_images_per_s": rates["onnxruntime"][0],
        "pytorch_images_per_s": rates["pytorch"][0],
    }
