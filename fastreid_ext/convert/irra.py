"""IRRA's released ``best.pth`` -> :class:`~fastreid_ext.modeling.meta_arch.ClipTextImageBaseline`.

IRRA (Jiang & Ye, CVPR 2023; github.com/anosorae/IRRA) saves with ``utils/checkpoint.py``
``Checkpointer.save("best", num_epoch=..., iteration=0, epoch=...)``: a dict with ``model`` (the
``IRRA`` module's state dict, a ``module.`` prefix when trained with several GPUs), ``optimizer``,
``scheduler``, ``num_epoch``, ``iteration`` and ``epoch``. ``model/build.py`` casts the model with
``convert_weights`` before training, so every Conv/Linear weight and bias, the attention in-proj,
``visual.proj`` and ``text_projection`` are fp16 and the LayerNorms and embeddings fp32.

Key mapping (no tensor is reshaped: both sides keep packed ``in_proj [3D, D]`` and apply
``proj``/``text_projection`` as ``x @ P``):

* ``base_model.*`` (IRRA's CLIP) -> ``backbone.model.*`` (our open_clip ``CLIP``, OpenAI names);
* ``classifier.*`` -> ``classifier.*`` (present when IRRA trained with the ``id`` loss);
* the MLM branch (``mlm`` loss): ``cross_attn.*``, ``cross_modal_transformer.*``, ``ln_pre_t.*``,
  ``ln_pre_i.*``, ``ln_post.*`` -> ``mlm_head.<same>``, and ``mlm_head.{dense,ln,fc}.*`` ->
  ``mlm_head.mlm_head.{dense,ln,fc}.*`` (our :class:`CrossModalMLMHead` wraps all of them);
* ``backbone.model.logit_scale`` is ours only (IRRA drops CLIP's; our SDM temperature is
  ``MODEL.T2I.SDM_TAU``, the value is unused): taken from OpenAI's ``ViT-B-16.pt``.

The target is ``configs/Baseline/{cuhk,icfg,rstp}.yml`` by the classifier's row count (the
training identities: 11003, 3102, 3701), with ``MODEL.T2I.LOSSES`` following the heads present,
``MODEL.T2I.MLM_DEPTH`` the number of cross-modal blocks and ``MODEL.T2I.MLM_HEADS`` IRRA's
``embed_dim // 64``.
"""

from __future__ import annotations

import json
from typing import Any, List, Optional, Tuple

from .common import (
    ConversionError,
    ConversionReport,
    ReleasedLayout,
    StateDict,
    check_tensors,
    strip_module_prefix,
)

__all__ = ["IRRA_LAYOUT", "IRRA_TOP_LEVEL", "irra_overrides", "unwrap_irra"]

_MLM_PARTS = ("cross_attn", "cross_modal_transformer", "ln_pre_t", "ln_pre_i", "ln_post")

IRRA_LAYOUT = ReleasedLayout(
    name="irra",
    description="IRRA's best.pth: {'model': IRRA state dict, 'optimizer', 'scheduler', ...}",
    signature="base_model.",
    prefix_map=(
        ("base_model.", "backbone.model."),
        ("classifier.", "classifier."),
        *((f"{p}.", f"mlm_head.{p}.") for p in _MLM_PARTS),
        ("mlm_head.", "mlm_head.mlm_head."),
    ),
    from_clip={"backbone.model.logit_scale": "logit_scale"},
    from_target={},
    default_configs={
        11003: "fastreid_ext://Baseline/cuhk.yml",
        3102: "fastreid_ext://Baseline/icfg.yml",
        3701: "fastreid_ext://Baseline/rstp.yml",
    },
)

#: Top-level entries of IRRA's ``best.pth`` other than ``model``, and why none is converted.
IRRA_TOP_LEVEL = {
    "optimizer": "Adam state of IRRA's run (one param group per tensor): not model weights",
    "scheduler": "IRRA's LR-scheduler state: not model weights",
    "num_epoch": "IRRA's run length (recorded in the report)",
    "iteration": "always 0 in IRRA's saves",
    "epoch": "the saved (best) epoch (recorded in the report)",
}


def unwrap_irra(obj: Any, path: str, report: ConversionReport) -> StateDict:
    """The model state dict of an IRRA ``best.pth`` (``module.`` stripped); the other top-level
    entries are recorded as dropped. A plain state dict of IRRA keys is accepted as the model."""
    if not isinstance(obj, dict):
        raise ConversionError(
            f"'{path}' holds a {type(obj).__name__}; IRRA's best.pth is a dict with a 'model' entry"
        )
    if "model" in obj:
        for key in obj:
            if key != "model":
                reason = IRRA_TOP_LEVEL.get(key, "not model weights (unknown top-level entry)")
                report.dropped.append({"key": str(key), "reason": reason})
        for key in ("epoch", "num_epoch"):
            if isinstance(obj.get(key), int):
                report.source_info[key] = obj[key]
        state = check_tensors(obj["model"], path, "its 'model' entry")
    else:
        state = check_tensors(obj, path, "the file (no 'model' entry)")
    state, had_prefix = strip_module_prefix(state, path)
    report.source_info["module_prefix"] = had_prefix
    return state


def _block_count(state: StateDict, prefix: str) -> int:
    """Number of distinct ``<prefix><i>.`` block indices among the keys."""
    return len({k[len(prefix) :].split(".", 1)[0] for k in state if k.startswith(prefix)})


def irra_overrides(state: StateDict) -> Tuple[Optional[int], List[str]]:
    """``(num_classes, overrides)`` for a converted IRRA state (our key names).

    ``MODEL.T2I.LOSSES`` is SDM plus ID when there is a classifier and MLM when there is an MLM
    head; ``num_classes`` is the classifier's row count (None without a classifier).
    """
    losses = ["SDM"]
    overrides: List[str] = []
    num_classes = None
    if "classifier.weight" in state:
        losses.append("ID")
        num_classes = int(state["classifier.weight"].shape[0])
        overrides += ["MODEL.HEADS.NUM_CLASSES", str(num_classes)]
    if any(k.startswith("mlm_head.") for k in state):
        losses.append("MLM")
        width_key = "mlm_head.ln_post.weight"
        if width_key not in state:
            raise ConversionError(f"IRRA MLM branch without '{width_key[len('mlm_head.') :]}'")
        width = int(state[width_key].shape[0])
        depth = _block_count(state, "mlm_head.cross_modal_transformer.resblocks.")
        # IRRA's model/build.py: heads = embed_dim // 64 for the cross-attention and the blocks
        overrides += ["MODEL.T2I.MLM_DEPTH", str(depth)]
        overrides += ["MODEL.T2I.MLM_HEADS", str(max(1, width // 64))]
    overrides = ["MODEL.T2I.LOSSES", json.dumps(losses)] + overrides
    return num_classes, overrides
