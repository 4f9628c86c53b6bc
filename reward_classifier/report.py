"""The report a person reads before trusting a classifier: metrics.json and three PNGs.

    metrics.json         precision, recall, F1, ROC AUC, balanced accuracy, threshold, achieved
                         FPR, confusion counts (and whatever the caller adds)
    roc.png              the ROC curve with the operating point marked
    confusion.png        the confusion matrix at the threshold
    worst_frames.png     contact sheet: the most confident false positives and false negatives
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from reward_classifier.data import LabelledFrames
from reward_classifier.metrics import classification_report, roc_curve

WORST_PER_KIND = 8


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_report(out_dir: str | Path, frames: LabelledFrames, probabilities: np.ndarray, threshold: float,
                 extra: Mapping[str, Any] | None = None, title: str = "") -> dict[str, Any]:
    """Write metrics.json and the PNGs for `probabilities` of `frames` at `threshold`; return the metrics."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = {**classification_report(frames.labels, probabilities, threshold), **(extra or {})}
    metrics["episodes"] = int(np.unique(frames.episode).size)
    (out_dir / "metrics.json").write_text(json.dumps(_json_safe(metrics), indent=2) + "\n")
    plot_roc(out_dir / "roc.png", frames.labels, probabilities, metrics, title)
    plot_confusion(out_dir / "confusion.png", metrics, title)
    plot_worst_frames(out_dir / "worst_frames.png", frames, probabilities, threshold)
    return metrics


def _figure(width: float, height: float):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, plt.figure(figsize=(width, height), dpi=100)


def plot_roc(path: Path, labels: np.ndarray, probabilities: np.ndarray, metrics: Mapping[str, Any], title: str) -> None:
    plt, fig = _figure(5, 5)
    fpr, tpr, _ = roc_curve(labels, probabilities)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(fpr, tpr, lw=2, label=f"ROC (AUC {metrics['roc_auc']:.4f})")
    ax.plot([0, 1], [0, 1], ls=":", color="grey")
    ax.scatter([metrics["fpr"]], [metrics["recall"]], color="red", zorder=3,
               label=f"threshold {metrics['threshold']:.3f}: FPR {metrics['fpr']:.3f}, TPR {metrics['recall']:.3f}")
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate (recall)")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_title(title or "reward classifier ROC")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_confusion(path: Path, metrics: Mapping[str, Any], title: str) -> None:
    plt, fig = _figure(4.2, 4)
    matrix = np.array([[metrics["true_negatives"], metrics["false_positives"]],
                       [metrics["false_negatives"], metrics["true_positives"]]])
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(matrix, cmap="Blues")
    for (row, col), count in np.ndenumerate(matrix):
        ax.text(col, row, str(count), ha="center", va="center",
                color="white" if count > matrix.max() / 2 else "black", fontsize=14)
    ax.set_xticks([0, 1], ["failure", "success"])
    ax.set_yticks([0, 1], ["failure", "success"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("label")
    ax.set_title(title or f"threshold {metrics['threshold']:.3f}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_worst_frames(path: Path, frames: LabelledFrames, probabilities: np.ndarray, threshold: float) -> None:
    """Top row(s): failures with the highest probability; bottom: successes with the lowest. Each
    tile shows every camera side by side, marked red when the classifier gets it wrong."""
    negatives = np.flatnonzero(~frames.labels)
    positives = np.flatnonzero(frames.labels)
    worst_negatives = negatives[np.argsort(-probabilities[negatives])][:WORST_PER_KIND]
    worst_positives = positives[np.argsort(probabilities[positives])][:WORST_PER_KIND]
    rows = [("failure, highest p", worst_negatives), ("success, lowest p", worst_positives)]
    columns = max(1, max(len(r[1]) for r in rows))
    plt, fig = _figure(2.4 * columns, 2.6 * len(rows))
    cameras = list(frames.images)
    for row, (name, indices) in enumerate(rows):
        for col in range(columns):
            ax = fig.add_subplot(len(rows), columns, row * columns + col + 1)
            ax.axis("off")
            if col >= len(indices):
                continue
            i = indices[col]
            tile = np.concatenate([frames.images[c][i] for c in cameras], axis=1)
            ax.imshow(tile)
            wrong = (probabilities[i] > threshold) != frames.labels[i]
            ax.set_title(f"{name}\np={probabilities[i]:.3f} ep {frames.episode[i]} f {frames.frame[i]}",
                         fontsize=7, color="red" if wrong else "black")
    fig.suptitle(f"worst frames at threshold {threshold:.3f} (red: misclassified; cameras {', '.join(cameras)})",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
