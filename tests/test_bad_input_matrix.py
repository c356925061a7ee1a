"""Every mistake a user can make with the loader: one line (a BioscanError) naming the cause.

The sharding and CLI rows of the same matrix are in test_bad_input_cli.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from bioscan_io.format import read_manifest
from bioscan_io.loader import make_loader
from bioscan_io.schema import BioscanError
from bioscan_io.shard import shard_split

from conftest import private_copy

QUIET = dict(progress=False, log=lambda m: None)


def one_line(exc: BaseException, *names: str) -> str:
    """The error's text, checked to be one line naming every one of ``names``."""
    text = str(exc)
    assert "\n" not in text, text
    for name in names:
        assert str(name) in text, (name, text)
    return text


@pytest.fixture(scope="module")
def split(dataset_small, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bad-input")
    return Path(shard_split(dataset_small, "train", out=out, maxcount=10, **QUIET).folder)


@pytest.fixture
def copy(split, tmp_path) -> Path:
    """A private copy of the split folder and its labels.json, to damage."""
    return private_copy(split, tmp_path)


OPTIONS = [
    ("image_dtype", torch.uint8, "one of 'uint8', 'float32'"),
    ("image_dtype", "float16", "one of 'uint8', 'float32'"),
    ("image_dtype", "bogus", "one of 'uint8', 'float32'"),
    ("batch_size", 0, "an integer >= 1"),
    ("batch_size", 2.5, "an integer >= 1"),
    ("num_workers", -1, "an integer >= 0"),
    ("seed", -3, "an integer >= 0"),
    ("hflip", 1, "True or False"),
    ("token_dtype", "int64", "one of torch.int64, torch.int32"),
    ("mask_prob", 1.5, "a number >= 0 and <= 1"),
    ("label_mode", "bert", "one of 'masked', 'barcodebert'"),
    ("k", 9, "an integer >= 1 and <= 8"),
    ("prefetch_factor", 0, "an integer >= 1 (or None)"),
    ("shuffle_buffer", 0, "an integer >= 1 (or None)"),
    ("on_error", "ignore", "one of 'raise', 'skip'"),
    ("label_rank", "kingdom", "one of 'phylum'"),
    ("storage_options", "endpoint", "a dict (or None)"),
    ("check_sha256", "yes", "True or False"),
]


@pytest.mark.parametrize("option,value,allowed", OPTIONS, ids=[f"{o}={v!r}" for o, v, _ in OPTIONS])
def test_every_option_is_checked(split, option, value, allowed):
    """A wrong type or value is refused up front, naming the option, what it accepts and what it got."""
    with pytest.raises(BioscanError) as err:
        make_loader(split, "classify", **{option: value})
    one_line(err.value, f"make_loader: {option} must be {allowed}", repr(value))


def test_unknown_task(split):
    with pytest.raises(BioscanError) as err:
        make_loader(split, "segment")
    one_line(err.value, "task must be one of 'mlm', 'classify', 'clip', 'embed'", "'segment'")


def test_truncated_shard_without_a_manifest(split, tmp_path):
    data = (split / read_manifest(split)["shards"][0]["name"]).read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: len(data) // 2 + 100])
    with pytest.raises(BioscanError) as err:
        make_loader(cut, "mlm")
    one_line(err.value, str(cut), "truncated")


def test_a_file_that_is_not_a_tar(tmp_path):
    csv = tmp_path / "records.csv"
    csv.write_text("processid,dna_barcode\nX1,ACGT\n")
    with pytest.raises(BioscanError) as err:
        make_loader(csv, "mlm")
    one_line(err.value, str(csv), "is not a tar shard")


@pytest.mark.parametrize("name", ["no/such/folder", "no/such-000000.tar"])
def test_a_path_that_does_not_exist(tmp_path, name):
    with pytest.raises(BioscanError) as err:
        make_loader(tmp_path / name, "mlm")
    one_line(err.value, "no such file or folder", str(tmp_path / name))


def test_classify_without_labels_json(split, tmp_path):
    lone = tmp_path / "elsewhere" / "train"
    shutil.copytree(split, lone)
    with pytest.raises(BioscanError) as err:
        make_loader(lone, "classify")
    one_line(err.value, "labels.json", str(lone.parent / "labels.json"), "copy it there")


def test_corrupt_header_names_the_offset_and_the_last_good_sample(copy):
    from bioscan_io.format import scan

    entry = read_manifest(copy)["shards"][0]
    shard = copy / entry["name"]
    data = bytearray(shard.read_bytes())
    keys = []
    with scan(str(shard), 0, entry["count"], ("dna",)) as found:
        keys = found.gather()[0].to_pylist()
        offsets = found.spans()["dna"][0]
    # Damage the name of the first member of the third sample: the name in its
    # damaged header is not a member's name any more, so it must not be reported.
    header = int(offsets[2]) - 512
    while bytes(data[header - 512:header - 412]).split(b"\0")[0].decode().startswith(keys[2]):
        header -= 512  # back to the first member of that sample
    data[header + 3] ^= 0x40
    shard.write_bytes(bytes(data))
    from bioscan_io.format import take_local

    *_, error = take_local(str(shard), range(entry["count"]), ("dna",))
    one_line(error, shard.name, f"at byte {header}", f"after sample {keys[1]}")


def test_corrupt_image_message_has_no_memory_address(copy):
    from bioscan_io import images

    with pytest.raises(BioscanError) as err:
        images.decode(b"not an image at all", "train-000000.tar: X1.jpg")
    text = one_line(err.value, "train-000000.tar: X1.jpg", "not an image")
    assert " at 0x" not in text


def test_a_worker_error_leaves_no_noise_for_later_loaders(copy):
    """After a worker raised, loaders made later in the process print no 'Exception ignored'."""
    entry = read_manifest(copy)["shards"][0]
    (copy / entry["name"]).write_bytes((copy / entry["name"]).read_bytes()[:3000])
    (copy / entry["index"]["name"]).unlink()
    script = textwrap.dedent(f"""
        from bioscan_io import make_loader
        from bioscan_io.schema import BioscanError
        try:
            for _ in make_loader({str(copy)!r}, "classify", modality="image", batch_size=4, num_workers=2):
                pass
        except BioscanError as exc:
            print("raised:", exc)
        for _ in range(2):
            print(sum(1 for _ in make_loader({str(copy)!r}, "mlm", batch_size=4, num_workers=2, on_error="skip")))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    raised = proc.stdout.splitlines()[0]
    assert raised.startswith("raised: shard index") and entry["index"]["name"] in raised  # one line, the cause
    assert "Exception ignored" not in proc.stderr and "can only test a child process" not in proc.stderr


def test_check_sha256_catches_a_flipped_bit_in_image_data(copy):
    entry = read_manifest(copy)["shards"][0]
    shard = copy / entry["name"]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01  # a bit of some payload: the tar still reads
    shard.write_bytes(bytes(data))
    assert sum(len(b["processid"]) for b in make_loader(copy, "classify", modality="image", batch_size=8,
                                                          on_error="skip")) > 0
    with pytest.raises(BioscanError) as err:
        list(make_loader(copy, "classify", modality="image", batch_size=8, check_sha256=True))
    one_line(err.value, str(shard), "is corrupt: sha256", "the manifest says")
    skipping = make_loader(copy, "classify", modality="image", batch_size=8, check_sha256=True, on_error="skip")
    list(skipping)
    assert skipping.skipped == entry["count"]


def test_a_split_of_zero_samples(copy):
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest.update(shards=[], num_samples=0)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BioscanError) as err:
        make_loader(copy, "mlm")
    one_line(err.value, "0 samples", str(copy))
