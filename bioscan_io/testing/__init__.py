"""Tools for checking bioscan-io, not used at run time (like :mod:`numpy.testing`).

Nothing in the loader, the tokenizer or the command-line tools imports this
package; tests do, and so may users who want to check the compiled kernels on
their own machine or data.

Modules
-------
oracle
    The slow, obviously-correct pure-Python tokenizer and masking that the
    compiled kernel ``bioscan_io._kmer`` must match bit for bit.
"""

from __future__ import annotations

__all__ = ["oracle"]
