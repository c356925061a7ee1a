"""Nothing silently wrong (issue 25): a changed metadata file, two runs into one folder,
awkward records written by hand, unchecked arguments and a full disk.

Each case is reproduced as a user meets it and must end in one of two ways: exit
status 2 with one line naming the cause (and nothing wrong written), or the data
kept exactly.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from bioscan_io import atomic, synth
from bioscan_io import metadata as md
from bioscan_io.format import LABELS, MANIFEST, read_manifest
from bioscan_io.schema import COLUMN_KINDS, METADATA_CSV, BioscanError
from bioscan_io.shard import shard_split

from conftest import cli, link_copy
from test_bad_input_cli import assert_one_line as _one_line

QUIET = dict(progress=False, log=lambda m: None)
SHARD = cli("shard")
PREFIX = "bioscan-io shard: error: "


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A generated 300-record dataset."""
    root = tmp_path_factory.mktemp("runs") / "root"
    synth.generate(root, n_records=300, seed=25, workers=1)
    return root


def run_shard(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([*SHARD, "--no-progress", *args], capture_output=True, text=True, timeout=timeout)


def assert_one_line(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit status 2, nothing on stdout, exactly one line on stderr: the error, holding every needle."""
    return _one_line(proc, PREFIX, *needles)


def samples(folder: Path) -> dict[str, dict]:
    """Every sample's ``.json`` member in the split folder's shards, by key."""
    found = {}
    for path in sorted(folder.glob("*.tar")):
        with tarfile.open(path) as tar:
            for member in tar:
                if member.name.endswith(".json"):
                    found[member.name[:-len(".json")]] = json.loads(tar.extractfile(member).read())
    return found


def verify(folder: Path, metadata: Path | None = None) -> subprocess.CompletedProcess:
    extra = ["--metadata", str(metadata)] if metadata else []
    return subprocess.run(cli("verify", str(folder), "--no-progress", *extra), capture_output=True, text=True,
                          timeout=180)


# ----------------------------------------------------------------------------- 1. a changed metadata file

#: Runs bioscan-shard with an audit hook that SIGKILLs it as it renames its first
#: shard into place: the metadata cache then exists, as after a kill mid-run.
_KILL_AT_FIRST_SHARD = """
import os, signal, sys
from bioscan_io.cli import main
def hook(event, args):
    if event == "os.rename" and ".tmp-" in str(args[0]) and str(args[1]).endswith(".tar"):
        os.kill(os.getpid(), signal.SIGKILL)
sys.addaudithook(hook)
sys.exit(main(["shard", *sys.argv[1:]]))
"""


def test_metadata_edited_in_place_with_its_mtime_restored_is_read_again(base, tmp_path):
    root = link_copy(base, tmp_path / "root")
    meta, out = root / METADATA_CSV, tmp_path / "out"
    args = ["--root", str(root), "--split", "train", "--out", str(out), "--workers", "1", "--no-progress"]
    killed = subprocess.run([sys.executable, "-c", _KILL_AT_FIRST_SHARD, *args], capture_output=True, timeout=180)
    assert killed.returncode == -signal.SIGKILL
    assert list((out / ".cache").rglob("metadata-*.arrow")), "the killed run left its metadata cache"

    before = meta.stat()
    text = meta.read_text(encoding="utf-8")
    edited = text.replace(",Insecta,", ",Insectz,")  # same size: what a re-download of a fixed file looks like
    assert len(edited) == len(text) and edited != text
    meta.write_text(edited, encoding="utf-8")
    os.utime(meta, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (meta.stat().st_size, meta.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)

    # The shards of the killed run are of the file as it was: not reused, not silently mixed in.
    assert_one_line(run_shard(*args[:-1]), f"{out / 'train'} holds shards of another run", "--overwrite")
    rerun = run_shard(*args[:-1], "--overwrite")
    assert rerun.returncode == 0, rerun.stderr
    classes = {rec["class"] for rec in samples(out / "train").values()}
    assert "Insectz" in classes and "Insecta" not in classes
    assert read_manifest(out / "train")["source"]["metadata_sha256"] == md.file_sha256(meta)
    checked = verify(out / "train")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert not (out / ".cache").exists()


def test_the_cache_is_named_by_the_bytes_it_holds(base, tmp_path):
    table = md.read_metadata(base / METADATA_CSV, cache_dir=tmp_path / "cache")
    sha = md.file_sha256(base / METADATA_CSV)
    assert md.metadata_sha256(table) == sha == md.metadata_sha256(md.read_metadata(base / METADATA_CSV))
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [md.cache_path(sha, tmp_path / "cache").name]


def test_a_file_changing_while_it_is_read_is_refused(base, tmp_path, monkeypatch):
    meta = tmp_path / "metadata.csv"
    shutil.copy(base / METADATA_CSV, meta)
    real = md.file_sha256

    def hashed_then_changed(path):
        digest = real(path)
        with open(path, "a", encoding="utf-8") as f:
            f.write("\n")  # the download still under way
        return digest

    monkeypatch.setattr(md, "file_sha256", hashed_then_changed)
    with pytest.raises(BioscanError, match=f"metadata {meta} changed while it was being read"):
        md.read_metadata(meta, cache_dir=tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*")) if (tmp_path / "cache").exists() else True


# ----------------------------------------------------------------------------- 2. two runs into one folder


def test_a_second_run_into_a_locked_split_folder_is_refused(base, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from bioscan_io import atomic\n"
         "with atomic.exclusive(sys.argv[1], 'busy'):\n    print('held', flush=True); time.sleep(60)",
         str(out / ".val.lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        before = sorted(p.name for p in out.iterdir())
        proc = run_shard("--root", str(base), "--split", "val", "--out", str(out))
        assert_one_line(proc, f"another bioscan-shard run (process {holder.pid}) is writing {out / 'val'}",
                        "another --out")
        assert sorted(p.name for p in out.iterdir()) == before, "the refused run wrote nothing"
    finally:
        holder.kill()
        holder.wait()
    summary = shard_split(base, "val", out=out, **QUIET)  # the holder is gone: its lock with it
    assert summary.written == summary.shards
    assert sorted(p.name for p in out.iterdir()) == [LABELS, "val"], "no lock file left"


def test_two_runs_at_once_with_other_seeds_never_mix(base, tmp_path):
    """Started together, repeatedly: one run writes the folder, the other is refused (or, when it
    comes after the first ended, finds another run's shards); never two "successes" over one folder."""
    for attempt in range(4):
        out = tmp_path / f"out{attempt}"
        procs = [subprocess.Popen([*SHARD, "--root", str(base), "--split", "pretrain", "--out", str(out),
                                   "--seed", str(seed), "--maxcount", "20", "--workers", "2", "--no-progress"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for seed in (1, 2)]
        results = [(p.wait(timeout=180), p.stderr.read()) for p in procs]
        codes = sorted(code for code, _ in results)
        assert codes == [0, 2], results
        winner = [seed for seed, (code, _) in zip((1, 2), results) if code == 0][0]
        loser = [err for code, err in results if code == 2][0]
        assert len(loser.splitlines()) == 1 and ("another bioscan-shard run" in loser
                                                  or "holds shards of another run" in loser), loser
        assert read_manifest(out / "pretrain")["seed"] == winner
        checked = verify(out / "pretrain")
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert sorted(p.name for p in out.iterdir()) == [LABELS, "pretrain"]


def test_a_failing_run_removes_only_what_it_made(base, tmp_path):
    """The failed run's clean-up leaves another split's files, and its cache, alone."""
    out = tmp_path / "out"
    shard_split(base, "val", out=out, **QUIET)
    other_cache = out / ".cache" / "test" / "metadata-0123.arrow"  # another split's run, under way
    other_cache.parent.mkdir(parents=True)
    other_cache.write_bytes(b"in use")
    with pytest.raises(BioscanError):
        shard_split(base, "train", out=out, package="cropped", **QUIET)
    assert other_cache.read_bytes() == b"in use"
    assert (out / "val" / MANIFEST).is_file() and not (out / "train").exists()


def test_lock_is_taken_over_from_a_killed_holder(tmp_path):
    lock = tmp_path / ".x.lock"
    killed = subprocess.Popen([sys.executable, "-c", "import sys, time; from bioscan_io import atomic\n"
                               "with atomic.exclusive(sys.argv[1], 'busy'):\n    print('held', flush=True); "
                               "time.sleep(60)", str(lock)], stdout=subprocess.PIPE, text=True)
    assert killed.stdout.readline() == "held\n"
    killed.kill()
    killed.wait()
    assert lock.exists()  # a kill leaves the file, not the lock
    with atomic.exclusive(lock, "busy {pid}"):
        assert lock.read_text() == f"{os.getpid()}\n"
        with pytest.raises(BioscanError, match=f"busy {os.getpid()}"):
            with atomic.exclusive(lock, "busy {pid}"):  # flock: another open file description is refused
                pass
    assert not lock.exists()


def test_a_writer_that_cannot_open_the_cache_fails_the_run_instead_of_hanging(tmp_path, monkeypatch):
    """The hang of two runs into one folder: the other run's clean-up removed the cache, the
    pool's initializer raised, and multiprocessing.Pool restarted workers forever. An
    initializer error is now raised by the worker's first task, which ends the run."""
    from bioscan_io import writers

    monkeypatch.setattr(writers, "_INIT_ERROR", None)
    writers.init_worker(str(tmp_path / "gone.arrow"), str(tmp_path / "gone.labels.arrow"))
    with pytest.raises(FileNotFoundError, match="gone.arrow"):
        writers.write_shard((str(tmp_path), "x-000000.tar", [0], None))


# ----------------------------------------------------------------------------- 3-5. awkward records by hand

HEADER = ["processid", "sampleid", "taxon", "phylum", "class", "order", "family", "subfamily", "genus", "species",
          "dna_bin", "dna_barcode", "country", "province_state", "coord-lat", "coord-lon",
          "image_measurement_value", "area_fraction", "scale_factor", "inferred_ranks", "split",
          "index_bioscan_1M_insect", "chunk"]


def _row(processid: str, **values) -> dict:
    row = dict(processid=processid, sampleid=f"S-{processid}", taxon="Diptera", phylum="Arthropoda",
               **{"class": "Insecta"}, order="Diptera", family="", subfamily="", genus="", species="",
               dna_bin="BOLD:AAA0001", dna_barcode="ACGTACGTAC" * 66, country="Canada", province_state="Ontario",
               **{"coord-lat": "43.5", "coord-lon": "-80.2"}, image_measurement_value="1234.0",
               area_fraction="0.2", scale_factor="1.0", inferred_ranks="2", split="val",
               index_bioscan_1M_insect="", chunk="")
    row.update(values)
    return row


def _write(path: Path, header: list[str], rows: list[dict]) -> Path:
    """A metadata CSV written by hand (the csv module), not by the generator."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for row in rows:
            writer.writerow([row.get(name, "") for name in header])
    return path


def _root(base: Path, tmp_path: Path, header: list[str], rows: list[dict]) -> Path:
    """A root with the hand-written metadata, and the rows' images (copies of the generated ones)."""
    root = tmp_path / "root"
    _write(root / METADATA_CSV, header, rows)
    image = next((base / "bioscan5m" / "images" / "cropped_256" / "val").glob("*.jpg"))
    folder = root / "bioscan5m" / "images" / "cropped_256" / "val"
    folder.mkdir(parents=True)
    for row in rows:
        if "/" not in row["processid"]:
            shutil.copy(image, folder / f"{row['processid']}.jpg")
    return root


AWKWARD = [
    # id, header change, the odd row's values, needles of the one line
    ("processid with a dot", None, dict(processid="ABCD.12-19"),
     ["record 2 has processid 'ABCD.12-19', which cannot be a sample key", "a WebDataset key ends at its first '.'"]),
    ("processid with a slash", None, dict(processid="ABCD/12-19"), ["record 2 has processid 'ABCD/12-19'"]),
    ("duplicated header", "country twice", {}, ["has column 'country' twice (columns 13 and 24)"]),
    ("extra columns", "extra", {}, ["has column(s) that BIOSCAN-5M's metadata does not: 'notes', 'Unnamed: 0'",
                                    "remove them"]),
    ("inf coordinate", None, {"coord-lat": "inf"}, ["record 2 (ABCD-2): column 'coord-lat' holds inf",
                                                    "JSON cannot hold"]),
    ("-inf area", None, {"area_fraction": "-inf"}, ["record 2 (ABCD-2): column 'area_fraction' holds -inf"]),
    ("Infinity scale", None, {"scale_factor": "Infinity"},
     ["record 2 (ABCD-2): column 'scale_factor' holds inf"]),
]


@pytest.mark.parametrize("header_change,odd,needles", [row[1:] for row in AWKWARD], ids=[row[0] for row in AWKWARD])
def test_awkward_metadata_is_refused_on_one_line(base, tmp_path, header_change, odd, needles):
    header, odd = list(HEADER), dict(odd)
    rows = [_row("ABCD-1"), _row(odd.pop("processid", "ABCD-2"), **odd), _row("ABCD-3")]
    if header_change == "country twice":
        header.append("country")
    elif header_change == "extra":
        header += ["notes", "Unnamed: 0"]
    root = _root(base, tmp_path, header, rows)
    out = tmp_path / "out"
    line = assert_one_line(run_shard("--root", str(root), "--split", "val", "--out", str(out)),
                           str(root / METADATA_CSV), *needles)
    assert not out.exists(), line
    with pytest.raises(BioscanError) as caught:
        md.read_metadata(root / METADATA_CSV)
    assert str(caught.value) == line[len(PREFIX):]


def test_the_same_records_without_the_oddity_shard_and_verify(base, tmp_path):
    """The hand-written file itself is sound: each case above fails on its one oddity alone."""
    root = _root(base, tmp_path, HEADER, [_row("ABCD-1"), _row("ABCD-2"), _row("ABCD-3")])
    out = tmp_path / "out"
    done = run_shard("--root", str(root), "--split", "val", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert sorted(samples(out / "val")) == ["ABCD-1", "ABCD-2", "ABCD-3"]
    assert verify(out / "val").returncode == 0


def test_every_json_member_is_strict_json(base, tmp_path):
    out = tmp_path / "out"
    shard_split(base, "train", out=out, **QUIET)
    strict = lambda text: json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in a .json member"))  # noqa: E731
    for path in (out / "train").glob("*.tar"):
        with tarfile.open(path) as tar:
            for member in tar:
                if member.name.endswith(".json"):
                    strict(tar.extractfile(member).read())


def _jsonld(row: dict, **values) -> dict:
    """A JSON-LD record of a CSV row: numbers as numbers, empty cells as null."""
    kinds = COLUMN_KINDS
    typed = {"@id": row["processid"]}
    for name, value in row.items():
        if value == "":
            typed[name] = None
        elif kinds[name] == "float":
            typed[name] = float(value)
        elif kinds[name] in ("uint8", "Int64"):
            typed[name] = int(value)
        else:
            typed[name] = value
    return {**typed, **values}


def test_nan_spelled_in_a_csv_is_missing_and_in_json_ld_is_refused(base, tmp_path):
    """In a CSV, "nan" is one of the official loader's spellings of missing (null in the .json);
    JSON-LD can carry a NaN number (Python's json reads it), which no strict JSON holds."""
    root = _root(base, tmp_path, HEADER, [_row("ABCD-1", scale_factor="nan")])
    assert md.read_metadata(root / METADATA_CSV).column("scale_factor").to_pylist() == [None]
    doc = {"@context": {}, "@graph": [_jsonld(_row("ABCD-1"), scale_factor=float("nan"))]}
    path = tmp_path / "metadata.jsonld"
    path.write_text(json.dumps(doc), encoding="utf-8")  # writes NaN, as json.dumps does by default
    with pytest.raises(BioscanError, match="record 1 \\(ABCD-1\\): column 'scale_factor' holds nan"):
        md.read_metadata(path)


def test_jsonld_with_an_extra_key_in_a_late_record_is_refused(base, tmp_path):
    doc = {"@context": {}, "@graph": [_jsonld(_row(f"ABCD-{i}")) for i in range(1, 1503)]}
    doc["@graph"][1500]["notes"] = "kept nowhere"
    path = tmp_path / "metadata.jsonld"
    path.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(BioscanError, match="does not: 'notes'"):
        md.read_metadata(path)


# ----------------------------------------------------------------------------- 9. arguments


ARGUMENTS = [
    ("--seed -1", ["--seed", "-1"], ["seed must be a whole number >= 0; got -1"]),
    ("--workers 0", ["--workers", "0"], ["workers must be a positive whole number; got 0"]),
    ("--workers -1", ["--workers", "-1"], ["workers must be a positive whole number; got -1"]),
    ("--maxcount 0", ["--maxcount", "0"], ["maxcount must be a positive whole number; got 0"]),
    ("--out ''", ["--out", ""], ["the output folder is an empty path"]),
    ("--split train+train", ["--split", "train+train"], ["split 'train+train' names train twice"]),
    ("--split seen+val", ["--split", "seen+val"], ["split 'seen+val' names val twice"]),
    ("--storage-option, local --out", ["--storage-option", "anon=true"],
     ["storage options (anon) are for a remote output", "is a local folder"]),
    ("--out unknown scheme", ["--out", "foo://bar/x"], ["foo://bar/x:", "foo"]),
    ("--out pipe: without {name}", ["--out", "pipe:cat > /dev/null"], ["needs {name}"]),
]


@pytest.mark.parametrize("args,needles", [row[1:] for row in ARGUMENTS], ids=[row[0] for row in ARGUMENTS])
def test_bad_arguments_are_refused_before_any_work(base, tmp_path, monkeypatch, args, needles):
    monkeypatch.chdir(tmp_path)  # --out '' or a refused URL must not write into the working folder either
    if "--out" not in args:
        args = [*args, "--out", str(tmp_path / "out")]
    staging = Path(os.environ.get("TMPDIR", "/tmp")) / "bioscan-io-staging"
    staged = set(staging.iterdir()) if staging.is_dir() else set()
    assert_one_line(run_shard("--root", str(base), "--split", "val", *args, timeout=60), *needles)
    assert list(tmp_path.iterdir()) == []
    assert (set(staging.iterdir()) if staging.is_dir() else set()) == staged, "nothing staged"


# ----------------------------------------------------------------------------- 10. a full disk


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs (mounted when this user may), else the test is skipped."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_generate_on_a_full_disk_names_the_file_and_leaves_nothing(small_disk):
    target = small_disk / "data"
    proc = subprocess.run(cli("generate", str(target), "--records", "2000", "--no-progress"), capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    line = proc.stderr.strip()
    assert line.startswith("bioscan-io generate: error: ") and "No space left on device" in line, line
    assert str(target) in line and ": No space left on device" in line, "the file being written is named"
    assert list(small_disk.iterdir()) == [], "no partial dataset left"


def test_shard_on_a_full_disk_names_the_shard_and_keeps_only_whole_shards(base, small_disk):
    free = os.statvfs(small_disk)
    (small_disk / "filler").write_bytes(bytes(free.f_bavail * free.f_frsize - 300_000))  # ~300 KB left
    out = small_disk / "out"
    proc = run_shard("--root", str(base), "--split", "pretrain", "--out", str(out), "--maxcount", "10",
                     "--workers", "1")
    line = assert_one_line(proc, f"sharding into {out} failed: {out}", ": No space left on device")
    assert ".tmp-" not in line
    assert not [p for p in out.rglob("*") if atomic.TMP_MARK in p.name], "no temporary left"
    assert not (out / ".cache").exists() and not (out / LABELS).exists()
    for path in (out / "pretrain").glob("*.tar"):  # the shards kept are whole: the rerun reuses them
        with tarfile.open(path) as tar:
            assert len(tar.getmembers()) % 3 == 0
