"""``convert_checkpoint``: a released IRRA / CSDN checkpoint -> a fastreid_ext checkpoint.

Steps: read the source (``weights_only=True``), recognise a file given with the wrong format,
unwrap it (``module.`` stripped, non-model entries dropped with a reason), rename by the layout's
prefix table, cast to float32, derive the class count and the config overrides, build the target
model from its config, adapt reshaped buffers, check every key and shape against the target, fill
the keys the authors do not save (from the CLIP file or the target's config constants), and write
``{"model": state, "model_info": {...}, "conversion": {...}}`` atomically with the report next to it
(``<DST stem>.json``).
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..engine.checkpoint import MODEL_INFO_KEY, build_model_info
from ..utils.atomic_io import atomic_json_dump, atomic_torch_save
from .common import (
    OPENAI_CLIP,
    Adapter,
    ConversionError,
    ConversionReport,
    ReleasedLayout,
    StateDict,
    load_source,
    read_clip_entries,
    rename_keys,
    sha256_file,
    show_keys,
    to_float32,
)
from .csdn import (
    CSDN_LAYOUT,
    adapt_csdn_prompts,
    check_csdn_prompt_embeddings,
    csdn_overrides,
    unwrap_csdn,
)
from .irra import IRRA_LAYOUT, irra_overrides, unwrap_irra
from .target import build_target, check_against_target, training_only_keys

__all__ = [
    "FORMATS",
    "Converted",
    "FormatSpec",
    "convert_checkpoint",
    "eval_command",
    "report_path",
    "save_converted",
]


@dataclass(frozen=True)
class FormatSpec:
    """A released format: its layout (data) and the steps that differ between formats."""

    layout: ReleasedLayout
    unwrap: Callable[[Any, str, ConversionReport], StateDict]
    overrides: Callable[[StateDict], Tuple[Optional[int], List[str]]]
    adapt: Optional[Adapter] = None
    check_clip: Optional[Callable[[StateDict, str, str], None]] = None


FORMATS: Dict[str, FormatSpec] = {
    "irra": FormatSpec(IRRA_LAYOUT, unwrap_irra, irra_overrides),
    "csdn": FormatSpec(
        CSDN_LAYOUT, unwrap_csdn, csdn_overrides, adapt_csdn_prompts, check_csdn_prompt_embeddings
    ),
}


@dataclass
class Converted:
    """A conversion's result: the float32 state dict (our key names), the report, and the
    ``"model_info"`` entry that lets ``--eval-only`` rebuild the model without the training set
    (:func:`~fastreid_ext.engine.checkpoint.build_model_info` of the target config)."""

    state: StateDict
    report: ConversionReport
    model_info: Dict[str, Any]


# Key prefixes of checkpoints this project writes (a file that needs no conversion).
_OURS = ("backbone.model.", "image_encoder.stems.")


def _model_keys(obj: Any) -> List[str]:
    """Key names of the state dict inside ``obj`` (``model`` entry or flat), ``module.`` off."""
    state = obj.get("model", obj) if isinstance(obj, dict) else {}
    state = state if isinstance(state, dict) else {}
    return [str(k).removeprefix("module.") for k in state]


def _check_format(obj: Any, fmt: str, path: str) -> None:
    """An error when ``obj`` is recognisably another format than ``fmt``."""
    keys = _model_keys(obj)
    if any(k.startswith(_OURS) for k in keys):
        raise ConversionError(
            f"'{path}' is already a fastreid-ext checkpoint: evaluate it with MODEL.WEIGHTS"
        )
    for name, spec in FORMATS.items():
        sig = spec.layout.signature
        if name != fmt and any(k.startswith(sig) for k in keys):
            raise ConversionError(
                f"'{path}' looks like a {name} checkpoint ({sig}* keys), not {fmt}: "
                f"use --from {name}"
            )


def _target_config(layout: ReleasedLayout, num_classes: Optional[int], path: str) -> str:
    config = layout.default_configs.get(num_classes or -1)
    if config is None:
        known = ", ".join(f"{n} -> {c}" for n, c in layout.default_configs.items())
        raise ConversionError(
            f"'{path}': cannot tell the target config from {num_classes} classes (known: "
            f"{known}); pass --config-file"
        )
    return config


def _fill(
    state: StateDict,
    target: StateDict,
    model: Any,
    spec: FormatSpec,
    clip_weights: Optional[str],
    inference_only: bool,
    report: ConversionReport,
    path: str,
) -> StateDict:
    """Add the target keys the source lacks: config constants from the target model, the rest
    from the CLIP file; what remains missing is an error (training-only keys may be left out
    with ``inference_only``)."""
    layout = spec.layout
    missing = [k for k in target if k not in state]
    optional = set(training_only_keys(model, missing)) if inference_only else set()
    out = dict(state)
    for key in missing:
        if key in layout.from_target and key not in optional:
            out[key] = target[key].detach().clone()
            report.filled.append(
                {"key": key, "source": "the target config", "reason": layout.from_target[key]}
            )
    need_clip = [k for k in missing if k in layout.from_clip and k not in optional]
    if need_clip:
        if not clip_weights:
            raise ConversionError(
                f"'{path}': the {layout.name} checkpoint has no {show_keys(need_clip)}, which "
                "the target needs: pass --clip-weights with OpenAI's CLIP file"
            )
        clip = read_clip_entries(clip_weights, [layout.from_clip[k] for k in need_clip])
        for key in need_clip:
            value = clip[layout.from_clip[key]]
            if tuple(value.shape) != tuple(target[key].shape):
                raise ConversionError(
                    f"--clip-weights '{clip_weights}': {layout.from_clip[key]} has shape "
                    f"{tuple(value.shape)}, the target's {key} {tuple(target[key].shape)}: "
                    "not the CLIP architecture of the target config"
                )
            out[key] = value.contiguous()
            report.filled.append(
                {
                    "key": key,
                    "source": f"CLIP {layout.from_clip[key]}",
                    "reason": f"not saved by {layout.name}",
                }
            )
    still = [k for k in target if k not in out and k not in optional]
    if still:
        raise ConversionError(
            f"'{path}': {len(still)} key(s) of the target model are missing: {show_keys(still)}"
        )
    return out


def _record_clip(report: ConversionReport, clip_weights: str, arch: str) -> None:
    digest = sha256_file(clip_weights)
    release = OPENAI_CLIP.get(arch)
    report.clip_weights = {"path": os.path.abspath(clip_weights), "sha256": digest}
    if release is not None and digest != release.sha256:
        report.warnings.append(
            f"--clip-weights is not OpenAI's {release.file_name} (SHA-256 {digest[:12]}..., "
            f"expected {release.sha256[:12]}...); keys filled from it: "
            + ", ".join(f["key"] for f in report.filled if f["source"].startswith("CLIP"))
        )


def convert_checkpoint(
    fmt: str,
    src: str,
    clip_weights: Optional[str] = None,
    config_file: Optional[str] = None,
    opts: Sequence[str] = (),
    inference_only: bool = False,
) -> Converted:
    """Convert the released checkpoint ``src`` of format ``fmt`` (``"irra"`` or ``"csdn"``).

    Args:
        clip_weights: OpenAI's CLIP file (``ViT-B-16.pt`` / ``RN50.pt``), for the keys the authors
            do not save; optional when none of those is needed (CSDN with ``inference_only``).
        config_file: the target config; default: by the checkpoint's class count
            (``layout.default_configs``).
        opts: extra ``KEY VALUE`` config overrides (after the ones the conversion needs).
        inference_only: leave out the target's training-only keys (classifier, MLM head,
            prompts, ...); the file then loads for evaluation only.

    Returns:
        The state, report and model info (:class:`Converted`), not yet written.
    """
    if fmt not in FORMATS:
        raise ConversionError(f"unknown format '{fmt}': choose one of {sorted(FORMATS)}")
    spec = FORMATS[fmt]
    report = ConversionReport(source_format=fmt, source=os.path.abspath(src))
    obj = load_source(src)
    _check_format(obj, fmt, src)
    state = spec.unwrap(obj, src, report)
    del obj
    report.source_sha256 = sha256_file(src)
    state, report.renamed = rename_keys(state, spec.layout, src)
    state, report.cast_to_float32 = to_float32(state)
    num_classes, overrides = spec.overrides(state)
    config = config_file or _target_config(spec.layout, num_classes, src)
    cfg, model = build_target(config, [*overrides, *opts])
    target = model.state_dict()
    if spec.adapt is not None:
        state = spec.adapt(state, target, report, src)
    check_against_target(state, target, src, config, [*overrides, *opts])
    state = _fill(state, target, model, spec, clip_weights, inference_only, report, src)
    if inference_only:
        report.omitted = training_only_keys(model, list(state))
        omit = set(report.omitted)
        state = {k: v for k, v in state.items() if k not in omit}
    clip_used = any(f["source"].startswith("CLIP") for f in report.filled)
    if clip_used:
        _record_clip(report, clip_weights, cfg.MODEL.CLIP.NAME)
        if spec.check_clip is not None:
            spec.check_clip(state, src, clip_weights)
    report.config_file = config
    report.meta_architecture = cfg.MODEL.META_ARCHITECTURE
    report.num_classes = num_classes
    report.overrides = [*overrides, *map(str, opts)]
    report.num_tensors = len(state)
    report.num_elements = sum(v.numel() for v in state.values())
    return Converted(state, report, build_model_info(cfg))


def report_path(dst: str) -> str:
    """Where the report of the checkpoint ``dst`` goes: ``<dst without extension>.json``."""
    return os.path.splitext(dst)[0] + ".json"


def eval_command(report: ConversionReport, dst: str) -> str:
    """The ``tools/train_net.py --eval-only`` command for the converted file. The file holds
    every weight the evaluation uses, so no CLIP file is read: the model starts from random CLIP
    weights (``MODEL.CLIP.RANDOM_INIT True``) that ``MODEL.WEIGHTS`` replaces."""
    args = ["python", "tools/train_net.py", "--config-file", report.config_file, "--eval-only"]
    args += ["MODEL.WEIGHTS", dst, "MODEL.CLIP.WEIGHTS", "", "MODEL.CLIP.RANDOM_INIT", "True"]
    return shlex.join([*args, *report.overrides])


def save_converted(converted: Converted, dst: str) -> str:
    """Write ``{"model", "model_info", "conversion"}`` to ``dst`` and the report to
    :func:`report_path` (both atomically); returns the report's path."""
    if dst.endswith(".json"):
        raise ConversionError(f"DST '{dst}' ends with .json: name the checkpoint, e.g. X.pth")
    report = converted.report
    report.output = os.path.abspath(dst)
    report.eval_command = eval_command(report, dst)
    payload = {
        "model": converted.state,
        MODEL_INFO_KEY: converted.model_info,
        "conversion": {
            "format": report.source_format,
            "source_sha256": report.source_sha256,
            "config_file": report.config_file,
            "overrides": list(report.overrides),
        },
    }
    atomic_torch_save(payload, dst)
    path = report_path(dst)
    atomic_json_dump(report.to_dict(), path)
    return path
