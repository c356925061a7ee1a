"""Embeddings: the matrix the protocols score, with its processids and labels, and how to get it from a model.

:func:`extract_embeddings` runs any torch module over an ``embed`` loader
(``make_loader(urls, task="embed")``) and gives an :class:`Embeddings`; token
outputs of a DNA encoder are mean-pooled over the attention mask
(:func:`masked_mean_pool`), as BarcodeBERT does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..distributed import all_gather_valid, all_gather_valid_objects
from ..schema import RANKS
from .checks import EvaluationError, check_rank, feature_matrix, label_vector, no_duplicates, rank_labels

__all__ = ["Embeddings", "extract_embeddings", "masked_mean_pool"]


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
        self.features = feature_matrix(self.features, "features", allow_empty=True)
        self.processids = [str(p) for p in self.processids]
        n = self.features.shape[0]
        if len(self.processids) != n:
            raise EvaluationError(f"{len(self.processids)} processids for {n} embedding rows")
        labels = {}
        for rank, values in self.labels.items():
            check_rank(rank, "label rank")
            labels[rank] = label_vector(values, f"labels[{rank!r}]", n)
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
        check_rank(rank)
        return rank_labels(self.labels, rank, "embeddings", len(self))

    @classmethod
    def concat(cls, *parts: Embeddings) -> Embeddings:
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
        no_duplicates(pids, "the concatenated embeddings")
        ranks = [r for r in RANKS if all(r in p.labels for p in parts)]
        return cls(np.concatenate([p.features for p in parts], axis=0).astype(np.float32, copy=False), pids,
                   {r: np.concatenate([p.labels[r] for p in parts]) for r in ranks})

    @classmethod
    def join(cls, *parts: Embeddings) -> Embeddings:
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
    def load(cls, path) -> Embeddings:
        """Read what :meth:`save` wrote."""
        with np.load(Path(path), allow_pickle=False) as data:
            labels = {k[len("label_"):]: data[k] for k in data.files if k.startswith("label_")}
            return cls(data["features"], data["processids"].tolist(), labels)


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
        raise EvaluationError(f"the model returned {type(out).__name__}, not a tensor; "
                              "pass forward= to say what to embed")
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
    """How a model of ``modality`` is called by default (see :func:`extract_embeddings`)."""
    if modality == "dna":
        def forward(model, batch):
            return _pool(model(batch["input_ids"], batch["attention_mask"]), batch["attention_mask"])
    else:
        def forward(model, batch):
            from ..images import normalize  # imported late: PIL is not needed for DNA

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
    Under ``torch.distributed``, each rank embeds its own part of the data and,
    for an ``embed`` loader (``pad=False``: every rank the same batches, padding
    marked ``valid=False``), each batch's embeddings, processids and labels are
    gathered across ranks with the padding dropped
    (:func:`bioscan_io.distributed.all_gather_valid`): every rank returns every
    record exactly once. Loaders without ``valid`` are not gathered.
    """
    models = dict(model) if isinstance(model, Mapping) else {modality: model}
    forwards = _forwards(models, forward)
    device = _model_device(models, device)
    with _eval_mode(models):
        chunks, pids, labels = _embed_all(models, forwards, loader, device, max_batches)
    no_duplicates(pids, "the loader's batches")
    result = _assemble(chunks, pids, labels)
    return result if isinstance(model, Mapping) else result[modality]


def _forwards(models: Mapping, forward) -> dict:
    """Per modality, the call that embeds a batch: the caller's, else the default for the modality."""
    for m in models:
        if m not in _INPUTS:
            raise EvaluationError(f"unknown modality {m!r}; modalities are 'dna', 'image'")
    if isinstance(forward, Mapping):
        return {m: forward.get(m) or _default_forward(m) for m in models}
    return {m: forward or _default_forward(m) for m in models}


def _model_device(models: Mapping, device) -> torch.device:
    """``device``, else where the first model's parameters are (a parameterless model runs on the CPU)."""
    if device is None:
        first = next(iter(models.values()))
        param = next(iter(first.parameters()), None) if isinstance(first, torch.nn.Module) else None
        device = param.device if param is not None else torch.device("cpu")
    return torch.device(device)


@contextlib.contextmanager
def _eval_mode(models: Mapping) -> Iterator[None]:
    """The modules in eval mode (dropout off) for the block, then back in the mode each was in."""
    modes = {m: mod.training for m, mod in models.items() if isinstance(mod, torch.nn.Module)}
    for m in modes:
        models[m].eval()
    try:
        yield
    finally:
        for m, was_training in modes.items():
            models[m].train(was_training)


def _embed_all(models: Mapping, forwards: Mapping, loader, device: torch.device, max_batches: int | None):
    """One pass over the loader: per modality the feature blocks, the processids, per rank the label blocks.

    A batch with ``valid`` (``pad=False``) is gathered across ranks under
    torch.distributed, padding dropped (one collective per batch, on every rank).
    """
    chunks: dict[str, list] = {m: [] for m in models}
    pids: list[str] = []
    labels: dict[str, list] = {r: [] for r in RANKS}
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        if i == 0:  # a wrong loader fails on its first batch, before any model runs
            _check_embed_batch(batch, models)
        blocks = _embed_batch(models, forwards, batch, device)
        ranks = torch.stack([torch.as_tensor(batch[f"{r}_index"]) for r in RANKS], dim=1)
        batch_pids = list(batch["processid"])
        if "valid" in batch:  # on the device the process group communicates on
            blocks = {m: all_gather_valid(block, batch["valid"]) for m, block in blocks.items()}
            ranks = all_gather_valid(ranks.to(device), batch["valid"])
            batch_pids = all_gather_valid_objects(batch_pids, batch["valid"])
        for m, block in blocks.items():
            chunks[m].append(block.cpu().numpy())
        pids.extend(batch_pids)
        codes = ranks.cpu().numpy().astype(np.int64)
        for j, r in enumerate(RANKS):
            labels[r].append(codes[:, j])
    return chunks, pids, labels


def _embed_batch(models: Mapping, forwards: Mapping, batch: Mapping, device: torch.device) -> dict:
    """Per modality, the batch's float32 ``(batch, dim)`` embeddings (a tensor on ``device``)."""
    moved = {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
    n = len(batch["processid"])
    out = {}
    for m, mod in models.items():
        emb = _pool(forwards[m](mod, moved), moved.get("attention_mask") if m == "dna" else None)
        if emb.ndim != 2 or emb.shape[0] != n:
            raise EvaluationError(f"the {m} forward gave shape {tuple(emb.shape)} for a batch of {n}; "
                                  "it must give (batch, dim)")
        out[m] = emb.detach().float()
    return out


def _assemble(chunks: Mapping, pids: list, labels: Mapping) -> dict:
    """Per modality, :class:`Embeddings` from the blocks of one pass (every modality shares pids and labels)."""
    label_arrays = {r: (np.concatenate(v) if v else np.empty(0, np.int64)) for r, v in labels.items()}
    result = {}
    for m, parts in chunks.items():
        feats = np.concatenate(parts, axis=0) if parts else np.empty((0, 0), np.float32)
        result[m] = Embeddings(feats.astype(np.float32, copy=False), list(pids), dict(label_arrays))
    return result


def _check_embed_batch(batch: Any, models: Mapping) -> None:
    """Raise unless ``batch`` is an ``embed`` batch with every modality's inputs."""
    if not isinstance(batch, Mapping) or "processid" not in batch:
        raise EvaluationError("extract_embeddings needs batches of the 'embed' task "
                              "(make_loader(urls, task='embed')); got batches without 'processid'")
    missing = [f"{r}_index" for r in RANKS if f"{r}_index" not in batch]
    if missing:
        raise EvaluationError("extract_embeddings needs batches of the 'embed' task "
                              "(make_loader(urls, task='embed')); "
                              f"the batch has no {', '.join(missing[:3])} (keys: {', '.join(sorted(batch))})")
    for m in models:
        absent = [k for k in _INPUTS[m] if k not in batch]
        if absent:
            raise EvaluationError(f"the loader gives no {m} inputs ({', '.join(absent)}); make it with "
                                  f"modality including {m!r}")
