"""Evaluation of cross-modal retrieval: exact text-to-image metrics (R@K, mAP, mINP)."""

from .retrieval_metrics import retrieval_metrics

__all__ = ["retrieval_metrics"]
