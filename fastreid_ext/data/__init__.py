"""Data: text-image ReID datasets (CUHK-PEDES, ICFG-PEDES, RSTPReid) and the synthetic data generator."""

from .datasets import (
    CUHKPEDES,
    ICFGPEDES,
    DatasetFormatError,
    RetrievalSplit,
    RSTPReid,
    TextImageDataset,
    TrainPair,
)
from .synthetic import write_synthetic_dataset

__all__ = [
    "CUHKPEDES",
    "ICFGPEDES",
    "RSTPReid",
    "DatasetFormatError",
    "RetrievalSplit",
    "TextImageDataset",
    "TrainPair",
    "write_synthetic_dataset",
]
