"""Feature extraction over a test loader with progress, feeding a fast-reid style evaluator."""

from __future__ import annotations

from typing import Any, Iterable

import torch
from fastreid.evaluation.evaluator import inference_context

from ..utils.progress import progress

__all__ = ["run_inference"]


def run_inference(
    model: torch.nn.Module, data_loader: Iterable, evaluator: Any, desc: str = "Inference"
) -> Any:
    """Run ``model`` in eval mode over ``data_loader``; ``evaluator.process(inputs, outputs)`` per
    batch, then return ``evaluator.evaluate()`` (a dict on the main process, ``{}`` elsewhere)."""
    evaluator.reset()
    with inference_context(model), torch.no_grad():
        for inputs in progress(data_loader, desc):
            outputs = model(inputs)
            evaluator.process(inputs, outputs)
    return evaluator.evaluate()
