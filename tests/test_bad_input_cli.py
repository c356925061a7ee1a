"""Bad input to the ``bioscan-io`` commands (issue 15, verify and the CLI): one line, exit status 2.

Every user error is run through the command itself: exit status 2 (``verify``
keeps 1 for "problems found"), exactly one line on stderr naming the file or
folder and the cause, nothing on stdout. The loader's rows of the same matrix are
in test_bad_input_matrix.py, ``bioscan-shard``'s in test_bad_input_shard.py.

Permission cases run the command as an unprivileged user (root reads every
file whatever its mode), on a copy of the data that every user may read except
the one thing the test makes unreadable.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import importlib.metadata
import json
import os
import pty
import select
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import termios
from pathlib import Path

import pytest

from bioscan_io import cli as cli_module
from bioscan_io.format import MANIFEST, MISSING_REPORT, read_manifest
from bioscan_io.loader import make_loader
from bioscan_io.schema import METADATA_CSV
from bioscan_io.shard import shard_split
from bioscan_io.verify import VerifyReport

from conftest import cli

QUIET = dict(progress=False, log=lambda m: None)
#: ``bioscan-shard``'s own entry point (its parser, not ``bioscan-io shard``'s).
SHARD = [sys.executable, "-c", "import sys; from bioscan_io.cli import shard_main; sys.exit(shard_main())"]
#: Run as an unprivileged user: root reads files whatever their mode.
UNPRIVILEGED = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []


def run(argv: list[str], user: list[str] = (), **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*user, *argv], capture_output=True, text=True, timeout=180, **kw)


def assert_one_line(proc: subprocess.CompletedProcess, prefix: str, *needles) -> str:
    """Exit status 2, nothing on stdout, exactly one line on stderr: the error, holding every needle."""
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2 and len(lines) == 1, (proc.returncode, proc.stderr)
    assert proc.stdout == "", proc.stdout
    assert lines[0].startswith(prefix), lines[0]
    for needle in needles:
        assert str(needle) in lines[0], (needle, lines[0])
    return lines[0]


def world_readable(folder: Path) -> None:
    """Every file readable and every folder searchable by every user."""
    for dirpath, _, filenames in os.walk(folder):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o644)


# ----------------------------------------------------------------------------- data


@pytest.fixture(scope="module")
def base(dataset_small) -> Path:
    """The train split of dataset_small sharded twice (one shard, two shards), and its metadata,
    in a folder every user may read (pytest's own tmp_path is root's only)."""
    folder = Path(tempfile.mkdtemp(prefix="bioscan-bad-cli-"))
    shutil.copy(dataset_small / METADATA_CSV, folder / "metadata.csv")
    shard_split(dataset_small, "train", out=folder / "one", maxcount=100, **QUIET)
    shard_split(dataset_small, "train", out=folder / "two", maxcount=40, **QUIET)
    world_readable(folder)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def shared(base) -> Path:
    """A private copy of ``base`` that every user may read, for a test to damage or lock."""
    folder = Path(tempfile.mkdtemp(prefix="bioscan-bad-cli-copy-"))
    for name in ("metadata.csv", "one", "two"):
        (shutil.copytree if (base / name).is_dir() else shutil.copy)(base / name, folder / name)
    world_readable(folder)
    yield folder
    world_readable(folder)  # give back what a test locked, so that it can be removed
    shutil.rmtree(folder, ignore_errors=True)


def verify(folder: Path, *args: str, user: list[str] = ()) -> subprocess.CompletedProcess:
    """``bioscan-io verify`` against the metadata copy beside the split folders."""
    meta = folder.parent.parent / "metadata.csv"
    return run(cli("verify", str(folder), "--metadata", str(meta), *args), user=user)


def strip_indexes(folder: Path) -> None:
    """Make ``folder`` a version-1 split, so that the loader reads the shards through their tar headers."""
    manifest = read_manifest(folder)
    for entry in manifest["shards"]:
        (folder / entry.pop("index")["name"]).unlink()
    manifest["format_version"] = 1
    (folder / MANIFEST).write_text(json.dumps(manifest))


def members(path: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(path) as tar:
        return tar.getmembers()


def keys_of(folder: Path) -> list[str]:
    keys = []
    for entry in read_manifest(folder)["shards"]:
        keys += list(dict.fromkeys(m.name.split(".", 1)[0] for m in members(folder / entry["name"])))
    return keys


# ----------------------------------------------------------------------------- 1. verify counts what the loader loses


def _flip_header(data: bytearray, member: tarfile.TarInfo) -> bytearray:
    data[member.offset + 130] ^= 0x01  # inside the size field: the header checksum no longer matches
    return data


#: Damage to the first shard, at its 4th sample (members 9-11): (id, what it does to the bytes
#: given the shard's members, whether a member of the 4th sample is read before the fault).
DAMAGE = [
    ("corrupt header between samples", lambda data, m: _flip_header(data, m[9]), False),  # its .dna header
    ("corrupt header inside a sample", lambda data, m: _flip_header(data, m[10]), True),  # its .jpg header
    ("cut inside a header", lambda data, m: data[: m[9].offset + 100], False),
    ("cut between samples", lambda data, m: data[: m[9].offset], False),
    ("cut inside a member", lambda data, m: data[: m[10].offset_data + 100], True),
]


@pytest.mark.parametrize("damage,inside", [row[1:] for row in DAMAGE], ids=[row[0] for row in DAMAGE])
def test_verify_loses_the_samples_the_loader_loses(shared, damage, inside):
    """After a damaged header or a cut, verify reports missing exactly the records that
    ``make_loader(..., on_error="skip")`` does not deliver: the whole sample before the
    fault is read by both, a sample the fault cuts short by neither.

    The split has no indexes (format version 1): verify reads the tar, and a loader
    given an index would read past the damaged header by the offsets it holds.
    ``embed`` reads every member (.dna, .jpg, .json), as verify does.
    """
    folder = shared / "two" / "train"
    strip_indexes(folder)
    every = set(keys_of(folder))
    shard = folder / read_manifest(folder)["shards"][0]["name"]
    before = [m.name.split(".")[0] for m in members(shard)]
    shard.write_bytes(bytes(damage(bytearray(shard.read_bytes()), members(shard))))

    proc = verify(folder, "--json")
    assert proc.returncode == 1 and proc.stderr == "", proc.stderr
    report = json.loads(proc.stdout)
    missing = {p["key"] for p in report["problems"] if p["kind"] == "missing_record"}

    loader = make_loader(folder, "embed", batch_size=8, on_error="skip")
    delivered = set()
    for batch in loader:
        delivered.update(k for k, valid in zip(batch["processid"], batch["valid"].tolist()) if valid)
    assert missing == every - delivered
    assert report["samples"] == len(delivered) and loader.skipped == len(missing)
    # The 3rd sample, just before the fault, is whole: delivered, and not missing; the 4th is lost.
    assert before[8] in delivered and before[8] not in missing and before[9] in missing
    [fault] = [p for p in report["problems"] if p["kind"] in ("corrupt_tar", "truncated_tar")]
    assert fault["shard"] == shard.name
    assert fault["key"] == (before[9] if inside else None)  # the sample the fault lies in, if any


# ----------------------------------------------------------------------------- 2, 4. verify: its folder, permissions


def test_verify_given_a_shard_says_it_wants_the_split_folder(shared):
    folder = shared / "two" / "train"
    shard = folder / read_manifest(folder)["shards"][0]["name"]
    assert_one_line(run(cli("verify", str(shard))), "bioscan-io verify: error: ", f"{shard} is a shard (a .tar file)",
                    "verify checks a split folder", f"such as {folder}")
    csv = shared / "metadata.csv"
    assert_one_line(run(cli("verify", str(csv))), "bioscan-io verify: error: ", f"{csv} is a file",
                    "verify checks a split folder")


def _can_run_unprivileged() -> str | None:
    """Why the unprivileged runs cannot be made here, or None."""
    if UNPRIVILEGED and shutil.which("setpriv") is None:
        return "setpriv is not installed: cannot run as an unprivileged user"
    probe = run(cli("--version"), user=UNPRIVILEGED)
    if probe.returncode != 0:
        return f"bioscan-io does not start as an unprivileged user: {probe.stderr.strip()[-200:]}"
    return None


@pytest.fixture
def unprivileged() -> list[str]:
    reason = _can_run_unprivileged()
    if reason:
        pytest.skip(reason)
    return UNPRIVILEGED


#: What a test makes unreadable in the split folder: (id, the path relative to it, mode, needles).
LOCKED = [
    ("shard", "train-000001.tar", 0o000, ["cannot open shard", "{path}", "Permission denied"]),
    ("manifest", MANIFEST, 0o000, ["cannot read the shard manifest {path}: Permission denied"]),
    ("index", "train-000001.idx.arrow", 0o000, ["cannot read {path}: Permission denied"]),
    ("folder", ".", 0o000, ["cannot read split folder {path}: Permission denied"]),
    ("folder not listable", ".", 0o311, ["cannot read split folder {path}: Permission denied"]),
    ("metadata", "../../metadata.csv", 0o000, ["{path}", "permission denied"]),
]


@pytest.mark.parametrize("name,mode,needles", [row[1:] for row in LOCKED], ids=[row[0] for row in LOCKED])
def test_verify_of_an_unreadable_file_is_one_line(shared, unprivileged, name, mode, needles):
    folder = shared / "two" / "train"
    path = (folder / name).resolve()
    path.chmod(mode)
    proc = verify(folder, user=unprivileged)
    assert_one_line(proc, "bioscan-io verify: error: ", *(n.format(path=path) for n in needles))


def _empty_manifest(folder: Path, tar: bytes | None) -> None:
    """The split folder holding no sample: every record listed as skipped, no shard or one empty tar."""
    manifest = read_manifest(folder)
    keys = keys_of(folder)
    for entry in manifest["shards"]:
        (folder / entry["name"]).unlink()
        (folder / entry["index"]["name"]).unlink()
    manifest.update(format_version=1, num_samples=0, shards=[], skipped_missing_image=keys)
    if tar is not None:
        (folder / "train-000000.tar").write_bytes(tar)
        manifest["shards"] = [{"name": "train-000000.tar", "count": 0, "bytes": len(tar),
                               "sha256": hashlib.sha256(tar).hexdigest()}]
    (folder / MISSING_REPORT).write_text("\n".join(keys) + "\n")
    (folder / MANIFEST).write_text(json.dumps(manifest))


EMPTY = [(None, "the manifest lists no shard"), (bytes(10240), "its 1 shard holds no sample")]


@pytest.mark.parametrize("tar,where", EMPTY, ids=["no shard", "one empty shard"])
def test_verify_of_an_empty_split_is_a_problem(shared, tar, where):
    folder = shared / "two" / "train"
    _empty_manifest(folder, tar)
    proc = verify(folder)
    assert proc.returncode == 1 and proc.stderr == "", (proc.returncode, proc.stderr)
    assert proc.stdout.splitlines() == [f"empty_split: an empty split: {where}, so a loader has nothing to read",
                                        f"verify: {folder}: 1 problem"]


# ----------------------------------------------------------------------------- 3. counts in agreement


def _verify(folder: Path) -> list[str]:
    return cli("verify", str(folder), "--metadata", str(folder.parent.parent / "metadata.csv"))


def _verify_with_an_extra_shard(folder: Path) -> list[str]:
    (folder / "train-000099.tar").write_bytes(b"")  # not in the manifest: one extra_shard
    return _verify(folder)


def _index_v1(folder: Path) -> list[str]:
    strip_indexes(folder)
    return cli("index", str(folder))


#: (id, the command given the shared copy, a line it prints).
COUNTS = [
    ("verify, 1 shard", lambda s: _verify(s / "one/train"), "verify: {s}/one/train: OK (48 samples in 1 shard)"),
    ("verify, 2 shards", lambda s: _verify(s / "two/train"), "verify: {s}/two/train: OK (48 samples in 2 shards)"),
    ("verify, 1 problem", lambda s: _verify_with_an_extra_shard(s / "two/train"), "verify: {s}/two/train: 1 problem"),
    ("peek, 1 sample", lambda s: cli("peek", str(s / "one/train"), "-n", "1", "--no-summary", "--out", f"{s}/p.png"),
     "peek: wrote {s}/p.png: 1 sample of {s}/one/train/train-000000.tar (1 x 1 tiles"),
    ("peek summary, 1 shard", lambda s: cli("peek", str(s / "one/train"), "--no-sheet"),
     "train: 48 samples in 1 shard ({s}/one/train)"),
    ("peek summary, 2 shards", lambda s: cli("peek", str(s / "two/train"), "--no-sheet"),
     "train: 48 samples in 2 shards ({s}/two/train)"),
    ("index, 1 shard", lambda s: _index_v1(s / "one/train"),
     "bioscan-io index: {s}/one/train: wrote 1 shard index; manifest.json now lists them"),
    ("index, 2 shards", lambda s: _index_v1(s / "two/train"),
     "bioscan-io index: {s}/two/train: wrote 2 shard indexes; manifest.json now lists them"),
]


@pytest.mark.parametrize("argv,line", [row[1:] for row in COUNTS], ids=[row[0] for row in COUNTS])
def test_counts_agree_with_their_noun(shared, argv, line):
    proc = run(argv(shared))
    assert proc.returncode in (0, 1) and proc.stderr == "", proc.stderr
    assert any(out.startswith(line.format(s=shared)) for out in proc.stdout.splitlines()), proc.stdout


REPORT_COUNTS = [(0, 0, "OK (0 samples in 0 shards)"), (1, 1, "OK (1 sample in 1 shard)"),
                 (2500, 2, "OK (2,500 samples in 2 shards)")]


@pytest.mark.parametrize("samples,shards,line", REPORT_COUNTS)
def test_verify_report_counts(samples, shards, line):
    assert VerifyReport("f", samples=samples, shards=shards).lines() == [f"verify: f: {line}"]


# ----------------------------------------------------------------------------- 5. the net under every command


OS_ERRORS = [
    (PermissionError(13, "Permission denied", "/data/manifest.json"), "/data/manifest.json: Permission denied"),
    (NotADirectoryError(20, "Not a directory", "/data/file.csv/x"), "/data/file.csv/x: Not a directory"),
    (FileExistsError(17, "File exists", "/data/out"), "/data/out: File exists"),
    (IsADirectoryError(21, "Is a directory", "/data/labels.json"), "/data/labels.json: Is a directory"),
    (OSError(18, "Invalid cross-device link", "/a/x.tmp", None, "/b/x"), "/a/x.tmp -> /b/x: Invalid cross-device link"),
    (PermissionError(13, "Failed to open local file '/d/.x.tmp'. Detail: [errno 13] Permission denied"),
     "Failed to open local file '/d/.x.tmp'. Detail: [errno 13] Permission denied"),  # pyarrow's: no filename
]


@pytest.mark.parametrize("exc,text", OS_ERRORS, ids=[type(e).__name__ + str(i) for i, (e, _) in enumerate(OS_ERRORS)])
def test_an_os_error_escaping_a_command_is_one_line(capsys, exc, text):
    def fail(args):
        raise exc

    command = cli_module.Command("h", "d", lambda p: None, fail)
    assert cli_module._run("bioscan-io verify", command, argparse.Namespace()) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == f"bioscan-io verify: error: {text}\n"


def test_os_errors_of_real_runs_are_one_line(shared, unprivileged):
    """Through the net (peek reading a manifest it may not), and raised by the command itself (index writing)."""
    folder = shared / "two" / "train"
    (folder / MANIFEST).chmod(0o000)
    assert_one_line(run(cli("peek", str(folder), "--no-sheet"), user=unprivileged),
                    "bioscan-io peek: error: ", f"{folder / MANIFEST}: Permission denied")
    (folder / MANIFEST).chmod(0o644)
    strip_indexes(folder)
    world_readable(shared)  # the folder readable, not writable, by the unprivileged user
    assert_one_line(run(cli("index", str(folder)), user=unprivileged),
                    "bioscan-io index: error: ",
                    f"cannot index {folder}: {folder / 'train-000000.idx.arrow'}: Permission denied")
    sheet = folder / "sheet.png"
    assert_one_line(run(cli("peek", str(folder), "--no-summary", "--out", str(sheet)), user=unprivileged),
                    "bioscan-io peek: error: ", f"cannot write {sheet}: Permission denied")


# ----------------------------------------------------------------------------- 6. help, version, generate


HELP = [cli("--help"), cli("verify", "--help"), cli("generate", "--help"), [*SHARD, "--help"]]


@pytest.mark.parametrize("argv", HELP, ids=["bioscan-io", "bioscan-io verify", "bioscan-io generate", "bioscan-shard"])
def test_help_goes_to_stdout(argv):
    proc = run(argv)
    assert proc.returncode == 0 and proc.stderr == "" and proc.stdout.startswith("usage: "), proc.stderr


def test_bioscan_shard_help_shows_the_pipe_form_of_out():
    text = " ".join(run([*SHARD, "--help"]).stdout.split())
    assert "'pipe:CMD' with {name}" in text and "--out 'pipe:aws s3 cp - s3://bucket/shards/{name}'" in text


@pytest.mark.parametrize("argv", [cli("--version"), [*SHARD, "--version"]], ids=["bioscan-io", "bioscan-shard"])
def test_version(argv):
    proc = run(argv)
    assert proc.returncode == 0 and proc.stderr == ""
    first, pil, region = proc.stdout.splitlines()
    assert first == f"bioscan-io {importlib.metadata.version('bioscan-io')}"
    import PIL

    assert pil.startswith(f"PIL {PIL.__version__} from ") and "JPEG by libjpeg" in pil, pil
    assert region.startswith(("region JPEG decode on", "region JPEG decode off (")), region


#: (id, what is at the root first, arguments after the root, needles).
GENERATE = [
    ("no records", None, ["--records", "0"], ["n_records must be at least 1, got 0"]),
    ("no workers", None, ["--records", "5", "--workers", "0"], ["workers must be at least 1, got 0"]),
    ("root is a file", lambda root: root.write_text("x"), ["--records", "5"],
     ["dataset root {root} exists and is not a folder"]),
    ("root holds another dataset", lambda root: (root / "bioscan5m/metadata/csv").mkdir(parents=True),
     ["--records", "5"], ["{root}/bioscan5m holds a dataset that bioscan_io.synth did not write"]),
]


@pytest.mark.parametrize("setup,args,needles", [row[1:] for row in GENERATE], ids=[row[0] for row in GENERATE])
def test_generate_user_errors_exit_2(tmp_path, setup, args, needles):
    root = tmp_path / "root"
    if setup is not None:
        setup(root)
    assert_one_line(run(cli("generate", str(root), *args)), "bioscan-io generate: error: ",
                    *(n.format(root=root) for n in needles))


def test_generate_into_a_folder_it_may_not_write_is_one_line(shared, unprivileged):
    root = shared / "new"
    assert_one_line(run(cli("generate", str(root), "--records", "5"), user=unprivileged),
                    "bioscan-io generate: error: ", f"cannot create dataset folder {root}", "Permission denied")


def _stderr_on_a_terminal(argv: list[str]) -> tuple[int, str]:
    """Run with stderr on a pseudo-terminal: the exit status and what it wrote there."""
    master, slave = pty.openpty()
    # A terminal 100 columns wide: tqdm sizes its bar to the terminal, and prints nothing on 0 columns.
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=slave)
        os.close(slave)
        chunks = []
        while True:
            ready, _, _ = select.select([master], [], [], 120)
            if not ready:
                break
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the terminal closed: the command ended
                break
            if not chunk:
                break
            chunks.append(chunk)
        return proc.wait(timeout=120), b"".join(chunks).decode(errors="replace")
    finally:
        os.close(master)


@pytest.mark.parametrize("flag,bar", [(None, True), ("--no-progress", False)], ids=["terminal", "--no-progress"])
def test_generate_shows_progress_on_a_terminal(tmp_path, flag, bar):
    argv = cli("generate", str(tmp_path / "root"), "--records", "12", "--workers", "1", *([flag] if flag else []))
    code, text = _stderr_on_a_terminal(argv)
    assert code == 0, text
    assert ("rendering cropped_256" in text and "12/12" in text) == bar, text


def test_generate_shows_no_progress_without_a_terminal(tmp_path):
    proc = run(cli("generate", str(tmp_path / "root"), "--records", "12", "--workers", "1"))
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    proc = run(cli("generate", str(tmp_path / "forced"), "--records", "12", "--workers", "1", "--progress"))
    assert proc.returncode == 0 and "12/12" in proc.stderr, proc.stderr


ARGPARSE = [
    ("export --format csv", cli("export", "x", "--format", "csv"), "bioscan-io export: error: ",
     ["argument --format: invalid choice: 'csv'", "(see bioscan-io export --help)"]),
    ("bioscan-shard --bogus", [*SHARD, "--bogus"], "bioscan-shard: error: ",
     ["unrecognized arguments: --bogus", "(see bioscan-shard --help)"]),
    ("verify without a folder", cli("verify"), "bioscan-io verify: error: ",
     ["the following arguments are required: folder"]),
    ("no command", cli(), "bioscan-io: error: ", ["the following arguments are required: COMMAND"]),
    ("--maxsize abc", [*SHARD, "--maxsize", "abc"], "bioscan-shard: error: ", ["not a size: 'abc'"]),
]


@pytest.mark.parametrize("argv,prefix,needles", [row[1:] for row in ARGPARSE], ids=[row[0] for row in ARGPARSE])
def test_argument_errors_are_one_line_without_the_usage_block(argv, prefix, needles):
    assert_one_line(run(argv), prefix, *needles)
