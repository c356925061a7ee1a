"""Full-scale benchmark: every CLI step a user runs, on a generated dataset of N records.

Run on demand (pytest does not collect it; hours at the full 5.15 M records)::

    python benchmarks/full_scale.py --records 5150850 --work /var/tmp/bioscan-scale
    python benchmarks/full_scale.py --records 100000 --records 500000 --work /var/tmp/bioscan-scale
    python benchmarks/full_scale.py --records 20000 --work /tmp/s --steps generate,shard-train,verify-train --keep
    python benchmarks/full_scale.py --records 100000 --work /tmp/s --generate-args='--package cropped_256'

(the last: generate without ``--official-splits --image-pool 2000``, for a bioscan-io
that lacks them; give ``--generate-args`` with ``=``, its value starts with ``--``).

For each N the steps below run in this order, each as the command a user types, in
a fresh process (``--steps`` picks some of them; a step whose input is missing is
recorded as skipped):

==================  ================================================================
step                command
==================  ================================================================
generate            ``bioscan-io generate ROOT --records N`` + :data:`GENERATE_ARGS`;
                    then (untimed) the image pool re-encoded to ``--thumbnail`` size
shard-train         ``bioscan-shard --split train --workers W`` for W in 1 and 8, into
                    two folders (rows shard-train-w1, -w8), then the two trees
                    compared byte for byte
verify-train        ``bioscan-io verify OUT/train --metadata CSV --json``
index-train         ``bioscan-io index OUT/train`` (rebuilds every index in place)
export-train        ``bioscan-io export OUT/train --format parquet``
epoch-classify      one ``make_loader(OUT/train, "classify", modality="image")`` epoch
shard-pretrain      ``bioscan-shard --split pretrain`` (default workers)
verify-pretrain     as for train
export-pretrain     as for train
summary-pretrain    ``bioscan-io peek OUT/pretrain --no-sheet`` (the split summary)
epoch-mlm           one ``make_loader(OUT/pretrain, "mlm")`` epoch
shard-all           ``bioscan-shard --split all`` (default workers)
==================  ================================================================

A split's shards are deleted once its steps have run (the disk: pretrain at 5.15 M
is tens of GB), unless ``--keep-shards``. Before each step that writes much, the
free disk is checked against an estimate (the previous split's shard bytes per
record, else the dataset's mean image size plus the other members) and the step
is refused with a message when it would not fit.

What is measured, per step (``benchmarks/proctree.py`` says how): wall seconds; CPU
seconds, user + system of the whole process tree (``os.wait4``: the kernel adds to a
process the CPU of every child it reaped, so workers reaped by their parent count);
CPU microseconds per record (the split's records; N for generate); and from
``/proc``, sampled every ``--interval`` seconds over the process tree, the peak
private memory (``RssAnon``) of the largest process and of the tree's sum, the peak
PSS summed over the tree, and the peak file-backed resident memory (``RssFile``) of
the largest process. Which process had the largest private peak, the main process's
peak and the largest worker's are listed in a second table.

Output: a markdown table printed and written to ``WORK/results-N.md`` (one file for
all the ``--records`` given, ``results-N1-N2.md``), and the raw numbers as JSON
beside it, both rewritten after every step. Everything else under ``--work`` is
removed at the end unless ``--keep`` (the generated dataset) or ``--keep-shards``.
A failing step is recorded (exit status, the last lines of its stderr) and the run
goes on with the steps that do not need its output.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proctree import MIB, Measurement, run_measured  # noqa: E402

#: Options of the generate step after ``--records N``; ``--generate-args`` replaces them.
GENERATE_ARGS = "--official-splits --image-pool 2000 --package cropped_256"
#: Size the image pool's JPEGs are re-encoded to, in place, after generate (``--thumbnail``): at
#: ~14 KB a cropped_256 image, pretrain's shards would be ~85 GB, more than the disk holds.
THUMBNAIL = "128x96"
#: The two writer counts of the train split, whose shards must be byte-identical.
SHARD_WORKERS = (1, 8)
#: DataLoader workers of the epoch steps.
LOADER_WORKERS = 2
#: Every step, in the order they run.
STEPS = ("generate", "shard-train", "verify-train", "index-train", "export-train", "epoch-classify",
         "shard-pretrain", "verify-pretrain", "export-pretrain", "summary-pretrain", "epoch-mlm", "shard-all")
#: Shard bytes per record beyond the image: tar headers, .json and .dna members, the index (measured ~4 KB).
SHARD_OVERHEAD = 5_000
#: Bytes per record of the generated metadata (CSV + JSON-LD, measured ~2.3 KB) and of a Parquet export.
METADATA_BYTES, PARQUET_BYTES = 3_000, 1_000
#: Generated image bytes (cropped_256, measured ~14 KB), before any image exists to measure.
IMAGE_BYTES = 20_000
#: Free disk left over after a step, and the margin on every estimate.
DISK_RESERVE, DISK_MARGIN = 2 << 30, 1.15

#: One loader epoch (``python -c EPOCH_SCRIPT SPLIT TASK WORKERS``): counts the samples, and
#: fails unless they are the manifest's ``num_samples``. Batch sizes: README's MLM example
#: (256) and BENCHMARKS.md's image loading (128).
EPOCH_SCRIPT = r"""
import json, sys, time
from bioscan_io import make_loader
split, task, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
options = {"modality": "image", "batch_size": 128} if task == "classify" else {"batch_size": 256}
with open(f"{split}/manifest.json") as f:
    expected = json.load(f)["num_samples"]
loader = make_loader(split, task, num_workers=workers, seed=0, **options)
t, samples, batches = time.perf_counter(), 0, 0
for batch in loader:
    samples += len(batch["processid"])
    batches += 1
print(json.dumps({"samples": samples, "expected": expected, "batches": batches, "len": len(loader),
                  "seconds": time.perf_counter() - t}))
if samples != expected or batches != len(loader):
    sys.exit(f"epoch: {samples} samples in {batches} batches; the manifest says {expected}, len() {len(loader)}")
"""


@dataclass
class SizeRun:
    """One dataset size's run: its folders, what is known of its splits, and its rows."""

    n: int
    base: Path
    opts: argparse.Namespace
    rows: list = field(default_factory=list)
    counts: dict | None = None  # records per split, from the metadata CSV
    bytes_per_record: float | None = None  # shard bytes per record of the split sharded last

    @property
    def root(self) -> Path:
        return self.base / "root"

    @property
    def csv(self) -> Path:
        return self.root / "bioscan5m" / "metadata" / "csv" / "BIOSCAN_5M_Insect_Dataset_metadata.csv"

    @property
    def shards(self) -> Path:
        return self.base / "shards"

    def records(self, split: str) -> int | None:
        """The split's record count: its manifest's once sharded, else counted in the metadata."""
        manifest = self.shards / split / "manifest.json"
        if manifest.exists():
            return json.loads(manifest.read_text())["num_samples"]
        if self.counts is None and self.csv.exists():
            self.counts = count_splits(self.csv)
        if self.counts is None:
            return None
        return sum(self.counts.values()) if split == "all" else self.counts.get(split, 0)


# ----------------------------------------------------------------------------- helpers


def cli(name: str) -> str:
    """The console script ``name`` of this Python's environment (the venv the harness runs in)."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else (shutil.which(name) or name)


def count_splits(csv: Path) -> dict:
    """Records per value of the metadata's ``split`` column, streamed (bounded memory at 5 M rows)."""
    import pyarrow.csv as pv

    counts: dict = {}
    options = pv.ConvertOptions(include_columns=["split"])
    with pv.open_csv(csv, read_options=pv.ReadOptions(block_size=64 << 20), convert_options=options) as reader:
        for batch in reader:
            for item in batch.column(0).value_counts().to_pylist():
                counts[item["values"]] = counts.get(item["values"], 0) + item["counts"]
    return counts


def mean_image_bytes(root: Path) -> float:
    """The mean size of the first 500 images found under the dataset root (IMAGE_BYTES if none)."""
    sizes = []
    for folder, _, files in os.walk(root / "bioscan5m" / "images"):
        sizes += [os.stat(os.path.join(folder, f)).st_size for f in files[:500 - len(sizes)] if f.endswith(".jpg")]
        if len(sizes) >= 500:
            break
    return sum(sizes) / len(sizes) if sizes else IMAGE_BYTES


def tree_bytes(top: Path) -> int:
    """Disk bytes (allocated blocks) of a folder tree, each hard-linked file counted once, as ``du``."""
    seen, total, todo = set(), 0, [str(top)]
    while todo:
        with os.scandir(todo.pop()) as entries:
            for entry in entries:
                st = entry.stat(follow_symlinks=False)
                if entry.is_dir(follow_symlinks=False):
                    todo.append(entry.path)
                elif (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_blocks * 512
    return total


def split_bytes(folder: Path) -> int:
    """Bytes of a split folder's shards and indexes, as its manifest lists them."""
    manifest = json.loads((folder / "manifest.json").read_text())
    return sum(s["bytes"] + s.get("index", {}).get("bytes", 0) for s in manifest["shards"])


def no_room(path: Path, need: float) -> str | None:
    """Why ``need`` bytes (with margin and reserve) will not fit on ``path``'s disk, or None if they will."""
    probe = path
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    want = need * DISK_MARGIN + DISK_RESERVE
    if free >= want:
        return None
    return (f"refused: not enough disk at {probe}: needs about {want / 1e9:.1f} GB "
            f"({need / 1e9:.1f} GB estimated + margin), {free / 1e9:.1f} GB free")


def same_file(a: Path, b: Path) -> bool:
    """Whether two files have the same bytes (False if either is missing), read 1 MiB at a time."""
    if not (a.is_file() and b.is_file()) or a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as x, open(b, "rb") as y:
        while True:
            bx, by = x.read(1 << 20), y.read(1 << 20)
            if bx != by:
                return False
            if not bx:
                return True


def same_tree(a: Path, b: Path) -> list[str]:
    """The differences between two folder trees, file names and bytes (empty when identical)."""
    def files(top: Path) -> set:
        return {str(Path(d, f).relative_to(top)) for d, _, fs in os.walk(top) for f in fs}

    fa, fb = files(a), files(b)
    diffs = [f"only in {a}: {f}" for f in sorted(fa - fb)] + [f"only in {b}: {f}" for f in sorted(fb - fa)]
    return diffs + [f"differs: {rel}" for rel in sorted(fa & fb) if not same_file(a / rel, b / rel)]


def remove(path: Path) -> None:
    """Delete a file or folder if it is there."""
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


# ----------------------------------------------------------------------------- one step


def describe(p, main) -> str:
    """``main`` (the step's command), or ``worker PID`` with its command line when it is not the main one's."""
    if p is None:
        return "–"
    if p.is_main:
        return "main"
    cmd = " ".join(Path(a).name if a.startswith("/") else a for a in p.cmdline.split())
    if main is not None and p.cmdline.split() == main.cmdline.split():
        return f"worker {p.pid}"  # forked, not exec'd: the same command line as its parent
    return f"worker {p.pid}: {cmd[:60]}{'...' if len(cmd) > 60 else ''}"


def measured_row(run: SizeRun, step: str, m: Measurement, records: int | None) -> dict:
    """A table row (and the raw numbers behind it) from one command's measurement."""
    big, main = m.largest("anon"), m.main()
    worker, file_big, shm_big = m.largest("anon", workers_only=True), m.largest("file"), m.largest("shmem")
    return {
        "n": run.n, "step": step, "records": records, "argv": m.argv, "returncode": m.returncode,
        "ok": m.returncode == 0, "result": "ok",
        "wall_s": m.wall_s, "cpu_s": m.cpu_s,
        "cpu_us_per_record": m.cpu_s * 1e6 / records if records else None,
        "peak_private_largest_bytes": big.anon if big else None,
        "peak_private_sum_bytes": m.peak_anon_sum,
        "peak_pss_sum_bytes": m.peak_pss_sum,
        "peak_rssfile_largest_bytes": file_big.file if file_big else None,
        "peak_shmem_largest_bytes": shm_big.shmem if shm_big else None,
        "largest_private": describe(big, main),
        "main_private_bytes": main.anon if main else None,
        "largest_worker_private_bytes": worker.anon if worker else None,
        "largest_worker": describe(worker, main) if worker else None,
        "kernel_maxrss_bytes": m.kernel_maxrss,
        "interval_s": m.interval_s, "samples": m.samples,
        "processes": [vars(p) for p in m.processes],
    }


def not_run(run: SizeRun, step: str, records: int | None, why: str) -> dict:
    """The row of a step that was skipped or refused (no numbers)."""
    return {"n": run.n, "step": step, "records": records, "ok": False, "result": why}


def run_step(run: SizeRun, step: str, argv: list, records: int | None, ok_codes=(0,)) -> tuple[dict, str]:
    """Run one command measured; its row (result ``ok`` or ``FAILED ...``) and its stdout.

    stdout and stderr go to ``BASE/logs/STEP.out`` and ``.err``; a failure's last
    stderr lines go into the row. ``ok_codes``: exit statuses that are results
    rather than failures (``verify`` exits 1 when it found problems).
    """
    logs = run.base / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    shown = ["EPOCH_SCRIPT" if a == EPOCH_SCRIPT else a for a in argv]
    print(f"[{run.n}] {step}: {shlex.join(shown)}", flush=True)
    with open(logs / f"{step}.out", "w+b") as out, open(logs / f"{step}.err", "w+b") as err:
        try:
            m = run_measured(argv, out, err, run.opts.interval)
        except OSError as exc:  # the command could not be started (not installed?)
            return {**not_run(run, step, records, f"FAILED: cannot run {argv[0]}: {exc}"), "returncode": None}, ""
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode("utf-8", "replace"), err.read().decode("utf-8", "replace")
    row = measured_row(run, step, m, records)
    if m.returncode not in ok_codes:
        tail = stderr.strip().splitlines()[-20:]
        # A negative status is a signal: SIGKILL most often from the kernel's out-of-memory killer.
        how = f"exit {m.returncode}" if m.returncode >= 0 else f"killed by {signal.Signals(-m.returncode).name}"
        row.update(ok=False, stderr_tail=tail, result=f"FAILED ({how}): {tail[-1][:160] if tail else 'no stderr'}")
    return row, stdout


def record(run: SizeRun, row: dict) -> dict:
    """Add a row to the results, rewrite the result files, and print the row's gist."""
    run.rows.append(row)
    write_results(run.opts, run.rows)
    numbers = f"{row['wall_s']:.1f} s wall, {row['cpu_s']:.1f} s CPU; " if "wall_s" in row else ""
    print(f"[{run.n}] {row['step']}: {numbers}{row['result']}", flush=True)
    return row


# ----------------------------------------------------------------------------- the steps


def step_generate(run: SizeRun) -> None:
    """Generate the dataset of N records (after removing one left by an earlier run)."""
    args = shlex.split(run.opts.generate_args)
    pool = int(args[args.index("--image-pool") + 1]) if "--image-pool" in args else run.n
    # With an image pool, assumed: the pool's images are written once (linked, not copied, per record).
    why = no_room(run.base, run.n * METADATA_BYTES + min(pool, run.n) * IMAGE_BYTES)
    if why:
        record(run, not_run(run, "generate", run.n, why))
        return
    remove(run.root)
    run.counts = None
    argv = [cli("bioscan-io"), "generate", str(run.root), "--records", str(run.n), *args, "--no-progress"]
    row, stdout = run_step(run, "generate", argv, run.n)
    if row["ok"]:
        if run.opts.thumbnail != "none" and "--image-pool" in args:
            package = args[args.index("--package") + 1] if "--package" in args else "cropped_256"
            shrink_pool(run, pool, package, run.opts.thumbnail)
        # Measured, not the change in free disk: other users of the disk would blur that.
        row["root_bytes"] = tree_bytes(run.root)
        row["result"] = f"ok; {size(row['root_bytes'])} on disk"
        row["stdout"] = stdout.strip()[-2000:]
    record(run, row)


def shrink_pool(run: SizeRun, pool: int, package: str, thumbnail: str) -> None:
    """Re-encode the image pool (the first ``pool`` records' images) as small JPEGs, in place.

    Every other record's image is a hard link to one of them, so all see the new
    bytes: shards cost ~5 KB a sample instead of ~19 KB. Not timed as part of generate.
    """
    import csv
    import io
    import itertools

    from PIL import Image

    from bioscan_io.schema import image_subpath

    box = tuple(int(v) for v in thumbnail.split("x"))
    folder = run.root / "bioscan5m" / "images" / package
    with open(run.csv, newline="", encoding="utf-8") as f:
        rows = list(itertools.islice(csv.DictReader(f), pool))
    for row in rows:
        path = folder / image_subpath(row["processid"], row["split"], row["chunk"] or None)
        if not path.is_file():
            continue
        with Image.open(path) as image:
            small = image.convert("RGB")
        small.thumbnail(box)
        data = io.BytesIO()
        small.save(data, "JPEG", quality=90)
        with open(path, "r+b") as f:  # the same inode: every hard link to it changes too
            f.write(data.getvalue())
            f.truncate()


def shard(run: SizeRun, step: str, split: str, out: Path, workers: int | None = None) -> dict:
    """Shard one split into ``out/split`` (removed first: a fresh run, not a resume); its row."""
    records = run.records(split)
    if records is None:
        return record(run, not_run(run, step, None, f"skipped: no generated dataset at {run.root}"))
    per_record = run.bytes_per_record or mean_image_bytes(run.root) + SHARD_OVERHEAD
    why = no_room(run.base, records * per_record)
    if why:
        return record(run, not_run(run, step, records, why))
    remove(out / split)
    argv = [cli("bioscan-shard"), "--root", str(run.root), "--split", split, "--out", str(out), "--no-progress"]
    row, _ = run_step(run, step, argv + (["--workers", str(workers)] if workers else []), records)
    if row["ok"]:
        manifest = json.loads((out / split / "manifest.json").read_text())
        nbytes, row["records"] = split_bytes(out / split), manifest["num_samples"]
        run.bytes_per_record = nbytes / max(1, manifest["num_samples"])
        row["shard_bytes"] = nbytes
        row["result"] = f"ok; {len(manifest['shards'])} shard(s), {size(nbytes)}"
    return record(run, row)


def step_shard_train(run: SizeRun) -> None:
    """Shard train with 1 and with 8 writers into two folders; the trees must be byte-identical."""
    one, many = SHARD_WORKERS
    other = run.base / f"shards-w{one}"
    first = shard(run, f"shard-train-w{one}", "train", other, one)
    second = shard(run, f"shard-train-w{many}", "train", run.shards, many)
    if first["ok"] and second["ok"]:
        t = time.perf_counter()
        diffs = same_tree(other / "train", run.shards / "train")
        if not same_file(other / "labels.json", run.shards / "labels.json"):
            diffs.append("differs: labels.json")
        second.update(identical=not diffs, differences=diffs[:20], compare_s=time.perf_counter() - t)
        second["result"] += f"; identical to w{one}: " + ("yes" if not diffs else f"NO ({len(diffs)} differences)")
        write_results(run.opts, run.rows)
        print(f"[{run.n}] compare w{one} / w{many}: {second['result']}", flush=True)
    remove(other)


def needs_split(run: SizeRun, step: str, split: str) -> bool:
    """True if the split's shards are there; otherwise records the step as skipped."""
    if (run.shards / split / "manifest.json").exists():
        return True
    record(run, not_run(run, step, run.records(split), f"skipped: no shards at {run.shards / split}"))
    return False


def step_verify(run: SizeRun, split: str) -> None:
    """``bioscan-io verify`` against the metadata CSV; the row says OK or the problems found."""
    step = f"verify-{split}"
    if not needs_split(run, step, split):
        return
    argv = [cli("bioscan-io"), "verify", str(run.shards / split), "--metadata", str(run.csv), "--json",
            "--no-progress"]
    row, stdout = run_step(run, step, argv, run.records(split), ok_codes=(0, 1))
    if row.get("returncode") in (0, 1):
        report = json.loads(stdout)
        kinds = sorted({p.get("kind", "?") for p in report["problems"]})
        row.update(ok=report["ok"], verify_samples=report["samples"], problems=len(report["problems"]),
                   problems_head=report["problems"][:20])
        row["result"] = (f"OK, {report['samples']:,} samples" if report["ok"] else
                         f"NOT OK: {len(report['problems']):,} problems ({', '.join(kinds)})")
    record(run, row)


def step_index(run: SizeRun, split: str) -> None:
    """``bioscan-io index``: every shard's index written again, the manifest rewritten."""
    step = f"index-{split}"
    if not needs_split(run, step, split):
        return
    row, stdout = run_step(run, step, [cli("bioscan-io"), "index", str(run.shards / split)], run.records(split))
    if row["ok"]:
        wrote = re.search(r"wrote ([\d,]+ shard index(es)?)", stdout)
        row["result"] = f"ok; wrote {wrote.group(1)}" if wrote else "ok"
    record(run, row)


def step_export(run: SizeRun, split: str) -> None:
    """``bioscan-io export --format parquet``; the file is deleted after (unless --keep-shards)."""
    step, records = f"export-{split}", run.records(split)
    if not needs_split(run, step, split):
        return
    out = run.base / "exports" / f"{split}.parquet"
    why = no_room(run.base, records * PARQUET_BYTES)
    if why:
        record(run, not_run(run, step, records, why))
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    remove(out)
    argv = [cli("bioscan-io"), "export", str(run.shards / split), "--format", "parquet", "--out", str(out),
            "--no-progress"]
    row, _ = run_step(run, step, argv, records)
    if row["ok"]:
        row["parquet_bytes"] = out.stat().st_size
        row["result"] = f"ok; {size(row['parquet_bytes'])} Parquet"
    if not run.opts.keep_shards:
        remove(out)
    record(run, row)


def step_summary(run: SizeRun, split: str) -> None:
    """``bioscan-io peek --no-sheet``: the split summary (ranks, barcode lengths)."""
    step = f"summary-{split}"
    if not needs_split(run, step, split):
        return
    argv = [cli("bioscan-io"), "peek", str(run.shards / split), "--no-sheet", "--no-progress"]
    row, stdout = run_step(run, step, argv, run.records(split))
    if row["ok"]:
        first = (stdout.strip().splitlines() or [""])[0]
        row["result"] = "ok; " + first.split(" (")[0]
    record(run, row)


def step_epoch(run: SizeRun, split: str, task: str) -> None:
    """One ``make_loader`` epoch of ``task`` over the split; the samples must be the manifest's count."""
    step = f"epoch-{task}"
    if not needs_split(run, step, split):
        return
    argv = [sys.executable, "-c", EPOCH_SCRIPT, str(run.shards / split), task, str(run.opts.loader_workers)]
    row, stdout = run_step(run, step, argv, run.records(split))
    if row["ok"]:
        epoch = json.loads(stdout.strip().splitlines()[-1])
        row["epoch"] = epoch
        row["result"] = (f"{epoch['samples']:,} samples = manifest, {run.opts.loader_workers} workers, "
                         f"{epoch['samples'] / epoch['seconds']:,.0f}/s in the loop")
    record(run, row)


#: What each step name runs.
STEP_FUNCTIONS = {
    "generate": step_generate,
    "shard-train": step_shard_train,
    "verify-train": lambda run: step_verify(run, "train"),
    "index-train": lambda run: step_index(run, "train"),
    "export-train": lambda run: step_export(run, "train"),
    "epoch-classify": lambda run: step_epoch(run, "train", "classify"),
    "shard-pretrain": lambda run: shard(run, "shard-pretrain", "pretrain", run.shards),
    "verify-pretrain": lambda run: step_verify(run, "pretrain"),
    "export-pretrain": lambda run: step_export(run, "pretrain"),
    "summary-pretrain": lambda run: step_summary(run, "pretrain"),
    "epoch-mlm": lambda run: step_epoch(run, "pretrain", "mlm"),
    "shard-all": lambda run: shard(run, "shard-all", "all", run.shards),
}
#: The last step that reads each split's shards: they are deleted after it.
LAST_USE = {"epoch-classify": "train", "epoch-mlm": "pretrain", "shard-all": "all"}


# ----------------------------------------------------------------------------- output


def mib(value) -> str:
    """Bytes as whole MiB, ``–`` when not measured."""
    return "–" if value is None else f"{value / MIB:,.0f}"


def size(value: float) -> str:
    """Bytes in MB below a GB, else in GB."""
    return f"{value / 1e6:,.1f} MB" if value < 1e9 else f"{value / 1e9:,.2f} GB"


def num(value, digits: int = 1) -> str:
    """A number with ``digits`` decimals and thousands separators, ``–`` when not measured."""
    return "–" if value is None else f"{value:,.{digits}f}"


def tables(rows: list) -> str:
    """The two markdown tables: the steps, and which process held the memory."""
    out = ["| N | step | records | wall s | CPU s | CPU µs/record | peak private, largest process MiB | "
           "peak private, sum MiB | peak PSS, sum MiB | peak RssFile, largest MiB | result |",
           "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        out.append(f"| {r['n']:,} | {r['step']} | {num(r['records'], 0)} | {num(r.get('wall_s'))} | "
                   f"{num(r.get('cpu_s'))} | {num(r.get('cpu_us_per_record'))} | "
                   f"{mib(r.get('peak_private_largest_bytes'))} | {mib(r.get('peak_private_sum_bytes'))} | "
                   f"{mib(r.get('peak_pss_sum_bytes'))} | {mib(r.get('peak_rssfile_largest_bytes'))} | "
                   f"{r['result']} |")
    out += ["", "| N | step | largest private peak in | main process private MiB | largest worker private MiB | "
                "processes | peak RssShmem, largest MiB | kernel max RSS MiB | samples |",
            "|---:|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "wall_s" in r:
            out.append(f"| {r['n']:,} | {r['step']} | {r['largest_private']} | {mib(r['main_private_bytes'])} | "
                       f"{mib(r['largest_worker_private_bytes'])} | {len(r['processes'])} | "
                       f"{mib(r['peak_shmem_largest_bytes'])} | {mib(r['kernel_maxrss_bytes'])} | {r['samples']} |")
    return "\n".join(out)


def machine() -> dict:
    """The machine and software the numbers come from."""
    try:
        from importlib.metadata import version
        bioscan = version("bioscan-io")
    except Exception:  # not installed as a distribution: the report says so rather than failing
        bioscan = "unknown"
    return {"cpus": os.cpu_count(), "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
            "platform": platform.platform(), "python": platform.python_version(), "bioscan_io": bioscan}


def results_path(opts, suffix: str) -> Path:
    """``WORK/results-N1-N2....SUFFIX``."""
    return Path(opts.work) / f"results-{'-'.join(str(n) for n in opts.records)}{suffix}"


def write_results(opts, rows: list) -> None:
    """Write the markdown report and the JSON of raw numbers (again after every step)."""
    info = machine()
    head = [
        "# bioscan-io full-scale benchmark", "",
        f"{time.strftime('%Y-%m-%d %H:%M')}: `{shlex.join(['python', 'benchmarks/full_scale.py', *opts.argv])}`; "
        f"{info['cpus']} CPUs, {info['memory_bytes'] / 2**30:.0f} GiB, Python {info['python']}, "
        f"bioscan-io {info['bioscan_io']}; generate options `{opts.generate_args}`.", "",
        "CPU: user + system seconds of the step's process tree (`os.wait4`; workers reaped by their parent "
        "included), per record of the step's split (N for generate). Memory: `/proc` sampled every "
        f"{opts.interval} s over the process tree; private = `RssAnon` (a forked worker's copy-on-write pages "
        "count in it until written, so the sum can exceed the memory used), PSS splits shared pages between the "
        "processes mapping them, `RssFile` = file-backed pages (memory-mapped files, dropped by the kernel under "
        "pressure). Kernel max RSS: the largest total RSS of one process of the tree (`ru_maxrss`, exact, not "
        "sampled).", "",
    ]
    results_path(opts, ".md").write_text("\n".join(head) + "\n" + tables(rows) + "\n")
    results_path(opts, ".json").write_text(json.dumps(
        {"argv": opts.argv, "machine": info, "generate_args": opts.generate_args, "interval_s": opts.interval,
         "rows": rows}, indent=1, default=str) + "\n")


# ----------------------------------------------------------------------------- main


def run_size(run: SizeRun) -> None:
    """Run the chosen steps for one dataset size, deleting each split's shards after their last use."""
    run.base.mkdir(parents=True, exist_ok=True)
    for step in STEPS:
        if step in run.opts.steps:
            STEP_FUNCTIONS[step](run)
        if step in LAST_USE and not run.opts.keep_shards:
            remove(run.shards / LAST_USE[step])


def clean_up(run: SizeRun) -> None:
    """Remove what the run wrote under ``--work`` (the result files stay), as ``--keep`` says."""
    if run.opts.keep_shards:
        return
    if not run.opts.keep:
        remove(run.base)
        return
    for path in run.base.iterdir():
        if path.name != "root":
            remove(path)


def parse_args(argv=None) -> argparse.Namespace:
    """The command line (module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, action="append", required=True,
                   help="dataset size; repeat to run several sizes in sequence (e.g. 100000 500000 5150850)")
    p.add_argument("--work", required=True,
                   help="folder for the data and the result files (e.g. /var/tmp/bioscan-scale)")
    p.add_argument("--steps", action="append",
                   help=f"comma-separated steps to run (default all, in this order): {','.join(STEPS)}")
    p.add_argument("--keep", action="store_true", help="keep the generated dataset (WORK/N/root) for another run")
    p.add_argument("--keep-shards", action="store_true", help="keep everything: dataset, shards, Parquet files, logs")
    p.add_argument("--interval", type=float, default=0.1, help="seconds between memory samples (default 0.1)")
    p.add_argument("--generate-args", default=GENERATE_ARGS,
                   help="generate's options after --records N, given with = "
                        f"(--generate-args='--package cropped_256'); default {GENERATE_ARGS!r}")
    p.add_argument("--thumbnail", default=THUMBNAIL,
                   help=f"re-encode the image pool to this WxH box after generate, or 'none' (default {THUMBNAIL})")
    p.add_argument("--loader-workers", type=int, default=LOADER_WORKERS,
                   help=f"DataLoader workers of the epoch steps (default {LOADER_WORKERS})")
    opts = p.parse_args(argv)
    opts.argv = list(sys.argv[1:] if argv is None else argv)
    opts.steps = [s for group in opts.steps or [",".join(STEPS)] for s in group.split(",") if s]
    unknown = sorted(set(opts.steps) - set(STEPS))
    if unknown:
        p.error(f"unknown step(s) {', '.join(unknown)}; the steps are {', '.join(STEPS)}")
    return opts


def interrupted(signum, frame):
    """SIGTERM as Ctrl-C: the running step's process tree is killed and the work folder cleaned up."""
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None) -> int:
    """Run every size; print the tables; exit 1 if any step failed, was refused or skipped."""
    opts = parse_args(argv)
    signal.signal(signal.SIGTERM, interrupted)
    work = Path(opts.work)
    work.mkdir(parents=True, exist_ok=True)
    rows: list = []
    for n in opts.records:
        run = SizeRun(n, work / str(n), opts, rows)
        try:
            run_size(run)
        except KeyboardInterrupt:
            print(f"interrupted; the steps done so far (if any) are in {results_path(opts, '.md')}", file=sys.stderr)
            return 130
        finally:  # an interrupted run cleans up too
            clean_up(run)
    print("\n" + tables(rows))
    print(f"\nwritten: {results_path(opts, '.md')} and {results_path(opts, '.json')}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
