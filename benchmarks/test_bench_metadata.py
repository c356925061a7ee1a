"""Metadata at scale: bioscan-io's reader next to the official loader's pandas.read_csv.

    BIOSCAN_BENCH_ROWS=5150850 pytest benchmarks/test_bench_metadata.py -s

builds a CSV of that many rows in the official format (the rows of a generated
dataset repeated, each with a unique processid), then reads it in fresh
processes, timing each and taking its peak resident memory:

- ``bioscan-io``: ``read_metadata(path, cache_dir=...)``, as ``bioscan-shard`` reads
  it (streamed into a memory-mapped Arrow file, validated, label values taken);
- ``pandas``: ``pandas.read_csv`` with the official loader's dtypes and its
  category codes for the eight ranks.

The default (200,000 rows) is a quick run; CI runs it as a smoke check only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from bioscan_io import synth
from bioscan_io.metadata import read_metadata
from bioscan_io.schema import METADATA_CSV

ROWS = int(os.environ.get("BIOSCAN_BENCH_ROWS", "200000"))

READERS = {
    "bioscan-io": """
        from bioscan_io.metadata import read_metadata, label_values
        table = read_metadata(PATH, cache_dir=CACHE)
        labels = label_values(table)
        n = table.num_rows
    """,
    "pandas": """
        import pandas as pd
        kinds = {"str": str, "category": "category", "float": float, "uint8": "uint8", "Int64": "Int64"}
        from bioscan_io.schema import COLUMN_KINDS, RANKS
        df = pd.read_csv(PATH, dtype={c: kinds[k] for c, k in COLUMN_KINDS.items()})
        codes = [df[r].cat.codes for r in RANKS]
        n = len(df)
    """,
}


@pytest.fixture(scope="module")
def big_csv(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("meta-src")
    synth.generate(root, n_records=5000, seed=1, images=False)
    base = read_metadata(root / METADATA_CSV)
    reps = -(-ROWS // base.num_rows)
    table = pa.concat_tables([base] * reps).slice(0, ROWS)
    pids = pa.array([f"BENCH{i:08d}-01" for i in range(ROWS)])
    table = table.set_column(0, "processid", pids)
    path = tmp_path_factory.mktemp("meta") / "metadata.csv"
    pacsv.write_csv(table, path)
    return path


def _measure(code: str, path: Path, cache: Path) -> dict:
    script = textwrap.dedent(f"""
        import json, resource, time
        PATH, CACHE = {str(path)!r}, {str(cache)!r}
        t0 = time.perf_counter()
    """) + textwrap.dedent(code) + textwrap.dedent("""
        seconds = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(json.dumps({"rows": n, "seconds": seconds, "peak_rss": peak}))
    """)
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_metadata_read_time_and_peak_memory(big_csv, tmp_path, benchmark):
    size = big_csv.stat().st_size
    results = {}
    for name, code in READERS.items():
        results[name] = _measure(code, big_csv, tmp_path / f"cache-{name}")
        assert results[name]["rows"] == ROWS
    # pytest-benchmark records the bioscan-io reader in-process too (page cache warm).
    benchmark.pedantic(lambda: read_metadata(big_csv, cache_dir=tmp_path / "cache-bench"), rounds=1)
    ours, theirs = results["bioscan-io"], results["pandas"]
    print(f"\n{ROWS:,} rows, {size / 1e9:.2f} GB CSV")
    for name, r in results.items():
        print(f"  {name:10s} {r['seconds']:7.1f} s  peak RSS {r['peak_rss'] / 2**30:6.2f} GiB")
    print(f"  bioscan-io vs pandas: {theirs['seconds'] / ours['seconds']:.1f}x faster, "
          f"{ours['peak_rss'] / theirs['peak_rss']:.2f}x the peak memory")
