"""The members of a sample: what each holds, how it is written and how it is named.

Every sample of a shard is three tar members named ``{processid}.{ext}``, in this
order (name order, as webdataset writes them):

=====  ======================================================================
ext    payload
=====  ======================================================================
dna    the DNA barcode, UTF-8 (empty when the record has none)
jpg    the image file's bytes, unchanged
json   the metadata record: every column, typed as ``metadata.read_metadata``
       types it (UTF-8 JSON object)
=====  ======================================================================

A member name splits into key and extension at the first dot of its base name
(webdataset's rule); the rule is compiled once, in ``src_ext/_tar.pyx``, and
:func:`split_member_name` calls it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from .scan import _tar

__all__ = ["Member", "MEMBERS", "split_member_name", "sample_payloads", "parse_records"]


@dataclass(frozen=True)
class Member:
    """One member of every sample: its extension, what it holds, how it is made from a record."""

    ext: str
    holds: str
    encode: Callable[[dict, bytes], bytes]  # (metadata record, image bytes) -> payload


#: The members of a sample, in the order they are written; the one list the
#: writer, the readers, ``verify`` and ``peek`` use.
MEMBERS = {
    m.ext: m for m in (
        Member("dna", "the DNA barcode, UTF-8", lambda rec, image: (rec["dna_barcode"] or "").encode("utf-8")),
        Member("jpg", "the image file's bytes", lambda rec, image: image),
        Member("json", "the metadata record", lambda rec, image: json.dumps(rec, ensure_ascii=False).encode("utf-8")),
    )
}


def split_member_name(name: str) -> tuple[str, str]:
    """Key and extension of a member name (``"train/AB1.dna"`` -> ``("train/AB1", "dna")``)."""
    raw = name.encode("utf-8", "surrogateescape")
    end = _tar.key_end(np.frombuffer(raw, dtype=np.uint8))
    return raw[:end].decode("utf-8", "surrogateescape"), raw[end + 1:].decode("utf-8", "surrogateescape")


def sample_payloads(record: dict, image: bytes):
    """``(ext, member name, payload)`` of one sample, in the order they are written."""
    pid = record["processid"]
    return [(ext, f"{pid}.{ext}", member.encode(record, image)) for ext, member in MEMBERS.items()]


_NEWLINE = pa.scalar(b"\n", pa.large_binary())
_NOTHING = pa.scalar(b"", pa.large_binary())


def parse_records(column: pa.Array, fields: tuple[str, ...]) -> tuple[pa.Table, list[tuple[int, str]]]:
    """The string ``fields`` of the ``.json`` record of each row; ``(row, message)`` for each bad record.

    One Arrow JSON parse per block; when it fails, the records are parsed one by one
    to find the bad ones (their fields are then null).
    """
    schema = pa.schema([(f, pa.string()) for f in fields])
    joined = pc.binary_join_element_wise(column, _NEWLINE, _NOTHING)  # newline-delimited JSON, one buffer
    try:
        table = pa_json.read_json(
            pa.BufferReader(joined.buffers()[2] or pa.py_buffer(b"")),
            read_options=pa_json.ReadOptions(use_threads=False, block_size=max(1 << 20, joined.nbytes + 1)),
            parse_options=pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore",
                                               newlines_in_values=False))
        if table.num_rows == len(column):
            return table.combine_chunks(), []
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    values: dict[str, list] = {f: [] for f in fields}
    bad: list = []
    for i, data in enumerate(column.to_pylist()):
        try:
            row = _string_fields(data, fields)
        except ValueError as exc:
            bad.append((i, str(exc)))
            row = [None] * len(fields)
        for f, v in zip(fields, row):
            values[f].append(v)
    return pa.table({f: pa.array(v, pa.string()) for f, v in values.items()}), bad


def _string_fields(data: bytes, fields: tuple[str, ...]) -> list:
    record = json.loads(data)
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    row = [record.get(f) for f in fields]
    wrong = [f for f, v in zip(fields, row) if v is not None and not isinstance(v, str)]
    if wrong:
        raise ValueError(f"{wrong[0]!r} is not a string or null")
    return row
