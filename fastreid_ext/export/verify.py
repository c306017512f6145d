"""Verification of exported encoders against the PyTorch model on random inputs.

The reference is the inference API's own computation (:class:`~fastreid_ext.inference.Predictor`:
``encode_images`` for images, :func:`~fastreid_ext.evaluation.features.encode_batch` of the token
ids for texts), i.e. the features the evaluator ranks with. An exported file passes at a batch
size when its output has the reference's shape, is finite and differs from it by at most
``atol`` (max absolute difference over all entries).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Sequence

import torch

from ..evaluation.features import TEXT_KEY, encode_batch
from ..inference.predictor import Predictor
from ..text.tokenizer import EOT_ID, MASK_ID, SOT_ID
from .wrappers import EncoderSpec

__all__ = [
    "Check",
    "random_images",
    "random_token_ids",
    "random_inputs",
    "reference_features",
    "compare",
    "pick_trace_batch",
    "check_batch_sizes",
]


@dataclass
class Check:
    """One comparison: ``encoder`` in ``format`` at ``batch`` rows against the PyTorch model."""

    encoder: str
    format: str
    batch: int
    max_abs_diff: float
    ok: bool
    error: str = ""

    def as_dict(self) -> Dict[str, object]:
        """JSON-ready: an infinite difference (the file did not run) is ``None``."""
        out = asdict(self)
        if out["max_abs_diff"] == float("inf"):
            out["max_abs_diff"] = None
        if not self.error:
            out.pop("error")
        return out


def random_images(batch: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """``[batch, 3, height, width]`` float32 pixel values uniform in [0, 255)."""
    return torch.rand((batch, 3, height, width), generator=generator) * 255.0


def random_token_ids(batch: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """``[batch, length]`` int64 rows shaped like :class:`ClipTokenizer` output: SOT, ``n``
    random BPE ids (``n`` uniform in ``[0, length - 2]``, so the EOT position varies), EOT, then
    zero padding."""
    ids = torch.zeros((batch, length), dtype=torch.long)
    lengths = torch.randint(0, length - 1, (batch,), generator=generator)
    words = torch.randint(1, MASK_ID, (batch, length), generator=generator)
    for row, n in enumerate(lengths.tolist()):
        ids[row, 0] = SOT_ID
        ids[row, 1 : 1 + n] = words[row, :n]
        ids[row, 1 + n] = EOT_ID
    return ids


def random_inputs(spec: EncoderSpec, batch: int, generator: torch.Generator) -> torch.Tensor:
    """Random inputs of encoder ``spec`` with ``batch`` rows."""
    if spec.is_text:
        return random_token_ids(batch, int(spec.input_shape[1]), generator)
    _, _, height, width = spec.input_shape
    return random_images(batch, int(height), int(width), generator)


def reference_features(predictor: Predictor, spec: EncoderSpec, inputs: torch.Tensor):
    """``[B, D]`` features of ``inputs`` as the inference API computes them (float32, CPU)."""
    if spec.is_text:
        return encode_batch(predictor.model, {"caption_ids": inputs}, TEXT_KEY)
    return predictor.encode_images(
        inputs, modality=spec.modality, batch_size=inputs.shape[0], progress=False
    )


def compare(
    spec: EncoderSpec,
    fmt: str,
    run: Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    reference: torch.Tensor,
    atol: float,
) -> Check:
    """Run ``run(inputs)`` and compare it with ``reference``; errors become a failed check."""
    batch = int(inputs.shape[0])
    try:
        out = run(inputs).float()
    except Exception as exc:  # a runtime that refuses the batch is a failed check, not a crash
        return Check(spec.name, fmt, batch, float("inf"), False, f"{type(exc).__name__}: {exc}")
    if out.shape != reference.shape:
        error = f"output shape {tuple(out.shape)} != reference {tuple(reference.shape)}"
        return Check(spec.name, fmt, batch, float("inf"), False, error)
    if not torch.isfinite(out).all():
        return Check(spec.name, fmt, batch, float("inf"), False, "non-finite output")
    diff = float((out - reference).abs().max())
    return Check(spec.name, fmt, batch, diff, diff <= atol)


def pick_trace_batch(batch_sizes: Sequence[int]) -> int:
    """The batch size the graphs are traced at: the smallest integer >= 2 that is not one of the
    verified ``batch_sizes`` (so the verification proves the batch axis is dynamic; a batch of
    1 is avoided because a trace at 1 can hide broadcasting over the batch)."""
    used = set(batch_sizes)
    batch = 2
    while batch in used:
        batch += 1
    return batch


def check_batch_sizes(batch_sizes: Sequence[int]) -> List[int]:
    """The verified batch sizes, each >= 1, without repeats, in the given order.

    Raises:
        ValueError: none, a size < 1, or a repeated size.
    """
    sizes = [int(b) for b in batch_sizes]
    if not sizes:
        raise ValueError("batch_sizes: give at least one batch size to verify")
    bad = [b for b in sizes if b < 1]
    if bad:
        raise ValueError(f"batch_sizes: every size must be >= 1, got {bad}")
    if len(set(sizes)) != len(sizes):
        raise ValueError(f"batch_sizes: repeated size in {sizes}")
    return sizes
