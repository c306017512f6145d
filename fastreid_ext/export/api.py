"""``export_encoders``: a trained model's encoders to ONNX / TorchScript files, verified against
PyTorch, with an ``export.json`` record next to them."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from ..engine.run_info import package_versions
from ..inference.loading import TEXT_IMAGE
from ..inference.predictor import Predictor
from ..text.tokenizer import EOT_ID, SOT_ID
from ..utils.atomic_io import atomic_json_dump
from ..utils.progress import progress as progress_bar
from ..version import __version__
from .formats import (
    EXPORTERS,
    FILE_SUFFIX,
    FORMATS,
    export_onnx,
    export_torchscript,
    load_torchscript,
    onnx_session,
    require_onnx,
    run_onnx,
    run_torchscript,
)
from .verify import (
    Check,
    check_batch_sizes,
    compare,
    pick_trace_batch,
    random_inputs,
    reference_features,
)
from .wrappers import EncoderSpec, build_encoder, check_encoders

__all__ = ["RECORD_NAME", "ExportReport", "ExportVerificationError", "export_encoders"]

logger = logging.getLogger(__name__)

#: The record written next to the exported files.
RECORD_NAME = "export.json"
RECORD_FORMAT = 1


class ExportVerificationError(RuntimeError):
    """An exported file differs from the PyTorch model by more than ``atol`` (or fails to run)."""


@dataclass
class ExportReport:
    """Outcome of :func:`export_encoders`: ``record`` (the content of ``export.json``),
    ``record_path``, ``files`` (``{encoder: {format: path}}``) and ``checks``."""

    record: Dict[str, Any]
    record_path: str
    files: Dict[str, Dict[str, str]] = field(default_factory=dict)
    checks: List[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.ok for c in self.checks)

    def failures(self) -> List[Check]:
        return [c for c in self.checks if not c.ok]

    def raise_if_failed(self) -> None:
        """Raise :class:`ExportVerificationError` naming every failed check."""
        bad = self.failures()
        if not bad:
            return
        atol = self.record["atol"]
        lines = [
            f"{c.encoder} encoder, {c.format}, batch {c.batch}: "
            + (c.error or f"max abs diff {c.max_abs_diff:.3g} > atol {atol:g}")
            for c in bad
        ]
        raise ExportVerificationError(
            f"{len(bad)} of {len(self.checks)} checks failed (record: {self.record_path}):\n  "
            + "\n  ".join(lines)
        )


def _check_args(formats: Sequence[str], exporter: str, opset: int, atol: float) -> List[str]:
    formats = list(formats)
    if not formats:
        raise ValueError(f"formats: give at least one of {FORMATS}")
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"formats: unknown {unknown}; choose from {', '.join(FORMATS)}")
    if len(set(formats)) != len(formats):
        raise ValueError(f"formats: repeated name in {formats}")
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter: must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < 7:
        raise ValueError(f"opset: must be an ONNX opset version (an int >= 7), got {opset!r}")
    if not atol >= 0:  # also refuses NaN
        raise ValueError(f"atol: must be >= 0, got {atol}")
    return formats


def _preprocessing(predictor: Predictor, text: bool) -> Dict[str, Any]:
    cfg = predictor.cfg
    transform = getattr(predictor.image_transform, "transforms", [predictor.image_transform])
    out: Dict[str, Any] = {
        "image": {
            "size": [int(n) for n in cfg.INPUT.SIZE_TEST],
            "test_transform": [repr(t) for t in transform],
            "input": "RGB pixel values in [0, 255] as float32 (not divided by 255), "
            "[B, 3, H, W], H x W = INPUT.SIZE_TEST",
            "pixel_mean": [float(v) for v in cfg.MODEL.PIXEL_MEAN],
            "pixel_std": [float(v) for v in cfg.MODEL.PIXEL_STD],
            "normalisation": "in the graph: (x - pixel_mean) / pixel_std",
        },
        "output": "float32 [B, D] features, L2-normalised per row in the graph; rank by the "
        "inner product (cosine similarity)",
    }
    if text:
        out["text"] = {
            "tokenizer": "fastreid_ext.text.tokenizer.ClipTokenizer",
            "context_length": int(cfg.MODEL.CLIP.CONTEXT_LENGTH),
            "input": "int64 [B, L] rows [SOT, BPE ids..., EOT, 0, ...], L = context_length; "
            "the EOT position is the row's argmax",
            "sot_id": SOT_ID,
            "eot_id": EOT_ID,
            "pad_id": 0,
        }
    return out


def _encoder_entry(spec: EncoderSpec, dim: int, files: Dict[str, str]) -> Dict[str, Any]:
    shape = ["batch", *spec.input_shape[1:]]
    return {
        "input": {"name": spec.input_name, "shape": shape, "dtype": str(spec.input_dtype)[6:]},
        "output": {"name": spec.output_name, "shape": ["batch", dim], "dtype": "float32"},
        "modality": spec.modality,
        "files": {fmt: os.path.basename(path) for fmt, path in files.items()},
    }


def _export_one(
    module: torch.nn.Module,
    spec: EncoderSpec,
    fmt: str,
    example: torch.Tensor,
    path: str,
    opset: int,
    exporter: str,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Write ``path`` and return a function running the written file (read back from disk)."""
    if fmt == "onnx":
        export_onnx(module, example, spec, path, opset, exporter)
        session = onnx_session(path, threads=torch.get_num_threads())  # as many as PyTorch
        return lambda x: run_onnx(session, spec, x)
    export_torchscript(module, example, spec, path)
    loaded = load_torchscript(path)
    return lambda x: run_torchscript(loaded, x)


@dataclass
class _Encoder:
    """One encoder being exported: its wrapper, spec, trace example and check data."""

    module: torch.nn.Module
    spec: EncoderSpec
    example: torch.Tensor  # [trace_batch, ...] on the model's device
    inputs: List[torch.Tensor]  # one per verified batch size, on the CPU
    references: List[torch.Tensor]  # [b, D] PyTorch features of ``inputs``


def _prepare(
    predictor: Predictor, name: str, sizes: Sequence[int], trace_batch: int, gen: torch.Generator
) -> _Encoder:
    module, spec = build_encoder(predictor, name)
    example = random_inputs(spec, trace_batch, gen).to(predictor.device)
    inputs = [random_inputs(spec, b, gen) for b in sizes]
    references = [reference_features(predictor, spec, x) for x in inputs]
    return _Encoder(module, spec, example, inputs, references)


def _verify(
    enc: _Encoder, fmt: str, run: Callable[[torch.Tensor], torch.Tensor], atol: float
) -> List[Check]:
    checks = []
    for x, ref in zip(enc.inputs, enc.references):
        check = compare(enc.spec, fmt, run, x, ref, atol)
        checks.append(check)
        status = "ok" if check.ok else "FAILED " + check.error
        logger.info(
            "%s encoder, %s, batch %d: max abs diff %.3g (%s)",
            enc.spec.name,
            fmt,
            check.batch,
            check.max_abs_diff,
            status,
        )
    return checks


def _clear_record(path: str) -> None:
    """Remove an earlier run's record first: until this run writes its own, the folder has no
    record that could describe files this run is replacing."""
    if os.path.exists(path):
        os.remove(path)
        logger.info("Removed the earlier record %s", path)


def export_encoders(
    predictor: Predictor,
    output: str,
    formats: Sequence[str] = FORMATS,
    encoders: Optional[Sequence[str]] = None,
    opset: int = 17,
    batch_sizes: Sequence[int] = (1, 3),
    atol: float = 1e-4,
    seed: int = 0,
    exporter: str = "torchscript",
    progress: bool = True,
) -> ExportReport:
    """Export ``predictor``'s encoders into the folder ``output`` and verify every file.

    Files: ``<encoder>_encoder.onnx`` / ``<encoder>_encoder.torchscript.pt`` for each encoder
    (``image``, ``text`` for text-image methods; ``visible``, ``infrared`` for visible-infrared
    ones) and :data:`RECORD_NAME` (inputs, outputs, preprocessing, versions, every check), written
    last. Each file is traced at a batch size that is none of ``batch_sizes``, written, read back
    and run on seeded random inputs at every size in ``batch_sizes``; it passes when it is within
    ``atol`` (max abs difference) of the PyTorch model's features there.

    The model runs on the predictor's device; load it with ``device="cpu"`` for a CPU export.
    Verification failures do not raise: see :meth:`ExportReport.raise_if_failed` (the record
    says ``"passed": false``). Raises ``ValueError`` for bad arguments, ``ImportError`` when
    onnx / onnxruntime are missing and :class:`~fastreid_ext.export.formats.ExportError` when an
    exporter fails (then no record is left in ``output``).
    """
    names = check_encoders(predictor.task, predictor.method, encoders)
    formats = _check_args(formats, exporter, opset, atol)
    sizes = check_batch_sizes(batch_sizes)
    if "onnx" in formats:
        require_onnx(exporter)
    trace_batch = pick_trace_batch(sizes)
    os.makedirs(output, exist_ok=True)
    report = ExportReport({}, os.path.join(output, RECORD_NAME))
    _clear_record(report.record_path)
    generator = torch.Generator().manual_seed(int(seed))
    start = time.perf_counter()
    prepared: Dict[str, _Encoder] = {}
    steps = [(name, fmt) for name in names for fmt in formats]
    for name, fmt in progress_bar(steps, "Exporting encoders", enabled=progress):
        if name not in prepared:
            prepared[name] = _prepare(predictor, name, sizes, trace_batch, generator)
        enc = prepared[name]
        path = os.path.join(output, enc.spec.file_stem() + FILE_SUFFIX[fmt])
        run = _export_one(enc.module, enc.spec, fmt, enc.example, path, opset, exporter)
        report.files.setdefault(name, {})[fmt] = path
        report.checks.extend(_verify(enc, fmt, run, atol))
    entries = {
        name: _encoder_entry(enc.spec, int(enc.references[0].shape[1]), report.files[name])
        for name, enc in prepared.items()
    }
    report.record = {
        "format": RECORD_FORMAT,
        "passed": report.passed,
        "method": predictor.method,
        "task": predictor.task,
        "fingerprint": predictor.fingerprint,
        "config_file": predictor.config_file,
        "weights": predictor.weights,
        "created": datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds"),
        "exporter": exporter,
        "opset": opset,
        "trace_batch": trace_batch,
        "batch_sizes": sizes,
        "atol": atol,
        "seed": int(seed),
        "seconds": round(time.perf_counter() - start, 2),
        "encoders": entries,
        "preprocessing": _preprocessing(predictor, predictor.task == TEXT_IMAGE),
        "checks": [c.as_dict() for c in report.checks],
        "versions": {
            "fastreid_ext": __version__,
            **package_versions(("torch", "onnx", "onnxruntime", "onnxscript")),
        },
    }
    atomic_json_dump(report.record, report.record_path)
    return report
