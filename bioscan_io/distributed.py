"""Rank and world size, and gathering a batch's rows across ranks without the padding.

Which samples each rank yields is the epoch plan's (:mod:`bioscan_io.plan`):
every rank gets the same number of batches, the last ones padded. With
``pad=False`` the padding rows are marked ``valid=False`` in their batch, and
:func:`all_gather_valid` / :func:`all_gather_valid_objects` gather a batch's
rows from every rank without them: every record exactly once.
"""

from __future__ import annotations

import os

__all__ = ["world_info", "all_gather_valid", "all_gather_valid_objects"]


def world_info() -> tuple[int, int]:
    """``(rank, world_size)``: from torch.distributed when initialised, else the
    environment torchrun sets (``RANK``, ``WORLD_SIZE``), else ``(0, 1)``."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _initialized():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def all_gather_valid(tensor, valid):
    """Every rank's rows of ``tensor`` where ``valid`` is True, concatenated in rank order.

    One collective per call, on every rank alike: call it for every batch (the
    loader gives every rank the same batches, padded with ``valid=False`` rows
    under ``pad=False``), and the result is each record exactly once. Without
    ``torch.distributed`` initialised, the local valid rows.

    Parameters
    ----------
    tensor : torch.Tensor
        ``(batch, ...)`` on the device the process group communicates on.
    valid : torch.Tensor
        ``(batch,)`` bool, the batch's ``valid``.
    """
    import torch

    dist = _initialized()
    valid = valid.to(device=tensor.device, dtype=torch.bool)
    if dist is None:
        return tensor[valid]
    world = dist.get_world_size()
    parts, masks = [torch.empty_like(tensor) for _ in range(world)], [torch.empty_like(valid) for _ in range(world)]
    dist.all_gather(parts, tensor.contiguous())
    dist.all_gather(masks, valid.contiguous())
    return torch.cat([part[mask] for part, mask in zip(parts, masks)])


def all_gather_valid_objects(values: list, valid) -> list:
    """:func:`all_gather_valid` for a list of Python objects (processids)."""
    keep = [v for v, ok in zip(values, valid.tolist()) if ok]
    dist = _initialized()
    if dist is None:
        return keep
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, keep)
    return [v for part in gathered for v in part]
