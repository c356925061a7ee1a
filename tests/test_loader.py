"""make_loader: batches of every task, labels, tokens, exact epochs, DDP safety."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bioscan_io.loader import make_loader
from bioscan_io.schema import METADATA_CSV, RANKS, BioscanError
from bioscan_io.format import read_manifest
from bioscan_io.shard import shard_split
from bioscan_io.tokenizer import KmerTokenizer

HERE = Path(__file__).resolve().parent
QUIET = dict(progress=False, log=lambda m: None)


@pytest.fixture(scope="module")
def shards(dataset_small, tmp_path_factory) -> Path:
    """The 400-record dataset: 'all' in 14 shards, 'val' in 1 shard."""
    out = tmp_path_factory.mktemp("loader-shards")
    shard_split(dataset_small, "all", out=out, maxcount=30, **QUIET)
    shard_split(dataset_small, "val", out=out, **QUIET)
    return out


@pytest.fixture(scope="module")
def records(dataset_small) -> dict[str, dict]:
    df = pd.read_csv(dataset_small / METADATA_CSV, dtype="category")
    out = {}
    for rank in RANKS:
        df[rank + "_index"] = df[rank].cat.codes.astype(np.int64)
    for row in df.to_dict("records"):
        out[str(row["processid"])] = row
    return out


EXPECTED_KEYS = {
    "mlm": {"processid", "input_ids", "attention_mask", "labels"},
    "classify": {"processid", "input_ids", "attention_mask", "label"},
    "clip": {"processid", "image", "input_ids", "attention_mask", "text"},
    "embed": {"processid", "input_ids", "attention_mask", "image", "valid"} | {f"{r}_index" for r in RANKS},
}


@pytest.mark.parametrize("task", ["mlm", "classify", "clip", "embed"])
def test_batch_keys_dtypes_shapes(shards, task):
    loader = make_loader(shards / "all", task, batch_size=16)
    batch = next(iter(loader))
    assert set(batch) == EXPECTED_KEYS[task]
    assert len(batch["processid"]) == 16 and all(isinstance(p, str) for p in batch["processid"])
    for key in ("input_ids", "attention_mask", "labels"):
        if key in batch:
            assert batch[key].dtype == torch.int64 and batch[key].shape == (16, 165)
    if "image" in batch:
        assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (16, 3, 224, 224)
    if "label" in batch:
        assert batch["label"].dtype == torch.int64 and batch["label"].shape == (16,)
    if "text" in batch:
        assert len(batch["text"]) == 16 and all(len(t.split()) >= 4 for t in batch["text"])


def test_image_options(shards):
    batch = next(iter(make_loader(shards / "val", "classify", modality="image", batch_size=4,
                                  image_dtype="float32", image_size=160, train=False)))
    img = batch["image"]
    assert img.dtype == torch.float32 and img.shape == (4, 3, 160, 160)
    assert -6 < float(img.mean()) < 6  # normalised by the dataset mean/std, not 0..255


@pytest.mark.parametrize("rank", ["species", "genus", "order", "dna_bin"])
def test_classify_labels_follow_the_official_rule(shards, records, rank):
    for batch in make_loader(shards / "all", "classify", batch_size=50, label_rank=rank):
        for pid, label in zip(batch["processid"], batch["label"].tolist()):
            assert label == records[pid][rank + "_index"]


def test_embed_labels_and_exactly_once_in_a_stable_order(shards, records):
    def run():
        order = []
        for batch in make_loader(shards / "all", "embed", batch_size=32, num_workers=2):
            for i, pid in enumerate(batch["processid"]):
                for rank in RANKS:
                    assert int(batch[f"{rank}_index"][i]) == records[pid][rank + "_index"]
                order.append(pid)
        return order

    first = run()
    assert sorted(first) == sorted(records) and len(first) == len(set(first))
    assert run() == first


def test_tokens_equal_the_tokenizer_output(shards, records):
    tok = KmerTokenizer()
    loader = make_loader(shards / "all", "mlm", batch_size=25, seed=5, epoch=2, label_mode="barcodebert")
    for batch in loader:
        dna = [records[p]["dna_barcode"] for p in batch["processid"]]
        dna = [d if isinstance(d, str) else "" for d in dna]
        ref = tok.encode_mlm(dna, batch["processid"], seed=5, epoch=2, label_mode="barcodebert")
        for key in ("input_ids", "attention_mask", "labels"):
            np.testing.assert_array_equal(batch[key].numpy(), ref[key])
    batch = next(iter(make_loader(shards / "all", "clip", batch_size=25)))
    dna = [records[p]["dna_barcode"] for p in batch["processid"]]
    ids, att = tok.encode([d if isinstance(d, str) else "" for d in dna])
    np.testing.assert_array_equal(batch["input_ids"].numpy(), ids)
    np.testing.assert_array_equal(batch["attention_mask"].numpy(), att)
    for pid, text in zip(batch["processid"], batch["text"]):
        r = records[pid]
        want = [r[k] if isinstance(r[k], str) else "not_classified" for k in ("order", "family", "genus", "species")]
        assert text == " ".join(want)


def _epoch(loader):
    pids, masks, batches = [], {}, 0
    for batch in loader:
        batches += 1
        for i, pid in enumerate(batch["processid"]):
            pids.append(pid)
            masks[pid] = batch["input_ids"][i].numpy().copy()
    return pids, masks, batches


@pytest.mark.parametrize("batch_size,drop_last", [(16, False), (16, True), (7, False), (500, False)])
def test_len_equals_batches_yielded(shards, batch_size, drop_last):
    for workers in (0, 2):
        loader = make_loader(shards / "all", "mlm", batch_size=batch_size, num_workers=workers, drop_last=drop_last)
        pids, _, batches = _epoch(loader)
        assert batches == len(loader)
        assert len(pids) == (400 // batch_size * batch_size if drop_last else 400)


def test_same_seed_and_epoch_same_samples_and_masks_whatever_num_workers(shards):
    runs = {}
    for workers in (0, 1, 2):
        loader = make_loader(shards / "all", "mlm", batch_size=16, num_workers=workers, seed=9, epoch=4)
        runs[workers] = _epoch(loader)
    base_pids, base_masks, _ = runs[0]
    assert sorted(base_pids) == sorted(set(base_pids)) and len(base_pids) == 400
    for workers in (1, 2):
        pids, masks, _ = runs[workers]
        assert sorted(pids) == sorted(base_pids)
        for pid in base_pids:
            np.testing.assert_array_equal(masks[pid], base_masks[pid])
    # Reproducible run to run, and a new epoch gives a new order and new masks.
    again = _epoch(make_loader(shards / "all", "mlm", batch_size=16, num_workers=2, seed=9, epoch=4))
    assert again[0] == runs[2][0]
    loader = make_loader(shards / "all", "mlm", batch_size=16, num_workers=2, seed=9, epoch=4)
    first = _epoch(loader)
    loader.set_epoch(5)  # reaches the persistent workers
    second = _epoch(loader)
    assert first[0] == runs[2][0]
    assert second[0] != first[0] and sorted(second[0]) == sorted(first[0])
    assert any(not np.array_equal(first[1][p], second[1][p]) for p in first[0])


def test_shuffle_buffer_is_the_block_read_and_permuted_together(shards):
    """Image tasks read shards in bounded blocks; each block is permuted as a whole."""
    def pids(**kw):
        loader = make_loader(shards / "val", "classify", modality="image", batch_size=8, **kw)
        return [p for batch in loader for p in batch["processid"]]

    in_file_order = pids(shuffle=False)  # 'val' is one shard
    n = read_manifest(shards / "val")["num_samples"]
    assert len(in_file_order) == n == len(set(in_file_order))
    shuffled = pids(shuffle=True, shuffle_buffer=5, seed=1)
    assert shuffled != in_file_order
    for i in range(0, n, 5):
        assert sorted(shuffled[i:i + 5]) == sorted(in_file_order[i:i + 5])
    whole = pids(shuffle=True, shuffle_buffer=n, seed=1)
    assert sorted(whole) == sorted(in_file_order)
    assert any(sorted(whole[i:i + 5]) != sorted(in_file_order[i:i + 5]) for i in range(0, n, 5))
    with pytest.raises(BioscanError, match="shuffle_buffer"):
        make_loader(shards / "val", "mlm", shuffle_buffer=0)


def test_bad_arguments(shards, tmp_path):
    with pytest.raises(BioscanError, match="task must be one of"):
        make_loader(shards / "all", "segment")
    with pytest.raises(BioscanError, match="no shard manifest"):
        make_loader(tmp_path, "mlm")
    with pytest.raises(BioscanError, match="label_rank"):
        make_loader(shards / "all", "classify", label_rank="kingdom")
    with pytest.raises(BioscanError, match="modality"):
        make_loader(shards / "all", "classify", modality=("dna", "image"))


def test_urls_forms_agree(shards):
    folder = shards / "all"
    names = [s["name"] for s in read_manifest(folder)["shards"]]
    pattern = str(folder / f"all-{{000000..{len(names) - 1:06d}}}.tar")
    forms = [folder, folder / "manifest.json", pattern, [str(folder / n) for n in names]]
    results = []
    for form in forms:
        loader = make_loader(form, "embed", batch_size=50)
        results.append((len(loader), [p for b in loader for p in b["processid"]]))
    assert all(r == results[0] for r in results)
    subset = make_loader([str(folder / names[0])], "embed", batch_size=50)
    assert sum(len(b["processid"]) for b in subset) == read_manifest(folder)["shards"][0]["count"]


# ----------------------------------------------------------------------------- torch.distributed


def _torchrun(urls: Path, out: Path, world: int, workers: int, batch: int, epochs: int = 2, task: str = "mlm"):
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}",
           str(HERE / "dist_worker.py"), str(urls), str(out), task, str(workers), str(batch), str(epochs)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]


@pytest.mark.parametrize("world,workers,split", [(2, 0, "all"), (2, 2, "all"), (3, 0, "all"), (3, 2, "all"), (3, 2, "val")])
def test_distributed_ranks_equal_disjoint_and_complete(shards, tmp_path, world, workers, split):
    """gloo on CPU; the 'val' case has 1 shard for 3 ranks x 2 workers."""
    folder = shards / split
    total = read_manifest(folder)["num_samples"]
    results = _torchrun(folder, tmp_path, world, workers, batch=8)
    for epoch in range(2):
        counts = [r["epochs"][epoch]["batches"] for r in results]
        assert len(set(counts)) == 1, counts
        assert all(r["len"] == counts[0] for r in results)
        per_rank = [r["epochs"][epoch]["pids"] for r in results]
        everything = collections.Counter(p for pids in per_rank for p in pids)
        assert len(everything) == total  # every sample of the epoch is seen
        repeats = sum(everything.values()) - total
        assert repeats == world * -(-total // world) - total < world  # the documented padding
        assert all(len(p) == len(set(p)) for p in per_rank)
    assert results[0]["epochs"][0]["pids"] != results[0]["epochs"][1]["pids"]


@pytest.fixture(scope="module")
def split_602(tmp_path_factory) -> Path:
    """602 records in one split folder: 201 per rank for 3 ranks, padding on the last."""
    from bioscan_io import synth

    root = tmp_path_factory.mktemp("data-602")
    synth.generate(root, n_records=602, seed=11, workers=2)
    out = tmp_path_factory.mktemp("shards-602")
    shard_split(root, "all", out=out, maxcount=100, **QUIET)
    return out / "all"


@pytest.mark.parametrize("batch", [7, 8, 200])
def test_embed_gathered_per_batch_is_every_record_once(split_602, tmp_path, batch):
    """3 ranks x 2 workers, an all_gather per batch: equal batch counts, padding dropped, nothing twice."""
    results = _torchrun(split_602, tmp_path, 3, 2, batch=batch, task="embed-gather")
    total = read_manifest(split_602)["num_samples"]
    assert total == 602
    assert len({r["batches"] for r in results} | {r["len"] for r in results}) == 1
    for r in results:  # every rank gathered the same rows
        assert r["gathered"] == results[0]["gathered"] and r["rows"] == total
    gathered = results[0]["gathered"]
    assert len(gathered) == total == len(set(gathered))


def test_extract_embeddings_under_torchrun_gathers_every_record_once(split_602, tmp_path):
    results = _torchrun(split_602, tmp_path, 3, 0, batch=16, task="embed-extract")
    assert all(r["gathered"] == results[0]["gathered"] and r["species"] == results[0]["species"] for r in results)
    assert results[0]["rows"] == 602 == len(set(results[0]["gathered"]))


def test_embed_marks_padding_valid_false(split_602):
    """pad=False: ranks get ceil(N / world) rows each; the wrapped ones are valid=False."""
    seen, valid_rows = [], 0
    for rank in range(3):
        loader = make_loader(split_602, "embed", modality="dna", batch_size=64, rank=rank, world_size=3)
        batches = list(loader)
        assert len(batches) == len(loader) == 4
        for b in batches:
            assert b["valid"].dtype == torch.bool and len(b["valid"]) == len(b["processid"])
            seen += [p for p, ok in zip(b["processid"], b["valid"].tolist()) if ok]
            valid_rows += int(b["valid"].sum())
        assert sum(len(b["processid"]) for b in batches) == 201
    assert valid_rows == 602 == len(set(seen))
    padded = make_loader(split_602, "embed", modality="dna", batch_size=64, rank=3, world_size=4)
    assert sum(int((~b["valid"]).sum()) for b in padded) == 4 * 151 - 602
    assert "valid" not in next(iter(make_loader(split_602, "mlm", batch_size=64, rank=0, world_size=3)))


def test_example_trains_under_torchrun_on_cpu(shards, tmp_path):
    """examples/train_mlm.py, as the README runs it: 2 CPU ranks with checkpoints, then resumed on 3."""
    script = HERE.parent / "examples" / "train_mlm.py"

    def train(nproc: int, *args: str) -> str:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               str(script), "--shards", str(shards / "all"), "--batch-size", "16", *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    out = train(2, "--steps", "6", "--save-every", "3")
    assert "step 5 loss" in out and "saved checkpoint.pt at step 6" in out and "done: 6 steps" in out
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert saved["step"] == 6 and saved["loader"]["phases"][-1] == {"world_size": 2, "batch_size": 16, "batches": 6}
    out = train(3, "--steps", "10", "--resume")
    assert "resumed at step 6 (epoch 0)" in out and "step 10 loss" in out and "done: 10 steps" in out


def test_remote_urls_pipe_and_http(shards):
    """URLs webdataset opens: ``pipe:`` commands and http served on loopback."""
    import functools
    import http.server
    import threading

    folder = shards / "all"
    names = [s["name"] for s in read_manifest(folder)["shards"]]
    local = [p for b in make_loader(folder, "classify", batch_size=64) for p in b["processid"]]

    piped = make_loader([f"pipe:cat {folder / n}" for n in names], "classify", batch_size=64)
    assert len(piped) == len(make_loader(folder, "classify", batch_size=64))
    assert [p for b in piped for p in b["processid"]] == local

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(shards))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}/all"
        served = make_loader(f"{base}/all-{{000000..{len(names) - 1:06d}}}.tar", "classify", batch_size=64)
        assert [p for b in served for p in b["processid"]] == local
    finally:
        server.shutdown()
