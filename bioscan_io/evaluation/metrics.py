"""Top-1 accuracy, micro and macro averaged, with missing labels left out of the score."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .checks import EvaluationError, label_vector, to_numpy

__all__ = ["Accuracy", "classification_accuracy", "top1_accuracy"]


@dataclass(frozen=True)
class Accuracy:
    """Top-1 accuracy, micro and macro averaged.

    Attributes
    ----------
    micro : float
        Correct predictions / scored samples (NaN when nothing was scored).
    macro : float
        Mean over the true classes among the scored samples of each class's
        accuracy (its recall): every class weighs the same, however many samples it
        has (scikit-learn's balanced accuracy). NaN when nothing was scored.
    n : int
        Samples scored.
    n_classes : int
        Distinct true classes among them.
    n_excluded : int
        Samples left out because their true label is missing.
    """

    micro: float
    macro: float
    n: int
    n_classes: int
    n_excluded: int = 0

    def as_dict(self) -> dict:
        """The fields as a plain dict (for JSON reports)."""
        return {"micro": self.micro, "macro": self.macro, "n": self.n, "n_classes": self.n_classes,
                "n_excluded": self.n_excluded}


def top1_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> Accuracy:
    """:class:`Accuracy` of checked int64 label vectors; negative true labels are not scored.

    Parameters
    ----------
    y_true, y_pred : numpy.ndarray of int64, shape (n,)
        True and predicted label indices, already checked.

    Returns
    -------
    Accuracy
    """
    keep = y_true >= 0
    t, p = y_true[keep], y_pred[keep]
    n_excluded = int((~keep).sum())
    if t.size == 0:
        return Accuracy(math.nan, math.nan, 0, 0, n_excluded)
    correct = t == p
    classes, inverse = np.unique(t, return_inverse=True)
    per_class = np.bincount(inverse, weights=correct.astype(np.float64)) / np.bincount(inverse)
    return Accuracy(float(correct.mean()), float(per_class.mean()), int(t.size), int(len(classes)), n_excluded)


def classification_accuracy(y_true, y_pred) -> Accuracy:
    """Micro and macro top-1 accuracy of a classifier, missing labels left out.

    Parameters
    ----------
    y_true : array-like of int, shape (n,)
        True label indices (e.g. the ``label`` of ``make_loader(..., task="classify")``).
        Negative values -- the loader's :data:`MISSING_LABEL` (-1) for a record
        with no value at the rank, or PyTorch's ignore index -100 -- are not
        scored and are counted in ``n_excluded``.
    y_pred : array-like of int, shape (n,), or of float, shape (n, n_classes)
        Predicted label indices, or logits/scores (their argmax is the prediction).

    Returns
    -------
    Accuracy
        ``micro``: fraction correct, the accuracy the BIOSCAN-5M paper reports for
        fine-tuned and probed models (BarcodeBERT ``finetuning.py`` /
        ``knn_probing.py``: ``accuracy``); ``macro``: mean per-class accuracy
        (BarcodeBERT's ``accuracy-balanced``; BIOSCAN-CLIP's macro accuracy).

    Raises
    ------
    EvaluationError
        On shapes that do not match or non-integer labels.
    """
    t = label_vector(y_true, "y_true", len(to_numpy(y_true)))
    p = to_numpy(y_pred)
    if p.ndim == 2:
        if p.shape[0] != len(t):
            raise EvaluationError(f"y_pred has {p.shape[0]} rows of scores but y_true has {len(t)} labels")
        if p.shape[1] == 0:
            raise EvaluationError("y_pred has no class scores (shape (n, 0))")
        p = p.argmax(axis=1)
    p = label_vector(p, "y_pred", len(t))
    return top1_accuracy(t, p)
