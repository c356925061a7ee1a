"""The shard format: one owner for what ``bioscan-shard`` writes and every reader reads.

A split folder of shards, as :func:`bioscan_io.shard.shard_split` writes it::

    OUT/labels.json                  label values per rank (manifest.py)
    OUT/{split}/manifest.json        the shards, their counts, sizes and sha256 (manifest.py)
    OUT/{split}/{split}-000000.tar   plain ustar; per sample {processid}.dna/.jpg/.json
                                     (members.py; written by tar.TarSink)
    OUT/{split}/{split}-000000.idx.arrow   the shard's index: member offsets, barcodes,
                                     ranks, label indices (index.py; format version 2)

The modules, by concern:

=============  ==============================================================
manifest.py    file names, format version, manifest and labels: read, check, write
members.py     the member registry (what each holds, how it is written), the
               key/extension rule, the ``.json`` record parser
index.py       the per-shard index (Arrow IPC): build, write, open, check, rebuild from a shard
scan.py        the compiled header walk over a memory-mapped shard; samples read by row, from it or the index
tar.py         the tar writer, and the one Python reader (pax shards, ``verify``)
=============  ==============================================================
"""

from .index import (INDEX_SUFFIX, RECORD_FIELDS, build_index, check_index, index_from_shard, index_name,
                    index_problems, index_split, load_index, load_index_columns, open_index, verify_shard_file,
                    write_index)
from .manifest import (FORMAT, FORMAT_VERSION, LABELS, MANIFEST, MISSING_REPORT, READABLE_VERSIONS, ShardInfo,
                       is_count, labels_path, listed_shards, manifest_problems, parse_manifest, publish_order,
                       read_labels, read_manifest, shard_entries, split_folder_of, write_json)
from .members import MEMBERS, Member, parse_records, sample_payloads, split_member_name
from .scan import ShardError, ShortShard, read_members, scan, take_indexed, take_local
from .tar import TAR_MTIME, Sample, TarFault, TarReader, TarSink, end_of_archive_fault

__all__ = [
    # index.py
    "INDEX_SUFFIX", "RECORD_FIELDS", "build_index", "check_index", "index_from_shard", "index_name",
    "index_problems", "index_split", "load_index", "load_index_columns", "open_index", "verify_shard_file",
    "write_index",
    # manifest.py
    "FORMAT", "FORMAT_VERSION", "LABELS", "MANIFEST", "MISSING_REPORT", "READABLE_VERSIONS", "ShardInfo",
    "is_count", "labels_path", "listed_shards", "manifest_problems", "parse_manifest", "publish_order",
    "read_labels", "read_manifest", "shard_entries", "split_folder_of", "write_json",
    # members.py
    "MEMBERS", "Member", "parse_records", "sample_payloads", "split_member_name",
    # scan.py
    "ShardError", "ShortShard", "read_members", "scan", "take_indexed", "take_local",
    # tar.py
    "TAR_MTIME", "Sample", "TarFault", "TarReader", "TarSink", "end_of_archive_fault",
]
