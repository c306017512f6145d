"""Text-image ReID datasets registered in fast-reid's DATASET_REGISTRY: CUHKPEDES, ICFGPEDES, RSTPReid."""

from .base import (
    DatasetFormatError,
    RetrievalSplit,
    TextImageDataset,
    TrainPair,
    check_relative_image_path,
)
from .cuhkpedes import CUHKPEDES
from .icfgpedes import ICFGPEDES
from .rstpreid import RSTPReid

__all__ = [
    "CUHKPEDES",
    "ICFGPEDES",
    "RSTPReid",
    "DatasetFormatError",
    "RetrievalSplit",
    "TextImageDataset",
    "TrainPair",
    "check_relative_image_path",
]
