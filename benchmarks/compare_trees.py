"""A/B two source trees of bioscan-io on the same data, in paired rounds.

For a refactor or any change that should not move throughput: each round runs
the same workload once with each tree, in a fresh process, alternately, and the
ratio new/base is taken within the round (the VM's speed drifts between rounds;
the median of paired ratios is what BENCHMARKS.md reports). Within a process each
workload is timed several times and the fastest run counts, as ``timeit`` does.

Usage (both trees built in place: ``python setup.py build_ext --inplace``)::

    git worktree add /tmp/bioscan-base HEAD~1
    (cd /tmp/bioscan-base && python setup.py build_ext --inplace -q)
    python benchmarks/compare_trees.py /tmp/bioscan-base . --rounds 5
    python benchmarks/compare_trees.py /tmp/bioscan-base . --rounds 5 --workers 2
    python benchmarks/compare_trees.py /tmp/bioscan-base . --records 20000 --workers 2 --workloads mlm,embed

Workloads (``--records``, default 5,000 generated records with cropped_256
images, sharded by the base tree in 1,000-sample shards; kept in ``--work``, one
folder per record count): MLM epochs, classify-by-image epochs, embed (DNA +
labels) epochs, and sharding the train split with one writer; ``--workloads``
picks some of them. ``--workers N`` sets the loader workloads' ``num_workers``
(default 0; with N > 0 the workers are persistent, as ``make_loader`` makes
them, and started in the untimed warm-up epoch); sharding does not depend on
it. The order of the two trees alternates from round to round (base first in
odd rounds), so that neither always runs second on a warmer cache.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

WORKLOAD = r'''
import json, shutil, sys, tempfile, time
sys.path.insert(0, sys.argv[1])
import bioscan_io
assert bioscan_io.__file__.startswith(sys.argv[1]), bioscan_io.__file__
from bioscan_io.loader import make_loader
from bioscan_io.shard import shard_split
data, shards, workers, wanted = sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5].split(",")

def best(run, repeat=5):
    """Samples per second of the fastest of ``repeat`` runs (noise on a shared VM only slows runs down)."""
    rates = []
    for _ in range(repeat):
        t = time.perf_counter()
        n = run()
        rates.append(n / (time.perf_counter() - t))
    return max(rates)

def epochs(loader, k):
    sum(1 for _ in loader)  # warm: page cache, first-call costs
    def run():
        n = 0
        for e in range(k):
            loader.set_epoch(e)
            n += sum(len(b["processid"]) for b in loader)
        return n
    return run

def shard():
    folder = tempfile.mkdtemp()
    s = shard_split(data, "train", out=folder, maxcount=500, workers=1, progress=False, log=lambda m: None)
    shutil.rmtree(folder)
    return s.records

workloads = {
    "mlm": lambda: best(epochs(make_loader(shards, task="mlm", batch_size=256, num_workers=workers), 4)),
    "image": lambda: best(epochs(make_loader(shards, task="classify", modality="image", batch_size=128,
                                             num_workers=workers), 1), 3),
    "embed": lambda: best(epochs(make_loader(shards, task="embed", modality="dna", batch_size=256,
                                             num_workers=workers), 2)),
    "shard": lambda: best(shard, 3),
}
print(json.dumps({name: run() for name, run in workloads.items() if name in wanted}))
'''


WORKLOADS = ("mlm", "image", "embed", "shard")


def _prepare(base: str, work: str, records: int) -> tuple[str, str]:
    data, shards = os.path.join(work, "data"), os.path.join(work, "shards")
    if not os.path.isdir(os.path.join(shards, "all")):
        code = (f"import sys; sys.path.insert(0, {base!r})\n"
                "from bioscan_io import synth\nfrom bioscan_io.shard import shard_split\n"
                f"synth.generate({data!r}, n_records={records}, seed=1)\n"
                f"shard_split({data!r}, 'all', out={shards!r}, maxcount=1000, progress=False, log=lambda m: None)\n")
        subprocess.run([sys.executable, "-c", code], check=True)
    return data, os.path.join(shards, "all")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("base", help="source tree of the base (built in place)")
    p.add_argument("new", help="source tree of the change (built in place)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--workers", type=int, default=0, metavar="N",
                   help="num_workers of the loader workloads (default 0); sharding does not use it")
    p.add_argument("--records", type=int, default=5000, help="generated records (default 5,000)")
    p.add_argument("--workloads", default=",".join(WORKLOADS),
                   help=f"comma-separated, of {', '.join(WORKLOADS)} (default: all)")
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "bioscan-compare-trees"),
                   help="where the generated data and shards are kept between runs")
    args = p.parse_args(argv)
    unknown = set(args.workloads.split(",")) - set(WORKLOADS)
    if unknown:
        p.error(f"unknown workload(s) {', '.join(sorted(unknown))}; workloads are {', '.join(WORKLOADS)}")
    base, new = os.path.abspath(args.base), os.path.abspath(args.new)
    work = args.work if args.records == 5000 else f"{args.work}-{args.records}"
    data, shards = _prepare(base, work, args.records)
    runs: dict[str, list[dict]] = {base: [], new: []}
    print(f"{args.records:,} records, num_workers={args.workers}", file=sys.stderr)
    for r in range(args.rounds):
        for tree in ((base, new) if r % 2 == 0 else (new, base)):
            t = time.perf_counter()
            cmd = [sys.executable, "-c", WORKLOAD, tree, data, shards, str(args.workers), args.workloads]
            done = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=tempfile.gettempdir())
            runs[tree].append(json.loads(done.stdout))
            print(f"round {r + 1} {'base' if tree == base else 'new '} {time.perf_counter() - t:5.1f} s "
                  f"{done.stdout.strip()}", file=sys.stderr)
    print(f"{'workload':<8}{'base (median/s)':>18}{'new (median/s)':>18}{'paired new/base':>17}  per round")
    for key in runs[base][0]:
        b = [x[key] for x in runs[base]]
        n = [x[key] for x in runs[new]]
        ratios = [y / x for x, y in zip(b, n)]
        print(f"{key:<8}{statistics.median(b):>18,.0f}{statistics.median(n):>18,.0f}"
              f"{statistics.median(ratios):>17.3f}  {' '.join(f'{x:.2f}' for x in ratios)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
