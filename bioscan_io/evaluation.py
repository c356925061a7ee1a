"""The BIOSCAN-5M evaluation protocols, one call each, on embeddings from the loaders.

Three protocols, run the way the papers run them (the parameters and their
sources are documented next to each function):

* :func:`zero_shot_clustering` -- zero-shot clustering (BIOSCAN-5M paper,
  "zero-shot transfer learning"; Lowe et al. 2024): UMAP to 50 dimensions,
  agglomerative clustering (Ward), adjusted mutual information at one rank.
* :func:`retrieval_classification` / :func:`retrieval_accuracy` -- retrieval
  classification (BIOSCAN-CLIP / CLIBD, Gong et al. 2024): the nearest key by
  cosine similarity gives each query its taxonomy; micro and macro top-1
  accuracy at order, family, genus and species, per query group (seen / unseen).
  Queries and keys are compared in chunks, so a million keys fit in memory.
* :func:`classification_accuracy` -- micro and macro accuracy of a classifier's
  predictions (fine-tuning and linear probes).

And the step before them, :func:`extract_embeddings`: any torch module over an
``embed`` loader (``make_loader(urls, task="embed")``) gives the embedding
matrix with its processids and per-rank label indices (:class:`Embeddings`);
token outputs of a DNA encoder are mean-pooled over the attention mask
(:func:`masked_mean_pool`), as BarcodeBERT does.

Labels are the loader's label indices (``<rank>_index``): the position of the
value in ``labels.json``, and :data:`MISSING_LABEL` (-1) where the record has
no value at that rank. Every protocol handles a missing label deliberately:
such a sample is left out of the scoring *at that rank* (and, for clustering,
out of the clustering), and is counted in the result's ``n_excluded``.

UMAP and scikit-learn are an optional extra (``pip install 'bioscan-io[eval]'``),
imported only inside :func:`zero_shot_clustering`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .schema import MISSING_LABEL, RANKS, TEXT_RANKS, BioscanError

__all__ = [
    "Accuracy",
    "ClusteringResult",
    "Embeddings",
    "EvaluationError",
    "MISSING_LABEL",
    "RETRIEVAL_RANKS",
    "RetrievalResult",
    "classification_accuracy",
    "extract_embeddings",
    "masked_mean_pool",
    "nearest_keys",
    "retrieval_accuracy",
    "retrieval_classification",
    "zero_shot_clustering",
]

#: The ranks BIOSCAN-CLIP reports retrieval accuracy at (its ``LEVELS``): the
#: ranks of its taxonomy text.
RETRIEVAL_RANKS = TEXT_RANKS

_EXTRA_HINT = "pip install 'bioscan-io[eval]'"


class EvaluationError(BioscanError, ValueError):
    """Bad input to an evaluation function: the message names the argument and the problem."""


# ----------------------------------------------------------------------------- input checks


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _check_rank(rank: str, what: str = "rank") -> str:
    if rank not in RANKS:
        raise EvaluationError(f"unknown {what} {rank!r}; ranks are {', '.join(RANKS)}")
    return rank


def _features(x: Any, name: str, *, allow_empty: bool = False) -> np.ndarray:
    """A 2-D float array of embeddings (memory-mapped arrays stay memory-mapped)."""
    a = x if isinstance(x, np.ndarray) else _to_numpy(x)
    if a.ndim != 2:
        raise EvaluationError(f"{name} must be a 2-D array (n_samples, n_features); got shape {tuple(a.shape)}")
    if a.dtype.kind not in "fiub":
        raise EvaluationError(f"{name} must hold numbers; got dtype {a.dtype}")
    if not allow_empty and (a.shape[0] == 0 or a.shape[1] == 0):
        raise EvaluationError(f"{name} is empty (shape {tuple(a.shape)})")
    return a


def _labels(y: Any, name: str, n: int) -> np.ndarray:
    a = _to_numpy(y)
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


def _rank_labels(labels: Any, rank: str, name: str, n: int) -> np.ndarray:
    """The labels at ``rank`` from a mapping rank -> indices (or a 1-D array, taken as that rank)."""
    if isinstance(labels, Mapping):
        if rank not in labels:
            have = ", ".join(map(str, labels)) or "none"
            raise EvaluationError(f"{name} have no labels at rank {rank!r}; they have: {have}")
        return _labels(labels[rank], f"{name}[{rank!r}]", n)
    return _labels(labels, name, n)


def _check_finite(a: np.ndarray, name: str) -> None:
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        bad = np.flatnonzero(~np.isfinite(a).all(axis=1))
        raise EvaluationError(f"{name} holds NaN or infinite values (row(s) {bad[:5].tolist()}"
                              f"{' ...' if len(bad) > 5 else ''})")


# ----------------------------------------------------------------------------- embeddings


@dataclass
class Embeddings:
    """An embedding matrix with the processid and label indices of each row.

    Parameters
    ----------
    features : numpy.ndarray
        ``(n, d)`` embeddings, one row per record (float32 from
        :func:`extract_embeddings`).
    processids : list of str
        The record of each row.
    labels : dict of str to numpy.ndarray
        Per rank (:data:`bioscan_io.schema.RANKS`), ``(n,)`` int64 label indices
        (positions in ``labels.json``), :data:`MISSING_LABEL` where missing.
    """

    features: np.ndarray
    processids: list
    labels: dict = field(default_factory=dict)

    def __post_init__(self):
        self.features = _features(self.features, "features", allow_empty=True)
        self.processids = [str(p) for p in self.processids]
        n = self.features.shape[0]
        if len(self.processids) != n:
            raise EvaluationError(f"{len(self.processids)} processids for {n} embedding rows")
        labels = {}
        for rank, values in self.labels.items():
            _check_rank(rank, "label rank")
            labels[rank] = _labels(values, f"labels[{rank!r}]", n)
        self.labels = labels

    def __len__(self) -> int:
        return self.features.shape[0]

    def __repr__(self) -> str:
        return f"Embeddings({len(self)} x {self.features.shape[1]}, ranks: {', '.join(self.labels) or 'none'})"

    def label(self, rank: str) -> np.ndarray:
        """The label indices at ``rank``.

        Raises
        ------
        EvaluationError
            If ``rank`` is not a rank, or these embeddings have no labels at it.
        """
        _check_rank(rank)
        return _rank_labels(self.labels, rank, "embeddings", len(self))

    @classmethod
    def concat(cls, *parts: "Embeddings") -> "Embeddings":
        """Rows of several sets one after the other (e.g. ``test`` then ``test_unseen``).

        Only the ranks every part has are kept. A processid in more than one part is
        an error (a record would count twice).
        """
        if not parts:
            raise EvaluationError("Embeddings.concat needs at least one part")
        dims = {p.features.shape[1] for p in parts}
        if len(dims) > 1:
            raise EvaluationError(f"cannot concatenate embeddings of different widths {sorted(dims)}")
        pids = [pid for p in parts for pid in p.processids]
        _no_duplicates(pids, "the concatenated embeddings")
        ranks = [r for r in RANKS if all(r in p.labels for p in parts)]
        return cls(np.concatenate([p.features for p in parts], axis=0).astype(np.float32, copy=False), pids,
                   {r: np.concatenate([p.labels[r] for p in parts]) for r in ranks})

    @classmethod
    def join(cls, *parts: "Embeddings") -> "Embeddings":
        """Features of several modalities side by side (the feature axis), record by record.

        The parts must hold the same records; rows of later parts are reordered to
        the first part's order when they come in another order.
        """
        if not parts:
            raise EvaluationError("Embeddings.join needs at least one part")
        first = parts[0]
        position = {pid: i for i, pid in enumerate(first.processids)}
        blocks = [first.features]
        for k, part in enumerate(parts[1:], start=1):
            if part.processids == first.processids:
                blocks.append(part.features)
                continue
            if len(part) != len(first) or set(part.processids) != set(position):
                missing = sorted(set(first.processids) ^ set(part.processids))[:3]
                raise EvaluationError(f"cannot join embeddings of different records (part {k} differs from "
                                      f"part 0 in {len(part)} vs {len(first)} rows, e.g. {missing})")
            order = np.empty(len(part), dtype=np.int64)
            order[[position[p] for p in part.processids]] = np.arange(len(part))
            blocks.append(part.features[order])
        return cls(np.concatenate(blocks, axis=1).astype(np.float32, copy=False), list(first.processids),
                   dict(first.labels))

    def save(self, path) -> None:
        """Write to a ``.npz`` file (features, processids, one array per rank)."""
        np.savez(path, features=self.features, processids=np.array(self.processids, dtype=str),
                 **{f"label_{r}": v for r, v in self.labels.items()})

    @classmethod
    def load(cls, path) -> "Embeddings":
        """Read what :meth:`save` wrote."""
        with np.load(Path(path), allow_pickle=False) as data:
            labels = {k[len("label_"):]: data[k] for k in data.files if k.startswith("label_")}
            return cls(data["features"], data["processids"].tolist(), labels)


def _no_duplicates(pids: list, where: str) -> None:
    if len(set(pids)) != len(pids):
        seen, dup = set(), []
        for p in pids:
            if p in seen:
                dup.append(p)
            seen.add(p)
        raise EvaluationError(f"{where} hold {len(dup)} repeated processid(s), e.g. {dup[:3]}; every record must "
                              "come once (make the loader with task='embed', which does not pad)")


def masked_mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token embeddings over the attended positions.

    ``(batch, tokens, dim)`` and ``(batch, tokens)`` -> ``(batch, dim)``: the sum of
    the hidden states where the mask is 1, divided by the number of such tokens.

    Source: BarcodeBERT's embedding for probing and clustering, the last hidden
    state mean-pooled over the attention mask (``barcodebert/datasets.py``,
    ``single_inference``, github.com/bioscan-ml/BarcodeBERT); the BIOSCAN-5M
    paper's DNA experiments use it ("global mean-pooling over the token-level
    embeddings"). A sequence with no attended token (a barcode shorter than one
    k-mer) pools to the zero vector, where BarcodeBERT would divide by zero.
    """
    if hidden.ndim != 3 or attention_mask.shape != hidden.shape[:2]:
        raise EvaluationError(f"masked_mean_pool needs hidden (batch, tokens, dim) and a (batch, tokens) mask; "
                              f"got {tuple(hidden.shape)} and {tuple(attention_mask.shape)}")
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)


def _pool(out: Any, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """One vector per sample from what a model returned."""
    if hasattr(out, "last_hidden_state"):  # Hugging Face model outputs
        out = out.last_hidden_state
    elif isinstance(out, Mapping):
        if "last_hidden_state" not in out:
            raise EvaluationError(f"the model returned a mapping without 'last_hidden_state' (keys: {list(out)}); "
                                  "pass forward= to say what to embed")
        out = out["last_hidden_state"]
    elif isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise EvaluationError(f"the model returned {type(out).__name__}, not a tensor; pass forward= to say what to embed")
    if out.ndim == 2:
        return out
    if out.ndim == 3:
        if attention_mask is not None and attention_mask.shape == out.shape[:2]:
            return masked_mean_pool(out, attention_mask)
        return out.mean(1)
    if out.ndim == 4:  # convolutional feature maps: global average pooling
        return out.mean((2, 3))
    raise EvaluationError(f"cannot pool a model output of shape {tuple(out.shape)} to one vector per sample")


def _default_forward(modality: str) -> Callable:
    if modality == "dna":
        def forward(model, batch):
            return _pool(model(batch["input_ids"], batch["attention_mask"]), batch["attention_mask"])
    else:
        def forward(model, batch):
            from .images import normalize

            image = batch["image"]
            return _pool(model(normalize(image) if image.dtype == torch.uint8 else image), None)
    return forward


_INPUTS = {"dna": ("input_ids", "attention_mask"), "image": ("image",)}


@torch.no_grad()
def extract_embeddings(model, loader, *, modality: str = "dna", forward=None, device=None,
                       max_batches: int | None = None):
    """Run a model over an ``embed`` loader: the embedding matrix, processids and labels.

    Parameters
    ----------
    model : torch.nn.Module or mapping of str to torch.nn.Module
        Any module. One module embeds ``modality``; a mapping ``{"dna": m1,
        "image": m2}`` embeds each modality in the same pass over the loader.
    loader : iterable of batches
        ``make_loader(urls, task="embed", modality=...)`` (deterministic order,
        every record once, processids and ``<rank>_index`` labels).
    modality : {"dna", "image"}
        What a single ``model`` embeds.
    forward : callable, or mapping of str to callable, optional
        ``forward(model, batch) -> output`` (tensors already on ``device``), to say
        how the model is called. By default a DNA model is called as
        ``model(input_ids, attention_mask)`` and an image model as
        ``model(image)`` with the image normalised by the dataset's mean and std
        (:func:`bioscan_io.images.normalize`) when the loader gives uint8. The
        output is reduced to one vector per sample: ``(batch, dim)`` is used as
        is; ``(batch, tokens, dim)`` (token outputs; also ``last_hidden_state`` of
        a Hugging Face output or the first element of a tuple) is mean-pooled over
        the attention mask (:func:`masked_mean_pool`, as BarcodeBERT does), or over
        all tokens for images; ``(batch, C, H, W)`` is averaged over H and W.
    device : torch.device or str, optional
        Where the model runs (default: the device of its first parameter, else CPU).
    max_batches : int, optional
        Stop after this many batches (quick checks).

    Returns
    -------
    Embeddings, or dict of str to Embeddings
        float32 features in loader order with their processids and per-rank label
        indices (-1 where missing); a dict keyed by modality when ``model`` is a mapping.

    Raises
    ------
    EvaluationError
        If the loader's batches are not ``embed`` batches, lack the modality's
        inputs, or repeat a record (a padded loader).

    Notes
    -----
    The model is put in eval mode for the pass and given back in the mode it was in.
    Under ``torch.distributed`` each rank embeds its own part of the data; gather
    the parts (e.g. ``torch.distributed.all_gather_object``) and
    :meth:`Embeddings.concat` them before evaluating.
    """
    models = dict(model) if isinstance(model, Mapping) else {modality: model}
    for m in models:
        if m not in _INPUTS:
            raise EvaluationError(f"unknown modality {m!r}; modalities are 'dna', 'image'")
    if isinstance(forward, Mapping):
        forwards = {m: forward.get(m) or _default_forward(m) for m in models}
    else:
        forwards = {m: forward or _default_forward(m) for m in models}
    if device is None:
        first = next(iter(models.values()))
        param = next(iter(first.parameters()), None) if isinstance(first, torch.nn.Module) else None
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)

    modes = {m: mod.training for m, mod in models.items() if isinstance(mod, torch.nn.Module)}
    for m in modes:
        models[m].eval()
    chunks: dict[str, list] = {m: [] for m in models}
    pids: list[str] = []
    labels: dict[str, list] = {r: [] for r in RANKS}
    try:
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            if i == 0:
                _check_embed_batch(batch, models)
            moved = {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
            n = len(batch["processid"])
            for m, mod in models.items():
                out = _pool(forwards[m](mod, moved), moved.get("attention_mask") if m == "dna" else None)
                if out.ndim != 2 or out.shape[0] != n:
                    raise EvaluationError(f"the {m} forward gave shape {tuple(out.shape)} for a batch of {n}; "
                                          "it must give (batch, dim)")
                chunks[m].append(out.detach().float().cpu().numpy())
            pids.extend(batch["processid"])
            for r in RANKS:
                labels[r].append(_to_numpy(batch[f"{r}_index"]).astype(np.int64))
    finally:
        for m, was_training in modes.items():
            models[m].train(was_training)
    _no_duplicates(pids, "the loader's batches")
    label_arrays = {r: (np.concatenate(v) if v else np.empty(0, np.int64)) for r, v in labels.items()}
    result = {}
    for m, parts in chunks.items():
        feats = np.concatenate(parts, axis=0) if parts else np.empty((0, 0), np.float32)
        result[m] = Embeddings(feats.astype(np.float32, copy=False), list(pids), dict(label_arrays))
    return result if isinstance(model, Mapping) else result[modality]


def _check_embed_batch(batch: Any, models: Mapping) -> None:
    if not isinstance(batch, Mapping) or "processid" not in batch:
        raise EvaluationError("extract_embeddings needs batches of the 'embed' task "
                              "(make_loader(urls, task='embed')); got batches without 'processid'")
    missing = [f"{r}_index" for r in RANKS if f"{r}_index" not in batch]
    if missing:
        raise EvaluationError(f"extract_embeddings needs batches of the 'embed' task (make_loader(urls, task='embed')); "
                              f"the batch has no {', '.join(missing[:3])} (keys: {', '.join(sorted(batch))})")
    for m in models:
        absent = [k for k in _INPUTS[m] if k not in batch]
        if absent:
            raise EvaluationError(f"the loader gives no {m} inputs ({', '.join(absent)}); make it with "
                                  f"modality including {m!r}")


# ----------------------------------------------------------------------------- accuracy


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
        return {"micro": self.micro, "macro": self.macro, "n": self.n, "n_classes": self.n_classes,
                "n_excluded": self.n_excluded}


def _accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> Accuracy:
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
    t = _labels(y_true, "y_true", len(_to_numpy(y_true)))
    p = _to_numpy(y_pred)
    if p.ndim == 2:
        if p.shape[0] != len(t):
            raise EvaluationError(f"y_pred has {p.shape[0]} rows of scores but y_true has {len(t)} labels")
        if p.shape[1] == 0:
            raise EvaluationError("y_pred has no class scores (shape (n, 0))")
        p = p.argmax(axis=1)
    p = _labels(p, "y_pred", len(t))
    return _accuracy(t, p)


# ----------------------------------------------------------------------------- retrieval


def _normalized_chunk(a: np.ndarray, start: int, stop: int, name: str, device: torch.device) -> torch.Tensor:
    block = np.ascontiguousarray(a[start:stop], dtype=np.float32)
    if not block.flags.writeable:  # a read-only memory map: torch wants its own copy
        block = block.copy()
    if not np.isfinite(block).all():
        bad = start + np.flatnonzero(~np.isfinite(block).all(axis=1))
        raise EvaluationError(f"{name} holds NaN or infinite values (row(s) {bad[:5].tolist()})")
    t = torch.from_numpy(block).to(device)
    return torch.nn.functional.normalize(t, dim=1)


_QUERY_CACHE_BYTES = 256 * 2**20


def nearest_keys(queries, keys, *, query_chunk: int = 1024, key_chunk: int = 16384, device=None):
    """For each query, the key of highest cosine similarity, computed in bounded memory.

    Keys are taken ``key_chunk`` rows at a time (each read and normalised once)
    and compared with queries ``query_chunk`` rows at a time, keeping a running
    maximum per query, so memory stays at one ``query_chunk x key_chunk``
    similarity block (64 MiB by default), one chunk of each and two numbers per
    query, whatever the number of keys (the normalised queries are kept between
    key blocks when they take at most 256 MiB); ``keys`` (and ``queries``) may be
    memory-mapped arrays. Ties go to the lowest key index, so the result does not
    depend on the chunk sizes.

    Parameters
    ----------
    queries, keys : array-like, shape (n_queries, d) and (n_keys, d)
        Embeddings (numpy, memmap or torch).
    query_chunk, key_chunk : int
        Rows per block.
    device : torch.device or str, optional
        Where the similarities are computed (default CPU; ``"cuda"`` for speed).

    Returns
    -------
    index : numpy.ndarray of int64, shape (n_queries,)
        Row of the nearest key.
    similarity : numpy.ndarray of float32, shape (n_queries,)
        Its cosine similarity. A zero vector has similarity 0 to everything.
    """
    q = _features(queries, "queries")
    k = _features(keys, "keys")
    if q.shape[1] != k.shape[1]:
        raise EvaluationError(f"queries have {q.shape[1]} features but keys have {k.shape[1]}; "
                              "retrieval needs embeddings of the same space")
    if query_chunk < 1 or key_chunk < 1:
        raise EvaluationError(f"query_chunk and key_chunk must be at least 1 (got {query_chunk}, {key_chunk})")
    device = torch.device(device) if device is not None else torch.device("cpu")
    nq, nk = q.shape[0], k.shape[0]
    run_sim = torch.full((nq,), -math.inf, device=device)
    run_idx = torch.zeros(nq, dtype=torch.int64, device=device)
    query_blocks = [(qs, min(qs + query_chunk, nq)) for qs in range(0, nq, query_chunk)]
    # Normalised queries are kept when they are small (up to _QUERY_CACHE_BYTES), else redone per use.
    cached = None
    if nq * q.shape[1] * 4 <= _QUERY_CACHE_BYTES:
        cached = [_normalized_chunk(q, qs, qe, "queries", device) for qs, qe in query_blocks]
    for ks in range(0, nk, key_chunk):  # every key block is read and normalised once
        kb = _normalized_chunk(k, ks, min(ks + key_chunk, nk), "keys", device)
        for b, (qs, qe) in enumerate(query_blocks):
            qb = cached[b] if cached is not None else _normalized_chunk(q, qs, qe, "queries", device)
            sim, idx = (qb @ kb.T).max(dim=1)  # the first maximum within the block
            better = sim > run_sim[qs:qe]  # strict: an earlier key block keeps a tie
            run_sim[qs:qe] = torch.where(better, sim, run_sim[qs:qe])
            run_idx[qs:qe] = torch.where(better, idx + ks, run_idx[qs:qe])
    return run_idx.cpu().numpy(), run_sim.cpu().numpy().astype(np.float32)


@dataclass
class RetrievalResult:
    """Retrieval classification of one query set.

    Attributes
    ----------
    accuracy : dict of str to Accuracy
        Per rank, top-1 accuracy of the nearest key's label.
    nearest : numpy.ndarray of int64
        For each query, the row of its nearest key.
    similarity : numpy.ndarray of float32
        For each query, that key's cosine similarity.
    """

    accuracy: dict
    nearest: np.ndarray
    similarity: np.ndarray

    def as_dict(self) -> dict:
        return {rank: acc.as_dict() for rank, acc in self.accuracy.items()}


def retrieval_accuracy(queries, keys, query_labels, key_labels, *, ranks: Sequence[str] = RETRIEVAL_RANKS,
                       query_chunk: int = 1024, key_chunk: int = 16384, device=None) -> RetrievalResult:
    """Retrieval classification: each query takes the taxonomy of its nearest key.

    The protocol of BIOSCAN-CLIP / CLIBD (Gong et al. 2024, arXiv:2405.17537),
    used for the BIOSCAN-5M paper's multimodal retrieval results:

    * similarity: cosine -- queries and keys L2-normalised, then inner product
      (CLIBD ``scripts/inference_and_eval.py``, ``make_prediction``: sklearn
      ``normalize`` + faiss ``IndexFlatIP``);
    * prediction: the label of the single nearest key (top-1), at each rank;
    * ranks: order, family, genus, species (its ``LEVELS``; :data:`RETRIEVAL_RANKS`);
    * micro accuracy: correct / queries (``top_k_micro_accuracy``); macro accuracy:
      the mean over the true classes among the queries of each class's accuracy
      (``top_k_macro_accuracy``).

    Queries and keys may be any modality in a shared space (image -> DNA,
    DNA -> DNA, image -> image...). For BIOSCAN-5M the CLIBD evaluation takes
    queries from ``test`` (seen species) and ``test_unseen`` (unseen species) and
    keys from ``train`` + ``key_unseen`` (``all_keys`` in
    ``scripts/data_processing/generate_hdf5_file_5m.py``), reported separately for
    seen and unseen queries -- :func:`retrieval_classification` does that.
    With keys from ``train`` alone, queries from ``test_unseen`` and the genus
    rank, it is the BIOSCAN-5M paper's 1-NN probe of unseen species (cosine,
    BarcodeBERT ``knn_probing.py``, ``n_neighbors=1``).

    Missing labels (:data:`MISSING_LABEL`): a query with no label at a rank is not
    scored at that rank (counted in ``n_excluded``); a nearest key with no label
    at the rank is a wrong prediction. (CLIBD writes a missing name as
    ``"not_classified"``, which would match another missing one; in the splits it
    evaluates every record has all four ranks, so the numbers agree.)

    Parameters
    ----------
    queries, keys : array-like, shape (n_queries, d), (n_keys, d)
        Embeddings; ``keys`` may be a memory-mapped array.
    query_labels, key_labels : mapping of str to array-like of int
        Per rank, label indices (e.g. :attr:`Embeddings.labels`).
    ranks : sequence of str
        Ranks to score.
    query_chunk, key_chunk, device
        See :func:`nearest_keys`.

    Returns
    -------
    RetrievalResult

    Raises
    ------
    EvaluationError
        On empty inputs, shapes that do not match, NaN or infinite values, or a
        rank that is not a rank or has no labels.
    """
    q = _features(queries, "queries")
    k = _features(keys, "keys")
    ranks = list(ranks)
    if not ranks:
        raise EvaluationError("no ranks to score")
    for rank in ranks:
        _check_rank(rank)
    qlab = {r: _rank_labels(query_labels, r, "query_labels", q.shape[0]) for r in ranks}
    klab = {r: _rank_labels(key_labels, r, "key_labels", k.shape[0]) for r in ranks}
    idx, sim = nearest_keys(q, k, query_chunk=query_chunk, key_chunk=key_chunk, device=device)
    accuracy = {}
    for r in ranks:
        # A query without a label is not scored; so a key without one is never a match.
        accuracy[r] = _accuracy(qlab[r], klab[r][idx])
    return RetrievalResult(accuracy, idx, sim)


def retrieval_classification(queries, keys: Embeddings, *, ranks: Sequence[str] = RETRIEVAL_RANKS,
                             query_chunk: int = 1024, key_chunk: int = 16384, device=None):
    """Retrieval classification of :class:`Embeddings`, per query group.

    Parameters
    ----------
    queries : Embeddings or mapping of str to Embeddings
        One query set, or named sets reported separately -- BIOSCAN-CLIP's
        ``{"seen": test, "unseen": test_unseen}``.
    keys : Embeddings
        The keys (BIOSCAN-CLIP on BIOSCAN-5M: ``train`` + ``key_unseen``,
        :meth:`Embeddings.concat`).
    ranks, query_chunk, key_chunk, device
        See :func:`retrieval_accuracy`, which documents the protocol.

    Returns
    -------
    RetrievalResult, or dict of str to RetrievalResult
        One result per query group when ``queries`` is a mapping.
    """
    if not isinstance(keys, Embeddings):
        raise EvaluationError(f"keys must be Embeddings (use retrieval_accuracy for arrays); got {type(keys).__name__}")
    groups = queries if isinstance(queries, Mapping) else {None: queries}
    if not groups:
        raise EvaluationError("no query sets given")
    out = {}
    for name, emb in groups.items():
        if not isinstance(emb, Embeddings):
            raise EvaluationError(f"queries{'' if name is None else f'[{name!r}]'} must be Embeddings; "
                                  f"got {type(emb).__name__}")
        out[name] = retrieval_accuracy(emb.features, keys.features, emb.labels, keys.labels, ranks=ranks,
                                       query_chunk=query_chunk, key_chunk=key_chunk, device=device)
    return out if isinstance(queries, Mapping) else out[None]


# ----------------------------------------------------------------------------- zero-shot clustering


@dataclass
class ClusteringResult:
    """Zero-shot clustering of one set of embeddings at one rank.

    Attributes
    ----------
    ami : float
        Adjusted mutual information between the clusters and the true labels.
    rank : str
        The rank of the labels.
    n_samples : int
        Samples clustered and scored.
    n_excluded : int
        Samples left out because their label at ``rank`` is missing.
    n_classes : int
        Distinct true labels among the scored samples.
    n_clusters : int
        Clusters asked of the clusterer (``n_classes`` unless given).
    cluster_labels : numpy.ndarray of int64
        The cluster of each scored sample.
    included : numpy.ndarray of bool
        Which input rows were clustered.
    params : dict
        The protocol parameters as run (after the small-sample adjustments).
    """

    ami: float
    rank: str
    n_samples: int
    n_excluded: int
    n_classes: int
    n_clusters: int
    cluster_labels: np.ndarray
    included: np.ndarray
    params: dict

    def as_dict(self) -> dict:
        return {"ami": self.ami, "rank": self.rank, "n_samples": self.n_samples, "n_excluded": self.n_excluded,
                "n_classes": self.n_classes, "n_clusters": self.n_clusters, **self.params}


_PRENORMS = ("auto", "none", "zscore", "l2")


def _import_eval_extra(what: str):
    try:
        import sklearn.cluster
        import sklearn.metrics
        import umap
    except ImportError as exc:
        raise ImportError(f"{what} needs the optional extra: {_EXTRA_HINT} "
                          f"(umap-learn and scikit-learn; missing: {exc.name})") from exc
    return umap, sklearn.cluster, sklearn.metrics


def _gather_embeddings(embeddings, labels, rank: str):
    """Feature matrix (modalities side by side), labels at ``rank``, and the number of modalities."""
    parts = list(embeddings) if isinstance(embeddings, (list, tuple)) else [embeddings]
    if not parts:
        raise EvaluationError("no embeddings given")
    if all(isinstance(p, Embeddings) for p in parts):
        joined = Embeddings.join(*parts)
        feats = joined.features
        if labels is None:
            labels = joined.labels
    elif any(isinstance(p, Embeddings) for p in parts):
        raise EvaluationError("give either Embeddings or arrays, not a mix")
    else:
        mats = [_features(p, f"embeddings[{i}]" if len(parts) > 1 else "embeddings") for i, p in enumerate(parts)]
        rows = {m.shape[0] for m in mats}
        if len(rows) > 1:
            raise EvaluationError(f"the modalities' embeddings have different numbers of rows {sorted(rows)}")
        feats = np.concatenate([np.asarray(m, dtype=np.float64) for m in mats], axis=1)
        if labels is None:
            raise EvaluationError("labels are needed with array embeddings")
    feats = _features(feats, "embeddings")
    _check_finite(feats, "embeddings")
    y = _rank_labels(labels, rank, "labels", feats.shape[0])
    return np.asarray(feats, dtype=np.float64), y, len(parts)


def zero_shot_clustering(embeddings, labels=None, *, rank: str = "species", n_components: int = 50,
                         n_neighbors: int = 30, min_dist: float = 0.0, metric: str = "euclidean",
                         linkage: str = "ward", n_clusters: int | None = None, prenorm: str = "auto",
                         missing: str = "exclude", seed: int | None = 0,
                         umap_kwargs: dict | None = None) -> ClusteringResult:
    """Zero-shot clustering as the BIOSCAN-5M experiments run it, scored by AMI.

    Embeddings (one or several modalities, concatenated along the feature axis)
    are reduced with UMAP, clustered with agglomerative clustering into as many
    clusters as there are true classes, and the clusters are scored against the
    labels at ``rank`` with adjusted mutual information.

    Protocol and sources -- the BIOSCAN-5M paper (Gharaee et al., NeurIPS 2024
    Datasets & Benchmarks, arXiv:2406.12723), zero-shot transfer learning
    experiments, which follow Lowe et al. 2024, "An Empirical Study into
    Clustering of Unseen Datasets with Self-Supervised Encoders"
    (arXiv:2406.02465); code github.com/bioscan-ml/zs-ssl-clustering
    (``zs_ssl_clustering/cluster.py``, and its README, "Replicating the
    experiments in the BIOSCAN-5M paper"):

    ============  =============  ================================================
    parameter     default        source
    ============  =============  ================================================
    data          (caller)       ``--partition test test_unseen``: the ``test``
                                 and ``test_unseen`` splits together (results
                                 notebook: ``partition="test+test_unseen"``)
    prenorm       z-score when   ``--prenorm=elementwise_zscore`` in the image+DNA
                  several        runs (each feature to zero mean, unit variance);
                  modalities     the single-modality commands pass no prenorm
    n_components  50             ``--ndim-reduced-man=50``
    n_neighbors   30             ``cluster.py`` (``n_neighbors=30``), after the
                                 UMAP docs' "UMAP enhanced clustering"
    min_dist      0.0            ``cluster.py`` (``min_dist=0.0``), same source
    metric        euclidean      UMAP's metric (``cluster.py`` default); the
                                 clusterer is always euclidean (Ward needs it)
    linkage       ward           the zs-ssl-clustering README recommendation and
                                 the notebook's defaults (``aggclust_linkage``)
    n_clusters    true classes   ``n_clusters_gt = len(np.unique(y_true))``
    score         AMI            ``sklearn.metrics.adjusted_mutual_info_score``
                                 (arithmetic normalisation, the default)
    seed          0              UMAP's ``random_state`` (reproducible runs)
    ============  =============  ================================================

    Parameters
    ----------
    embeddings : array-like (n, d), Embeddings, or a list of either
        The embeddings; a list holds one matrix per modality (same records, same
        order), concatenated along the feature axis. :class:`Embeddings` of several
        modalities are aligned by processid.
    labels : array-like of int (n,), or mapping of str to array-like, optional
        True label indices: one array, or per rank (then ``rank`` picks). Taken
        from the :class:`Embeddings` when not given.
    rank : str
        The rank scored (one of :data:`bioscan_io.schema.RANKS`); the BIOSCAN-5M
        paper reports AMI across the taxonomic ranks.
    n_components, n_neighbors, min_dist, metric
        UMAP settings (table above).
    linkage : str
        Agglomerative clustering linkage (euclidean distance).
    n_clusters : int, optional
        Clusters to form (default: the number of distinct true labels).
    prenorm : {"auto", "none", "zscore", "l2"}
        Scaling before UMAP: ``"zscore"`` standardises each feature over the
        samples (a feature with zero variance is only centred); ``"l2"`` scales each
        sample to unit length; ``"auto"`` is ``"zscore"`` for several modalities and
        ``"none"`` for one, as in the paper's runs.
    missing : {"exclude", "as_class"}
        Samples whose label at ``rank`` is missing (:data:`MISSING_LABEL`):
        ``"exclude"`` (default) leaves them out of the clustering and the score;
        ``"as_class"`` keeps them as one more class, which is what the reference
        code does implicitly (pandas category code -1 counted as a label value).
    seed : int or None
        UMAP's ``random_state``: the same seed gives the same result. ``None``
        lets UMAP run multithreaded and unseeded (not reproducible).
    umap_kwargs : dict, optional
        More ``umap.UMAP`` arguments (override the above).

    Returns
    -------
    ClusteringResult

    Raises
    ------
    EvaluationError
        On a rank that is not a rank, labels that do not match the embeddings,
        empty input, NaN or infinite values, fewer than 2 samples to cluster, or
        ``n_clusters`` larger than the number of samples.
    ImportError
        If umap-learn or scikit-learn is not installed (the ``eval`` extra).

    Notes
    -----
    UMAP needs more samples than ``n_components + 1`` for its spectral
    initialisation and more than ``n_neighbors``; with fewer (tiny test sets),
    the neighbourhood is cut to ``n_samples - 1`` and the initialisation is
    random, with a warning; ``params`` records what was run.
    """
    _check_rank(rank)
    if prenorm not in _PRENORMS:
        raise EvaluationError(f"unknown prenorm {prenorm!r}; choose one of {', '.join(_PRENORMS)}")
    if missing not in ("exclude", "as_class"):
        raise EvaluationError(f"missing must be 'exclude' or 'as_class', got {missing!r}")
    if n_components < 1 or n_neighbors < 2:
        raise EvaluationError(f"n_components must be >= 1 and n_neighbors >= 2 (got {n_components}, {n_neighbors})")
    feats, y, n_modalities = _gather_embeddings(embeddings, labels, rank)
    umap, sk_cluster, sk_metrics = _import_eval_extra("zero-shot clustering")

    included = y >= 0 if missing == "exclude" else np.ones(len(y), dtype=bool)
    x, y_used = feats[included], y[included]
    n = x.shape[0]
    if n < 2:
        raise EvaluationError(f"zero-shot clustering at rank {rank!r} needs at least 2 labelled samples; "
                              f"{n} of {len(y)} have a label there")
    n_classes = int(len(np.unique(y_used)))
    k = n_classes if n_clusters is None else int(n_clusters)
    if not 1 <= k <= n:
        raise EvaluationError(f"n_clusters must be between 1 and the number of samples ({n}); got {k}")

    norm = ("zscore" if n_modalities > 1 else "none") if prenorm == "auto" else prenorm
    if norm == "zscore":
        x = x - x.mean(axis=0)
        std = x.std(axis=0)
        x = x / np.where(std > 0, std, 1.0)
    elif norm == "l2":
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    umap_args = {"n_components": int(n_components), "n_neighbors": int(n_neighbors), "min_dist": float(min_dist),
                 "metric": metric, "init": "spectral", "random_state": seed}
    umap_args.update(umap_kwargs or {})
    if n - 1 < umap_args["n_neighbors"]:
        _small_warning(f"{n} samples: UMAP n_neighbors cut from {umap_args['n_neighbors']} to {n - 1}")
        umap_args["n_neighbors"] = n - 1
    if isinstance(umap_args["init"], str) and umap_args["init"] == "spectral" and n <= umap_args["n_components"] + 1:
        _small_warning(f"{n} samples for {umap_args['n_components']} UMAP dimensions: random initialisation "
                       "(the spectral one needs more samples than dimensions + 1)")
        umap_args["init"] = "random"
    params = {**{k_: v for k_, v in umap_args.items() if k_ != "random_state"}, "seed": umap_args["random_state"],
              "linkage": linkage, "prenorm": norm, "missing": missing}
    with warnings.catch_warnings():
        # UMAP says it runs single-threaded when seeded, and repeats the n_neighbors cut made above.
        warnings.filterwarnings("ignore", message=r"n_jobs value .* overridden", category=UserWarning)
        warnings.filterwarnings("ignore", message=r"n_neighbors is larger than the dataset size", category=UserWarning)
        reduced = umap.UMAP(**umap_args).fit_transform(x.astype(np.float32))
    clusterer = sk_cluster.AgglomerativeClustering(n_clusters=k, metric="euclidean", linkage=linkage)
    pred = clusterer.fit_predict(reduced).astype(np.int64)
    ami = float(sk_metrics.adjusted_mutual_info_score(y_used, pred))
    return ClusteringResult(ami, rank, int(n), int(len(y) - n), n_classes, k, pred, included, params)


def _small_warning(message: str) -> None:
    warnings.warn(f"zero-shot clustering: {message}", UserWarning, stacklevel=3)
