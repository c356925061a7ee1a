"""The data recipes of the BIOSCAN model family, as ``make_loader`` options.

A recipe is one entry of :data:`RECIPES`: the options a model's training code
uses to tokenize, mask and augment, each with the source it was read from.
``make_loader(urls, task, recipe="clibd")`` takes them as its defaults; any
option the caller passes wins (:func:`bioscan_io.options.resolve`). An option
whose value is an object of an optional package (BarcodeMamba's character
tokenizer needs ``tokenizers``) is built when the recipe is used. A variant
that needs a vocabulary file (BarcodeMAE's BPE tokenizers) is not a recipe: pass
``tokenizer=VocabTokenizer(path)`` with it (README, "Model family").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable

from .schema import BioscanError

__all__ = ["BARCODEMAMBA_CHARS", "Recipe", "RECIPES", "barcodemamba_char_tokenizer"]


@dataclass(frozen=True)
class Recipe:
    """One model's data recipe.

    Attributes
    ----------
    model : str
        The model and its repository.
    tasks : tuple of str
        The ``make_loader`` tasks it applies to.
    options : mapping
        ``make_loader`` option -> value.
    sources : mapping
        ``make_loader`` option -> where the value comes from (file and line, or paper).
    built : mapping
        ``make_loader`` option -> a function of no arguments making its value,
        called by :meth:`options_for` (for objects of optional packages).
    """

    model: str
    tasks: tuple[str, ...]
    options: Mapping[str, Any]
    sources: Mapping[str, str] = field(default_factory=dict)
    built: Mapping[str, Callable[[], Any]] = field(default_factory=dict)

    def __post_init__(self):
        for name in ("options", "sources", "built"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))

    def options_for(self, task: str, wanted=None) -> dict[str, Any]:
        """The options for ``task``; a task the model does not train is refused in one line.

        ``wanted``: the names the caller left to the recipe (default all); a
        ``built`` option is made only when wanted.
        """
        if task not in self.tasks:
            names = ", ".join(repr(t) for t in self.tasks)
            raise BioscanError(f"recipe for {self.model} applies to task {names}, not {task!r}")
        built = {name: make() for name, make in self.built.items() if wanted is None or name in wanted}
        return {**self.options, **built}


#: BarcodeMamba's character vocabulary, in id order (utils/char_tokenizer.py).
BARCODEMAMBA_CHARS = ("[MASK]", "[SEP]", "[UNK]", "A", "C", "G", "T", "N")


def barcodemamba_char_tokenizer(max_len: int = 660):
    """BarcodeMamba's character tokenizer: ids of :data:`BARCODEMAMBA_CHARS`, left-padded with ``N``.

    Needs Hugging Face ``tokenizers`` (``pip install 'bioscan-io[hf]'``).
    """
    from .vocab_tokenizer import VocabTokenizer

    return VocabTokenizer(list(BARCODEMAMBA_CHARS), max_len=max_len, pad_token="N", padding_side="left")


# Sources: the repositories at the commits read for this table (README, "Model family").
_BB = "bioscan-ml/BarcodeBERT@00e4923 "
_MAE = "bioscan-ml/BarcodeMAE@290e39f "
_BM = "bioscan-ml/BarcodeMamba@31054b1 "
_CL = "bioscan-ml/clibd@7d73f80 bioscanclip/util/dataset.py "

#: The recipes by name.
RECIPES: dict[str, Recipe] = {
    "barcodebert": Recipe(
        model="BarcodeBERT (bioscan-ml/BarcodeBERT)",
        tasks=("mlm", "classify", "embed"),
        options={"k": 4, "max_len": 660, "n_as_base": False, "mask_prob": 0.5, "mask_ratios": (1.0, 0.0, 0.0),
                 "label_mode": "barcodebert", "random_offset": True},
        sources={
            "k": _BB + "barcodebert/pretraining.py --k-mer 4, "
                       "scripts/BarcodeBERT/SLURM_pretrain.sh --k-mer 4 --stride 4",
            "max_len": _BB + "barcodebert/pretraining.py --max-len 660",
            "n_as_base": _BB + "barcodebert/pretraining.py --tokenize_n off by default (N k-mers are [UNK])",
            "mask_prob": _BB + "barcodebert/pretraining.py mask_ratios = [0.50]",
            "mask_ratios": _BB + "barcodebert/pretraining.py: every selected position set to [MASK] (id 0)",
            "label_mode": _BB + "barcodebert/pretraining.py: targets = id - 2, loss over every non-special token",
            "random_offset": _BB + "barcodebert/datasets.py: offset = randint(k) in training",
        },
    ),
    "barcodemae": Recipe(
        model="BarcodeMAE (bioscan-ml/BarcodeMAE)",
        tasks=("mlm", "classify", "embed"),
        options={"k": 6, "max_len": 660, "n_as_base": False, "mask_prob": 0.5, "mask_ratios": (1.0, 0.0, 0.0),
                 "label_mode": "masked", "random_offset": True},
        sources={
            "k": _MAE + "barcodebert/pretraining.py --k-mer 6; README --k_mer=6",
            "max_len": _MAE + "barcodebert/pretraining.py --max-len 660",
            "n_as_base": _MAE + "barcodebert/datasets.py (BarcodeBERT's tokenizer: N k-mers are [UNK])",
            "mask_prob": _MAE + "barcodebert/pretraining.py masking ratio 0.50",
            "mask_ratios": _MAE + "barcodebert/pretraining.py --mask_token_ratio 1.0 --random_token_ratio 0",
            "label_mode": _MAE + "barcodebert/pretraining.py --separate_loss: loss on masked positions only",
            "random_offset": _MAE + "barcodebert/datasets.py: offset = randint(k) in training",
        },
    ),
    "barcodemamba": Recipe(
        model="BarcodeMamba (bioscan-ml/BarcodeMamba), character tokenizer",
        tasks=("embed", "classify", "mlm"),
        options={"random_offset": False, "mask_prob": 0.5, "mask_ratios": (1.0, 0.0, 0.0), "label_mode": "masked"},
        built={"tokenizer": barcodemamba_char_tokenizer},
        sources={
            "tokenizer": _BM + "utils/char_tokenizer.py ([MASK] 0, [SEP] 1, [UNK] 2, A C G T N 3-7); "
                         "utils/ssm_dataset.py pad_token 'N', padding_side left, max_length 660",
            "random_offset": _BM + "utils/ssm_dataset.py: the offset range is 1 for characters",
            "mask_prob": _BM + "configs/dataset/*-pretrain.yaml mask_ratio 0.5 (the mlm option; ntp is the default)",
            "mask_ratios": _BM + "utils/ssm_dataset.py: selected positions set to [MASK] (id 0)",
            "label_mode": _BM + "utils/ssm_dataset.py (mlm option): the original ids as targets",
        },
    ),
    "clibd": Recipe(
        model="CLIBD / BIOSCAN-CLIP (bioscan-ml/clibd)",
        tasks=("clip", "classify", "embed"),
        options={"image_size": 224, "resize": 256, "pre_resize": 256, "hflip": True, "vflip": True,
                 "rotate": 45.0, "text_max_len": 20},
        sources={
            "image_size": _CL + "RandomResizedCrop(224) / CenterCrop(224)",
            "resize": _CL + "eval: Resize(size=256) -> CenterCrop(224)",
            "pre_resize": _CL + "train: Resize(size=256) before RandomResizedCrop(224)",
            "hflip": _CL + "RandomHorizontalFlip()",
            "vflip": _CL + "RandomVerticalFlip()",
            "rotate": _CL + "RandomRotation(degrees=(-45, 45)) (torchvision: nearest, fill 0)",
            "text_max_len": _CL + 'language_tokenizer(..., padding="max_length", max_length=20, truncation=True)',
        },
    ),
}
