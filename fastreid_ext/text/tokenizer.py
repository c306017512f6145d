"""CLIP BPE tokenizer with IRRA's ``<|mask|>`` token (id 49405) for text-to-image ReID captions."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import regex
import torch
from open_clip.tokenizer import SimpleTokenizer

__all__ = ["SOT_ID", "EOT_ID", "MASK_ID", "VOCAB_SIZE", "MASK_TOKEN", "ClipTokenizer"]

#: ``<start_of_text>`` id of CLIP's vocabulary.
SOT_ID = 49406
#: ``<end_of_text>`` id; the largest id, so ``ids.argmax(-1)`` is the EOT position.
EOT_ID = 49407
#: IRRA's ``<|mask|>``: IRRA drops CLIP's last BPE merge and gives its id (49405) to the mask.
MASK_ID = 49405
#: Rows of CLIP's token embedding.
VOCAB_SIZE = 49408
#: Text shown for :data:`MASK_ID` by :meth:`ClipTokenizer.decode`.
MASK_TOKEN = "<|mask|>"

# CLIP's pre-tokenisation pattern without the alternatives that match the special-token strings,
# so that a caption containing the literal text "<end_of_text>" cannot inject an EOT id.
_WORD_PATTERN = regex.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE
)


@functools.lru_cache(maxsize=1)
def _shared_bpe() -> SimpleTokenizer:
    """The process-wide BPE tables (built once, ~0.5 s), adapted to IRRA's vocabulary.

    * The last merge (the one producing id 49405) is removed, as IRRA does, so no word encodes to
      :data:`MASK_ID`; the id is free for ``<|mask|>``.
    * Special-token strings in captions are tokenised as plain text.
    """
    bpe = SimpleTokenizer(context_length=None, clean="lower")
    if bpe.sot_token_id != SOT_ID or bpe.eot_token_id != EOT_ID or bpe.vocab_size != VOCAB_SIZE:
        raise RuntimeError(
            "open_clip's SimpleTokenizer has an unexpected vocabulary "
            f"(sot={bpe.sot_token_id}, eot={bpe.eot_token_id}, size={bpe.vocab_size}); "
            f"expected sot={SOT_ID}, eot={EOT_ID}, size={VOCAB_SIZE}"
        )
    last_merge = max(bpe.bpe_ranks, key=bpe.bpe_ranks.__getitem__)
    if bpe.encoder["".join(last_merge)] != MASK_ID:
        raise RuntimeError(f"CLIP's last BPE merge {last_merge} does not produce id {MASK_ID}")
    del bpe.bpe_ranks[last_merge]
    bpe.pat = _WORD_PATTERN
    bpe.decoder[MASK_ID] = MASK_TOKEN + "</w>"
    return bpe


class ClipTokenizer:
    """CLIP BPE tokenizer producing IRRA-style fixed-length id sequences.

    A caption becomes ``[SOT] + BPE(caption) + [EOT]`` zero-padded to ``context_length``. Text is
    cleaned as open_clip does (ftfy, HTML unescape, whitespace collapse, lower-casing), so any
    Unicode input is accepted. Over-long sequences are truncated to ``context_length`` with the last
    token forced to EOT, hence ``ids.argmax(-1)`` is always the EOT position.

    The BPE tables are built once per process and shared by every instance; an instance only
    stores ``context_length``, so it pickles cheaply into DataLoader workers.

    Args:
        context_length: length L of every id sequence (>= 2).
    """

    def __init__(self, context_length: int = 77) -> None:
        if isinstance(context_length, bool) or not isinstance(context_length, int):
            raise TypeError(
                f"ClipTokenizer: context_length must be an int, got {type(context_length).__name__}"
            )
        if context_length < 2:
            raise ValueError(
                f"ClipTokenizer: context_length must be >= 2 (room for SOT and EOT), "
                f"got {context_length}"
            )
        self.context_length = context_length
        _shared_bpe()  # pay the construction cost here, not in the first encode

    def _ids(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"ClipTokenizer: caption must be a str, got {type(text).__name__}")
        ids = [SOT_ID, *_shared_bpe().encode(text), EOT_ID]
        if len(ids) > self.context_length:
            ids = ids[: self.context_length]
            ids[-1] = EOT_ID
        return ids + [0] * (self.context_length - len(ids))

    def encode(self, text: str) -> torch.Tensor:
        """Tokenise one caption.

        Args:
            text: the caption (any Unicode; may be empty).

        Returns:
            LongTensor[context_length]: ``[SOT, bpe..., EOT, 0, ...]``.
        """
        return torch.tensor(self._ids(text), dtype=torch.long)

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        """Tokenise one caption or a list of captions.

        Args:
            texts: a caption or a sequence of N captions.

        Returns:
            LongTensor[N, context_length] (N = 1 for a single string).
        """
        if isinstance(texts, str):
            texts = [texts]
        rows = [self._ids(t) for t in texts]
        if not rows:
            return torch.zeros(0, self.context_length, dtype=torch.long)
        return torch.tensor(rows, dtype=torch.long)

    @staticmethod
    def decode(ids: torch.Tensor | Sequence[int]) -> str:
        """Turn an id sequence back into text.

        A leading SOT is skipped and decoding stops at the first EOT (padding after it is ignored);
        :data:`MASK_ID` is shown as ``<|mask|>``.

        Args:
            ids: LongTensor[L] or a sequence of ints.

        Returns:
            The decoded, whitespace-stripped text (lower-case, as cleaned on encoding).
        """
        if isinstance(ids, torch.Tensor):
            if ids.dim() != 1:
                raise ValueError(
                    f"ClipTokenizer.decode: expected a 1-D id tensor, got {ids.dim()}-D"
                )
            ids = ids.tolist()
        ids = [int(i) for i in ids]
        if ids and ids[0] == SOT_ID:
            ids = ids[1:]
        if EOT_ID in ids:
            ids = ids[: ids.index(EOT_ID)]
        bad = [i for i in ids if not 0 <= i < VOCAB_SIZE or i == SOT_ID]
        if bad:
            raise ValueError(f"ClipTokenizer.decode: ids outside the caption vocabulary: {bad[:5]}")
        return _shared_bpe().decode(ids).strip()
