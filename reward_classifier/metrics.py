"""Scores against labels: the ROC, its area, the threshold for a target false-positive rate, and
the operating-point figures a person checks before trusting a classifier on the robot.

Success is `probability > threshold` everywhere (training report, wrapper, benchmarks).
"""

from __future__ import annotations

import math

import numpy as np


def threshold_for_fpr(negative_scores: np.ndarray, target_fpr: float, floor: float = 0.0) -> float:
    """The lowest threshold t >= floor with mean(negative_scores > t) <= target_fpr.

    Lowest, because among thresholds meeting the false-positive target it keeps the most true
    positives. With n negatives at most floor(target_fpr * n) may lie above t, so t is the
    (k+1)-th largest negative score, k = floor(target_fpr * n)."""
    if not 0.0 <= target_fpr <= 1.0:
        raise ValueError(f"target_fpr must be in [0, 1], got {target_fpr}")
    scores = np.sort(np.asarray(negative_scores, np.float64))[::-1]
    if scores.size == 0:
        raise ValueError("no negative scores: the threshold needs negative (failure) frames")
    allowed = math.floor(target_fpr * scores.size + 1e-9)
    threshold = float(scores[allowed]) if allowed < scores.size else float(scores[-1]) - 1e-12
    return max(threshold, floor)


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) for `score > threshold`, from the strictest threshold (nothing
    positive) to the loosest (everything positive); tied scores move together."""
    labels = np.asarray(labels, bool)
    scores = np.asarray(scores, np.float64)
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_labels = scores[order], labels[order]
    last_of_tie = np.r_[np.nonzero(np.diff(sorted_scores))[0], sorted_scores.size - 1]
    tp = np.cumsum(sorted_labels)[last_of_tie]
    fp = np.cumsum(~sorted_labels)[last_of_tie]
    positives, negatives = max(int(labels.sum()), 1), max(int((~labels).sum()), 1)
    # Threshold just below each distinct score admits it; the first point admits nothing.
    thresholds = np.r_[np.inf, np.nextafter(sorted_scores[last_of_tie], -np.inf)]
    return np.r_[0.0, fp / negatives], np.r_[0.0, tp / positives], thresholds


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    labels = np.asarray(labels, bool)
    scores = np.asarray(scores, np.float64)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    # Mann-Whitney U from average ranks.
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(scores.size)
    sorted_scores = scores[order]
    starts = np.r_[0, np.nonzero(np.diff(sorted_scores))[0] + 1]
    ends = np.r_[starts[1:], scores.size]
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else float("nan")


def classification_report(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """Confusion counts and rates at `score > threshold`, plus the threshold-free ROC AUC."""
    labels = np.asarray(labels, bool)
    predicted = np.asarray(scores) > threshold
    tp = int(np.sum(predicted & labels))
    fp = int(np.sum(predicted & ~labels))
    tn = int(np.sum(~predicted & ~labels))
    fn = int(np.sum(~predicted & labels))
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    specificity = _ratio(tn, tn + fp)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    return {
        "threshold": float(threshold),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "fpr": _ratio(fp, fp + tn),
        "balanced_accuracy": (recall + specificity) / 2.0,
        "roc_auc": roc_auc(labels, scores),
        "true_positives": tp,
        "false_positives": fp,
        "true_negatives": tn,
        "false_negatives": fn,
        "positives": tp + fn,
        "negatives": tn + fp,
    }
