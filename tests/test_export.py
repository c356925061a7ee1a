"""``bioscan-io export``: a split as one Parquet file, checked against the generator's metadata CSV."""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bioscan_io.cli import main
from bioscan_io.export import EXPORT_SCHEMA, LABEL_COLUMNS, export_parquet
from bioscan_io.format import TarSink, read_manifest, read_members
from bioscan_io.metadata import SCHEMA
from bioscan_io.schema import COLUMNS, METADATA_CSV, RANKS, BioscanError
from bioscan_io.shard import shard_split

from conftest import cli


@pytest.fixture(scope="module")
def split(dataset_small, tmp_path_factory) -> Path:
    """Every record of the 400-record dataset, in 11 shards of at most 37 samples."""
    out = tmp_path_factory.mktemp("export") / "shards"
    return Path(shard_split(dataset_small, "all", out=out, maxcount=37, progress=False, log=lambda m: None).folder)


@pytest.fixture(scope="module")
def exported(split, tmp_path_factory) -> pa.Table:
    """The split exported with row groups of 50 rows (so they cross shard boundaries), read back."""
    out = export_parquet(split, tmp_path_factory.mktemp("parquet") / "all.parquet", row_group_rows=50)
    assert pq.read_metadata(out).num_row_groups == 8  # 400 rows: 8 groups of 50
    return pq.read_table(out)


@pytest.fixture
def copy(split, tmp_path) -> Path:
    """A private copy of the split folder, labels.json beside it, to damage."""
    folder = tmp_path / "s" / split.name
    shutil.copytree(split, folder)
    shutil.copy(split.parent / "labels.json", folder.parent / "labels.json")
    return folder


def shard_keys(split: Path) -> list[str]:
    """Every sample key, in the split's shard order (the manifest's shards, each in tar order)."""
    keys = []
    for entry in read_manifest(split)["shards"]:
        got, _, _, error = read_members(str(split / entry["name"]), 0, entry["count"], ("dna",))
        assert error is None
        keys += got.to_pylist()
    return keys


def source_rows(dataset_small) -> dict[str, dict]:
    """The generator's metadata CSV read by pandas, as the official loader reads it, by processid."""
    pd = pytest.importorskip("pandas")
    strings = {c: str for c in COLUMNS if SCHEMA.field(c).type == pa.string()}
    frame = pd.read_csv(dataset_small / METADATA_CSV, dtype=strings)
    return {row["processid"]: row for row in frame.to_dict("records")}


def same(exported_value, source_value) -> bool:
    """Equal, a missing value (pandas: NaN) being null."""
    if source_value is None or (isinstance(source_value, float) and math.isnan(source_value)):
        return exported_value is None
    return exported_value == source_value and not isinstance(exported_value, bool)


def test_rows_are_the_split_in_shard_order_with_every_field_of_the_metadata(exported, split, dataset_small):
    assert exported.schema.remove_metadata() == EXPORT_SCHEMA  # the metadata's types, then int64 label indices
    provenance = json.loads(exported.schema.metadata[b"bioscan_io.export"])
    assert (provenance["split"], provenance["num_samples"]) == ("all", 400)
    pids = exported.column("processid").to_pylist()
    assert pids == shard_keys(split)  # shard order, tar order within each shard
    source = source_rows(dataset_small)
    assert sorted(pids) == sorted(source)  # "all": every record of the metadata, once
    wrong = [(pid, column, value, source[pid][column])
             for row in exported.select(list(COLUMNS)).to_pylist() for pid in [row["processid"]]
             for column, value in row.items() if not same(value, source[pid][column])]
    assert wrong == []
    # The test means something: missing values and every type occur.
    for column in ("species", "coord-lat", "index_bioscan_1M_insect"):
        assert 0 < exported.column(column).null_count < len(exported)


def test_barcodes_are_the_dna_members(exported, split):
    barcodes = []
    for entry in read_manifest(split)["shards"]:
        _, values, _, _ = read_members(str(split / entry["name"]), 0, entry["count"], ("dna",))
        barcodes += [data.decode() for data in values["dna"].to_pylist()]
    assert [b or "" for b in exported.column("dna_barcode").to_pylist()] == barcodes
    assert max(map(len, barcodes)) > 660  # whole barcodes, never truncated


def expected_indices(table: pa.Table, labels: dict) -> dict[str, list[int]]:
    """Each rank's name looked up in labels.json's list (-1: missing or not listed), in plain Python."""
    out = {}
    for rank in RANKS:
        position = {name: i for i, name in enumerate(labels[rank])}
        out[f"{rank}_index"] = [position.get(name, -1) if name is not None else -1
                                for name in table.column(rank).to_pylist()]
    return out


def test_label_indices_are_positions_in_labels_json(exported, split):
    labels = json.loads((split.parent / "labels.json").read_text())["ranks"]
    expected = expected_indices(exported, labels)
    assert {name: exported.column(name).to_pylist() for name in LABEL_COLUMNS} == expected
    assert -1 in expected["species_index"] and max(expected["species_index"]) > 0


def test_a_name_labels_json_does_not_list_is_minus_one(copy, tmp_path):
    labels_file = copy.parent / "labels.json"
    doc = json.loads(labels_file.read_text())
    dropped = doc["ranks"]["genus"].pop(1)  # every later genus moves up one place
    labels_file.write_text(json.dumps(doc))
    table = pq.read_table(export_parquet(copy, tmp_path / "x.parquet"))
    assert dropped in table.column("genus").to_pylist()
    got = table.column("genus_index").to_pylist()
    assert got == expected_indices(table, doc["ranks"])["genus_index"]
    assert {i for i, name in zip(got, table.column("genus").to_pylist()) if name == dropped} == {-1}


def test_hugging_face_datasets_reads_the_file(split, tmp_path):
    datasets = pytest.importorskip("datasets")
    out = export_parquet(split / "manifest.json", tmp_path / "all.parquet")  # the manifest stands for its folder
    ds = datasets.Dataset.from_parquet(str(out), cache_dir=str(tmp_path / "hf"))
    table = pq.read_table(out)
    assert ds.column_names == table.column_names
    assert ds[:] == table.to_pydict()
    assert ds.features["inferred_ranks"].dtype == "uint8" and ds.features["species_index"].dtype == "int64"


def test_cli_writes_the_file_and_refuses_to_overwrite_it(split, exported, tmp_path):
    out = tmp_path / "all.parquet"
    run = subprocess.run(cli("export", str(split), "--format", "parquet", "--out", str(out), "--no-progress"),
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(f"export: wrote {out}: 400 samples of {split} (31 columns, 1 row group,")
    assert run.stderr == ""
    assert pq.read_table(out).equals(exported)
    before = out.read_bytes()
    run = subprocess.run(cli("export", str(split), "--out", str(out)), capture_output=True, text=True)
    assert (run.returncode, run.stderr) == (2, f"bioscan-io export: error: {out} already exists; "
                                               "pass --force to replace it\n")
    assert out.read_bytes() == before
    out.write_bytes(b"old")
    assert main(["export", str(split), "--out", str(out), "--force", "--no-progress"]) == 0
    assert pq.read_table(out).equals(exported)


def one_line_error(capsys, argv) -> str:
    """The command's one stderr line, checked to come with exit status 2."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("bioscan-io export: error: ")
    return err.strip()


def test_bad_inputs_are_one_line(split, copy, tmp_path, capsys):
    out = str(tmp_path / "x.parquet")
    shard = split / read_manifest(split)["shards"][0]["name"]
    assert "split folder not found: nope" in one_line_error(capsys, ["export", "nope", "--out", out])
    assert f"{shard} is a shard (a .tar file): export reads a split folder" in \
        one_line_error(capsys, ["export", str(shard), "--out", out])
    assert f"no shard manifest at {tmp_path}/manifest.json" in \
        one_line_error(capsys, ["export", str(tmp_path), "--out", out])
    assert f"the output {tmp_path} is a folder" in \
        one_line_error(capsys, ["export", str(split), "--out", str(tmp_path)])
    assert f"cannot write {tmp_path}/no/x.parquet: the folder {tmp_path}/no does not exist" in \
        one_line_error(capsys, ["export", str(split), "--out", str(tmp_path / "no" / "x.parquet")])
    (copy.parent / "labels.json").unlink()
    assert f"needs the label values of labels.json, looked for at {copy.parent}/labels.json" in \
        one_line_error(capsys, ["export", str(copy), "--out", out])
    with pytest.raises(SystemExit) as exit_:  # argparse's refusal of an unknown --format
        main(["export", str(split), "--out", out, "--format", "csv"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines() == [  # one line: no usage block
        "bioscan-io export: error: argument --format: invalid choice: 'csv' (choose from 'parquet') "
        "(see bioscan-io export --help)"]
    assert not os.path.exists(out)


#: Run as an unprivileged user: root ignores file permissions.
UNPRIVILEGED = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []


def test_an_unwritable_folder_is_one_line(split):
    if UNPRIVILEGED and shutil.which("setpriv") is None:
        pytest.skip("setpriv is not installed: cannot run as an unprivileged user")
    shared = Path(tempfile.mkdtemp(prefix="bioscan-export-"))
    try:
        shared.chmod(0o755)  # the split readable by the unprivileged user; its folder "ro" not writable
        shutil.copytree(split, shared / "all")
        shutil.copy(split.parent / "labels.json", shared / "labels.json")
        (shared / "ro").mkdir(mode=0o555)
        argv = cli("export", str(shared / "all"), "--out", str(shared / "ro" / "x.parquet"))
        run = subprocess.run([*UNPRIVILEGED, *argv], capture_output=True, text=True)
        if "Permission denied" in run.stderr and "bioscan-io export: error" not in run.stderr:
            pytest.skip(f"bioscan-io does not start as an unprivileged user: {run.stderr.strip()[-200:]}")
        assert (run.returncode, run.stderr) == (2, f"bioscan-io export: error: cannot write {shared}/ro/x.parquet: "
                                                   f"no permission to write in {shared}/ro\n")
        assert os.listdir(shared / "ro") == []
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def rewrite_member(shard: Path, name: str, payload: bytes) -> None:
    """The shard with one member's payload replaced (the manifest's count still holds)."""
    with tarfile.open(shard) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar]
    with open(shard, "wb") as f:
        sink = TarSink(f)
        for member, data in members:
            sink.add(member, payload if member == name else data)
        sink.close()


def damaged_record(copy: Path, change) -> tuple[Path, str]:
    """The last shard of ``copy`` with its fifth sample's ``.json`` record changed by ``change``."""
    shard = copy / read_manifest(copy)["shards"][-1]["name"]
    with tarfile.open(shard) as tar:
        name = [m.name for m in tar if m.name.endswith(".json")][4]
        record = json.loads(tar.extractfile(name).read())
    rewrite_member(shard, name, change(record))
    return shard, name


@pytest.mark.parametrize("change, message", [
    (lambda r: b"{not json", "not JSON"),
    (lambda r: json.dumps({**r, "coord-lat": "north"}).encode(), "'coord-lat' holds 'north', not a double or null"),
    (lambda r: json.dumps({**r, "inferred_ranks": 300}).encode(), "'inferred_ranks' holds 300, not a uint8 or null"),
    (lambda r: json.dumps({**r, "processid": "OTHER-1"}).encode(), "processid is 'OTHER-1', not the sample key"),
])
def test_a_bad_record_is_one_line_naming_shard_and_sample(copy, tmp_path, change, message):
    shard, name = damaged_record(copy, change)
    with pytest.raises(BioscanError) as err:
        export_parquet(copy, tmp_path / "x.parquet")
    assert str(err.value).startswith(f"shard {shard}: {name}: ") and message in str(err.value)
    assert len(str(err.value).splitlines()) == 1


def test_a_record_without_a_field_exports_it_as_null(copy, tmp_path):
    shard, name = damaged_record(copy, lambda r: json.dumps({k: v for k, v in r.items() if k != "country"}).encode())
    table = pq.read_table(export_parquet(copy, tmp_path / "x.parquet"))
    row = table.column("processid").to_pylist().index(name[:-len(".json")])
    assert table.column("country")[row].as_py() is None and table.column("sampleid")[row].as_py() is not None


def cut(shard: Path) -> None:
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size // 2)


@pytest.mark.parametrize("damage, message", [
    (cut, "{shard}: truncated member at byte"),
    (Path.unlink, "{shard} (listed in {folder}/manifest.json) is missing"),
])
def test_a_failure_leaves_the_old_file_and_no_temporary(copy, tmp_path, damage, message):
    out = tmp_path / "x.parquet"
    out.write_bytes(b"old")
    shard = copy / read_manifest(copy)["shards"][-1]["name"]
    damage(shard)  # the last shard: found once 10 shards' rows were written
    with pytest.raises(BioscanError) as err:
        export_parquet(copy, out, force=True, row_group_rows=10)
    assert str(err.value).startswith("shard " + message.format(shard=shard, folder=copy))
    assert out.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s", "x.parquet"]


def test_a_shard_with_pax_headers_exports_the_same_rows(copy, exported, tmp_path):
    """Headers the compiled walk does not read (pax) go through the Python reader, with the same result."""
    shard = copy / read_manifest(copy)["shards"][0]["name"]
    with tarfile.open(shard) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar]
    with tarfile.open(shard, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.pax_headers = len(data), {"comment": "a pax header"}
            tar.addfile(info, io.BytesIO(data))
    assert pq.read_table(export_parquet(copy, tmp_path / "x.parquet")).equals(exported)
