"""Shards written to and read from an S3-compatible server on loopback (moto), end to end."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bioscan_io.loader import make_loader
from bioscan_io.schema import BioscanError
from bioscan_io.format import read_manifest
from bioscan_io.shard import shard_split
from test_index import strip_indexes

moto_server = pytest.importorskip("moto.server", reason="the S3 test server is in the test extra (moto[server])")
pytest.importorskip("s3fs", reason="s3:// URLs need the remote extra (s3fs)")

QUIET = dict(progress=False, log=lambda m: None)
BUCKET = "bioscan"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3() -> dict:
    """A moto S3 server on 127.0.0.1 with one bucket; yields the storage options to reach it."""
    saved = {k: os.environ.get(k) for k in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    options = {"endpoint_url": f"http://{host}:{port}", "key": "testing", "secret": "testing"}
    import s3fs

    s3fs.S3FileSystem(**options).mkdir(BUCKET)
    yield options
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def local(dataset_small, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("remote-local")
    shard_split(dataset_small, "val", out=out, maxcount=10, **QUIET)
    return out


@pytest.fixture(scope="module")
def remote(dataset_small, s3, tmp_path_factory) -> str:
    url = f"s3://{BUCKET}/shards"
    shard_split(dataset_small, "val", out=url, maxcount=10, storage_options=s3,
                staging=tmp_path_factory.mktemp("staging"), **QUIET)
    return url


def _epoch(urls, task: str, storage_options=None, **kw) -> dict:
    """Every batch of one epoch, concatenated per key."""
    loader = make_loader(urls, task, batch_size=8, storage_options=storage_options, **kw)
    out: dict = {}
    for batch in loader:
        for key, value in batch.items():
            out.setdefault(key, []).append(value)
    return {k: (torch.cat(v) if isinstance(v[0], torch.Tensor) else sum(v, [])) for k, v in out.items()}


def test_sharded_to_s3_the_same_shards_as_on_disk(local, remote, s3):
    import s3fs

    fs = s3fs.S3FileSystem(**s3)
    manifest = read_manifest(local / "val")
    names = sorted(Path(p).name for p in fs.ls(f"{BUCKET}/shards/val"))
    files = [s["name"] for s in manifest["shards"]] + [s["index"]["name"] for s in manifest["shards"]]
    assert names == sorted(files + ["manifest.json"])
    assert fs.exists(f"{BUCKET}/shards/labels.json")
    for name in files:
        assert fs.cat(f"{BUCKET}/shards/val/{name}") == (local / "val" / name).read_bytes()


@pytest.mark.parametrize("task,kw", [("embed", {}), ("mlm", {"shuffle": True, "seed": 3}),
                                     ("clip", {"num_workers": 2, "seed": 1})])
def test_loading_from_s3_gives_the_samples_of_local_disk(local, remote, s3, task, kw):
    from_disk = _epoch(local / "val", task, **kw)
    from_s3 = _epoch(f"{remote}/val", task, storage_options=s3, **kw)
    assert from_s3["processid"] == from_disk["processid"]
    assert len(from_s3["processid"]) == read_manifest(local / "val")["num_samples"]
    assert set(from_s3) == set(from_disk)
    for key, value in from_disk.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(from_s3[key], value), key
        else:
            assert from_s3[key] == value, key


def test_rerun_uploads_nothing_again(dataset_small, remote, s3, tmp_path):
    messages = []
    shard_split(dataset_small, "val", out=remote, maxcount=10, storage_options=s3, staging=tmp_path,
                progress=False, log=messages.append)
    assert any(m.startswith("uploaded 0 shards") for m in messages), messages


def test_cli_shards_to_s3(dataset_small, s3, tmp_path):
    url = f"s3://{BUCKET}/cli"
    cmd = [sys.executable, "-m", "bioscan_io.cli", "shard", "--root", str(dataset_small), "--split", "test",
           "--out", url, "--no-progress", "--storage-option", f"endpoint_url={s3['endpoint_url']}",
           "--storage-option", "key=testing", "--storage-option", "secret=testing"]
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert f"at {url}/test" in proc.stdout
    loaded = _epoch(f"{url}/test", "mlm", storage_options=s3)
    assert len(loaded["processid"]) == len(set(loaded["processid"])) > 0


def test_remote_errors_name_the_url(s3, dataset_small, tmp_path):
    with pytest.raises(BioscanError, match=rf"no shard manifest at s3://{BUCKET}/nothing/here/manifest.json"):
        make_loader(f"s3://{BUCKET}/nothing/here", "mlm", storage_options=s3)
    bad = {**s3, "endpoint_url": "http://127.0.0.1:9"}  # nothing listens on the discard port
    with pytest.raises(BioscanError, match=r"s3://bioscan/shards/val"):
        make_loader(f"s3://{BUCKET}/shards/val", "mlm", storage_options={**bad, "config_kwargs": {
            "retries": {"max_attempts": 1}, "connect_timeout": 2}})
    with pytest.raises(BioscanError, match="nosuchscheme"):
        make_loader("nosuchscheme://x/y", "mlm")


def test_stock_webdataset_reads_the_s3_shards_through_a_pipe(local, remote, s3):
    """Interoperability: what stock webdataset sees through ``pipe:`` equals the local shard."""
    import webdataset as wds

    name = read_manifest(local / "val")["shards"][0]["name"]
    script = ("import s3fs, sys; fs = s3fs.S3FileSystem(endpoint_url=sys.argv[1], key='testing', secret='testing'); "
              "sys.stdout.buffer.write(fs.cat(sys.argv[2]))")
    url = f"pipe:{sys.executable} -c \"{script}\" {s3['endpoint_url']} {BUCKET}/shards/val/{name}"
    got = list(wds.WebDataset(url, shardshuffle=False, empty_check=False))
    want = list(wds.WebDataset(str(local / "val" / name), shardshuffle=False, empty_check=False))
    assert [s["__key__"] for s in got] == [s["__key__"] for s in want]
    assert all(g["jpg"] == w["jpg"] and g["dna"] == w["dna"] for g, w in zip(got, want))
    assert np.all([len(g["json"]) > 0 for g in got])


def _upload_cut(fs, folder: Path, labels: Path, prefix: str, cut: str) -> str:
    """Upload a split folder with its shard ``cut`` cut in half; the remote split folder's URL."""
    for path in sorted(folder.iterdir()):
        data = path.read_bytes()
        fs.pipe(f"{BUCKET}/{prefix}/val/{path.name}", data[: len(data) // 2] if path.name == cut else data)
    fs.put_file(str(labels), f"{BUCKET}/{prefix}/labels.json")
    return f"s3://{BUCKET}/{prefix}/val"


def test_a_truncated_remote_shard_is_named_by_its_url(local, s3, tmp_path):
    """Remote shards are copied to a temporary file and walked there; errors still name the URL.

    A version-1 split (no indexes), so that MLM walks the tar headers; with an
    index, MLM never reads the tar (test_a_changed_remote_shard_with_an_index).
    """
    import s3fs

    fs = s3fs.S3FileSystem(**s3)
    shutil.copytree(local / "val", tmp_path / "val")
    manifest = strip_indexes(tmp_path / "val")
    first = manifest["shards"][0]["name"]
    url = _upload_cut(fs, tmp_path / "val", local / "labels.json", "cut", first)
    with pytest.raises(BioscanError, match=rf"shard {url}/{first}: truncated member") as err:
        _epoch(url, "mlm", storage_options=s3, shuffle=False)
    assert "bioscan-io-shard-" not in str(err.value)
    loader = make_loader(url, "mlm", batch_size=8, storage_options=s3, shuffle=False, on_error="skip")
    n = sum(len(b["processid"]) for b in loader)
    assert n == manifest["num_samples"] and 0 < loader.skipped < manifest["shards"][0]["count"]


def test_a_changed_remote_shard_with_an_index(local, s3):
    """With an index, MLM reads only the (remote) index; images still come from the tar, named by URL."""
    import s3fs

    fs = s3fs.S3FileSystem(**s3)
    manifest = read_manifest(local / "val")
    first = manifest["shards"][0]["name"]
    url = _upload_cut(fs, local / "val", local / "labels.json", "cut2", first)
    assert _epoch(url, "mlm", storage_options=s3, shuffle=False)["processid"] == \
        _epoch(local / "val", "mlm", shuffle=False)["processid"]
    with pytest.raises(BioscanError, match=rf"shard {url}/{first} has changed since it was indexed"):
        _epoch(url, "clip", storage_options=s3, shuffle=False)
