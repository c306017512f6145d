"""The one step from a model's inference output to the feature that retrieval ranks with.

Both evaluators (:class:`~fastreid_ext.evaluation.t2i_evaluator.TextImageEvaluator`,
:class:`~fastreid_ext.evaluation.vi_evaluator.VIReIDEvaluator`) and the inference API
(:class:`fastreid_ext.inference.Predictor`) call :func:`retrieval_features` on every batch the
model returns, so a feature written to a gallery index is bit for bit the one the evaluator ranks
(on the same device, batch and input; the inference API's tests assert it).

The step: float32, moved to the CPU, then L2-normalised row by row on the CPU. Ranking by the
inner product of these features is ranking by cosine similarity; for a model whose features have
a constant norm (CSDN's concatenation of L2-normalised parts) it is the same ranking as the raw
inner product.
"""

from __future__ import annotations

from typing import Any, Dict

import torch
import torch.nn.functional as F
from fastreid.evaluation.evaluator import inference_context
from torch import nn

__all__ = ["IMAGE_KEY", "TEXT_KEY", "retrieval_features", "encode_batch"]

#: Inference contract of every meta-architecture: ``{"images"} -> {"image_feats"}``,
#: ``{"caption_ids"} -> {"text_feats"}`` (visible-infrared batches also carry ``"modality"``).
IMAGE_KEY, TEXT_KEY = "image_feats", "text_feats"


def retrieval_features(feats: torch.Tensor) -> torch.Tensor:
    """``[B, D]`` model features -> ``[B, D]`` float32 CPU features with unit L2 norm per row.

    Raises:
        ValueError: ``feats`` is not a 2-D tensor.
    """
    if feats.dim() != 2:
        raise ValueError(f"features must be [B, D], got shape {tuple(feats.shape)}")
    return F.normalize(feats.float().cpu(), dim=1)


def encode_batch(
    model: nn.Module, batch: Dict[str, Any], key: str, autocast_dtype: torch.dtype | None = None
) -> torch.Tensor:
    """:func:`retrieval_features` of ``model(batch)[key]`` with ``model`` in eval mode (restored
    afterwards) and no autograd; ``autocast_dtype`` runs the forward under CUDA autocast."""
    with inference_context(model), torch.no_grad():
        if autocast_dtype is None:
            out = model(batch)
        else:
            with torch.autocast("cuda", dtype=autocast_dtype):
                out = model(batch)
    if key not in out:
        raise KeyError(
            f"{type(model).__name__} returned {sorted(out)} at inference, not '{key}' "
            f"(the inference contract: images -> {IMAGE_KEY}, caption_ids -> {TEXT_KEY})"
        )
    return retrieval_features(out[key])
