"""A trained run used on new images: scores, verdicts and maps for files, folders or arrays.

``Run.open(dir).predict(images)`` (and ``python -m anomalymap_helpers predict``) scores images
nobody has labelled with the run's own detector: its model, notebook 03's score method and
threshold, and the same :class:`~anomalymap_helpers.pipeline.scoring.Scorer` 03 fitted on the
training and validation normals, so an image gets the score 03 would have given it.

Images that do not match the run are made to: another size is resized to the run's
(bilinear, as the folder data set resizes its images, whatever the aspect ratio), a colour image
into a grayscale run is converted to gray and a gray one into a colour run to RGB; each such
change is said in that image's ``note``. Files are found as the folder data set finds them: the
image formats Pillow reads by their suffix (``.png``, ``.jpg``, ...), folders searched
recursively, hidden and system files and anything else (``.txt``, notes) never read. A file that
cannot be decoded is named and skipped; the others are still scored.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from anomalymap_helpers.errors import DataError, ParameterError

if TYPE_CHECKING:
    from anomalymap_helpers.pipeline.models import Model
    from anomalymap_helpers.pipeline.scoring import Scorer
    from anomalymap_helpers.runs.opened import Run

BATCH = 256  # images decoded and scored together


@dataclass
class Predictions:
    """What :meth:`Run.predict` gives, one entry per image scored.

    Attributes:
        names: The file of each image (its path), or ``"#k"`` for the k-th array image.
        scores: ``(N,)`` the run's score (``method``), higher = more anomalous.
        anomaly: ``(N,)`` bool, ``scores > threshold``.
        maps: ``(N, 1, H, W)`` the score's map at the run's size: the restore model's segmentation
            for ``segment``, ``patch-knn``'s and ``latent-knn``'s own maps, else ``|x - x̂|``.
        percentiles: ``(N,)`` the share (in %) of the run's validation normals that score lower.
        notes: What was done to each image to fit the run ("" where nothing).
        threshold: Notebook 03's threshold.
        method: Notebook 03's score method.
        skipped: ``(path, why)`` of each file that could not be read.
        images: ``(N, C, H, W)`` the images as scored, in [0, 1].
        matches: ``(N,)`` for ``patch-knn``, the position in the training split of each image's
            best-matching normal; else None.
    """

    names: list[str]
    scores: torch.Tensor
    anomaly: torch.Tensor
    maps: torch.Tensor
    percentiles: torch.Tensor
    notes: list[str]
    threshold: float
    method: str
    skipped: list[tuple[str, str]] = field(default_factory=list)
    images: torch.Tensor | None = None
    matches: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.names)

    def best_match(self, i: int, train_images: torch.Tensor) -> torch.Tensor | None:
        """Image ``i``'s best-matching normal among the run's ``train_images``, where the score has one."""
        return train_images[int(self.matches[i])] if self.matches is not None else None

    def summary(self) -> str:
        """``37 of 500 flagged at threshold 0.0812 (segment)``, and how many were skipped."""
        return summary_line(int(self.anomaly.sum()), len(self), self.threshold, self.method, len(self.skipped))


def summary_line(flagged: int, total: int, threshold: float, method: str, skipped: int = 0) -> str:
    """``37 of 500 flagged at threshold 0.0812 (segment)``, and how many were skipped."""
    line = f"{flagged} of {total} flagged at threshold {threshold:.4g} ({method})"
    return line + (f"; {skipped} file(s) skipped, unreadable" if skipped else "")


def write_pngs(images: torch.Tensor, folder: str | os.PathLike[str]) -> list[Path]:
    """``(N, C, H, W)`` images in [0, 1] as 8-bit PNG files ``0000.png``, ... in ``folder`` (made if needed)."""
    from PIL import Image

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, x in enumerate(images):
        a = (x * 255).round().clamp(0, 255).to(torch.uint8).numpy()
        path = out / f"{k:04d}.png"
        Image.fromarray(a[0] if len(a) == 1 else a.transpose(1, 2, 0)).save(path)
        paths.append(path)
    return paths


def find_images(inputs: Iterable[str | os.PathLike[str]]) -> tuple[list[Path], list[str]]:
    """The image files among ``inputs`` (files, or folders searched recursively), in order, and
    the files that are not images (never read).

    Raises:
        ParameterError: an input does not exist.
    """
    from anomalymap_helpers.pipeline.data.folder import IMAGE_SUFFIXES, is_stray

    found, ignored = [], []
    for item in map(Path, inputs):
        if not item.exists():
            raise ParameterError(f"{item} does not exist: give image files or folders of them")
        paths = sorted(p for p in item.rglob("*") if p.is_file()) if item.is_dir() else [item]
        for p in paths:
            stray = any(is_stray(Path(part)) for part in p.relative_to(item).parts) if item.is_dir() else is_stray(p)
            if not stray and p.suffix.lower() in IMAGE_SUFFIXES:
                found.append(p)
            else:
                ignored.append(str(p))
    return found, ignored


def read_image(path: Path, size: int, channels: int) -> tuple[np.ndarray, str]:
    """``path`` as ``(C, size, size)`` uint8, as the folder data set reads it, and what was done to it.

    Raises:
        DataError: the file cannot be decoded (truncated, corrupt, not what its suffix says).
    """
    from anomalymap_helpers.pipeline.data.folder import GRAY_MODES, open_image, to_pixels

    image = open_image(path)
    notes = []
    if image.size != (size, size):
        notes.append(f"resized from {image.size[0]}x{image.size[1]} to {size}x{size}")
    gray = image.mode in GRAY_MODES
    if gray and channels == 3:
        notes.append("grayscale converted to RGB")
    elif not gray and channels == 1:
        notes.append("colour converted to grayscale")
    return to_pixels(image, size, channels, _NoDigest()), "; ".join(notes)


class _NoDigest:
    def update(self, _: bytes) -> None:
        pass


def from_array(images: Any, size: int, channels: int) -> tuple[torch.Tensor, list[str]]:
    """A NumPy array or tensor (uint8 0-255 or float 0-1; ``HxW``, ``HxWxC``, ``CxHxW`` or
    ``NxCxHxW``) as ``(N, channels, size, size)`` float in [0, 1], and the note of each image.

    Raises:
        ParameterError: another shape, dtype or range, with what the run takes.
    """
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    shape = tuple(x.shape)
    if x.ndim == 2:
        x = x[None, None]
    elif x.ndim == 3:  # HxWxC when the last axis is small, else CxHxW
        x = x.permute(2, 0, 1)[None] if x.shape[-1] in (1, 3, 4) and x.shape[0] not in (1, 3, 4) else x[None]
    if x.ndim != 4 or x.shape[1] not in (1, 3, 4) or 0 in x.shape:
        raise ParameterError(
            f"an array of shape {shape} is not images: give HxW, HxWxC, CxHxW or NxCxHxW with C of 1, 3 or 4"
        )
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    elif x.is_floating_point():
        x = x.float()
        if float(x.min()) < 0 or float(x.max()) > 1:
            raise ParameterError(
                f"float images must lie in [0, 1], these lie in [{float(x.min()):.3g}, {float(x.max()):.3g}]: "
                "divide 0-255 values by 255, or pass uint8"
            )
    else:
        raise ParameterError(f"images of dtype {x.dtype}: give uint8 (0-255) or float (0-1)")
    note = []
    if x.shape[1] == 4:
        x = x[:, :3]
        note.append("alpha dropped")
    if x.shape[1] == 3 and channels == 1:
        x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        note.append("colour converted to grayscale")
    elif x.shape[1] == 1 and channels == 3:
        x = x.expand(-1, 3, -1, -1)
        note.append("grayscale converted to RGB")
    if tuple(x.shape[-2:]) != (size, size):
        note.append(f"resized from {x.shape[-1]}x{x.shape[-2]} to {size}x{size}")
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
    return x.contiguous(), ["; ".join(note)] * len(x)


def predict(
    run: Run,
    images: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | np.ndarray | torch.Tensor,
    *,
    batch_size: int = BATCH,
    on_batch: Callable[[int], None] | None = None,
) -> Predictions:
    """Score ``images`` with ``run``'s detector (see :mod:`anomalymap_helpers.runs.predictions`): its
    model, notebook 03's score, threshold and blur, and the Scorer 03 fitted (:func:`judge`).

    Args:
        run: An opened run scored by notebook 03.
        images: A file, a folder, a list of files and folders, or an array / tensor of images.
        batch_size: Images decoded and scored together (the next batch decodes while one is scored).
        on_batch: Called with the number of images done after each batch (a progress bar).

    Raises:
        ParameterError: a missing input, an array that is not images, or no image at all.
        MissingInputError: the run has no model or no evaluation (notebooks 02, 03).
        DataError: no image could be read.

    It keeps every image and map; :func:`predict_batches` gives them a batch at a time instead.
    """
    return gathered(predict_batches(run, images, batch_size=batch_size), on_batch)


def predict_batches(
    run: Run,
    images: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | np.ndarray | torch.Tensor,
    *,
    batch_size: int = BATCH,
) -> Iterator[Predictions]:
    """:func:`predict` a batch at a time (:func:`judged`): one :class:`Predictions` per batch, holding only
    that batch's images and maps, for any number of images in flat memory (the ``predict`` command's
    way). Everything is checked here, before the first batch is read: the run, and the inputs.

    Raises:
        ParameterError, MissingInputError: as :func:`predict`, at this call.
    """
    from anomalymap_helpers.pipeline import scoring

    ev = run.evaluation  # 03 first: its score, threshold and blur, before any image is read
    method, threshold, blur = ev["score"], float(ev["threshold"]), float(ev.get("map_blur", 0.0))
    batches = image_batches(images, run.model.config.image_size, run.model.config.channels, batch_size)
    val = scoring.read_scores(run.files.require(run.files.scores, "03_evaluation"), "val")[1]
    own = None if scoring.REGISTRY[method].map_in_scored else run.score_maps(method)
    return judged(run.model, run.scorer(blur), method, threshold, batches, val_scores=val, blur=blur, own_map=own)


@dataclass
class Batches:
    """Images to score, in batches of ``(images (B, C, H, W), names, notes)``: decoded as they are taken
    (files) or already made (an array); ``skipped`` fills with ``(path, why)`` of each unreadable file."""

    batches: Iterable[tuple[torch.Tensor, list[str], list[str]]]
    total: int
    skipped: list[tuple[str, str]] = field(default_factory=list)


def image_batches(
    images: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | np.ndarray | torch.Tensor,
    size: int, channels: int, batch_size: int = BATCH,
) -> Batches:
    """``images`` (files, folders or an array) as :class:`Batches` of ``size`` x ``size`` images of ``channels``.

    Raises:
        ParameterError: a missing input, an array that is not images, or no image file at all.
    """
    if isinstance(images, (np.ndarray, torch.Tensor)):
        every, all_notes = from_array(images, size, channels)
        labels = [f"#{k}" for k in range(len(every))]
        return Batches([(every[i : i + batch_size], labels[i : i + batch_size], all_notes[i : i + batch_size])
                        for i in range(0, len(every), batch_size)], len(every))
    inputs = [images] if isinstance(images, (str, os.PathLike)) else list(images)
    paths, _ = find_images(inputs)
    if not paths:
        raise ParameterError(f"no image files in {', '.join(map(str, inputs))} (looked for .png, .jpg, ...)")
    skipped: list[tuple[str, str]] = []
    return Batches(_decoded(paths, size, channels, batch_size, skipped), len(paths), skipped)


def judge(
    model: Model,
    scorer: Scorer,
    method: str,
    threshold: float,
    batches: Batches,
    *,
    val_scores: torch.Tensor,
    blur: float = 0.0,
    own_map: Callable[[torch.Tensor], torch.Tensor] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> Predictions:
    """Predictions of a detector, ``model`` with its fitted ``scorer``, ``method`` and ``threshold``.

    Args:
        model: The trained model.
        scorer: Its :class:`~anomalymap_helpers.pipeline.scoring.Scorer`, fitted on normal images.
        method: The score; its registry entry says which map the images get.
        threshold: Scores above it are anomalies.
        batches: The images (:func:`image_batches`).
        val_scores: ``method``'s scores of the validation normals, for each image's percentile.
        blur: The maps' Gaussian sigma in pixels.
        own_map: The score's own map where it is not read off the :class:`Scored` (``Run.score_maps``).
        on_batch: Called with the number of images done after each batch.
    """
    return gathered(judged(model, scorer, method, threshold, batches, val_scores=val_scores, blur=blur,
                           own_map=own_map), on_batch)


def gathered(parts: Iterable[Predictions], on_batch: Callable[[int], None] | None = None) -> Predictions:
    """:func:`joined` of the batches ``parts`` as they come, calling ``on_batch`` with the images done
    (scored and skipped) after each."""
    kept = []
    for part in parts:
        kept.append(part)
        if on_batch is not None:
            on_batch(sum(map(len, kept)) + len(part.skipped))
    return joined(kept)


def judged(
    model: Model,
    scorer: Scorer,
    method: str,
    threshold: float,
    batches: Batches,
    *,
    val_scores: torch.Tensor,
    blur: float = 0.0,
    own_map: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Iterator[Predictions]:
    """:func:`judge` a batch at a time: one :class:`Predictions` per batch of ``batches``, holding only that
    batch's images and maps, so that scoring any number of images keeps one batch in memory. Their
    ``skipped`` is ``batches.skipped``, filled as unreadable files are met. Arguments as :func:`judge`'s.

    Raises:
        DataError: at the end, where no image could be read (the first three reasons said).
    """
    from anomalymap_helpers.pipeline import scoring

    entry, done = scoring.REGISTRY[method], False
    for x, names, notes in batches.batches:
        if not len(x):
            continue
        scored = scoring.score(model, x, blur=blur)
        scores = scorer.all_scores(scored)[method]
        match = None
        if isinstance(own_map, scoring.PatchKnn):  # its maps, and the normal each image is compared with
            maps, match = own_map.explain(x)
        else:
            maps = entry.pixel_map(scorer, scored) if own_map is None else own_map(x)
        yield Predictions(
            list(names), scores, scores > threshold, maps.float(),
            (val_scores[None, :] < scores[:, None]).float().mean(1) * 100, list(notes), threshold, method,
            batches.skipped, x, match,
        )
        done = True
    if not done:
        raise DataError(f"none of the {batches.total} image file(s) could be read: "
                        + "; ".join(w for _, w in batches.skipped[:3]))


def joined(parts: list[Predictions]) -> Predictions:
    """Batches' :class:`Predictions` (at least one, as :func:`judged` gives them) as one, in order."""
    first = parts[0]
    cat = lambda name: torch.cat([getattr(p, name) for p in parts])  # noqa: E731
    return Predictions(
        [n for p in parts for n in p.names], cat("scores"), cat("anomaly"), cat("maps"), cat("percentiles"),
        [n for p in parts for n in p.notes], first.threshold, first.method, first.skipped, cat("images"),
        cat("matches") if first.matches is not None else None,
    )


def _decoded(paths: list[Path], size: int, channels: int, batch_size: int, skipped: list[tuple[str, str]]
             ) -> Iterable[tuple[torch.Tensor, list[str], list[str]]]:
    """Batches of ``paths`` decoded by two threads, the next batch while the caller scores this one."""

    def one(p: Path) -> tuple[Path, np.ndarray | None, str]:
        try:
            a, note = read_image(p, size, channels)
            return p, a, note
        except DataError as exc:
            return p, None, str(exc)

    chunks = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        pending = list(pool.map(one, chunks[0])) if chunks else []
        for k in range(len(chunks)):
            following = pool.map(one, chunks[k + 1]) if k + 1 < len(chunks) else iter(())
            good = [(p, a, n) for p, a, n in pending if a is not None]
            skipped += [(str(p), why) for p, a, why in pending if a is None]
            x = torch.from_numpy(np.stack([a for _, a, _ in good])).float() / 255.0 if good else torch.empty(0)
            yield x, [str(p) for p, _, _ in good], [n for _, _, n in good]
            pending = list(following)
