"""bioscan-io: WebDataset shards and fast PyTorch loaders for BIOSCAN-5M.

Submodules are imported on use, so that ``import bioscan_io`` stays cheap and
works before the compiled extension is built.
"""

__version__ = "0.1.0"
