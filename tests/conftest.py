"""Shared fixtures: datasets made by the project's own generator (bioscan_io.synth)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from bioscan_io import synth

@pytest.fixture(scope="session")
def dataset_5k(tmp_path_factory) -> Path:
    """A generated 5,000-record dataset in the official layout (cropped_256)."""
    root = tmp_path_factory.mktemp("bioscan5k")
    synth.generate(root, n_records=5000, seed=7, workers=2)
    return root


@pytest.fixture(scope="session")
def dataset_small(tmp_path_factory) -> Path:
    """A generated 400-record dataset, for the quick tests."""
    root = tmp_path_factory.mktemp("bioscan400")
    synth.generate(root, n_records=400, seed=3, workers=2)
    return root


def cli(*args: str) -> list[str]:
    """argv running ``bioscan-io`` with this interpreter."""
    return [sys.executable, "-m", "bioscan_io.cli", *args]


def link_copy(src: Path, dst: Path) -> Path:
    """A copy of a dataset root whose files can be changed: images are symlinks to ``src``'s."""
    for dirpath, _, files in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        (dst / rel).mkdir(parents=True, exist_ok=True)
        for name in files:
            if name.endswith(".jpg"):
                os.symlink(Path(dirpath) / name, dst / rel / name)
            else:
                shutil.copyfile(Path(dirpath) / name, dst / rel / name)
    return dst


def private_copy(split: Path, tmp_path: Path) -> Path:
    """A copy of a split folder (and the labels.json beside it) that a test may damage."""
    dst = tmp_path / "shards" / split.name
    shutil.copytree(split, dst)
    shutil.copy(split.parent / "labels.json", dst.parent / "labels.json")
    return dst
