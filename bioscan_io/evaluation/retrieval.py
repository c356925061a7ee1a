"""Retrieval classification (BIOSCAN-CLIP / CLIBD): each query takes the taxonomy of its nearest key.

Nearest by cosine similarity, computed in blocks (:func:`nearest_keys`), so a
million keys, memory-mapped, fit in memory; scored per rank and per query
group (seen / unseen) with :class:`~bioscan_io.evaluation.metrics.Accuracy`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..schema import TEXT_RANKS
from .checks import EvaluationError, check_rank, feature_matrix, rank_labels
from .embeddings import Embeddings
from .metrics import top1_accuracy

__all__ = ["RETRIEVAL_RANKS", "RetrievalResult", "nearest_keys", "retrieval_accuracy", "retrieval_classification"]

#: The ranks BIOSCAN-CLIP reports retrieval accuracy at (its ``LEVELS``): the
#: ranks of its taxonomy text.
RETRIEVAL_RANKS = TEXT_RANKS


def _normalized_chunk(a: np.ndarray, start: int, stop: int, name: str, device: torch.device) -> torch.Tensor:
    """Rows ``start:stop`` as float32 on ``device``, L2-normalised (read once from a memory map)."""
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
    q = feature_matrix(queries, "queries")
    k = feature_matrix(keys, "keys")
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
        """Per rank, the accuracy as a plain dict (for JSON reports)."""
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
    q = feature_matrix(queries, "queries")
    k = feature_matrix(keys, "keys")
    ranks = list(ranks)
    if not ranks:
        raise EvaluationError("no ranks to score")
    for rank in ranks:
        check_rank(rank)
    qlab = {r: rank_labels(query_labels, r, "query_labels", q.shape[0]) for r in ranks}
    klab = {r: rank_labels(key_labels, r, "key_labels", k.shape[0]) for r in ranks}
    idx, sim = nearest_keys(q, k, query_chunk=query_chunk, key_chunk=key_chunk, device=device)
    accuracy = {}
    for r in ranks:
        # A query without a label is not scored; so a key without one is never a match.
        accuracy[r] = top1_accuracy(qlab[r], klab[r][idx])
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
