"""Evaluation metrics, vectorised over classes (NumPy).

`map` follows the references: 100 x the mean over *all* classes of the average
precision, where a class with no positive in the split scores AP = 0 (reported
as `num_empty_classes` so the penalty is visible). AP itself is scikit-learn's
`average_precision_score` (step-wise, tied scores form one threshold), computed
for every class at once.

Per-image metrics, in percent: `prec_at_k` (share of the k top-scored classes
that are positive), `rec_at_k` (share of an image's positives found in its top
k, averaged over all images as in the references: an image without a positive counts 0), `top_k` (share of images whose top k
holds at least one positive). At `threshold`: `cf1` (per-class precision and
recall averaged over classes, then F1; a class with no prediction has precision
0) and `of1` (counts pooled over all entries, then F1).
"""
from __future__ import annotations

import numpy as np

TOP_KS = (1, 3, 5)


def average_precision(preds: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-class AP of (N, C) scores against 0/1 targets; 0 for a class with no positive."""
    # Work class-major (C, N): each class's sort then runs over contiguous memory.
    scores_by_class = np.ascontiguousarray(preds.T)
    order = np.argsort(-scores_by_class, axis=1)
    scores = np.take_along_axis(scores_by_class, order, axis=1)
    hits = np.take_along_axis(np.ascontiguousarray(targets.T), order, axis=1)
    n = scores.shape[1]
    tp = np.cumsum(hits, axis=1, dtype=np.float64)
    precision = tp / np.arange(1, n + 1, dtype=np.float64)
    # Tied scores are one threshold: every hit in a tie group takes the precision
    # at the group's last row (sklearn's distinct-threshold curve).
    last_of_group = np.ones(scores.shape, dtype=bool)
    last_of_group[:, :-1] = scores[:, :-1] != scores[:, 1:]
    end_row = np.where(last_of_group, np.arange(n), n)
    end_row = np.minimum.accumulate(end_row[:, ::-1], axis=1)[:, ::-1]
    precision_at_end = np.take_along_axis(precision, end_row, axis=1)
    num_pos = tp[:, -1] if n else np.zeros(len(scores))
    ap = np.where(hits, precision_at_end, 0.0).sum(axis=1) / np.maximum(num_pos, 1)
    return np.where(num_pos > 0, ap, 0.0)


def _f1(p: float, r: float) -> float:
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def compute_metrics(preds: np.ndarray, targets: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """All metrics of (N, C) scores in [0, 1] against 0/1 targets; percentages except the count."""
    preds = np.asarray(preds)
    targets = np.asarray(targets) > 0.5
    if preds.shape != targets.shape or preds.ndim != 2:
        raise ValueError(f"preds {preds.shape} and targets {targets.shape} must be the same (N, C) shape")
    num_pos = targets.sum(axis=0)
    out: dict[str, float] = {
        "map": 100.0 * float(average_precision(preds, targets).mean()),
        "num_empty_classes": int((num_pos == 0).sum()),
    }

    # Only the top max(k) classes of each image matter: partition, then sort those few.
    kmax = min(max(TOP_KS), preds.shape[1])
    top = np.argpartition(-preds, kmax - 1, axis=1)[:, :kmax]
    top = np.take_along_axis(top, np.argsort(-np.take_along_axis(preds, top, axis=1), axis=1), axis=1)
    hits = np.take_along_axis(targets, top, axis=1).cumsum(axis=1)
    pos_per_image = targets.sum(axis=1)
    has_pos = pos_per_image > 0
    for k in TOP_KS:
        found = hits[:, min(k, hits.shape[1]) - 1]
        out[f"prec_at_{k}"] = 100.0 * float((found / k).mean())
        recall = np.divide(found, pos_per_image, out=np.zeros(len(found)), where=has_pos)
        out[f"rec_at_{k}"] = 100.0 * float(recall.mean())
        out[f"top_{k}"] = 100.0 * float((found > 0).mean())

    predicted = preds >= threshold
    tp = (predicted & targets).sum(axis=0).astype(np.float64)
    n_pred = predicted.sum(axis=0)
    cp = float(np.mean(np.divide(tp, n_pred, out=np.zeros_like(tp), where=n_pred > 0)))
    cr = float(np.mean(np.divide(tp, num_pos, out=np.zeros_like(tp), where=num_pos > 0)))
    op = float(tp.sum()) / max(int(n_pred.sum()), 1)
    orec = float(tp.sum()) / max(int(num_pos.sum()), 1)
    out["cf1"] = 100.0 * _f1(cp, cr)
    out["of1"] = 100.0 * _f1(op, orec)
    return out
