"""Exportable encoders: one tensor in, one tensor out, around a trained model's own inference.

Each wrapper runs the model exactly as :func:`fastreid_ext.evaluation.features.encode_batch` does
for the evaluator and the inference API (``model(batch)`` in eval mode, then the float32 cast and
the row-wise L2 normalisation of :func:`~fastreid_ext.evaluation.features.retrieval_features`), so
the exported graph computes the features the evaluator ranks with, normalisation included:

* ``image`` (text-image methods): ``images [B, 3, H, W]`` -> ``model({"images"})["image_feats"]``;
* ``text`` (text-image methods): ``token_ids [B, L]`` -> ``model({"caption_ids"})["text_feats"]``;
* ``visible`` / ``infrared`` (visible-infrared methods, e.g. CSDN): ``images [B, 3, H, W]`` ->
  ``model({"images", "modality": [flag] * B})["image_feats"]``: every row goes through that
  modality's path (CSDN: its own stem), as the evaluator encodes a visible or an infrared image.

Images are RGB pixel values in [0, 255] (float32) at ``INPUT.SIZE_TEST``, i.e. the output of the
test transform; the model's ``(x - PIXEL_MEAN) / PIXEL_STD`` runs inside the graph. Token ids are
:class:`~fastreid_ext.text.tokenizer.ClipTokenizer` rows of ``MODEL.CLIP.CONTEXT_LENGTH`` ids (EOT
= the row's largest id).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..evaluation.features import IMAGE_KEY, TEXT_KEY
from ..inference.loading import TEXT_IMAGE, VISIBLE_INFRARED
from ..inference.predictor import MODALITIES, Predictor

__all__ = [
    "ENCODERS",
    "EncoderSpec",
    "ImageEncoder",
    "TextEncoder",
    "check_encoders",
    "check_encoder_names",
    "encoder_spec",
    "build_encoder",
]

#: The encoders each task exports, in order.
ENCODERS: Dict[str, Tuple[str, ...]] = {
    TEXT_IMAGE: ("image", "text"),
    VISIBLE_INFRARED: ("visible", "infrared"),
}
ALL_ENCODERS = tuple(name for names in ENCODERS.values() for name in names)


@dataclass(frozen=True)
class EncoderSpec:
    """What one exported encoder takes and returns.

    Attributes:
        name: ``"image"``, ``"text"``, ``"visible"`` or ``"infrared"``.
        input_name: graph input, ``"images"`` or ``"token_ids"``.
        input_shape: ``(None, 3, H, W)`` or ``(None, L)``; ``None`` is the dynamic batch axis.
        input_dtype: ``torch.float32`` (images) or ``torch.int64`` (token ids).
        modality: ``"visible"`` / ``"infrared"`` for visible-infrared encoders, else ``None``.
        output_name: graph output, ``"features"`` ``[B, D]`` float32, unit L2 norm per row.
    """

    name: str
    input_name: str
    input_shape: Tuple[Optional[int], ...]
    input_dtype: torch.dtype
    modality: Optional[str] = None
    output_name: str = "features"

    @property
    def is_text(self) -> bool:
        return self.input_name == "token_ids"

    def file_stem(self) -> str:
        """Base name of the exported files, e.g. ``image_encoder``."""
        return f"{self.name}_encoder"


def check_encoders(task: str, method: str, names: Optional[Sequence[str]]) -> Tuple[str, ...]:
    """The encoders to export: ``names`` checked against the task's (all of them for ``None``).

    Raises:
        ValueError: an empty list, a repeated name, or a name that is not an encoder of this
            task (the message names the valid choices).
    """
    valid = ENCODERS[task]
    if names is None:
        return valid
    names = tuple(names)
    if not names:
        raise ValueError(f"encoders: none given; {method} ({task}) has {', '.join(valid)}")
    for name in names:
        if name not in valid:
            other = [t for t, n in ENCODERS.items() if name in n]
            why = f"it is a {other[0]} encoder" if other else "unknown encoder"
            raise ValueError(
                f"encoders: '{name}' is not an encoder of {method} ({task}; {why}): "
                f"choose from {', '.join(valid)}"
            )
    if len(set(names)) != len(names):
        raise ValueError(f"encoders: repeated name in {list(names)}")
    return names


def check_encoder_names(names: Optional[Sequence[str]]) -> None:
    """Refuse names that are no task's encoder, before a model is loaded (a config override
    swallowed by the ``--encoders`` list shows up here).

    Raises:
        ValueError: naming the unknown entries and the encoders of each task.
    """
    unknown = [n for n in names or () if n not in ALL_ENCODERS]
    if unknown:
        hint = ""
        if any("." in n for n in unknown):
            hint = "; config overrides after a list option need a '--' before them"
        tasks = "; ".join(f"{', '.join(n)} ({t})" for t, n in ENCODERS.items())
        raise ValueError(f"encoders: unknown {unknown}: choose from {tasks}{hint}")


def encoder_spec(predictor: Predictor, name: str) -> EncoderSpec:
    """The :class:`EncoderSpec` of encoder ``name`` of ``predictor``'s model."""
    check_encoders(predictor.task, predictor.method, [name])
    if name == "text":
        length = int(predictor.cfg.MODEL.CLIP.CONTEXT_LENGTH)
        return EncoderSpec(name, "token_ids", (None, length), torch.int64)
    height, width = (int(n) for n in predictor.cfg.INPUT.SIZE_TEST)
    modality = name if predictor.task == VISIBLE_INFRARED else None
    return EncoderSpec(name, "images", (None, 3, height, width), torch.float32, modality)


class ImageEncoder(nn.Module):
    """``images [B, 3, H, W]`` float32 in [0, 255] -> ``[B, D]`` float32 unit-norm features.

    Args:
        model: a trained meta-architecture (eval mode) with the inference contract
            ``{"images"[, "modality"]} -> {"image_feats" [B, D]}``.
        modality: the modality flag every row carries (visible-infrared methods), or ``None``.
    """

    def __init__(self, model: nn.Module, modality: Optional[int] = None) -> None:
        super().__init__()
        self.model = model
        self.modality = modality
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        batch = {"images": images}
        if self.modality is not None:
            batch["modality"] = torch.full(
                (images.shape[0],), self.modality, dtype=torch.long, device=images.device
            )
        return F.normalize(self.model(batch)[IMAGE_KEY].float(), dim=1)


class TextEncoder(nn.Module):
    """``token_ids [B, L]`` int64 -> ``[B, D]`` float32 unit-norm features (EOT at the row's
    argmax, as :class:`~fastreid_ext.text.tokenizer.ClipTokenizer` writes it).

    Args:
        model: a trained text-image meta-architecture (eval mode) with the inference contract
            ``{"caption_ids"} -> {"text_feats" [B, D]}``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.eval()

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model({"caption_ids": token_ids})[TEXT_KEY].float(), dim=1)


def build_encoder(predictor: Predictor, name: str) -> Tuple[nn.Module, EncoderSpec]:
    """``(wrapper, spec)`` of encoder ``name`` around ``predictor.model`` (shared, not copied)."""
    spec = encoder_spec(predictor, name)
    if spec.is_text:
        return TextEncoder(predictor.model), spec
    flag = MODALITIES[spec.modality] if spec.modality is not None else None
    return ImageEncoder(predictor.model, flag), spec
