"""What each option of ``make_loader`` accepts and its default, checked before anything is read.

One table: a wrong type or value is one line naming the option, what it
accepts and what it got (``image_dtype=torch.uint8`` is refused, never served
as float32 images). Options a recipe may set (:mod:`bioscan_io.recipes`) are
None in ``make_loader``'s signature; :func:`resolve` gives each the caller's
value, else the recipe's, else the default written here.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .images import MAX_ROTATE
from .recipes import RECIPES
from .schema import MAX_NUCLEOTIDES, RANKS, BioscanError
from .tasks import TASKS
from .text import CLIBD_TEXT_MAX_LEN
from .tokenizer import DEFAULT_MASK_RATIOS, LABEL_MODES, MAX_K, recipe_thresholds

__all__ = ["Option", "LOADER_OPTIONS", "check_options", "resolve"]


@dataclass(frozen=True)
class Option:
    """An option's kind (``"int"``, ``"bool"``, ``"number"``, ``"choice"``, ``"dict"``, ``"ratios"``: three
    shares summing to 1, ``"any"``: checked where it is used), its bounds or choices, whether None is
    accepted, and the default that stands in for None (:func:`resolve`)."""

    kind: str
    low: float | None = None
    high: float | None = None
    choices: tuple = ()
    optional: bool = False
    default: Any = None

    def accepts(self, value) -> bool:
        if value is None:
            return self.optional
        if self.kind == "any":
            return True
        if self.kind == "ratios":
            return _are_ratios(value)
        if self.kind == "choice":
            return any(value is c or (type(value) is type(c) and value == c) for c in self.choices)
        if self.kind == "dict":
            return isinstance(value, dict)
        if self.kind == "bool":
            return isinstance(value, (bool, np.bool_))
        if isinstance(value, bool) or not isinstance(value, numbers.Integral if self.kind == "int" else numbers.Real):
            return False
        number = float(value)  # an Integral or Real, checked above
        return (self.low is None or number >= self.low) and (self.high is None or number <= self.high)

    def describe(self) -> str:
        if self.kind == "choice":
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        elif self.kind in ("int", "number"):
            noun = "an integer" if self.kind == "int" else "a number"
            bounds = [f">= {self.low:g}" if self.low is not None else "",
                      f"<= {self.high:g}" if self.high is not None else ""]
            text = " ".join([noun, " and ".join(b for b in bounds if b)]).strip()
        else:
            text = {"bool": "True or False", "dict": "a dict",
                    "ratios": "three non-negative numbers (mask, random, keep) summing to 1"}[self.kind]
        return text + (" (or None)" if self.optional else "")


def _are_ratios(value) -> bool:
    try:
        recipe_thresholds(value)  # the tokenizer owns the rule
    except BioscanError:
        return False
    return True


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
    "recipe": Option("choice", choices=tuple(RECIPES), optional=True),
    # Set by a recipe, else these defaults (BarcodeBERT's tokenizer, torchvision's ImageNet-style crops).
    "k": Option("int", low=1, high=MAX_K, default=4),
    "max_len": Option("int", low=0, default=MAX_NUCLEOTIDES),
    "n_as_base": Option("bool", default=False),
    "mask_prob": Option("number", low=0, high=1, default=0.5),
    "mask_ratios": Option("ratios", default=DEFAULT_MASK_RATIOS),
    "label_mode": Option("choice", choices=LABEL_MODES, default="masked"),
    "random_offset": Option("bool", default=False),
    "tokenizer": Option("any", optional=True),
    "token_dtype": Option("choice", choices=(torch.int64, torch.int32)),
    "image_size": Option("int", low=1, default=224),
    "resize": Option("int", low=1, default=256),
    "pre_resize": Option("int", low=1, optional=True),
    "image_dtype": Option("choice", choices=("uint8", "float32")),
    "hflip": Option("bool", default=True), "vflip": Option("bool", default=False),
    "rotate": Option("number", low=0, high=MAX_ROTATE, default=0.0),
    "text_tokenizer": Option("any", optional=True),
    "text_max_len": Option("int", low=1, default=CLIBD_TEXT_MAX_LEN),
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


def resolve(values: dict, recipe: str | None, task: str) -> dict:
    """The options as used: each the caller's value, else the recipe's, else its default here.

    Only None is replaced, so an option the caller sets always wins over the recipe.
    """
    check_options({"recipe": recipe, "task": task})
    unset = {name for name in LOADER_OPTIONS if name in values and values[name] is None}
    chosen = RECIPES[recipe].options_for(task, unset) if recipe is not None else {}
    out = dict(values)
    for name in unset:
        out[name] = chosen.get(name, LOADER_OPTIONS[name].default)
    return out
