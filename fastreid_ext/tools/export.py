"""Export a trained model's encoders to ONNX and TorchScript and verify them against PyTorch.

Installed as ``fastreid-ext-export``; in a checkout ``python tools/export.py`` runs the same
command. Text-image models (Baseline, Propot, CPCL) export an ``image`` and a ``text`` encoder,
visible-infrared models (CSDN) a ``visible`` and an ``infrared`` one. Every file is checked with
onnxruntime (CPU) / torch.jit.load on seeded random inputs at each --batch-sizes (none of them
the traced batch) against the PyTorch model's features; the result goes to DIR/export.json.

Graph inputs: "images" [B, 3, H, W] float32, RGB pixel values in [0, 255] resized to
INPUT.SIZE_TEST with the test transform (mean/std normalisation is inside the graph), or
"token_ids" [B, L] int64 from fastreid_ext.text.tokenizer.ClipTokenizer(MODEL.CLIP.CONTEXT_LENGTH).
Output "features" [B, D] float32, L2-normalised per row: the features the evaluator ranks with.

Config overrides (KEY VALUE pairs) come last; right after a list option (--format, --encoders,
--batch-sizes) separate them with "--", e.g. "--encoders image -- KEY VALUE".

Exit status: 0 when every check passes, 1 when a file differs from PyTorch by more than --atol
(or does not run), 2 for bad input (a missing file, a bad --encoders choice, an export error).

Examples (the demo's checkpoints, after ``bash scripts/run_demo.sh``):
    fastreid-ext-export --config-file configs/Baseline/demo.yml \\
        --weights output/demo/baseline/model_final.pth --output output/demo/baseline/export
    fastreid-ext-export --config-file configs/CSDN/demo.yml \\
        --weights output/demo/csdn/model_final.pth --output output/demo/csdn/export \\
        --format onnx --encoders infrared --batch-sizes 1 7
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional, Sequence

__all__ = ["main", "parse_args"]

PROG = "fastreid-ext-export"


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _batch_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an int: {text!r} (config overrides after a list option need a '--' before them)"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command-line options (trailing ``KEY VALUE`` pairs are config overrides)."""
    p = argparse.ArgumentParser(
        prog=os.path.basename(sys.argv[0]) or PROG,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config-file", required=True, help="the training config (path or name)")
    p.add_argument("--weights", help="the trained checkpoint (default: MODEL.WEIGHTS)")
    p.add_argument("--output", required=True, metavar="DIR", help="folder for the exported files")
    p.add_argument(
        "--format",
        nargs="+",
        default=["onnx", "torchscript"],
        choices=("onnx", "torchscript"),
        dest="formats",
        help="formats to write (default: both)",
    )
    p.add_argument(
        "--encoders",
        nargs="+",
        metavar="NAME",
        help="image text (text-image methods) or visible infrared (CSDN); default: all of them",
    )
    p.add_argument("--opset", type=int, default=17, help="ONNX opset version (default 17)")
    p.add_argument(
        "--exporter",
        default="torchscript",
        choices=("torchscript", "dynamo"),
        help="ONNX exporter: torch's TorchScript-based one (default; every method) or the "
        "torch.export-based one (text-image methods only; needs onnxscript)",
    )
    p.add_argument(
        "--batch-sizes",
        nargs="+",
        type=_batch_size,
        default=[1, 3],
        metavar="B",
        help="batch sizes verified (default: 1 3); the graphs are traced at another one",
    )
    p.add_argument(
        "--atol",
        type=_non_negative_float,
        default=1e-4,
        help="largest allowed max abs difference to PyTorch (default 1e-4)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random check inputs")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = p.parse_args(argv)
    if args.opts[:1] == ["--"]:
        args.opts = args.opts[1:]
    return args


def _summary(report) -> str:
    r = report.record
    lines = [f"model:     {r['method']} ({r['task']}), fingerprint {r['fingerprint']}"]
    for name, entry in r["encoders"].items():
        shape = "x".join(str(n) for n in entry["input"]["shape"])
        out = entry["output"]["shape"][1]
        lines.append(f"{name:9s}  {entry['input']['name']} [{shape}] -> features [batch x {out}]")
        for fmt, path in report.files[name].items():
            diffs = [c.max_abs_diff for c in report.checks if c.encoder == name and c.format == fmt]
            lines.append(f"           {fmt:11s} {path}  (max abs diff {max(diffs):.3g})")
    lines.append(
        f"checks:    {sum(c.ok for c in report.checks)}/{len(report.checks)} passed at batch "
        f"sizes {r['batch_sizes']} (traced at {r['trace_batch']}, atol {r['atol']:g})"
    )
    lines.append(f"record:    {report.record_path}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Export, verify and print a summary; the exit status is described in the module doc."""
    args = parse_args(argv)
    from fastreid.utils.logger import setup_logger

    from fastreid_ext.config import ConfigValueError
    from fastreid_ext.export import ExportError, ExportVerificationError, export_encoders
    from fastreid_ext.export.wrappers import check_encoder_names
    from fastreid_ext.inference import Predictor

    setup_logger(name="fastreid_ext")
    logging.getLogger("fastreid_ext").setLevel(logging.INFO)
    prog = os.path.basename(sys.argv[0]) or PROG
    try:
        check_encoder_names(args.encoders)
        predictor = Predictor.from_config(args.config_file, args.weights, args.opts, device="cpu")
        report = export_encoders(
            predictor,
            args.output,
            formats=args.formats,
            encoders=args.encoders,
            opset=args.opset,
            batch_sizes=args.batch_sizes,
            atol=args.atol,
            seed=args.seed,
            exporter=args.exporter,
        )
    except (
        FileNotFoundError,
        ImportError,
        KeyError,
        TypeError,
        ValueError,
        ConfigValueError,
        ExportError,
    ) as exc:
        sys.stderr.write(f"{prog}: error: {exc}\n")
        return 2
    print(_summary(report))
    try:
        report.raise_if_failed()
    except ExportVerificationError as exc:
        sys.stderr.write(f"{prog}: verification failed: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
