"""The shard format: one owner for what ``bioscan-shard`` writes and every reader reads.

A split folder of shards, as :func:`bioscan_io.shard.shard_split` writes it::

    OUT/labels.json                  label values per rank (manifest.py)
    OUT/{split}/manifest.json        the shards, their counts, sizes and sha256 (manifest.py)
    OUT/{split}/{split}-000000.tar   plain ustar; per sample {processid}.dna/.jpg/.json
                                     (members.py; written by tar.TarSink)

The modules, by concern:

=============  ==============================================================
manifest.py    file names, format version, manifest and labels: read, check, write
members.py     the member registry (what each holds, how it is written), the
               key/extension rule, the ``.json`` record parser
scan.py        the compiled header walk over a memory-mapped shard, read in blocks
tar.py         the tar writer, and the one Python reader (pax shards, ``verify``)
=============  ==============================================================
"""

from .manifest import (FORMAT, FORMAT_VERSION, LABELS, MANIFEST, MISSING_REPORT, ShardInfo, is_count, labels_path,
                       listed_shards, manifest_problems, parse_manifest, publish_order, read_labels, read_manifest, shard_entries,
                       split_folder_of, write_json)
from .members import MEMBERS, Member, parse_records, sample_payloads, split_member_name
from .scan import ShardError, ShortShard, block_bounds, local_blocks, read_members, scan
from .tar import TAR_MTIME, Sample, TarFault, TarReader, TarSink, end_of_archive_fault

__all__ = [
    "FORMAT", "FORMAT_VERSION", "LABELS", "MANIFEST", "MISSING_REPORT", "ShardInfo", "is_count", "labels_path",
    "listed_shards", "manifest_problems", "parse_manifest", "publish_order", "read_labels", "read_manifest", "shard_entries",
    "split_folder_of", "write_json",
    "MEMBERS", "Member", "parse_records", "sample_payloads", "split_member_name",
    "ShardError", "ShortShard", "block_bounds", "local_blocks", "read_members", "scan",
    "TAR_MTIME", "Sample", "TarFault", "TarReader", "TarSink", "end_of_archive_fault",
]
