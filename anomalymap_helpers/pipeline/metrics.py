"""Detection metrics and the threshold, fitted on validation normals only."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from anomalymap_helpers.errors import ParameterError


def check_percentile(threshold_percentile: float) -> float:
    """Return the percentile if it lies strictly between 0 and 100."""
    p = threshold_percentile
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p < 100 or math.isnan(p):
        raise ParameterError(
            f"threshold_percentile={p!r}: use a number strictly between 0 and 100, e.g. 99 "
            "(the share of validation normals that fall below the threshold)"
        )
    return float(p)


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


def evaluate(scores: Any, is_anomaly: Any, threshold: float) -> Metrics:
    """ROC-AUC, average precision and the confusion at ``threshold``.

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
    )


def compare(scores: dict[str, Any], is_anomaly: Any) -> list[dict[str, float | str]]:
    """ROC-AUC and average precision of each named score, best ROC-AUC first."""
    y = np.asarray(is_anomaly, dtype=bool)
    rows = [
        {
            "method": name,
            "roc_auc": float(roc_auc_score(y, np.asarray(s))),
            "average_precision": float(average_precision_score(y, np.asarray(s))),
        }
        for name, s in scores.items()
    ]
    return sorted(rows, key=lambda r: -r["roc_auc"])
