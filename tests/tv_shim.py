"""torchvision for the tests (and benchmarks) that compare with it, or a clean skip.

A torchvision wheel is built against one torch; next to another build (this
project's CPU torch beside a CUDA torchvision, say) its import stops at
``operator torchvision::nms does not exist``: the compiled operators did not
load, and registering their fake kernels needs their schemas. Defining the two
schemas and importing again gets past it; the transforms never call them.
Without torchvision the calling test module is skipped with the reason
(:func:`import_torchvision`); :func:`load_torchvision` only makes the import
work, for packages that import torchvision themselves (Lightning).
"""

from __future__ import annotations

import sys

import pytest
import torch

__all__ = ["import_torchvision", "load_torchvision"]

#: The schemas torchvision's fake-kernel registrations need (torchvision/_meta_registrations.py).
_SCHEMAS = {
    "torchvision::nms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "torchvision::qnms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}


def load_torchvision():
    """``torchvision`` imported beside this torch, or None when it is not installed.

    When its compiled operators did not load, the schemas are defined and the
    import tried again (once per process; later calls find it imported). For
    packages that import torchvision themselves (Lightning, through
    torchmetrics): call this first. An import that still fails raises.
    """
    try:
        import torchvision as tv
    except ModuleNotFoundError:
        return None
    except RuntimeError:  # compiled operators missing: define their schemas, import again
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        for name, schema in _SCHEMAS.items():
            try:
                torch.library.define(name, schema)
            except RuntimeError:
                pass  # defined already (by an earlier try)
        import torchvision as tv
    return tv


def import_torchvision():
    """``(torchvision, torchvision.transforms, torchvision.transforms.functional)``; skips the caller without it.

    Call it at a test module's top level (``pytest.importorskip`` style): a
    missing or unusable torchvision skips the module with the reason.
    """
    try:
        tv = load_torchvision()
    except Exception as exc:
        pytest.skip(f"torchvision does not import with this torch: {exc}", allow_module_level=True)
    if tv is None:
        pytest.skip("torchvision is not installed (pip install --no-deps torchvision)", allow_module_level=True)
    import torchvision.transforms as transforms
    import torchvision.transforms.functional as functional

    return tv, transforms, functional
