"""bioscan_io.evaluation: zero-shot clustering, retrieval, accuracy, and embeddings from a loader."""

from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from bioscan_io.evaluation import (
    MISSING_LABEL,
    Embeddings,
    EvaluationError,
    classification_accuracy,
    extract_embeddings,
    masked_mean_pool,
    nearest_keys,
    retrieval_accuracy,
    retrieval_classification,
    zero_shot_clustering,
)
from bioscan_io.loader import make_loader
from bioscan_io.schema import METADATA_CSV, RANKS
from bioscan_io.shard import shard_split
from bioscan_io.tokenizer import KmerTokenizer

HERE = Path(__file__).resolve().parent
QUIET = dict(progress=False, log=lambda m: None)


def blobs(n_classes=8, per_class=20, dim=32, spread=10.0, seed=0):
    """Well-separated Gaussian clusters: features and labels."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_classes), per_class)
    centres = rng.normal(size=(n_classes, dim)) * spread
    return centres[y] + rng.normal(size=(len(y), dim)), y


# ----------------------------------------------------------------------------- zero-shot clustering


def test_zsc_well_separated_clusters_give_ami_near_one():
    x, y = blobs()
    res = zero_shot_clustering(x, y)
    assert res.ami > 0.95
    assert res.n_classes == res.n_clusters == 8 and res.n_samples == len(y) and res.n_excluded == 0
    # The paper's protocol, as run.
    p = res.params
    assert (p["n_components"], p["n_neighbors"], p["min_dist"], p["metric"], p["linkage"], p["init"]) == (
        50, 30, 0.0, "euclidean", "ward", "spectral")
    assert p["prenorm"] == "none" and p["seed"] == 0
    assert len(np.unique(res.cluster_labels)) == 8


def test_zsc_random_embeddings_give_ami_near_zero():
    _, y = blobs()
    x = np.random.default_rng(1).normal(size=(len(y), 32))
    res = zero_shot_clustering(x, y)
    assert abs(res.ami) < 0.1


def test_zsc_is_reproducible_with_a_seed():
    x, y = blobs(spread=1.2, seed=3)  # overlapping clusters: the result depends on the UMAP layout
    a = zero_shot_clustering(x, y, seed=5)
    b = zero_shot_clustering(x, y, seed=5)
    assert a.ami == b.ami
    np.testing.assert_array_equal(a.cluster_labels, b.cluster_labels)


def test_zsc_modalities_are_concatenated_and_zscored():
    x, y = blobs(dim=16)
    noise = np.random.default_rng(2).normal(size=(len(y), 8)) * 1000  # huge scale, no signal
    together = zero_shot_clustering([x, noise], y)
    assert together.params["prenorm"] == "zscore"  # "auto" with two modalities
    same = zero_shot_clustering(np.hstack([x, noise]), y, prenorm="zscore")
    np.testing.assert_array_equal(together.cluster_labels, same.cluster_labels)
    # Without z-scoring the noise modality dominates the distances.
    raw = zero_shot_clustering(np.hstack([x, noise]), y, prenorm="none")
    assert together.ami > raw.ami + 0.3


def test_zsc_embeddings_of_two_modalities_are_aligned_by_processid():
    x, y = blobs(dim=16)
    x = x.astype(np.float32)  # as Embeddings hold them, so both paths see the same numbers
    pids = [f"P{i:04d}" for i in range(len(y))]
    a = Embeddings(x[:, :8], pids, {"species": y})
    order = np.random.default_rng(0).permutation(len(y))
    b = Embeddings(x[order, 8:], [pids[i] for i in order], {"species": y[order]})
    joined = zero_shot_clustering([a, b], rank="species")
    direct = zero_shot_clustering([x[:, :8], x[:, 8:]], y)
    np.testing.assert_array_equal(joined.cluster_labels, direct.cluster_labels)


def test_zsc_missing_labels_are_excluded_or_kept_as_a_class():
    x, y = blobs()
    y = y.copy()
    y[::7] = MISSING_LABEL
    res = zero_shot_clustering(x, {"genus": y}, rank="genus")
    keep = y >= 0
    assert res.n_excluded == int((~keep).sum()) and res.n_samples == int(keep.sum())
    np.testing.assert_array_equal(res.included, keep)
    subset = zero_shot_clustering(x[keep], y[keep])
    np.testing.assert_array_equal(res.cluster_labels, subset.cluster_labels)
    as_class = zero_shot_clustering(x, y, missing="as_class")
    assert as_class.n_excluded == 0 and as_class.n_classes == 9


def test_zsc_small_sets_adjust_umap_with_a_warning():
    x, y = blobs(n_classes=4, per_class=5)
    with pytest.warns(UserWarning) as record:
        res = zero_shot_clustering(x, y)
    messages = " | ".join(str(w.message) for w in record)
    assert "n_neighbors cut from 30 to 19" in messages and "random initialisation" in messages
    assert res.params["init"] == "random" and res.params["n_neighbors"] == 19
    assert res.ami > 0.9


@pytest.mark.parametrize("kwargs, match", [
    (dict(rank="speceis"), "unknown rank 'speceis'"),
    (dict(labels=np.zeros(3, int)), "has 3 labels but there are 160"),
    (dict(labels={"genus": np.zeros(160, int)}), "no labels at rank 'species'"),
    (dict(labels=np.full(160, 0.5)), "integer label indices"),
    (dict(prenorm="pca"), "unknown prenorm"),
    (dict(n_clusters=1000), "n_clusters must be between 1 and"),
    (dict(labels=np.full(160, -1)), "at least 2 labelled samples"),
])
def test_zsc_bad_inputs_name_the_problem(kwargs, match):
    x, y = blobs()
    kwargs = {"labels": y, **kwargs}
    labels = kwargs.pop("labels")
    with pytest.raises(ValueError, match=match):
        zero_shot_clustering(x, labels, **kwargs)


def test_zsc_bad_embeddings():
    _, y = blobs()
    with pytest.raises(EvaluationError, match="2-D array"):
        zero_shot_clustering(np.zeros(len(y)), y)
    with pytest.raises(EvaluationError, match="empty"):
        zero_shot_clustering(np.zeros((0, 4)), np.zeros(0, int))
    x = np.ones((len(y), 4))
    x[3, 1] = np.nan
    with pytest.raises(EvaluationError, match=r"NaN or infinite values \(row\(s\) \[3\]"):
        zero_shot_clustering(x, y)
    with pytest.raises(EvaluationError, match="different numbers of rows"):
        zero_shot_clustering([np.ones((len(y), 4)), np.ones((len(y) - 1, 4))], y)


def test_zsc_without_the_extra_says_how_to_install_it(monkeypatch):
    x, y = blobs()
    monkeypatch.setitem(sys.modules, "umap", None)  # import umap -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'bioscan-io\[eval\]'"):
        zero_shot_clustering(x, y)


# ----------------------------------------------------------------------------- retrieval


def labelled(n_species=10, per=30, dim=16, seed=0):
    """Embeddings whose species nest in genera, families and orders."""
    x, y = blobs(n_classes=n_species, per_class=per, dim=dim, seed=seed)
    labels = {"species": y, "genus": y // 2, "family": y // 4, "order": y // 8}
    return x, labels


def test_retrieval_with_identical_queries_and_keys_is_perfect():
    x, labels = labelled()
    res = retrieval_accuracy(x, x, labels, labels)
    np.testing.assert_array_equal(res.nearest, np.arange(len(x)))
    np.testing.assert_allclose(res.similarity, 1.0, atol=1e-5)
    for rank in ("order", "family", "genus", "species"):
        acc = res.accuracy[rank]
        assert acc.micro == 1.0 and acc.macro == 1.0 and acc.n == len(x)


def test_retrieval_with_shuffled_key_labels_is_at_chance():
    x, labels = labelled(n_species=10, per=200)
    perm = np.random.default_rng(3).permutation(len(x))
    shuffled = {r: v[perm] for r, v in labels.items()}  # the keys' labels no longer match their embeddings
    res = retrieval_accuracy(x, x, labels, shuffled)
    assert abs(res.accuracy["species"].micro - 1 / 10) < 0.04
    assert abs(res.accuracy["genus"].micro - 1 / 5) < 0.05
    assert abs(res.accuracy["species"].macro - 1 / 10) < 0.04


def test_retrieval_micro_and_macro_on_a_hand_made_case():
    # Keys: one per direction; each query points exactly at the key it should retrieve.
    keys = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    key_species = np.array([0, 1, 2, MISSING_LABEL])
    key_genus = np.array([0, 0, 1, 1])
    # Queries of species 0 (4 of them, 3 retrieve a species-0 key) and species 1 (one, right),
    # plus one with no species label (not scored at species) and one that hits the unlabelled key.
    queries = np.array([[2, 0.1], [3, -0.1], [1, 0], [-1, 0.05], [0.1, 5], [0, 1], [0.05, -1]])
    q_species = np.array([0, 0, 0, 0, 1, MISSING_LABEL, 2])
    q_genus = np.array([0, 0, 0, 0, 0, 0, 1])
    res = retrieval_accuracy(queries, keys, {"species": q_species, "genus": q_genus},
                             {"species": key_species, "genus": key_genus}, ranks=["species", "genus"])
    np.testing.assert_array_equal(res.nearest, [0, 0, 0, 2, 1, 1, 3])
    sp = res.accuracy["species"]
    # species 0: 3/4 right; species 1: 1/1; species 2: 0/1 (its nearest key has no species)
    assert sp.n == 6 and sp.n_excluded == 1 and sp.n_classes == 3
    assert sp.micro == pytest.approx(4 / 6)
    assert sp.macro == pytest.approx((3 / 4 + 1 + 0) / 3)
    g = res.accuracy["genus"]
    # genus 0: queries 0-5, wrong only for query 3 (key genus 1); genus 1: query 6 right (key 3 is genus 1)
    assert g.micro == pytest.approx(6 / 7) and g.macro == pytest.approx((5 / 6 + 1) / 2)


@pytest.mark.parametrize("cache_queries", [True, False])
def test_chunked_retrieval_equals_unchunked(cache_queries, monkeypatch):
    if not cache_queries:  # queries normalised again for every key block, as with a large query set
        monkeypatch.setattr("bioscan_io.evaluation.retrieval._QUERY_CACHE_BYTES", 0)
    rng = np.random.default_rng(4)
    q = rng.normal(size=(301, 12)).astype(np.float32)
    k = rng.normal(size=(1003, 12)).astype(np.float32)
    k[500] = k[20] * 3  # same direction: a tie that must go to the lower index
    q[7] = k[20]
    whole_idx, whole_sim = nearest_keys(q, k, query_chunk=10_000, key_chunk=10_000)
    chunk_idx, chunk_sim = nearest_keys(q, k, query_chunk=50, key_chunk=97)  # uneven last blocks
    np.testing.assert_array_equal(whole_idx, chunk_idx)
    np.testing.assert_allclose(whole_sim, chunk_sim, rtol=1e-5, atol=1e-6)
    assert chunk_idx[7] == 20
    # The brute-force answer.
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    kn = k / np.linalg.norm(k, axis=1, keepdims=True)
    np.testing.assert_array_equal(np.argmax(qn @ kn.T, axis=1), whole_idx)


def test_retrieval_reads_memory_mapped_keys(tmp_path):
    x, labels = labelled(n_species=4, per=25)
    mm = np.lib.format.open_memmap(tmp_path / "keys.npy", mode="w+", dtype=np.float32, shape=x.shape)
    mm[:] = x
    mm.flush()
    keys = np.load(tmp_path / "keys.npy", mmap_mode="r")
    res = retrieval_accuracy(x[::3], keys, {r: v[::3] for r, v in labels.items()}, labels, key_chunk=17)
    np.testing.assert_array_equal(res.nearest, np.arange(len(x))[::3])


def test_retrieval_classification_reports_seen_and_unseen_queries():
    x, labels = labelled(n_species=6, per=10)
    pids = [f"K{i}" for i in range(len(x))]
    keys = Embeddings(x, pids, labels)
    seen = Embeddings(x[:30] + 0.01, [f"S{i}" for i in range(30)], {r: v[:30] for r, v in labels.items()})
    wrong = {r: (v[30:] + 1) % 6 for r, v in labels.items()}  # labels that disagree with the keys'
    unseen = Embeddings(x[30:] + 0.01, [f"U{i}" for i in range(30)], wrong)
    out = retrieval_classification({"seen": seen, "unseen": unseen}, keys)
    assert set(out) == {"seen", "unseen"}
    assert out["seen"].accuracy["species"].micro == 1.0
    assert out["unseen"].accuracy["species"].micro == 0.0
    single = retrieval_classification(seen, keys, ranks=["genus"])
    assert set(single.accuracy) == {"genus"}


@pytest.mark.parametrize("q_dim, n_q, match", [
    (8, 5, "queries have 8 features but keys have 16"),
    (16, 0, "queries is empty"),
])
def test_retrieval_bad_shapes(q_dim, n_q, match):
    x, labels = labelled(n_species=2, per=5)
    q = np.zeros((n_q, q_dim))
    with pytest.raises(ValueError, match=match):
        retrieval_accuracy(q, x, {r: v[:n_q] for r, v in labels.items()}, labels)


def test_retrieval_bad_labels_and_values():
    x, labels = labelled(n_species=2, per=5)
    with pytest.raises(EvaluationError, match="unknown rank 'kingdom'"):
        retrieval_accuracy(x, x, labels, labels, ranks=["kingdom"])
    with pytest.raises(EvaluationError, match="key_labels have no labels at rank 'order'"):
        retrieval_accuracy(x, x, labels, {"species": labels["species"]})
    with pytest.raises(EvaluationError, match=r"query_labels\['species'\] has 9 labels but there are 10"):
        retrieval_accuracy(x, x, {**labels, "species": labels["species"][:9]}, labels)
    bad = x.copy()
    bad[2, 0] = np.inf
    with pytest.raises(EvaluationError, match=r"keys holds NaN or infinite values \(row\(s\) \[2\]"):
        retrieval_accuracy(x, bad, labels, labels)
    with pytest.raises(EvaluationError, match="keys must be Embeddings"):
        retrieval_classification(Embeddings(x, list(range(10)), labels), x)


# ----------------------------------------------------------------------------- classification accuracy


def test_classification_accuracy_micro_macro_and_missing_labels():
    y_true = np.array([0, 0, 0, 0, 1, 2, 2, -1, -100])
    y_pred = np.array([0, 0, 0, 1, 1, 0, 2, 5, 5])
    acc = classification_accuracy(y_true, y_pred)
    assert acc.n == 7 and acc.n_excluded == 2 and acc.n_classes == 3
    assert acc.micro == pytest.approx(5 / 7)
    assert acc.macro == pytest.approx((3 / 4 + 1 + 1 / 2) / 3)
    logits = torch.nn.functional.one_hot(torch.tensor(y_pred[:7]), 6).float() * 3
    same = classification_accuracy(torch.tensor(y_true[:7]), logits)
    assert (same.micro, same.macro) == (acc.micro, acc.macro)
    nothing = classification_accuracy([-1, -1], [0, 1])
    assert nothing.n == 0 and np.isnan(nothing.micro) and np.isnan(nothing.macro)
    with pytest.raises(EvaluationError, match="y_pred has 2 labels but there are 3"):
        classification_accuracy([0, 1, 2], [0, 1])


# ----------------------------------------------------------------------------- embeddings


def test_masked_mean_pool():
    h = torch.arange(24, dtype=torch.float32).view(2, 3, 4)
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    out = masked_mean_pool(h, mask)
    torch.testing.assert_close(out[0], h[0, :2].mean(0))
    torch.testing.assert_close(out[1], torch.zeros(4))  # nothing attended: zero vector, not NaN
    with pytest.raises(EvaluationError, match="masked_mean_pool needs"):
        masked_mean_pool(h, mask[:, :2])


def test_embeddings_concat_join_save_load(tmp_path):
    a = Embeddings(np.eye(3, dtype=np.float32), ["a", "b", "c"], {"species": [0, 1, -1], "genus": [0, 0, 1]})
    b = Embeddings(np.ones((2, 3)), ["d", "e"], {"species": [2, 2]})
    both = Embeddings.concat(a, b)
    assert len(both) == 5 and set(both.labels) == {"species"}  # only the ranks every part has
    np.testing.assert_array_equal(both.label("species"), [0, 1, -1, 2, 2])
    with pytest.raises(EvaluationError, match="repeated processid"):
        Embeddings.concat(a, a)
    other = Embeddings(np.array([[30.0], [10.0], [20.0]]), ["c", "a", "b"])
    joined = Embeddings.join(a, other)
    np.testing.assert_array_equal(joined.features[:, 3], [10, 20, 30])
    with pytest.raises(EvaluationError, match="different records"):
        Embeddings.join(a, b)
    with pytest.raises(EvaluationError, match="unknown rank 'spieces'"):
        a.label("spieces")
    with pytest.raises(EvaluationError, match="2 processids for 3 embedding rows"):
        Embeddings(np.eye(3), ["a", "b"])
    a.save(tmp_path / "a.npz")
    back = Embeddings.load(tmp_path / "a.npz")
    assert back.processids == a.processids and set(back.labels) == set(a.labels)
    np.testing.assert_array_equal(back.features, a.features)
    np.testing.assert_array_equal(back.labels["genus"], a.labels["genus"])


class TokenMeans(nn.Module):
    """Token embeddings out, (batch, tokens, dim): the helper must pool them over the mask."""

    def __init__(self, vocab_size):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(vocab_size, 8)

    def forward(self, input_ids, attention_mask):
        return self.emb(input_ids)


class TinyConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3, stride=4)

    def forward(self, image):
        assert image.dtype == torch.float32  # normalised from the loader's uint8
        return self.conv(image)


@pytest.fixture(scope="module")
def eval_shards(dataset_small, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval-shards")
    for split in ("test", "test_unseen"):
        shard_split(dataset_small, split, out=out, maxcount=7, **QUIET)
    return out


def test_extract_embeddings_from_an_embed_loader(dataset_small, eval_shards):
    meta = pd.read_csv(dataset_small / METADATA_CSV, dtype={"processid": str, "dna_barcode": str,
                                                            **{r: "category" for r in RANKS}})
    tok = KmerTokenizer()
    model = TokenMeans(tok.vocab_size).train()
    loader = make_loader(eval_shards / "test", "embed", modality="dna", batch_size=5)
    emb = extract_embeddings(model, loader)
    assert model.training  # given back in the mode it was in
    test = meta[meta["split"] == "test"]
    assert sorted(emb.processids) == sorted(test["processid"])
    assert emb.features.dtype == np.float32 and emb.features.shape == (len(test), 8)
    # Features: the token embeddings mean-pooled over the attention mask, barcode by barcode.
    rows = meta.set_index("processid").loc[emb.processids]
    ids, att = tok.encode(rows["dna_barcode"].tolist(), return_tensors="pt")
    with torch.no_grad():
        expected = masked_mean_pool(model.emb(ids), att).numpy()
    np.testing.assert_allclose(emb.features, expected, rtol=1e-5, atol=1e-6)
    # Labels: the official rule (pandas category codes over the whole file, -1 if missing).
    for rank in RANKS:
        codes = pd.Series(meta[rank].cat.codes.to_numpy(), index=meta["processid"])
        np.testing.assert_array_equal(emb.labels[rank], codes.loc[emb.processids].to_numpy())
    # A forward that returns a tuple of token states (Hugging Face style) is pooled the same way.
    again = extract_embeddings(model, loader, forward=lambda m, b: (m(b["input_ids"], b["attention_mask"]),))
    np.testing.assert_array_equal(again.features, emb.features)
    # The embeddings go straight into the protocols.
    res = retrieval_classification(emb, emb)
    assert res.accuracy["species"].micro == 1.0


def test_extract_embeddings_of_two_modalities_in_one_pass(eval_shards):
    tok = KmerTokenizer()
    loader = make_loader(eval_shards / "test_unseen", "embed", batch_size=4)
    out = extract_embeddings({"dna": TokenMeans(tok.vocab_size), "image": TinyConv()}, loader, max_batches=2)
    assert set(out) == {"dna", "image"}
    assert out["dna"].processids == out["image"].processids and len(out["dna"]) == 8
    assert out["dna"].features.shape == (8, 8) and out["image"].features.shape == (8, 5)
    joined = Embeddings.join(out["dna"], out["image"])
    assert joined.features.shape == (8, 13)


def test_extract_embeddings_needs_an_embed_loader(eval_shards):
    tok = KmerTokenizer()
    mlm = make_loader(eval_shards / "test", "mlm", batch_size=4)
    with pytest.raises(EvaluationError, match="task='embed'"):
        extract_embeddings(TokenMeans(tok.vocab_size), mlm)
    dna_only = make_loader(eval_shards / "test", "embed", modality="dna", batch_size=4)
    with pytest.raises(EvaluationError, match="no image inputs"):
        extract_embeddings(TinyConv(), dna_only, modality="image")
    full = make_loader(eval_shards / "test", "embed", modality="dna", batch_size=4)

    class Twice:  # two passes over the same records: every processid twice
        def __iter__(self):
            yield from full
            yield from full

    with pytest.raises(EvaluationError, match="repeated processid"):
        extract_embeddings(TokenMeans(tok.vocab_size), Twice())


# ----------------------------------------------------------------------------- the example


def test_example_runs_end_to_end(dataset_small, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("evaluate_zero_shot", HERE.parent / "examples" / "evaluate_zero_shot.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = example.main(["--root", str(dataset_small), "--shards", str(tmp_path / "shards"), "--steps", "2",
                            "--ranks", "species", "order"])
    text = capsys.readouterr().out
    assert "Zero-shot clustering, test+test_unseen" in text and "Retrieval classification" in text
    assert "MLM 2 steps" in text and "unseen (test_unseen)" in text
    for per_rank in out["zero_shot_clustering"].values():
        assert set(per_rank) == {"species", "order"} and all(-1 <= v <= 1 for v in per_rank.values())
    for groups in out["retrieval"].values():
        assert set(groups) == {"seen", "unseen"}
        assert 0 <= groups["seen"]["species"]["micro"] <= 1
    assert (tmp_path / "shards" / "test_unseen" / "manifest.json").is_file()
