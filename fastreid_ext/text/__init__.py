"""Caption tokenisation (CLIP BPE) and IRRA masked-language-modelling inputs."""

from .mlm import MLM_IGNORE_INDEX, mask_tokens
from .tokenizer import EOT_ID, MASK_ID, MASK_TOKEN, SOT_ID, VOCAB_SIZE, ClipTokenizer

__all__ = [
    "ClipTokenizer",
    "EOT_ID",
    "MASK_ID",
    "MASK_TOKEN",
    "MLM_IGNORE_INDEX",
    "SOT_ID",
    "VOCAB_SIZE",
    "mask_tokens",
]
