"""Argument checks shared by the evaluation protocols: every message names the argument and the problem."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ..schema import RANKS, BioscanError

__all__ = [
    "EvaluationError",
    "check_finite",
    "check_rank",
    "feature_matrix",
    "label_vector",
    "no_duplicates",
    "rank_labels",
    "to_numpy",
]


class EvaluationError(BioscanError, ValueError):
    """Bad input to an evaluation function: the message names the argument and the problem."""


def to_numpy(x: Any) -> np.ndarray:
    """A numpy view of a tensor (moved to the CPU) or of anything array-like."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def check_rank(rank: str, what: str = "rank") -> str:
    """``rank`` itself, if it is one of :data:`bioscan_io.schema.RANKS`."""
    if rank not in RANKS:
        raise EvaluationError(f"unknown {what} {rank!r}; ranks are {', '.join(RANKS)}")
    return rank


def feature_matrix(x: Any, name: str, *, allow_empty: bool = False) -> np.ndarray:
    """A 2-D numeric array of embeddings (memory-mapped arrays stay memory-mapped)."""
    a = x if isinstance(x, np.ndarray) else to_numpy(x)
    if a.ndim != 2:
        raise EvaluationError(f"{name} must be a 2-D array (n_samples, n_features); got shape {tuple(a.shape)}")
    if a.dtype.kind not in "fiub":
        raise EvaluationError(f"{name} must hold numbers; got dtype {a.dtype}")
    if not allow_empty and (a.shape[0] == 0 or a.shape[1] == 0):
        raise EvaluationError(f"{name} is empty (shape {tuple(a.shape)})")
    return a


def label_vector(y: Any, name: str, n: int) -> np.ndarray:
    """``n`` int64 label indices (whole-valued floats are accepted: labels round-tripped through float)."""
    a = to_numpy(y)
    if a.ndim != 1:
        raise EvaluationError(f"{name} must be a 1-D array of label indices; got shape {tuple(a.shape)}")
    if a.dtype.kind not in "iu":
        if a.dtype.kind == "f" and a.size and np.all(np.isfinite(a)) and np.all(a == np.round(a)):
            a = a.astype(np.int64)
        elif a.size:
            raise EvaluationError(f"{name} must hold integer label indices; got dtype {a.dtype}")
    if len(a) != n:
        raise EvaluationError(f"{name} has {len(a)} labels but there are {n} embeddings")
    return a.astype(np.int64, copy=False)


def rank_labels(labels: Any, rank: str, name: str, n: int) -> np.ndarray:
    """The labels at ``rank`` from a mapping rank -> indices (or a 1-D array, taken as that rank)."""
    if isinstance(labels, Mapping):
        if rank not in labels:
            have = ", ".join(map(str, labels)) or "none"
            raise EvaluationError(f"{name} have no labels at rank {rank!r}; they have: {have}")
        return label_vector(labels[rank], f"{name}[{rank!r}]", n)
    return label_vector(labels, name, n)


def check_finite(a: np.ndarray, name: str) -> None:
    """Raise, naming the first bad rows, if a float matrix holds NaN or infinite values."""
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        bad = np.flatnonzero(~np.isfinite(a).all(axis=1))
        raise EvaluationError(f"{name} holds NaN or infinite values (row(s) {bad[:5].tolist()}"
                              f"{' ...' if len(bad) > 5 else ''})")


def no_duplicates(pids: list, where: str) -> None:
    """Raise if a processid repeats: a record scored twice would bias every protocol."""
    if len(set(pids)) != len(pids):
        seen, dup = set(), []
        for p in pids:
            if p in seen:
                dup.append(p)
            seen.add(p)
        raise EvaluationError(f"{where} hold {len(dup)} repeated processid(s), e.g. {dup[:3]}; every record must "
                              "come once (make the loader with task='embed', which does not pad)")
