"""Rows of Arrow string columns picked by index and read in place: the shuffle gather without a copy.

A shuffled epoch reads each shard's rows in a permuted order. Taking them
(``pyarrow.compute.take``) copies every barcode into a new buffer only for the
k-mer kernel to read it once; the kernel reads rows through per-row
``starts``/``ends`` anyway (:class:`bioscan_io.buffers.Chunk`), so permuting those
offsets is the whole gather. A :class:`Gathered` column holds, per piece, an
Arrow array (a column of a memory-mapped index) and the positions of its rows
in order, and turns into the kernel's chunks with one numpy index per piece.
It supports what the loader's stages do to a block's columns (``len``,
``take``, ``filter``, :func:`concat`) and becomes an ordinary Arrow array
where anything else needs one (:meth:`Gathered.to_arrow`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from .buffers import Chunk, as_chunks

# pyarrow is imported where it is used, as in bioscan_io.buffers: the tokenizer,
# which reads these columns, imports without it.

__all__ = ["Column", "Gathered", "Piece", "concat"]


class Column:
    """A string column read again and again (an open index's): how the kernels read it, and its id hashes.

    Holds no copy of the column: rows are read through the Arrow offsets
    (checked once, as :func:`bioscan_io.buffers.as_chunks` checks them); only
    the hashes (8 bytes a row) are kept, made the first time they are asked for.

    Parameters
    ----------
    array : pyarrow.Array
        String or binary, one chunk.
    """

    __slots__ = ("array", "_data", "_offsets", "_nulls", "_hashes")

    def __init__(self, array: Any):
        self.array = array
        self._data: np.ndarray | None = None
        self._offsets: np.ndarray | None = None  # the Arrow offsets (int32 or int64), not copied
        self._nulls: Chunk | None = None  # a column with nulls: its checked chunk (nulls read as empty rows)
        self._hashes: np.ndarray | None = None

    def chunk(self, rows: np.ndarray | None = None) -> Chunk:
        """The rows at ``rows`` (all when None) as the kernels read them."""
        if self._data is None and self._nulls is None:
            whole = as_chunks(self.array, "column")[0]  # checked: every row inside the data buffer
            if self.array.null_count:
                self._nulls = whole
            else:
                self._data, self._offsets = whole.data, _offsets(self.array)
        if self._nulls is not None:
            w = self._nulls
            return w if rows is None else Chunk(w.data, w.starts[rows], w.ends[rows])
        o, data = self._offsets, self._data
        assert o is not None and data is not None
        if rows is None:
            return Chunk(data, o[:-1].astype(np.int64), o[1:].astype(np.int64))
        return Chunk(data, o[rows].astype(np.int64), o[rows + 1].astype(np.int64))

    def hashes(self) -> np.ndarray:
        """Every row's :func:`bioscan_io.tokenizer.processid_keys` hash (uint64)."""
        if self._hashes is None:
            self._hashes = _hashes(self.chunk())
        return self._hashes


class Piece(NamedTuple):
    """Rows ``rows`` of ``array`` (None: all, in order); ``column``: its :class:`Column`, when one is kept."""

    array: Any  # a pyarrow string or binary Array (one chunk)
    rows: np.ndarray | None
    column: Column | None = None


class Gathered:
    """Rows of Arrow arrays, piece after piece, not copied.

    Parameters
    ----------
    pieces : list of Piece
        Each an array and the int64 positions of its rows, in order. Positions
        are checked to lie inside the array: a bad one would otherwise wrap
        (numpy's negative indices) or read past it.
    checked : bool
        The pieces come from a Gathered's (already checked).
    """

    __slots__ = ("pieces", "_length")

    def __init__(self, pieces: list[Piece], checked: bool = False):
        if not checked:  # pieces cut from checked ones (take, concat) need not be checked again
            for p in pieces:
                if p.rows is not None and len(p.rows) and (p.rows.min() < 0 or p.rows.max() >= len(p.array)):
                    raise IndexError(f"rows outside an array of {len(p.array)}")
        self.pieces = pieces
        self._length = sum(_rows_of(p) for p in pieces)

    @classmethod
    def of(cls, array: Any, rows: Any = None, checked: bool = False) -> Gathered:
        """``array``'s rows at ``rows`` (integer positions; None: all, in order).

        ``array``: a :class:`Column` (what is derived from it is kept with it),
        a pyarrow string or binary Array, or a ChunkedArray (combined first,
        unless one chunk). ``checked``: ``rows`` were checked against an array
        as long (another column of the same table).
        """
        import pyarrow as pa

        column = array if isinstance(array, Column) else None
        if column is not None:
            array = column.array
        elif isinstance(array, pa.ChunkedArray):
            array = array.chunk(0) if array.num_chunks == 1 else array.combine_chunks()
        return cls([Piece(array, None if rows is None else np.asarray(rows, np.int64), column)], checked)

    def __len__(self) -> int:
        return self._length

    def take(self, index: Any) -> Gathered:
        """The rows at positions ``index`` (numpy or Arrow integers), as ``pyarrow.Array.take``."""
        index = np.asarray(_numpy(index), np.int64)
        if not len(index):  # no row: the first piece's array, none of its rows (the type kept)
            return Gathered([Piece(p.array, index, p.column) for p in self.pieces[:1]], checked=True)
        if index.min() < 0 or index.max() >= self._length:
            raise IndexError(f"index outside {self._length} rows")
        bounds = np.cumsum([0] + [_rows_of(p) for p in self.pieces])
        piece = np.searchsorted(bounds, index, side="right") - 1
        # Consecutive positions in one piece stay one piece (a stand-in run, a filter).
        cuts = np.flatnonzero(np.diff(piece)) + 1
        out = []
        for a, z in zip(np.concatenate([[0], cuts]), np.concatenate([cuts, [len(index)]])):
            p = self.pieces[int(piece[a])]
            local = index[a:z] - bounds[int(piece[a])]
            out.append(Piece(p.array, local if p.rows is None else p.rows[local], p.column))
        return Gathered(out, checked=True)  # positions inside the pieces, checked above

    def filter(self, mask: Any) -> Gathered:
        """The rows where ``mask`` (bool, numpy or Arrow) is true."""
        return self.take(np.flatnonzero(np.asarray(_numpy(mask), bool)))

    def chunks(self, what: str) -> list[Chunk]:
        """The rows as the kernels' chunks: each piece's buffers, its offsets permuted (no byte copied)."""
        return [_chunk(p, what) for p in self.pieces]

    def hashes(self) -> np.ndarray:
        """The rows' :func:`bioscan_io.tokenizer.processid_keys` hashes: a kept column's, picked; else made."""
        parts = []
        for p in self.pieces:
            if p.column is not None:
                whole = p.column.hashes()
                parts.append(whole if p.rows is None else whole[p.rows])
            else:
                parts.append(_hashes(_chunk(p, "processids")))
        return np.concatenate(parts) if parts else np.empty(0, np.uint64)

    def to_arrow(self) -> Any:
        """The rows as a pyarrow Array or ChunkedArray (taken: a copy), for whatever needs one.

        Pieces of another type than the first (a version-1 shard's binary
        column next to an index's strings) are cast to it.
        """
        import pyarrow as pa

        parts = [p.array if p.rows is None else p.array.take(pa.array(p.rows, pa.int64())) for p in self.pieces]
        if not parts:
            return pa.array([], pa.string())
        if len(parts) == 1:
            return parts[0]
        kind = parts[0].type
        return pa.chunked_array([p if p.type == kind else p.cast(kind) for p in parts])

    def to_pylist(self) -> list:
        """The rows as Python objects (as ``to_arrow().to_pylist()``)."""
        import pyarrow as pa

        from . import _kmer

        if len({p.array.type for p in self.pieces}) > 1:
            return self.to_arrow().to_pylist()
        out: list = []
        for p in self.pieces:
            if p.array.null_count or not (pa.types.is_string(p.array.type) or pa.types.is_large_string(p.array.type)):
                out += (p.array if p.rows is None else p.array.take(p.rows)).to_pylist()
                continue
            # strings straight from the rows' bytes: no taken copy, no Arrow scalar per row
            rows = _chunk(p, "strings")
            out += _kmer.utf8_strings(rows.data, rows.starts, rows.ends)
        return out


def concat(parts: list) -> Gathered:
    """One :class:`Gathered` of several, or of Arrow (chunked) arrays taken whole (a version-1 shard's)."""
    import pyarrow as pa

    pieces: list = []
    for part in parts:
        if isinstance(part, Gathered):
            pieces += part.pieces
        elif isinstance(part, pa.ChunkedArray):
            pieces += [Piece(c, None) for c in part.chunks]
        else:
            pieces.append(Piece(part, None))
    return Gathered(pieces, checked=True)  # Gathered pieces are checked; the others are whole arrays


def _chunk(p: Piece, what: str) -> Chunk:
    """A piece's rows as the kernels read them: its buffers, its offsets permuted (no byte copied)."""
    # as_chunks checks that every row lies inside the data buffer; rows picked from checked ones do too.
    if p.column is not None:
        return p.column.chunk(p.rows)
    whole = as_chunks(p.array, what)[0]
    return whole if p.rows is None else Chunk(whole.data, whole.starts[p.rows], whole.ends[p.rows])


def _offsets(array: Any) -> np.ndarray:
    """An Arrow string or binary array's offsets (``len + 1`` of them), as a numpy view."""
    import pyarrow as pa

    wide = pa.types.is_large_string(array.type) or pa.types.is_large_binary(array.type)
    offsets = np.frombuffer(array.buffers()[1], np.int64 if wide else np.int32)
    return offsets[array.offset:array.offset + len(array) + 1]


def _hashes(chunk: Chunk) -> np.ndarray:
    """64-bit FNV-1a of each row (the kernel tokenizer.processid_keys calls)."""
    from . import _kmer

    out = np.empty(len(chunk), np.uint64)
    _kmer.hash_strings(chunk.data, chunk.starts, chunk.ends, out)
    return out


def _rows_of(p: Piece) -> int:
    return len(p.array) if p.rows is None else len(p.rows)


def _numpy(values: Any) -> Any:
    """Arrow integers or booleans as numpy; anything else as it is."""
    return values.to_numpy(zero_copy_only=False) if type(values).__module__.startswith("pyarrow") else values
