"""CLIP BPE tokenizer (offline: the vocabulary ships inside ``open_clip_torch``).

A thin wrapper over ``open_clip.tokenizer.SimpleTokenizer`` with the reference
(OpenAI ``clip.tokenize``) conventions: ``[SOS] tokens [EOT] 0 0 ...`` and an
error, not a silent cut, when a text does not fit.
"""
from __future__ import annotations

import functools
from typing import List, Union

import torch
from open_clip.tokenizer import SimpleTokenizer

SOT_TOKEN: int = 49406  # <start_of_text>
EOT_TOKEN: int = 49407  # <end_of_text>; the largest id, so argmax(ids) finds it

__all__ = ["SOT_TOKEN", "EOT_TOKEN", "tokenize", "token_length", "get_tokenizer"]


@functools.lru_cache(maxsize=1)
def get_tokenizer() -> SimpleTokenizer:
    """The shared open_clip BPE tokenizer (built once; reading the vocabulary takes ~0.3 s)."""
    tok = SimpleTokenizer()
    # Guard against a future open_clip changing its special ids under us.
    assert tok.sot_token_id == SOT_TOKEN and tok.eot_token_id == EOT_TOKEN, (
        f"open_clip tokenizer special ids changed: sot={tok.sot_token_id}, eot={tok.eot_token_id}")
    return tok


def tokenize(texts: Union[str, List[str]], context_length: int = 77, truncate: bool = False) -> torch.Tensor:
    """Tokenize ``texts`` into a LongTensor ``[N, context_length]``: SOS, BPE ids, EOT, zero padding.

    Like OpenAI's ``clip.tokenize``, a text longer than ``context_length`` raises unless
    ``truncate=True`` (then it is cut and its last token set to EOT).
    """
    if isinstance(texts, str):
        texts = [texts]
    tok = get_tokenizer()
    out = torch.zeros(len(texts), context_length, dtype=torch.long)
    for i, text in enumerate(texts):
        ids = [SOT_TOKEN] + tok.encode(text) + [EOT_TOKEN]
        if len(ids) > context_length:
            if not truncate:
                raise ValueError(
                    f"text {text!r} has {len(ids)} tokens with SOS/EOT, more than context_length={context_length}; "
                    f"shorten it or call tokenize(..., truncate=True)")
            ids = ids[:context_length]
            ids[-1] = EOT_TOKEN
        out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out


def token_length(text: str) -> int:
    """Number of BPE tokens of ``text`` without SOS/EOT (CoOp's ``name_lens``)."""
    return len(get_tokenizer().encode(text))
