"""Synthetic pedestrians with attribute captions, written in CUHK-PEDES / ICFG-PEDES / RSTPReid format."""

from .attributes import ATTRIBUTE_SPACE_SIZE, PersonAttributes, sample_identity_attributes
from .captions import caption_tokens, describe_person
from .render import encode_jpeg, render_person
from .writers import FORMATS, identity_attributes, split_identity_counts, write_synthetic_dataset

__all__ = [
    "ATTRIBUTE_SPACE_SIZE",
    "FORMATS",
    "PersonAttributes",
    "caption_tokens",
    "describe_person",
    "encode_jpeg",
    "identity_attributes",
    "render_person",
    "sample_identity_attributes",
    "split_identity_counts",
    "write_synthetic_dataset",
]
