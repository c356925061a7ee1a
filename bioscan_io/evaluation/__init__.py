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

Modules: :mod:`~bioscan_io.evaluation.embeddings` (the container, pooling,
extraction), :mod:`~bioscan_io.evaluation.metrics` (accuracy),
:mod:`~bioscan_io.evaluation.retrieval`, :mod:`~bioscan_io.evaluation.clustering`,
and :mod:`~bioscan_io.evaluation.checks` (the argument checks they share). The
public names are all importable from here.
"""

from __future__ import annotations

from ..schema import MISSING_LABEL
from .checks import EvaluationError
from .clustering import ClusteringResult, zero_shot_clustering
from .embeddings import Embeddings, extract_embeddings, masked_mean_pool
from .metrics import Accuracy, classification_accuracy
from .retrieval import RETRIEVAL_RANKS, RetrievalResult, nearest_keys, retrieval_accuracy, retrieval_classification

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
