"""bioscan-io: WebDataset shards and fast PyTorch loaders for BIOSCAN-5M.

The public API, imported on first use so that ``import bioscan_io`` stays cheap
(and works before the compiled extensions are built)::

    from bioscan_io import make_loader, KmerTokenizer, shard_split, verify_split

The data path, module by module: ``schema`` (the dataset's facts) ->
``metadata`` + ``sources`` (records and images) -> ``shard`` (plan, write,
describe) -> ``format`` (the shard format) -> ``loader`` + ``tasks`` (epochs,
batches) with ``tokenizer`` / ``vocab_tokenizer``, ``images`` and ``text``
(the per-batch work); ``recipes`` holds the model family's settings;
``splits`` builds the loaders of several splits at once (``make_loaders``), and
``lightning`` wraps them as a Lightning ``BioscanDataModule`` (``[lightning]`` extra).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: Public name -> the module that owns it.
_API = {
    "make_loader": "loader",
    "make_loaders": "splits",
    "BioscanLoader": "loader",
    "KmerTokenizer": "tokenizer",
    "VocabTokenizer": "vocab_tokenizer",
    "RECIPES": "recipes",
    "shard_split": "shard",
    "verify_split": "verify",
    "read_metadata": "metadata",
    "contact_sheet": "peek",
    "split_summary": "summary",
    "export_parquet": "export",
    "BioscanError": "schema",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'bioscan_io' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__():
    return sorted([*globals(), *_API])
