"""How the lines a user reads word counts and filesystem errors (one owner for both).

Every command prints counts (``1 shard``, ``2 shards``) and turns an ``OSError``
into one line naming the path and the cause; both go through these functions so
that every command words them alike.
"""

from __future__ import annotations

import os
import re

__all__ = ["plural", "os_error_text"]


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """A count with its noun in agreement: ``1 shard``, ``0 shards``, ``2,500 samples``.

    Parameters
    ----------
    count : int
        The number (printed with thousands separators).
    noun : str
        The singular.
    nouns : str, optional
        The plural where it is not ``noun + "s"`` (``"indexes"``).

    Returns
    -------
    str
    """
    return f"{count:,} {noun if count == 1 else (nouns or noun + 's')}"


def os_error_text(exc: OSError) -> str:
    """An ``OSError`` as ``PATH: cause`` (``SRC -> DST: cause`` for a rename), on one line.

    Python's own text (``[Errno 13] Permission denied: '/x'``) puts the path last
    and in quotes; the path first reads like the rest of the errors. An error
    that names no path (pyarrow's, a socket's) keeps its cause alone.
    """
    where = [os.fsdecode(p) if isinstance(p, (str, bytes, os.PathLike)) else str(p)
             for p in (exc.filename, exc.filename2) if p is not None]
    if where:
        text = f"{' -> '.join(where)}: {exc.strerror or str(exc)}"
    else:  # pyarrow names the file inside its message: keep all of it
        text = re.sub(r"^\[Errno \d+\] ", "", str(exc)) or exc.strerror or type(exc).__name__
    return " ".join(text.split())  # a cause spanning lines stays one line
