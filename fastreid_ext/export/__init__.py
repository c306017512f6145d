"""Export of a trained model's encoders to ONNX and TorchScript, verified against PyTorch.

Public API::

    from fastreid_ext.inference import Predictor
    from fastreid_ext.export import export_encoders

    p = Predictor.from_config(config_file, weights, device="cpu")
    report = export_encoders(p, "out/export", formats=("onnx", "torchscript"),
                             encoders=None, opset=17, batch_sizes=(1, 3), atol=1e-4)
    report.passed            # every file within atol of the PyTorch features at every batch size
    report.files             # {"image": {"onnx": ".../image_encoder.onnx", "torchscript": ...}}
    report.raise_if_failed() # ExportVerificationError naming the failed checks

Encoders: ``image`` and ``text`` (text-image methods: Baseline, Propot, CPCL), ``visible`` and
``infrared`` (visible-infrared methods: CSDN; each the modality-specific path the evaluator uses).
Graph inputs: ``images [B, 3, H, W]`` float32 RGB pixel values in [0, 255] at ``INPUT.SIZE_TEST``
(resized with the test transform; mean / std normalisation is in the graph) or ``token_ids
[B, L]`` int64 from :class:`~fastreid_ext.text.tokenizer.ClipTokenizer` with
``L = MODEL.CLIP.CONTEXT_LENGTH``. Output ``features [B, D]`` float32, L2-normalised per row in
the graph: exactly what :class:`~fastreid_ext.inference.Predictor` returns. ``B`` is dynamic.
"""

from .api import RECORD_NAME, ExportReport, ExportVerificationError, export_encoders
from .formats import EXPORTERS, FILE_SUFFIX, FORMATS, ExportError, load_torchscript, onnx_session
from .verify import Check, pick_trace_batch, random_inputs, random_token_ids
from .wrappers import ENCODERS, EncoderSpec, ImageEncoder, TextEncoder, build_encoder

__all__ = [
    "export_encoders",
    "ExportReport",
    "ExportVerificationError",
    "ExportError",
    "RECORD_NAME",
    "ENCODERS",
    "EXPORTERS",
    "FORMATS",
    "FILE_SUFFIX",
    "EncoderSpec",
    "ImageEncoder",
    "TextEncoder",
    "build_encoder",
    "Check",
    "pick_trace_batch",
    "random_inputs",
    "random_token_ids",
    "load_torchscript",
    "onnx_session",
]
