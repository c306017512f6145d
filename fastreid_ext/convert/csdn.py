"""CSDN's released ``model_<epoch>.pth`` -> the ``CSDN`` meta-architecture (``projects/CSDN``).

CSDN (Yu et al., TMM 2025; github.com/nengdong96/CSDN) saves in ``core/base.py`` ``save_model``
``torch.save(self.model.state_dict())`` of the network wrapped in ``nn.DataParallel``: one flat
fp32 state dict whose keys all start with ``module.``; no optimizer, no epoch field. Its
``network/model.py`` ``Model`` holds the visible / infrared ResNet stems ``image_encoder1/2``
(``Sequential(conv1, bn1, conv2, bn2, conv3, bn3, relu, avgpool)``: one ReLU, after bn3), the
shared ``image_encoder`` (CLIP layer1..4, last stride 1) and ``attnpool``, the heads
``classifier`` (GeM ``GEM.p``, ``BN``, bias-free ``classifier``) and ``classifier2`` (``BN``,
``classifier``), the prompt learners ``prompt_learner1/2`` (``cls_ctx`` and the buffers
``token_prefix [1, 5, W]``, ``token_suffix [1, 68, W]``: the template's word embeddings), the
frozen ``text_encoder`` (CLIP's text transformer without ``token_embedding``) and the SII
``attention_fusion``.

This module is data and small functions only (it does not import the ``csdn`` project): the model
is built by name through the registries from ``configs/CSDN/{sysu,regdb}.yml``. The converted
model needs the stem quirk ``MODEL.CSDN.QUIRKS.STEM_SINGLE_RELU True`` (the authors' stems keep
one ReLU of CLIP's three, and the Sequential indices 0..7 match only then), two prompt learners
(``MSPL.ENABLED``), the authors' single-key SII, the flipped-image test feature (``TEST_FLIP``)
and the last-stride-1 RN50 (``MODEL.CLIP.RN_LAST_STRIDE_1``, attention-pool grid 18 x 9 at
288 x 144).
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

import torch

from .common import (
    ConversionError,
    ConversionReport,
    ReleasedLayout,
    StateDict,
    check_tensors,
    strip_module_prefix,
)

__all__ = [
    "CSDN_LAYOUT",
    "CSDN_QUIRK_OVERRIDES",
    "adapt_csdn_prompts",
    "check_csdn_prompt_embeddings",
    "csdn_overrides",
    "unwrap_csdn",
]

CSDN_LAYOUT = ReleasedLayout(
    name="csdn",
    description="CSDN's model_<epoch>.pth: a flat nn.DataParallel state dict ('module.' keys)",
    signature="image_encoder1.",
    prefix_map=(
        ("image_encoder1.", "image_encoder.stems.0."),
        ("image_encoder2.", "image_encoder.stems.1."),
        ("image_encoder.", "image_encoder.trunk."),
        ("attnpool.", "image_encoder.attnpool."),
        ("classifier.GEM.", "head_gem.pool."),
        ("classifier.BN.", "head_gem.bn."),
        ("classifier.classifier.", "head_gem.classifier."),
        ("classifier2.BN.", "head_proj.bn."),
        ("classifier2.classifier.", "head_proj.classifier."),
        ("prompt_learner1.", "prompt_learners.0."),
        ("prompt_learner2.", "prompt_learners.1."),
        ("text_encoder.", "text_encoder.model."),
        ("attention_fusion.embedding_q.", "fusion.query."),
        ("attention_fusion.embedding_k.", "fusion.key."),
        ("attention_fusion.embedding_v.", "fusion.value."),
        ("attention_fusion.embedding_common.0.", "fusion.common."),
    ),
    from_clip={
        "text_encoder.model.token_embedding.weight": "token_embedding.weight",
        "text_encoder.model.logit_scale": "logit_scale",
    },
    from_target={
        "prompt_learners.0.template_ids": "the tokenized MODEL.CSDN.MSPL.TEMPLATE (a constant)",
        "prompt_learners.1.template_ids": "the tokenized MODEL.CSDN.MSPL.TEMPLATE (a constant)",
        "text_bank_visible": "phase-3 training targets, zeros (unused at evaluation; the "
        "trainer computes them after phase 2)",
        "text_bank_infrared": "phase-3 training targets, zeros (unused at evaluation; the "
        "trainer computes them after phase 2)",
    },
    default_configs={
        395: "fastreid_ext://CSDN/sysu.yml",
        206: "fastreid_ext://CSDN/regdb.yml",
    },
)

#: The config values the authors' network has (``KEY VALUE`` pairs, see the module docstring).
CSDN_QUIRK_OVERRIDES = (
    "MODEL.CLIP.RN_LAST_STRIDE_1",
    "True",
    "MODEL.CSDN.QUIRKS.STEM_SINGLE_RELU",
    "True",
    "MODEL.CSDN.MSPL.ENABLED",
    "True",
    "MODEL.CSDN.SII.ENABLED",
    "True",
    "MODEL.CSDN.SII.NAME",
    "single_key",
    "MODEL.CSDN.TEST_FLIP",
    "True",
)

# Largest |difference| tolerated between CSDN's prompt buffers and the CLIP token embedding of
# the template (the buffers are that embedding, never trained; 1e-4 covers an fp16 copy).
_PROMPT_ATOL = 1e-4


def unwrap_csdn(obj: Any, path: str, report: ConversionReport) -> StateDict:
    """The state dict of a CSDN ``model_<epoch>.pth`` with ``module.`` stripped."""
    if not isinstance(obj, dict):
        raise ConversionError(f"'{path}' holds a {type(obj).__name__}, not CSDN's state dict")
    if isinstance(obj.get("model"), dict):
        raise ConversionError(
            f"'{path}' has a 'model' entry; CSDN's model_<epoch>.pth is a flat state dict "
            "(torch.save(model.state_dict())): is this an IRRA or a fastreid-ext checkpoint?"
        )
    state, had_prefix = strip_module_prefix(check_tensors(obj, path, "the file"), path)
    report.source_info["module_prefix"] = had_prefix
    if not had_prefix:
        report.warnings.append(
            "the keys have no 'module.' prefix (CSDN saves through nn.DataParallel, so its "
            "files have it); converted as the same layout"
        )
    return state


def csdn_overrides(state: StateDict) -> Tuple[Optional[int], List[str]]:
    """``(num_classes, overrides)`` of a converted CSDN state (our key names): the class count
    is the rows of the projected head's classifier, plus :data:`CSDN_QUIRK_OVERRIDES`."""
    key = "head_proj.classifier.weight"
    if key not in state:
        raise ConversionError(f"CSDN checkpoint without 'classifier2.classifier.weight' ({key})")
    num_classes = int(state[key].shape[0])
    return num_classes, ["MODEL.HEADS.NUM_CLASSES", str(num_classes), *CSDN_QUIRK_OVERRIDES]


def adapt_csdn_prompts(
    state: StateDict, target: StateDict, report: ConversionReport, path: str
) -> StateDict:
    """CSDN's prompt buffers ``[1, L, W]`` (the whole 77-token template) -> ours ``[S, W]``.

    Ours keep the template only up to EOT: ``token_prefix`` = SOT "a photo of a" (5 rows, as
    CSDN's), ``token_suffix`` = "person", ".", EOT (3 rows; CSDN's 68 rows go on with padding).
    Both are the first ``S`` rows of CSDN's buffer, ``S`` read from the target model.
    """
    out = dict(state)
    for i in (0, 1):
        for name in ("token_prefix", "token_suffix"):
            key = f"prompt_learners.{i}.{name}"
            if key not in out or key not in target:
                continue
            src, want = out[key], tuple(target[key].shape)
            if src.dim() != 3 or src.shape[0] != 1 or src.shape[2] != want[1]:
                raise ConversionError(
                    f"'{path}': prompt_learner{i + 1}.{name} has shape {tuple(src.shape)}, "
                    f"expected [1, L, {want[1]}] (CSDN's template embeddings)"
                )
            if src.shape[1] < want[0]:
                raise ConversionError(
                    f"'{path}': prompt_learner{i + 1}.{name} has {src.shape[1]} rows, the "
                    f"target's template needs {want[0]} (MODEL.CSDN.MSPL.TEMPLATE)"
                )
            out[key] = src[0, : want[0]].clone()
            how = "first row" if name == "token_prefix" else f"first {want[0]} rows, up to EOT"
            report.reshaped.append(
                {"key": key, "from": list(src.shape), "to": list(want), "how": how}
            )
    return out


def check_csdn_prompt_embeddings(state: StateDict, path: str, clip_path: str) -> None:
    """CSDN derives its prompt buffers from CLIP's token embedding and never trains them, so the
    CLIP file's embedding of our tokenized template must reproduce them: an error otherwise (a
    wrong CLIP file, or a MODEL.CSDN.MSPL.TEMPLATE other than the authors')."""
    emb = state["text_encoder.model.token_embedding.weight"]
    for i in (0, 1):
        p = f"prompt_learners.{i}."
        if p + "template_ids" not in state:
            continue
        ids = state[p + "template_ids"]
        prefix, suffix = state[p + "token_prefix"], state[p + "token_suffix"]
        expect = torch.cat([emb[ids[: prefix.shape[0]]], emb[ids[ids.numel() - suffix.shape[0] :]]])
        diff = (expect - torch.cat([prefix, suffix])).abs().max().item()
        if diff > _PROMPT_ATOL:
            raise ConversionError(
                f"'{path}': prompt_learner{i + 1}'s template embeddings differ from the token "
                f"embedding of --clip-weights '{clip_path}' (max |diff| {diff:.3g}): pass the "
                "RN50.pt CSDN was trained from and keep MODEL.CSDN.MSPL.TEMPLATE at the "
                "authors' 'A photo of a X X X X person.'"
            )
