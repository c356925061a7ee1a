"""torchvision for the tests (and benchmarks) that compare with it, or a clean skip.

A torchvision wheel is built against one torch; next to another build (this
project's CPU torch beside a CUDA torchvision, say) its import stops at
``operator torchvision::nms does not exist``: the compiled operators did not
load, and registering their fake kernels needs their schemas. Defining the two
schemas and importing again gets past it; the transforms never call them.
Without torchvision the calling test module is skipped with the reason.
"""

from __future__ import annotations

import sys

import pytest
import torch

__all__ = ["import_torchvision"]

#: The schemas torchvision's fake-kernel registrations need (torchvision/_meta_registrations.py).
_SCHEMAS = {
    "torchvision::nms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "torchvision::qnms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}


def import_torchvision():
    """``(torchvision, torchvision.transforms, torchvision.transforms.functional)``; skips the caller without it.

    Call it at a test module's top level (``pytest.importorskip`` style): a
    missing or unusable torchvision skips the module with the reason.
    """
    try:
        import torchvision as tv
    except ModuleNotFoundError:
        pytest.skip("torchvision is not installed (pip install --no-deps torchvision)", allow_module_level=True)
    except RuntimeError as exc:  # compiled operators missing: define their schemas, import again
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        for name, schema in _SCHEMAS.items():
            try:
                torch.library.define(name, schema)
            except RuntimeError:
                pass  # defined already (by an earlier try)
        try:
            import torchvision as tv
        except Exception as again:
            pytest.skip(f"torchvision does not import with this torch: {exc}; then: {again}", allow_module_level=True)
    import torchvision.transforms as transforms
    import torchvision.transforms.functional as functional

    return tv, transforms, functional
