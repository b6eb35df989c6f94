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
  segmentation, the probability of damage per pixel; for the other methods the same as ``map``.

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

INPUTS = ("uint8", "float")
OPSET = 18
# methods that look up the training normals' latents
NEEDS_REFERENCE = tuple(name for name, m in scoring.REGISTRY.items() if m.needs_reference)


class Detector(nn.Module):
    """Images to ``(map, score, score_map)``: the autoencoder, the maps and one score method, in plain layers.

    Args:
        model: The trained autoencoder (its weights are copied).
        method: One of :data:`~anomalymap_helpers.pipeline.scoring.METHODS`.
        blur: The maps' Gaussian sigma in pixels.
        reference: ``(N, latent_dim)`` latents of the normal training images (kNN methods).
        stats: The ensemble's ``{method: (mean, std)}`` on validation normals.
        train_images: ``(N, C, H, W)`` the normal training images in [0, 1] (``patch-knn``
            compares feature maps of the nearest of them; kept as 0-255 bytes).
        k: Neighbours of ``latent-knn``; topk: pixels of ``topk``.
        uint8: Whether the input is 0-255 (else float 0-1).
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
    ) -> None:
        super().__init__()
        copy = ConvAutoencoder(model.config)
        copy.load_state_dict(model.autoencoder.state_dict())  # the part that reconstructs
        self.net = ReferenceAutoencoder(copy.cpu().float()).eval()
        self.method, self.blur, self.k, self.topk, self.uint8 = method, float(blur), k, topk, uint8
        self.stats = dict(stats or {})
        needs_reference = method in NEEDS_REFERENCE
        if needs_reference and reference is None:
            raise ValueError(f"score method {method!r} needs the reference latents")
        if method == "patch-knn" and train_images is None:
            raise ValueError("score method 'patch-knn' needs the training images")
        unit = F.normalize(reference.float(), dim=1) if needs_reference else torch.zeros(0)
        self.register_buffer("reference", unit)
        kept = (train_images * 255).round().to(torch.uint8) if method == "patch-knn" else torch.zeros(0, dtype=torch.uint8)
        self.register_buffer("train_images", kept)
        self.patch_k, self.smooth = scoring.PATCH_NEIGHBOURS, scoring.PATCH_SMOOTH
        self.head = None
        if method == "segment":
            if not scoring.REGISTRY[method].applies_to(model.config.model):
                raise ValueError("score method 'segment' needs the restore model")
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
        maps = scoring.anomaly_maps(x, recon, self.blur)
        if self.method == "patch-knn":
            grid = self._patch_grid(h, z)
            own = F.interpolate(grid, size=x.shape[-2:], mode="bilinear", align_corners=False)
            return maps, grid.flatten(1).amax(1), own
        if self.head is not None:
            seg = torch.sigmoid(self.head(torch.cat([x, recon, (x - recon).abs()], 1)))
            return maps, scoring.segment_scores(seg), seg
        return maps, self._score(self.method, x, recon, maps, z), maps

    def _patch_grid(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``patch-knn``'s map on the grid ``(B, 1, g, g)`` (see :class:`~anomalymap_helpers.pipeline.scoring.PatchKnn`)."""
        k = min(self.patch_k, self.reference.shape[0])
        near = (F.normalize(z, dim=1) @ self.reference.T).topk(k, dim=1).indices  # (B, k)
        theirs = self.train_images[near.flatten()].to(torch.float32) / 255.0
        mine = scoring.unit_cells(h)  # (B, L, 64)
        t = scoring.unit_cells(self.net.encoder[:-2](theirs)).view(mine.shape[0], k, *mine.shape[1:])
        cells = (t - mine[:, None]).norm(dim=3)  # (B, k, L): one map per normal
        best, _ = scoring.lowest_peak(scoring.smooth_cells(cells, self.net._grid, self.smooth))
        return best[:, None]

    def _knn(self, z: torch.Tensor) -> torch.Tensor:
        sim = F.normalize(z, dim=1) @ self.reference.T
        return 1 - sim.topk(min(self.k, self.reference.shape[0]), dim=1).values.mean(1)

    def _score(self, method: str, x: torch.Tensor, recon: torch.Tensor, maps: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        if method == "mse":
            return scoring.mse_scores(x, recon)
        if method == "topk":
            return scoring.topk_scores(maps, self.topk)
        if method == "ssim":
            return scoring.ssim_scores(x, recon)
        if method == "latent-knn":
            return self._knn(z)
        parts = [(self._score(m, x, recon, maps, z) - mu) / sd for m, (mu, sd) in self.stats.items()]
        return torch.stack(parts).mean(0)


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
    if method in scoring.VAE_METHODS:
        raise ParameterError(
            f"export writes the detector of the scores {list(scoring.METHODS)}; this run's score is {method!r} "
            "(the VAE's negative ELBO): rerun 03_evaluation with another score_method, then export"
        )
    model = run.model.cpu()
    blur = float(evaluation.get("map_blur", 0.0))
    reference = stats = train_images = None
    if method in NEEDS_REFERENCE:
        reference = run.reference_latents().cpu()
    if method == "ensemble":
        scorer = scoring.Scorer(model, run.splits["train"].images, run.splits["val"].images, reference=reference, blur=blur)
        stats = scorer.stats
    if method == "patch-knn":
        train_images = run.splits["train"].images
    detector = Detector(model, method, blur, reference, stats, train_images, uint8=uint8).eval()
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
        "score: N image scores, anomaly where score > threshold; "
        + {"patch-knn": "score_map: N x 1 x H x W patch-knn's own map, upsampled from the encoder's grid (the score "
                        "is that grid's largest cell)",
           "segment": "score_map: N x 1 x H x W the restore model's segmentation, the probability of damage per "
                      "pixel (the score is its largest small-window mean)"}.get(method, "score_map: the same as map"),
        "dataset": run.dataset,
        "class_names": json.dumps(list(test.class_names)),
        "normal_classes": json.dumps(list(run.manifest["config"]["normal_classes"])),
        "anomaly_classes": json.dumps(list(run.manifest["config"]["anomaly_classes"])),
        "reference_set": (f"{len(reference)} normal training latents" + (" and images" if train_images is not None else "")
                          + ", inside the graph") if reference is not None else "none",
        "versions": json.dumps(_versions()),
    }
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
        model, run.splits["train"].images, val, reference=run.reference_latents().cpu(), blur=blur, precision=fp32
    )

    def torch_path() -> tuple[torch.Tensor, ...]:
        test = scoring.score(model, images, blur=blur, precision=fp32)
        return test.maps, scorer.all_scores(test)[method], scoring.pixel_maps(test, method)

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
        **({"score_map_diff": float(np.abs(o_own - t_own.numpy()).max())} if method == "segment" else {}),
        "verdict_flips": scores["verdict_flips"],
        "threshold": threshold,
        "onnxruntime_images_per_s": rates["onnxruntime"][0],
        "pytorch_images_per_s": rates["pytorch"][0],
    }
