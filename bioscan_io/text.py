"""Text tokens for the ``clip`` task: one tokenizer call per batch, inside the workers.

CLIBD tokenizes each sample's "order family genus species" with a BERT
tokenizer in its ``Dataset.__getitem__`` (padding to 20 tokens, truncating
longer text); its own PR #34 found that this slowed loading down. Here the
whole batch's strings go to the tokenizer in one call, in the DataLoader
workers, and the batch carries ``text_input_ids`` and ``text_attention_mask``
(and ``text_token_type_ids`` when the tokenizer gives them) as int64 tensors
of shape ``(batch, max_len)``.

Three kinds of tokenizer are taken, each called the way it is fastest:

* a ``tokenizers.Tokenizer`` (Hugging Face's Rust tokenizer): a copy with
  truncation and padding to ``max_len`` set, then ``encode_batch``;
* a Hugging Face ``transformers`` tokenizer (``AutoTokenizer.from_pretrained``):
  ``tokenizer(texts, padding="max_length", max_length=max_len, truncation=True)``,
  CLIBD's own call;
* any other callable over a list of strings, returning a mapping with
  ``input_ids`` and ``attention_mask`` of one row per string (a rectangular
  array, tensor or list of equal-length lists); ``max_len`` is then the
  callable's business.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .schema import BioscanError

__all__ = ["CLIBD_TEXT_MAX_LEN", "TEXT_FIELDS", "TextTokens"]

#: CLIBD's text length: ``padding="max_length", max_length=20, truncation=True``
#: (bioscan-ml/clibd, bioscanclip/util/dataset.py, ``Dataset_for_CL.__getitem__``).
CLIBD_TEXT_MAX_LEN = 20

#: Tokenizer output -> batch key, in the order the batch holds them.
TEXT_FIELDS = {"input_ids": "text_input_ids", "attention_mask": "text_attention_mask",
               "token_type_ids": "text_token_type_ids"}


def _is_rust_tokenizer(tokenizer: Any) -> bool:
    return all(hasattr(tokenizer, name) for name in ("encode_batch", "enable_padding", "enable_truncation", "to_str"))


def _is_transformers_tokenizer(tokenizer: Any) -> bool:
    return callable(tokenizer) and hasattr(tokenizer, "model_max_length") and hasattr(tokenizer, "pad_token_id")


class TextTokens:
    """A text tokenizer bound to a length, called once per batch of strings.

    Parameters
    ----------
    tokenizer : tokenizers.Tokenizer, transformers tokenizer, or callable
        See the module docstring. It must be picklable to reach DataLoader workers.
    max_len : int, default 20 (:data:`CLIBD_TEXT_MAX_LEN`)
        Tokens per row: longer text is truncated, shorter padded. Not used for a
        plain callable, which decides its own length.
    """

    def __init__(self, tokenizer: Any, max_len: int = CLIBD_TEXT_MAX_LEN):
        self.max_len = int(max_len)
        if _is_rust_tokenizer(tokenizer):
            self.kind = "tokenizers"
            self._call = self._rust(tokenizer)
        elif _is_transformers_tokenizer(tokenizer):
            self.kind = "transformers"
            self._call = self._transformers(tokenizer)
        elif callable(tokenizer):
            self.kind = "callable"
            self._call = tokenizer
        else:
            raise BioscanError("text_tokenizer must be a tokenizers.Tokenizer, a transformers tokenizer or a callable "
                               f"over a list of strings; got {type(tokenizer).__name__}")

    def __repr__(self) -> str:
        return f"TextTokens({self.kind}, max_len={self.max_len})"

    def _rust(self, tokenizer) -> Callable:
        # A copy: padding and truncation are settings of the tokenizer object, and the user's stays as it was.
        from tokenizers import Tokenizer

        own = Tokenizer.from_str(tokenizer.to_str())
        own.enable_truncation(max_length=self.max_len)
        padding = tokenizer.padding or {}
        pad_token = padding.get("pad_token", "[PAD]")
        pad_id = padding.get("pad_id", own.token_to_id(pad_token) or 0)
        own.enable_padding(length=self.max_len, pad_id=pad_id, pad_token=pad_token)
        return _RustCall(own)

    def _transformers(self, tokenizer) -> Callable:
        return _TransformersCall(tokenizer, self.max_len)

    def __call__(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Batch keys (:data:`TEXT_FIELDS`) -> int64 arrays of ``len(texts)`` rows."""
        try:
            got = self._call(list(texts))
        except BioscanError:
            raise
        except Exception as exc:
            raise BioscanError(f"text_tokenizer failed on a batch of {len(texts)} strings "
                               f"(first {texts[0]!r}): {type(exc).__name__}: {exc}") from None
        return self._check(got, len(texts))

    def _check(self, got, n: int) -> dict[str, np.ndarray]:
        if not hasattr(got, "keys") or "input_ids" not in got or "attention_mask" not in got:
            raise BioscanError("text_tokenizer must return a mapping with 'input_ids' and 'attention_mask', "
                               f"got {type(got).__name__}")
        out = {}
        for name, key in TEXT_FIELDS.items():
            if name not in got:
                continue
            value = got[name]
            if hasattr(value, "detach"):  # a torch tensor
                value = value.detach().cpu().numpy()
            try:
                a = np.asarray(value, dtype=np.int64)
            except (TypeError, ValueError):
                raise BioscanError(f"text_tokenizer's {name!r} is not a rectangular integer array "
                                   "(rows of unequal length? pad them)") from None
            if a.ndim != 2 or a.shape[0] != n:
                raise BioscanError(f"text_tokenizer's {name!r} has shape {a.shape}; expected ({n}, length)")
            out[key] = a
        shapes = {a.shape for a in out.values()}
        if len(shapes) != 1:
            raise BioscanError(f"text_tokenizer's outputs differ in shape: {sorted(shapes)}")
        return out

    def nbytes(self, batch_size: int) -> int:
        """Most bytes of a batch's text tokens (all three fields of ``max_len``)."""
        return len(TEXT_FIELDS) * batch_size * self.max_len * 8


# Classes rather than closures: the tokenizer travels to spawned DataLoader workers by pickle.


class _RustCall:
    """``encode_batch`` of a padded, truncated ``tokenizers.Tokenizer``, as a mapping of rows."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, texts: list[str]) -> dict:
        # encode_batch_fast (tokenizers >= 0.20) skips the character offsets: ~15% faster.
        encode = getattr(self.tokenizer, "encode_batch_fast", self.tokenizer.encode_batch)
        encodings = encode(texts, add_special_tokens=True)
        return {
            "input_ids": [e.ids for e in encodings],
            "attention_mask": [e.attention_mask for e in encodings],
            "token_type_ids": [e.type_ids for e in encodings],
        }


class _TransformersCall:
    """CLIBD's call of a ``transformers`` tokenizer, over a whole batch."""

    def __init__(self, tokenizer, max_len: int):
        self.tokenizer, self.max_len = tokenizer, max_len

    def __call__(self, texts: list[str]) -> dict:
        return self.tokenizer(texts, padding="max_length", max_length=self.max_len, truncation=True,
                              return_tensors="np")
