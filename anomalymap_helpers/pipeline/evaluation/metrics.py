"""Detection metrics and the threshold, fitted on validation normals only."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from anomalymap_helpers.errors import ParameterError


def _strictly_between(name: str, value: Any, low: float, high: float, advice: str) -> float:
    """``value`` as a float if it is a number strictly between ``low`` and ``high``, else say what to use."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or not low < value < high:
        raise ParameterError(f"{name}={value!r}: use a number strictly between {low:g} and {high:g}, {advice}")
    return float(value)


def check_percentile(threshold_percentile: float) -> float:
    """Return the percentile if it lies strictly between 0 and 100."""
    return _strictly_between("threshold_percentile", threshold_percentile, 0, 100,
                             "e.g. 99 (the share of validation normals that fall below the threshold)")


def fit_threshold(val_scores: Any, threshold_percentile: float = 99.0) -> float:
    """The ``threshold_percentile``-th percentile of the validation normals' scores.

    An image whose score is *above* the threshold is called an anomaly, so about
    ``100 - threshold_percentile`` percent of normal images are flagged.
    """
    p = check_percentile(threshold_percentile)
    scores = np.asarray(val_scores, dtype=np.float64)
    if scores.size == 0:
        raise ParameterError("no validation scores to fit a threshold on")
    return float(np.percentile(scores, p))


THRESHOLD_RULES = ("percentile", "otsu", "fpr")


def check_fpr(target_fpr: float) -> float:
    """Return the false-positive rate if it lies strictly between 0 and 1."""
    return _strictly_between("target_fpr", target_fpr, 0, 1,
                             "e.g. 0.05 (the share of validation normals allowed above the threshold)")


def otsu_threshold(scores: Any) -> float:
    """Otsu's threshold of unlabelled ``scores``: the cut that maximises the between-class variance.

    Exact on the sorted scores (no histogram bins): each cut between two distinct values
    splits them into a low and a high class, and the cut with the largest
    ``w_low * w_high * (mean_low - mean_high)**2`` wins. The threshold is the largest
    score of the low class, so ``score > threshold`` is the high class.
    """
    s = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    if s.size < 2 or s[0] == s[-1]:
        raise ParameterError("Otsu's threshold needs at least two different scores")
    n = s.size
    k = np.arange(1, n)  # the low class is s[:k]
    low_sum = np.cumsum(s)[:-1]
    mean_low, mean_high = low_sum / k, (s.sum() - low_sum) / (n - k)
    between = (k / n) * (1 - k / n) * (mean_low - mean_high) ** 2
    between[s[:-1] == s[1:]] = -1.0  # a cut inside a run of equal scores is no cut
    return float(s[int(np.argmax(between))])


def choose_threshold(
    rule: str,
    val_scores: Any,
    test_scores: Any = None,
    *,
    threshold_percentile: float = 99.0,
    target_fpr: float = 0.01,
) -> float:
    """The threshold of ``rule``, from scores alone (never a test label).

    - ``percentile``: the ``threshold_percentile``-th percentile of the validation normals;
    - ``fpr``: the score that leaves ``target_fpr`` of the validation normals above it
      (the ``100 * (1 - target_fpr)``-th percentile);
    - ``otsu``: :func:`otsu_threshold` of the validation normals' and the test images'
      scores together, unlabelled, as a user without labels would have them.
    """
    if rule == "percentile":
        return fit_threshold(val_scores, threshold_percentile)
    if rule == "fpr":
        return fit_threshold(val_scores, 100 * (1 - check_fpr(target_fpr)))
    if rule == "otsu":
        parts = [np.asarray(val_scores, dtype=np.float64).ravel()]
        if test_scores is not None:
            parts.append(np.asarray(test_scores, dtype=np.float64).ravel())
        return otsu_threshold(np.concatenate(parts))
    raise ParameterError(f"threshold_rule={rule!r}: use one of {list(THRESHOLD_RULES)}")


@dataclass(frozen=True)
class Metrics:
    """Detection quality on a test set; anomalies are the positive class."""

    roc_auc: float
    average_precision: float
    threshold: float
    precision: float
    recall: float
    f1: float
    false_positive_rate: float
    tp: int
    fp: int
    tn: int
    fn: int
    n_normal: int
    n_anomaly: int
    mean_score_normal: float
    mean_score_anomaly: float
    recall_at_1pct_fpr: float = float("nan")
    recall_at_5pct_fpr: float = float("nan")

    def as_dict(self) -> dict[str, float | int]:
        """The metrics as a plain dict (for ``metrics.json``)."""
        return asdict(self)

    @property
    def confusion_matrix(self) -> np.ndarray:
        """``[[tn, fp], [fn, tp]]``: rows true normal/anomaly, columns predicted."""
        return np.array([[self.tn, self.fp], [self.fn, self.tp]])


def confusion(scores: Any, is_anomaly: Any, threshold: float) -> tuple[int, int, int, int]:
    """``(tp, fp, tn, fn)`` when scores above ``threshold`` are called anomalies."""
    s, y = np.asarray(scores), np.asarray(is_anomaly, dtype=bool)
    pred = s > threshold
    return int((pred & y).sum()), int((pred & ~y).sum()), int((~pred & ~y).sum()), int((~pred & y).sum())


def recall_at_fpr(scores: Any, is_anomaly: Any, fpr: float) -> float:
    """The share of anomalies flagged when the threshold flags at most ``fpr`` of the normals.

    The operating-point view of the ROC curve: with the threshold at the normals' score that
    leaves ``floor(fpr * n_normal)`` of them above it (scores above the threshold are flagged,
    so ties never push the rate past ``fpr``), the best recall any threshold reaches there.
    """
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(is_anomaly, dtype=bool)
    normals = np.sort(s[~y])[::-1]
    allowed = int(math.floor(fpr * len(normals) + 1e-9))
    threshold = normals[allowed] if allowed < len(normals) else -np.inf
    return float((s[y] > threshold).mean())


def evaluate(scores: Any, is_anomaly: Any, threshold: float) -> Metrics:
    """ROC-AUC, average precision, the confusion at ``threshold`` and recall at 1 % and 5 % FPR.

    Args:
        scores: ``(N,)`` anomaly scores, higher is more anomalous.
        is_anomaly: ``(N,)`` bool labels.
        threshold: Scores above it are called anomalies.

    Raises:
        ParameterError: the test set lacks normals or anomalies.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(is_anomaly, dtype=bool)
    if s.shape != y.shape or s.ndim != 1:
        raise ParameterError(f"scores {s.shape} and labels {y.shape} must be two vectors of one length")
    if y.all() or not y.any():
        raise ParameterError("the test set needs both normal and anomalous images to compute ROC-AUC")
    tp, fp, tn, fn = confusion(s, y, threshold)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Metrics(
        roc_auc=float(roc_auc_score(y, s)),
        average_precision=float(average_precision_score(y, s)),
        threshold=float(threshold),
        precision=precision,
        recall=recall,
        f1=f1,
        false_positive_rate=fp / (fp + tn),
        tp=tp,
        fp=fp,
        tn=tn,
        fn=fn,
        n_normal=int((~y).sum()),
        n_anomaly=int(y.sum()),
        mean_score_normal=float(s[~y].mean()),
        mean_score_anomaly=float(s[y].mean()),
        recall_at_1pct_fpr=recall_at_fpr(s, y, 0.01),
        recall_at_5pct_fpr=recall_at_fpr(s, y, 0.05),
    )


def per_class(
    scores: Any, labels: Any, is_anomaly: Any, class_names: Sequence[str], threshold: float,
    maps: Any = None, masks: Any = None,
) -> list[dict[str, Any]]:
    """One row per class of the test set: how it is scored against the other kind.

    For an anomaly class (a defect type, a digit): ROC-AUC of that class against all
    normal images, and the share flagged at ``threshold`` (its recall). For a normal
    class: ROC-AUC of all anomalies against that class, and its share flagged (its
    false-alarm rate). A low ROC-AUC names the class that is missed, or that raises
    false alarms. With ``maps`` and ``masks`` ``(N, 1, H, W)``, each defect type also gets the
    pixel ROC-AUC and AUPRO of its images' maps together with the normal images' (whose pixels are
    all normal); a normal class gets NaN there.
    """
    s, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    y = np.asarray(is_anomaly, dtype=bool)
    rows = []
    for c in np.unique(labels):
        mine = labels == c
        anomaly = bool(y[mine][0])
        other = ~y if anomaly else y
        both = mine | other
        auc = float(roc_auc_score(y[both], s[both])) if other.any() else float("nan")
        rows.append(
            {
                "class": int(c),
                "name": class_names[int(c)],
                "kind": "anomaly" if anomaly else "normal",
                "n": int(mine.sum()),
                "roc_auc": auc,
                "flagged": float((s[mine] > threshold).mean()),
            }
        )
        if maps is not None and masks is not None:
            m, k = np.asarray(maps), np.asarray(masks)
            rows[-1]["pixel_roc_auc"] = pixel_roc_auc(m[both], k[both]) if anomaly else float("nan")
            rows[-1]["aupro"] = aupro(m[both], k[both]) if anomaly else float("nan")
    return rows


def pixel_roc_auc(maps: Any, masks: Any) -> float:
    """ROC-AUC over every test pixel (normal images' pixels included); ``maps``, ``masks`` ``(N, 1, H, W)``."""
    m = np.asarray(masks, dtype=bool).ravel()
    if m.all() or not m.any():
        raise ParameterError("the masks need both defect and defect-free pixels to compute a pixel ROC-AUC")
    return float(roc_auc_score(m, np.asarray(maps, dtype=np.float64).ravel()))


def aupro(maps: Any, masks: Any, max_fpr: float = 0.3) -> float:
    """Area under the per-region overlap curve up to ``max_fpr``, divided by ``max_fpr``.

    As in the MVTec AD papers: each connected defect region (8-connected, in each
    image's mask) counts once, whatever its size. At a threshold ``t`` the PRO is the
    mean over regions of the share of the region's pixels with a map value above
    ``t``; the false-positive rate is the share of defect-free pixels above ``t``.
    The curve PRO(FPR) is integrated (trapezoids) from 0 to ``max_fpr``, the last
    point interpolated at ``max_fpr``.

    Args:
        maps: ``(N, 1, H, W)`` (or ``(N, H, W)``) anomaly maps, higher = more anomalous.
        masks: The same shape, True on defect pixels.
        max_fpr: Where the curve is cut.
    """
    from scipy import ndimage

    a = np.asarray(maps, dtype=np.float64).reshape(len(maps), -1)
    m = np.asarray(masks, dtype=bool).reshape(a.shape)
    shape = np.shape(masks)[-2:]
    regions = np.zeros(a.shape, dtype=np.int64)
    n_regions = 0
    for i in range(len(m)):
        labelled, count = ndimage.label(m[i].reshape(shape), structure=np.ones((3, 3)))
        regions[i] = np.where(labelled > 0, labelled + n_regions, 0).ravel()
        n_regions += count
    if not n_regions or m.all():
        raise ParameterError("the masks need defect regions and defect-free pixels to compute the AUPRO")
    flat, region = a.ravel(), regions.ravel()
    sizes = np.bincount(region, minlength=n_regions + 1).astype(np.float64)
    # Each defect pixel adds 1 / (its region's size * number of regions) to the PRO once the
    # threshold falls below its value; each defect-free pixel adds 1 / (their count) to the FPR.
    weight_pro = np.where(region > 0, 1.0 / (sizes[region] * n_regions), 0.0)
    weight_fpr = (region == 0) / float((region == 0).sum())
    order = np.argsort(-flat, kind="stable")
    values = flat[order]
    pro, fpr = np.cumsum(weight_pro[order]), np.cumsum(weight_fpr[order])
    last = np.r_[values[1:] != values[:-1], True]  # one point per distinct threshold
    pro, fpr = np.r_[0.0, pro[last]], np.r_[0.0, fpr[last]]
    cut = np.searchsorted(fpr, max_fpr, side="right")
    x, y = fpr[:cut], pro[:cut]
    if cut < len(fpr) and x[-1] < max_fpr:
        x0, x1, y0, y1 = fpr[cut - 1], fpr[cut], pro[cut - 1], pro[cut]
        x, y = np.r_[x, max_fpr], np.r_[y, y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)]
    return float(np.trapezoid(y, x) / max_fpr)


def compare(scores: dict[str, Any], is_anomaly: Any, first: str | None = None) -> list[dict[str, float | str]]:
    """ROC-AUC and average precision of each named score: ``first`` (the run's score) on top,
    then the others in the order given, never ordered by the test results."""
    y = np.asarray(is_anomaly, dtype=bool)
    names = ([first] if first in scores else []) + [n for n in scores if n != first]
    return [
        {
            "method": name,
            "roc_auc": float(roc_auc_score(y, np.asarray(scores[name]))),
            "average_precision": float(average_precision_score(y, np.asarray(scores[name]))),
        }
        for name in names
    ]


def roc_auc_score(y: Any, s: Any) -> float:
    """scikit-learn's ROC-AUC, imported on first use (it costs notebooks that never call it a second to import)."""
    from sklearn.metrics import roc_auc_score as auc

    return auc(y, s)


def average_precision_score(y: Any, s: Any) -> float:
    """scikit-learn's average precision, imported on first use."""
    from sklearn.metrics import average_precision_score as ap

    return ap(y, s)


def compare_scores(fp32: Any, other: Any, threshold: float) -> dict[str, float]:
    """Largest absolute difference (and as a share of the fp32 scores' spread), Spearman's rank
    correlation, and the verdicts (``score > threshold``) that differ."""
    from scipy.stats import spearmanr

    a, b = np.asarray(fp32, dtype=np.float64), np.asarray(other, dtype=np.float64)
    diff = float(np.abs(a - b).max())
    return {
        "largest_difference": diff,
        "largest_difference_in_std": diff / float(a.std(ddof=1)) if a.size > 1 and a.std() > 0 else float("nan"),
        "spearman": float(spearmanr(a, b).statistic),
        "verdict_flips": int(((a > threshold) != (b > threshold)).sum()),
    }
