"""Bad input to ``bioscan-shard`` (issue 15, sharding): one line naming the cause, and nothing left behind.

Each row is checked twice: through the API (a ``BioscanError`` whose message is
one line naming the file, record or folder) and through the ``bioscan-shard``
command (exit status 2, exactly one line on stderr). A failed run must leave the
output folder as it found it; a killed one may leave temporaries, which the
next run removes.
"""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from bioscan_io import metadata as md
from bioscan_io import synth
from bioscan_io.atomic import TMP_MARK, sweep
from bioscan_io.format import LABELS, MANIFEST, read_manifest
from bioscan_io.schema import DATASET_DIR, IMAGES_DIR, METADATA_CSV, BioscanError, image_relpath
from bioscan_io.shard import shard_split

from conftest import cli, link_copy

QUIET = dict(progress=False, log=lambda m: None)
_SCRIPT = Path(sys.executable).with_name("bioscan-shard")
#: The command under test: the installed script, else the same entry point through the module.
SHARD = [str(_SCRIPT)] if _SCRIPT.is_file() else cli("shard")
PREFIX = "bioscan-shard: error: " if _SCRIPT.is_file() else "bioscan-io shard: error: "
#: Run as an unprivileged user: root ignores file permissions.
UNPRIVILEGED = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []


@pytest.fixture(scope="module")
def base() -> Path:
    """A generated 300-record dataset that every user can read (for the unprivileged runs)."""
    folder = Path(tempfile.mkdtemp(prefix="bioscan-bad-shard-"))
    folder.chmod(0o755)  # mkdtemp makes it private
    synth.generate(folder / "root", n_records=300, seed=11, workers=1)
    yield folder / "root"
    shutil.rmtree(folder, ignore_errors=True)


def records(root: Path, split: str | None = None) -> list[dict]:
    with open(root / METADATA_CSV, newline="", encoding="utf-8") as f:
        return [r for r in csv.DictReader(f) if split is None or r["split"] == split]


def tree(folder: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and folder (None) under ``folder``: what "left as found" compares."""
    return {p.relative_to(folder).as_posix(): (None if p.is_dir() else p.read_bytes()) for p in folder.rglob("*")}


def run_shard(*args: str, user: list[str] = ()) -> subprocess.CompletedProcess:
    return subprocess.run([*user, *SHARD, "--no-progress", *args], capture_output=True, text=True, timeout=120)


def assert_one_line(proc: subprocess.CompletedProcess, needles) -> str:
    """Exit status 2 and exactly one line on stderr, the error, holding every needle."""
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2 and len(lines) == 1, (proc.returncode, proc.stderr)
    assert lines[0].startswith(PREFIX), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def argv(kw: dict) -> list[str]:
    """The command-line arguments of ``shard_split`` keyword arguments."""
    args = []
    for key, value in kw.items():
        if key == "images":
            args += ["--images", *map(str, value)]
        elif value is True:
            args.append("--" + key.replace("_", "-"))
        else:
            args += ["--" + key.replace("_", "-"), str(value)]
    return args


# ----------------------------------------------------------------------------- the rows


def _image(root: Path, split: str, index: int = 0) -> tuple[str, Path]:
    rec = records(root, split)[index]
    return rec["processid"], root / image_relpath(rec["processid"], split, rec["chunk"])


def _replace_image(root: Path, content: bytes, split: str = "train") -> tuple[str, Path]:
    pid, path = _image(root, split)
    data = content if content != b"CUT" else path.read_bytes()[:2000]
    path.unlink()  # a symlink to the shared dataset: replaced, not written through
    path.write_bytes(data)
    return pid, path


def no_package(base, work):
    return dict(root=base, split="train", package="cropped"), \
        ["'cropped'", str(base / IMAGES_DIR / "cropped"), "BIOSCAN_5M_cropped.zip", "--images"]


def empty_after_skip(base, work):
    root = link_copy(base / DATASET_DIR / "metadata", work / "root" / DATASET_DIR / "metadata").parents[1]
    (root / IMAGES_DIR / "cropped").mkdir(parents=True)
    count = len(records(base, "train"))
    return dict(root=root, split="train", package="cropped", skip_missing=True), \
        ["split 'train' would be empty", f"none of its {count} record(s) has an image", str(root / IMAGES_DIR / "cropped")]


def bad_image(payload: bytes, *needles: str, skip_missing: bool = False):
    """A row: one record's image replaced by ``payload``; the error names the record, the file and ``needles``."""
    def row(base, work):
        root = link_copy(base, work / "root")
        pid, path = _replace_image(root, payload)
        kw = dict(root=root, split="train", skip_missing=True) if skip_missing else dict(root=root, split="train")
        return kw, [needles[0].format(pid=pid), str(path), *needles[1:]]
    return row


PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"


def png_in_zip(base, work):
    variant = link_copy(base, work / "variant")
    pid, _ = _replace_image(variant, PNG)
    root = link_copy(base / DATASET_DIR / "metadata", work / "root" / DATASET_DIR / "metadata").parents[1]
    (archive,) = synth.pack_images(variant, root)
    return dict(root=root, split="train"), [f"record {pid} is not a JPEG", f"zip archive {archive.resolve()}"]


def out_is_a_file(base, work):
    (work / "out").write_text("not a folder\n")
    return dict(root=base, split="train", out=work / "out"), [f"the output folder {work / 'out'} is a file"]


def out_below_a_file(base, work):
    (work / "file").write_text("not a folder\n")
    return dict(root=base, split="train", out=work / "file" / "out"), \
        [f"cannot create the output folder {work / 'file' / 'out'}", f"{work / 'file'} is a file"]


def split_folder_is_a_file(base, work):
    (work / "out").mkdir()
    (work / "out" / "train").write_text("not a folder\n")
    return dict(root=base, split="train", out=work / "out"), [f"the split folder {work / 'out' / 'train'} is a file"]


def _csv_with_bad_byte(base, work, column: str) -> tuple[Path, int, str]:
    """A root whose CSV has the byte 0xFF in ``column`` of a record half way down (past pyarrow's first look)."""
    root = link_copy(base, work / "root")
    path = root / METADATA_CSV
    lines = path.read_bytes().split(b"\n")
    header = lines[0].decode().split(",")
    number = next(n for n in range(150, len(lines)) if lines[n].split(b",")[header.index(column)])
    cells = lines[number].split(b",")
    cells[header.index(column)] = cells[header.index(column)][:2] + b"\xff" + cells[header.index(column)][2:]
    lines[number] = b",".join(cells)
    path.write_bytes(b"\n".join(lines))
    return root, number, cells[0].decode("utf-8", "backslashreplace")


def csv_not_utf8(base, work):
    root, number, pid = _csv_with_bad_byte(base, work, "phylum")
    return dict(root=root, split="train"), \
        [str(root / METADATA_CSV), f"record {number} ({pid}): column 'phylum'", "\\xff", "not UTF-8 text"]


def csv_not_utf8_number(base, work):
    root, number, pid = _csv_with_bad_byte(base, work, "coord-lat")
    return dict(root=root, split="train"), \
        [str(root / METADATA_CSV), f"record {number} ({pid}): column 'coord-lat'", "\\xff", "not a valid double"]


ROWS = {
    "package without folder or archives": no_package,
    "split empty after --skip-missing": empty_after_skip,
    "PNG bytes in a .jpg": bad_image(PNG, "record {pid} is not a JPEG", "starts with 89 50 4e 47"),
    "PNG bytes, with --skip-missing": bad_image(PNG, "record {pid} is not a JPEG", "starts with 89 50 4e 47",
                                                skip_missing=True),
    "text in a .jpg": bad_image(b"<html>404 Not Found</html>\n", "record {pid} is not a JPEG", "starts with 3c 68 74 6d"),
    "empty .jpg": bad_image(b"", "record {pid} is not a JPEG", "the file is empty"),
    "JPEG cut short": bad_image(b"CUT", "record {pid} is not a whole JPEG", "ff d9"),
    "PNG bytes in a zip archive": png_in_zip,
    "--out is a file": out_is_a_file,
    "--out below a file": out_below_a_file,
    "OUT/SPLIT is a file": split_folder_is_a_file,
    "CSV byte not UTF-8 (text column)": csv_not_utf8,
    "CSV byte not UTF-8 (number column)": csv_not_utf8_number,
}


@pytest.fixture(scope="module")
def finished_val(base, tmp_path_factory) -> Path:
    """An output folder already holding a sharded split: a failed run must leave it as it is."""
    out = tmp_path_factory.mktemp("finished") / "out"
    shard_split(base, "val", out=out, **QUIET)
    return out


@pytest.mark.parametrize("row", list(ROWS))
def test_bad_input_is_one_line_and_leaves_out_as_found(base, finished_val, tmp_path, row):
    kw, needles = ROWS[row](base, tmp_path)
    if "out" not in kw:
        kw["out"] = tmp_path / "out"
        shutil.copytree(finished_val, kw["out"])
    before = tree(tmp_path)

    with pytest.raises(BioscanError) as err:
        shard_split(**kw, **QUIET)
    message = str(err.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, (needle, message)
    assert tree(tmp_path) == before, "a failed run must leave every file as it found it"

    line = assert_one_line(run_shard(*argv(kw)), needles)
    assert line == PREFIX + message
    assert tree(tmp_path) == before


# ----------------------------------------------------------------------------- permissions


def _can_run_unprivileged() -> str | None:
    """Why the unprivileged runs cannot be made here, or None."""
    if UNPRIVILEGED and shutil.which("setpriv") is None:
        return "setpriv is not installed: cannot run as an unprivileged user"
    probe = subprocess.run([*UNPRIVILEGED, *SHARD, "--help"], capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        return f"bioscan-shard does not start as an unprivileged user: {probe.stderr.strip()[-200:]}"
    return None


@pytest.fixture
def shared_tmp():
    """A folder every user may write in (pytest's own tmp_path is root's only)."""
    folder = Path(tempfile.mkdtemp(prefix="bioscan-perm-"))
    folder.chmod(0o777)
    yield folder
    for dirpath, dirnames, _ in os.walk(folder):
        for name in dirnames:
            os.chmod(os.path.join(dirpath, name), 0o777)
    shutil.rmtree(folder, ignore_errors=True)


def _locked(path: Path) -> Path:
    """A folder the unprivileged user may read but not write in."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    return path


@pytest.mark.parametrize("case", ["parent of OUT", "OUT", "OUT/SPLIT"])
def test_no_write_permission_is_one_line(base, shared_tmp, case):
    """Run as nobody (root ignores permissions): the CLI's one error line and exit 2 are its BioscanError."""
    reason = _can_run_unprivileged()
    if reason:
        pytest.skip(reason)
    if case == "parent of OUT":
        out, needles = _locked(shared_tmp / "ro") / "out", ["cannot create the output folder", "no permission"]
        needles.append(str(shared_tmp / "ro"))
    elif case == "OUT":
        out = _locked(shared_tmp / "out")
        needles = [f"no permission to write in the output folder {out}"]
    else:
        out = shared_tmp / "out"
        out.mkdir()
        out.chmod(0o777)
        needles = [f"no permission to write in the split folder {_locked(out / 'train')}"]
    before = tree(shared_tmp)
    proc = run_shard("--root", str(base), "--split", "train", "--out", str(out), user=UNPRIVILEGED)
    assert_one_line(proc, needles)
    assert tree(shared_tmp) == before


def test_file_system_error_while_writing_is_one_line(base, tmp_path):
    """An error past the checks (here labels.json is a folder) names the path: no traceback."""
    out = tmp_path / "out"
    (out / LABELS).mkdir(parents=True)
    needles = [f"sharding into {out} failed: {out / LABELS}: Is a directory"]
    with pytest.raises(BioscanError, match="Is a directory"):
        shard_split(base, "val", out=out, **QUIET)
    assert_one_line(run_shard("--root", str(base), "--split", "val", "--out", str(out)), needles)
    assert not list(out.rglob(f"*{TMP_MARK}*")) and not (out / ".cache").exists()


# ----------------------------------------------------------------------------- litter


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_leftovers_of_killed_runs_are_swept_and_live_writers_spared(base, tmp_path):
    out = tmp_path / "out"
    dead, live = _dead_pid(), os.getpid()
    stale = [
        out / f".{LABELS}{TMP_MARK}{dead}-0a1b2c3d",
        out / ".cache" / f".metadata-0123456789abcdef.arrow{TMP_MARK}{dead}-0a1b2c3d",
        out / ".cache" / "metadata-0123456789abcdef.arrow",  # the cache of a metadata file since changed
        out / "val" / f".val-000000.tar{TMP_MARK}{dead}-0a1b2c3d",
    ]
    in_use = out / f".{LABELS}{TMP_MARK}{live}-0a1b2c3d"  # another run, still writing
    for path in stale + [in_use]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"partial")
    shard_split(base, "val", out=out, **QUIET)
    assert [p for p in stale if p.exists()] == []
    assert in_use.exists()
    assert not (out / ".cache").exists()


def test_sweep_spares_a_live_writer_and_removes_a_dead_ones(tmp_path):
    dead = tmp_path / f".x.json{TMP_MARK}{_dead_pid()}-deadbeef"
    live = tmp_path / f".x.json{TMP_MARK}{os.getpid()}-deadbeef"
    other = tmp_path / "x.json"
    for path in (dead, live, other):
        path.write_text("{}")
    sweep(tmp_path)
    assert not dead.exists() and live.exists() and other.exists()


def test_cache_of_a_fixed_csv_is_removed(base, tmp_path):
    root = link_copy(base, tmp_path / "root")
    out = tmp_path / "out"
    md.read_metadata(root / METADATA_CSV, cache_dir=out / ".cache" / "val")  # as a killed run leaves it
    old = md.cache_path(md.file_sha256(root / METADATA_CSV), out / ".cache" / "val")
    assert old.is_file()
    text = (root / METADATA_CSV).read_text(encoding="utf-8")
    (root / METADATA_CSV).write_text(text.replace(",Insecta,", ",Insecta ,", 1), encoding="utf-8")  # "fixed"
    shard_split(root, "val", out=out, **QUIET)
    assert not old.exists() and not (out / ".cache").exists()


def test_bad_image_mid_run_keeps_the_finished_shards_for_the_rerun(base, tmp_path):
    """An error while writing shards is like a kill: the shards done stay, the rerun after the fix reuses them."""
    root = link_copy(base, tmp_path / "root")
    out = tmp_path / "out"
    pid, path = _replace_image(root, b"GIF89a", split="pretrain")
    with pytest.raises(BioscanError, match=f"record {pid} is not a JPEG"):
        shard_split(root, "pretrain", out=out, maxcount=10, workers=1, **QUIET)
    kept = sorted(p.name for p in (out / "pretrain").glob("*.tar"))
    assert not list(out.rglob(f"*{TMP_MARK}*")) and not (out / ".cache").exists() and not (out / LABELS).exists()
    path.unlink()
    os.symlink(base / path.relative_to(root), path)  # the image fixed
    summary = shard_split(root, "pretrain", out=out, maxcount=10, workers=1, **QUIET)
    assert summary.reused == len(kept) and summary.written == summary.shards - len(kept)
    verify = subprocess.run(cli("verify", str(out / "pretrain"), "--no-progress"), capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr


# ----------------------------------------------------------------------------- kills

#: Runs the CLI with an audit hook that SIGKILLs the process when it renames a
#: temporary whose name holds argv[1]: a kill in that exact window, made by the
#: test (the product has no hook for it).
_KILL_AT_RENAME = """
import os, signal, sys
from bioscan_io.cli import main
mark, main_pid = sys.argv[1], os.getpid()
def hook(event, args):
    if event == "os.rename" and os.getpid() == main_pid and mark in str(args[0]) and ".tmp-" in str(args[0]):
        os.kill(main_pid, signal.SIGKILL)
sys.addaudithook(hook)
sys.exit(main(["shard", *sys.argv[2:]]))
"""


def _temporaries(out: Path) -> list[str]:
    return sorted(p.relative_to(out).as_posix() for p in out.rglob(f"*{TMP_MARK}*"))


def test_killed_at_random_moments_then_rerun_leaves_nothing_behind(base, tmp_path):
    """SIGKILL at spread-out moments (and in the cache, labels.json and manifest writes), then a clean rerun."""
    args = ["--root", str(base), "--split", "all", "--maxcount", "3", "--workers", "2", "--no-progress"]
    started = time.monotonic()
    reference = subprocess.run([*SHARD, *args, "--out", str(tmp_path / "ref")], capture_output=True, text=True)
    duration = time.monotonic() - started
    assert reference.returncode == 0, reference.stderr
    out = tmp_path / "out"
    command = [*SHARD, *args, "--out", str(out)]

    def kill_at_rename(mark: str) -> None:
        proc = subprocess.run([sys.executable, "-c", _KILL_AT_RENAME, mark, *args, "--out", str(out)],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == -signal.SIGKILL, (mark, proc.returncode, proc.stderr)

    kill_at_rename(".metadata-")  # the cache written, not yet renamed
    assert [t.split("/")[0] for t in _temporaries(out)] == [".cache"]
    assert not list((out / ".cache").glob("metadata-*.arrow"))

    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(list(out.glob("all/*.tar"))) < 20 and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.kill()  # mid-sharding: 20 shards done, others being written
    assert proc.wait() == -signal.SIGKILL and not (out / "all" / MANIFEST).exists()

    for fraction in (0.2, 0.4, 0.55, 0.7, 0.85, 0.95):  # anywhere: start-up, metadata, sharding, manifest
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(duration * fraction)
        proc.kill()
        proc.wait()

    kill_at_rename(f".{LABELS}")  # labels.json written, not yet renamed
    assert f".{LABELS}{TMP_MARK}" in " ".join(_temporaries(out))
    kill_at_rename(f".{MANIFEST}")
    assert f"all/.{MANIFEST}{TMP_MARK}" in " ".join(_temporaries(out))

    final = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert final.returncode == 0, final.stderr
    assert _temporaries(out) == []
    assert not (out / ".cache").exists(), "no metadata cache left, current or orphan"
    assert sorted(p.name for p in out.iterdir()) == ["all", LABELS]
    assert not list((out / "all").glob(".*")), "no run log left"
    digests = lambda folder: [s["sha256"] for s in read_manifest(folder)["shards"]]  # noqa: E731
    assert digests(out / "all") == digests(tmp_path / "ref" / "all")
    assert (out / LABELS).read_bytes() == (tmp_path / "ref" / LABELS).read_bytes()
    for shard in read_manifest(out / "all")["shards"]:
        assert hashlib.sha256((out / "all" / shard["name"]).read_bytes()).hexdigest() == shard["sha256"]
    verify = subprocess.run(cli("verify", str(out / "all"), "--no-progress"), capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr
