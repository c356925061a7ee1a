"""Zero-shot clustering (BIOSCAN-5M paper; Lowe et al. 2024): UMAP, agglomerative clustering, AMI at one rank.

UMAP and scikit-learn are an optional extra (``pip install 'bioscan-io[eval]'``),
imported only inside :func:`zero_shot_clustering`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from .checks import EvaluationError, check_finite, check_rank, feature_matrix, rank_labels
from .embeddings import Embeddings

__all__ = ["ClusteringResult", "zero_shot_clustering"]

_EXTRA_HINT = "pip install 'bioscan-io[eval]'"


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
        """The scores and parameters as a plain dict (for JSON reports), without the arrays."""
        return {"ami": self.ami, "rank": self.rank, "n_samples": self.n_samples, "n_excluded": self.n_excluded,
                "n_classes": self.n_classes, "n_clusters": self.n_clusters, **self.params}


_PRENORMS = ("auto", "none", "zscore", "l2")


def _import_eval_extra(what: str):
    """umap, sklearn.cluster and sklearn.metrics; an ImportError saying how to install them."""
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
        mats = [feature_matrix(p, f"embeddings[{i}]" if len(parts) > 1 else "embeddings") for i, p in enumerate(parts)]
        rows = {m.shape[0] for m in mats}
        if len(rows) > 1:
            raise EvaluationError(f"the modalities' embeddings have different numbers of rows {sorted(rows)}")
        feats = np.concatenate([np.asarray(m, dtype=np.float64) for m in mats], axis=1)
        if labels is None:
            raise EvaluationError("labels are needed with array embeddings")
    feats = feature_matrix(feats, "embeddings")
    check_finite(feats, "embeddings")
    y = rank_labels(labels, rank, "labels", feats.shape[0])
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
    _check_arguments(rank, prenorm, missing, n_components, n_neighbors)
    feats, y, n_modalities = _gather_embeddings(embeddings, labels, rank)
    umap, sk_cluster, sk_metrics = _import_eval_extra("zero-shot clustering")

    included = y >= 0 if missing == "exclude" else np.ones(len(y), dtype=bool)
    x, y_used = feats[included], y[included]
    n = x.shape[0]
    n_classes, k = _cluster_count(y_used, len(y), rank, n_clusters)
    norm = ("zscore" if n_modalities > 1 else "none") if prenorm == "auto" else prenorm
    x = _prenormalize(x, norm)
    umap_args = _umap_args(n, {"n_components": int(n_components), "n_neighbors": int(n_neighbors),
                               "min_dist": float(min_dist), "metric": metric, "init": "spectral",
                               "random_state": seed, **(umap_kwargs or {})})
    params = {**{k_: v for k_, v in umap_args.items() if k_ != "random_state"}, "seed": umap_args["random_state"],
              "linkage": linkage, "prenorm": norm, "missing": missing}
    reduced = _reduce(umap, x, umap_args)
    clusterer = sk_cluster.AgglomerativeClustering(n_clusters=k, metric="euclidean", linkage=linkage)
    pred = clusterer.fit_predict(reduced).astype(np.int64)
    ami = float(sk_metrics.adjusted_mutual_info_score(y_used, pred))
    return ClusteringResult(ami, rank, int(n), int(len(y) - n), n_classes, k, pred, included, params)


def _check_arguments(rank: str, prenorm: str, missing: str, n_components: int, n_neighbors: int) -> None:
    """The protocol's own settings, checked before any data is looked at."""
    check_rank(rank)
    if prenorm not in _PRENORMS:
        raise EvaluationError(f"unknown prenorm {prenorm!r}; choose one of {', '.join(_PRENORMS)}")
    if missing not in ("exclude", "as_class"):
        raise EvaluationError(f"missing must be 'exclude' or 'as_class', got {missing!r}")
    if n_components < 1 or n_neighbors < 2:
        raise EvaluationError(f"n_components must be >= 1 and n_neighbors >= 2 (got {n_components}, {n_neighbors})")


def _cluster_count(y_used: np.ndarray, n_total: int, rank: str, n_clusters: int | None) -> tuple[int, int]:
    """(distinct true labels, clusters to form) for the samples kept; raises when they cannot be clustered."""
    n = len(y_used)
    if n < 2:
        raise EvaluationError(f"zero-shot clustering at rank {rank!r} needs at least 2 labelled samples; "
                              f"{n} of {n_total} have a label there")
    n_classes = int(len(np.unique(y_used)))
    k = n_classes if n_clusters is None else int(n_clusters)
    if not 1 <= k <= n:
        raise EvaluationError(f"n_clusters must be between 1 and the number of samples ({n}); got {k}")
    return n_classes, k


def _prenormalize(x: np.ndarray, norm: str) -> np.ndarray:
    """``x`` scaled before UMAP: ``"zscore"`` per feature, ``"l2"`` per sample, ``"none"`` as is."""
    if norm == "zscore":
        x = x - x.mean(axis=0)
        std = x.std(axis=0)
        # a constant feature is only centred: dividing by its zero spread would give NaN
        x = x / np.where(std > 0, std, 1.0)
    elif norm == "l2":
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


def _umap_args(n: int, umap_args: dict) -> dict:
    """``umap_args`` fitted to ``n`` samples: UMAP cannot run its defaults on a tiny set (warns when cut)."""
    if n - 1 < umap_args["n_neighbors"]:
        _small_warning(f"{n} samples: UMAP n_neighbors cut from {umap_args['n_neighbors']} to {n - 1}")
        umap_args["n_neighbors"] = n - 1
    if isinstance(umap_args["init"], str) and umap_args["init"] == "spectral" and n <= umap_args["n_components"] + 1:
        _small_warning(f"{n} samples for {umap_args['n_components']} UMAP dimensions: random initialisation "
                       "(the spectral one needs more samples than dimensions + 1)")
        umap_args["init"] = "random"
    return umap_args


def _reduce(umap, x: np.ndarray, umap_args: dict) -> np.ndarray:
    """UMAP's embedding of ``x``, without the warnings this protocol already accounts for."""
    with warnings.catch_warnings():
        # UMAP says it runs single-threaded when seeded, and repeats the n_neighbors cut made above.
        warnings.filterwarnings("ignore", message=r"n_jobs value .* overridden", category=UserWarning)
        warnings.filterwarnings("ignore", message=r"n_neighbors is larger than the dataset size", category=UserWarning)
        return umap.UMAP(**umap_args).fit_transform(x.astype(np.float32))


def _small_warning(message: str) -> None:
    """Warn at the caller of :func:`zero_shot_clustering` (via ``_umap_args`` and the protocol: 4 frames up)."""
    warnings.warn(f"zero-shot clustering: {message}", UserWarning, stacklevel=4)
