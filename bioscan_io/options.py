"""What each option of ``make_loader`` accepts, checked before anything is read.

One table: a wrong type or value is one line naming the option, what it
accepts and what it got (``image_dtype=torch.uint8`` is refused, never served
as float32 images).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np
import torch

from .schema import RANKS, BioscanError
from .tasks import TASKS
from .tokenizer import LABEL_MODES, MAX_K

__all__ = ["Option", "LOADER_OPTIONS", "check_options"]


@dataclass(frozen=True)
class Option:
    """An option's kind (``"int"``, ``"bool"``, ``"number"``, ``"choice"``, ``"dict"``), its bounds or choices,
    and whether None is accepted (the option's "default" value)."""

    kind: str
    low: float | None = None
    high: float | None = None
    choices: tuple = ()
    optional: bool = False

    def accepts(self, value) -> bool:
        if value is None:
            return self.optional
        if self.kind == "choice":
            return any(value is c or (type(value) is type(c) and value == c) for c in self.choices)
        if self.kind == "dict":
            return isinstance(value, dict)
        if self.kind == "bool":
            return isinstance(value, (bool, np.bool_))
        if isinstance(value, bool) or not isinstance(value, numbers.Integral if self.kind == "int" else numbers.Real):
            return False
        return (self.low is None or value >= self.low) and (self.high is None or value <= self.high)

    def describe(self) -> str:
        if self.kind == "choice":
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        elif self.kind in ("int", "number"):
            noun = "an integer" if self.kind == "int" else "a number"
            bounds = [f">= {self.low:g}" if self.low is not None else "", f"<= {self.high:g}" if self.high is not None else ""]
            text = " ".join([noun, " and ".join(b for b in bounds if b)]).strip()
        else:
            text = {"bool": "True or False", "dict": "a dict"}[self.kind]
        return text + (" (or None)" if self.optional else "")


_FLAG, _MAYBE_FLAG = Option("bool"), Option("bool", optional=True)

#: make_loader's options and what each accepts (``modality`` is checked by ``tasks.choose_modalities``).
LOADER_OPTIONS = {
    "task": Option("choice", choices=tuple(TASKS)),
    "batch_size": Option("int", low=1),
    "num_workers": Option("int", low=0),
    "seed": Option("int", low=0),
    "epoch": Option("int", low=0),
    "train": _MAYBE_FLAG, "shuffle": _MAYBE_FLAG, "pad": _MAYBE_FLAG, "drop_last": _FLAG,
    "shuffle_buffer": Option("int", low=1, optional=True),
    "rank": Option("int", low=0, optional=True),
    "world_size": Option("int", low=1, optional=True),
    "label_rank": Option("choice", choices=RANKS),
    "k": Option("int", low=1, high=MAX_K),
    "max_len": Option("int", low=0),
    "n_as_base": _FLAG,
    "mask_prob": Option("number", low=0, high=1),
    "label_mode": Option("choice", choices=LABEL_MODES),
    "random_offset": _FLAG,
    "token_dtype": Option("choice", choices=(torch.int64, torch.int32)),
    "image_size": Option("int", low=1),
    "resize": Option("int", low=1),
    "image_dtype": Option("choice", choices=("uint8", "float32")),
    "hflip": _FLAG, "vflip": _FLAG,
    "pin_memory": _MAYBE_FLAG, "persistent_workers": _MAYBE_FLAG,
    "prefetch_factor": Option("int", low=1, optional=True),
    "on_error": Option("choice", choices=("raise", "skip")),
    "check_sha256": _FLAG,
    "storage_options": Option("dict", optional=True),
}


def check_options(values: dict, table: dict = LOADER_OPTIONS, who: str = "make_loader") -> None:
    """Raise a one-line BioscanError for the first of ``values`` its ``table`` entry does not accept."""
    for name, option in table.items():
        if name in values and not option.accepts(values[name]):
            raise BioscanError(f"{who}: {name} must be {option.describe()}; got {values[name]!r}")
