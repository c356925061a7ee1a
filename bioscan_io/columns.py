"""Arrow columns at the dataset's full size: take, convert and look up without 32-bit offsets.

BIOSCAN-5M's ``dna_barcode`` column alone holds ~3.3 GB of text, past the 2 GiB
that one Arrow ``string`` array can address; and a hash table of 5.15M Python
strings costs gigabytes. So rows are taken record batch by record batch (string
columns come back as ``large_string``), and strings that must be found again
(processids, label values) are held as one sorted fixed-width bytes array and
found by binary search.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["take_rows", "column_numpy", "fixed_width", "SortedKeys", "RowLookup"]


def take_rows(table: pa.Table, rows, columns=None) -> pa.Table:
    """The rows ``rows`` of ``table`` (in that order), taken record batch by record batch.

    ``Table.take`` first concatenates each whole column into one array; the
    ``dna_barcode`` column of BIOSCAN-5M holds ~3.3 GB, past the 2 GiB that an
    Arrow ``string`` array's 32-bit offsets can address. Here only the batches
    that hold a wanted row are read (so a memory-mapped table costs the pages of
    those rows), and string columns come back as ``large_string``.

    Parameters
    ----------
    table : pyarrow.Table
        The metadata, e.g. memory-mapped by :func:`open_cached`.
    rows : array-like of int
        Row numbers, in any order (repeats allowed).
    columns : list of str, optional
        The columns wanted (default: all).
    """
    if columns is not None:
        table = table.select(list(columns))
    schema = pa.schema([pa.field(f.name, _large(f.type)) for f in table.schema])
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) and (rows.min() < 0 or rows.max() >= table.num_rows):
        raise IndexError(f"row numbers out of range 0..{table.num_rows - 1}")
    order = np.argsort(rows, kind="stable")
    ordered = rows[order]
    batches = table.to_batches()
    starts = np.cumsum([0] + [b.num_rows for b in batches])
    cuts = np.searchsorted(ordered, starts)  # the rows of batch b: ordered[cuts[b]:cuts[b + 1]]
    parts = [batches[b].take(pa.array(ordered[cuts[b]:cuts[b + 1]] - starts[b])).cast(schema)
             for b in range(len(batches)) if cuts[b + 1] > cuts[b]]
    taken = pa.Table.from_batches(parts, schema=schema)
    if np.all(order[1:] > order[:-1]):
        return taken  # asked in file order: no reordering
    back = np.empty_like(order)
    back[order] = np.arange(len(order))
    return taken.take(pa.array(back))  # 64-bit offsets: no limit on the rows' total size


def _large(kind: pa.DataType) -> pa.DataType:
    if pa.types.is_string(kind):
        return pa.large_string()
    if pa.types.is_binary(kind):
        return pa.large_binary()
    return kind


def column_numpy(column: pa.ChunkedArray | pa.Array, dtype=None) -> np.ndarray:
    """A fixed-width column (lengths, numbers) as one numpy array, chunk by chunk."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    parts = [c.to_numpy(zero_copy_only=False) for c in chunks]
    out = np.concatenate(parts) if parts else np.empty(0)
    return out.astype(dtype, copy=False) if dtype is not None else out


class SortedKeys:
    """Millions of strings as one sorted numpy array of fixed-width bytes, found by binary search.

    A Python set or dict would cost ~60 bytes more a string, and an Arrow hash
    table (``pc.index_in``) is built again on every call: ~50 MB and a pass over
    the values for each shard, for the ~800,000 BINs of the full release.

    Parameters
    ----------
    strings : pyarrow string array or sequence of str
        The keys; :meth:`positions` answers with their indices in this order.
    """

    def __init__(self, strings):
        keys = fixed_width(strings)
        order = np.argsort(keys, kind="stable")
        self.keys, self.order = keys[order], order

    def __len__(self) -> int:
        return len(self.keys)

    def positions(self, strings) -> np.ndarray:
        """The index of each string among the keys, -1 where absent (null, or not a key).

        ``strings``: a sequence of str or an Arrow string array.
        """
        if isinstance(strings, (pa.Array, pa.ChunkedArray)):
            wanted = fixed_width(strings)
            lengths = column_numpy(pc.fill_null(pc.binary_length(strings), 0), np.int64)
            present = column_numpy(pc.is_valid(strings), bool)
        else:
            encoded = [s.encode("utf-8", "surrogateescape") for s in strings]
            wanted = np.array(encoded, dtype=object)
            lengths = np.array([len(e) for e in encoded], np.int64)
            present = np.ones(len(encoded), bool)
        if not len(self.keys) or not len(wanted):
            return np.full(len(wanted), -1, np.int64)
        present &= lengths <= self.keys.itemsize  # numpy would cut a longer string to fit, and maybe find it
        wanted = np.where(present, wanted, b"").astype(self.keys.dtype)
        at = np.minimum(np.searchsorted(self.keys, wanted), len(self.keys) - 1)
        return np.where(present & (self.keys[at] == wanted), self.order[at], -1)


class RowLookup:
    """Processid -> row number for millions of records, without a Python object per record.

    Parameters
    ----------
    table : pyarrow.Table
        The metadata.
    rows : numpy.ndarray
        The rows to look up among (e.g. :func:`select_rows` of a split).
    """

    def __init__(self, table: pa.Table, rows: np.ndarray):
        self.rows = np.asarray(rows, dtype=np.int64)
        self.keys = SortedKeys(take_rows(table, self.rows, ["processid"]).column(0))

    def __len__(self) -> int:
        return len(self.rows)

    def positions(self, keys) -> np.ndarray:
        """The index of each key among :attr:`rows`, -1 where absent."""
        return self.keys.positions(keys)

    def find(self, keys) -> np.ndarray:
        """The row number of each key, -1 where absent."""
        at = self.positions(keys)
        return np.where(at >= 0, self.rows[at], -1) if len(self.rows) else at


def fixed_width(column) -> np.ndarray:
    """Strings as one numpy ``S`` array (bytes padded with NULs), built from the Arrow buffers.

    Millions of processids or image paths held this way cost their bytes, not a
    Python object each (~60 bytes more a string). ``column``: an Arrow string
    array (chunked or not) or a sequence of str. numpy drops trailing NUL bytes,
    so strings that differ only by them compare equal (no processid, label or
    path has one).
    """
    if not isinstance(column, (pa.Array, pa.ChunkedArray)):
        column = pa.array(column, pa.large_string())
    chunks = [c for c in (column.chunks if isinstance(column, pa.ChunkedArray) else [column]) if len(c)]
    width = max([int(pc.max(pc.binary_length(c)).as_py() or 0) for c in chunks] + [1])
    out = np.zeros((sum(len(c) for c in chunks), width), np.uint8)
    at = 0
    for chunk in chunks:
        chunk = chunk.cast(pa.large_binary())
        for start in range(0, len(chunk), _SLICE):  # the scatter's indices cost 16 bytes a byte: bounded
            part = chunk.slice(start, _SLICE)
            offsets = np.frombuffer(part.buffers()[1], np.int64)[part.offset:part.offset + len(part) + 1]
            values = part.buffers()[2]
            data = np.frombuffer(values, np.uint8) if values is not None else np.empty(0, np.uint8)
            lengths = np.diff(offsets)
            row = np.repeat(np.arange(len(part)), lengths)
            col = np.arange(offsets[-1] - offsets[0]) - np.repeat(offsets[:-1] - offsets[0], lengths)
            out[at + row, col] = data[offsets[0]:offsets[-1]]
            at += len(part)
    return out.view(f"S{width}").ravel()


_SLICE = 1 << 15
